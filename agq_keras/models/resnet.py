"""Pre-activation ResNets (ImageNet and CIFAR stems; residual or plain).

One :class:`ResNet` object creates F's *parameterised* layer objects once
(quantized convs and the classifier). Its :meth:`body` / :meth:`head` wire
them into a graph, taking a BatchNorm "personality" (which BN layer to use
for a given role). F is ``head(body(x))``; H (:func:`agq_keras.auxiliary.attach`)
re-runs F's graph with its own BatchNorms and taps F's block outputs, or the
layers :meth:`ResNet.layer_taps` names.

Block (pre-activation, paper §3.1.1): ``BN -> ReLU -> q(.) -> QConv``; the
activation quantizer lives in the QConv's ``input_quantizer``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import numpy as np

from agq_keras import quantizers
from agq_keras.layers import BNPersonality, QConv2D, QDense, QGlobalAveragePooling2D


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    block: str  # "basic" or "bottleneck"
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    stem: str  # "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3/1 conv)

    @property
    def downsampling(self) -> int:
        stem = 4 if self.stem == "imagenet" else 1
        return stem * 2 ** (len(self.depths) - 1)


RESNETS = {
    "resnet18": ArchSpec("basic", (2, 2, 2, 2), (64, 128, 256, 512), "imagenet"),
    "resnet34": ArchSpec("basic", (3, 4, 6, 3), (64, 128, 256, 512), "imagenet"),
    "resnet50": ArchSpec("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), "imagenet"),
    "resnet20": ArchSpec("basic", (3, 3, 3), (16, 32, 64), "cifar"),
    "resnet32": ArchSpec("basic", (5, 5, 5), (16, 32, 64), "cifar"),
    "resnet56": ArchSpec("basic", (9, 9, 9), (16, 32, 64), "cifar"),
}


@dataclasses.dataclass
class Block:
    """The quantized convs of one block (an SSP / AG fragment)."""

    name: str
    convs: list  # main-path QConv2D, in order
    shortcut: Optional[QConv2D]  # projection shortcut (residual nets only)
    downsamples: bool
    stage: int = 1


RESIDUAL_STREAMS = ("float", "int16", "int8")
STREAM_RANGE = 128.0  # the int16 residual stream holds at least [-128, 128]
INT8_STREAM_RANGE = 24.0  # the int8 stream of stage s holds at least +-24 * 2^(s-1) (docs/export.md: measured)
INPUT_STEP = 1.0 / 255  # the int8 input's step for images scaled to [0, 1] from 8 bits (x / 255)
STEM_STEP_MULTIPLE = 8  # the int16 stem output's step: 8x the stream's (a power of two: the first ADD stays exact)


def stream_grid(residual_stream: str, quantizer: str, w_bits: int, a_bits: int, stage: int = 1):
    """``(step, limit, bits)`` of the residual stream's integer grid in ``stage`` (1, 2, ...), or None
    (``"float"``).

    A block's last conv (and a projection shortcut) outputs integers times ``u = s_w s_a``, the
    product of the weight and activation grid steps (1/9 for 2-bit DoReFa).

    - ``"int16"``: step ``u / M`` with the largest integer ``M`` that keeps ``32767 * step >=
      STREAM_RANGE``; sums of conv outputs are then exact int16 values and only the stem is rounded,
      in F and in the export alike.
    - ``"int8"``: step ``N u`` with the smallest odd ``N`` that keeps ``127 * step >=
      INT8_STREAM_RANGE * 2^(stage - 1)`` (a float stream's range roughly doubles per stage). F rounds
      each conv output that writes the stream to this grid (``acc / N`` to the nearest integer: never
      a tie, as ``N`` is odd) and saturates it and every sum to int8, as the exported int8 convs and
      ADDs do, so the export is exact with no int16 tensor. The step changes only at a stage's first
      block, whose skip is a projection conv (the old stream reaches it through BN, ReLU and q).

    Needs constant grid steps (DoReFa with 2..4-bit weights and activations)."""
    if residual_stream not in RESIDUAL_STREAMS:
        raise ValueError(f"residual_stream={residual_stream!r} is not supported; allowed: "
                         f"{', '.join(RESIDUAL_STREAMS)}.")
    if residual_stream == "float":
        return None
    wq, aq = quantizers.make_pair(quantizer, w_bits, a_bits)
    w_grid, a_grid = wq.export_grid(), aq.export_grid()
    w_step = None if w_grid is None else w_grid.step
    unit = None if w_step is None or a_grid is None or a_grid.kind != "activation" else w_step * a_grid.step
    if residual_stream == "int8" and unit is not None:
        n = max(1, int(np.ceil(INT8_STREAM_RANGE * 2 ** (stage - 1) / (127 * unit))))
        return unit * (n + 1 - n % 2), 127, 8
    multiple = 0 if unit is None else int((2**15 - 1) * unit // STREAM_RANGE)
    if multiple < 1:
        raise ValueError(
            f"residual_stream={residual_stream!r} needs weight and activation grids with constant steps (DoReFa "
            f"with 2..4-bit weights and activations); got quantizer={quantizer!r}, w_bits={w_bits}, "
            f"a_bits={a_bits}. Use residual_stream='float'.")
    return unit / multiple, 2**15 - 1, 16


def stream_name(where: str) -> str:
    """The name of the residual stream's rounding after ``where`` (the stem, a block or a conv)."""
    return f"{where}_stream_q"


class ResNet:
    """F's layer objects for a pre-activation ResNet and the wiring of them."""

    def __init__(self, spec: ArchSpec, *, plain: bool, num_classes: int, quantizer: str,
                 w_bits: int, a_bits: int, first_last_bits: int, input_channels: int,
                 residual_stream: str = "float"):
        self.spec = spec
        self.plain = plain
        self.first_last_bits = first_last_bits
        stream_grid(residual_stream, quantizer, w_bits, a_bits)  # a ValueError for a bad value, plain or not
        self.stream_grids = {} if plain or residual_stream == "float" else {
            s: stream_grid(residual_stream, quantizer, w_bits, a_bits, s) for s in range(1, len(spec.depths) + 1)}

        def q_conv(filters, size, strides, name, block):
            wq, aq = quantizers.make_pair(quantizer, w_bits, a_bits)
            return QConv2D(filters, size, strides=strides, padding="same", kernel_quantizer=wq,
                           input_quantizer=aq, kernel_initializer="he_normal", name=name, fragment=block)

        edge_q = quantizers.edge_pair(first_last_bits)[0]
        if self.int16_stream and spec.stem == "cifar" and first_last_bits == 16:
            # stem weight steps: power-of-two multiples of (stem output step / input step), so the
            # exported stem's output multiplier is a power of two, i.e. exact (docs/export.md)
            edge_q = quantizers.FixedPoint(16, unit=self.stream_grids[1][0] * STEM_STEP_MULTIPLE / INPUT_STEP)
        elif self.int8_stream and spec.stem == "cifar" and first_last_bits in (8, 16):
            # per-channel stem weight steps (stream step / input step) / N_c, N_c odd: the exported stem's
            # output multiplier is 1/N_c, so F's rounding of it to the int8 stream never ties (docs/export.md)
            edge_q = quantizers.FixedPoint(first_last_bits, per_channel=True, odd_fraction=True,
                                           unit=self.stream_grids[1][0] / INPUT_STEP)
        stem_size, stem_stride = (7, 2) if spec.stem == "imagenet" else (3, 1)
        self.stem_conv = QConv2D(spec.widths[0], stem_size, strides=stem_stride, padding="same",
                                 kernel_quantizer=edge_q, kernel_initializer="he_normal",
                                 name="stem_conv")
        self.blocks: list[Block] = []
        expansion = 4 if spec.block == "bottleneck" else 1
        channels = spec.widths[0]
        for s, (depth, width) in enumerate(zip(spec.depths, spec.widths), start=1):
            for b in range(1, depth + 1):
                name = f"stage{s}_block{b}"
                strides = 2 if (b == 1 and s > 1) else 1
                if spec.block == "basic":
                    convs = [q_conv(width, 3, strides, f"{name}_conv1", name),
                             q_conv(width, 3, 1, f"{name}_conv2", name)]
                else:
                    convs = [q_conv(width, 1, 1, f"{name}_conv1", name),
                             q_conv(width, 3, strides, f"{name}_conv2", name),
                             q_conv(width * expansion, 1, 1, f"{name}_conv3", name)]
                out_channels = width * expansion
                needs_projection = strides != 1 or channels != out_channels
                shortcut = None
                if needs_projection and not plain:
                    shortcut = q_conv(out_channels, 1, strides, f"{name}_shortcut", name)
                self.blocks.append(Block(name, convs, shortcut, strides != 1, s))
                channels = out_channels
        self.make_head(num_classes, first_last_bits)

    def make_head(self, num_classes: int, first_last_bits: int) -> None:
        """The head's layer objects (the classifier; with ``first_last_bits=8`` also the integer pool and the
        logits quantizer), used by :meth:`head`. Builders with their own body (MobileNetV2) call it too."""
        head_q = quantizers.edge_pair(first_last_bits)
        # first_last_bits=8: an integer head (see head()); its pool and logits quantizer are shared by F and
        # H like the classifier (their static ranges move with F's forward passes only)
        self.int8_head = first_last_bits == 8
        self.pool = QGlobalAveragePooling2D(head_q[1], name="pool") if self.int8_head else None
        self.logits_q = quantizers.RangeActivation(8, signed=True, name="logits_q") if self.int8_head else None
        self.classifier = QDense(num_classes, kernel_quantizer=head_q[0],
                                 input_quantizer=None if self.int8_head else head_q[1], name="classifier")

    def body(self, x, bn: BNPersonality):
        """Stem and blocks: the last block's output."""
        return self.features(x, bn)[self.blocks[-1].name]

    def features(self, x, bn: BNPersonality) -> dict:
        """Stem and blocks: ``{block name: the block's output}``, in order (a detector's FPN reads the stages')."""
        outputs = {}
        x = self.stem_conv(x)
        if self.spec.stem == "imagenet":
            x = bn.bn_relu(x, "stem_bn")
            x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=bn.name("stem_pool"))(x)
        x = self.stream(x, bn, "stem", 1)
        for block in self.blocks:
            inputs = x
            pre = None
            for i, conv in enumerate(block.convs, start=1):
                act = bn.bn_relu(x, f"{block.name}_bn{i}")
                pre = act if pre is None else pre
                x = conv(act)
                if i == len(block.convs) and self.int8_stream:
                    x = self.stream(x, bn, conv.name, block.stage)
            if not self.plain:
                skip = inputs
                if block.shortcut is not None:
                    skip = block.shortcut(pre)
                    skip = self.stream(skip, bn, block.shortcut.name, block.stage) if self.int8_stream else skip
                x = keras.layers.Add(name=bn.name(f"{block.name}_add"))([x, skip])
                x = self.stream(x, bn, block.name, block.stage)
            outputs[block.name] = x
        return outputs

    def layer_taps(self) -> dict:
        """AG's ``"layer"`` taps (:func:`agq_keras.auxiliary.attach`): ``{F's layer after each main-path conv:
        the conv's name}`` (that layer is the conv, or the int8 stream's rounding of a block's last conv)."""
        taps = {}
        for block in self.blocks:
            for i, conv in enumerate(block.convs, start=1):
                rounded = i == len(block.convs) and self.int8_stream
                taps[stream_name(conv.name) if rounded else conv.name] = conv.name
        return taps

    @property
    def int16_stream(self) -> bool:
        return bool(self.stream_grids) and self.stream_grids[1][2] == 16

    @property
    def int8_stream(self) -> bool:
        return bool(self.stream_grids) and self.stream_grids[1][2] == 8

    def stream(self, x, bn: BNPersonality, where: str, stage: int):
        """The residual stream's quantizer (:func:`stream_grid` of ``stage``) after the stem and every
        Add, and for the int8 stream also after the convs writing it; the identity for a float stream."""
        if not self.stream_grids:
            return x
        step, limit, bits = self.stream_grids[stage]
        step *= STEM_STEP_MULTIPLE if where == "stem" and bits == 16 else 1
        return quantizers.FixedStep(step, limit, bits=bits, name=bn.name(stream_name(where)))(x)

    def head(self, x, bn: BNPersonality):
        """Final BN -> ReLU -> global average pool -> classifier (logits).

        With ``first_last_bits=8`` the head is integer as deployed: F rounds the final feature map to 8
        bits and the pooled mean to a grid tied to it (:class:`~agq_keras.layers.QGlobalAveragePooling2D`:
        never a tie), and its logits to int8 on a static symmetric range (a signed
        :class:`~agq_keras.quantizers.RangeActivation`), so the exported int8 head rounds where F rounds and
        the argmax of the int8 logits (ties to the first class) is F's own (docs/export.md)."""
        x = bn.bn_relu(x, "final_bn")
        if not self.int8_head:
            return self.classifier(keras.layers.GlobalAveragePooling2D(name=bn.name("pool"))(x))
        return self.logits_q(self.classifier(self.pool(x)))

    def quantized_layers(self) -> list:
        """All QConv2D/QDense objects of F (shared with H)."""
        layers = [self.stem_conv]
        for block in self.blocks:
            layers += block.convs + ([block.shortcut] if block.shortcut is not None else [])
        return layers + [self.classifier]
