"""Lowering of a functional Keras F to a small integer-friendly graph (IR): the first stage of the
export pipeline (lower -> :mod:`calibrate` -> :mod:`plan` -> :mod:`layout` -> :mod:`flatbuffer`).

Lowering reads what F computes and decides nothing about the integer form: weights stay F's codes
and steps (or F's float weights), BatchNorms are folded, and each tensor records the grid F puts
on it. The graph is not changed after :func:`lower` returns.

The IR's op kinds, each a TFLite builtin with an int8 kernel:

* ``conv``   -> CONV_2D (per-channel int8 weights, int32 bias, fused ReLU or ReLU6)
* ``dwconv`` -> DEPTHWISE_CONV_2D (a depthwise conv: codes ``(C*M, kh, kw, 1)``, per output channel)
* ``affine`` -> DEPTHWISE_CONV_2D 1x1 (a BatchNorm that cannot be folded)
* ``pad``    -> PAD (ZeroPadding2D: zeros at the input's own scale and zero point)
* ``resize`` -> RESIZE_NEAREST_NEIGHBOR (UpSampling2D, nearest, integer factors: the input's own scale
  and zero point)
* ``dense``  -> FULLY_CONNECTED
* ``add``    -> ADD,  ``mean`` -> MEAN (global average pooling; a DEPTHWISE_CONV_2D of ones when F
  rounds both its input and its output, :class:`~agq_keras.layers.QGlobalAveragePooling2D`),
  ``maxpool`` -> MAX_POOL_2D (MaxPooling2D; GlobalMaxPooling2D: one window over the whole map, then a
  ``reshape``)
* ``reshape`` -> RESHAPE (Flatten, Reshape, and GlobalMaxPooling2D's: the input's own scale and zero point)

Which Keras layers lower, to which op kind, and with which options, is :data:`agq_keras.lowerable.LAYERS`
(the list :func:`agq_keras.quantize` checks up front); :func:`lower` dispatches on it (one rule per kind or
role, ``_RULES``), and :data:`agq_keras.export.ops.KINDS` says how each op kind calibrates and is written.
A softmax ending the model is not lowered: the file's output is the logits it reads (same argmax), and a
note says so (:func:`agq_keras.lowerable.softmax_head`).

A model may have several outputs (a detector's per-level class and box tensors): the graph keeps them
in F's output order (:attr:`Graph.outputs`); an output that is a linear ``Activation`` names the tensor it
passes on (a detector's outputs are ``cls_p3``, ..., ``box_p5``, as F's ``output_names``). A layer called
several times (a detector's head convs, shared by the pyramid levels) lowers once per call; call ``n > 0``
names its tensor ``<layer>/call<n>``, and each call holds its own weights (each call folds its own BatchNorm).

Weights are held as integer ``codes`` and a positive per-output-channel
``steps`` vector (real weight = codes * steps). A BatchNorm directly after a
conv is folded into it by scaling the steps by |gamma/sigma| and flipping the
codes' sign, so the codes stay on the quantizer's grid. Quantizers describe their outputs through
one protocol, :meth:`agq_keras.quantizers.Quantizer.export_grid` (a :class:`~agq_keras.quantizers.Grid`
of kind weights, activation, sign or stream). A tensor whose every
consumer applies the same activation quantizer with an activation grid of
``(step, levels)`` is an *exact* tensor: its
int8 form (scale = step, zero point = 127 - levels) makes TFLite's output
requantization compute ``round(clip(x, 0, levels*step) / step)``, the
quantizer itself (the fused ReLU clips at 0, int8 saturation at 127 clips at
the top).

A signed activation grid (``Grid.offset`` > 0: codes ``-offset .. levels - offset``, a linear bottleneck's
expand input) is stored shifted: its producer (a conv, dense or BatchNorm with no ReLU) adds
``offset * step`` to its bias and fuses a ReLU, so the stored tensor is ``x + offset * step`` on the unsigned
grid above (``Tensor.offset`` records the shift), and each consumer subtracts ``offset * step * sum(w)`` from
its bias: an integer ``offset * sum(codes)`` in the int32 bias, so the consumers compute exactly what they
compute on F's signed values. Consumers must be 1x1 convs or dense layers (a padded conv would pad with the
shifted zero).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import keras
import numpy as np

from agq_keras.export import ops
from agq_keras.layers import QConv2D, QDense, QDepthwiseConv2D
from agq_keras.lowerable import FUSABLE, LAYERS, problem, softmax_head
from agq_keras.structure import history_refs


@dataclasses.dataclass
class Tensor:
    name: str
    shape: tuple  # without the batch dimension
    grid: Optional[tuple] = None  # (step, levels) for an exact tensor
    consumers: int = 0
    wanted_grids: list = dataclasses.field(default_factory=list)
    stream_grid: Optional[tuple] = None  # (step, limit) of F's stream quantizer on this tensor (residual_stream)
    sign: bool = False  # every consumer applies sign(): int8 codes {125, 127}, zero point 126, scale 1
    offset: int = 0  # a signed grid's shift: the stored tensor is F's value + offset * step (module docstring)


@dataclasses.dataclass
class Op:
    kind: str
    inputs: list
    output: str
    layer: str  # the Keras layer(s) it implements
    codes: Optional[np.ndarray] = None  # conv: (O, H, W, I); dense: (O, I); affine: (C,)
    steps: Optional[np.ndarray] = None  # (O,)
    bias: Optional[np.ndarray] = None  # (O,) float64
    strides: tuple = (1, 1)
    padding: str = "SAME"
    pool: tuple = (1, 1)
    relu: bool = False
    relu_cap: Optional[float] = None  # a fused ReLU6 (6.0)
    depth_multiplier: int = 1  # dwconv
    paddings: tuple = ()  # pad: ((top, bottom), (left, right))
    factor: tuple = (1, 1)  # resize: the integer (height, width) upsampling factors
    exact_weights: bool = False
    weight_bits: int = 32
    weight_note: str = ""
    folded: list = dataclasses.field(default_factory=list)

    def real_weights(self) -> np.ndarray:
        shape = (-1,) + (1,) * (self.codes.ndim - 1)
        return self.codes * self.steps.reshape(shape)


@dataclasses.dataclass
class Graph:
    tensors: dict
    ops: list
    input: str
    outputs: list  # F's outputs, in F's order
    notes: list

    @property
    def output(self) -> str:
        """The output of a single-output F (a classifier); a ValueError for a multi-output F."""
        if len(self.outputs) != 1:
            raise ValueError(f"The graph has {len(self.outputs)} outputs ({', '.join(self.outputs)}); use "
                             "graph.outputs.")
        return self.outputs[0]

    def producer(self, name: str) -> Optional[Op]:
        for op in self.ops:
            if op.output == name:
                return op
        return None


def unsupported(layer, why: str) -> ValueError:
    return ValueError(f"Cannot export layer {layer.name!r} ({type(layer).__name__}): {why}.")


def _kernel_codes(layer, notes, max_replicas):
    """(codes with out-channels first, steps, exact, bits, note) of a conv/dense layer (a depthwise conv's
    kernel ``(kh, kw, C, M)`` as ``(kh, kw, 1, C*M)``, the weight quantizer's own layout)."""
    kernel_q = getattr(layer, "kernel_quantizer", None)
    q_kernel = np.asarray(keras.ops.convert_to_numpy(
        layer.quantized_kernel() if isinstance(layer, (QConv2D, QDense, QDepthwiseConv2D)) else layer.kernel),
        dtype=np.float64)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw, c, m = q_kernel.shape
        q_kernel = q_kernel.reshape(kh, kw, 1, c * m)
    bits = 32 if kernel_q is None else int(kernel_q.bits)
    grid = kernel_q.export_grid(q_kernel, 127 * max_replicas) if kernel_q is not None else None
    out_first = lambda a: np.moveaxis(a, -1, 0)  # noqa: E731  (H,W,I,O)->(O,H,W,I), (I,O)->(O,I)
    if grid is not None and grid.kind == "weights" and grid.codes is not None:
        codes, steps = grid.codes, grid.steps
        codes = out_first(np.asarray(codes))
        wide = int(np.abs(codes).max(initial=0)) > 127
        return codes, np.asarray(steps, dtype=np.float64), True, bits, \
            "exact grid" + (" (wide codes: input repeated)" if wide else "")
    codes, steps = out_first(q_kernel), np.ones(q_kernel.shape[-1])  # float "codes": see finalize()
    name = "float" if kernel_q is None else f"{type(kernel_q).__name__}({bits})"
    note = f"{name} weights re-quantized to int8 per channel (best step near max|w|/127): closest, not exact"
    notes.append(f"{layer.name}: {note}")
    return codes, steps, False, bits, note


def lower(model: keras.Model, max_replicas: int = 259) -> Graph:
    """The IR of a functional model F (see the module docstring)."""
    model, softmaxes = softmax_head(model)
    config = model.get_config()
    if "layers" not in config:
        raise ValueError(f"Model {model.name!r} is not a functional Keras model; export needs F as built by "
                         "agq_keras.build (a functional keras.Model).")
    inputs, outputs = config["input_layers"], config["output_layers"]
    if isinstance(inputs[0], (list, tuple)) and len(inputs) != 1:
        raise ValueError(f"Model {model.name!r} has {len(inputs)} inputs; export supports exactly one input "
                         "(one or more outputs).")
    out_refs = [tuple(r) for r in outputs] if isinstance(outputs[0], (list, tuple)) else [tuple(outputs)]

    # consumer counts per Keras tensor
    uses: dict = {}
    for entry in config["layers"]:
        for node in entry["inbound_nodes"]:
            for ref in history_refs(node):
                uses[ref] = uses.get(ref, 0) + 1
    for ref in out_refs:
        uses[ref] = uses.get(ref, 0) + 1

    graph = Graph({}, [], "", [], [f"{name}: the model's closing softmax is not in the file: its output is the "
                                    "logits the softmax reads (the same argmax); apply a softmax to them for "
                                    "probabilities" for name in softmaxes])
    value: dict = {}  # keras ref -> IR tensor name

    def new_tensor(name, shape, ref):
        if ref[1]:  # a later call of a shared layer (a detector's head conv at another pyramid level)
            name = f"{name}/call{ref[1]}"
        if name in graph.tensors:
            raise ValueError(f"Cannot export: two tensors of model {model.name!r} would both be named {name!r}; "
                             "rename the layer.")
        graph.tensors[name] = Tensor(name, tuple(int(d) for d in shape), consumers=uses.get(ref, 0))
        value[ref] = name
        return name

    for entry in config["layers"]:
        layer = model.get_layer(entry["name"])
        cls = type(layer).__name__
        for n, node in enumerate(entry["inbound_nodes"] or [None]):
            ref = (layer.name, n, 0)
            if LAYERS.get(cls) == "input":
                shape = tuple(layer.batch_shape[1:])
                if len(shape) != 3 or any(d is None for d in shape):
                    raise unsupported(layer, f"the input must be a fixed (height, width, channels), got {shape}")
                graph.input = new_tensor(layer.name, shape, ref)
                continue
            why = problem(layer, at_output=ref in out_refs)
            if why:
                raise unsupported(layer, why)
            srcs = [value[r] for r in history_refs(node)]
            src = graph.tensors[srcs[0]]
            if len(srcs) > 1:  # an Add (the one multi-input layer lowerable.problem lets through): its inputs' shape
                out_shape = src.shape
            else:
                out_shape = tuple(layer.compute_output_shape((None,) + src.shape))[1:]
            rule = LAYERS.get(cls) or "stream"  # problem() let through only LAYERS and standalone quantizers
            _RULES[rule](_Call(layer, ref, srcs, out_shape, graph, value, uses, new_tensor, max_replicas))
    graph.outputs = [value[ref] for ref in out_refs]
    _name_outputs(graph, [ref[0] if type(model.get_layer(ref[0])).__name__ == "Activation" else None
                          for ref in out_refs])
    graph.notes = list(dict.fromkeys(graph.notes))  # a shared layer's calls repeat its notes: once each
    _resolve_grids(graph)
    return graph


def _name_outputs(graph: Graph, names: list) -> None:
    """Output ``i`` takes ``names[i]`` (a linear ``Activation`` output's own name: a detector's ``cls_p3``, not
    its shared prediction conv's ``cls_predict/call1``) where one is given and free, so that the file's outputs
    read as F's ``output_names``."""
    for i, (old, new) in enumerate(zip(graph.outputs, names)):
        if new is None or old == new or new in graph.tensors or graph.outputs.count(old) > 1:
            continue
        tensor = graph.tensors.pop(old)
        tensor.name = new
        graph.tensors[new] = tensor
        for op in graph.ops:
            op.inputs = [new if n == old else n for n in op.inputs]
            op.output = new if op.output == old else op.output
        graph.outputs[i] = new


@dataclasses.dataclass
class _Call:
    """One call of a Keras layer being lowered: what its lowering rule reads and writes."""
    layer: keras.layers.Layer
    ref: tuple  # (layer name, call, 0): the Keras tensor it writes
    srcs: list  # its input tensors (IR names)
    out_shape: tuple
    graph: Graph
    value: dict  # Keras ref -> IR tensor name
    uses: dict  # Keras ref -> its consumer count
    new_tensor: Callable
    max_replicas: int

    @property
    def src(self) -> Tensor:
        return self.graph.tensors[self.srcs[0]]

    def output(self, stream_grid=None) -> str:
        """The IR tensor the call writes (``stream_grid``: the input's, for an op that moves values only)."""
        out = self.new_tensor(self.layer.name, self.out_shape, self.ref)
        self.graph.tensors[out].stream_grid = stream_grid
        return out

    def add(self, kind: str, inputs=None, out=None, **fields):
        self.graph.ops.append(Op(kind, inputs or [self.src.name], out or self.output(), self.layer.name, **fields))

    def alias(self):
        """The call writes no tensor: its output is its input (the identity)."""
        self.value[self.ref] = self.src.name
        self.src.consumers += self.uses.get(self.ref, 0) - 1

    def fuse(self):
        """The call is fused into the producer of its input (a ReLU, a stream quantizer)."""
        self.graph.producer(self.src.name).layer += f"+{self.layer.name}"
        self.value[self.ref] = self.src.name
        self.src.consumers = self.uses.get(self.ref, 0)


def _lower_weighted(call: _Call, kind: str, **fields):
    call.add(kind, **_weighted_params(call.layer, call.src, call.graph, call.max_replicas), **fields)


def _lower_conv(call: _Call):
    cfg = call.layer.get_config()
    _lower_weighted(call, "conv", strides=tuple(cfg["strides"]), padding=cfg["padding"].upper())


def _lower_dwconv(call: _Call):
    cfg = call.layer.get_config()
    _lower_weighted(call, "dwconv", strides=tuple(cfg["strides"]), padding=cfg["padding"].upper(),
                    depth_multiplier=int(cfg["depth_multiplier"]))


def _lower_dense(call: _Call):
    if len(call.src.shape) != 1:
        raise unsupported(call.layer, f"Dense on a rank-{len(call.src.shape) + 1} input")
    _lower_weighted(call, "dense")


def _lower_relu(call: _Call):
    cap = _relu_cap(call.layer)
    if cap == "linear":
        return call.alias()
    prod = call.graph.producer(call.src.name)
    if prod is None or prod.relu or not ops.KINDS[prod.kind].fuses_relu or call.src.consumers != 1:
        raise unsupported(call.layer, "a ReLU must directly follow a conv, dense, BatchNorm or add whose output has "
                                      "no other consumer")
    prod.relu, prod.relu_cap = True, cap
    call.fuse()


def _lower_stream(call: _Call):
    """F's integer residual stream (a standalone quantizer with a stream grid): the producer writes the stream's
    integers at this step."""
    stream = _stream_grid(call.layer)
    if stream is None:
        raise unsupported(call.layer, "no integer TFLite lowering for this layer")
    src = call.src
    if call.graph.producer(src.name) is None or src.consumers != 1 or src.stream_grid is not None:
        raise unsupported(call.layer, "a stream quantizer must directly follow a conv, add or pooling whose output has "
                                      "no other consumer")
    src.stream_grid = stream
    call.fuse()


def _lower_add(call: _Call):
    if len(call.srcs) != 2:
        raise unsupported(call.layer, f"Add of {len(call.srcs)} inputs (allowed: 2)")
    call.add("add", inputs=call.srcs)


def _lower_exact_mean(call: _Call):
    """F rounds the map (the pool's input quantizer) and the mean (a grid tied to the map's)."""
    _want_input_grid(call.layer, call.src, call.graph)
    out = call.output()
    grid = call.layer.output_grid()
    call.graph.tensors[out].grid = (float(grid.step), float(grid.levels))
    call.add("mean", out=out)


def _lower_maxpool(call: _Call):
    cfg = call.layer.get_config()
    call.add("maxpool", out=call.output(call.src.stream_grid),  # max of a stream grid's values: that grid
             strides=tuple(cfg["strides"]), pool=tuple(cfg["pool_size"]), padding=cfg["padding"].upper())


def _lower_global_maxpool(call: _Call):
    """One window over the whole map, then the (C,) vector."""
    src, window = call.src, tuple(call.src.shape[:2])
    out = call.output(src.stream_grid)  # max of a stream grid's values: that grid
    pooled = out if len(call.out_shape) == 3 else f"{out}/pool"
    if pooled != out:
        call.graph.tensors[pooled] = Tensor(pooled, (1, 1, src.shape[2]), consumers=1, stream_grid=src.stream_grid)
    call.add("maxpool", out=pooled, strides=window, pool=window, padding="VALID")
    if pooled != out:
        call.add("reshape", inputs=[pooled], out=out)


def _refuse(call: _Call):  # a closing softmax is cut off before lowering (softmax_head); problem() refuses others
    raise unsupported(call.layer, "no integer TFLite lowering for this layer")


# how each role or op kind of lowerable.LAYERS lowers (the op kinds: export.ops.KINDS); ops that move values only
# (pad, resize, reshape) keep the input's stream grid (zeros and repeated values are on every stream grid)
_RULES = {
    "conv": _lower_conv, "dwconv": _lower_dwconv, "dense": _lower_dense, "relu": _lower_relu,
    "batchnorm": lambda call: _batchnorm(call.layer, call.src, call.graph, call.ref, call.out_shape, call.new_tensor,
                                         call.value, lambda r: call.uses.get(r, 0)),
    "identity": lambda call: call.alias(), "stream": _lower_stream, "add": _lower_add, "softmax": _refuse,
    "mean": lambda call: call.add("mean"), "exact_mean": _lower_exact_mean, "maxpool": _lower_maxpool,
    "global_maxpool": _lower_global_maxpool,
    "pad": lambda call: call.add("pad", out=call.output(call.src.stream_grid), paddings=tuple(
        tuple(int(v) for v in p) for p in call.layer.get_config()["padding"])),
    "resize": lambda call: call.add("resize", out=call.output(call.src.stream_grid),
                                    factor=_upsampling_factor(call.layer)),
    "reshape": lambda call: call.add("reshape", out=call.output(call.src.stream_grid)),
}
_missing = sorted(set(LAYERS.values()) - set(_RULES) - {"input"})
if _missing:  # a role or kind of lowerable.LAYERS with no lowering here
    raise ImportError(f"agq_keras.lowerable.LAYERS names kinds export.lower cannot lower: {_missing}")


def _upsampling_factor(layer) -> tuple:
    """The integer (height, width) factors of a nearest UpSampling2D (RESIZE_NEAREST_NEIGHBOR repeats each
    value; other interpolations and fractional factors have no exact integer form here)."""
    cfg = layer.get_config()  # nearest, channels_last: lowerable.problem
    size = tuple(cfg["size"]) if isinstance(cfg["size"], (list, tuple)) else (cfg["size"],) * 2
    if len(size) != 2 or any(isinstance(v, bool) or float(v) != int(v) or int(v) < 1 for v in size):
        raise unsupported(layer, f"size={cfg['size']!r} (allowed: two integer factors >= 1)")
    return tuple(int(v) for v in size)


def _weighted_params(layer, src: Tensor, graph: Graph, max_replicas: int) -> dict:
    """The Op fields shared by conv and dense: grid codes, steps, bias, fused ReLU."""
    act = layer.get_config()["activation"]
    codes, steps, exact, bits, note = _kernel_codes(layer, graph.notes, max_replicas)
    _want_input_grid(layer, src, graph)
    bias = np.asarray(layer.bias, np.float64) if layer.use_bias else np.zeros(codes.shape[0])
    return dict(codes=codes, steps=steps, bias=bias, relu=act in FUSABLE, relu_cap=FUSABLE.get(act),
                exact_weights=exact, weight_bits=bits, weight_note=note)


def _relu_cap(layer):
    """A ReLU / Activation layer's cap (None: plain ReLU, 6.0: ReLU6) or ``"linear"``."""
    cfg = layer.get_config()
    if type(layer).__name__ == "Activation":  # linear or fusable (lowerable.problem refused the others)
        return "linear" if cfg["activation"] == "linear" else FUSABLE[cfg["activation"]]
    return cfg.get("max_value")


def _stream_grid(layer):
    """``(step, limit)`` of a standalone quantizer layer with a stream grid (``FixedStep``), else None."""
    grid = layer.export_grid()
    return None if grid is None or grid.kind != "stream" else (grid.step, grid.limit)


def _want_input_grid(layer, src: Tensor, graph: Graph):
    quantizer = getattr(layer, "input_quantizer", None)
    if quantizer is None:
        src.wanted_grids.append(("none", layer.name))
        return
    grid = quantizer.export_grid()
    if grid is not None and grid.kind == "sign":
        src.wanted_grids.append(("sign", layer.name))
        return
    if grid is None or grid.kind != "activation":
        graph.notes.append(f"{layer.name}: input quantizer {type(quantizer).__name__}({quantizer.bits}) has no "
                           "exact int8 grid; its input is a calibrated int8 tensor (closest, not exact)")
        src.wanted_grids.append(("none", layer.name))
    else:
        src.wanted_grids.append(((float(grid.step), float(grid.levels), int(grid.offset)), layer.name))


def _batchnorm(layer, src: Tensor, graph: Graph, ref, out_shape, new_tensor, value, _uses):
    if layer.axis not in (-1, len(src.shape)) and list(np.atleast_1d(layer.axis)) not in ([-1], [len(src.shape)]):
        raise unsupported(layer, f"BatchNormalization on axis {layer.axis} (allowed: the channel axis)")
    mean = np.asarray(layer.moving_mean, np.float64)
    var = np.asarray(layer.moving_variance, np.float64)
    gamma = np.asarray(layer.gamma, np.float64) if layer.scale else np.ones_like(mean)
    beta = np.asarray(layer.beta, np.float64) if layer.center else np.zeros_like(mean)
    g = gamma / np.sqrt(var + layer.epsilon)
    shift = beta - mean * g
    prod = graph.producer(src.name)
    if prod is not None and ops.KINDS[prod.kind].kernel and not prod.relu and src.consumers == 1:
        # fold: w' = w * g per output channel, keeping codes on the grid
        sign = np.where(g < 0, -1, 1)
        prod.codes = prod.codes * sign.reshape((-1,) + (1,) * (prod.codes.ndim - 1))
        prod.steps = np.where(g != 0, prod.steps * np.abs(g), prod.steps)
        if np.any(g == 0):
            prod.codes[g == 0] = 0
        prod.bias = prod.bias * g + shift
        prod.folded.append(layer.name)
        prod.layer += f"+{layer.name}"
        value[ref] = src.name
        src.consumers = graph.tensors[src.name].consumers = _uses(ref)
        return
    if len(src.shape) != 3:
        raise unsupported(layer, "an unfoldable BatchNorm on a non-image tensor")
    codes = np.where(g < 0, -127, np.where(g > 0, 127, 0)).astype(np.int32)
    steps = np.where(g != 0, np.abs(g) / 127.0, 1.0)
    graph.ops.append(Op("affine", [src.name], new_tensor(layer.name, out_shape, ref), layer.name, codes=codes,
                        steps=steps, bias=shift, exact_weights=True, weight_bits=32,
                        weight_note="BatchNorm as a 1x1 depthwise conv (one code per channel: exact)"))


def _mean_of_relu(graph: Graph, op: Op) -> bool:
    """A global average pool of a ReLU output: non-negative, so its int8 MEAN writes F's grid
    (``round(clip(mean, 0, top) / step)``; the pooled input itself is a calibrated tensor)."""
    if op.kind != "mean":
        return False
    src = graph.producer(op.inputs[0])
    return src is not None and src.relu


def _unshiftable(prod: Optional[Op], readers: list) -> str:
    """Why a signed grid written by ``prod`` and read by ``readers`` cannot be stored shifted (the module
    docstring), or ``""`` when it can."""
    if prod is None or not ops.KINDS[prod.kind].weighted or prod.relu:
        return "is not written by a conv, dense or BatchNorm with no activation"
    if not all(op.kind == "dense" or (op.kind == "conv" and op.codes.shape[1:3] == (1, 1)) for op in readers):
        return "is read by an op other than a 1x1 conv or dense layer"
    return ""


def _shift_signed(prod: Op, readers: list, step: float, offset: int):
    """Store F's signed grid as ``x + offset * step`` (the module docstring): the producer adds the shift and
    clips at 0 (a fused ReLU), the readers take ``offset * step * sum(w)`` off their biases."""
    prod.bias = prod.bias + offset * step
    prod.relu, prod.relu_cap = True, None
    for op in readers:
        op.bias = op.bias - offset * step * op.real_weights().reshape(len(op.bias), -1).sum(axis=1)


def _resolve_grids(graph: Graph):
    # PAD, RESIZE and RESHAPE keep their input's scale and zero point: the input takes the grids their consumers
    # want; so does MAX_POOL_2D, as rounding onto a grid is monotone (the max of rounded values is the rounded max)
    pads = [op for op in graph.ops if ops.KINDS[op.kind].keeps_scale]
    for op in reversed(pads):
        src, out = graph.tensors[op.inputs[0]], graph.tensors[op.output]
        src.wanted_grids += out.wanted_grids
        src.consumers += out.consumers - 1
        out.wanted_grids = []
    for tensor in graph.tensors.values():
        wanted = tensor.wanted_grids
        if not wanted or all(g == "none" for g, _ in wanted):
            continue
        if tensor.grid is not None:  # F's own pooling rounds it; its consumers quantize again
            graph.notes.append(f"{tensor.name}: rounded by its producer and again by its consumers "
                               f"({', '.join(n for _, n in wanted)}); stored on the first grid, the second rounding "
                               "is not exported (not exact)")
            continue
        grids = {g for g, _ in wanted}
        prod = graph.producer(tensor.name)
        names = ", ".join(n for _, n in wanted)
        if grids == {"sign"} and tensor.consumers == len(wanted):
            if prod is not None and prod.kind in ("conv", "affine") and not prod.relu:
                tensor.sign = True  # the producer's bias places the sign threshold exactly (intmath.sign_weights)
            else:
                graph.notes.append(f"{tensor.name}: sign() of a tensor not written by a conv or BatchNorm "
                                   f"(consumers {names}); calibrated int8 tensor (closest, not exact)")
            continue
        if len(grids) != 1 or tensor.consumers != len(wanted):
            graph.notes.append(f"{tensor.name}: consumers ({names}) do not all apply the same activation grid; "
                               "calibrated int8 tensor (closest, not exact)")
            continue
        step, levels, offset = grids.pop()
        if levels > 255:
            graph.notes.append(f"{tensor.name}: more than 256 activation levels; calibrated int8 tensor")
        elif offset:
            readers = [op for op in graph.ops if tensor.name in op.inputs]
            why = _unshiftable(prod, readers)
            if why:
                graph.notes.append(f"{tensor.name}: a signed activation grid (consumers {names}) {why}; calibrated "
                                   "int8 tensor (closest, not exact)")
            else:
                _shift_signed(prod, readers, step, offset)
                tensor.grid, tensor.offset = (step, levels), offset
        elif prod is None or not (prod.relu or _mean_of_relu(graph, prod)):
            graph.notes.append(f"{tensor.name}: not produced by an op with a fused ReLU; calibrated int8 tensor "
                               "(closest, not exact)")
        else:
            tensor.grid = (step, levels)
    for op in pads:
        graph.tensors[op.output].grid = graph.tensors[op.inputs[0]].grid
