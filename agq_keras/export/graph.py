"""Lowering of a functional Keras F to a small integer-friendly graph (IR).

The IR has five op kinds, each a TFLite builtin with an int8 kernel:

* ``conv``   -> CONV_2D (per-channel int8 weights, int32 bias, fused ReLU)
* ``affine`` -> DEPTHWISE_CONV_2D 1x1 (a BatchNorm that cannot be folded)
* ``dense``  -> FULLY_CONNECTED
* ``add``    -> ADD,  ``mean`` -> MEAN (global average pooling),
  ``maxpool`` -> MAX_POOL_2D

Weights are held as integer ``codes`` and a positive per-output-channel
``steps`` vector (real weight = codes * steps). A BatchNorm directly after a
conv is folded into it by scaling the steps by |gamma/sigma| and flipping the
codes' sign, so the codes stay on the quantizer's grid. A tensor whose every
consumer applies the same activation quantizer with an
``export_activation_grid()`` of ``(step, levels)`` is an *exact* tensor: its
int8 form (scale = step, zero point = 127 - levels) makes TFLite's output
requantization compute ``round(clip(x, 0, levels*step) / step)``, the
quantizer itself (the fused ReLU clips at 0, int8 saturation at 127 clips at
the top).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from agq_keras import quantizers
from agq_keras.layers import QConv2D, QDense

SUPPORTED_LAYERS = ("InputLayer", "QConv2D", "Conv2D", "QDense", "Dense", "BatchNormalization", "ReLU", "Add",
                    "GlobalAveragePooling2D", "MaxPooling2D", "FixedStep")


@dataclasses.dataclass
class Tensor:
    name: str
    shape: tuple  # without the batch dimension
    grid: Optional[tuple] = None  # (step, levels) for an exact tensor
    lo: float = 0.0  # calibrated range (float evaluation of the IR)
    hi: float = 0.0
    consumers: int = 0
    wanted_grids: list = dataclasses.field(default_factory=list)
    int16: bool = False  # stored as int16 in the int8 model (the residual stream, see tflite.py)
    int16_like: Optional["Tensor"] = None  # an int16 copy of this int8 tensor (same scale: exact)
    stream_scale: Optional[float] = None  # int16 scale of an exact residual stream (see tflite.py)
    stream_grid: Optional[tuple] = None  # (step, limit) of F's FixedStep on this tensor (residual_stream="int16")
    sign: bool = False  # every consumer applies sign(): int8 codes {125, 127}, zero point 126, scale 1


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
    exact_weights: bool = False
    weight_bits: int = 32
    weight_note: str = ""
    float_weights: Optional[np.ndarray] = None  # the F weights (BN folded) before int8 coding
    replicas: int = 1  # codes span [-127 r, 127 r]: the input is repeated r times (see tflite.py)
    folded: list = dataclasses.field(default_factory=list)
    sign_gain: Optional[np.ndarray] = None  # per channel: stored weights / F's weights (a sign() output)

    def real_weights(self) -> np.ndarray:
        shape = (-1,) + (1,) * (self.codes.ndim - 1)
        return self.codes * self.steps.reshape(shape)


@dataclasses.dataclass
class Graph:
    tensors: dict
    ops: list
    input: str
    output: str
    notes: list

    def producer(self, name: str) -> Optional[Op]:
        for op in self.ops:
            if op.output == name:
                return op
        return None


def _history(obj) -> list:
    """All ``keras_history`` triples inside a serialized call's args, in order."""
    found = []
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            found.append(tuple(obj["config"]["keras_history"]))
        else:
            for value in obj.values():
                found += _history(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            found += _history(value)
    return found


def _first_ref(refs):
    refs = list(refs)
    return tuple(refs[0]) if refs and isinstance(refs[0], (list, tuple)) else tuple(refs)


def unsupported(layer, why: str) -> ValueError:
    return ValueError(f"Cannot export layer {layer.name!r} ({type(layer).__name__}): {why}. Supported layers: "
                      f"{', '.join(SUPPORTED_LAYERS)}.")


SCALE_CANDIDATES = 4096


def fallback_codes(weights: np.ndarray, replicas: int = 1):
    """Closest per-output-channel symmetric int8 form of float weights (channels on axis 0).

    For each channel the step is searched among max|w|/m, m in [96, 127]
    (4096 candidates), minimising the summed absolute rounding error; the
    plain max|w|/127 is one candidate, so the result is never worse than it.
    Deterministic (pure NumPy, fixed candidates).
    """
    flat = weights.reshape(weights.shape[0], -1).astype(np.float64)
    codes = np.zeros(flat.shape, np.int32)
    steps = np.ones(flat.shape[0])
    limit = 127 * replicas
    denominators = np.linspace(96.0 * replicas, float(limit), SCALE_CANDIDATES)
    for c, row in enumerate(flat):
        top = np.abs(row).max()
        if top == 0:
            continue
        cand = top / denominators
        rounded = np.clip(np.round(row[None] / cand[:, None]), -limit, limit)
        best = int(np.argmin(np.abs(rounded * cand[:, None] - row[None]).sum(axis=1)))
        codes[c], steps[c] = rounded[best], cand[best]
    return codes.reshape(weights.shape), steps


def _kernel_codes(layer, notes, max_replicas):
    """(codes with out-channels first, steps, exact, bits, note) of a conv/dense layer."""
    kernel_q = getattr(layer, "kernel_quantizer", None)
    q_kernel = np.asarray(keras.ops.convert_to_numpy(
        layer.quantized_kernel() if isinstance(layer, (QConv2D, QDense)) else layer.kernel), dtype=np.float64)
    bits = 32 if kernel_q is None else int(kernel_q.bits)
    grid = kernel_q.export_weight_grid(q_kernel, 127 * max_replicas) if kernel_q is not None else None
    out_first = lambda a: np.moveaxis(a, -1, 0)  # noqa: E731  (H,W,I,O)->(O,H,W,I), (I,O)->(O,I)
    if grid is not None:
        codes, steps = grid
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
    config = model.get_config()
    if "layers" not in config:
        raise ValueError(f"Model {model.name!r} is not a functional Keras model; export needs F as built by "
                         "agq_keras.build (a functional keras.Model).")
    inputs, outputs = config["input_layers"], config["output_layers"]
    if isinstance(inputs[0], (list, tuple)) and len(inputs) != 1 or isinstance(outputs[0], (list, tuple)) \
            and len(outputs) != 1:
        raise ValueError("Export supports models with exactly one input and one output.")
    in_ref, out_ref = _first_ref(inputs), _first_ref(outputs)

    # consumer counts per Keras tensor
    uses: dict = {}
    for entry in config["layers"]:
        for node in entry["inbound_nodes"]:
            for ref in _history(node):
                uses[ref] = uses.get(ref, 0) + 1
    uses[out_ref] = uses.get(out_ref, 0) + 1

    graph = Graph({}, [], "", "", [])
    graph.max_replicas = max_replicas
    value: dict = {}  # keras ref -> IR tensor name

    def new_tensor(name, shape, ref):
        graph.tensors[name] = Tensor(name, tuple(int(d) for d in shape), consumers=uses.get(ref, 0))
        value[ref] = name
        return name

    for entry in config["layers"]:
        layer = model.get_layer(entry["name"])
        cls = type(layer).__name__
        for n, node in enumerate(entry["inbound_nodes"] or [None]):
            ref = (layer.name, n, 0)
            if cls == "InputLayer":
                shape = tuple(layer.batch_shape[1:])
                if len(shape) != 3 or any(d is None for d in shape):
                    raise unsupported(layer, f"the input must be a fixed (height, width, channels), got {shape}")
                graph.input = new_tensor(layer.name, shape, ref)
                continue
            srcs = [value[r] for r in _history(node)]
            src = graph.tensors[srcs[0]]
            if cls == "Add":
                out_shape = src.shape
            elif cls in SUPPORTED_LAYERS:
                out_shape = tuple(layer.compute_output_shape((None,) + src.shape))[1:]
            if isinstance(layer, keras.layers.Conv2D) and cls in ("QConv2D", "Conv2D"):
                cfg = layer.get_config()
                if tuple(cfg["dilation_rate"]) != (1, 1) or cfg.get("groups", 1) != 1:
                    raise unsupported(layer, "dilated or grouped convolutions are not supported")
                if cfg["data_format"] != "channels_last":
                    raise unsupported(layer, "only channels_last is supported")
                params = _weighted_params(layer, src, graph, max_replicas)
                graph.ops.append(Op("conv", [src.name], new_tensor(layer.name, out_shape, ref), layer.name,
                                    strides=tuple(cfg["strides"]), padding=cfg["padding"].upper(), **params))
            elif isinstance(layer, keras.layers.Dense) and cls in ("QDense", "Dense"):
                if len(src.shape) != 1:
                    raise unsupported(layer, f"Dense on a rank-{len(src.shape) + 1} input")
                params = _weighted_params(layer, src, graph, max_replicas)
                graph.ops.append(Op("dense", [src.name], new_tensor(layer.name, out_shape, ref), layer.name,
                                    **params))
            elif cls == "BatchNormalization":
                _batchnorm(layer, src, graph, ref, out_shape, new_tensor, value, lambda r: uses.get(r, 0))
            elif cls == "ReLU":
                cfg = layer.get_config()
                if cfg.get("max_value") is not None or cfg.get("negative_slope") or cfg.get("threshold"):
                    raise unsupported(layer, "only the plain ReLU (no max_value/negative_slope/threshold)")
                prod = graph.producer(src.name)
                if prod is None or prod.relu or prod.kind in ("mean", "maxpool") or src.consumers != 1:
                    raise unsupported(layer, "a ReLU must directly follow a conv, dense, BatchNorm or add "
                                             "whose output has no other consumer")
                prod.relu = True
                prod.layer += f"+{layer.name}"
                value[ref] = src.name
                src.consumers = uses.get(ref, 0)
            elif cls == "FixedStep":  # F's int16 residual stream: the producer writes int16 at this step
                prod = graph.producer(src.name)
                if prod is None or src.consumers != 1 or src.stream_grid is not None:
                    raise unsupported(layer, "a FixedStep must directly follow a conv, add or pooling whose output "
                                             "has no other consumer")
                src.stream_grid = layer.export_stream_grid()
                prod.layer += f"+{layer.name}"
                value[ref] = src.name
                src.consumers = uses.get(ref, 0)
            elif cls == "Add":
                if len(srcs) != 2:
                    raise unsupported(layer, f"Add of {len(srcs)} inputs (allowed: 2)")
                graph.ops.append(Op("add", srcs, new_tensor(layer.name, out_shape, ref), layer.name))
            elif cls == "GlobalAveragePooling2D":
                cfg = layer.get_config()
                if cfg.get("keepdims") or cfg.get("data_format", "channels_last") != "channels_last":
                    raise unsupported(layer, "only keepdims=False, channels_last")
                graph.ops.append(Op("mean", [src.name], new_tensor(layer.name, out_shape, ref), layer.name))
            elif cls == "MaxPooling2D":
                cfg = layer.get_config()
                graph.ops.append(Op("maxpool", [src.name], new_tensor(layer.name, out_shape, ref), layer.name,
                                    strides=tuple(cfg["strides"]), pool=tuple(cfg["pool_size"]),
                                    padding=cfg["padding"].upper()))
            else:
                raise unsupported(layer, "no integer TFLite lowering for this layer")
    graph.output = value[out_ref]
    _resolve_grids(graph)
    for op in graph.ops:  # non-exact weights: int8 codes of the (BN-folded) float weights
        if op.kind not in ("conv", "dense"):
            continue
        # Wide (repeated-input) weights only pay where the input itself is exact (the model input or a
        # k-bit grid tensor), and in dense layers, where repeating the input costs next to nothing.
        src = graph.tensors[op.inputs[0]]
        replicas = max_replicas if (op.kind == "dense" or src.name == graph.input or src.grid is not None) else 1
        op.float_weights = op.real_weights()
        if not op.exact_weights or int(np.abs(op.codes).max(initial=0)) > 127 * replicas:
            if op.exact_weights:
                op.exact_weights = False
                op.weight_note = f"grid needs codes beyond ±{127 * replicas}; re-quantized to int8 (closest)"
                graph.notes.append(f"{op.layer}: {op.weight_note}")
            op.codes, op.steps = fallback_codes(op.real_weights(), replicas)
        op.replicas = max(1, -(-int(np.abs(op.codes).max(initial=0)) // 127))
        _widen(op)
    return graph


def _widen(op: Op):
    """Multiply each channel's codes by the largest integer m keeping |code| <= 127 * replicas
    (and divide its step by m): same real weights, same grid ratios, but an m-times finer
    int32 accumulator unit s_in * s_w, so the int32 bias is rounded m times more finely."""
    top = np.abs(op.codes.reshape(op.codes.shape[0], -1)).max(axis=1)
    m = np.where(top > 0, (127 * op.replicas) // np.maximum(top, 1), 1)
    op.codes = op.codes * m.reshape((-1,) + (1,) * (op.codes.ndim - 1))
    op.steps = op.steps / m


def _weighted_params(layer, src: Tensor, graph: Graph, max_replicas: int) -> dict:
    """The Op fields shared by conv and dense: grid codes, steps, bias, fused ReLU."""
    act = layer.get_config()["activation"]
    if act not in ("linear", "relu"):
        raise unsupported(layer, f"activation {act!r} (allowed: linear, relu)")
    codes, steps, exact, bits, note = _kernel_codes(layer, graph.notes, max_replicas)
    _want_input_grid(layer, src, graph)
    bias = np.asarray(layer.bias, np.float64) if layer.use_bias else np.zeros(codes.shape[0])
    return dict(codes=codes, steps=steps, bias=bias, relu=act == "relu", exact_weights=exact,
                weight_bits=bits, weight_note=note)


def _want_input_grid(layer, src: Tensor, graph: Graph):
    quantizer = getattr(layer, "input_quantizer", None)
    if quantizer is None:
        src.wanted_grids.append(("none", layer.name))
        return
    if quantizer.export_sign_grid():
        src.wanted_grids.append(("sign", layer.name))
        return
    grid = quantizer.export_activation_grid()
    if grid is None:
        graph.notes.append(f"{layer.name}: input quantizer {type(quantizer).__name__}({quantizer.bits}) has no "
                           "exact int8 grid; its input is a calibrated int8 tensor (closest, not exact)")
        src.wanted_grids.append(("none", layer.name))
    else:
        src.wanted_grids.append((tuple(float(g) for g in grid), layer.name))


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
    if prod is not None and prod.kind in ("conv", "dense") and not prod.relu and src.consumers == 1:
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


def _resolve_grids(graph: Graph):
    for tensor in graph.tensors.values():
        wanted = tensor.wanted_grids
        if not wanted or all(g == "none" for g, _ in wanted):
            continue
        grids = {g for g, _ in wanted}
        prod = graph.producer(tensor.name)
        names = ", ".join(n for _, n in wanted)
        if grids == {"sign"} and tensor.consumers == len(wanted):
            if prod is not None and prod.kind in ("conv", "affine") and not prod.relu:
                tensor.sign = True  # the producer's bias places the sign threshold exactly (tflite.py)
            else:
                graph.notes.append(f"{tensor.name}: sign() of a tensor not written by a conv or BatchNorm "
                                   f"(consumers {names}); calibrated int8 tensor (closest, not exact)")
            continue
        if len(grids) != 1 or tensor.consumers != len(wanted):
            graph.notes.append(f"{tensor.name}: consumers ({names}) do not all apply the same activation grid; "
                               "calibrated int8 tensor (closest, not exact)")
        elif prod is None or not prod.relu:
            graph.notes.append(f"{tensor.name}: not produced by an op with a fused ReLU; calibrated int8 tensor "
                               "(closest, not exact)")
        elif grids.pop()[1] > 255:
            graph.notes.append(f"{tensor.name}: more than 256 activation levels; calibrated int8 tensor")
        else:
            tensor.grid = wanted[0][0]


def evaluate(graph: Graph, images, batch_size: int = 256):
    """Float evaluation of the IR (with the exact activation rounding).

    Returns ``(outputs, ranges)``: the output array and ``{tensor: (min, max)}``.
    """
    ranges: dict = {}
    results = []
    for start in range(0, len(images), batch_size):
        values = {graph.input: tf.convert_to_tensor(np.asarray(images[start:start + batch_size], np.float32))}
        for op in graph.ops:
            x = values[op.inputs[0]]
            if op.kind in ("conv", "affine"):
                if op.kind == "conv":
                    w = np.transpose(op.real_weights(), (1, 2, 3, 0))  # (H, W, I, O)
                    y = tf.nn.conv2d(x, tf.constant(w, tf.float32), op.strides, op.padding)
                else:
                    y = x * tf.constant(op.real_weights(), tf.float32)
                y = y + tf.constant(op.bias, tf.float32)
            elif op.kind == "dense":
                y = tf.matmul(x, tf.constant(op.real_weights().T, tf.float32)) + tf.constant(op.bias, tf.float32)
            elif op.kind == "add":
                y = x + values[op.inputs[1]]
            elif op.kind == "mean":
                y = tf.reduce_mean(x, axis=[1, 2])
            else:
                y = tf.nn.max_pool2d(x, op.pool, op.strides, op.padding)
            if op.relu:
                y = tf.nn.relu(y)
            grid = graph.tensors[op.output].grid
            if grid is not None:
                step, levels = grid
                y = tf.round(tf.clip_by_value(y, 0.0, levels * step) / step) * step
            stream = graph.tensors[op.output].stream_grid
            if stream is not None:
                y = quantizers.fixed_step(y, *stream)
            if graph.tensors[op.output].sign:
                y = tf.where(y >= 0, 1.0, -1.0)
            values[op.output] = y
        for name, v in values.items():
            lo, hi = float(tf.reduce_min(v)), float(tf.reduce_max(v))
            old = ranges.get(name, (lo, hi))
            ranges[name] = (min(old[0], lo), max(old[1], hi))
        results.append(values[graph.output].numpy())
    return np.concatenate(results), ranges


OUTPUT_RANGES = ("top", "full")


def calibrate(graph: Graph, images, output_range: str = "top") -> np.ndarray:
    """Set every tensor's (lo, hi) from a representative batch; return the IR's float outputs.

    ``output_range="full"`` covers every logit seen. ``"top"`` (default, for
    classifiers) covers only the winning logits: from the smallest per-image
    maximum logit, less a quarter of the span above it, to the largest logit.
    Lower logits saturate at -128, which never changes the argmax but makes
    the int8 step several times finer, so near-tied winners stay apart.
    """
    if output_range not in OUTPUT_RANGES:
        raise ValueError(f"output_range={output_range!r} is not supported; allowed: {', '.join(OUTPUT_RANGES)}.")
    outputs, ranges = evaluate(graph, images)
    for name, (lo, hi) in ranges.items():
        graph.tensors[name].lo, graph.tensors[name].hi = lo, hi
    if output_range == "top" and outputs.ndim == 2 and outputs.shape[1] > 1:
        out = graph.tensors[graph.output]
        top_lo = float(outputs.max(axis=1).min())
        out.lo = max(out.lo, top_lo - 0.25 * (out.hi - top_lo))
    return outputs
