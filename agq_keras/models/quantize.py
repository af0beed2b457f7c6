"""`quantize()`: any float functional Keras model -> F, with the same topology and k-bit quantizers.

>>> base = keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), classes=10,
...                                       classifier_activation=None)
>>> f = agq_keras.quantize(base, w_bits=4, a_bits=4, policy={"block_1_*": 8})
>>> trainer = agq_keras.auxiliary.attach(f)          # F + H, fit() like any model

Every Conv2D, DepthwiseConv2D and Dense becomes a QConv2D / QDepthwiseConv2D / QDense with the same config and its
float weights, a weight quantizer and, following the pre-activation convention of the paper's blocks (``BN -> ReLU
-> q(.) -> QConv``), an activation quantizer on its input where a ReLU-like op feeds it (a ReLU, ReLU6 or
``Activation("relu")`` layer, or a layer with ``activation="relu"``, possibly through padding, dropout, upsampling,
max pooling, flattening or reshaping). A layer fed by anything else (a linear bottleneck, a residual sum) keeps a
float input: an unsigned k-bit grid would clip its negative values. The first weighted layers (those reading the
model input) and the last ones (whose outputs reach the model output through no other weighted layer) get
``first_last_bits``, as in :func:`agq_keras.build`: no input quantizer on the first, the edge activation quantizer
on the last.

What the exporter cannot lower (:mod:`agq_keras.lowerable`: e.g. Concatenate, AveragePooling2D, a sigmoid or
hard-swish) is refused up front, naming the layer, before anything is built or trained. A softmax may end the
model: a ``Dense(activation="softmax")`` head becomes the Dense (logits) followed by an
``Activation("softmax")`` layer named ``<dense>_softmax``, so F computes what the model computed, trains with
the loss that fits its output, and exports its logits (the softmax is left out of the file, said in its notes).

The default quantizers are the recipe for a user's float model (LSQ, :mod:`agq_keras.quantizers.lsq`): a learned
weight step per output channel, initialised from the weights the model holds at its first call; a learned
activation step, initialised from the first training batch, or, for an input that a ``ReLU(max_value=m)`` bounds
(keras.applications' ReLU6), starting on the whole ``[0, m]``. Measured against the float continuation of the same
start in docs/quantize.md.
"""

from __future__ import annotations

import fnmatch
import numbers

import keras

from agq_keras import lowerable, quantizers, structure
from agq_keras.layers import QConv2D, QDense, QDepthwiseConv2D, QGlobalAveragePooling2D
from agq_keras.quantizers.fixed import EDGE_BITS
from agq_keras.quantizers.pairs import DEFAULT_FAMILY, has_per_channel_option

# float layer class -> its quantized twin (the Q layers themselves are re-quantized)
_QUANTIZED_TWIN = ((keras.layers.DepthwiseConv2D, QDepthwiseConv2D), (keras.layers.Conv2D, QConv2D),
                   (keras.layers.Dense, QDense))
# the layers quantize() accepts: those the exporter lowers (agq_keras.lowerable)
SUPPORTED_LAYERS = lowerable.LAYERS
# keeps ReLU outputs non-negative: a quantized layer reading through it still reads a ReLU-like op
_KEEPS_SIGN = ("ZeroPadding2D", "UpSampling2D", "Dropout", "MaxPooling2D", "GlobalAveragePooling2D",
               "GlobalMaxPooling2D", "Flatten", "Reshape")
_Q_CONFIG_KEYS = ("kernel_quantizer", "input_quantizer", "fragment")


def _twin(layer):
    for float_cls, q_cls in _QUANTIZED_TWIN:
        if isinstance(layer, float_cls):
            return q_cls
    return None


def _softmax_dense(layer, at_output: bool) -> bool:
    """A Dense (or QDense) softmax head: quantize() splits it into the Dense and a softmax layer."""
    return at_output and isinstance(layer, keras.layers.Dense) and layer.get_config().get("activation") == "softmax"


