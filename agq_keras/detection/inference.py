"""One ``predict`` for a detector, as Keras F or as its TFLite file: raw images of any size -> boxes in their own
pixels.

:func:`predict` takes a detector F (:class:`~agq_keras.detection.detector.Detector`, built or loaded from
``f.keras``; an AGTrainer gives its F) or an :class:`agq_keras.export.Runner` of F's exported TFLite file
(whose metadata holds F's anchors, class names and output names: ``export.convert`` writes them). Each image
is letterboxed (:func:`letterbox`: resized, aspect ratio kept, to fit F's input, bilinear with antialiasing,
placed at the top-left corner on black), the model runs, its outputs are decoded with the anchors read from
the model and NMS runs per class (:func:`~agq_keras.detection.postprocess.detect`), and each box is mapped
back to the image's own pixels (divided by the letterbox's per-axis scale, clipped to the image).
"""

from __future__ import annotations

import numbers

import keras
import numpy as np
import tensorflow as tf

from agq_keras.detection.detector import METADATA_NAME, Detector, read_metadata
from agq_keras.detection.postprocess import detect

BOX_FORMATS = ("xyxy", "yxyx")


def _source(model):
    """``(run: float batch -> outputs, anchors, class names, (height, width, channels), images per run or None)``
    of F or a Runner (a Runner runs batches of its own ``batch_size``)."""
    f = getattr(model, "f", None)
    if isinstance(model, keras.Model) and isinstance(f, keras.Model) and f is not model:
        model = f  # an AGTrainer: its deployable F
    if isinstance(model, Detector):
        return (lambda batch: model(batch, training=False)), model.anchor_spec, model.class_names, model.input_size, \
            None
    entries = getattr(model, "metadata", None)
    if isinstance(entries, dict) and callable(model):
        if METADATA_NAME not in entries:
            raise ValueError(f"predict(): the TFLite model has no {METADATA_NAME!r} metadata (not a detector's file, "
                             "or exported before the exporter wrote it): export the detector F again.")
        anchors, names, outputs = read_metadata(entries[METADATA_NAME])
        got = [d.get("name") for d in getattr(model, "output_details", [])]
        if got != list(outputs):
            raise ValueError(f"predict(): the TFLite model's outputs {got} are not F's {list(outputs)}.")
        shape = tuple(int(d) for d in model.input["shape"][1:])

        def run(batch):
            out = model(batch)
            return out if isinstance(out, list) else [out]

        return run, anchors, names, shape, getattr(model, "batch_size", None)
    if isinstance(model, keras.Model):
        raise ValueError(f"predict(): model {model.name!r} carries no anchors (a plain functional model, e.g. an "
                         "f.keras saved before F carried them); wrap it: agq_keras.detection.with_spec(f, "
                         "anchors=AnchorSpec(...), class_names=[...]).")
    raise ValueError(f"predict(): model must be a detector F (build_detector, agq_keras.load_model('f.keras')) or "
                     f"agq_keras.export.Runner('f.tflite'); got {type(model).__name__}.")


