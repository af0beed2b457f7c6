"""H, the auxiliary mixed-precision residual network (paper §3.1.1, eq. 1), and :func:`attach`, the one
function that builds it, for every F.

H re-runs F's graph on F's input: every conv, dense, pooling and quantizer layer is F's own object (shared
weights), every BatchNormalization is H's own copy (``h_<name>``, starting from F's values), and
full-precision adaptors phi_p (1x1 conv + BN) read the tapped outputs O_p: F's block outputs
(``placement="block"``, the paper's default) or its convs (``"layer"``). They are aggregated as

    g_1 = phi_1(O_1),    g_p = phi_p(O_p) + T_p(g_{p-1})

where T_p is the identity when shapes agree and, at a stage change, a full-precision strided 1x1 conv + BN
(a ResNet-style projection shortcut). With ``aux_relu=True`` a ReLU follows each sum (off by default: the
sums stay linear, so g is a pure "skip path"). The layers after the body read the aggregate: H's head (its
own final BN, then F's shared layers) reads g_P, a detector's FPN reads g at each stage it uses. Only F is
evaluated, saved and exported.

``agq_keras.build(..., aux=True)`` is ``attach`` on the built F (with the builder's taps), and so is
``build_detector(..., aux=True)``; :func:`agq_keras.models.quantize` nets, reloaded F and your own models
take ``attach(f)`` directly.
"""

from __future__ import annotations

import keras

from agq_keras import structure
from agq_keras.layers import AuxAdaptor
from agq_keras.training.trainer import AGTrainer, check_lambda

PLACEMENTS = ("block", "layer")


class Aggregator:
    """Builds the adaptors and the aggregation of eq. 1 from the tapped outputs, in the order they come."""

    def __init__(self, relu_after_sum: bool = False, bn_momentum: float = 0.9, bn_epsilon: float = 1e-5,
                 prefix: str = "h_"):
        self.relu_after_sum = relu_after_sum
        self.bn_kwargs = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)
        self.prefix = prefix
        self.g = None
        self.count = 0

    def tap(self, o, name: str) -> None:
        self.count += 1
        p = self.count
        phi = AuxAdaptor(int(o.shape[-1]), name=f"{self.prefix}adaptor{p}_{name}", **self.bn_kwargs)(o)
        if self.g is None:
            self.g = phi
            return
        g = self.project(self.g, o, f"{self.prefix}transition{p}",
                         f"AG cannot aggregate tap {name!r} (shape {tuple(o.shape[1:])}) with the taps before it "
                         f"(shape {tuple(self.g.shape[1:])})")
        g = keras.layers.Add(name=f"{self.prefix}aggregate{p}")([phi, g])
        if self.relu_after_sum:
            g = keras.layers.ReLU(name=f"{self.prefix}aggregate{p}_relu")(g)
        self.g = g

    def project(self, x, like, name: str, what: str, always: bool = False):
        """A full-precision (strided) 1x1 projection of ``x`` to ``like``'s shape; ``x`` itself where the
        shapes agree, unless ``always``."""
        if tuple(x.shape[1:]) == tuple(like.shape[1:]) and not always:
            return x
        stride = max(1, round(int(x.shape[1]) / int(like.shape[1])))
        y = AuxAdaptor(int(like.shape[-1]), strides=stride, name=name, **self.bn_kwargs)(x)
        if tuple(y.shape[1:]) != tuple(like.shape[1:]):
            raise ValueError(f"{what}: a strided 1x1 projection gives {tuple(y.shape[1:])}. Choose taps whose "
                             "height and width shrink by integer factors.")
        return y


def _names(f: keras.Model, value, what: str, four_d: bool = True) -> list:
    """``value`` (a non-empty list of F's layer names) checked, in F's order."""
    if not (isinstance(value, (list, tuple)) and value and all(isinstance(t, str) for t in value)):
        raise ValueError(f"attach(): {what}={value!r} is not allowed; give a non-empty list of layer names.")
    unknown = [t for t in value if t not in {l.name for l in f.layers}]
    if unknown:
        raise ValueError(f"attach(): {what} {unknown} are not layers of F {f.name!r}.")
    flat = [t for t in value if four_d and len(f.get_layer(t).output.shape) != 4]
    if flat:
        raise ValueError(f"attach(): {what} {flat} do not output a (batch, height, width, channels) tensor; AG's "
                         "1x1-conv adaptors need feature maps.")
    order = {l.name: i for i, l in enumerate(f.layers)}
    return sorted(set(value), key=order.get)