def _check_layer(layer, at_output: bool) -> None:
    """Refuses, naming the layer, what the exporter cannot lower (a Dense softmax head is split instead)."""
    why = "" if _softmax_dense(layer, at_output) else lowerable.problem(layer, at_output)
    if why:
        raise ValueError(f"quantize(): layer {layer.name!r} ({type(layer).__name__}) cannot be exported to integer "
                         f"TFLite: {why}. Replace it before quantize(), or keep that part of the model float "
                         "outside F.")


def _relu_like(layer) -> bool:
    cls = type(layer).__name__
    if cls == "ReLU":
        return True
    if cls == "Activation":
        return layer.get_config()["activation"] in ("relu", "relu6")
    return _twin(layer) is not None and layer.get_config().get("activation") in ("relu", "relu6")


def _bits_pair(value, pattern):
    """``bits`` -> (bits, bits); ``(w, a)``; ``{"w_bits": w, "a_bits": a}``."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"w_bits", "a_bits"})
        if unknown or not value:
            raise ValueError(f"quantize(): policy[{pattern!r}] = {value!r}: allowed keys are 'w_bits' and 'a_bits'.")
        return value.get("w_bits"), value.get("a_bits")
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return tuple(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return value, value
    raise ValueError(f"quantize(): policy[{pattern!r}] = {value!r} is not allowed; give a bit width (e.g. 4), a "
                     "(w_bits, a_bits) pair or {'w_bits': .., 'a_bits': ..}.")


def quantize(model: keras.Model, *, quantizer: str = DEFAULT_FAMILY, w_bits: int = 2, a_bits: int = 2,
             first_last_bits=None, stream_bits=None, policy=None, per_channel=None, name=None) -> keras.Model:
    """F from a float functional ``model`` (see the module docstring). The model is not changed.

    Args:
      model: a functional `keras.Model` (or a built `keras.Sequential`) of the supported layers
        (:data:`SUPPORTED_LAYERS`); layers already quantized (QConv2D, ...) are re-quantized.
      quantizer: quantizer family (``agq_keras.quantizers.families()``). The default, ``"lsq"``, is the recipe
        for a user's model: LSQ weights with a learned step per output channel and LSQ activations with a
        learned step, both initialised from the data (the weights the model holds, the first training batch;
        a quantizer reading a ``ReLU(max_value=m)`` starts on the whole ``[0, m]``), 2..8 bits. ``"dorefa"``
        is the paper's (fixed [0, 1] activation range: it clips a ReLU6's outputs at 1), ``"pact"`` a learned
        clip with DoReFa weights.
      w_bits, a_bits: bit widths of the weighted layers between the first and the last.
      first_last_bits: bits of the first and last weighted layers: None (16, or 32 when w_bits = a_bits =
        32), 8, 16 or 32. With 8 the head is integer as in :func:`agq_keras.build`: a global average pool
        feeding the last Dense becomes a :class:`~agq_keras.layers.QGlobalAveragePooling2D` (8-bit map and
        mean), and a signed 8-bit :class:`~agq_keras.quantizers.RangeActivation` (``logits_q``) rounds the
        logits, so the exported int8 head rounds where F rounds.
      stream_bits: None (default: the tensors no quantizer reads stay float, as in the paper's F) or 8: F
        rounds every *linear* tensor that a layer other than a ReLU or BatchNorm reads (the outputs of
        ``Add`` layers, of BatchNorms feeding convs or sums -- a linear bottleneck --, of convs without a
        ReLU feeding sums or padding) to a signed 8-bit static range
        (``RangeActivation(8, signed=True)``, a layer named ``<producer>_stream_q``), as an int8 runtime
        stores them. With ``first_last_bits=8`` the export then needs no int16 tensor and rounds where F
        rounds (docs/export.md, "Any model").
      policy: mixed precision: ``{layer name or fnmatch pattern: bits | (w_bits, a_bits) | {"w_bits": w,
        "a_bits": a}}`` (a missing key keeps the default). Later patterns win over earlier ones; a policy
        entry wins over ``first_last_bits``. Every pattern must match a Conv2D, DepthwiseConv2D or Dense.
      per_channel: None (default): one weight scale per output channel where the family has the option
        (dorefa, pact, lsq), the family's own otherwise; True / False asks for per-channel / per-tensor
        weight scales (an error for a family without the option).
      name: F's name (default: the model's).
    """
    if isinstance(model, keras.Sequential):
        if not model.built or not getattr(model, "inputs", None):
            raise ValueError(f"quantize(): the Sequential model {model.name!r} is not built; give it an "
                             "keras.Input first.")
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    graph = structure.nodes(model, "quantize()")
    model_outputs = set(structure.output_refs(model))
    for node in graph:
        _check_layer(node.layer, node.ref in model_outputs)
    softmax_heads = {n.layer.name for n in graph if _softmax_dense(n.layer, n.ref in model_outputs)}
    if quantizer not in quantizers.families():
        raise ValueError(f"quantize(): unknown quantizer {quantizer!r}; allowed: {', '.join(quantizers.families())}.")
    if per_channel is not None and not isinstance(per_channel, bool):
        raise ValueError(f"quantize(): per_channel={per_channel!r} must be None, True or False.")
    if per_channel is None:
        per_channel = True if has_per_channel_option(quantizer) else None
    try:
        quantizers.make_pair(quantizer, w_bits, a_bits, per_channel=per_channel)  # a bad width or option
    except ValueError as err:
        raise ValueError(f"quantize(): quantizer={quantizer!r}, w_bits={w_bits!r}, a_bits={a_bits!r}: {err}") from None
    if first_last_bits is None:
        first_last_bits = 32 if (w_bits == 32 and a_bits == 32) else quantizers.base.FIXED_POINT_BITS
    quantizers.edge_pair(first_last_bits)  # a ValueError naming the bad value and 8, 16, 32
    weighted = [n.layer for n in graph if _twin(n.layer) is not None and n.ref[1] == 0]
    if not weighted:
        raise ValueError(f"quantize(): {model.name!r} has no Conv2D, DepthwiseConv2D or Dense layer to quantize.")
    if any(n.ref[1] > 0 for n in graph if not isinstance(n.layer, keras.layers.InputLayer)):
        shared = sorted({n.layer.name for n in graph if n.ref[1] > 0})
        raise ValueError(f"quantize(): layer(s) {shared} are called more than once in {model.name!r}; "
                         "supported: each layer called once.")
    if stream_bits not in (None, 8):
        raise ValueError(f"quantize(): stream_bits={stream_bits!r} is not supported; allowed: None (float), 8.")
    first, last = _first_last(model, graph)
    bits = _assign_bits(graph, weighted, first | last, w_bits, a_bits, first_last_bits, policy)
    relu_fed = _relu_fed(graph)  # {name: the input's known upper bound, or None}
    int8_pools = _head_pools(graph, last) if first_last_bits == 8 else set()
    streams = _linear_tensors(model, graph) if stream_bits else set()
    outputs_of_last = {r for r in structure.output_refs(model) if r[0] in last}
    clones = {}

    def layer_for(layer):
        if layer.name not in clones:
            if layer.name in int8_pools:
                clones[layer.name] = QGlobalAveragePooling2D(quantizers.edge_pair(8)[1], name=layer.name)
            else:
                reads_pool = bool(int8_pools) and _twin(layer) is not None and \
                    any(p in int8_pools for p in _weighted_sources(graph, layer.name))
                clones[layer.name] = _clone(layer, quantizer, bits.get(layer.name),
                                            reads_relu=layer.name in relu_fed, first=layer.name in first,
                                            edge=layer.name in first | last, reads_grid=reads_pool,
                                            per_channel=per_channel, input_range=relu_fed.get(layer.name),
                                            logits=layer.name in softmax_heads)
        return clones[layer.name]

    def after(node, tensor):
        if node.ref in streams:
            return quantizers.RangeActivation(stream_bits, signed=True, name=f"{node.layer.name}_stream_q")(tensor)
        if node.ref in outputs_of_last and first_last_bits == 8:
            tensor = quantizers.RangeActivation(8, signed=True, name="logits_q")(tensor)
        if node.layer.name in softmax_heads:  # the split head: the Dense wrote the logits
            tensor = keras.layers.Activation("softmax", name=f"{node.layer.name}_softmax")(tensor)
        return tensor

    inputs = [keras.Input(batch_shape=tuple(n.layer.batch_shape), dtype=n.layer.dtype, name=n.layer.name)
              for n in graph if isinstance(n.layer, keras.layers.InputLayer)]
    outputs = structure.rebuild(model, inputs, layer_for=layer_for, after=after)
    f = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0],
                    name=name or model.name)
    for layer in model.layers:
        if layer.name in clones:
            _copy_weights(layer, clones[layer.name])
    return f


def _assign_bits(graph, weighted, edges, w_bits, a_bits, first_last_bits, policy) -> dict:
    """``{weighted layer name: (w_bits, a_bits)}``: the defaults, then the policy's entries in order."""
    bits = {l.name: ((first_last_bits, first_last_bits) if l.name in edges else (w_bits, a_bits)) for l in weighted}
    if policy is None:
        return bits
    if not isinstance(policy, dict):
        raise ValueError(f"quantize(): policy={policy!r} must be a dict {{layer name or pattern: bits}} or None.")
    names = [n.layer.name for n in graph]
    for pattern, value in policy.items():
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"quantize(): policy key {pattern!r} must be a layer name or an fnmatch pattern (str).")
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        hits = [n for n in matched if n in bits]
        if not hits:
            what = (f"only layers without weights to quantize ({', '.join(matched[:5])})" if matched else "no layer")
            listed = ", ".join(sorted(bits)[:12]) + (", ..." if len(bits) > 12 else "")
            raise ValueError(f"quantize(): policy pattern {pattern!r} matches {what}; patterns must match Conv2D, "
                             f"DepthwiseConv2D or Dense layers: {listed}.")
        w, a = _bits_pair(value, pattern)
        for n in hits:
            bits[n] = (bits[n][0] if w is None else w, bits[n][1] if a is None else a)
    return bits


