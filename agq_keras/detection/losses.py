"""Anchor targets and the detection loss: focal loss + smooth-L1, normalised by the positive anchors.

Targets (:func:`assign`, RetinaNet sec. 4): an anchor whose best IoU with a ground-truth box is
``>= positive_iou`` (0.5) takes that box's class and regression target; ``< negative_iou`` (0.4) is
background; in between it is ignored. With ``low_quality_matches`` (on by default, as Detectron's
RetinaNet) each ground-truth box also claims its best-IoU anchor, so no object is left without a positive
anchor. Class targets: ``>= 0`` the class, :data:`BACKGROUND` (-1), :data:`IGNORE` (-2).

Loss (:class:`DetectionLoss`): ``(sum FL + box_weight * sum smoothL1) / max(1, number of positives)``
over the batch, with the focal loss ``FL = -alpha_t (1 - p_t)^gamma log(p_t)`` on every class of every
non-ignored anchor (alpha 0.25, gamma 2) and smooth-L1 (``beta``, 0.11 as Detectron) on the four box
targets of the positive anchors. It takes the whole output structure of F (per-level class logits, then
per-level box deltas), so :class:`agq_keras.training.AGTrainer` applies it to F and H alike
(``structured = True``).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from agq_keras.detection.boxes import encode, iou

BACKGROUND = -1
IGNORE = -2


def assign(anchors, gt_boxes, gt_labels, *, positive_iou: float = 0.5, negative_iou: float = 0.4,
           low_quality_matches: bool = True, weights=(1.0, 1.0, 1.0, 1.0)):
    """``(class targets int32 [A], box targets float32 [A, 4])`` of one image (TensorFlow; usable in a
    ``tf.data`` map). ``gt_labels`` < 0 marks padding rows (ignored); an image with no object gives all
    background."""
    if not 0 < negative_iou <= positive_iou <= 1:
        raise ValueError(f"IoU thresholds negative_iou={negative_iou!r}, positive_iou={positive_iou!r} are not "
                         "allowed; need 0 < negative_iou <= positive_iou <= 1.")
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_labels = tf.cast(gt_labels, tf.int32)
    valid = gt_labels >= 0
    overlaps = tf.where(valid[None, :], iou(anchors, gt_boxes), -1.0)  # [A, M]
    num_gt = tf.shape(gt_boxes)[0]
    has_gt = tf.reduce_any(valid)
    best = tf.argmax(overlaps, axis=1, output_type=tf.int32) if gt_boxes.shape[0] != 0 else tf.zeros(
        tf.shape(anchors)[:1], tf.int32)
    best_iou = tf.reduce_max(overlaps, axis=1) if gt_boxes.shape[0] != 0 else -tf.ones(tf.shape(anchors)[:1])
    positive = best_iou >= positive_iou
    if low_quality_matches:
        # each valid ground truth claims its best anchor (where that IoU > 0)
        best_anchor = tf.argmax(overlaps, axis=0, output_type=tf.int32)  # [M]
        claim = valid & (tf.reduce_max(overlaps, axis=0) > 0)
        idx = tf.boolean_mask(best_anchor, claim)[:, None]
        best = tf.tensor_scatter_nd_update(best, idx, tf.boolean_mask(tf.range(num_gt), claim))
        positive = tf.tensor_scatter_nd_update(positive, idx, tf.ones(tf.shape(idx)[:1], tf.bool))
    positive = positive & has_gt
    matched_labels = tf.gather(gt_labels, best) if gt_boxes.shape[0] != 0 else tf.zeros_like(best)
    cls = tf.where(positive, matched_labels,
                   tf.where(best_iou < negative_iou, BACKGROUND, IGNORE))
    matched_boxes = tf.gather(gt_boxes, best) if gt_boxes.shape[0] != 0 else anchors
    box = tf.where(positive[:, None], encode(matched_boxes, anchors, weights), 0.0)
    return tf.cast(cls, tf.int32), box


def with_targets(dataset: tf.data.Dataset, anchors, **assign_kwargs) -> tf.data.Dataset:
    """Map batches ``(image, {"boxes", "labels"})`` to ``(image, {"cls", "box"})`` anchor targets."""
    anchors = tf.constant(anchors, tf.float32)

    def per_batch(images, annotations):
        cls, box = tf.map_fn(lambda a: assign(anchors, a[0], a[1], **assign_kwargs),
                             (annotations["boxes"], annotations["labels"]),
                             fn_output_signature=(tf.int32, tf.float32))
        return images, {"cls": cls, "box": box}

    return dataset.map(per_batch, num_parallel_calls=tf.data.AUTOTUNE)


def flatten_outputs(outputs, num_classes: int):
    """F's per-level outputs ``[cls_l..., box_l...]`` -> ``(logits [B, A, C], deltas [B, A, 4])``."""
    outputs = list(outputs)
    if len(outputs) % 2 or not outputs:
        raise ValueError(f"a detector outputs per-level class logits then per-level box deltas (an even number "
                         f"of tensors); got {len(outputs)}.")
    n = len(outputs) // 2

    def flat(tensors, width):
        return tf.concat([tf.reshape(t, (tf.shape(t)[0], -1, width)) for t in tensors], axis=1)

    return flat(outputs[:n], num_classes), flat(outputs[n:], 4)


