"""GroupNet (Zhuang et al., CVPR 2019): every block decomposed into M binary bases.

A block of a ResNet-style F becomes M parallel binary branches ("bases"),
each with its own convs and BatchNorms, combined with learnable scalars
lambda_i (initialised 1/M):

    B_i(x)   = BN_i2(QConv_i2(BN_i1(QConv_i1(x))))      (binary QConvs)
    block(x) = shortcut(x) + sum_i lambda_i B_i(x)

The shortcut is the identity or Bi-Real's real-valued downsampling
(``AvgPool -> 1x1 conv (16-bit) -> BN``); ``plain=True`` drops it. With
identity shortcuts this equals the paper's ``sum_i lambda_i (B_i(x) + x)``
up to the scale ``sum_i lambda_i`` (= 1 at initialisation) on ``x``.

:class:`GroupNet` reuses :class:`~agq_keras.models.resnet.ResNet` (stem,
classifier, block list; each base's convs are clones of ResNet's) and keeps
the ``body/head/blocks`` protocol: a block's ``convs`` lists all M bases'
convs, so an SSP fragment (a block) switches the whole group. AG's ``"layer"``
taps (:meth:`GroupNet.layer_taps`) are every base's BN after an inner conv
position and the block's output after the last.
"""

from __future__ import annotations

import numbers

import keras

from agq_keras.layers import QConv2D
from agq_keras.models.bireal import add_projections, real_stem, shortcut
from agq_keras.models.resnet import ArchSpec, BNPersonality, ResNet

DEFAULT_BASES = 5  # M in the paper's Tables 1 and 4


@keras.saving.register_keras_serializable(package="agq_keras")
class BaseSum(keras.layers.Layer):
    """``sum_i lambda_i x_i`` over a list of M tensors; lambda learnable, init 1/M."""

    def __init__(self, num_bases: int, **kwargs):
        super().__init__(**kwargs)
        self.num_bases = check_bases(num_bases)

    def build(self, input_shape):
        self.scales = self.add_weight(name="scales", shape=(self.num_bases,),
                                      initializer=keras.initializers.Constant(1.0 / self.num_bases))

    def call(self, inputs):
        if len(inputs) != self.num_bases:
            raise ValueError(f"BaseSum expects {self.num_bases} inputs, got {len(inputs)}.")
        total = inputs[0] * self.scales[0]
        for i in range(1, self.num_bases):
            total = total + inputs[i] * self.scales[i]
        return total

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config["num_bases"] = self.num_bases
        return config


def check_bases(num_bases) -> int:
    if isinstance(num_bases, bool) or not isinstance(num_bases, numbers.Integral) or num_bases < 1:
        raise ValueError(f"GroupNet: num_bases (M) = {num_bases!r} must be an integer >= 1.")
    return int(num_bases)


class GroupNet(ResNet):
    """F builder: a basic-block :class:`ArchSpec` with M binary bases per block (``groupnet18``)."""

    def __init__(self, spec: ArchSpec, *, plain: bool, num_bases: int = DEFAULT_BASES, **kwargs):
        num_bases = check_bases(num_bases)
        if spec.block != "basic":
            raise ValueError(f"GroupNet needs basic blocks; got a {spec.block!r} spec.")
        super().__init__(spec, plain=True, **kwargs)
        self.plain = plain
        self.num_bases = num_bases
        self.bases: dict[str, list[list[QConv2D]]] = {}
        self.base_sums: dict[str, BaseSum] = {}
        for block in self.blocks:
            template = block.convs
            self.bases[block.name] = [
                [QConv2D.from_config({**conv.get_config(), "name": f"{block.name}_base{m}_conv{i}"})
                 for i, conv in enumerate(template, start=1)]
                for m in range(1, num_bases + 1)]
            block.convs = [conv for base in self.bases[block.name] for conv in base]
            self.base_sums[block.name] = BaseSum(num_bases, name=f"{block.name}_sum")
        if not plain:
            add_projections(self)

    def body(self, x, bn: BNPersonality):
        x = real_stem(self, x, bn)
        for block in self.blocks:
            bases = self.bases[block.name]
            ys = [x] * self.num_bases
            positions = len(bases[0])
            for i in range(positions):
                ys = [bn(f"{block.name}_base{m}_bn{i + 1}")(base[i](y))
                      for m, (base, y) in enumerate(zip(bases, ys), start=1)]
            y = self.base_sums[block.name](ys)
            if not self.plain:
                y = keras.layers.Add(name=bn.name(f"{block.name}_add"))([y, shortcut(x, block, bn)])
            x = y
        return x

    def layer_taps(self) -> dict:
        """AG's ``"layer"`` taps: after each inner conv position every base's BN (labelled
        ``<block>_base<m>_conv<i>``; ``<block>_conv<i>`` with one base), after the last the block's output
        (``<block>_conv<last>``)."""
        taps = {}
        for block in self.blocks:
            positions = len(self.bases[block.name][0])
            for i in range(1, positions):
                for m in range(1, self.num_bases + 1):
                    label = f"{block.name}_conv{i}" if self.num_bases == 1 else f"{block.name}_base{m}_conv{i}"
                    taps[f"{block.name}_base{m}_bn{i}"] = label
            taps[f"{block.name}_{'sum' if self.plain else 'add'}"] = f"{block.name}_conv{positions}"
        return taps
