"""Pre-activation MobileNetV2 (Sandler et al., CVPR 2018) as an F builder: inverted residual blocks with
depthwise convs, a width multiplier ``alpha``, an ImageNet or a small-input stem.

**Pre-activation, unlike the original.** The original block is post-activation with a linear bottleneck:
``1x1 conv -> BN -> ReLU6 -> 3x3 depthwise -> BN -> ReLU6 -> 1x1 conv -> BN`` (no activation after the
projection, and the skip adds BN outputs). Here every conv follows the paper's F convention
(``BN -> [ReLU] -> q(.) -> QConv``, §3.1.1), as :class:`~agq_keras.models.resnet.ResNet` does:

    block(x) = x + project(q(ReLU(BN3(dw(q(ReLU(BN2(expand(q_s(BN1(x)))))))))))      bottleneck="linear"
    block(x) = x + project(q(ReLU(BN3(dw(q(ReLU(BN2(expand(q(ReLU(BN1(x))))))))))))  bottleneck="relu"

with the ``expand`` conv (and BN1) absent when the expansion t = 1, and the identity skip only where the
stride is 1 and the input and output widths agree (none with ``plain=True``). The bottleneck stream (the sum
of the projections) is linear, as in the original; ``bottleneck`` says what the expand conv reads:

* ``"linear"`` (the default where the quantizer family has a signed activation grid: LSQ): ``BN1`` alone,
  quantized on a signed k-bit grid ``q_s`` (``-2^(k-1) .. 2^(k-1) - 1`` steps). The ReLU the pre-activation
  convention would put there zeroes half of the low-dimensional stream before it is expanded, which is the
  information loss the original's linear bottleneck avoids: measured in float (benchmarks/mobilenetv2_bottleneck.py,
  6000 Fashion-MNIST images, 3 epochs) the ReLU variant reaches 0.51 training accuracy, the linear one 0.80.
* ``"relu"`` (the default for the families with unsigned activations only, DoReFa among them): ``ReLU(BN1)``
  and the unsigned grid, as every other conv; issue 11's table (4-bit DoReFa) used it.

Every other conv (depthwise, project) reads an unsigned k-bit activation grid (the activation quantizer is its
``input_quantizer``), as in the paper's F. Each BN and ReLU before a conv folds into the previous op's
requantization, so the integer export stores each k-bit tensor on F's own grid: exact, op by op, for a plain F
(tests/test_mobilenetv2.py); the signed grid is stored shifted by ``2^(k-1)`` steps, the shift folded into the
expand conv's bias (agq_keras.export.lower); a residual F's float stream is calibrated (int16), as for the
ResNets. Plain ``ReLU``, not ReLU6: the activation quantizer clips anyway.

Layout (the table of the original, ``(t, c, n, s)`` per stage):

    stem_conv        3x3 conv, 32·alpha channels, stride 2 (ImageNet) or 1 (``stem="cifar"``, small
                     inputs), first_last_bits weights, no input quantizer (it reads the image)
    stage1..stage7   (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1):
                     blocks ``stage{s}_block{b}``, each an SSP / AG block (``fragment`` = block name),
                     convs ``<block>_expand`` / ``_depthwise`` (a QDepthwiseConv2D) / ``_project``
    last             ``BN -> ReLU -> q -> 1x1 QConv last_conv`` (1280 channels; 1280·alpha when alpha > 1),
                     a one-conv block of its own (k-bit, so an SSP fragment and an AG tap like the others)
    head             ResNet's: ``final_bn -> ReLU -> global average pool -> classifier`` (first_last_bits;
                     with 8 the integer head)

Channels are ``c·alpha`` rounded to a multiple of 8 (:func:`make_divisible`, the reference
implementation's rounding). The ImageNet stem downsamples by 32 in all. The small stem (``stem="cifar"``,
for 28x28 / 32x32 images, as the CIFAR ports of MobileNetV2 do) makes the stem *and* the first stride-2
stage (stage2) stride 1, so F downsamples by 8 (a 32x32 image ends at 4x4, like ResNet-18 with its CIFAR
stem); that is the arch's minimum input size.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import keras

from agq_keras import quantizers
from agq_keras.layers import QConv2D, QDepthwiseConv2D
from agq_keras.models.resnet import Block, BNPersonality, ResNet

# what an expand conv reads: BN alone on a signed grid, or BN -> ReLU (module docstring)
BOTTLENECKS = ("linear", "relu")
# (expansion t, output channels c, blocks n, first stride s) per stage: the original's table
INVERTED_RESIDUALS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                      (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never more than 10 %
    below ``value`` (the reference MobileNetV2's ``_make_divisible``)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def default_bottleneck(quantizer: str) -> str:
    """``"linear"`` where the quantizer family has a signed activation grid (LSQ), else ``"relu"``."""
    return "linear" if quantizers.pairs.has_signed_activation(quantizer) else "relu"


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"MobileNetV2: alpha={alpha!r} (the width multiplier) must be a positive finite number.")
    return float(alpha)


@dataclasses.dataclass(frozen=True)
class MobileNetSpec:
    stem: str  # "imagenet" (3x3/2 conv) or "cifar" (3x3/1 conv and stage2 at stride 1)
    stages: tuple = INVERTED_RESIDUALS  # (t, c, n, s) per stage
    stem_channels: int = 32
    last_channels: int = 1280

    def strides(self) -> tuple[int, ...]:
        """Each stage's first stride; the small stem keeps the first stride-2 stage at stride 1."""
        strides = [s for _, _, _, s in self.stages]
        if self.stem == "cifar" and 2 in strides:
            strides[strides.index(2)] = 1
        return tuple(strides)

    @property
    def downsampling(self) -> int:
        return (2 if self.stem == "imagenet" else 1) * math.prod(self.strides())


