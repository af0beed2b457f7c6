"""One-stage detection (RetinaNet-style) with quantized FPN and heads, trained with AG.

* :mod:`~agq_keras.detection.boxes` -- anchors (:class:`AnchorSpec`), box coding, IoU, annotation checks.
* :mod:`~agq_keras.detection.losses` -- anchor targets (:func:`assign`, :func:`with_targets`), focal loss,
  smooth-L1, :class:`DetectionLoss`.
* :mod:`~agq_keras.detection.model` -- :func:`build_detector` (F, or an AGTrainer of F and H).
* :mod:`~agq_keras.detection.postprocess` -- decode + NMS outside F (:func:`detect`, :func:`predict`,
  :func:`detect_outputs` on outputs already computed, e.g. by F's int8 TFLite model).
* :mod:`~agq_keras.detection.evaluation` -- COCO AP with pycocotools (:func:`coco_ap`, :func:`evaluate`).
* :mod:`~agq_keras.detection.visualize` -- :func:`draw_detections` (a PNG of boxes on images).

Boxes are ``[y1, x1, y2, x2]`` pixels everywhere.
"""

from agq_keras.detection.boxes import AnchorSpec, check_annotations, decode, encode, iou
from agq_keras.detection.evaluation import coco_ap, evaluate, evaluate_outputs
from agq_keras.detection.losses import DetectionLoss, assign, focal_loss, smooth_l1, with_targets
from agq_keras.detection.model import RetinaNet, build_detector
from agq_keras.detection.postprocess import detect, detect_outputs, predict
from agq_keras.detection.visualize import draw_detections

__all__ = ["AnchorSpec", "DetectionLoss", "RetinaNet", "assign", "build_detector", "check_annotations", "coco_ap",
           "decode", "detect", "detect_outputs", "draw_detections", "evaluate", "evaluate_outputs", "encode",
           "focal_loss", "iou", "predict", "smooth_l1", "with_targets"]
