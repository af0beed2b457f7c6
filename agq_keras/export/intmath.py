"""Integer arithmetic of the export: multipliers, the runtimes' requantization, threshold search.

Every function here is pure NumPy on small arrays, so it is unit-tested in milliseconds against an
exact (``fractions.Fraction``) reference (tests/test_export_intmath.py). Nothing here knows Keras or
the flatbuffer.

Requantization, the step that turns an int32 accumulator ``acc`` into an output code, differs by
runtime:

* TFLite's reference and optimized kernels (and TensorFlow Lite Micro):
  ``MultiplyByQuantizedMultiplier(acc, M0, shift)`` (:func:`fixed_point_multiply`), a 31-bit
  fixed-point multiplier with two roundings, ties away from zero; the 16x8 kernels use a 15-bit
  multiplier on an int64 accumulator (:func:`fixed_point_multiply_int64`).
* XNNPACK: ``lrintf(float(acc) * float(s_in * s_w / s_out))`` in float32, ties to even
  (:func:`xnnpack_requantize`).

They agree on every accumulator value whose real output ``(acc + B) * M`` (in output steps) is not
close to a half integer. :func:`exact_thresholds` picks biases (and code multipliers) so that every
achievable accumulator (except F's own float32 ties) stays at least :data:`MIN_MARGIN` output steps
away from every rounding boundary, and reports the smallest distance per channel (its ``margins``).
"""

from __future__ import annotations

import math

import numpy as np

# Output steps between an accumulator's exact value (acc + B)·M and the kernel's rounding tie that make
# every runtime round alike ("rank 0"): XNNPACK converts acc exactly (|acc| < 2^24), takes its scale
# as a float32 product/quotient of the stored scales (<= 3 roundings) and rounds one float32 product:
# relative error <= 2.4e-7, i.e. <= 3.7e-6 output steps at the top of a 15-level grid.
MIN_MARGIN = 1e-5
# F's own float32 conv + BatchNorm decide values closer than this to a tie either way (an "F tie"):
# such accumulators may round to either neighbour and do not constrain the bias.
F_TIE = 1e-5
SCALE_CANDIDATES = 4096


# -- multipliers and requantization ------------------------------------------------------------
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


def reduced_multiplier(m0: int) -> int:
    """The 15-bit multiplier TFLite's 16x8 kernels keep of a 31-bit ``M0`` (rounded, saturating)."""
    return (m0 + (1 << 15)) >> 16 if m0 < 0x7FFF0000 else 0x7FFF


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


# the largest left shift of a multiplier a 16x8 kernel applies: it rounds at bit 15 - shift, which must be >= 1
INT64_MAX_SHIFT = 14


def fixed_point_multiply_int64(x: np.ndarray, m0: int, shift: int) -> np.ndarray:
    """TFLite's reference MultiplyByQuantizedMultiplier for an int64 accumulator (the 16x8 kernels):
    the multiplier is reduced to 15 bits and the product rounded once (half up). ``shift`` at most
    :data:`INT64_MAX_SHIFT` (a multiplier below 2^14)."""
    if shift > INT64_MAX_SHIFT:
        raise ValueError(f"a 16x8 kernel's output multiplier 2^{shift - 1} or more is out of its range "
                         f"(below 2^{INT64_MAX_SHIFT}).")
    reduced = reduced_multiplier(m0)
    total_shift = 15 - shift
    return (x.astype(np.int64) * reduced + (1 << (total_shift - 1))) >> total_shift


def beyond_16x8(multiply, shift: int) -> bool:
    """Whether ``multiply`` is the 16x8 kernels' (:func:`fixed_point_multiply_int64`) and cannot apply a
    multiplier of exponent ``shift``."""
    return multiply is fixed_point_multiply_int64 and shift > INT64_MAX_SHIFT


def xnnpack_requantize(acc: np.ndarray, scale: float) -> np.ndarray:
    """XNNPACK's fp32 requantization: ``lrintf(float(acc) * float32(scale))`` (ties to even)."""
    product = np.asarray(acc, np.int64).astype(np.float32) * np.float32(scale)
    return np.rint(product).astype(np.int64)


