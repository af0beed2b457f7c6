"""The quantization plan: every integer decision of the export, frozen before anything is written.

Third stage of the pipeline (lower -> calibrate -> **plan** -> layout -> flatbuffer). :func:`make_plan`
takes the lowered graph (never changed), the calibrated ranges and the weight forms the calibration ran
with (:func:`weight_forms`), and decides: each tensor's type, scale and zero point, each weighted op's
codes, steps, bias, multiplier and input repeats, the int16 tensors and their QUANTIZE copies. It writes
each decision through a :class:`~agq_keras.export.layout.Layout`, which records the TFLite tensors
(:class:`~agq_keras.export.layout.TensorRecord` with its one
:class:`~agq_keras.export.layout.QuantParams`) and operators (builtin, version, options, constant operands,
filter layout, input repeats) and decides nothing; the returned :class:`Plan` holds them, the lowered graph
and a :class:`LayerRecord` per weighted op (replicas, threshold ranks and margins, sign gain) for the verify
report. The serializer (:mod:`agq_keras.export.flatbuffer`) only encodes it.

``int8`` mode: int8 input/output and activations, int8 weights (per output channel, zero point 0),
int32 biases at scale ``s_in * s_w``. ``float32`` mode plans the same graph in float (the exact
activation rounding as MINIMUM/MUL/ROUND/MUL), as the size/latency/numerics baseline.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from agq_keras.export import intmath, ops
from agq_keras.export.layout import Layout, TensorRecord, filter_layout, frozen
from agq_keras.export.lower import Graph, Op

MODES = ("int8", "float32")
RESIDUAL_BITS = (16, 8)
WEIGHTS = ("int8", "packed")
INT16_HEADROOM = 1.5  # int16 range = 1.5 x the calibrated |max| (images beyond the representative set)
SIGN_ZERO_POINT = 126
MAX_SEARCH_LEVELS = 15
THRESHOLD_REPLICAS = 16
STREAM_STEM_REPLICAS = 4  # the most input repeats for an image-reading conv writing F's int8 stream
STREAM_MAX_MULTIPLIER = 1 << 14  # an integer multiplier below 2^14 is exact in the 16x8 kernels' 15 bits


def check_options(mode="int8", residual_bits=None, head_bits=8, max_replicas=259, output_bits=8, weights="int8"):
    """A ValueError naming the bad value and what is allowed."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r} is not supported; allowed: {', '.join(WEIGHTS)}.")
    if output_bits is not None and output_bits not in RESIDUAL_BITS:
        raise ValueError(f"output_bits={output_bits!r} is not supported; allowed: None (8 for one output, 16 "
                         f"for several), 8, 16.")

    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; allowed: {', '.join(MODES)}.")
    if residual_bits is not None and residual_bits not in RESIDUAL_BITS:
        raise ValueError(f"residual_bits={residual_bits!r} is not supported; allowed: None (F's own stream), "
                         f"16, 8.")
    if head_bits not in RESIDUAL_BITS:
        raise ValueError(f"head_bits={head_bits!r} is not supported; allowed: 16, 8.")
    if isinstance(max_replicas, bool) or not isinstance(max_replicas, int) or not 1 <= max_replicas <= 1024:
        raise ValueError(f"max_replicas={max_replicas!r} must be an integer in 1..1024.")


# -- the frozen records --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LayerRecord:
    """What the plan decided for one weighted op (conv, dense, BatchNorm as depthwise)."""
    layer: str
    kind: str
    output: str
    weight_bits: int
    replicas: int  # the input is repeated this many times (codes span +-127 * replicas)
    exact_weights: bool
    note: str
    float_weights: Optional[np.ndarray]  # F's weights (BN folded), before int8 coding
    gain: Optional[np.ndarray] = None  # per channel: stored weights / F's weights (a sign() output)
    threshold_ranks: Optional[np.ndarray] = None  # per channel: 0 exact on every runtime, 1 TFLite only, 2 closest
    margins: Optional[np.ndarray] = None  # per channel: smallest distance from a rounding tie (output steps)


@dataclasses.dataclass(frozen=True)
class Plan:
    graph: Graph
    mode: str
    description: str
    tensors: tuple  # TensorRecord, in index order
    ops: tuple  # OpRecord, in execution order
    inputs: tuple
    outputs: tuple
    layers: dict  # op output name -> LayerRecord
    stream_scales: dict  # tensor on F's signed grid (its residual stream, its int8 logits) -> its exact scale
    notes: tuple

    def tensor(self, name: str) -> TensorRecord:
        """The record of tensor ``name`` (KeyError naming it if absent)."""
        for record in self.tensors:
            if record.name == name:
                return record
        raise KeyError(f"No tensor {name!r} in the plan.")


