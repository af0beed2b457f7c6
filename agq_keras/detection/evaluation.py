"""COCO-style evaluation with pycocotools: AP@[.5:.95], AP50, AP75 (the ``detection`` extra).

Ground truth and detections are ``[y1, x1, y2, x2]`` pixel boxes (converted here to COCO's ``[x, y, w,
h]``); class ``c`` is COCO category ``c + 1``. An image may have no ground-truth object (its detections
are then false positives); a dataset with no object at all has no AP (``ValueError``). No detection at
all gives AP 0.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from agq_keras.detection.boxes import PAD_LABEL, check_annotations
from agq_keras.detection.postprocess import detect_images, detect_outputs


def _coco():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("COCO evaluation needs pycocotools: pip install -e '.[detection]' "
                          "(or pip install pycocotools).") from None
    return COCO, COCOeval


def _xywh(box):
    y1, x1, y2, x2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_ap(gt_boxes, gt_labels, detections, num_classes: int, image_size) -> dict:
    """``{"AP", "AP50", "AP75"}`` (fractions in [0, 1]) of ``detections`` (one ``(boxes [D, 4], scores [D],
    classes [D])`` per image) against padded ground truth ``gt_boxes [N, M, 4]``, ``gt_labels [N, M]`` (-1:
    padding), validated by :func:`~agq_keras.detection.boxes.check_annotations`."""
    COCO, COCOeval = _coco()
    gt_boxes, gt_labels = np.asarray(gt_boxes, np.float64), np.asarray(gt_labels)
    check_annotations(gt_boxes, gt_labels, image_size, num_classes, what="ground truth")
    if len(detections) != len(gt_boxes):
        raise ValueError(f"coco_ap(): {len(detections)} detection lists for {len(gt_boxes)} images; give one per "
                         "image.")
    if not (gt_labels != PAD_LABEL).any():
        raise ValueError("coco_ap(): the ground truth holds no object (every label is -1); AP is undefined.")
    images = [{"id": i + 1, "height": int(image_size[0]), "width": int(image_size[1])} for i in range(len(gt_boxes))]
    annotations = []
    for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        for box, label in zip(boxes, labels):
            if label == PAD_LABEL:
                continue
            xywh = _xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                                "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
    results = []
    for i, (boxes, scores, classes) in enumerate(detections):
        classes = np.asarray(classes)
        if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(f"coco_ap(): image {i} has a detection of class {int(classes.max())}; allowed "
                             f"0..{num_classes - 1}.")
        for box, score, cls in zip(np.asarray(boxes), np.asarray(scores), classes):
            results.append({"image_id": i + 1, "category_id": int(cls) + 1, "bbox": _xywh(box),
                            "score": float(score)})
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "num_detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50, ap75 = (max(0.0, float(v)) for v in evaluator.stats[:3])  # -1: no ground truth of any class
    return {"AP": ap, "AP50": ap50, "AP75": ap75, "num_detections": len(results)}


def evaluate(model, images, gt_boxes, gt_labels, anchors, num_classes: int, *, batch_size: int = 32,
             **detect_kwargs) -> dict:
    """:func:`coco_ap` of a detector (F, H, or anything that maps a batch of images to F's outputs) on
    images with padded ground truth; decoding and NMS by :func:`~agq_keras.detection.postprocess.detect_images`."""
    images = np.asarray(images)
    detections = detect_images(model, images, anchors, num_classes, batch_size=batch_size, **detect_kwargs)
    return coco_ap(gt_boxes, gt_labels, detections, num_classes, images.shape[1:3])


def evaluate_outputs(outputs, gt_boxes, gt_labels, anchors, num_classes: int, image_size, *, batch_size: int = 32,
                     **detect_kwargs) -> dict:
    """:func:`coco_ap` of F's outputs already computed on the images (one ``[N, ...]`` array per output, e.g.
    the dequantized outputs of F's int8 TFLite model: :func:`agq_keras.export.verify_detector`); decoding
    and NMS by :func:`~agq_keras.detection.postprocess.detect_outputs`, as :func:`evaluate` does for a model."""
    detections = detect_outputs(outputs, anchors, num_classes, image_size, batch_size=batch_size, **detect_kwargs)
    return coco_ap(gt_boxes, gt_labels, detections, num_classes, image_size)
