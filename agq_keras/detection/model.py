"""The quantized RetinaNet-style detector F and its auxiliary network H.

**F** (:func:`build_detector`): image -> per-level class logits ``[B, H_l, W_l, K * C]`` (outputs
``cls_p3, cls_p4, ...``) then per-level box deltas ``[B, H_l, W_l, K * 4]`` (``box_p3, ...``), K anchors
per position (:class:`~agq_keras.detection.boxes.AnchorSpec`). Box decoding and NMS stay outside F
(:mod:`agq_keras.detection.postprocess`).

* Backbone: one of our pre-activation ResNets (:func:`agq_keras.models.builder.make_net`: the same layer
  objects, quantizers and block fragments as the classification F; its classifier is not used), its stem
  at ``first_last_bits``. Stage ``s`` outputs stride ``stem * 2**(s-1)`` (stem 4 with the ImageNet stem, 1
  with the CIFAR stem). **Levels**: level ``l`` has stride ``2**l``; a level whose stride a stage has reads
  that stage's last block (the FPN's C_l); levels above the deepest stage are stride-2 3x3 convs on the
  level below (RetinaNet's P6/P7). On the 128x128 twin canvas the default is ResNet-20 with the ImageNet
  stem: stages at strides 4, 8, 16, so P3 (16x16) reads stage 2, P4 (8x8) stage 3, P5 (4x4) is extra;
  the CIFAR stem would put stage 1 at full resolution (128x128x16: several times the compute, for anchors
  no object of the twin needs).
* FPN: lateral ``BN -> ReLU -> q -> QConv 1x1``, top-down nearest 2x upsampling + Add, output
  ``BN -> ReLU -> q -> QConv 3x3`` per level (pre-activation, like the backbone: every low-bit conv reads
  a k-bit grid; BatchNorm in the FPN).
* Heads: a class and a box tower of ``head_depth`` ``BN -> ReLU -> q -> QConv 3x3`` whose convs are shared
  by all levels (RetinaNet) and whose BatchNorms are per level (shared convs, per-level statistics), then
  the prediction convs (``BN -> ReLU -> QConv 3x3`` at ``first_last_bits``, with a bias; the class bias
  starts at ``-log((1 - pi) / pi)``, pi = 0.01). Each output passes a linear ``Activation`` named after it.
  Every low-bit conv carries ``fragment=`` its block (``fpn_p3``, ``cls_tower1``, ...), so SSP and
  :mod:`agq_keras.structure` see the detector's blocks as they see a classification F's.

**H** (``aux=True``): :func:`agq_keras.auxiliary.attach` on F: H re-runs F's graph (every conv shared) with
its own BatchNorms (``h_<name>``) and adds full-precision adaptors on the backbone block (or conv,
``aux_placement="layer"``) outputs, aggregated as in eq. 1. H's FPN reads, for each stage it uses, the
aggregate ``g`` at that stage's last block (where F's FPN reads the stage's output; the stages' last blocks
are attach's ``exits``): the aggregated backbone feeds the shared FPN and heads, as in classification H's
head reads ``g_P``. ``fpn_adaptors=True`` also adds, per level, a full-precision adaptor (attach's
``bridges``) from the level's source (the stage's ``g``, or the level below for an extra level) onto H's FPN
output of that level. Both F and H are trained with :class:`~agq_keras.detection.losses.DetectionLoss` by the one
:class:`~agq_keras.training.AGTrainer` step.
"""

from __future__ import annotations

import math
import numbers

import keras

from agq_keras import quantizers
from agq_keras.auxiliary import PLACEMENTS, attach
from agq_keras.detection.boxes import AnchorSpec
from agq_keras.detection.detector import Detector, default_class_names
from agq_keras.layers import BNPersonality, QConv2D
from agq_keras.models.builder import aux_taps, block_outputs, make_net
from agq_keras.models.resnet import RESNETS
from agq_keras.quantizers.pairs import DEFAULT_FAMILY
from agq_keras.training.trainer import check_lambda

PRIOR = 0.01


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1.")
    return int(value)


