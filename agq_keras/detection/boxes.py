"""Anchors, box coding, IoU and the validation of annotations (RetinaNet, Lin et al. 2017, sec. 4).

Box format everywhere: ``[y1, x1, y2, x2]`` in pixels of the input image (the pixel row ``r`` covers
``[r, r + 1)``), the format of :mod:`agq_keras.data.detection_twin` and of
``tf.image.combined_non_max_suppression``.

**Anchors** (:class:`AnchorSpec`): on pyramid level ``l`` (stride ``2**l``) one anchor per (size, ratio)
at every position, centred at ``((i + 0.5) * stride, (j + 0.5) * stride)``, with base size
``size_factor * stride``, sizes ``base * scales`` and aspect ratios ``h / w`` in ``ratios`` (an anchor of
size ``s`` and ratio ``r`` is ``s * sqrt(r)`` high and ``s / sqrt(r)`` wide). Their order is the order
of the head's outputs reshaped to ``[positions * anchors]``: level, row, column, then (scale, ratio),
scale-major. The paper's anchors are ``size_factor=4`` (32 px on P3), 3 scales ``2**(k/3)`` and ratios
``(0.5, 1, 2)``.

**Coding** (:func:`encode`, :func:`decode`): the R-CNN parameterisation with per-coordinate weights
``(wy, wx, wh, ww)``: ``ty = wy (cy - cya) / ha``, ``tx = wx (cx - cxa) / wa``, ``th = wh log(h / ha)``,
``tw = ww log(w / wa)``; decoding clamps ``th, tw`` at ``log(1000 / 16)`` (no overflow in ``exp``).

**Keras 3's** ``keras.utils.bounding_boxes`` (weighed against these, 2026-12-03): its ``compute_iou`` equals
the textbook IoU to the last bit, so :func:`iou` is it. Its ``encode_box_to_deltas`` equals :func:`encode`
on real boxes, but its ``decode_deltas_to_boxes`` has no clamp (a log-size delta of 20 decodes to a box
2.4e10 px wide, where :func:`decode` gives 3 125 px), so the coding stays here, in one pair.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np
import tensorflow as tf
from keras.utils import bounding_boxes

BBOX_CLIP = math.log(1000.0 / 16)
PAD_LABEL = -1  # a padding row of boxes/labels (no object)


@dataclasses.dataclass(frozen=True)
class AnchorSpec:
    """The anchors of each level (see the module docstring). ``levels`` and ``size_factor`` have no default:
    they must be the ones F was trained with (the detection configs' ``levels`` and ``anchor_size_factor``), and a
    detector F carries its own (:attr:`agq_keras.detection.Detector.anchor_spec`, saved in ``f.keras``)."""

    levels: tuple = dataclasses.field(kw_only=True)
    size_factor: float = dataclasses.field(kw_only=True)
    scales: tuple = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    ratios: tuple = (0.5, 1.0, 2.0)

    def __post_init__(self):
        levels = tuple(self.levels)
        if not levels or any(isinstance(l, bool) or not isinstance(l, numbers.Integral) or not 1 <= l <= 8
                             for l in levels) or list(levels) != sorted(set(levels)):
            raise ValueError(f"levels={self.levels!r} is not allowed; give increasing integers in 1..8 (level l has "
                             "stride 2**l), e.g. (3, 4, 5).")
        for name in ("scales", "ratios"):
            values = tuple(getattr(self, name))
            if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Real) or not (
                    math.isfinite(v) and v > 0) for v in values):
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; give positive finite numbers.")
        if isinstance(self.size_factor, bool) or not isinstance(self.size_factor, numbers.Real) or not (
                math.isfinite(self.size_factor) and self.size_factor > 0):
            raise ValueError(f"size_factor={self.size_factor!r} must be a positive finite number.")
        object.__setattr__(self, "levels", tuple(int(l) for l in levels))
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))

    @property
    def num_anchors(self) -> int:
        """Anchors per position."""
        return len(self.scales) * len(self.ratios)

    def strides(self) -> tuple:
        return tuple(2 ** l for l in self.levels)

    def grid_sizes(self, image_size) -> list:
        """``(rows, columns)`` of each level for an image of ``(height, width)`` (``ceil(size / stride)``, the
        size a stride-2 'same' convolution chain gives)."""
        height, width = image_size
        return [(math.ceil(height / s), math.ceil(width / s)) for s in self.strides()]

    def level_anchors(self, level: int, grid) -> np.ndarray:
        stride = 2 ** level
        base = self.size_factor * stride
        shapes = [(base * s * math.sqrt(r), base * s / math.sqrt(r)) for s in self.scales for r in self.ratios]
        hw = np.array(shapes, np.float64)  # [K, 2]
        rows, cols = grid
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) * stride, (np.arange(cols) + 0.5) * stride, indexing="ij")
        centres = np.stack([cy, cx], -1).reshape(-1, 1, 2)  # [P, 1, 2]
        boxes = np.concatenate([centres - hw / 2, centres + hw / 2], -1)  # [P, K, 4]
        return boxes.reshape(-1, 4).astype(np.float32)

    def anchors(self, image_size) -> np.ndarray:
        """All anchors ``[A, 4]`` for an image of ``(height, width)``, in the head's output order."""
        return np.concatenate([self.level_anchors(l, g) for l, g in zip(self.levels, self.grid_sizes(image_size))])

    def to_dict(self) -> dict:
        """The spec as JSON-ready lists and numbers (:meth:`from_dict` reads it back)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, config) -> "AnchorSpec":
        """The spec of :meth:`to_dict` (e.g. from a saved F's config or a TFLite file's metadata)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(config, dict) or not {"levels", "size_factor"} <= set(config) or set(config) - fields:
            raise ValueError(f"anchors={config!r} is not an AnchorSpec dict; it needs levels and size_factor "
                             f"(allowed keys: {', '.join(sorted(fields))}).")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


DEFAULT_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def _centre_form(boxes):
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * h, boxes[..., 1] + 0.5 * w, h, w


def encode(boxes, anchors, weights=DEFAULT_WEIGHTS):
    """Regression targets ``[..., 4]`` of ``boxes`` relative to ``anchors`` (same shape, or broadcastable)."""
    boxes, anchors = tf.convert_to_tensor(boxes, tf.float32), tf.convert_to_tensor(anchors, tf.float32)
    cy, cx, h, w = _centre_form(boxes)
    cya, cxa, ha, wa = _centre_form(anchors)
    h, w = tf.maximum(h, 1e-6), tf.maximum(w, 1e-6)
    wy, wx, wh, ww = weights
    return tf.stack([wy * (cy - cya) / ha, wx * (cx - cxa) / wa, wh * tf.math.log(h / ha),
                     ww * tf.math.log(w / wa)], axis=-1)


def decode(deltas, anchors, weights=DEFAULT_WEIGHTS):
    """Boxes ``[..., 4]`` from regression ``deltas`` relative to ``anchors`` (inverse of :func:`encode`)."""
    deltas, anchors = tf.convert_to_tensor(deltas, tf.float32), tf.convert_to_tensor(anchors, tf.float32)
    cya, cxa, ha, wa = _centre_form(anchors)
    wy, wx, wh, ww = weights
    cy = deltas[..., 0] / wy * ha + cya
    cx = deltas[..., 1] / wx * wa + cxa
    h = tf.exp(tf.minimum(deltas[..., 2] / wh, BBOX_CLIP)) * ha
    w = tf.exp(tf.minimum(deltas[..., 3] / ww, BBOX_CLIP)) * wa
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def iou(a, b):
    """IoU of every box of ``a`` [N, 4] with every box of ``b`` [M, 4]: [N, M] (0 where the union is empty):
    Keras's ``keras.utils.bounding_boxes.compute_iou`` in this module's format (equal to the textbook
    formula to the last bit; ``tests/test_detection.py`` checks it against NumPy)."""
    return bounding_boxes.compute_iou(tf.convert_to_tensor(a, tf.float32), tf.convert_to_tensor(b, tf.float32),
                                      bounding_box_format="yxyx")


def check_annotations(boxes, labels, image_size, num_classes: int, *, what: str = "annotations",
                      tolerance: float = 1e-3) -> None:
    """Validate padded annotations (NumPy): boxes ``[N, M, 4]`` (``[y1, x1, y2, x2]`` pixels) and labels
    ``[N, M]`` (``0..num_classes - 1``, or ``-1`` for a padding row), for images of ``(height, width)``.

    A ``ValueError`` names the first bad value and what is allowed: a label outside ``-1..num_classes-1``
    (an unknown class), a non-finite coordinate, a box outside the image (beyond ``tolerance`` pixels), a
    degenerate box (``y2 <= y1`` or ``x2 <= x1``). An image with no object (every label ``-1``) is allowed:
    all of its anchors are background."""
    boxes, labels = np.asarray(boxes, np.float64), np.asarray(labels)
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:2]:
        raise ValueError(f"{what}: boxes [N, M, 4] and labels [N, M] are required; got {boxes.shape} and "
                         f"{labels.shape}.")
    height, width = image_size
    valid = labels != PAD_LABEL
    bad = np.argwhere(valid & ((labels < 0) | (labels >= num_classes)))
    if bad.size:
        i, j = bad[0]
        raise ValueError(f"{what}: image {i}, object {j} has label {int(labels[i, j])}, an unknown class; allowed "
                         f"0..{num_classes - 1} (or {PAD_LABEL} for a padding row).")
    checks = [
        (~np.isfinite(boxes).all(-1), "a non-finite coordinate", "finite pixel coordinates"),
        ((boxes[..., 0] < -tolerance) | (boxes[..., 1] < -tolerance) | (boxes[..., 2] > height + tolerance)
         | (boxes[..., 3] > width + tolerance),
         "a box outside the image", f"0 <= y1, y2 <= {height} and 0 <= x1, x2 <= {width} ([y1, x1, y2, x2] pixels)"),
        ((boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1]),
         "a degenerate box", "y2 > y1 and x2 > x1"),
    ]
    for mask, problem, allowed in checks:
        bad = np.argwhere(valid & mask)
        if bad.size:
            i, j = bad[0]
            raise ValueError(f"{what}: image {i}, object {j} has {problem}: {boxes[i, j].tolist()}; allowed: "
                             f"{allowed}.")