def focal_loss(labels, logits, alpha: float = 0.25, gamma: float = 2.0):
    """Per-element focal loss ``[..., C]`` of sigmoid ``logits`` against one-hot targets of ``labels``
    (``[...]``, a class or a negative value for background)."""
    logits = tf.cast(logits, tf.float32)
    targets = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1], dtype=tf.float32)  # -1, -2: zeros
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    p = tf.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * tf.pow(1 - p_t, gamma) * ce


def smooth_l1(diff, beta: float = 0.11):
    diff = tf.abs(tf.cast(diff, tf.float32))
    if beta == 0:
        return diff
    return tf.where(diff < beta, 0.5 * tf.square(diff) / beta, diff - 0.5 * beta)


@keras.saving.register_keras_serializable(package="agq_keras")
class DetectionLoss:
    """The RetinaNet loss of a batch: ``y_true = {"cls": [B, A], "box": [B, A, 4]}`` (:func:`assign`'s
    targets), ``y_pred`` = F's per-level outputs (class logits, then box deltas)."""

    structured = True  # AGTrainer: called on the whole output structure, for F and H

    def __init__(self, num_classes: int, alpha: float = 0.25, gamma: float = 2.0, beta: float = 0.11,
                 box_weight: float = 1.0):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r} must be an integer >= 1.")
        for name, value in (("alpha", alpha), ("gamma", gamma), ("beta", beta), ("box_weight", box_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}={value!r} must be a number >= 0.")
        self.num_classes, self.alpha, self.gamma, self.beta, self.box_weight = (
            num_classes, float(alpha), float(gamma), float(beta), float(box_weight))

    def parts(self, y_true, y_pred):
        """``(focal sum, box sum, number of positives)`` of the batch."""
        logits, deltas = flatten_outputs(y_pred, self.num_classes)
        cls = tf.cast(y_true["cls"], tf.int32)
        keep = tf.cast(cls != IGNORE, tf.float32)
        positive = tf.cast(cls >= 0, tf.float32)
        focal = tf.reduce_sum(focal_loss(cls, logits, self.alpha, self.gamma) * keep[..., None])
        box = tf.reduce_sum(smooth_l1(deltas - tf.cast(y_true["box"], tf.float32), self.beta) * positive[..., None])
        return focal, box, tf.reduce_sum(positive)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("DetectionLoss does not take sample weights (sample_weight must be None).")
        focal, box, num_pos = self.parts(y_true, y_pred)
        return (focal + self.box_weight * box) / tf.maximum(num_pos, 1.0)

    def get_config(self):
        return {"num_classes": self.num_classes, "alpha": self.alpha, "gamma": self.gamma, "beta": self.beta,
                "box_weight": self.box_weight}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