def _upstream(graph, refs):
    """The nodes whose outputs reach ``refs`` through no weighted layer, nearest first (the weighted layers met
    are included; the walk does not pass them)."""
    producers = {n.ref: n for n in graph}
    stack, seen = list(refs), set()
    while stack:
        ref = stack.pop()
        if ref in seen:
            continue
        seen.add(ref)
        src = producers[ref]
        yield src
        if _twin(src.layer) is None:
            stack += list(src.inputs)


def _first_last(model, graph):
    """Names of the weighted layers reading the model input (through unweighted layers) and of those whose
    output reaches the model output through no other weighted layer."""
    first = {n.layer.name for n in graph if _twin(n.layer) is not None
             and any(isinstance(src.layer, keras.layers.InputLayer) for src in _upstream(graph, n.inputs))}
    last = {src.layer.name for src in _upstream(graph, structure.output_refs(model)) if _twin(src.layer) is not None}
    return first, last


_UNBOUNDED = float("inf")


def _relu_cap(layer):
    """The upper bound of a ReLU-like layer's output: ``max_value`` (6 for relu6), inf for a plain ReLU."""
    config = layer.get_config()
    if type(layer).__name__ == "ReLU":
        return _UNBOUNDED if config.get("max_value") is None else float(config["max_value"])
    return 6.0 if config.get("activation") == "relu6" else _UNBOUNDED


