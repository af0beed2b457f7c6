"""The export's integer arithmetic (agq_keras/export/intmath.py) against slow exact references:
Python integers transcribing TFLite's reference kernels, and ``fractions.Fraction`` for the real
values F computes. Milliseconds each; no Keras, no LiteRT."""

from fractions import Fraction

import numpy as np
import pytest

from agq_keras.export import intmath


# -- slow references ------------------------------------------------------------------------------
def tflite_multiply_reference(x: int, m0: int, shift: int) -> int:
    """TFLite's MultiplyByQuantizedMultiplier, transcribed with Python integers (C semantics)."""
    left, right = max(shift, 0), max(-shift, 0)
    a = x * (1 << left)
    ab = a * m0
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    total = ab + nudge
    high = abs(total) // (1 << 31) * (1 if total >= 0 else -1)  # C division truncates toward zero
    mask = (1 << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if remainder > threshold else 0)


def round_half_up(v: Fraction) -> int:
    return int((v + Fraction(1, 2)).__floor__())


def tie_distance(v: Fraction) -> float:
    """Distance of v from the nearest half integer."""
    return float(abs(v - (v - Fraction(1, 2)).__round__() - Fraction(1, 2)))


# -- multipliers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [1e-6, 3.7e-4, 0.0123, 0.5, 0.999999, 1.0, 1.5, 7.25, 1234.5])
def test_quantize_multiplier_is_tflites_normalized_form(m):
    m0, shift = intmath.quantize_multiplier(m)
    assert 1 << 30 <= m0 < 1 << 31
    assert abs(Fraction(m0) * Fraction(2) ** (shift - 31) - Fraction(m)) <= Fraction(m) * Fraction(1, 2**31)


def test_fixed_point_multiply_equals_the_integer_transcription():
    rng = np.random.default_rng(0)
    for _ in range(40):
        m = float(10 ** rng.uniform(-6, 1.5))
        m0, shift = intmath.quantize_multiplier(m)
        x = rng.integers(-2**24, 2**24, 300)
        got = intmath.fixed_point_multiply(x, m0, shift)
        want = [tflite_multiply_reference(int(v), m0, shift) for v in x]
        assert got.tolist() == want


def test_requantization_rounds_like_exact_arithmetic_away_from_ties():
    """Both runtimes' requantization equals round(x * M) for exact M away from half integers: XNNPACK's
    float32 beyond 1e-5 output steps; TFLite's fixed point only beyond 2^-(right shift + 1) output steps,
    because it rounds twice (x * M0 to an integer at 2^-right resolution, then the shift): at M ~ 1e-3
    (right shift 9) a value up to 1/1024 output steps from a tie can round the other way."""
    rng = np.random.default_rng(1)
    for _ in range(40):
        m = float(10 ** rng.uniform(-5, -1))
        m0, shift = intmath.quantize_multiplier(m)
        exact_m = Fraction(m0) * Fraction(2) ** (shift - 31)
        x = rng.integers(-int(300 / m), int(300 / m), 300)  # outputs within +-300 steps (int8/int16 codes)
        fixed = intmath.fixed_point_multiply(x, m0, shift)
        xnn = intmath.xnnpack_requantize(x, float(exact_m))
        for v, a, b in zip(x.tolist(), fixed.tolist(), xnn.tolist()):
            real = v * exact_m
            if tie_distance(real) > 1e-5 + 1e-7 * abs(real):
                assert b == round_half_up(real), (v, m)
            if tie_distance(real) > 2.0 ** (shift - 1):
                assert a == round_half_up(real), (v, m)


def test_the_16x8_multiplier_keeps_15_bits():
    m0, shift = intmath.quantize_multiplier(0.3)
    reduced = intmath.reduced_multiplier(m0)
    assert 1 << 14 <= reduced < 1 << 15 and abs(reduced / 2**15 * 2.0**shift - 0.3) < 2**-15
    x = np.arange(-5000, 5000, 37)
    got = intmath.fixed_point_multiply_int64(x, m0, shift)
    real = [Fraction(int(v) * reduced, 2 ** (15 - shift)) for v in x]
    assert got.tolist() == [round_half_up(r) for r in real]


