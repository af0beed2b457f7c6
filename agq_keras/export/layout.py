"""The flatbuffer's layout: the plan's decisions as TFLite tensors and operators, in order.

:class:`Layout` is what the plan (:mod:`agq_keras.export.plan`) writes through, next to the serializer
(:mod:`agq_keras.export.flatbuffer`), and it decides nothing: given a tensor's type and quantization, an
op kind and its fused activation, it records the tensor (and the buffer a shared layer's later call reuses),
the builtin with its version (:data:`VERSIONS`: those the TFLite converter gives these kernels) and its
options and constant operand (:data:`agq_keras.export.ops.KINDS`), a weighted op's filter layout and
wide-code split (:func:`intmath.split_codes`), the input repeats (CONCATENATION), the float32 twin of an
exact rounding, and the QUANTIZE copies the plan asks for.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from agq_keras.export import intmath, ops

# (builtin, version) per mode: the versions the TFLite converter gives these kernels.
VERSIONS = {
    "CONV_2D": {"int8": 3, "float32": 1},
    "DEPTHWISE_CONV_2D": {"int8": 3, "float32": 1},
    "FULLY_CONNECTED": {"int8": 4, "float32": 1},
    "ADD": {"int8": 2, "float32": 1},
    "MEAN": {"int8": 2, "float32": 1},
    "MAX_POOL_2D": {"int8": 2, "float32": 1},
    "CONCATENATION": {"int8": 2, "float32": 1},
    "PAD": {"int8": 2, "float32": 1},
    "RESIZE_NEAREST_NEIGHBOR": {"int8": 2, "float32": 1},  # align_corners = half_pixel_centers = False
    "RESHAPE": {"int8": 1, "float32": 1},
    "MINIMUM": {"float32": 1},
    "MUL": {"float32": 1},
    "ROUND": {"float32": 1},
    "QUANTIZE": {"int8": 2},
}
# int16 (16x8) kernel versions, for ops reading/writing the int16 residual stream
VERSIONS_INT16 = {"CONV_2D": 4, "DEPTHWISE_CONV_2D": 5, "FULLY_CONNECTED": 7, "ADD": 3, "MEAN": 3,
                  "MAX_POOL_2D": 3, "CONCATENATION": 3, "PAD": 4, "RESIZE_NEAREST_NEIGHBOR": 4, "RESHAPE": 1}


@dataclasses.dataclass(frozen=True)
class QuantParams:
    """The one record of a tensor's quantization: real = scale * (code - zero_point), per ``axis``."""
    scale: tuple
    zero_point: tuple
    axis: int = 0


@dataclasses.dataclass(frozen=True)
class TensorRecord:
    name: str
    shape: tuple  # without the batch dimension when ``batch``
    dtype: str  # "int4", "int8", "int16", "int32", "int64", "float32"
    quant: Optional[QuantParams] = None
    data: Optional[np.ndarray] = None  # constant contents (read-only), None for activations
    batch: bool = False  # an activation: shape [1] + shape, signature [-1] + shape
    shares: Optional[int] = None  # a constant with the same bytes as tensor ``shares``: stored once, in its buffer


@dataclasses.dataclass(frozen=True)
class OpRecord:
    builtin: str
    version: int
    inputs: tuple  # tensor indices
    outputs: tuple
    options: Optional[tuple] = None  # (options table, ((field, value), ...)), enum values as names


def frozen(array, dtype=None) -> np.ndarray:
    """A read-only copy of ``array``."""
    out = np.array(array, dtype=dtype)
    out.setflags(write=False)
    return out


def filter_layout(kind: str, weights: np.ndarray) -> np.ndarray:
    """Out-channels-first weights in TFLite's filter layout: a conv's (O, H, W, I) and a dense's (O, I) as
    they are, a BatchNorm's (C,) and a depthwise conv's (C*M, kh, kw, 1) as DEPTHWISE_CONV_2D's
    (1, kh, kw, C*M)."""
    if not ops.KINDS[kind].depthwise:
        return weights
    if weights.ndim == 1:  # a BatchNorm's one code per channel
        return weights.reshape(1, 1, 1, -1)
    return np.transpose(weights[..., 0], (1, 2, 0))[None]