class RetinaNet:
    """F's layer objects (backbone, FPN, heads) and their wiring (:meth:`forward`)."""

    def __init__(self, arch: str, *, num_classes: int, anchors: AnchorSpec, quantizer: str, w_bits: int,
                 a_bits: int, first_last_bits: int, input_channels: int, stem: str, plain: bool,
                 fpn_width: int, head_depth: int):
        self.backbone = make_net(arch, plain=plain, num_classes=2, quantizer=quantizer, w_bits=w_bits,
                                 a_bits=a_bits, first_last_bits=first_last_bits, input_channels=input_channels,
                                 stem=stem)
        self.num_classes = num_classes
        self.anchors = anchors
        spec = self.backbone.spec
        stem_stride = 4 if spec.stem == "imagenet" else 1
        self.stage_levels = {}  # level -> stage
        for s in range(1, len(spec.depths) + 1):
            stride = stem_stride * 2 ** (s - 1)
            self.stage_levels[int(math.log2(stride))] = s
        deepest = max(self.stage_levels)
        missing = [l for l in anchors.levels if l not in self.stage_levels and l <= deepest]
        if missing:
            raise ValueError(f"levels {missing} have no backbone stage of their stride: {arch} with the {spec.stem} "
                             f"stem has stages at levels {sorted(self.stage_levels)} (stride 2**level); levels above "
                             f"{deepest} are made by stride-2 convs. Allowed levels: {sorted(self.stage_levels)} and "
                             "above.")
        self.backbone_levels = [l for l in anchors.levels if l in self.stage_levels]
        if not self.backbone_levels:
            raise ValueError(f"levels={anchors.levels} use no backbone stage ({arch}, {spec.stem} stem: levels "
                             f"{sorted(self.stage_levels)}); the lowest level must be one of them.")
        self.extra_levels = [l for l in anchors.levels if l > deepest]
        if any(l != deepest + 1 + i for i, l in enumerate(self.extra_levels)) or (
                self.extra_levels and self.backbone_levels[-1] != deepest):
            raise ValueError(f"levels={anchors.levels}: levels above the deepest stage ({deepest}) must follow it "
                             "without a gap.")
        self.last_block = {}  # stage -> name of its last block
        for block in self.backbone.blocks:
            self.last_block[block.stage] = block.name

        def q_conv(filters, size, strides, name, block):
            wq, aq = quantizers.make_pair(quantizer, w_bits, a_bits)
            return QConv2D(filters, size, strides=strides, padding="same", kernel_quantizer=wq, input_quantizer=aq,
                           kernel_initializer="he_normal", name=name, fragment=block)

        self.lateral = {l: q_conv(fpn_width, 1, 1, f"fpn_p{l}_lateral", f"fpn_p{l}") for l in self.backbone_levels}
        self.output = {l: q_conv(fpn_width, 3, 1, f"fpn_p{l}_output", f"fpn_p{l}") for l in self.backbone_levels}
        self.output.update({l: q_conv(fpn_width, 3, 2, f"fpn_p{l}_output", f"fpn_p{l}") for l in self.extra_levels})
        self.towers = {kind: [q_conv(fpn_width, 3, 1, f"{kind}_tower{i}_conv", f"{kind}_tower{i}")
                              for i in range(1, head_depth + 1)] for kind in ("cls", "box")}
        k = anchors.num_anchors
        edge_w, edge_a = quantizers.edge_pair(first_last_bits)
        edge_w2, edge_a2 = quantizers.edge_pair(first_last_bits)
        bias = -math.log((1 - PRIOR) / PRIOR)
        self.predict = {
            "cls": QConv2D(k * num_classes, 3, padding="same", kernel_quantizer=edge_w, input_quantizer=edge_a,
                           use_bias=True, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                           bias_initializer=keras.initializers.Constant(bias), name="cls_predict"),
            "box": QConv2D(k * 4, 3, padding="same", kernel_quantizer=edge_w2, input_quantizer=edge_a2,
                           use_bias=True, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                           name="box_predict"),
        }

    def forward(self, inputs, bn: BNPersonality) -> list:
        """Outputs ``[cls_l for l in levels] + [box_l for l in levels]``."""
        blocks = self.backbone.features(inputs, bn)
        features = {stage: blocks[name] for stage, name in self.last_block.items()}  # C_s: stage s's output
        pyramid, merged = {}, None
        for l in reversed(self.backbone_levels):
            c = features[self.stage_levels[l]]
            lateral = self.lateral[l](bn.bn_relu(c, f"fpn_p{l}_lateral_bn"))
            if merged is not None:
                up = keras.layers.UpSampling2D(2, interpolation="nearest", name=bn.name(f"fpn_p{l}_upsample"))(merged)
                lateral = keras.layers.Add(name=bn.name(f"fpn_p{l}_add"))([lateral, up])
            merged = lateral
            pyramid[l] = self.output[l](bn.bn_relu(merged, f"fpn_p{l}_output_bn"))
        for l in self.extra_levels:
            pyramid[l] = self.output[l](bn.bn_relu(pyramid[l - 1], f"fpn_p{l}_output_bn"))
        outputs = {}
        for kind in ("cls", "box"):
            for l in self.anchors.levels:
                x = pyramid[l]
                for i, conv in enumerate(self.towers[kind], start=1):
                    x = conv(bn.bn_relu(x, f"{kind}_tower{i}_bn_p{l}"))
                x = self.predict[kind](bn.bn_relu(x, f"{kind}_predict_bn_p{l}"))
                outputs[f"{kind}_p{l}"] = keras.layers.Activation("linear", name=bn.name(f"{kind}_p{l}"))(x)
        return [outputs[f"{kind}_p{l}"] for kind in ("cls", "box") for l in self.anchors.levels]

    def aux_points(self, f: keras.Model, placement: str, fpn_adaptors: bool) -> dict:
        """:func:`agq_keras.auxiliary.attach`'s ``taps``, ``exits`` and ``bridges`` for H on F (which this object
        built): the backbone's taps, the stages' ends the FPN reads, and with ``fpn_adaptors`` one adaptor per
        level from what the level reads (a stage's end, or the level below) onto its output conv."""
        ends = block_outputs(f)
        reads = {l: f"fpn_p{l}_{'lateral' if l in self.backbone_levels else 'output'}_bn" for l in self.anchors.levels}
        bridges = {f"fpn_adaptor_p{l}": (reads[l], f"fpn_p{l}_output") for l in self.anchors.levels}
        return dict(taps=aux_taps(f, self.backbone, placement), bridges=bridges if fpn_adaptors else None,
                    exits=[ends[self.last_block[self.stage_levels[l]]] for l in self.backbone_levels])


