"""The 4-bit detector (issue 12): RetinaNet-style, ResNet backbone, on the Fashion-MNIST detection twin.

  --config=detection.py:resnet20_float        full precision (32-bit everywhere)
  --config=detection.py:resnet20_4bit         4-bit DoReFa backbone (but its stem), FPN and heads; 16-bit stem
                                              and prediction convs
  --config=detection.py:resnet20_4bit_ag      the same F trained with AG (adaptors on the backbone blocks)
  --config=detection.py:resnet20_4bit_ag_fpn  AG with adaptors on the FPN levels too
  (and resnet18_*: ResNet-18 widths 64..512, ImageNet stem)
  --config=detection.py:quick                 resnet20_4bit_ag on 1024 canvases, 6 epochs: ~4 minutes on a CPU

Canvas 128x128 (1-6 garments, scales 0.75-2), ImageNet stem (stride 4): P3 (16x16) reads stage 2, P4 (8x8)
stage 3 (ResNet-18: P5 stage 4; ResNet-20: P5 is a stride-2 conv on P4). Anchors 2 x stride (16 px on
P3; the paper's 4 x stride would start at 32 px, larger than most garments), 3 scales, 3 ratios.
``dataset`` may be ``coco2017`` / ``voc2007`` (tensorflow-datasets, prepared beforehand in ``data_dir``;
``canvas_size`` is then the square input size).
"""

from agq_keras.configs.base import get_base_config

ARCHS = ("resnet20", "resnet18")
METHODS = ("float", "4bit", "4bit_ag", "4bit_ag_fpn")
VARIANTS = tuple(f"{a}_{m}" for a in ARCHS for m in METHODS) + ("quick",)
DATASETS = ("fmnist_twin", "coco2017", "voc2007")


def add_detection_keys(c):
    """The detection keys on top of the base schema (``task`` selects the detection run)."""
    c.task = "detection"
    c.dataset = "fmnist_twin"  # fmnist_twin | coco2017 | voc2007
    c.canvas_size = 128  # the twin's canvas (and the square input of COCO/VOC)
    c.max_objects = 6  # garments per canvas (1..max), and the padding of every image's boxes
    c.train_canvases = 2000  # twin: canvases per split (COCO/VOC: images taken, 0 = all for training)
    c.test_canvases = 500
    c.stem = "imagenet"
    c.plain = False
    c.levels = (3, 4, 5)
    c.anchor_size_factor = 2.0
    c.fpn_width = 64
    c.head_depth = 2
    c.fpn_adaptors = False  # AG: adaptors on the FPN levels too
    c.score_threshold = 0.05
    c.plot_images = 4  # test canvases drawn in detections.png
    return c


def get_config(variant: str = "resnet20_4bit_ag"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}.")
    c = add_detection_keys(get_base_config())
    quick = variant == "quick"
    arch, _, method = ("resnet20_4bit_ag" if quick else variant).partition("_")
    c.arch = arch
    c.quantizer = "dorefa"
    c.w_bits = c.a_bits = 32 if method == "float" else 4
    c.aux = method.startswith("4bit_ag")
    c.fpn_adaptors = method == "4bit_ag_fpn"
    c.epochs = 12
    c.lr_decay_epochs = (9, 11)
    c.batch_size = 32
    c.optimizer = "adam"
    c.learning_rate = 2e-3
    if quick:  # measured: 4 min 17 s on 2 shared CPU cores, F AP 9.6 / AP50 21.2 (seed 0; README, Detection)
        c.train_canvases, c.test_canvases, c.epochs, c.lr_decay_epochs = 1024, 200, 6, (5,)
    return c