class Layout:
    """The TFLite tensors and operators of one plan, in the order they are recorded."""

    def __init__(self, mode: str):
        self.mode = mode
        self.tensors: list = []
        self.ops: list = []
        self.index: dict = {}  # activation name -> tensor index
        self.shared: dict = {}  # (Keras layer, dtype, shape, bytes) -> the first weight tensor holding them

    # -- tensors -------------------------------------------------------
    def tensor(self, name, shape, dtype, data=None, scale=None, zero_point=None, axis=0, batch=False, shares=None):
        quant = None
        if scale is not None:
            quant = QuantParams(tuple(float(s) for s in np.atleast_1d(scale)),
                                tuple(int(z) for z in np.atleast_1d(zero_point)), axis)
        self.tensors.append(TensorRecord(name, tuple(int(d) for d in shape), dtype, quant,
                                         None if data is None else frozen(data), batch, shares))
        return len(self.tensors) - 1

    def activation(self, name: str, shape, dtype: str, scale=None, zero_point=None) -> int:
        """The index of activation ``name``, recorded on first use (``scale``: None for float32)."""
        if name not in self.index:
            self.index[name] = self.tensor(name, shape, dtype, scale=scale, zero_point=zero_point, batch=True)
        return self.index[name]

    def const(self, name, array, dtype, layer=None, **quant):
        """A constant tensor. ``layer``: the Keras layer whose weights these are; a later call of the same layer
        (a detector's head conv at another pyramid level) whose weights have the same bytes shares the first
        call's buffer (its own scales: each call folds its own BatchNorm)."""
        shares = None
        if layer is not None:
            key = (layer, dtype, array.shape, np.ascontiguousarray(array).tobytes())
            shares = self.shared.get(key)
            self.shared.setdefault(key, len(self.tensors))
        return self.tensor(name, array.shape, dtype, data=array, shares=shares, **quant)

    def weights(self, kind: str, name: str, codes, replicas: int, dtype: str, layer: str, scale, axis: int) -> int:
        """A weighted op's integer filter: its layout, the codes of repeated inputs split into int8 parts."""
        layout = filter_layout(kind, codes) if ops.KINDS[kind].depthwise else intmath.split_codes(codes, replicas)
        return self.const(name, layout.astype(np.int8), dtype, scale=scale, zero_point=np.zeros(len(scale), np.int64),
                          axis=axis, layer=layer)

    # -- ops -----------------------------------------------------------
    def op(self, builtin: str, inputs, outputs, options=None):
        """An operator; its version from :data:`VERSIONS` (the 16x8 one when it reads or writes int16)."""
        int16 = any(self.tensors[i].dtype == "int16" for i in list(inputs) + list(outputs))
        version = VERSIONS_INT16.get(builtin, 2) if int16 else VERSIONS[builtin][self.mode]
        if options is not None:
            options = (options[0], tuple(sorted(options[1].items())))
        self.ops.append(OpRecord(builtin, version, tuple(int(i) for i in inputs), tuple(int(o) for o in outputs),
                                 options))

    def emit(self, kind: ops.OpKind, op, inputs, y: int, shape, act: str):
        """Op ``op`` of ``kind`` (an entry of :data:`ops.KINDS`) reading tensors ``inputs`` and writing ``y`` of
        ``shape``, with the fused activation ``act`` and the kind's constant operand."""
        inputs = list(inputs)
        if kind.operand is not None:
            suffix, array = kind.operand(op, shape)
            inputs.append(self.const(f"{op.output}/{suffix}", array, "int32"))
        self.op(kind.builtin, inputs, [y], kind.options(op, shape, act))

    def quantize(self, src: int, dst: int):
        """QUANTIZE ``src`` to ``dst`` (an int8 <-> int16 copy at the scales the plan gave them)."""
        self.op("QUANTIZE", [src], [dst])

    def repeat(self, x: int, name: str, replicas: int) -> int:
        """Tensor ``x`` (activation ``name``) repeated ``replicas`` times on the channel axis (int8 CONCATENATION
        with equal in/out quantization: exact). Built by doubling (x, x2, x4, ...) and one final concatenation
        of the powers of two in ``replicas``, so no concatenation has more than 10 inputs (TensorFlow Lite
        Micro's limit)."""
        if self.mode == "float32" or replicas == 1:
            return x
        src = self.tensors[x]
        axis = len(src.shape)

        def concat(inputs, copies):
            copy = f"{name}/x{copies}"
            if copy not in self.index:  # the same quantization as the input (CONCATENATION needs it)
                self.index[copy] = self.tensor(copy, src.shape[:-1] + (src.shape[-1] * copies,), src.dtype,
                                               batch=True, **_quant_fields(src))
                self.op("CONCATENATION", inputs, [self.index[copy]], ("ConcatenationOptions", {"axis": axis}))
            return self.index[copy]

        powers, copies, t = {1: x}, 1, x
        while copies * 2 <= replicas:
            t = concat([t, t], copies * 2)
            copies *= 2
            powers[copies] = t
        parts = [powers[p] for p in sorted(powers, reverse=True) if replicas & p]
        return parts[0] if len(parts) == 1 else concat(parts, replicas)

    def float_rounding(self, src: int, dst: str, grid):
        """float32 twin of the exact int8 tensor ``dst``: step * round(min(x, levels*step) / step)."""
        step, levels = grid
        shape = self.tensors[src].shape
        names = [f"{dst}/clipped", f"{dst}/scaled", f"{dst}/rounded"]
        top = self.const(f"{dst}/top", np.asarray([levels * step], np.float32), "float32")
        inv = self.const(f"{dst}/inv_step", np.asarray([1.0 / step], np.float32), "float32")
        stp = self.const(f"{dst}/step", np.asarray([step], np.float32), "float32")
        c, s, r, out = (self.activation(n, shape, "float32") for n in names + [dst])
        self.op("MINIMUM", [src, top], [c])
        self.op("MUL", [c, inv], [s], ("MulOptions", {}))
        self.op("ROUND", [s], [r])
        self.op("MUL", [r, stp], [out], ("MulOptions", {}))


def _quant_fields(record: TensorRecord) -> dict:
    if record.quant is None:
        return {}
    return dict(scale=record.quant.scale, zero_point=record.quant.zero_point, axis=record.quant.axis)
