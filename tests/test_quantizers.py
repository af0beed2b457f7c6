"""Quantizers: forward vs NumPy, STE gradients vs analytic references, serialization."""

import numpy as np
import pytest
import keras

from agq_keras import quantizers
from gradcheck import forward_and_grad

RNG = np.random.default_rng(0)
X = (RNG.standard_normal((6, 5, 4)) * 1.2).astype("float32")


def np_round(x):  # TF rounds half to even, as NumPy does
    return np.round(x)


def ref_dorefa_weight(w, k):
    if k == 1:
        s = np.mean(np.abs(w))
        return np.where(w >= 0, s, -s), np.ones_like(w)
    t = np.tanh(w)
    m = np.max(np.abs(t))
    n = 2**k - 1
    q = 2 * np_round((t / (2 * m) + 0.5) * n) / n - 1
    return q, (1 - t**2) / m


def ref_dorefa_activation(x, k):
    n = 2**k - 1
    q = np_round(np.clip(x, 0, 1) * n) / n
    return q, ((x >= 0) & (x <= 1)).astype(x.dtype)


def ref_fixed(x, k):
    s = np.max(np.abs(x)) / (2 ** (k - 1) - 1)
    return np_round(x / s) * s, np.ones_like(x)


def ref_identity(x, k):
    return x, np.ones_like(x)


CASES = (
    [(quantizers.DoReFaWeight, b, ref_dorefa_weight, X) for b in range(1, 9)]
    + [(quantizers.DoReFaActivation, b, ref_dorefa_activation, X * 0.6 + 0.4) for b in range(1, 9)]
    + [(quantizers.FixedPoint, b, ref_fixed, X) for b in (4, 8, 16)]
    + [(quantizers.Identity, 32, ref_identity, X)]
)
IDS = [f"{c[0].__name__}-{c[1]}" for c in CASES]


@pytest.mark.parametrize("cls,bits,ref,x", CASES, ids=IDS)
def test_forward_matches_numpy_and_levels(cls, bits, ref, x):
    q = cls(bits)
    y, _ = forward_and_grad(q, x, np.ones_like(x))
    expected, _ = ref(x.astype("float64"), bits)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    if bits <= 8:
        assert len(np.unique(y)) <= 2**bits


@pytest.mark.parametrize("cls,bits,ref,x", CASES, ids=IDS)
def test_gradient_matches_analytic_ste(cls, bits, ref, x):
    upstream = RNG.standard_normal(x.shape).astype("float32")
    _, grad = forward_and_grad(cls(bits), x, upstream)
    _, local = ref(x.astype("float64"), bits)
    np.testing.assert_allclose(grad, upstream * local, rtol=1e-5, atol=1e-6)


def test_dorefa_levels_are_the_k_bit_grid():
    w = RNG.standard_normal(10000).astype("float32")
    for k in range(2, 9):
        y = quantizers.DoReFaWeight(k)(w).numpy()
        n = 2**k - 1
        codes = (y + 1) * n / 2
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
    a = quantizers.DoReFaActivation(2)(np.linspace(-1, 2, 301).astype("float32")).numpy()
    np.testing.assert_allclose(sorted(set(np.round(a, 6))), [0, 1 / 3, 2 / 3, 1], atol=1e-6)


@pytest.mark.parametrize("cls,bits,ref,x", CASES, ids=IDS)
def test_get_config_round_trip(cls, bits, ref, x):
    q = cls(bits)
    clone = quantizers.get(keras.saving.serialize_keras_object(q))
    assert type(clone) is cls and clone.bits == bits
    np.testing.assert_array_equal(clone(x).numpy(), q(x).numpy())
    assert cls.from_config(q.get_config()).bits == bits


def test_get_accepts_names_instances_and_none():
    assert quantizers.get(None) is None
    q = quantizers.DoReFaWeight(3)
    assert quantizers.get(q) is q
    assert isinstance(quantizers.get("dorefa_activation"), quantizers.DoReFaActivation)
    assert quantizers.get("dorefa_weight:3").bits == 3
    assert quantizers.get({"class_name": "DoReFaWeight", "config": {"bits": 4}}).bits == 4


@pytest.mark.parametrize("bad", [0, 9, 16, -1, 2.5, "2", True])
def test_bad_bits_are_rejected_with_the_allowed_range(bad):
    with pytest.raises(ValueError, match=r"allowed: 1\.\.8"):
        quantizers.DoReFaWeight(bad)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="Unknown quantizer 'nope'"):
        quantizers.get("nope")
    with pytest.raises(ValueError, match="Unknown quantizer family 'nope'"):
        quantizers.make_pair("nope", 2, 2)
    with pytest.raises(ValueError, match="interpret"):
        quantizers.get(3.0)


