"""Writing the IR (:mod:`agq_keras.export.graph`) as a TFLite flatbuffer.

The model is written directly with the flatbuffer schema bindings that ship
with LiteRT (``ai_edge_litert.schema_py_generated``): every scale, zero point
and weight code is chosen here, none is left to a converter, so the k-bit
grids survive and the output is byte-for-byte deterministic.

``int8`` mode: int8 input/output and activations, int8 weights (per output
channel, zero point 0), int32 biases at scale ``s_in * s_w``. ``float32``
mode writes the same graph in float (the exact activation rounding as
MINIMUM/MUL/ROUND/MUL), as the size/latency/numerics baseline.
"""

from __future__ import annotations

import math

import flatbuffers
import numpy as np

from agq_keras.export.graph import Graph, Op, Tensor

try:
    from ai_edge_litert import schema_py_generated as schema
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("agq_keras.export needs LiteRT: pip install 'agq-keras[export]' (ai-edge-litert)") from err

MODES = ("int8", "float32")
# (builtin, version) per op and mode: the versions the TFLite converter gives these kernels.
_VERSIONS = {
    "CONV_2D": {"int8": 3, "float32": 1},
    "DEPTHWISE_CONV_2D": {"int8": 3, "float32": 1},
    "FULLY_CONNECTED": {"int8": 4, "float32": 1},
    "ADD": {"int8": 2, "float32": 1},
    "MEAN": {"int8": 2, "float32": 1},
    "MAX_POOL_2D": {"int8": 2, "float32": 1},
    "CONCATENATION": {"int8": 2, "float32": 1},
    "MINIMUM": {"float32": 1},
    "MUL": {"float32": 1},
    "ROUND": {"float32": 1},
    "QUANTIZE": {"int8": 2},
}
# int16 (16x8) kernel versions, for ops reading/writing the int16 residual stream
_VERSIONS_INT16 = {"CONV_2D": 4, "DEPTHWISE_CONV_2D": 5, "FULLY_CONNECTED": 7, "ADD": 3, "MEAN": 3,
                   "MAX_POOL_2D": 3, "CONCATENATION": 3}
RESIDUAL_BITS = (16, 8)
INT16_HEADROOM = 1.5  # int16 range = 1.5 x the calibrated |max| (images beyond the representative set)


def _check_bits(residual_bits, head_bits):
    if residual_bits not in RESIDUAL_BITS:
        raise ValueError(f"residual_bits={residual_bits!r} is not supported; allowed: 16, 8.")
    if head_bits not in RESIDUAL_BITS:
        raise ValueError(f"head_bits={head_bits!r} is not supported; allowed: 16, 8.")


