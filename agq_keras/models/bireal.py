"""Bi-Real Net (Liu et al., ECCV 2018): a real-valued shortcut around every conv.

Each binary conv of a ResNet basic block becomes

    x_{l+1} = BN(QConv(x_l)) + shortcut(x_l)

where the QConv binarises its input (``sign``, the activation quantizer) and
its kernel, and the shortcut is the identity or, where the shape changes, the
real-valued downsampling ``AvgPool 2x2 -> 1x1 conv (16-bit) -> BN``. There is
no ReLU in the blocks (``sign`` of a ReLU output would be constant).
``plain=True`` drops every shortcut (a plain binary net, e.g. to be trained
with AG). The stem is ResNet's without the ReLU; the head is ResNet's.

:class:`BiRealNet` reuses :class:`~agq_keras.models.resnet.ResNet` for the
stem, the block convs, the classifier and the block list, so H and SSP work
unchanged (a block's ``convs`` are its binary convs; ``shortcut`` is the
real-valued projection, if any).
"""

from __future__ import annotations

import keras

from agq_keras import quantizers
from agq_keras.layers import QConv2D
from agq_keras.models.resnet import ArchSpec, BNPersonality, ResNet


def real_projection(filters: int, bits: int, block: str) -> QConv2D:
    """The real-valued (``bits`` = 8, 16 or 32: ``first_last_bits``) 1x1 conv of a downsampling shortcut."""
    kernel_q = quantizers.edge_pair(bits)[0]
    return QConv2D(filters, 1, padding="same", kernel_quantizer=kernel_q, kernel_initializer="he_normal",
                   name=f"{block}_shortcut", fragment=block)


def add_projections(net: ResNet) -> None:
    """Give every block whose first conv changes the shape a real projection shortcut."""
    channels = net.spec.widths[0]
    for block in net.blocks:
        first = block.convs[0]
        out = int(block.convs[-1].filters)
        if block.downsamples or int(first.filters) != channels:
            block.shortcut = real_projection(int(first.filters), net.first_last_bits, block.name)
        channels = out


def shortcut(x, block, bn: BNPersonality):
    """Identity, or ``AvgPool 2x2 (if strided) -> block.shortcut -> BN``."""
    if block.shortcut is None:
        return x
    if block.downsamples:
        x = keras.layers.AveragePooling2D(2, strides=2, padding="same", name=bn.name(f"{block.name}_pool"))(x)
    return bn(f"{block.name}_shortcut_bn")(block.shortcut(x))


def real_stem(net: ResNet, x, bn: BNPersonality):
    """ResNet's stem without the ReLU: conv -> BN (-> 3x3/2 max-pool for ImageNet)."""
    x = bn("stem_bn")(net.stem_conv(x))
    if net.spec.stem == "imagenet":
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=bn.name("stem_pool"))(x)
    return x


class BiRealNet(ResNet):
    """F builder for Bi-Real nets on a basic-block :class:`ArchSpec` (``birealnet18``)."""

    def __init__(self, spec: ArchSpec, *, plain: bool, **kwargs):
        if spec.block != "basic":
            raise ValueError(f"Bi-Real nets need basic blocks; got a {spec.block!r} spec.")
        super().__init__(spec, plain=True, **kwargs)  # no ResNet projections: ours are real-valued
        self.plain = plain
        if not plain:
            add_projections(self)

    def body(self, x, bn: BNPersonality):
        """Stem and blocks."""
        x = real_stem(self, x, bn)
        for block in self.blocks:
            for i, conv in enumerate(block.convs, start=1):
                y = bn(f"{block.name}_bn{i}")(conv(x))
                if not self.plain:
                    skip = shortcut(x, block, bn) if i == 1 else x
                    y = keras.layers.Add(name=bn.name(f"{block.name}_add{i}"))([y, skip])
                x = y
        return x

    def layer_taps(self) -> dict:
        """AG's ``"layer"`` taps: ``{the layer after each conv (its BN, or the sum with its shortcut): the conv's
        name}``."""
        return {f"{block.name}_{'bn' if self.plain else 'add'}{i}": conv.name
                for block in self.blocks for i, conv in enumerate(block.convs, start=1)}
