"""One-stage detection (RetinaNet-style) with quantized FPN and heads, trained with AG.

* :mod:`~agq_keras.detection.boxes` -- anchors (:class:`AnchorSpec`), box coding, IoU, annotation checks.
* :mod:`~agq_keras.detection.losses` -- anchor targets (:func:`assign`, :func:`with_targets`), focal loss,
  smooth-L1, :class:`DetectionLoss`.
* :mod:`~agq_keras.detection.model` -- :func:`build_detector` (F, or an AGTrainer of F and H).
* :mod:`~agq_keras.detection.detector` -- :class:`Detector`: F carrying its anchors, class names and input size
  (saved in ``f.keras``, written into the TFLite file's metadata); :func:`with_spec` for an F saved without them.
* :mod:`~agq_keras.detection.inference` -- :func:`predict`: raw images of any size -> boxes in their own pixels,
  for the Keras F and for its TFLite file (``export.Runner``), with the anchors read from the model.
* :mod:`~agq_keras.detection.postprocess` -- decode + NMS outside F (:func:`detect`, :func:`detect_images`,
  :func:`detect_outputs` on outputs already computed, e.g. by F's int8 TFLite model).
* :mod:`~agq_keras.detection.evaluation` -- COCO AP with pycocotools (:func:`coco_ap`, :func:`evaluate`).
* :mod:`~agq_keras.detection.visualize` -- :func:`draw_detections` (a PNG of boxes on images).

Boxes are ``[y1, x1, y2, x2]`` pixels everywhere, except :func:`predict`'s, which are ``[x1, y1, x2, y2]``
(torchvision's) unless ``box_format="yxyx"``.
"""

from agq_keras.detection.boxes import AnchorSpec, check_annotations, decode, encode, iou
from agq_keras.detection.detector import Detector, with_spec
from agq_keras.detection.evaluation import coco_ap, evaluate, evaluate_outputs
from agq_keras.detection.losses import DetectionLoss, assign, focal_loss, smooth_l1, with_targets
from agq_keras.detection.model import RetinaNet, build_detector
from agq_keras.detection.inference import letterbox, predict
from agq_keras.detection.postprocess import detect, detect_images, detect_outputs
from agq_keras.detection.visualize import draw_detections

__all__ = ["AnchorSpec", "DetectionLoss", "Detector", "RetinaNet", "assign", "build_detector", "check_annotations",
           "coco_ap", "decode", "detect", "detect_images", "detect_outputs", "draw_detections", "evaluate",
           "evaluate_outputs", "encode", "focal_loss", "iou", "letterbox", "predict", "smooth_l1", "with_spec",
           "with_targets"]