def _images(images, channels: int) -> list:
    """The images as a list of float32 [H, W, C] arrays in [0, 1] (uint8 pixels / 255), validated."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    elif not isinstance(images, (list, tuple)):
        raise ValueError(f"predict(): images must be a list of [height, width, {channels}] images or an "
                         f"[N, height, width, {channels}] array; got {type(images).__name__}.")
    if not len(images):
        raise ValueError("predict(): no images; give a non-empty list of images or an [N, H, W, C] array.")
    out = []
    for i, image in enumerate(images):
        try:
            array = np.asarray(image)
        except (TypeError, ValueError):
            array = np.asarray(None)
        if array.ndim != 3 or not np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_:
            raise ValueError(f"predict(): image {i} is not an image (shape {array.shape}, dtype {array.dtype}); "
                             f"an image is a numeric [height, width, {channels}] array.")
        if array.shape[-1] != channels:
            raise ValueError(f"predict(): image {i} has {array.shape[-1]} channels (shape {array.shape}); the "
                             f"detector takes {channels}.")
        if array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"predict(): image {i} is empty (shape {array.shape}).")
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255.0
        elif np.issubdtype(array.dtype, np.floating):
            if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
                raise ValueError(f"predict(): image {i} holds float values in [{array.min()}, {array.max()}]; "
                                 "float images must be pixels in [0, 1] as in training (or give uint8 0..255).")
            array = array.astype(np.float32)
        else:
            raise ValueError(f"predict(): image {i} has dtype {array.dtype}; allowed: uint8 (0..255) or float "
                             "(pixels in [0, 1]).")
        out.append(array)
    return out


def letterbox(images, size) -> tuple:
    """``(batch float32 [N, height, width, C], scales float64 [N, 2])``: each image ``[h, w, C]`` resized by one
    factor ``min(height / h, width / w)`` to ``(round(h * s), round(w * s))`` (bilinear, antialiased; unchanged
    when that is its size), at the top-left corner of a black ``size = (height, width)`` canvas; ``scales[i]``:
    the resized image's ``(rows / h, columns / w)``, which map a point ``(y, x)`` of image i to ``(y * sy,
    x * sx)`` on the canvas (half-pixel centres)."""
    height, width = (int(v) for v in size)
    batch = np.zeros((len(images), height, width, np.asarray(images[0]).shape[-1]), np.float32)
    scales = np.zeros((len(images), 2))
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        s = min(height / h, width / w)
        rows, cols = min(height, max(1, round(h * s))), min(width, max(1, round(w * s)))
        if (rows, cols) != (h, w):
            image = tf.image.resize(image, (rows, cols), method="bilinear", antialias=True).numpy()
        batch[i, :rows, :cols] = image
        scales[i] = (rows / h, cols / w)
    return batch, scales


def predict(model, images, *, score_threshold: float = 0.05, iou_threshold: float = 0.5, max_per_class: int = 100,
            max_detections: int = 100, box_format: str = "xyxy", batch_size: int = 16) -> list:
    """Detections of a detector on raw images of any size (see the module docstring): one dict per image,
    ``{"boxes": float32 [D, 4] pixels of that image, "scores": [D], "labels": int32 [D], "names": [D] class
    names}``, by decreasing score. ``box_format``: ``"xyxy"`` (``[x1, y1, x2, y2]``, torchvision's) or ``"yxyx"``
    (``[y1, x1, y2, x2]``, the format of the rest of :mod:`agq_keras.detection`). ``images``: a list of ``[H, W,
    C]`` arrays (each its own size), an ``[N, H, W, C]`` array or one ``[H, W, C]`` image; uint8 pixels (0..255,
    divided by 255 as in training) or float pixels in [0, 1]. The anchors are the model's own. ``batch_size``:
    images per call of a Keras F (a Runner runs its own ``batch_size``: ``export.Runner("f.tflite", batch_size=8)``;
    small for a detector, whose image-reading conv needs a large im2col buffer)."""
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box_format={box_format!r} is not supported; allowed: {', '.join(BOX_FORMATS)}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1.")
    run, spec, names, (height, width, channels), per_run = _source(model)
    images = _images(images, channels)
    anchors = spec.anchors((height, width))
    step = per_run or batch_size
    results = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        batch, scales = letterbox(chunk, (height, width))
        boxes, scores, classes, counts = detect(run(batch), anchors, len(names), (height, width),
                                                score_threshold=score_threshold, iou_threshold=iou_threshold,
                                                max_per_class=max_per_class, max_detections=max_detections)
        for image, b, s, c, n, (sy, sx) in zip(chunk, boxes, scores, classes, counts, scales):
            h, w = image.shape[:2]
            b = b[:n].astype(np.float64) / np.array([sy, sx, sy, sx])
            b = np.clip(b, 0.0, np.array([h, w, h, w], np.float64))
            keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # a box wholly in the letterbox's padding: none
            b = b[keep].astype(np.float32)
            if box_format == "xyxy":
                b = b[:, [1, 0, 3, 2]]
            labels = c[:n][keep].astype(np.int32)
            results.append({"boxes": b, "scores": s[:n][keep].astype(np.float32), "labels": labels,
                            "names": [names[k] for k in labels]})
    return results