def attach(f: keras.Model, taps="auto", *, exits=None, bridges=None, aux_lambda: float = 1.0,
           placement: str = "block", aux_relu: bool = False, ssp=None, bn_momentum: float = 0.9,
           bn_epsilon: float = 1e-5) -> AGTrainer:
    """An :class:`~agq_keras.training.AGTrainer` of F and its H (see the module docstring).

    Args:
      f: a functional F with one input (:func:`agq_keras.build`, :func:`agq_keras.models.quantize`, a
        reloaded ``f.keras``, a detector with several outputs).
      taps: ``"auto"`` (:func:`agq_keras.structure.auto_taps`: F's block outputs when its quantized layers
        name their blocks, else every ``Add`` output and the last output of each spatial stage), a list of
        layer names whose (4-D) outputs H taps, or a dict of them to the labels that name their adaptors
        (``h_adaptor<p>_<label>``; by default the block a tap ends, else the layer's name).
      exits: the layers where F's body hands over: a layer that reads one of them and leads to no tap or
        exit (the head, a detector's FPN) reads in H the aggregate g of the taps so far instead. None: the
        last tap (H's head reads g_P).
      bridges: ``{label: (reader, target)}``: one more full-precision adaptor ``h_<label>`` from the tensor
        that layer ``reader`` reads in H, added (``h_<label>_add``) to layer ``target``'s output in H (a
        detector's adaptors on its FPN levels). Made in F's order of the targets.
      aux_lambda: lambda of eq. 2, >= 0.
      placement: for ``taps="auto"``: ``"block"`` (the taps above) or ``"layer"`` (every low-bit
        quantized conv).
      aux_relu: a ReLU after each aggregation sum.
      ssp: an :class:`agq_keras.training.ssp.SSP` (block fragments by ``fragment`` or by name prefix), or None.
      bn_momentum, bn_epsilon: of the adaptors' BatchNorms.
    """
    structure.functional_config(f, "attach()")
    if len(f.inputs) != 1:
        raise ValueError(f"attach(): F must have one input; {f.name!r} has {len(f.inputs)}.")
    if placement not in PLACEMENTS:
        raise ValueError(f"attach(): placement={placement!r} is not supported; allowed: {', '.join(PLACEMENTS)}.")
    aux_lambda = check_lambda(aux_lambda)
    labels = {b.output: b.name for b in structure.blocks(f)}
    if isinstance(taps, str) and taps == "auto":
        tap_names = structure.auto_taps(f, placement)
        if not tap_names:
            raise ValueError(f"attach(): F {f.name!r} has nothing to tap with taps='auto', placement={placement!r} "
                             "(no Add layer and no spatial stage with a low-bit quantized layer); name the taps.")
    elif isinstance(taps, dict) and taps and all(isinstance(v, str) and v for v in taps.values()):
        tap_names = _names(f, list(taps), "taps")
        labels.update(taps)
    elif isinstance(taps, (list, tuple)) and taps and all(isinstance(t, str) for t in taps):
        tap_names = _names(f, taps, "taps")
    else:
        raise ValueError(f"attach(): taps={taps!r} is not allowed; give 'auto', a non-empty list of layer names "
                         "or a dict of them to non-empty labels.")
    exit_names = [tap_names[-1]] if exits is None else _names(f, exits, "exits", four_d=False)
    bridges = dict(bridges or {})
    for label, pair in bridges.items():
        if not (isinstance(label, str) and label and isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise ValueError(f"attach(): bridges entry {label!r}: {pair!r} is not allowed; give "
                             "{label: (reader layer name, target layer name)}.")
        _names(f, list(pair), f"bridges[{label!r}]")
    readers, targets = {}, {}
    for label, (reader, target) in bridges.items():
        readers.setdefault(reader, []).append(label)
        targets.setdefault(target, []).append(label)

    aggregator = Aggregator(bool(aux_relu), bn_momentum, bn_epsilon)
    prefix = aggregator.prefix
    trunk = structure.ancestors(f, [(n, 0, 0) for n in tap_names + exit_names])
    at_exit, sources, h_bns = {}, {}, {}

    def layer_for(layer):
        if not isinstance(layer, keras.layers.BatchNormalization):
            return layer
        if layer.name not in h_bns:
            h_bns[layer.name] = keras.layers.BatchNormalization.from_config(
                {**layer.get_config(), "name": prefix + layer.name})
        return h_bns[layer.name]

    def read(node, ref, tensor):
        if ref in at_exit and node.ref not in trunk:
            tensor = at_exit[ref]
        if node.ref[1] == 0:
            for label in readers.get(node.layer.name, ()):
                sources.setdefault(label, tensor)
        return tensor

    def after(node, tensor):
        name = node.layer.name
        if node.ref[1] != 0:
            return tensor
        if name in tap_names:
            aggregator.tap(tensor, labels.get(name, name))
        if name in exit_names:
            if aggregator.g is None:
                raise ValueError(f"attach(): exit {name!r} comes before every tap ({tap_names[0]!r} is the first).")
            at_exit[node.ref] = aggregator.g
        for label in targets.get(name, ()):
            if label not in sources:
                raise ValueError(f"attach(): bridges[{label!r}]: its reader comes after its target {name!r} in F.")
            phi = aggregator.project(sources[label], tensor, prefix + label,
                                     f"attach(): bridges[{label!r}] cannot bring {tuple(sources[label].shape[1:])} "
                                     f"to {name!r}'s {tuple(tensor.shape[1:])}", always=True)
            tensor = keras.layers.Add(name=f"{prefix}{label}_add")([tensor, phi])
        return tensor

    outputs = structure.rebuild(f, f.inputs, layer_for=layer_for, after=after, read=read)
    h = keras.Model(f.inputs[0], outputs[0] if len(outputs) == 1 else outputs, name="H")
    for name, bn in h_bns.items():
        bn.set_weights(f.get_layer(name).get_weights())
    return AGTrainer(f, h, aux_lambda=aux_lambda, ssp=ssp, name=f"{f.name}_ag")
