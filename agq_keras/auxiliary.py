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

Two ways to build H, one construction: :func:`build_h` re-runs a built-in builder's ``body``/``head``
with H's BatchNorms (what ``agq_keras.build(aux=True)`` does), and :func:`attach` re-runs the graph of
any functional F (:func:`agq_keras.models.quantize`, a reloaded F, your own model) with every
BatchNormalization replaced by H's own copy and every other layer shared, tapping the layers named by
``taps`` and feeding g_P to whatever follows the last tap.
"""

from __future__ import annotations

import keras

from agq_keras import structure
from agq_keras.layers import AuxAdaptor, BNPersonality
from agq_keras.training.trainer import AGTrainer, check_lambda

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
            if tuple(g.shape[1:]) != tuple(o.shape[1:]):
                raise ValueError(f"AG cannot aggregate tap {name!r} (shape {tuple(o.shape[1:])}) with the taps before "
                                 f"it (shape {tuple(self.g.shape[1:])}): a strided 1x1 projection gives "
                                 f"{tuple(g.shape[1:])}. Choose taps whose height and width shrink by integer factors.")
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


def attach(f: keras.Model, taps="auto", *, aux_lambda: float = 1.0, placement: str = "block", aux_relu: bool = False,
           ssp=None, bn_momentum: float = 0.9, bn_epsilon: float = 1e-5) -> AGTrainer:
    """An :class:`~agq_keras.training.AGTrainer` of F and an H built around any functional F.

    H re-runs F's graph on F's input: every conv, dense, pooling and quantizer layer is F's own object
    (shared weights), every BatchNormalization is H's own copy (named ``h_<name>``, starting from F's
    values), and the outputs ``O_p`` of the tapped layers get the adaptors and the residual-style
    aggregation of eq. 1 (:class:`Aggregator`). The layers after the last tap read ``g_P`` in H, so H's
    head is F's head on the aggregate. Only F is evaluated and saved.

    Args:
      f: a functional F with one input and one output (:func:`agq_keras.build`,
        :func:`agq_keras.models.quantize`, or a reloaded ``f.keras``).
      taps: ``"auto"`` (:func:`agq_keras.structure.auto_taps`: F's block outputs when its quantized layers
        name their blocks, else every ``Add`` output and the last output of each spatial stage) or a list
        of layer names whose (4-D) outputs H taps.
      aux_lambda: lambda of eq. 2, >= 0.
      placement: for ``taps="auto"``: ``"block"`` (the taps above) or ``"layer"`` (every low-bit
        quantized conv).
      aux_relu: a ReLU after each aggregation sum.
      ssp: an :class:`agq_keras.training.ssp.SSP` (block fragments by ``fragment`` or by name prefix), or None.
      bn_momentum, bn_epsilon: of the adaptors' BatchNorms.
    """
    structure.functional_config(f, "attach()")
    if len(f.inputs) != 1 or len(f.outputs) != 1:
        raise ValueError(f"attach(): F must have one input and one output; {f.name!r} has {len(f.inputs)} and "
                         f"{len(f.outputs)}.")
    if placement not in PLACEMENTS:
        raise ValueError(f"attach(): placement={placement!r} is not supported; allowed: {', '.join(PLACEMENTS)}.")
    aux_lambda = check_lambda(aux_lambda)
    names = {l.name for l in f.layers}
    if isinstance(taps, str) and taps == "auto":
        tap_names = structure.auto_taps(f, placement)
        if not tap_names:
            raise ValueError(f"attach(): F {f.name!r} has nothing to tap with taps='auto', placement={placement!r} "
                             "(no Add layer and no spatial stage with a low-bit quantized layer); name the taps.")
    elif isinstance(taps, (list, tuple)) and taps and all(isinstance(t, str) for t in taps):
        unknown = [t for t in taps if t not in names]
        if unknown:
            raise ValueError(f"attach(): taps {unknown} are not layers of F {f.name!r}.")
        flat = [t for t in taps if len(f.get_layer(t).output.shape) != 4]
        if flat:
            raise ValueError(f"attach(): taps {flat} do not output a (batch, height, width, channels) tensor; AG's "
                             "1x1-conv adaptors need feature maps.")
        order = {l.name: i for i, l in enumerate(f.layers)}
        tap_names = sorted(set(taps), key=order.get)
    else:
        raise ValueError(f"attach(): taps={taps!r} is not allowed; give 'auto' or a non-empty list of layer names.")
    labels = {b.output: b.name for b in structure.blocks(f)}
    aggregator = Aggregator(placement, bool(aux_relu), bn_momentum, bn_epsilon)
    h_bns: dict = {}

    def layer_for(layer):
        if not isinstance(layer, keras.layers.BatchNormalization):
            return layer
        if layer.name not in h_bns:
            h_bns[layer.name] = keras.layers.BatchNormalization.from_config(
                {**layer.get_config(), "name": aggregator.prefix + layer.name})
        return h_bns[layer.name]

    def after(node, tensor):
        name = node.layer.name
        if node.ref[1] != 0 or name not in tap_names:
            return tensor
        aggregator.tap(placement, tensor, labels.get(name, name))
        return aggregator.g if name == tap_names[-1] else tensor

    h = keras.Model(f.inputs[0], structure.rebuild(f, f.inputs, layer_for=layer_for, after=after)[0], name="H")
    for name, bn in h_bns.items():
        bn.set_weights(f.get_layer(name).get_weights())
    return AGTrainer(f, h, aux_lambda=aux_lambda, ssp=ssp, name=f"{f.name}_ag")