def int8_params(tensor: Tensor) -> tuple[float, int]:
    """(scale, zero_point) of an activation tensor in the int8 model."""
    if tensor.sign:  # {-1, +1} as codes {125, 127}; the producer's RELU_N1_TO_1 clamps to them
        return 1.0, SIGN_ZERO_POINT
    if tensor.grid is not None:
        step, levels = tensor.grid
        return float(step), int(127 - levels)
    lo, hi = min(tensor.lo, 0.0), max(tensor.hi, 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / 255.0
    return float(scale), int(np.clip(np.round(-128 - lo / scale), -128, 127))


def int16_params(tensor: Tensor) -> tuple[float, int]:
    """(scale, 0) of an int16 tensor: symmetric, zero point 0 (TFLite's 16x8 kernels require it)."""
    if tensor.grid is not None or tensor.int16_like is not None:  # an exact copy of an int8 tensor
        return int8_params(tensor if tensor.int16_like is None else tensor.int16_like)[0], 0
    if tensor.stream_scale is not None:  # an exact residual stream (stream_grids)
        return tensor.stream_scale, 0
    top = max(abs(tensor.lo), abs(tensor.hi), 1e-8) * INT16_HEADROOM
    return float(top / 32767.0), 0


SIGN_ZERO_POINT = 126
MAX_SEARCH_LEVELS = 15
THRESHOLD_REPLICAS = 16


def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite's (M0, shift) with m = M0 * 2^(shift - 31), M0 in [2^30, 2^31)."""
    if m <= 0:
        return 0, 0
    q, shift = math.frexp(m)
    q_fixed = int(round(q * (1 << 31)))
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    return q_fixed, shift


def fixed_point_multiply(x: np.ndarray, m0: int, shift: int) -> np.ndarray:
    """TFLite's reference MultiplyByQuantizedMultiplier (double rounding), int64 in and out."""
    x = x.astype(np.int64) * (1 << max(shift, 0))
    ab = x * m0
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    total = ab + nudge
    high = np.where(total >= 0, total >> 31, -((-total) >> 31))  # C++ division truncates toward zero
    exponent = max(-shift, 0)
    mask = (1 << exponent) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (high < 0)
    return (high >> exponent) + (remainder > threshold)


def fixed_point_multiply_int64(x: np.ndarray, m0: int, shift: int) -> np.ndarray:
    """TFLite's reference MultiplyByQuantizedMultiplier for an int64 accumulator (the 16x8 kernels):
    the multiplier is reduced to 15 bits and the product rounded once (half up)."""
    reduced = (m0 + (1 << 15)) >> 16 if m0 < 0x7FFF0000 else 0x7FFF
    total_shift = 15 - shift
    return (x.astype(np.int64) * reduced + (1 << (total_shift - 1))) >> total_shift


def exact_thresholds(codes, steps, bias, s_in, grid, limit, multiply=None):
    """Per output channel, choose the code multiplier m and the int32 bias B so that the int8
    output equals ``round(clip(real, 0, levels))`` for every accumulator value.

    The real pre-activation in output steps is ``(acc + beta) * M`` with ``M = s_in s_w / s_out``
    and a real ``beta = bias / (s_in s_w)``; int8 stores an integer B and applies TFLite's
    fixed-point multiplier. Both are monotone step functions of acc, which only takes multiples
    of m (every code is m times a base code), so they agree everywhere iff they agree on the two
    multiples of m around each of the ``levels`` real thresholds ``(j + 1/2) / M - beta``.
    Scanning m (s_w = base step / m) and B in {floor, ceil}(beta)
    finds such a choice, preferring one where every checked point is also >= 1e-4 output steps
    from a rounding tie (so float32 requantization, e.g. XNNPACK's, agrees too). If none
    exists the largest m with B = round(beta) is kept (closest). Returns (codes, steps, bias).
    """
    multiply = multiply or fixed_point_multiply
    step_out, levels = grid
    s_in32, s_out32 = float(np.float32(s_in)), float(np.float32(step_out))
    codes = codes.copy()
    steps = steps.astype(np.float64).copy()
    out_bias = np.zeros(len(steps))
    half = np.arange(levels) + 0.5
    ranks = []
    for c in range(len(steps)):
        row = codes[c].astype(np.int64)
        g = int(np.gcd.reduce(np.abs(row.ravel()))) or 1
        base, base_step = row // g, steps[c] * g
        top = int(np.abs(base).max(initial=0)) or 1
        best = None
        for m in range(limit // top, 0, -1):
            s_w = float(np.float32(base_step / m))
            mult = s_in32 * s_w / s_out32
            beta = bias[c] / (s_in32 * s_w)
            t = half / mult - beta
            # every weight code is a multiple of m, so the accumulator only takes multiples of m
            acc = m * np.concatenate([np.ceil(t / m) - 1, np.ceil(t / m)])
            real = np.clip(np.floor((acc + beta) * mult + 0.5), 0, levels)
            m0, shift = quantize_multiplier(mult)
            for b_int in (np.floor(beta), np.ceil(beta)):
                fixed = np.clip(multiply(acc + b_int, m0, shift), 0, levels)
                if np.array_equal(fixed, real):
                    ties = np.abs((acc + b_int) * mult - np.round((acc + b_int) * mult - 0.5) - 0.5)
                    rank = 0 if ties.min() >= 1e-4 else 1
                    if best is None or rank < best[0]:
                        best = (rank, m, b_int)
                    if rank == 0:
                        break
            if best is not None and best[0] == 0:
                break
        if best is None:
            m = limit // top
            best = (2, m, np.round(bias[c] / (s_in32 * float(np.float32(base_step / m)))))
        _, m, b_int = best
        codes[c] = base * m
        steps[c] = float(np.float32(base_step / m))
        out_bias[c] = b_int
        ranks.append(best[0])
    return codes, steps, out_bias, np.asarray(ranks)


def exact_multiplier_steps(s_in: float, steps: np.ndarray, s_out: float) -> np.ndarray:
    """Weight steps (float32 values) whose 16x8 output multipliers are exact where they can be.

    TFLite derives the multiplier ``s_in * s_w / s_out`` in double from the stored float32 scales
    and a 16x8 kernel keeps 15 bits of it. When the intended multiplier has a 15-bit mantissa (an
    integer below 2^15, a power of two: the residual stream's convs and its stem), float32 storage
    can leave it a hair *below* that value, and the mantissa then rounds to 0x7FFF instead of the
    next power of two. Each such step is nudged up by float32 ulps until the double product is at
    or just above the intended value, which the kernel then reproduces exactly."""
    s_in32, s_out32 = float(np.float32(s_in)), float(np.float32(s_out))
    out = np.asarray(steps, np.float64).copy()
    for c, step in enumerate(out):
        ideal = s_in32 * float(np.float32(step)) / s_out32
        if ideal <= 0:
            continue
        mant, exp = math.frexp(ideal)
        target = math.ldexp(round(mant * 2**15) / 2**15, exp)
        if abs(ideal / target - 1) > 1e-6:
            continue  # not a 15-bit multiplier: nothing to keep exact
        s_w = np.float32(target * s_out32 / s_in32)
        while s_in32 * float(s_w) / s_out32 < target:
            s_w = np.nextafter(s_w, np.float32(np.inf))
        out[c] = float(s_w)
    return out


def _affine_codes_16x8(codes, steps, s_in, s_out):
    """Per channel of a 16x8 DEPTHWISE_CONV_2D (one weight per channel): the code c in 64..127 whose
    output multiplier s_in * (|g|/c) / s_out loses least in the kernel's 15-bit reduced multiplier."""
    codes, steps = codes.copy(), steps.astype(np.float64).copy()
    for ch in range(len(steps)):
        if codes[ch] == 0:
            continue
        g = abs(int(codes[ch])) * steps[ch]
        best = None
        for c in range(127, 63, -1):
            s_w = float(np.float32(g / c))
            m0, shift = quantize_multiplier(float(np.float32(s_in)) * s_w / float(np.float32(s_out)))
            reduced = (m0 + (1 << 15)) >> 16 if m0 < 0x7FFF0000 else 0x7FFF
            err = abs(reduced * 65536 - m0) / m0
            if best is None or err < best[0]:
                best = (err, c, s_w)
        codes[ch] = int(np.sign(codes[ch])) * best[1]
        steps[ch] = best[2]
    return codes, steps


def _groups(graph: Graph) -> list:
    """The int16 tensors joined by ADD ops (operands and result of an ADD share one scale)."""
    parent = {name: name for name, t in graph.tensors.items() if t.int16}

    def find(n):
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for op in graph.ops:
        if op.kind == "add" and all(n in parent for n in op.inputs + [op.output]):
            for n in op.inputs:
                parent[find(n)] = find(op.output)
    groups: dict = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    return [sorted(members) for members in groups.values()]


STREAM_MAX_MULTIPLIER = 1 << 14  # an integer multiplier below 2^14 is exact in the 16x8 kernels' 15 bits


def stream_grids(graph: Graph) -> list:
    """Give each residual stream (a group of int16 tensors joined by ADDs) one exact scale when it can.

    The convs writing a stream (a block's last conv, the projection shortcut) read a k-bit grid
    tensor (scale ``s_a``), have grid weights (``codes * s_w``) and no bias: their outputs are
    integers times ``u_c = s_a s_w`` per channel. When every such ``u_c`` of a stream is an integer
    multiple of the smallest, ``u``, the stream gets the int16 scale ``u / M`` with the largest
    integer ``M`` that keeps the calibrated range (x ``INT16_HEADROOM``) inside int16. Then each
    conv's requantization multiplier is an integer (exact in the 16x8 kernel's 15-bit multiplier),
    each ADD has equal input and output scales (exact), and only the producers off the grid (the
    16-bit stem; an ImageNet stem's max-pool) round, once. Mixed grids (1-bit DoReFa: ``s_w =
    mean|w|`` per layer) or too fine a grid (8-bit: ``u = 1/255^2``, ``M < 1``) keep the calibrated
    scale (not exact). Returns notes."""
    notes = []
    for members in _groups(graph):
        gridded, units, off_grid = [], [], False
        for name in members:
            op = graph.producer(name)
            if op is None or op.kind == "add":
                continue
            src = graph.tensors[op.inputs[0]]
            if op.kind != "conv" or not op.exact_weights or src.grid is None or op.relu or np.any(op.bias != 0):
                off_grid = True  # the stem: rounded to the stream scale, once
                continue
            flat = op.codes.reshape(len(op.steps), -1).astype(np.int64)
            gcd = np.maximum(np.gcd.reduce(np.abs(flat), axis=1), 1)
            gridded.append((op, gcd))
            units.append(float(np.float32(src.grid[0])) * op.steps * gcd)
        declared = {graph.tensors[n].stream_grid[0] for n in members if graph.tensors[n].stream_grid is not None}
        if not gridded:
            continue
        if off_grid and not declared:  # a float stream holding the stem: finer per-tensor scales round less
            notes.append(f"residual stream {members[0]}…: F's residual stream is float and holds the 16-bit stem's "
                         "output; calibrated int16 scales (closest, not exact; build F with "
                         "residual_stream='int16' for an exact export)")
            continue
        allu = np.concatenate(units)
        if declared:  # F's own int16 grid (residual_stream="int16"): F saturates where int16 does
            u, m = min(declared), 1
            powers = np.log2(np.asarray(sorted(declared)) / u)
            exact = np.allclose(powers, np.round(powers), rtol=0, atol=1e-9)  # pot ratios: ADDs stay exact
        else:
            u, exact = float(allu.min()), True
            top = max(max(abs(graph.tensors[n].lo), abs(graph.tensors[n].hi)) for n in members) * INT16_HEADROOM
            m = int(np.floor(32767 * u / max(top, 1e-12)))
        ratios = allu / u
        if not exact or np.abs(ratios - np.round(ratios)).max() > 1e-6 or m < 1 or \
                np.round(ratios).max() * m >= STREAM_MAX_MULTIPLIER:
            notes.append(f"residual stream {members[0]}…: conv outputs share no integer grid that fits int16; "
                         "calibrated int16 scale (closest, not exact)")
            continue
        for op, gcd in gridded:  # base codes (no widening): the multiplier s_a s_w / s is then an integer
            shape = (-1,) + (1,) * (op.codes.ndim - 1)
            op.codes = op.codes // gcd.reshape(shape)
            op.steps = op.steps * gcd
        for name in members:
            tensor = graph.tensors[name]
            tensor.stream_scale = tensor.stream_grid[0] if tensor.stream_grid is not None else u / m
    return notes


def split_codes(codes: np.ndarray, replicas: int) -> np.ndarray:
    """Split integer codes with |code| <= 127 r into r int8 parts along the last
    (input) axis: ``sum_k parts[..., k*I + j] == codes[..., j]``."""
    if replicas == 1:
        return codes
    mag, sign = np.abs(codes), np.sign(codes)
    base, rest = mag // replicas, mag % replicas
    parts = [sign * (base + (k < rest)) for k in range(replicas)]
    return np.concatenate(parts, axis=-1)


class _Writer:
    def __init__(self, graph: Graph, mode: str, description: str):
        self.graph, self.mode = graph, mode
        self.model = schema.ModelT()
        self.model.version = 3
        self.model.description = description
        self.model.buffers = [schema.BufferT()]  # buffer 0: the empty sentinel
        self.model.operatorCodes = []
        self.sub = schema.SubGraphT()
        self.sub.name = "main"
        self.sub.tensors, self.sub.operators = [], []
        self.index: dict = {}
        self.opcodes: dict = {}

    # -- tensors -------------------------------------------------------
    def tensor(self, name, shape, dtype, data=None, scale=None, zero_point=None, axis=0, batch=False):
        t = schema.TensorT()
        t.name = name
        t.shape = np.asarray(([1] if batch else []) + list(shape), np.int32)
        if batch:
            t.shapeSignature = np.asarray([-1] + list(shape), np.int32)
        t.type = dtype
        if data is None:
            t.buffer = 0
        else:
            buf = schema.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.model.buffers.append(buf)
            t.buffer = len(self.model.buffers) - 1
        if scale is not None:
            q = schema.QuantizationParametersT()
            q.scale = [float(s) for s in np.atleast_1d(scale)]
            q.zeroPoint = [int(z) for z in np.atleast_1d(zero_point)]
            q.quantizedDimension = axis
            t.quantization = q
        self.sub.tensors.append(t)
        return len(self.sub.tensors) - 1

    def activation(self, name: str) -> int:
        if name in self.index:
            return self.index[name]
        tensor = self.graph.tensors[name]
        if self.mode == "int8":
            scale, zp = (int16_params if tensor.int16 else int8_params)(tensor)
            dtype = schema.TensorType.INT16 if tensor.int16 else schema.TensorType.INT8
            idx = self.tensor(name, tensor.shape, dtype, scale=scale, zero_point=zp, batch=True)
        else:
            idx = self.tensor(name, tensor.shape, schema.TensorType.FLOAT32, batch=True)
        self.index[name] = idx
        return idx

    def scale_of(self, name):
        tensor = self.graph.tensors[name]
        return (int16_params if tensor.int16 else int8_params)(tensor)[0]

    def typed(self, name: str, int16: bool) -> str:
        """``name`` stored as int16 (``int16=True``) or int8: the tensor itself, or a copy made by a
        QUANTIZE op (int8 -> int16 at the same scale is exact; int16 -> int8 uses the tensor's
        calibrated int8 range)."""
        src = self.graph.tensors[name]
        if self.mode != "int8" or src.int16 == int16:
            return name
        copy = f"{name}/{'as_int16' if int16 else 'as_int8'}"
        if copy not in self.index:
            self.graph.tensors[copy] = Tensor(copy, src.shape, lo=src.lo, hi=src.hi, int16=int16,
                                              int16_like=src if int16 else None)
            self.op("QUANTIZE", [self.activation(name)], [self.activation(copy)])
        return copy

    def const(self, name, array, dtype, **quant):
        return self.tensor(name, array.shape, dtype, data=array, **quant)

    # -- ops -----------------------------------------------------------
    def op(self, builtin: str, inputs, outputs, options_type=0, options=None):
        code = getattr(schema.BuiltinOperator, builtin)
        int16 = any(self.sub.tensors[i].type == schema.TensorType.INT16 for i in list(inputs) + list(outputs))
        key = (code, _VERSIONS_INT16.get(builtin, 2) if int16 else _VERSIONS[builtin][self.mode])
        if key not in self.opcodes:
            oc = schema.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = key[1]
            self.model.operatorCodes.append(oc)
            self.opcodes[key] = len(self.model.operatorCodes) - 1
        o = schema.OperatorT()
        o.opcodeIndex = self.opcodes[key]
        o.inputs = np.asarray(inputs, np.int32)
        o.outputs = np.asarray(outputs, np.int32)
        o.builtinOptionsType = options_type
        o.builtinOptions = options
        self.sub.operators.append(o)

    def weights(self, op: Op, in_name: str, axis: int):
        """(weight tensor, bias tensor) indices."""
        real = op.float_weights if op.float_weights is not None else op.real_weights()
        layout = real.reshape(1, 1, 1, -1) if op.kind == "affine" else real  # depthwise filter: (1, 1, 1, C)
        if self.mode == "float32":
            w = self.const(f"{op.output}/weights", layout.astype(np.float32), schema.TensorType.FLOAT32)
            b = self.const(f"{op.output}/bias", op.bias.astype(np.float32), schema.TensorType.FLOAT32)
            return w, b
        s_in = self.scale_of(in_name)
        wide_in = self.graph.tensors[in_name].int16  # a 16x8 kernel: int64 bias and accumulator
        codes, steps, grid = op.codes, op.steps, self.graph.tensors[op.output].grid
        if self.graph.tensors[op.output].sign and not wide_in:
            codes, steps, bias = self._sign_weights(op, s_in)
        elif grid is not None and grid[1] <= MAX_SEARCH_LEVELS and op.kind != "dense":
            # more input repeats allow larger codes, hence a finer fixed-point multiplier; add
            # repeats (up to THRESHOLD_REPLICAS and graph.max_replicas) until every channel is exact
            cap = max(op.replicas, min(THRESHOLD_REPLICAS, getattr(self.graph, "max_replicas", 1)))
            if op.kind == "affine":
                cap = 1
            for replicas in range(op.replicas, cap + 1):
                flat, new_steps, bias, ranks = exact_thresholds(
                    codes.reshape(len(steps), -1), steps, op.bias, s_in, grid, 127 * replicas,
                    multiply=fixed_point_multiply_int64 if wide_in else fixed_point_multiply)
                if ranks.max(initial=0) < 2:
                    break
            op.replicas = replicas
            codes, steps = flat.reshape(codes.shape), new_steps
            op.threshold_ranks = ranks  # per channel: 0 exact (also float32), 1 exact, 2 closest
        else:
            if op.kind == "affine" and wide_in:
                codes, steps = _affine_codes_16x8(codes, steps, s_in, self.scale_of(self._wide_out(op)))
            elif wide_in:
                steps = exact_multiplier_steps(s_in, steps, self.scale_of(self._wide_out(op)))
            bias = np.round(op.bias / (s_in * steps))
        if op.kind == "dense" and np.allclose(steps, steps[0], rtol=1e-12):
            steps = steps[:1]  # per-tensor when the grid step is uniform
        layout = codes.reshape(1, 1, 1, -1) if op.kind == "affine" else split_codes(codes, op.replicas)
        w = self.const(f"{op.output}/weights", layout.astype(np.int8), schema.TensorType.INT8, scale=steps,
                       zero_point=np.zeros(len(steps), np.int64), axis=axis)
        bias_scale = s_in * np.broadcast_to(steps, op.bias.shape)
        if np.abs(bias).max(initial=0) >= 2**31 - 1 and not wide_in:
            raise ValueError(f"Layer {op.layer!r}: its bias does not fit int32 at scale s_in*s_w; cannot export.")
        bias_type = (np.int64, schema.TensorType.INT64) if wide_in else (np.int32, schema.TensorType.INT32)
        b = self.const(f"{op.output}/bias", bias.astype(bias_type[0]), bias_type[1], scale=bias_scale,
                       zero_point=np.zeros(len(bias_scale), np.int64), axis=0)
        return w, b

    def _sign_weights(self, op: Op, s_in: float):
        """Codes, stored steps and int32 bias of an op whose output feeds sign() (exact for every input).

        With base codes doubled, the accumulator ``acc`` only takes even values; F outputs +1 iff
        ``acc >= -beta`` (beta: the real bias in accumulator units), i.e. iff ``acc >= a``, ``a`` the
        smallest even number ``>= -beta``. The int32 bias ``B = 1 - a`` makes ``acc + B`` odd, so
        never 0, and positive exactly when ``acc >= a``; stored steps ``2 / s_in`` make the output
        multiplier 2, so ``|acc + B| >= 1`` always saturates the RELU_N1_TO_1 clamp at codes 125/127
        (-1/+1). The real weights are scaled by a positive per-channel gain, which does not change a
        sign (``op.sign_gain``; the grid check divides it out)."""
        flat = op.codes.reshape(len(op.steps), -1).astype(np.int64)
        gcd = np.maximum(np.gcd.reduce(np.abs(flat), axis=1), 1)
        base, base_steps = flat // gcd[:, None], op.steps * gcd
        limit = 1 if op.kind == "affine" else 2 * getattr(self.graph, "max_replicas", 1)
        replicas = max(op.replicas, -(-2 * int(np.abs(base).max(initial=0)) // 127))
        if replicas > limit:
            raise ValueError(f"Layer {op.layer!r}: its codes are too wide for an exact sign() output "
                             f"(needs {replicas} input repeats, allowed {limit}); export with a larger max_replicas.")
        op.replicas = replicas
        beta = op.bias / (s_in * base_steps / 2)
        first_positive = 2 * np.ceil(-beta / 2)
        bias = 1 - first_positive
        stored = np.full(len(base_steps), float(np.float32(2.0 / s_in)))
        op.sign_gain = stored / (base_steps / 2)
        return (base * 2).reshape(op.codes.shape), stored, bias

    def _wide_out(self, op: Op) -> str:
        tmp = f"{op.output}/i16"
        return tmp if tmp in self.graph.tensors and not self.graph.tensors[op.output].int16 else op.output

    def replicate(self, op: Op, in_name: str) -> int:
        """The op's input repeated ``op.replicas`` times on the channel axis (int8 CONCATENATION with
        equal in/out quantization: exact). Built by doubling (x, x2, x4, ...) and one final
        concatenation of the powers of two in ``replicas``, so no concatenation has more than
        10 inputs (TensorFlow Lite Micro's limit)."""
        x = self.activation(in_name)
        if self.mode == "float32" or op.replicas == 1:
            return x
        src = self.graph.tensors[in_name]
        axis = len(src.shape)

        def concat(inputs, copies):
            name = f"{in_name}/x{copies}"
            if name not in self.index:
                self.graph.tensors[name] = Tensor(name, src.shape[:-1] + (src.shape[-1] * copies,), grid=src.grid,
                                                  lo=src.lo, hi=src.hi, int16=src.int16, int16_like=src.int16_like)
                opt = schema.ConcatenationOptionsT()
                opt.axis = axis
                self.op("CONCATENATION", inputs, [self.activation(name)], schema.BuiltinOptions.ConcatenationOptions,
                        opt)
            return self.index[name]

        powers, copies, t = {1: x}, 1, x
        while copies * 2 <= op.replicas:
            t = concat([t, t], copies * 2)
            copies *= 2
            powers[copies] = t
        parts = [powers[p] for p in sorted(powers, reverse=True) if op.replicas & p]
        return parts[0] if len(parts) == 1 else concat(parts, op.replicas)

    def emit(self, op: Op):
        out_name = op.output
        out = self.graph.tensors[out_name]
        # The input type: an affine (BatchNorm) or dense layer reads its input as stored; every other
        # op reads its input in its output's type (int16 in and out: the 16x8 kernels; int8 in and out).
        as_stored = op.kind in ("affine", "dense")
        in_name = op.inputs[0] if as_stored else self.typed(op.inputs[0], out.int16)
        widened = as_stored and self.graph.tensors[in_name].int16 and not out.int16
        if widened:  # a 16x8 kernel writes int16; QUANTIZE brings it to the int8 output
            tmp = f"{out_name}/i16"
            self.graph.tensors[tmp] = Tensor(tmp, out.shape, lo=out.lo, hi=out.hi, int16=True,
                                             int16_like=out if out.grid is not None else None)
        params = self.weights(op, in_name, axis=3 if op.kind == "affine" else 0) \
            if op.kind in ("conv", "dense", "affine") else None  # may add input repeats: first
        x = self.replicate(op, in_name) if op.kind in ("conv", "dense") else self.activation(in_name)
        grid = out.grid
        rounding = self.mode == "float32" and grid is not None
        y_name = f"{out_name}/preround" if rounding else (f"{out_name}/i16" if widened else out_name)
        if rounding:
            self.graph.tensors[y_name] = Tensor(y_name, out.shape)
        y = self.activation(y_name)
        act = schema.ActivationFunctionType.RELU if op.relu else schema.ActivationFunctionType.NONE
        if out.sign and self.mode == "int8":
            act = schema.ActivationFunctionType.RELU_N1_TO_1
        if op.kind == "conv":
            w, b = params
            opt = schema.Conv2DOptionsT()
            opt.padding = getattr(schema.Padding, op.padding)
            opt.strideH, opt.strideW = op.strides
            opt.dilationHFactor = opt.dilationWFactor = 1
            opt.fusedActivationFunction = act
            self.op("CONV_2D", [x, w, b], [y], schema.BuiltinOptions.Conv2DOptions, opt)
        elif op.kind == "affine":
            w, b = params
            opt = schema.DepthwiseConv2DOptionsT()
            opt.padding = schema.Padding.VALID
            opt.strideH = opt.strideW = 1
            opt.depthMultiplier = 1
            opt.dilationHFactor = opt.dilationWFactor = 1
            opt.fusedActivationFunction = act
            self.op("DEPTHWISE_CONV_2D", [x, w, b], [y], schema.BuiltinOptions.DepthwiseConv2DOptions, opt)
        elif op.kind == "dense":
            w, b = params
            opt = schema.FullyConnectedOptionsT()
            opt.fusedActivationFunction = act
            opt.weightsFormat = schema.FullyConnectedOptionsWeightsFormat.DEFAULT
            opt.keepNumDims = False
            self.op("FULLY_CONNECTED", [x, w, b], [y], schema.BuiltinOptions.FullyConnectedOptions, opt)
        elif op.kind == "add":
            opt = schema.AddOptionsT()
            opt.fusedActivationFunction = act
            opt.potScaleInt16 = False  # int16: the general (any scale) kernel
            x2 = self.activation(self.typed(op.inputs[1], out.int16))
            self.op("ADD", [x, x2], [y], schema.BuiltinOptions.AddOptions, opt)
        elif op.kind == "mean":
            axes = self.const(f"{out_name}/axes", np.asarray([1, 2], np.int32), schema.TensorType.INT32)
            opt = schema.ReducerOptionsT()
            opt.keepDims = False
            self.op("MEAN", [x, axes], [y], schema.BuiltinOptions.ReducerOptions, opt)
        elif op.kind == "maxpool":
            opt = schema.Pool2DOptionsT()
            opt.padding = getattr(schema.Padding, op.padding)
            opt.strideH, opt.strideW = op.strides
            opt.filterHeight, opt.filterWidth = op.pool
            opt.fusedActivationFunction = act
            self.op("MAX_POOL_2D", [x], [y], schema.BuiltinOptions.Pool2DOptions, opt)
        if rounding:
            self.float_rounding(y_name, out_name, grid)
        if widened:
            self.op("QUANTIZE", [y], [self.activation(out_name)])

    def float_rounding(self, src: str, dst: str, grid):
        """float32 twin of the exact int8 tensor: step * round(min(x, levels*step) / step)."""
        step, levels = grid
        shape = self.graph.tensors[dst].shape
        names = [f"{dst}/clipped", f"{dst}/scaled", f"{dst}/rounded"]
        for n in names:
            self.graph.tensors[n] = Tensor(n, shape)
        top = self.const(f"{dst}/top", np.asarray([levels * step], np.float32), schema.TensorType.FLOAT32)
        inv = self.const(f"{dst}/inv_step", np.asarray([1.0 / step], np.float32), schema.TensorType.FLOAT32)
        stp = self.const(f"{dst}/step", np.asarray([step], np.float32), schema.TensorType.FLOAT32)
        c, s, r, out = (self.activation(n) for n in names + [dst])
        self.op("MINIMUM", [self.activation(src), top], [c])
        mul = schema.MulOptionsT()
        self.op("MUL", [c, inv], [s], schema.BuiltinOptions.MulOptions, mul)
        self.op("ROUND", [s], [r])
        self.op("MUL", [r, stp], [out], schema.BuiltinOptions.MulOptions, schema.MulOptionsT())

    def finish(self) -> bytes:
        self.sub.inputs = np.asarray([self.activation(self.graph.input)], np.int32)
        for op in self.graph.ops:
            self.emit(op)
        self.sub.outputs = np.asarray([self.index[self.graph.output]], np.int32)
        self.model.subgraphs = [self.sub]
        builder = flatbuffers.Builder(1024)
        builder.Finish(self.model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def write(graph: Graph, mode: str = "int8", description: str = "agq_keras export", residual_bits: int = 16,
          head_bits: int = 8) -> bytes:
    """The flatbuffer bytes of ``graph`` (calibrated with :func:`graph.calibrate`) in ``mode``.

    ``residual_bits=16`` stores the residual stream (the operands and results of ADD that are not
    on an activation grid) as int16; 8 keeps every tensor int8 (e.g. for the Edge TPU).
    ``head_bits=16`` also stores the last feature map and the pooled features as int16 (16x8
    kernels, then QUANTIZE to the int8 logits): the calibrated head then rounds ~256x more finely
    and has headroom beyond the calibrated range (no Edge TPU)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; allowed: {', '.join(MODES)}.")
    _check_bits(residual_bits, head_bits)
    for tensor in graph.tensors.values():
        tensor.int16, tensor.stream_scale = False, None
    if mode == "int8" and head_bits == 16:
        for op in graph.ops:
            if op.kind == "mean" and op.output != graph.output:
                for name in (op.inputs[0], op.output):
                    graph.tensors[name].int16 = graph.tensors[name].grid is None and name != graph.input
    if mode == "int8" and residual_bits == 16:
        for op in graph.ops:
            if op.kind == "add":
                for name in op.inputs + [op.output]:
                    tensor = graph.tensors[name]
                    tensor.int16 = tensor.grid is None and name not in (graph.input, graph.output)
        for op in graph.ops:  # the head after the stream (final BatchNorm, pooling) stays int16 too
            out = graph.tensors[op.output]
            if op.kind in ("affine", "mean", "maxpool") and graph.tensors[op.inputs[0]].int16 and out.grid is None \
                    and op.output != graph.output:
                out.int16 = True
        graph.notes += [n for n in stream_grids(graph) if n not in graph.notes]
    saved = dict(graph.tensors)
    try:
        return _Writer(graph, mode, description).finish()
    finally:
        graph.tensors.clear()
        graph.tensors.update(saved)


# -- public API ---------------------------------------------------------------
def resolve_model(model):
    """F from a keras.Model, an AGTrainer (its ``.f``) or a ``.keras`` path; returns (F, notes)."""
    import os

    import keras

    from agq_keras import saving

    notes = []
    if isinstance(model, (str, os.PathLike)):
        model = saving.load_model(model, what="model file")
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected a keras.Model (F or an AGTrainer) or a .keras path, got {type(model).__name__}.")
    f = getattr(model, "f", None)
    if isinstance(f, keras.Model) and f is not model:
        notes.append(f"{model.name!r} is a trainer; exported its deployable network F ({f.name!r}), not H.")
        model = f
    return model, notes


def check_images(model, images, what: str = "representative dataset"):
    """float32 images matching the model input shape, else a ValueError naming both shapes."""
    images = np.asarray(images)
    expected = tuple(model.input_shape[1:])
    if images.ndim != len(expected) + 1 or tuple(images.shape[1:]) != expected or len(images) == 0:
        raise ValueError(f"The {what} has shape {images.shape}; the model expects (N,) + {expected} with N >= 1.")
    if not np.issubdtype(images.dtype, np.number) or not np.all(np.isfinite(images)):
        raise ValueError(f"The {what} must hold finite numbers (got dtype {images.dtype}).")
    return images.astype(np.float32)


def convert(model, representative_data, *, mode: str = "int8", max_replicas: int = 259,
            output_range: str = "top", residual_bits: int = 16, head_bits: int = 8):
    """Convert F to TFLite bytes. Returns ``(bytes, graph, notes)``.

    Args:
      model: F, an AGTrainer (F is exported) or a ``.keras`` path.
      representative_data: images (N, H, W, C) as F receives them; they set the
        int8 ranges of the tensors that are not on a quantizer grid (the input,
        residual sums, the head) and are not otherwise stored.
      mode: ``"int8"`` (full integer) or ``"float32"``.
      max_replicas: the most times a layer's input may be repeated to hold
        weight codes wider than int8 (259 makes 16-bit first/last layers exact;
        1 gives plain int8 weights everywhere).
      output_range: ``"top"`` or ``"full"`` (see :func:`graph.calibrate`).
      residual_bits: 16 (default) keeps the residual stream of residual nets in int16 (16x8 kernels,
        see docs/export.md); 8 makes every activation int8 (Edge TPU), less exact.
      head_bits: 8 (default) or 16: the pooled features in int16 (finer calibrated head; no Edge TPU).
    """
    from agq_keras.export import graph as graph_lib

    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; allowed: {', '.join(MODES)}.")
    _check_bits(residual_bits, head_bits)
    if isinstance(max_replicas, bool) or not isinstance(max_replicas, int) or not 1 <= max_replicas <= 1024:
        raise ValueError(f"max_replicas={max_replicas!r} must be an integer in 1..1024.")
    f, notes = resolve_model(model)
    images = check_images(f, representative_data)
    graph = graph_lib.lower(f, max_replicas=max_replicas)
    graph_lib.calibrate(graph, images, output_range=output_range)
    data = write(graph, mode, description=f"agq_keras {mode} export of {f.name}", residual_bits=residual_bits,
                 head_bits=head_bits)
    return data, graph, notes + graph.notes


def save_atomic(data: bytes, path: str):
    """Write ``data`` to ``path`` through a temporary file in the same folder (no partial file; the
    file's mode follows the umask): :func:`agq_keras.saving.write_bytes`."""
    from agq_keras import saving

    saving.write_bytes(path, data)