def test_make_pair_special_widths():
    w, a = quantizers.make_pair("dorefa", 32, 16)
    assert isinstance(w, quantizers.Identity) and isinstance(a, quantizers.FixedPoint) and a.bits == 16
    with pytest.raises(ValueError, match="bits=12.*32 = full precision"):
        quantizers.make_pair("dorefa", 12, 2)


def ref_fixed_step(x, step, limit):
    n = np.clip(np.floor(x / step + 0.5), -limit - 1, limit)  # ties round up; two's-complement range
    return n * step, ((x >= -(limit + 1) * step) & (x <= limit * step)).astype(x.dtype)


@pytest.mark.parametrize("step,limit,bits", [(1 / 252, 32767, 16), (0.25, 5, 16), (1 / 9, 100, 16),
                                             (5 / 9, 127, 8)])
def test_fixed_step_forward_gradient_and_saturation(step, limit, bits):
    # ties (±step/2: exact in float32) round up; beyond [-(limit+1), limit]·step saturates with zero gradient
    x = np.concatenate([X.ravel() * 3, [0.5 * step, -0.5 * step, limit * step * 2, -limit * step * 3,
                                        -(limit + 1) * step]])
    x = x.astype("float32")
    upstream = RNG.standard_normal(x.shape).astype("float32")
    y, grad = forward_and_grad(quantizers.FixedStep(step, limit, bits=bits), x, upstream)
    expected, local = ref_fixed_step(x.astype("float64"), np.float32(step), limit)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad, upstream * local, rtol=1e-6)
    codes = np.round(y / np.float32(step))
    assert codes.max() == limit and codes.min() == -limit - 1  # saturates like an int{bits} tensor
    clone = quantizers.get(keras.saving.serialize_keras_object(quantizers.FixedStep(step, limit, bits=bits)))
    assert (clone.step, clone.limit, clone.bits) == (float(step), limit, bits)


@pytest.mark.parametrize("kwargs,match", [(dict(limit=128, bits=8), "limit=128.*1..127 \\(int8\\)"),
                                          (dict(limit=0), "limit=0.*1..32767"),
                                          (dict(bits=4), "bits=4")])