def _relu_fed(graph) -> dict:
    """``{name: bound}`` for the weighted layers whose every input comes from a ReLU-like op (through layers
    that keep the sign): ``bound`` is the largest value the input can take (a ReLU6's 6; the maximum over a
    concatenation), or None when a plain ReLU feeds it."""
    producers = {n.ref: n for n in graph}
    memo: dict = {}

    def cap(ref):
        """The bound of a ReLU-like tensor, or None when the tensor is not ReLU-like."""
        if ref not in memo:
            src = producers[ref]
            if _relu_like(src.layer):
                memo[ref] = _relu_cap(src.layer)
            elif type(src.layer).__name__ in _KEEPS_SIGN and src.inputs:
                caps = [cap(r) for r in src.inputs]
                memo[ref] = None if any(c is None for c in caps) else max(caps)
            else:
                memo[ref] = None
        return memo[ref]

    found = {}
    for n in graph:
        if _twin(n.layer) is not None and n.inputs:
            caps = [cap(r) for r in n.inputs]
            if all(c is not None for c in caps):
                found[n.layer.name] = None if max(caps) == _UNBOUNDED else max(caps)
    return found


def _quantizer_pair(family, w, a, edge: bool, per_channel=None, input_range=None):
    """Fresh (kernel, input) quantizers: the edge pair of :func:`agq_keras.quantizers.edge_pair` for a first
    or last layer at 8, 16 or 32 bits, the family's pair otherwise."""
    if edge and w == a and w in EDGE_BITS:
        return quantizers.edge_pair(w)
    return quantizers.make_pair(family, w, a, per_channel=per_channel, input_range=input_range)