# -- codes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("replicas", [1, 3, 16])
def test_split_codes_sum_back_within_int8(replicas):
    codes = np.random.default_rng(2).integers(-127 * replicas, 127 * replicas + 1, (5, 3, 3, 4))
    parts = intmath.split_codes(codes, replicas)
    assert np.abs(parts).max() <= 127 and parts.shape == (5, 3, 3, 4 * replicas)
    assert np.array_equal(parts.reshape(5, 3, 3, replicas, 4).sum(axis=3), codes)


def test_widen_keeps_real_weights_and_fills_the_code_range():
    codes = np.array([[1, -3, 3], [0, 0, 0], [2, 1, -1]])
    steps = np.array([0.5, 1.0, 0.25])
    wide, wsteps = intmath.widen(codes, steps, replicas=2)
    assert np.allclose(wide * wsteps[:, None], codes * steps[:, None])
    assert np.abs(wide).max(axis=1).tolist() == [252, 0, 254]


def test_fallback_codes_are_never_worse_than_max_over_127():
    w = np.random.default_rng(3).normal(0, 1, (8, 27))
    codes, steps = intmath.fallback_codes(w)
    plain = np.abs(w).max(axis=1, keepdims=True) / 127
    assert np.abs(codes).max() <= 127
    ours = np.abs(codes * steps[:, None] - w).sum(axis=1)
    assert np.all(ours <= np.abs(np.round(w / plain) * plain - w).sum(axis=1) + 1e-12)


# -- exact thresholds -----------------------------------------------------------------------------
def _random_channels(rng, channels=6, fan_in=9, levels=3):
    base = rng.choice([-3, -1, 1, 3], (channels, fan_in))  # 2-bit DoReFa codes (step 1/3, times BN gain)
    steps = rng.uniform(0.05, 2.0, channels) / 3
    bias = rng.normal(0, 1.0, channels)
    s_in, s_out = 1 / levels, float(rng.uniform(0.1, 0.6))
    return base, steps, bias, s_in, (s_out, levels)