def test_fixed_step_rejects_bad_limits(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantizers.FixedStep(0.5, **kwargs)


@pytest.mark.parametrize("kwargs,match", [({"step": 0}, "step=0"), ({"step": float("nan")}, "step=nan"),
                                          ({"limit": 40000}, "limit=40000"), ({"limit": 0}, "limit=0")])
def test_fixed_step_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantizers.FixedStep(**kwargs)


@pytest.mark.parametrize("unit", [0.3, 8.0952])
def test_fixed_point_unit_gives_power_of_two_multiples(unit):
    """FixedPoint(unit=u): step u*2^e, the finest such step that still holds max|w| in 2^15-1 codes."""
    for scale in (0.01, 0.3, 2.0):
        w = (RNG.standard_normal((3, 3, 4, 8)) * scale).astype("float32")
        q = quantizers.FixedPoint(16, unit=unit)
        y, grad = forward_and_grad(q, w, np.ones_like(w))
        grid = q.export_grid(y, 2**15)
        codes, steps = grid.codes, grid.steps
        step = steps[0]
        exponent = np.log2(step / unit)
        assert abs(exponent - round(exponent)) < 1e-6
        assert np.abs(w).max() / step <= 32767 < 2 * np.abs(w).max() / step
        np.testing.assert_allclose(codes * step, y, rtol=1e-6, atol=1e-7)  # float32 values
        np.testing.assert_array_equal(grad, np.ones_like(w))
    assert quantizers.FixedPoint.from_config(quantizers.FixedPoint(16, unit=unit).get_config()).unit == unit
    with pytest.raises(ValueError, match="unit=-1"):
        quantizers.FixedPoint(16, unit=-1)


# -- integer export protocol: each grid reproduces the quantizer's output exactly ------------------
WEIGHT_GRIDS = [quantizers.DoReFaWeight(b) for b in (1, 2, 4, 8)] + [quantizers.LSQWeight(b) for b in (2, 4)] + \
    [quantizers.BiRealWeight(), quantizers.FixedPoint(16)]
ACTIVATION_GRIDS = ([quantizers.DoReFaActivation(b) for b in (1, 2, 8)] + [quantizers.LSQActivation(b) for b in (2, 4)]
                    + [quantizers.PACTActivation(b) for b in (1, 3)])


@pytest.mark.parametrize("q", WEIGHT_GRIDS, ids=lambda q: f"{type(q).__name__}-{q.bits}")
def test_export_weight_grid_reproduces_the_quantized_kernel(q):
    w = (RNG.standard_normal((3, 3, 8, 16)) * 0.2).astype("float32")
    y = q(w).numpy()
    grid = q.export_grid(y, 127 * 259)
    assert grid.kind == "weights"
    codes, steps = grid.codes, grid.steps
    np.testing.assert_allclose(codes * np.asarray(steps).reshape(1, 1, 1, -1), y, rtol=1e-5, atol=1e-7)
    assert np.issubdtype(codes.dtype, np.integer) and np.all(np.asarray(steps) > 0)
    if q.bits <= 8:
        per_channel = [len(np.unique(codes[..., c])) for c in range(codes.shape[-1])]
        assert max(per_channel) <= 2**q.bits


@pytest.mark.parametrize("q", ACTIVATION_GRIDS, ids=lambda q: f"{type(q).__name__}-{q.bits}")
def test_export_activation_grid_reproduces_the_quantizer(q):
    x = (RNG.standard_normal((4, 5, 5, 8)) * 0.8 + 0.3).astype("float32")
    y = q(x).numpy()
    grid = q.export_grid()
    assert grid.kind == "activation"
    step, levels = grid.step, grid.levels
    assert levels == 2**q.bits - 1
    np.testing.assert_allclose(np.round(np.clip(x, 0, levels * step) / step) * step, y, rtol=1e-6, atol=1e-6)


def test_quantizers_without_an_exact_int8_grid_say_so():
    """Non-uniform (LQ-Net) weights and activations have no int8 grid (the export falls back); Bi-Real's
    activations are a sign grid, its weights' steps (max|w| per channel) and 1-bit DoReFa's (mean|w|) depend
    on the kernel, LSQ's is learned: no constant weight step without a kernel."""
    assert quantizers.LQNetWeight(2).export_grid(np.ones((3, 3, 2, 2), "float32")) is None
    assert quantizers.LQNetActivation(2).export_grid() is None
    assert quantizers.BiRealActivation().export_grid().kind == "sign"
    assert quantizers.FixedStep(0.25, 127, bits=8).export_grid() == quantizers.Grid("stream", step=0.25, limit=127)
    for q in (quantizers.BiRealWeight(), quantizers.DoReFaWeight(1), quantizers.LSQWeight(2), quantizers.FixedPoint(16)):
        assert q.export_grid() is None, q
    assert quantizers.DoReFaWeight(3).export_grid() == quantizers.Grid("weights", step=1 / 7)
    with pytest.raises(ValueError, match="kind='bits' is not supported; allowed: weights, activation, sign, stream"):
        quantizers.Grid("bits")


# -- the 8-bit first/last layers (first_last_bits=8) -------------------------------------------------
def test_per_channel_fixed_point_matches_numpy_and_exports_its_codes():
    w = (RNG.standard_normal((3, 3, 4, 6)) * RNG.uniform(0.1, 2.0, 6)).astype("float32")
    q = quantizers.FixedPoint(8, per_channel=True)
    y, grad = forward_and_grad(q, w, np.ones_like(w))
    s = np.abs(w.astype("float64")).reshape(-1, 6).max(axis=0) / 127
    np.testing.assert_allclose(y, np_round(w / s) * s, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(grad, np.ones_like(w))
    grid = q.export_grid(y)
    codes, steps = grid.codes, grid.steps
    assert np.abs(codes).max() == 127 and np.allclose(steps, s, rtol=1e-6)
    assert np.allclose(codes * steps, y, rtol=1e-5, atol=1e-7)
    config = keras.saving.serialize_keras_object(q)
    assert quantizers.get(config).per_channel is True
    with pytest.raises(ValueError, match="per_channel"):
        quantizers.FixedPoint(8, unit=0.5, per_channel=True)
    with pytest.raises(ValueError, match="odd_fraction=True.*without a unit"):
        quantizers.FixedPoint(8, per_channel=True, odd_fraction=True)


def test_odd_fraction_fixed_point_steps_are_unit_over_odd_integers():
    """FixedPoint(8, per_channel=True, unit=U, odd_fraction=True) (the stem of an int8-stream F): per channel
    the step U/N with N the largest odd integer keeping max|w_c| within 127 codes; its grid gives the codes."""
    unit = 85.0
    w = (RNG.standard_normal((3, 3, 1, 6)) * RNG.uniform(0.05, 1.0, 6)).astype("float32")
    q = quantizers.FixedPoint(8, per_channel=True, unit=unit, odd_fraction=True)
    y = q(w).numpy()
    top = np.abs(w.astype("float64")).reshape(-1, 6).max(axis=0)
    n = np.floor(unit * 127 / top)
    n = n - 1 + n % 2
    np.testing.assert_allclose(y, np_round(w / (unit / n)) * (unit / n), rtol=1e-5, atol=1e-7)
    grid = q.export_grid(y)
    np.testing.assert_allclose(unit / grid.steps, n, rtol=1e-9)
    assert np.all(np.abs(grid.codes) <= 127) and np.allclose(grid.codes * grid.steps, y, rtol=1e-5, atol=1e-7)
    assert quantizers.get(keras.saving.serialize_keras_object(q)).odd_fraction is True

def test_range_activation_tracks_its_range_in_training_only():
    q = quantizers.RangeActivation(8, momentum=0.9)
    x = np.abs(X) * 2.0
    q.build(x.shape)
    y = q(x, training=True).numpy()  # the first pass sets top = max(x)
    top = float(x.max())
    assert np.isclose(float(q.top.numpy()), top, rtol=1e-6)
    s = top / 255
    np.testing.assert_allclose(y, np_round(np.clip(x, 0, top) / s) * s, rtol=1e-5, atol=1e-6)
    q(x * 3.0, training=True)  # EMA: 0.9 top + 0.1 max
    assert np.isclose(float(q.top.numpy()), 0.9 * top + 0.1 * 3.0 * top, rtol=1e-5)
    frozen = float(q.top.numpy())
    with quantizers.frozen_state():  # H's pass in the AG step: no update
        q(x * 5.0, training=True)
    q(x * 5.0, training=False)  # inference: no update, clipped at top
    assert float(q.top.numpy()) == frozen
    grid = q.export_grid()
    assert grid.levels == 255 and np.isclose(grid.step, frozen / 255, rtol=1e-6)
    _, grad = forward_and_grad(q, x * 5.0, np.ones_like(x))
    np.testing.assert_array_equal(grad, ((x * 5.0 >= 0) & (x * 5.0 <= frozen)).astype("float32"))
    with pytest.raises(ValueError, match="momentum"):
        quantizers.RangeActivation(8, momentum=1.0)


def test_signed_range_activation_is_fixed_step_on_its_tracked_range():
    """signed=True (F's int8 logits): top tracks max|x| (EMA, training only); forward is fixed_step with
    step top/127 and limit 127 (two's-complement saturation, ties up), the gradient 1 inside that range;
    its grid is a "stream" grid (zero point 0), and the option survives get_config."""
    q = quantizers.RangeActivation(8, signed=True)
    x = X * 3.0
    q.build(x.shape)
    y = q(x, training=True).numpy()
    top = float(np.abs(x).max())
    assert np.isclose(float(q.top.numpy()), top, rtol=1e-6)
    s = np.float32(top) / np.float32(127)
    np.testing.assert_allclose(y, np.clip(np.floor(x / s + 0.5), -128, 127) * s, rtol=1e-6, atol=1e-7)
    q(x * 2.0, training=True)
    assert np.isclose(float(q.top.numpy()), 0.9 * top + 0.1 * 2.0 * top, rtol=1e-5)
    step = float(q.top.numpy()) / 127
    _, grad = forward_and_grad(q, x * 4.0, np.ones_like(x))
    np.testing.assert_array_equal(grad, ((x * 4.0 >= -128 * step) & (x * 4.0 <= 127 * step)).astype("float32"))
    grid = q.export_grid()
    assert grid.kind == "stream" and grid.limit == 127 and np.isclose(grid.step, step, rtol=1e-6)
    assert quantizers.get(keras.saving.serialize_keras_object(q)).signed is True
    with pytest.raises(ValueError, match="signed='yes' must be True or False"):
        quantizers.RangeActivation(8, signed="yes")


@pytest.mark.parametrize("bits,kinds", [(8, ("FixedPoint", "RangeActivation")), (16, ("FixedPoint", "FixedPoint")),
                                        (32, ("Identity", "Identity"))])
def test_edge_pair(bits, kinds):
    w, a = quantizers.edge_pair(bits)
    assert (type(w).__name__, type(a).__name__) == kinds
    assert bits != 8 or (w.per_channel and w.bits == 8 and a.bits == 8)
    with pytest.raises(ValueError, match=r"first_last_bits=4 is not supported; allowed: 8, 16, 32"):
        quantizers.edge_pair(4)
