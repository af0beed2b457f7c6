"""H, the auxiliary mixed-precision residual network (paper §3.1.1, eq. 1).

H is built by calling F's layer objects (shared weights) with H's own
BatchNorm personality, and adding full-precision adaptors phi_p (1x1 conv +
BN) on the tapped outputs O_p of F's blocks (``placement="block"``, the
paper's default) or of every conv (``"layer"``). They are aggregated as

    g_1 = phi_1(O_1),    g_p = phi_p(O_p) + T_p(g_{p-1})

where T_p is the identity when shapes agree and, at a stage change, a
full-precision strided 1x1 conv + BN (a ResNet-style projection shortcut).
With ``relu_after_sum=True`` a ReLU follows each sum (off by default: the
sums stay linear, so g is a pure "skip path"). H's head (its own final BN,
ReLU, pooling, then F's shared classifier) reads g_P.
"""

from __future__ import annotations

import keras

from agq_keras.layers import AuxAdaptor
from agq_keras.models.resnet import BNPersonality

PLACEMENTS = ("block", "layer")


class Aggregator:
    """Collects tapped outputs and builds the adaptor / aggregation graph."""

    def __init__(self, placement: str = "block", relu_after_sum: bool = False,
                 bn_momentum: float = 0.9, bn_epsilon: float = 1e-5, prefix: str = "h_"):
        if placement not in PLACEMENTS:
            raise ValueError(f"aux_placement={placement!r} is not supported; allowed: {', '.join(PLACEMENTS)}.")
        self.placement = placement
        self.relu_after_sum = relu_after_sum
        self.bn_kwargs = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)
        self.prefix = prefix
        self.g = None
        self.count = 0

    def tap(self, kind: str, o, name: str) -> None:
        if kind != self.placement:
            return
        self.count += 1
        p = self.count
        phi = AuxAdaptor(int(o.shape[-1]), name=f"{self.prefix}adaptor{p}_{name}", **self.bn_kwargs)(o)
        if self.g is None:
            self.g = phi
            return
        g = self.g
        if tuple(g.shape[1:]) != tuple(o.shape[1:]):
            stride = max(1, round(int(g.shape[1]) / int(o.shape[1])))
            g = AuxAdaptor(int(o.shape[-1]), strides=stride, name=f"{self.prefix}transition{p}",
                           **self.bn_kwargs)(g)
        g = keras.layers.Add(name=f"{self.prefix}aggregate{p}")([phi, g])
        if self.relu_after_sum:
            g = keras.layers.ReLU(name=f"{self.prefix}aggregate{p}_relu")(g)
        self.g = g


def build_h(net, inputs, *, placement: str = "block", relu_after_sum: bool = False,
            bn_momentum: float = 0.9, bn_epsilon: float = 1e-5) -> keras.Model:
    """Build H around ``net`` (any F builder with ``body(x, bn, tap)`` and ``head(x, bn)``)."""
    aggregator = Aggregator(placement, relu_after_sum, bn_momentum, bn_epsilon)
    bn = BNPersonality("h_", bn_momentum, bn_epsilon)
    net.body(inputs, bn, aggregator.tap)
    if aggregator.g is None:
        raise ValueError(f"H has no auxiliary branch: the network has no {placement!r} outputs to tap.")
    return keras.Model(inputs, net.head(aggregator.g, bn), name="H")