@pytest.mark.parametrize("seed,limit", [(s, 127 * 4) for s in range(6)] + [(s, intmath.INT4_MAX) for s in range(6)])
def test_exact_thresholds_reproduce_f_for_every_accumulator(seed, limit):
    """For every accumulator value, TFLite's fixed point on the chosen (codes, bias) gives F's code,
    round(clip(real, 0, levels)) in exact arithmetic; on channels of rank 0 XNNPACK's float32
    requantization does too, and every value is at least MIN_MARGIN output steps from a tie. The kernel
    runs with the stored steps (F's times the channel's gain)."""
    rng = np.random.default_rng(seed)
    base, steps, bias, s_in, grid = _random_channels(rng)
    codes, new_steps, int_bias, ranks, margins, gains = intmath.exact_thresholds(base, steps, bias, s_in, grid,
                                                                                 limit)
    s_out, levels = grid
    assert np.all(ranks < 2) or limit == intmath.INT4_MAX  # with 4 input repeats every channel is exact here
    assert np.abs(codes).max() <= limit
    assert np.all((gains >= 0.75) & (gains <= 1.25))
    span = int(np.abs(base).sum(axis=1).max()) * 3  # |acc| in base units, inputs 0..3
    for c in range(len(steps)):
        m = int(codes[c, np.nonzero(codes[c])[0][0]] // base[c, np.nonzero(base[c])[0][0]])
        assert np.array_equal(codes[c], base[c] * m)
        mult = intmath.runtime_scale(s_in, new_steps[c], s_out)
        m0, shift = intmath.quantize_multiplier(mult)
        acc = np.arange(-span, span + 1) * m
        fixed = np.clip(intmath.fixed_point_multiply(acc + int(int_bias[c]), m0, shift), 0, levels)
        xnn = np.clip(intmath.xnnpack_requantize(acc + int(int_bias[c]), mult), 0, levels)
        worst = np.inf
        for a, got, got_x in zip(range(-span, span + 1), fixed.tolist(), xnn.tolist()):
            real = (Fraction(a) * Fraction(steps[c]) * Fraction(s_in) + Fraction(bias[c])) / Fraction(s_out)
            want = min(max(round_half_up(real), 0), levels)
            if 0 <= real <= levels:
                worst = min(worst, tie_distance(real))
            if tie_distance(real) < 1e-6 or ranks[c] == 2:
                continue  # F's own float32 arithmetic decides a tie either way; rank 2 is the closest
            assert got == want, (c, a, float(real))
            if ranks[c] == 0:
                assert got_x == want, (c, a, float(real))
        if ranks[c] == 0:
            assert worst >= intmath.MIN_MARGIN - 1e-6 or worst == np.inf
        assert margins[c] >= (intmath.MIN_MARGIN if ranks[c] == 0 else 0)


def test_sign_weights_give_fs_sign_for_every_accumulator():
    rng = np.random.default_rng(7)
    base = rng.choice([-1, 1], (5, 12))
    steps, bias, s_in = rng.uniform(0.1, 1.0, 5), rng.normal(0, 2.0, 5), 1.0
    codes, stored, int_bias, gain = intmath.sign_weights(base, steps, bias, s_in)
    assert np.array_equal(codes, base * 2) and np.all(gain > 0)
    for c in range(5):
        for a in range(-12, 13):  # sum of +-1 inputs times +-1 codes
            real = Fraction(a) * Fraction(steps[c]) + Fraction(bias[c])
            acc = 2 * a + int(int_bias[c])
            assert acc != 0 and (acc > 0) == (real >= 0), (c, a)


@pytest.mark.parametrize("divisor", [1, 3, 5, 7])
def test_stream_requantization_divides_exactly_on_every_runtime(divisor):
    """A conv writing F's int8 stream: base codes (2-bit DoReFa: odd, |c| <= 3) widened to +-126, input
    step 1/3, output step N u (u = 1/9 the base accumulator unit). Every achievable accumulator gives F's
    clip(floor(a / N + 1/2), -128, 127) under TFLite's fixed point and XNNPACK's float32 (brute force),
    and the margin is the odd N's 1 / (2N) output steps."""
    rng = np.random.default_rng(divisor)
    base = rng.choice([-3, -1, 1, 3], (4, 27))
    codes, steps = intmath.widen(base, np.full(4, 1.0 / 3), 1)
    s_in, s_out = 1.0 / 3, divisor / 9.0
    ranks, margins = intmath.stream_requantization(codes, steps, s_in, s_out)
    assert ranks.tolist() == [0] * 4
    np.testing.assert_allclose(margins, 1 / (2 * divisor), atol=1e-4)  # float32 scales: ~1e-5 steps at 127
    for c in range(4):
        top = 3 * int(np.abs(base[c]).sum())  # input codes 0..3
        acc_b = np.arange(-top, top + 1)
        want = np.clip(np.floor(acc_b / divisor + 0.5), -128, 127)
        kernel = intmath.runtime_scale(s_in, steps[c], s_out)
        m0, shift = intmath.quantize_multiplier(kernel)
        acc = acc_b * (codes[c, 0] // base[c, 0])
        assert np.array_equal(np.clip(intmath.fixed_point_multiply(acc, m0, shift), -128, 127), want)
        assert np.array_equal(np.clip(intmath.xnnpack_requantize(acc, kernel), -128, 127), want)


def test_stream_requantization_finds_tflites_double_rounding():
    """Unwidened codes (m = 1) and N = 3: TFLite's multiplier 2/3 * 2^-1 rounds acc = 1 to 1 in its first
    rounding and then 0.5 up to 1, where F has round(1/3) = 0. The check says so (rank 2)."""
    base = np.array([[1, -1, 3, 1]])
    ranks, margins = intmath.stream_requantization(base, np.array([1.0 / 3]), 1.0 / 3, 3 / 9.0)
    assert ranks.tolist() == [2]
    m0, shift = intmath.quantize_multiplier(intmath.runtime_scale(1.0 / 3, 1.0 / 3, 3 / 9.0))
    assert int(intmath.fixed_point_multiply(np.array([1]), m0, shift)[0]) == 1


@pytest.mark.parametrize("seed", range(12))
def test_exact_thresholds_put_an_f_tie_on_its_exact_side_on_every_runtime(seed):
    """An accumulator within F_TIE of one of F's thresholds (an F tie: F's float32 may round it either way)
    must not split the runtimes: the chosen bias gives it the code of F's exact value under TFLite's fixed
    point and XNNPACK's float32 alike. Found on a trained int8-stream net: one frequent accumulator of a
    2-bit layer sat 2e-5 steps from F's tie, TFLite's double rounding flipped it, and 1.7 % of the test
    images disagreed under TFLite's kernels while XNNPACK agreed on all."""
    rng = np.random.default_rng(100 + seed)
    base = np.tile(np.array([-3, -1, 1, 3], np.int64), 8)[None]  # 2-bit DoReFa codes, 32 inputs
    s_in, s_out, levels = 1 / 3, 1 / 3, 3
    step = float(rng.uniform(0.002, 0.02))
    k, side = int(rng.integers(-40, 40)), int(rng.choice([-1, 1]))
    # F's real value at the base accumulator k: 1.5 output steps +- 3e-6, i.e. an F tie on the `side` side
    bias = (1.5 + side * 3e-6) * s_out - k * step * s_in
    codes, steps, int_bias, ranks, _, _ = intmath.exact_thresholds(base, np.array([step]), np.array([bias]), s_in,
                                                                   (s_out, levels), 127)
    m = int(codes[0, 0] // base[0, 0])
    mult = intmath.runtime_scale(s_in, steps[0], s_out)
    m0, shift = intmath.quantize_multiplier(mult)
    acc = np.array([k * m]) + int(int_bias[0])
    fixed = int(np.clip(intmath.fixed_point_multiply(acc, m0, shift), 0, levels)[0])
    floats = int(np.clip(intmath.xnnpack_requantize(acc, mult), 0, levels)[0])
    assert ranks[0] == 0 and fixed == floats == (2 if side > 0 else 1), (fixed, floats, side)


@pytest.mark.parametrize("seed,limit", [(s, 127) for s in range(4)] + [(s, 127 * 4) for s in range(4)])
def test_exact_thresholds_on_a_signed_grid_within_the_reachable_accumulators(seed, limit):
    """A conv with a folded BatchNorm bias writing F's signed int8 stream: F rounds (acc + beta) M to codes
    -128..127. For every accumulator the k-bit input can reach (``acc_range``), TFLite's fixed point on the
    chosen (codes, bias) gives F's code in exact arithmetic (channels of rank 0 or 1), and XNNPACK's float32 too
    on rank 0; thresholds out of reach do not count, and no gain is applied (the stored steps are F's)."""
    rng = np.random.default_rng(200 + seed)
    channels, fan_in, levels = 5, 24, 3
    base = rng.choice([-3, -1, 1, 3], (channels, fan_in))  # 2-bit DoReFa codes, inputs 0..3
    steps = rng.uniform(0.002, 0.02, channels)
    bias = rng.normal(0, 0.5, channels)
    s_in, s_out = 1 / levels, float(rng.uniform(0.02, 0.05))
    acc_lo, acc_hi = np.minimum(base, 0).sum(axis=1) * levels, np.maximum(base, 0).sum(axis=1) * levels
    codes, new_steps, int_bias, ranks, margins, gains = intmath.exact_thresholds(
        base, steps, bias, s_in, (s_out, -128, 127), limit, acc_range=(acc_lo, acc_hi))
    assert np.all(gains == 1.0) and np.all(ranks < 2) and np.abs(codes).max() <= limit
    for c in range(channels):
        m = int(codes[c, 0] // base[c, 0])
        assert np.array_equal(codes[c], base[c] * m)
        mult = intmath.runtime_scale(s_in, new_steps[c], s_out)
        m0, shift = intmath.quantize_multiplier(mult)
        accs = np.arange(acc_lo[c], acc_hi[c] + 1)
        fixed = np.clip(intmath.fixed_point_multiply(accs * m + int(int_bias[c]), m0, shift), -128, 127)
        xnn = np.clip(intmath.xnnpack_requantize(accs * m + int(int_bias[c]), mult), -128, 127)
        for a, got, got_x in zip(accs.tolist(), fixed.tolist(), xnn.tolist()):
            real = (Fraction(a) * Fraction(steps[c]) * Fraction(s_in) + Fraction(bias[c])) / Fraction(s_out)
            if tie_distance(real) < 1e-6:
                continue  # F's own float32 arithmetic decides a tie either way
            want = min(max(round_half_up(real), -128), 127)
            assert got == want, (c, a, float(real))
            if ranks[c] == 0:
                assert got_x == want, (c, a, float(real))
    # without the reachable range, the out-of-reach thresholds constrain the bias too: never better
    unbounded = intmath.exact_thresholds(base, steps, bias, s_in, (s_out, -128, 127), limit)[3]
    assert np.all(unbounded >= ranks)


def test_16x8_multiplier_out_of_range():
    """A 16x8 kernel rounds at bit 15 - shift: the int64 emulation refuses a multiplier of 2^14 or more with a clear
    error (it used to fail on a negative shift count), and the threshold search skips the code multiples whose
    multiplier a 16x8 kernel cannot apply instead of failing on them."""
    assert intmath.fixed_point_multiply_int64(np.array([3]), 1 << 30, intmath.INT64_MAX_SHIFT)[0] == 3 << 13
    with pytest.raises(ValueError, match="16x8 kernel's output multiplier 2\\^14 or more"):
        intmath.fixed_point_multiply_int64(np.array([3]), 1 << 30, intmath.INT64_MAX_SHIFT + 1)
    assert intmath.beyond_16x8(intmath.fixed_point_multiply_int64, intmath.INT64_MAX_SHIFT + 1)
    assert not intmath.beyond_16x8(intmath.fixed_point_multiply_int64, intmath.INT64_MAX_SHIFT)
    assert not intmath.beyond_16x8(intmath.fixed_point_multiply, intmath.INT64_MAX_SHIFT + 1)  # int32: no such limit
    base = np.array([[1, -1, 1]])
    # s_in s_w / s_out = 1e5 / m: the code multiples m <= 6 give multipliers of 2^14 or more
    codes, steps, _, ranks, _, _ = intmath.exact_thresholds(base, np.array([100.0]), np.array([0.5]), 1.0,
                                                            (1e-3, 255), 127,
                                                            multiply=intmath.fixed_point_multiply_int64)
    mult = intmath.runtime_scale(1.0, steps[0], 1e-3)
    assert intmath.quantize_multiplier(mult)[1] <= intmath.INT64_MAX_SHIFT and codes[0, 0] > 1
    with pytest.raises(ValueError, match="output channel 0: the multiplier .* beyond TFLite's 16x8 kernels"):
        intmath.exact_thresholds(base, np.array([3.0]), np.array([0.5]), 1.0, (1e-6, 255), 127,
                                 multiply=intmath.fixed_point_multiply_int64)