def runtime_scale(s_in: float, s_w: float, s_out: float) -> float:
    """The output multiplier a runtime derives from the stored float32 scales (in double, as TFLite)."""
    return float(np.float32(s_in)) * float(np.float32(s_w)) / float(np.float32(s_out))


# -- weight codes ------------------------------------------------------------------------------
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


INT4_MAX = 7  # packed INT4 weights: symmetric codes -7..7


def widen(codes: np.ndarray, steps: np.ndarray, replicas: int, limit: int = 127):
    """Multiply each channel's codes by the largest integer m keeping |code| <= limit * replicas
    (and divide its step by m): same real weights, same grid ratios, but an m-times finer
    int32 accumulator unit s_in * s_w, so the int32 bias is rounded m times more finely."""
    top = np.abs(codes.reshape(codes.shape[0], -1)).max(axis=1)
    m = np.where(top > 0, (limit * replicas) // np.maximum(top, 1), 1)
    return codes * m.reshape((-1,) + (1,) * (codes.ndim - 1)), steps / m


def split_codes(codes: np.ndarray, replicas: int) -> np.ndarray:
    """Split integer codes with |code| <= 127 r into r int8 parts along the last
    (input) axis: ``sum_k parts[..., k*I + j] == codes[..., j]``."""
    if replicas == 1:
        return codes
    mag, sign = np.abs(codes), np.sign(codes)
    base, rest = mag // replicas, mag % replicas
    parts = [sign * (base + (k < rest)) for k in range(replicas)]
    return np.concatenate(parts, axis=-1)


def base_codes(codes: np.ndarray, steps: np.ndarray):
    """Per output channel, the codes divided by their gcd (and the steps multiplied by it)."""
    flat = codes.reshape(len(steps), -1).astype(np.int64)
    gcd = np.maximum(np.gcd.reduce(np.abs(flat), axis=1), 1)
    return (flat // gcd[:, None]).reshape(codes.shape), steps * gcd, gcd


# -- exact outputs -------------------------------------------------------------------------------
def tie_distance(points: np.ndarray, mult: float) -> np.ndarray:
    """Distance (in output steps) of ``points * mult`` from the nearest half integer."""
    return np.abs(points * mult - np.round(points * mult - 0.5) - 0.5)


def exact_thresholds(codes, steps, bias, s_in, grid, limit, multiply=None, acc_range=None):
    """Per output channel, choose the code multiplier m and the int32 bias B so that the int8
    output equals F's ``round(clip(real, 0, levels))`` for every accumulator value, on every runtime.

    ``grid`` is ``(step, levels)`` (F's unsigned k-bit output: codes 0..levels) or ``(step, lo, hi)`` (a
    signed grid F rounds to, codes lo..hi: a linear tensor of F's int8 stream written by a conv with a
    folded BatchNorm bias). ``acc_range``, per channel ``(lo, hi)`` in base-code accumulator units (the
    codes divided by their gcd), bounds the accumulators the layer's inputs can reach: thresholds beyond
    it do not constrain B (with 255 levels most are out of reach). None: every threshold counts.

    The real pre-activation in output steps is ``(acc + beta) * M`` with ``M = s_in s_w / s_out``
    and a real ``beta = bias / (s_in s_w)``; int8 stores an integer B, and a runtime rounds
    ``(acc + B) * M``: TFLite with its fixed-point multiplier (two roundings: off by up to
    ``2^-(right shift + 1)`` output steps near a tie), XNNPACK in float32. The accumulator only
    takes multiples of m (every code is m times a base code), so it suffices to look at the two
    multiples of m around each of F's ``levels`` thresholds ``(j + 1/2) / M - beta``. Those whose
    F value lies within :data:`F_TIE` of the tie are F's own float32 ties: either code is F's, so they
    do not bound B, but among the biases of a rank the search prefers one that gives them the code of
    F's exact value under both TFLite's fixed point and XNNPACK's float32 (a frequent accumulator then
    does not split the runtimes).

    For each m (largest first: the finest bias), B is chosen in the middle of the integers that
    keep every other checked point at least :data:`MIN_MARGIN` output steps on F's side of the
    kernel's rounding boundary, and accepted when TFLite's fixed point (emulated exactly) and
    XNNPACK's float32 (emulated) give F's codes there: rank 0, exact on every runtime. Else
    ``floor``/``ceil(beta)`` exact under TFLite's fixed point alone (rank 1), else the largest m
    with B = round(beta) (rank 2, closest).

    When no integer B does it, the stored weight step (hence the multiplier) is also scaled by a gain
    within 1 ± 0.25 (:func:`_gain_candidates`): only the thresholds matter for a ReLU + k-bit output,
    so the codes stay F's; the stored weights are then F's times that positive gain.

    Returns ``(codes, steps, bias, ranks, margins, gains)``; per channel the rank, the smallest
    distance (output steps) of a checked accumulator's exact value ``(acc + B) * M`` from the kernel's
    tie (F ties left out), and the gain (stored step / F's step; 1 when unscaled).
    """
    multiply = multiply or fixed_point_multiply
    step_out, lo, levels = grid if len(grid) == 3 else (grid[0], 0, grid[1])
    s_in32, s_out32 = float(np.float32(s_in)), float(np.float32(step_out))
    codes = codes.copy()
    steps = steps.astype(np.float64).copy()
    out_bias = np.zeros(len(steps))
    half = np.arange(lo, levels) + 0.5
    n = len(half)
    ranks, margins, gains = [], [], []
    for c in range(len(steps)):
        row = codes[c].astype(np.int64)
        g = int(np.gcd.reduce(np.abs(row.ravel()))) or 1
        base, base_step = row // g, steps[c] * g
        top = int(np.abs(base).max(initial=0)) or 1
        best = None
        for m in range(limit // top, 0, -1):
            s_w = float(np.float32(base_step / m))  # F's weight per code unit
            mult = s_in32 * s_w / s_out32
            beta = bias[c] / (s_in32 * s_w)
            t = half / mult - beta
            # every weight code is a multiple of m, so the accumulator only takes multiples of m
            below, above = m * (np.ceil(t / m) - 1), m * np.ceil(t / m)
            acc = np.concatenate([below, above])
            real = np.clip(np.floor((acc + beta) * mult + 0.5), lo, levels)
            firm = tie_distance(acc + beta, mult) >= F_TIE  # not an F tie
            reach = np.ones(len(acc), bool) if acc_range is None else \
                (acc >= m * acc_range[0][c]) & (acc <= m * acc_range[1][c])
            firm &= reach  # out of reach: no constraint

            def judge(stored, b_int):
                """(rank, F ties missed, margin) of storing weight step ``stored`` and int32 bias ``b_int``,
                or None. F ties missed: F-tie points where TFLite's fixed point or XNNPACK's float32 does
                not give the code of F's exact value (F's float32 rounds an F tie either way, but a
                frequent accumulator must at least not split the runtimes, and the exact side is F's
                most likely one; measured: a 2-bit layer whose F tie TFLite's double rounding flipped
                cost 1.7 % agreement under TFLite's kernels while XNNPACK agreed on 100 %)."""
                kernel = s_in32 * float(np.float32(stored)) / s_out32
                m0, shift = quantize_multiplier(kernel)
                if beyond_16x8(multiply, shift):
                    return None  # a 16x8 kernel cannot apply this multiplier (a larger code multiple m gives a smaller one)
                fixed = np.clip(multiply(acc + b_int, m0, shift), lo, levels)
                if not np.array_equal(fixed[firm], real[firm]):
                    return None
                margin = float(tie_distance(acc + b_int, kernel)[firm].min(initial=0.5))
                floats = np.clip(xnnpack_requantize(acc + b_int, kernel), lo, levels)
                missed = int(np.sum(((fixed != real) | (floats != real)) & ~firm & reach))
                return (0 if margin >= MIN_MARGIN and np.array_equal(floats[firm], real[firm]) else 1), missed, margin

            # integers B keeping every firm point MIN_MARGIN on F's side of the kernel's boundary
            # (a side without firm points is bounded by one lattice step around beta); with F ties, the
            # integers next to the middle too, so that one may also put the F ties on their exact side
            b_hi = np.floor(np.min(((half - MIN_MARGIN) / mult - below)[firm[:n]], initial=np.floor(beta) + m))
            b_lo = np.ceil(np.max(((half + MIN_MARGIN) / mult - above)[firm[n:]], initial=np.ceil(beta) - m))
            mid = np.floor((b_lo + b_hi) / 2)
            near = [mid + d for d in ((0, -1, 1, -2, 2, -3, 3) if not firm.all() else (0,)) if b_lo <= mid + d <= b_hi]
            candidates = [(s_w, b) for b in near + [np.floor(beta), np.ceil(beta)]]
            if lo == 0:  # a gain moves threshold j by ~j/M: only a few-level unsigned grid can absorb it
                candidates += list(_gain_candidates(half, below, above, firm, mult, beta, m, s_w))
            for stored, b_int in candidates:
                verdict = judge(stored, b_int)
                if verdict is not None and (best is None or verdict[:2] < best[0][:2]):
                    best = (verdict, m, b_int, float(np.float32(stored)), s_w)
                if best is not None and best[0][:2] == (0, 0):
                    break
            if best is not None and best[0][:2] == (0, 0):
                break
        if best is None:
            m = limit // top
            s_w = float(np.float32(base_step / m))
            if beyond_16x8(multiply, quantize_multiplier(s_in32 * s_w / s_out32)[1]):
                raise ValueError(f"output channel {c}: the multiplier s_in * s_w / s_out = {s_in32 * s_w / s_out32:.4g} "
                                 f"(input step {s_in32:.4g}, weight step {s_w:.4g}, output step {s_out32:.4g}) is "
                                 f"beyond TFLite's 16x8 kernels (below 2^{INT64_MAX_SHIFT}); is the output "
                                 "quantizer's range trained?")
            best = ((2, 0, 0.0), m, np.round(bias[c] / (s_in32 * s_w)), s_w, s_w)
        (rank, _, margin), m, b_int, stored, s_w = best
        codes[c] = base * m
        steps[c] = stored
        out_bias[c] = b_int
        ranks.append(rank)
        margins.append(margin)
        gains.append(stored / s_w)
    return codes, steps, out_bias, np.asarray(ranks), np.asarray(margins), np.asarray(gains)


def stream_requantization(codes, steps, s_in, s_out, lo=-128, hi=127, multiply=None):
    """Per output channel of a bias-free conv that writes an integer stream (``residual_stream="int8"``):
    is the int8 output F's ``clip(floor(acc_b r + 1/2), lo, hi)`` on every runtime?

    ``codes`` (channels first) are the stored codes, ``m`` times F's base codes per channel (the gcd;
    :func:`widen`), so the accumulator is ``m acc_b``; ``r = s_in s_b / s_out`` is F's ratio of its
    base accumulator unit to the output step (``1 / N`` for the int8 stream: ``N`` odd, so F never
    ties). Both runtimes are monotone in the accumulator, so it suffices to check the two multiples of
    ``m`` around each of F's rounding boundaries ``(j + 1/2) / r``; points within :data:`F_TIE` of
    F's own tie do not count. A wider ``m`` is what makes TFLite's double rounding (off by up to
    ``2^-(right shift + 1)`` steps) small next to ``1 / 2N``.

    Returns ``(ranks, margins)``: rank 0 when TFLite's fixed point (emulated exactly) and XNNPACK's
    float32 both give F's codes with every checked point at least :data:`MIN_MARGIN` output steps
    from the kernel's tie, 1 when TFLite alone does, 2 otherwise; the margin is that smallest distance.
    """
    multiply = multiply or fixed_point_multiply
    s_in32, s_out32 = float(np.float32(s_in)), float(np.float32(s_out))
    half = np.arange(lo, hi) + 0.5
    ranks, margins = [], []
    for c in range(len(steps)):
        row = np.asarray(codes[c], np.int64).ravel()
        m = int(np.gcd.reduce(np.abs(row))) or 1
        r = s_in32 * float(steps[c]) * m / s_out32  # F: output steps per base accumulator unit
        kernel = runtime_scale(s_in, float(steps[c]), s_out)
        t = half / r
        acc_b = np.concatenate([np.ceil(t) - 1, np.ceil(t)])
        real = np.clip(np.floor(acc_b * r + 0.5), lo, hi)
        firm = tie_distance(acc_b, r) >= F_TIE
        acc = acc_b * m
        m0, shift = quantize_multiplier(kernel)
        fixed = np.clip(multiply(acc, m0, shift), lo, hi)
        floats = np.clip(xnnpack_requantize(acc, kernel), lo, hi)
        margin = float(tie_distance(acc, kernel)[firm].min(initial=0.5))
        tflite_ok = np.array_equal(fixed[firm], real[firm])
        rank = 2 if not tflite_ok else (0 if margin >= MIN_MARGIN and np.array_equal(floats[firm], real[firm]) else 1)
        ranks.append(rank)
        margins.append(margin)
    return np.asarray(ranks), np.asarray(margins)


def _gain_candidates(half, below, above, firm, mult, beta, m, s_w, max_gain=0.25):
    """(stored weight step, int32 bias) pairs that move the kernel's boundaries into F's gaps by also
    scaling the stored weight step (the output multiplier) by a gain within 1 +- ``max_gain``.

    With multiplier M' and bias B the kernel's boundary j sits at ``(j + 1/2)/M' - B``; it must stay
    above the lattice point below F's threshold and below the one above it, MIN_MARGIN output steps
    clear: ``(below_j + B) M' <= j + 1/2 - MIN_MARGIN`` and ``(above_j + B) M' >= j + 1/2 + MIN_MARGIN``.
    For each integer B near beta this is an interval of M'; its middle is the candidate. Ordered by
    the interval's relative width (the widest first)."""
    n = len(half)
    b = np.arange(np.floor(beta) - 2 * m, np.ceil(beta) + 2 * m + 1)  # every candidate B at once
    lo_pts, hi_pts = above[firm[n:]][None] + b[:, None], below[firm[:n]][None] + b[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = np.max(np.where(lo_pts > 0, (half[firm[n:]] + MIN_MARGIN) / lo_pts, -np.inf), axis=1,
                    initial=mult * (1 - max_gain))
        hi = np.min(np.where(hi_pts > 0, (half[firm[:n]] - MIN_MARGIN) / hi_pts, np.inf), axis=1,
                    initial=mult * (1 + max_gain))
    lo, hi = np.maximum(lo, mult * (1 - max_gain)), np.minimum(hi, mult * (1 + max_gain))
    ok = np.flatnonzero(~np.any(lo_pts <= 0, axis=1) & (lo < hi))
    width = (hi[ok] - lo[ok]) / (hi[ok] + lo[ok])
    best = ok[np.argsort(-width, kind="stable")[:4]]  # the widest first; ties keep the order of B
    return [((lo[i] + hi[i]) / 2 / mult * s_w, b[i]) for i in best]


def sign_weights(codes: np.ndarray, steps: np.ndarray, bias: np.ndarray, s_in: float):
    """Codes, stored steps, int32 bias and gain of an op whose output feeds sign() (exact for every input).

    With base codes doubled, the accumulator ``acc`` only takes even values; F outputs +1 iff
    ``acc >= -beta`` (beta: the real bias in accumulator units), i.e. iff ``acc >= a``, ``a`` the
    smallest even number ``>= -beta``. The int32 bias ``B = 1 - a`` makes ``acc + B`` odd, so
    never 0, and positive exactly when ``acc >= a``; stored steps ``2 / s_in`` make the output
    multiplier 2, so ``|acc + B| >= 1`` always saturates the RELU_N1_TO_1 clamp at codes 125/127
    (-1/+1). The real weights are scaled by a positive per-channel ``gain`` (stored / F's), which
    does not change a sign (the grid check divides it out)."""
    base, base_steps, _ = base_codes(codes, steps)
    beta = bias / (s_in * base_steps / 2)
    first_positive = 2 * np.ceil(-beta / 2)
    stored = np.full(len(base_steps), float(np.float32(2.0 / s_in)))
    return base * 2, stored, 1 - first_positive, stored / (base_steps / 2)


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


def affine_codes_16x8(codes, steps, s_in, s_out):
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
            err = abs(reduced_multiplier(m0) * 65536 - m0) / m0
            if best is None or err < best[0]:
                best = (err, c, s_w)
        codes[ch] = int(np.sign(codes[ch])) * best[1]
        steps[ch] = best[2]
    return codes, steps
