"""Decoding and NMS, outside the deployable F (F ends at the per-level class logits and box deltas).

:func:`detect` flattens F's outputs, decodes the deltas against the anchors, clips the boxes to the image
and runs ``tf.image.combined_non_max_suppression`` per class (sigmoid scores). TFLite's
``TFLite_Detection_PostProcess`` is a custom op (not builtin) and is not used: the exported F stays
builtin-only and this function runs on its outputs.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from agq_keras.detection.boxes import decode
from agq_keras.detection.losses import flatten_outputs


def detect(outputs, anchors, num_classes: int, image_size, *, score_threshold: float = 0.05,
           iou_threshold: float = 0.5, max_per_class: int = 100, max_detections: int = 100):
    """Detections of a batch of F's outputs: ``(boxes [B, D, 4], scores [B, D], classes int32 [B, D],
    counts int32 [B])`` (NumPy; the first ``counts[i]`` rows of image i are valid), boxes ``[y1, x1, y2, x2]``
    pixels clipped to the image of ``(height, width)``."""
    if not 0 <= score_threshold < 1 or not 0 < iou_threshold <= 1:
        raise ValueError(f"score_threshold={score_threshold!r} must be in [0, 1) and iou_threshold="
                         f"{iou_threshold!r} in (0, 1].")
    logits, deltas = flatten_outputs(outputs, num_classes)
    anchors = tf.constant(anchors, tf.float32)
    if logits.shape[1] is not None and logits.shape[1] != anchors.shape[0]:
        raise ValueError(f"F's outputs hold {logits.shape[1]} anchors, the anchor spec gives {anchors.shape[0]}: "
                         "they must come from the same levels, scales, ratios and image size.")
    boxes = decode(deltas, anchors[None])
    height, width = image_size
    boxes = tf.clip_by_value(boxes, 0.0, tf.constant([height, width, height, width], tf.float32))
    nmsed = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :], tf.sigmoid(logits), max_output_size_per_class=max_per_class,
        max_total_size=max_detections, iou_threshold=iou_threshold, score_threshold=score_threshold,
        clip_boxes=False)
    return (nmsed.nmsed_boxes.numpy(), nmsed.nmsed_scores.numpy(), nmsed.nmsed_classes.numpy().astype(np.int32),
            nmsed.valid_detections.numpy().astype(np.int32))


def _per_image(detected) -> list:
    boxes, scores, classes, counts = detected
    return [(b[:n], s[:n], c[:n]) for b, s, c, n in zip(boxes, scores, classes, counts)]


def detect_outputs(outputs, anchors, num_classes: int, image_size, *, batch_size: int = 32, **kwargs) -> list:
    """:func:`detect` over F's outputs already computed for N images (one ``[N, ...]`` array per output, e.g.
    an exported model's dequantized outputs), in batches: lists per image of ``(boxes, scores, classes)``."""
    outputs = [np.asarray(o, np.float32) for o in outputs]
    results = []
    for start in range(0, len(outputs[0]), batch_size):
        results += _per_image(detect([o[start:start + batch_size] for o in outputs], anchors, num_classes,
                                     image_size, **kwargs))
    return results


def detect_images(f, images, anchors, num_classes: int, *, batch_size: int = 32, **kwargs):
    """:func:`detect` of a model (F, H, or anything that maps a batch to F's outputs) over an array of images
    already at its input size, with the anchors given, in batches: lists per image of ``(boxes, scores,
    classes)``. For raw images of any size and the anchors F carries: :func:`agq_keras.detection.predict`."""
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"detect_images(): images must be a non-empty [N, H, W, C] array; got shape "
                         f"{images.shape}.")
    if images.dtype == np.uint8:
        raise ValueError("detect_images(): images are uint8; the detector takes float32 pixels in [0, 1] as in "
                         "training (pixels / 255: agq_keras.data.detection_twin.as_float).")
    results = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        results += _per_image(detect(f(batch, training=False), anchors, num_classes, images.shape[1:3], **kwargs))
    return results