def build_detector(arch: str = "resnet20", *, aux: bool = False, num_classes: int = 10,
                   input_shape=(128, 128, 1), quantizer: str = DEFAULT_FAMILY, w_bits: int = 4, a_bits: int = 4,
                   first_last_bits: int | None = None, stem: str | None = "imagenet", plain: bool = False,
                   anchors: AnchorSpec, class_names=None, fpn_width: int = 64, head_depth: int = 2,
                   aux_placement: str = "block", aux_lambda: float = 1.0, aux_relu: bool = False,
                   fpn_adaptors: bool = False, bn_momentum: float = 0.9, bn_epsilon: float = 1e-5):
    """The detector F (``aux=False``, a functional `keras.Model` with one input and ``2 * len(levels)`` outputs, a
    :class:`~agq_keras.detection.detector.Detector` that carries ``anchors``, ``class_names`` and its input size
    into ``f.keras`` and the TFLite file) or an :class:`~agq_keras.training.AGTrainer` of F and H (``aux=True``).
    See the module docstring. ``anchors`` (required): the :class:`~agq_keras.detection.boxes.AnchorSpec` F is
    trained with; ``class_names``: one string per class (default ``"0", "1", ...``). ``first_last_bits`` None: 16,
    or 32 when ``w_bits == a_bits == 32``. ``quantizer``: the family of the k-bit layers; the default ``"lsq"``
    (per-channel learned weight steps, activation steps from the data) is the recipe measured in docs/quantize.md (a
    two-stage 4-bit detector at the level of the float detector trained as long); the detection configs keep
    ``"dorefa"``, the quantizer of their recorded tables."""
    if arch not in RESNETS:
        raise ValueError(f"arch={arch!r} is not a detector backbone; allowed: {', '.join(RESNETS)}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 1.")
    fpn_width = _positive_int("fpn_width", fpn_width)
    head_depth = _positive_int("head_depth", head_depth) if head_depth != 0 else 0
    if aux_placement not in PLACEMENTS:
        raise ValueError(f"aux_placement={aux_placement!r} is not supported; allowed: {', '.join(PLACEMENTS)}.")
    aux_lambda = check_lambda(aux_lambda)
    if not isinstance(anchors, AnchorSpec):
        raise ValueError(f"anchors={anchors!r} must be an agq_keras.detection.AnchorSpec (levels and size_factor "
                         "as the detector is trained and decoded with, e.g. AnchorSpec(levels=(3, 4, 5), "
                         "size_factor=2.0) as in the detection configs).")
    class_names = default_class_names(num_classes) if class_names is None else tuple(class_names)
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}; give one per "
                         "class.")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, numbers.Integral) and d > 0 for d in shape):
        raise ValueError(f"input_shape={input_shape!r} must be (height, width, channels) with positive integers.")
    top = 2 ** anchors.levels[-1]
    if shape[0] % top or shape[1] % top:
        raise ValueError(f"input_shape={shape}: height and width must be multiples of {top} (the stride of the "
                         f"top level P{anchors.levels[-1]}), so that every level's grid is the anchors' grid.")
    if first_last_bits is None:
        first_last_bits = 32 if (w_bits == 32 and a_bits == 32) else quantizers.base.FIXED_POINT_BITS
    net = RetinaNet(arch, num_classes=int(num_classes), anchors=anchors, quantizer=quantizer, w_bits=w_bits,
                    a_bits=a_bits, first_last_bits=first_last_bits, input_channels=shape[-1], stem=stem,
                    plain=plain, fpn_width=fpn_width, head_depth=head_depth)
    inputs = keras.Input(shape=shape, name="image")
    f = Detector(inputs, net.forward(inputs, BNPersonality("", bn_momentum, bn_epsilon)), anchors=anchors,
                 class_names=class_names, name=f"retinanet_{arch}")
    f.detector = net
    if not aux:
        return f
    trainer = attach(f, **net.aux_points(f, aux_placement, bool(fpn_adaptors)), aux_lambda=aux_lambda,
                     placement=aux_placement, aux_relu=bool(aux_relu), bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)
    trainer.detector = net
    return trainer