# -- weight forms: the integer weights before any scale is known --------------------------------
@dataclasses.dataclass
class WeightForm:
    codes: np.ndarray
    steps: np.ndarray
    replicas: int
    exact: bool
    note: str
    float_weights: np.ndarray
    packed: bool = False  # stored as packed INT4 (codes within +-INT4_MAX)
    ranks: Optional[np.ndarray] = None  # per channel, a conv writing F's int8 stream: 0 exact on every runtime
    margins: Optional[np.ndarray] = None  # ... and the smallest distance from a rounding tie (output steps)

    def real_weights(self) -> np.ndarray:
        return self.codes * self.steps.reshape((-1,) + (1,) * (self.codes.ndim - 1))


def weight_forms(graph: Graph, max_replicas: int, weights: str = "int8"):
    """Per conv/dense op: int codes (F's grid codes, or the closest int8 form of F's weights), the
    input repeats they need and the widened codes (:func:`intmath.widen`). With ``weights="packed"``
    the convs of k <= 4-bit grids that read a grid tensor keep their codes within +-7 (INT4, no input
    repeats). Returns ``{op output: WeightForm}``, computed once per export: calibration runs the graph with
    these weights and :func:`make_plan` stores them (on copies: its residual-stream decisions re-express them)."""
    forms = {}
    for op in graph.ops:
        if not ops.KINDS[op.kind].kernel:
            continue
        # Wide (repeated-input) weights only pay where the input itself is exact (the model input or a
        # k-bit grid tensor), and in dense layers, where repeating the input costs next to nothing. A
        # depthwise conv cannot repeat its input (each channel has its own filter): its codes stay within +-127.
        src = graph.tensors[op.inputs[0]]
        replicas = 1 if op.kind == "dwconv" else \
            max_replicas if (op.kind == "dense" or src.name == graph.input or src.grid is not None) else 1
        float_weights = op.real_weights()
        codes, steps, exact, note = op.codes, op.steps, op.exact_weights, op.weight_note
        packed = (weights == "packed" and op.kind == "conv" and exact and op.weight_bits <= 4 and src.grid is not None
                  and int(np.abs(codes).max(initial=0)) <= intmath.INT4_MAX)
        if not exact or int(np.abs(codes).max(initial=0)) > 127 * replicas:
            if exact:  # make_plan notes it (form_notes)
                exact = False
                note = f"grid needs codes beyond ±{127 * replicas}; re-quantized to int8 (closest)"
            codes, steps = intmath.fallback_codes(float_weights, replicas)
        used = 1 if packed else max(1, -(-int(np.abs(codes).max(initial=0)) // 127))
        codes, steps = intmath.widen(codes, steps, used, intmath.INT4_MAX if packed else 127)
        forms[op.output] = WeightForm(codes, steps, used, exact, note + ("; packed INT4" if packed else ""),
                                      float_weights, packed)
    return forms


def form_notes(graph: Graph, forms: dict) -> list:
    """A note per op whose exact grid codes were too wide for its input repeats (:func:`weight_forms`)."""
    return [f"{op.layer}: {forms[op.output].note}" for op in graph.ops
            if op.output in forms and op.exact_weights and not forms[op.output].exact]


# -- activation scales ---------------------------------------------------------------------------
@dataclasses.dataclass
class _Act:
    """The planner's working view of an activation tensor (private; frozen into TensorRecords)."""
    name: str
    shape: tuple
    grid: Optional[tuple] = None
    lo: float = 0.0
    hi: float = 0.0
    sign: bool = False
    stream_grid: Optional[tuple] = None
    int16: bool = False
    int16_like: Optional["_Act"] = None  # an int16 copy of this int8 tensor (exact: its codes times int16_gain)
    int16_gain: int = 1  # the copy's scale is the int8 tensor's / int16_gain (a power of two)
    stream_scale: Optional[float] = None  # scale of an exact residual stream (int16, or F's int8 grid)


def int8_params(tensor: _Act) -> tuple[float, int]:
    """(scale, zero_point) of an activation tensor in the int8 model."""
    if tensor.stream_scale is not None and not tensor.int16:  # F's int8 residual stream (stream_grids)
        return tensor.stream_scale, 0
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


def int16_params(tensor: _Act) -> tuple[float, int]:
    """(scale, 0) of an int16 tensor: symmetric, zero point 0 (TFLite's 16x8 kernels require it)."""
    if tensor.int16_like is not None:  # an exact copy of an int8 tensor, its codes times a power of two
        return int8_params(tensor.int16_like)[0] / tensor.int16_gain, 0
    if tensor.grid is not None:
        return int8_params(tensor)[0], 0
    if tensor.stream_scale is not None:  # an exact residual stream (stream_grids)
        return tensor.stream_scale, 0
    top = max(abs(tensor.lo), abs(tensor.hi), 1e-8) * INT16_HEADROOM
    return float(top / 32767.0), 0


def _groups(graph: Graph, members) -> list:
    """The tensors of ``members`` joined by ADD ops (operands and result of an ADD share one scale)."""
    parent = {name: name for name in graph.tensors if name in members}

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


def int8_stream_grids(graph: Graph, acts: dict, forms: dict, max_replicas: int) -> list:
    """F's int8 residual stream (``residual_stream="int8"``): every tensor F rounds to its int8 grid
    (``FixedStep``, limit 127) keeps that step as its scale (zero point 0), so each ADD has equal input
    and output scales (exact), and each conv writing the stream divides its accumulator by F's odd
    ``N`` (:func:`intmath.stream_requantization` checks every runtime and gives ranks and margins per
    channel). Off-grid producers (the image-reading stem) round once, as F does. Returns notes."""
    notes = []
    for name, tensor in acts.items():
        if tensor.stream_grid is None:
            continue
        if tensor.stream_grid[1] > 127:
            notes.append(f"{name}: F's residual stream is int16 (residual_stream='int16'); stored as int8 at a "
                         "calibrated scale (closest, not exact; export with residual_bits=16)")
            continue
        tensor.stream_scale = float(tensor.stream_grid[0])
        op = graph.producer(name)
        form = forms.get(name)
        src = graph.tensors[op.inputs[0]] if op is not None else None
        if op is None or op.kind != "conv" or form is None or op.relu or np.any(op.bias != 0) or \
                (src.grid is None and src.name != graph.input) or not form.exact:
            continue  # an ADD (exact), or a producer off the grid (rounds once, as in F)
        if src.grid is not None:
            ranks, margins = intmath.stream_requantization(form.codes.reshape(len(form.steps), -1), form.steps,
                                                           src.grid[0], tensor.stream_scale)
        else:  # the stem reads the image: wider codes (input repeats) make TFLite's rounding finer than 1/(2N)
            s_in = int8_params(acts[src.name])[0]
            base, base_steps, _ = intmath.base_codes(form.codes, form.steps)
            for replicas in range(1, min(STREAM_STEM_REPLICAS, max_replicas) + 1):
                codes, steps = intmath.widen(base, base_steps, replicas)
                ranks, margins = intmath.stream_requantization(codes.reshape(len(steps), -1), steps, s_in,
                                                               tensor.stream_scale)
                if np.all(ranks == 0):
                    break
            form.codes, form.steps, form.replicas = codes, steps, replicas
        form.ranks, form.margins = ranks, margins
        if np.any(ranks != 0):
            notes.append(f"{op.layer}: {int(np.sum(ranks != 0))} of {len(ranks)} channels of its int8 stream output "
                         "are not exact on every runtime")
    return notes


def stream_grids(graph: Graph, acts: dict, forms: dict) -> list:
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
    scale (not exact). Sets ``stream_scale`` on ``acts`` and base codes on ``forms``; returns notes."""
    notes = []
    for members in _groups(graph, {name for name, tensor in acts.items() if tensor.int16}):
        gridded, units, off_grid = [], [], []
        for name in members:
            op = graph.producer(name)
            if op is None or op.kind == "add":
                continue
            src = graph.tensors[op.inputs[0]]
            form = forms.get(op.output)
            if op.kind != "conv" or not form.exact or src.grid is None or op.relu or np.any(op.bias != 0):
                off_grid.append(op.layer.split("+")[0])  # the stem: rounded to the stream scale, once
                continue
            _, _, gcd = intmath.base_codes(form.codes, form.steps)
            gridded.append((form, gcd))
            units.append(float(np.float32(src.grid[0])) * form.steps * gcd)
        declared = {acts[n].stream_grid[0] for n in members if acts[n].stream_grid is not None}
        if not gridded:
            continue
        if off_grid and not declared:  # a float stream holding the stem: finer per-tensor scales round less
            notes.append(f"residual stream {members[0]}…: F's residual stream is float and holds the output of "
                         f"{', '.join(off_grid)} (not on a grid: a 16-bit stem, an upsampled FPN level); calibrated "
                         "int16 scales (closest, not exact; build F with residual_stream='int16' for an exact export)")
            continue
        allu = np.concatenate(units)
        if declared:  # F's own int16 grid (residual_stream="int16"): F saturates where int16 does
            u, m = min(declared), 1
            powers = np.log2(np.asarray(sorted(declared)) / u)
            exact = np.allclose(powers, np.round(powers), rtol=0, atol=1e-9)  # pot ratios: ADDs stay exact
        else:
            u, exact = float(allu.min()), True
            top = max(max(abs(acts[n].lo), abs(acts[n].hi)) for n in members) * INT16_HEADROOM
            m = int(np.floor(32767 * u / max(top, 1e-12)))
        ratios = allu / u
        if not exact or np.abs(ratios - np.round(ratios)).max() > 1e-6 or m < 1 or \
                np.round(ratios).max() * m >= STREAM_MAX_MULTIPLIER:
            notes.append(f"residual stream {members[0]}…: conv outputs share no integer grid that fits int16; "
                         "calibrated int16 scale (closest, not exact)")
            continue
        for form, gcd in gridded:  # base codes (no widening): the multiplier s_a s_w / s is then an integer
            shape = (-1,) + (1,) * (form.codes.ndim - 1)
            form.codes = form.codes // gcd.reshape(shape)
            form.steps = form.steps * gcd
        for name in members:
            tensor = acts[name]
            tensor.stream_scale = tensor.stream_grid[0] if tensor.stream_grid is not None else u / m
    return notes


def exact_pools(graph: Graph) -> dict:
    """{map tensor: pooled tensor} of the global average pools F rounds on both sides
    (:class:`~agq_keras.layers.QGlobalAveragePooling2D`: both tensors on grids), which the plan writes as
    a DEPTHWISE_CONV_2D of ones (:meth:`_Planner.pool_weights`)."""
    return {op.inputs[0]: op.output for op in graph.ops if op.kind == "mean"
            and graph.tensors[op.output].grid is not None and graph.tensors[op.inputs[0]].grid is not None}


# -- the planner ---------------------------------------------------------------------------------
def make_plan(graph: Graph, ranges: dict, *, mode: str = "int8", max_replicas: int = 259, residual_bits=None,
              head_bits: int = 8, output_bits=None, weights: str = "int8",
              description: str = "agq_keras export", forms: Optional[dict] = None) -> Plan:
    """The frozen :class:`Plan` of ``graph`` with the calibrated ``ranges`` (:func:`calibrate.calibrate`).

    ``residual_bits=16`` stores the residual stream (the operands and results of ADD that are not
    on an activation grid) as int16; 8 keeps every tensor int8 (e.g. for the Edge TPU); None (the
    default) is 8 for an F with an int8 stream (``residual_stream="int8"``: exact) and 16 otherwise.
    ``head_bits=16`` also stores the last feature map and the pooled features as int16 (16x8
    kernels, then QUANTIZE to the int8 logits): the calibrated head then rounds ~256x more finely
    and has headroom beyond the calibrated range (no Edge TPU). ``output_bits=16`` writes the logits as
    int16 (symmetric, 1.5x the calibrated range): int8 logits cannot order two classes closer than one
    output step (~1/200 of the logit range), int16 ones ~100x closer (no Edge TPU); None (the default) is 8
    for a graph with one output and 16 for several (a detector's heads, read as values by its decoding).
    ``forms``: the :func:`weight_forms` of ``graph`` for ``max_replicas`` and ``weights`` (int8 mode) that the
    calibration ran with (computed here when None); they are copied, not changed."""
    check_options(mode, residual_bits, head_bits, max_replicas, output_bits, weights)
    if output_bits is None:
        output_bits = 16 if len(graph.outputs) > 1 else 8
    missing = sorted(set(graph.tensors) - set(ranges))
    if missing:
        raise ValueError(f"The calibration ranges lack tensor(s) {missing[:5]}; calibrate the same graph.")
    if residual_bits is None:  # F's own stream: the tensors its ADDs read and write
        residual_bits = 8 if any(graph.tensors[n].stream_grid is not None and graph.tensors[n].stream_grid[1] <= 127
                                 for op in graph.ops if op.kind == "add" for n in op.inputs + [op.output]) else 16
    if forms is None:
        forms = weight_forms(graph, max_replicas, weights if mode == "int8" else "int8")
    forms = {name: dataclasses.replace(form) for name, form in forms.items()}  # stream_grids re-express them
    notes = form_notes(graph, forms)
    acts = {name: _Act(name, t.shape, t.grid, float(ranges[name][0]), float(ranges[name][1]), t.sign, t.stream_grid)
            for name, t in graph.tensors.items()}
    if mode == "int8" and output_bits == 16:
        for name in graph.outputs:
            acts[name].int16 = True
            if graph.tensors[name].stream_grid is not None:
                notes.append("output_bits=16: F rounds its logits to int8 itself; the int16 logits hold F's int8 "
                             "codes")
    if mode == "int8" and head_bits == 16 and exact_pools(graph):
        notes.append("head_bits=16: F's head is integer (QGlobalAveragePooling2D); its map and pooled features "
                     "stay on F's int8 grids")
    if mode == "int8" and head_bits == 16:
        for op in graph.ops:
            if op.kind == "mean" and op.output not in graph.outputs:
                for name in (op.inputs[0], op.output):
                    acts[name].int16 = acts[name].grid is None and name != graph.input
    if mode == "int8" and residual_bits == 16:
        for op in graph.ops:
            if op.kind == "add":
                for name in op.inputs + [op.output]:
                    tensor = acts[name]
                    tensor.int16 = tensor.grid is None and name != graph.input and name not in graph.outputs
        for op in graph.ops:  # a post-activation net's linear bottleneck: a conv output read by convs
            src = graph.tensors[op.inputs[0]]
            prod = graph.producer(src.name)
            if op.kind in ("conv", "dwconv") and src.grid is None and not src.sign and src.stream_grid is None \
                    and prod is not None and prod.kind in ("conv", "dwconv") and not prod.relu:
                acts[src.name].int16 = True
        for op in reversed(graph.ops):  # an ImageNet stem's max-pool in the stream (it keeps its input's scale):
            # the stem writes int16, as a CIFAR stem writing the stream does (int8 lost ~0.5 int8 steps there)
            src = graph.tensors[op.inputs[0]]
            if op.kind == "maxpool" and acts[op.output].int16 and src.grid is None and src.name != graph.input \
                    and not src.sign and src.stream_grid is None:
                acts[src.name].int16 = True
        for op in graph.ops:  # the head after the stream (final BatchNorm, pooling) stays int16 too
            out = acts[op.output]
            if op.kind in ("affine", "mean", "maxpool") and acts[op.inputs[0]].int16 and out.grid is None \
                    and op.output not in graph.outputs:
                out.int16 = True
        notes += stream_grids(graph, acts, forms)
    if mode == "int8" and residual_bits == 8:
        notes += int8_stream_grids(graph, acts, forms, max_replicas)
    for tensor in acts.values():  # F's other signed int8 grids (its logits): F's step, zero point 0
        if mode == "int8" and tensor.stream_grid is not None and tensor.stream_grid[1] <= 127 \
                and tensor.stream_scale is None:
            tensor.stream_scale = float(tensor.stream_grid[0])
    planner = _Planner(graph, acts, forms, mode, max_replicas)
    planner.run()
    for record in planner.layers.values():
        ranks = record.threshold_ranks
        if ranks is not None and np.any(ranks == 2):
            packed = " with packed INT4 codes (+-7)" if "packed" in record.note else ""
            notes.append(f"{record.layer}: {int(np.sum(ranks == 2))} of {len(ranks)} channels keep the closest "
                         f"thresholds (not exact){packed}")
    return Plan(graph=graph, mode=mode, description=description, tensors=tuple(planner.out.tensors),
                ops=tuple(planner.out.ops), inputs=(planner.out.index[graph.input],),
                outputs=tuple(planner.out.index[name] for name in graph.outputs), layers=planner.layers,
                stream_scales={n: a.stream_scale for n, a in acts.items() if a.stream_scale is not None},
                notes=tuple(graph.notes) + tuple(n for n in notes if n not in graph.notes))


class _Planner:
    """Walks the graph once, in order, and records every TFLite tensor and operator."""

    def __init__(self, graph: Graph, acts: dict, forms: dict, mode: str, max_replicas: int):
        self.graph, self.acts, self.forms, self.mode, self.max_replicas = graph, acts, forms, mode, max_replicas
        self.pools = exact_pools(graph) if mode == "int8" else {}
        self.layers: dict = {}
        self.out = Layout(mode)  # the TFLite tensors and operators, recorded as decided

    # -- tensors -------------------------------------------------------
    def activation(self, name: str) -> int:
        """The tensor index of activation ``name``, its type and quantization decided here."""
        if name in self.out.index:
            return self.out.index[name]
        tensor = self.acts[name]
        if self.mode == "float32":
            return self.out.activation(name, tensor.shape, "float32")
        scale, zp = (int16_params if tensor.int16 else int8_params)(tensor)
        return self.out.activation(name, tensor.shape, "int16" if tensor.int16 else "int8", scale, zp)

    def scale_of(self, name):
        tensor = self.acts[name]
        return (int16_params if tensor.int16 else int8_params)(tensor)[0]

    def typed(self, name: str, int16: bool, gain: int = 1) -> str:
        """``name`` stored as int16 (``int16=True``) or int8: the tensor itself, or a copy made by a
        QUANTIZE op (int8 -> int16 at the same scale, or at the scale divided by a power of two ``gain``,
        is exact: the codes times ``gain``; int16 -> int8 uses the tensor's calibrated int8 range)."""
        src = self.acts[name]
        if self.mode != "int8" or src.int16 == int16:
            return name
        copy = f"{name}/{'as_int16' if int16 else 'as_int8'}" + (f"x{gain}" if gain != 1 else "")
        if copy not in self.out.index:
            self.acts[copy] = _Act(copy, src.shape, lo=src.lo, hi=src.hi, int16=int16,
                                   int16_like=src if int16 else None, int16_gain=gain)
            self.out.quantize(self.activation(name), self.activation(copy))
        return copy

    def widening(self, op: Op, out: _Act) -> int:
        """The power of two by which a 16x8 conv, depthwise conv or dense op reads its int8 input (an exact
        int16 copy of it, the codes times that gain, as large as int16 holds) when it writes a calibrated
        int16 tensor (a float tensor of F: a post-activation net's linear bottleneck, 16-bit logits; not an
        exact int16 stream, whose scale divides the accumulator unit). Its int64 bias is in units of that
        finer input step, so F's folded bias is kept to ``1 / gain`` of an accumulator unit instead of half
        a unit (which put the int16 stream of keras.applications MobileNetV2's project convs off by up to
        ~900 of its steps, docs/export.md). 1: no widening (an exact output, an int16 input, float32)."""
        src = self.acts[op.inputs[0]]
        if self.mode != "int8" or not ops.KINDS[op.kind].kernel or not out.int16 or src.int16 \
                or src.sign or out.grid is not None or out.stream_scale is not None or out.sign:
            return 1
        if src.grid is not None:
            bound = src.grid[1]  # codes zp .. zp + levels
        else:
            zero_point = int8_params(src)[1]
            bound = max(abs(-128 - zero_point), abs(127 - zero_point))
        return 2 ** int(np.floor(np.log2(32767 / max(bound, 1))))

    # -- weighted ops ----------------------------------------------------
    def weights(self, op: Op, in_name: str, axis: int):
        """(weight tensor, bias tensor) indices; records the op's LayerRecord."""
        form = self.forms.get(op.output)
        real = form.float_weights if form is not None else op.real_weights()
        record = dict(layer=op.layer, kind=op.kind, output=op.output, weight_bits=op.weight_bits,
                      replicas=form.replicas if form is not None else 1,
                      exact_weights=form.exact if form is not None else op.exact_weights,
                      note=form.note if form is not None else op.weight_note,
                      float_weights=None if form is None else frozen(form.float_weights))
        if self.mode == "float32":
            self.layers[op.output] = LayerRecord(**record)
            w = self.out.const(f"{op.output}/weights", filter_layout(op.kind, real).astype(np.float32), "float32",
                               layer=op.layer.split("+")[0])
            b = self.out.const(f"{op.output}/bias", op.bias.astype(np.float32), "float32")
            return w, b
        s_in = self.scale_of(in_name)
        wide_in = self.acts[in_name].int16  # a 16x8 kernel: int64 bias and accumulator
        codes, steps = (form.codes, form.steps) if form is not None else (op.codes, op.steps)
        out = self.acts[op.output]
        grid = out.grid
        # a conv with a folded BatchNorm bias writing F's int8 stream (a post-activation net's linear
        # bottleneck, quantize(stream_bits=8)): F rounds (acc + beta) M to its signed grid, so the bias is
        # searched like a k-bit output's thresholds, over the accumulators its k-bit input can reach
        # (rounding the bias to the accumulator unit put 5-30 % of such a tensor's codes one off, measured)
        stream_out = (out.stream_scale is not None and not out.int16 and not wide_in and op.kind in ("conv", "dwconv")
                      and np.any(op.bias != 0) and self.acts[in_name].grid is not None)
        if out.sign and not wide_in:
            codes, steps, bias, gain = self._sign_weights(op, codes, steps, s_in, record)
            record["gain"] = frozen(gain)
        elif stream_out or (grid is not None and (grid[1] <= MAX_SEARCH_LEVELS or op.output in self.pools)
                            and op.kind != "dense"):
            # (the 8-bit map an exact pool reads is searched too, however many levels: one layer; TFLite's
            # double rounding otherwise put ~2 % of its codes one off, measured)
            # more input repeats allow larger codes, hence a finer accumulator unit; add repeats (up to
            # THRESHOLD_REPLICAS and max_replicas) until no channel is left closest (rank 2): repeats
            # cost size, so TFLite-only channels (rank 1) do not buy more of them, except in the layer that
            # reads the image (its repeats cost next to nothing; XNNPACK users then get F's codes there too)
            reads_image = op.inputs[0] == self.graph.input
            cap = max(record["replicas"], min(THRESHOLD_REPLICAS, self.max_replicas))
            if op.kind in ("affine", "dwconv") or (form is not None and form.packed) or op.output in self.pools \
                    or stream_out:
                cap = record["replicas"]  # packed INT4: no input repeats, codes within +-7; the head's map: a
                # large layer in large nets (ResNet-18: 2.4 M weights per repeat), where a closest channel
                # costs a code at a few accumulator values; a stream output: exact took up to 16 repeats in
                # MobileNetV2's project convs, a file 1.30x its float32 one (docs/export.md), and searching
                # them made the export several times slower (measured)
            acc_range = None
            if stream_out:
                grid = (out.stream_scale, -128, 127)
                base, _, _ = intmath.base_codes(codes, steps)
                base = base.reshape(len(steps), -1)  # the input's codes are 0..levels (F's k-bit grid)
                levels = self.acts[in_name].grid[1]
                acc_range = (np.minimum(base, 0).sum(axis=1) * levels, np.maximum(base, 0).sum(axis=1) * levels)
            best = None
            for replicas in range(record["replicas"], cap + 1):
                try:
                    found = intmath.exact_thresholds(
                        codes.reshape(len(steps), -1), steps, op.bias, s_in, grid,
                        intmath.INT4_MAX if form is not None and form.packed else 127 * replicas,
                        multiply=intmath.fixed_point_multiply_int64 if wide_in else intmath.fixed_point_multiply,
                        acc_range=acc_range)
                except ValueError as err:
                    raise ValueError(f"Layer {op.layer!r}: {err}") from None
                key = (int(np.sum(found[3] == 2)), int(np.sum(found[3] == 1)))  # closest, then TFLite-only
                if best is None or key < best[0]:
                    best = (key, replicas, found)
                if key == (0, 0) or (key[0] == 0 and not reads_image):
                    break
            _, replicas, (flat, new_steps, bias, ranks, margins, gains) = best
            record["replicas"] = replicas
            codes, steps = flat.reshape(codes.shape), new_steps
            record["threshold_ranks"], record["margins"] = frozen(ranks), frozen(margins)
            if np.any(gains != 1.0):
                record["gain"] = frozen(gains)
        else:
            if op.kind == "affine" and wide_in:
                codes, steps = intmath.affine_codes_16x8(codes, steps, s_in, self.scale_of(self._wide_out(op)))
            elif wide_in:
                steps = intmath.exact_multiplier_steps(s_in, steps, self.scale_of(self._wide_out(op)))
            bias = np.round(op.bias / (s_in * steps))
            if form is not None and form.ranks is not None:  # a conv writing F's int8 stream
                record["threshold_ranks"], record["margins"] = frozen(form.ranks), frozen(form.margins)
        self.layers[op.output] = LayerRecord(**record)
        if op.kind == "dense" and np.allclose(steps, steps[0], rtol=1e-12):
            steps = steps[:1]  # per-tensor when the grid step is uniform
        replicas = 1 if ops.KINDS[op.kind].depthwise else record["replicas"]  # a stored part's largest |code|:
        widest = -(-int(np.abs(codes).max(initial=0)) // replicas)  # ceil(max / replicas) (intmath.split_codes)
        packed = form is not None and form.packed and widest <= intmath.INT4_MAX
        w = self.out.weights(op.kind, f"{op.output}/weights", codes, replicas, "int4" if packed else "int8",
                             op.layer.split("+")[0], steps, axis)
        bias_scale = s_in * np.broadcast_to(steps, op.bias.shape)
        if np.abs(bias).max(initial=0) >= 2**31 - 1 and not wide_in:
            raise ValueError(f"Layer {op.layer!r}: its bias does not fit int32 at scale s_in*s_w; cannot export.")
        bias_type = (np.int64, "int64") if wide_in else (np.int32, "int32")
        b = self.out.const(f"{op.output}/bias", bias.astype(bias_type[0]), bias_type[1], scale=bias_scale,
                           zero_point=np.zeros(len(bias_scale), np.int64), axis=0)
        return w, b

    def pool_weights(self, op: Op, in_name: str):
        """(weight tensor, bias tensor) of a global average pool that F rounds on both sides
        (:class:`~agq_keras.layers.QGlobalAveragePooling2D`), as a VALID DEPTHWISE_CONV_2D whose filter
        covers the map: every weight the same code, step ``1/(H W)``, so the accumulator is the channel's
        sum of map codes (zero points subtracted inside it, exactly; MEAN rounds its zero-point correction
        separately). Its int32 bias and multiplier come from :func:`intmath.exact_thresholds`, like a
        conv's; the output tensor is (1, 1, C), which FULLY_CONNECTED reads flattened."""
        h, w, c = self.acts[in_name].shape
        s_in = self.scale_of(in_name)
        codes, steps, bias, ranks, margins, gains = intmath.exact_thresholds(
            np.ones((c, h * w), np.int64), np.full(c, 1.0 / (h * w)), np.zeros(c), s_in, self.acts[op.output].grid, 127)
        self.acts[op.output].shape = (1, 1, c)
        self.layers[op.output] = LayerRecord(
            layer=op.layer, kind="pool", output=op.output, weight_bits=32, replicas=1, exact_weights=True,
            note="global average pool as a depthwise conv of ones", float_weights=None,
            gain=frozen(gains) if np.any(gains != 1.0) else None, threshold_ranks=frozen(ranks),
            margins=frozen(margins))
        weight = self.out.weights("dwconv", f"{op.output}/weights", codes.reshape(c, h, w, 1), 1, "int8", None, steps,
                                  axis=3)  # (1, H, W, C): one whole-map filter per channel
        b = self.out.const(f"{op.output}/bias", bias.astype(np.int32), "int32", scale=s_in * steps,
                           zero_point=np.zeros(c, np.int64), axis=0)
        return weight, b

    def _sign_weights(self, op: Op, codes, steps, s_in: float, record: dict):
        """:func:`intmath.sign_weights`, with the input repeats its doubled codes need."""
        base, _, _ = intmath.base_codes(codes, steps)
        limit = 1 if op.kind == "affine" else 2 * self.max_replicas
        replicas = max(record["replicas"], -(-2 * int(np.abs(base).max(initial=0)) // 127))
        if replicas > limit:
            raise ValueError(f"Layer {op.layer!r}: its codes are too wide for an exact sign() output "
                             f"(needs {replicas} input repeats, allowed {limit}); export with a larger max_replicas.")
        record["replicas"] = replicas
        return intmath.sign_weights(codes, steps, op.bias, s_in)

    def _wide_out(self, op: Op) -> str:
        tmp = f"{op.output}/i16"
        return tmp if tmp in self.acts and not self.acts[op.output].int16 else op.output

    def emit(self, op: Op):
        kind = ops.KINDS[op.kind]
        out_name = op.output
        out = self.acts[out_name]
        # The input type: an affine (BatchNorm), dense or pass-through op reads its input as stored, and so does a
        # conv reading the int16 stream (a post-activation net's linear bottleneck: its 16x8 kernel then writes
        # int16, and QUANTIZE its int8 output); every other op reads its input in its output's type (int16 in
        # and out: the 16x8 kernels; int8 in and out).
        as_stored = kind.reads_as_stored or (kind.kernel and self.acts[op.inputs[0]].int16)
        gain = self.widening(op, out)
        in_name = op.inputs[0] if as_stored and gain == 1 else self.typed(op.inputs[0], out.int16, gain)
        if kind.keeps_scale:  # PAD, RESIZE, RESHAPE and MAX_POOL_2D write their input's scale and zero point
            # (PAD's padding is the zero point; none of their kernels requantizes: a max-pool whose output had its
            # own calibrated int16 scale, an ImageNet stem's pool in a float stream, was wrong)
            out = self.acts[out_name] = dataclasses.replace(self.acts[in_name], name=out_name, shape=out.shape)
        if op.kind == "dense" and out.int16 and not self.acts[in_name].int16:
            # int16 logits come from the 16x8 kernel: an int8-input FULLY_CONNECTED with an int16 output
            # returned wrong values (measured); QUANTIZE int8 -> int16 at the same scale is exact
            in_name = self.typed(in_name, True)
        widened = as_stored and self.acts[in_name].int16 and not out.int16
        if widened:  # a 16x8 kernel writes int16; QUANTIZE brings it to the int8 output
            tmp = f"{out_name}/i16"
            self.acts[tmp] = _Act(tmp, out.shape, lo=out.lo, hi=out.hi, int16=True,
                                  int16_like=out if out.grid is not None else None)
        if op.kind == "mean" and op.inputs[0] in self.pools:  # F rounds both sides: a whole-map depthwise conv
            kind, params = ops.POOL_AS_DWCONV, self.pool_weights(op, in_name)
        else:
            params = self.weights(op, in_name, axis=3 if kind.depthwise else 0) if kind.weighted else ()
        x = self.activation(in_name)
        if kind.weighted and not kind.depthwise:  # a conv or dense: its input repeated for wide codes
            x = self.out.repeat(x, in_name, self.layers[out_name].replicas)
        grid = out.grid
        rounding = self.mode == "float32" and grid is not None and not kind.pass_through
        y_name = f"{out_name}/preround" if rounding else (f"{out_name}/i16" if widened else out_name)
        if rounding:
            self.acts[y_name] = _Act(y_name, out.shape)
        y = self.activation(y_name)
        act = ("RELU" if op.relu_cap is None else "RELU6") if op.relu else "NONE"
        if out.sign and self.mode == "int8":
            act = "RELU_N1_TO_1"
        inputs = [x, *params]
        if kind.binary:
            inputs.append(self.activation(self.typed(op.inputs[1], out.int16)))
        self.out.emit(kind, op, inputs, y, out.shape, act)
        if rounding:
            self.out.float_rounding(y, out_name, grid)
        if widened:
            self.out.quantize(y, self.activation(out_name))

    def run(self):
        self.activation(self.graph.input)
        for op in self.graph.ops:
            self.emit(op)