def _weighted_sources(graph, name) -> set:
    """Names of the layers whose outputs reach ``name``'s input through no weighted layer (itself excluded)."""
    return {src.layer.name for src in _upstream(graph, [r for n in graph if n.layer.name == name for r in n.inputs])}


def _head_pools(graph, last) -> set:
    """The GlobalAveragePooling2D layers (keepdims=False) that feed a last Dense through no weighted layer."""
    layers = {n.layer.name: n.layer for n in graph}
    pools = set()
    for name in last:
        if isinstance(layers[name], keras.layers.Dense):
            pools |= {p for p in _weighted_sources(graph, name) if type(layers[p]).__name__ == "GlobalAveragePooling2D"
                      and not layers[p].get_config().get("keepdims")}
    return pools


def _linear_tensors(model, graph) -> set:
    """Refs of the linear tensors F rounds with ``stream_bits``: outputs of Add layers, BatchNorms and weighted
    layers without a ReLU, read by a layer that is neither ReLU-like nor a BatchNorm (not model outputs)."""
    uses: dict = {}
    for n in graph:
        for r in n.inputs:
            uses.setdefault(r, []).append(n.layer)
    outputs = set(structure.output_refs(model))
    found = set()
    for n in graph:
        layer = n.layer
        linear = isinstance(layer, (keras.layers.Add, keras.layers.BatchNormalization)) or (
            _twin(layer) is not None and not _relu_like(layer))
        readers = uses.get(n.ref, [])
        if not linear or n.ref in outputs or not readers:
            continue
        if all((_relu_like(r) and _twin(r) is None) or isinstance(r, keras.layers.BatchNormalization) for r in readers):
            continue
        found.add(n.ref)
    return found


def _clone(layer, family, bits, *, reads_relu: bool, first: bool, edge: bool, reads_grid: bool = False,
           per_channel=None, input_range=None, logits: bool = False):
    q_cls = _twin(layer)
    if q_cls is None:
        return layer.__class__.from_config(layer.get_config())
    config = layer.get_config()
    if logits:  # a softmax head: the Dense writes the logits, a softmax layer follows (quantize's `after`)
        config["activation"] = "linear"
    w, a = bits
    try:
        kernel_q, act_q = _quantizer_pair(family, w, a, edge, per_channel, input_range)
    except ValueError as err:
        raise ValueError(f"quantize(): layer {layer.name!r} ({type(layer).__name__}) at w_bits={w!r}, a_bits={a!r}: "
                         f"{err}") from None
    if first or reads_grid or not (reads_relu or edge):
        act_q = None  # the model input, an integer pool's grid, or a signed input (see the module docstring)
    config = {k: v for k, v in config.items() if k not in _Q_CONFIG_KEYS}
    return q_cls.from_config({**config, "kernel_quantizer": kernel_q, "input_quantizer": act_q,
                              "fragment": layer.get_config().get("fragment")})


def _copy_weights(source, target) -> None:
    """The float layer's own weights (kernel, bias, BatchNorm's four, ...) into its twin."""
    if isinstance(target, (QConv2D, QDepthwiseConv2D, QDense)):
        target.kernel.assign(source.kernel)
        if source.use_bias:
            target.bias.assign(source.bias)
        return
    weights = source.get_weights()
    if weights:
        target.set_weights(weights)