MOBILENETV2 = MobileNetSpec("imagenet")


@dataclasses.dataclass
class InvertedResidual(Block):
    """A block whose ``convs`` are ``[expand (if t > 1), depthwise, project]``; ``identity``: it adds its input
    (stride 1 and equal widths; never with ``plain=True``); ``linear_input``: its first conv reads ``BN1`` with
    no ReLU (an expand conv of a linear bottleneck)."""

    identity: bool = False
    linear_input: bool = False


class MobileNetV2(ResNet):
    """F's layer objects for a pre-activation MobileNetV2 and their wiring (ResNet's protocol and head:
    ``body``, ``head``, ``blocks``, ``quantized_layers``)."""

    def __init__(self, spec: MobileNetSpec, *, plain: bool, num_classes: int, quantizer: str, w_bits: int,
                 a_bits: int, first_last_bits: int, input_channels: int, alpha: float = 1.0,
                 residual_stream: str = "float", bottleneck: str | None = None):
        if bottleneck is None:
            bottleneck = default_bottleneck(quantizer)
        if bottleneck not in BOTTLENECKS:
            raise ValueError(f"MobileNetV2: bottleneck={bottleneck!r} is not supported; allowed: "
                             f"{', '.join(BOTTLENECKS)}.")
        if bottleneck == "linear" and not quantizers.pairs.has_signed_activation(quantizer):
            raise ValueError(f"MobileNetV2: bottleneck='linear' quantizes the expand convs' unrectified input on a "
                             f"signed grid, which quantizer={quantizer!r} does not have; use a family with one "
                             f"({', '.join(quantizers.pairs.signed_families())}) or bottleneck='relu'.")
        if residual_stream != "float":
            raise ValueError(f"MobileNetV2: residual_stream={residual_stream!r} is not supported; allowed: float "
                             "(the integer residual streams are for the ResNets).")
        self.spec = spec
        self.plain = plain
        self.alpha = check_alpha(alpha)
        self.bottleneck = bottleneck
        self.first_last_bits = first_last_bits
        self.stream_grids = {}  # a float residual stream (ResNet.stream is the identity)

        def q_conv(cls, name, block, *args, signed_input=False, **kwargs):
            wq, aq = quantizers.make_pair(quantizer, w_bits, a_bits, signed_input=signed_input)
            return cls(*args, padding="same", kernel_quantizer=wq, input_quantizer=aq, name=name, fragment=block,
                       **kwargs)

        def pointwise(filters, name, block, signed_input=False):
            return q_conv(QConv2D, name, block, filters, 1, kernel_initializer="he_normal", signed_input=signed_input)

        channels = make_divisible(spec.stem_channels * self.alpha)
        self.stem_conv = QConv2D(channels, 3, strides=2 if spec.stem == "imagenet" else 1, padding="same",
                                 kernel_quantizer=quantizers.edge_pair(first_last_bits)[0],
                                 kernel_initializer="he_normal", name="stem_conv")
        self.blocks: list[Block] = []
        for s, ((t, c, n, _), stride) in enumerate(zip(spec.stages, spec.strides()), start=1):
            out = make_divisible(c * self.alpha)
            for b in range(1, n + 1):
                name = f"stage{s}_block{b}"
                strides = stride if b == 1 else 1
                linear = t != 1 and bottleneck == "linear"
                convs = [pointwise(channels * t, f"{name}_expand", name, signed_input=linear)] if t != 1 else []
                # He init of a depthwise kernel (3, 3, C, 1): each output reads 9 inputs, which is
                # Keras's fan_out (its fan_in counts 9·C)
                convs.append(q_conv(QDepthwiseConv2D, f"{name}_depthwise", name, 3, strides=strides,
                                    depthwise_initializer=keras.initializers.VarianceScaling(2.0, "fan_out")))
                convs.append(pointwise(out, f"{name}_project", name))
                identity = not plain and strides == 1 and channels == out
                self.blocks.append(InvertedResidual(name, convs, None, strides != 1, s, identity, linear))
                channels = out
        last = make_divisible(spec.last_channels * max(1.0, self.alpha))
        self.blocks.append(InvertedResidual("last", [pointwise(last, "last_conv", "last")], None, False,
                                            len(spec.stages) + 1))
        self.make_head(num_classes, first_last_bits)

    def body(self, x, bn: BNPersonality):
        """Stem, inverted residual blocks and the last 1x1 conv."""
        x = self.stem_conv(x)
        for block in self.blocks:
            inputs = x
            for i, conv in enumerate(block.convs, start=1):
                role = f"{block.name}_bn{i}"
                x = conv(bn(role)(x) if i == 1 and block.linear_input else bn.bn_relu(x, role))
            if block.identity:
                x = keras.layers.Add(name=bn.name(f"{block.name}_add"))([x, inputs])
        return x

    def layer_taps(self) -> dict:
        """AG's ``"layer"`` taps: every conv's output, labelled by the conv."""
        return {conv.name: conv.name for block in self.blocks for conv in block.convs}
