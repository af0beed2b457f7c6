"""The quantizer zoo (LQ-Net, Bi-Real, GroupNet, LSQ, PACT): forward vs NumPy,
gradients vs analytic references, levels, serialization, AG training, bad input."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
import keras

import agq_keras
from agq_keras import quantizers
from agq_keras.quantizers import lqnet
from gradcheck import forward_and_grad

RNG = np.random.default_rng(0)
W = (RNG.standard_normal((3, 3, 4, 5)) * 0.6).astype("float32")  # a kernel: 5 output channels
A = (RNG.standard_normal((2, 4, 4, 3)) * 1.3 + 0.5).astype("float32")  # activations


# -- NumPy references: (quantizer after build, x) -> (forward, local gradient dq/dx) -----------------

def ref_lq(q, x):
    basis = q.basis.numpy().astype("float64")
    codes = np.array(list(itertools.product((-1.0, 1.0) if q.signed else (0.0, 1.0), repeat=q.bits)))
    levels = basis @ codes.T  # (C, 2^K)
    dist = np.abs(x[..., None] - levels)
    out = np.take_along_axis(np.broadcast_to(levels, dist.shape), dist.argmin(-1)[..., None], -1)[..., 0]
    grad = np.ones_like(x) if q.signed else ((x >= 0) & (x <= levels.max())).astype(x.dtype)
    return out, grad


def np_qem_step(x, basis, signed, momentum=0.9):
    """NumPy QEM: codes B of the nearest levels, v* = (B^T B + 1e-4 N I)^-1 B^T x per channel."""
    bits = basis.shape[1]
    codes = np.array(list(itertools.product((-1.0, 1.0) if signed else (0.0, 1.0), repeat=bits)))
    xs = x.reshape(-1, basis.shape[0]).astype("float64")
    new = basis.astype("float64").copy()
    for c in range(basis.shape[0]):
        levels = codes @ basis[c]
        b = codes[np.abs(xs[:, c, None] - levels).argmin(-1)]
        btb = b.T @ b
        solved = np.linalg.solve(btb + 1e-4 * len(xs) * np.eye(bits), b.T @ xs[:, c])
        new[c] = np.where(np.diag(btb) > 0, solved, basis[c])
    return momentum * basis + (1 - momentum) * new


@pytest.mark.parametrize("cls,bits", [(quantizers.LQNetWeight, 2), (quantizers.LQNetWeight, 3),
                                      (quantizers.LQNetActivation, 2), (quantizers.LQNetActivation, 4)])
def test_qem_step_matches_numpy_least_squares(cls, bits):
    x = W if cls is quantizers.LQNetWeight else A
    q = cls(bits)
    q.build(x.shape)
    basis = q.basis.numpy()
    q(x, training=True)
    np.testing.assert_allclose(q.basis.numpy(), np_qem_step(x, basis, q.signed), rtol=1e-4, atol=1e-6)


def ref_magnitude_sign(q, w):
    alpha = np.mean(np.abs(w), axis=(0, 1, 2))
    return alpha * np.where(w >= 0, 1.0, -1.0), (np.abs(w) <= 1).astype(w.dtype)


def ref_approx_sign(q, x):
    return np.where(x >= 0, 1.0, -1.0), np.where(np.abs(x) < 1, 2 - 2 * np.abs(x), 0.0)


def ref_ste_sign(q, x):
    return np.where(x >= 0, 1.0, -1.0), (np.abs(x) <= 1).astype(x.dtype)


def lsq_ref(q, x):
    """(forward, dq/dx, dL/ds per unit upstream before summation); the step per tensor or per output channel
    (the last axis), as the quantizer holds it after its call."""
    s = q.learned_step()
    v = x / s
    out = np.round(np.clip(v, -q.q_n, q.q_p)) * s
    dx = ((v >= -q.q_n) & (v <= q.q_p)).astype(x.dtype)
    ds = np.where(v < -q.q_n, -q.q_n, np.where(v > q.q_p, q.q_p, np.round(v) - v))
    return out, dx, ds / np.sqrt(q.num_elements * q.q_p)


def ref_lsq(q, x):
    return lsq_ref(q, x)[:2]


def pact_ref(q, x):
    a = float(q.alpha.numpy())
    n = 2**q.bits - 1
    out = np.round(np.clip(x, 0, a) * n / a) * a / n
    return out, ((x >= 0) & (x < a)).astype(x.dtype), (x >= a).astype(x.dtype)


def ref_pact(q, x):
    return pact_ref(q, x)[:2]


CASES = (
    [(quantizers.LQNetWeight, b, ref_lq, W) for b in (1, 2, 3, 4)]
    + [(quantizers.LQNetActivation, b, ref_lq, A) for b in (1, 2, 3, 4)]
    + [(quantizers.BiRealWeight, 1, ref_magnitude_sign, W), (quantizers.BiRealActivation, 1, ref_approx_sign, A)]
    + [(quantizers.GroupNetWeight, 1, ref_magnitude_sign, W),
       (quantizers.GroupNetActivation, 1, ref_ste_sign, A)]
    + [(quantizers.LSQWeight, b, ref_lsq, W) for b in (2, 3, 4, 8)]
    + [(quantizers.LSQActivation, b, ref_lsq, A) for b in (2, 3, 4, 8)]
    + [(quantizers.PACTActivation, b, ref_pact, A) for b in (1, 2, 4, 8)]
)
IDS = [f"{c[0].__name__}-{c[1]}" for c in CASES]
PER_CHANNEL = (quantizers.LQNetWeight, quantizers.BiRealWeight, quantizers.GroupNetWeight, quantizers.LSQWeight)


@pytest.mark.parametrize("cls,bits,ref,x", CASES, ids=IDS)
def test_forward_matches_numpy_and_levels(cls, bits, ref, x):
    q = cls(bits)
    y, _ = forward_and_grad(q, x, np.ones_like(x))
    expected, _ = ref(q, x.astype("float64"))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    if cls in PER_CHANNEL:  # at most 2^bits levels in every output channel
        assert max(len(np.unique(y[..., c])) for c in range(y.shape[-1])) <= 2**bits
    else:
        assert len(np.unique(y)) <= 2**bits
    assert len(np.unique(y)) > 1  # not a degenerate constant


@pytest.mark.parametrize("cls,bits,ref,x", CASES, ids=IDS)
def test_gradient_matches_analytic_reference(cls, bits, ref, x):
    upstream = RNG.standard_normal(x.shape).astype("float32")
    q = cls(bits)
    _, grad = forward_and_grad(q, x, upstream)
    _, local = ref(q, x.astype("float64"))
    np.testing.assert_allclose(grad, upstream * local, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls,bits,ref,x", CASES, ids=IDS)
def test_get_config_round_trip(cls, bits, ref, x):
    q = cls(bits)
    clone = quantizers.get(keras.saving.serialize_keras_object(q))
    assert type(clone) is cls and clone.get_config() == q.get_config()
    np.testing.assert_array_equal(clone(x).numpy(), q(x).numpy())
    assert quantizers.get({"class_name": cls.__name__, "config": q.get_config()}).bits == bits


@pytest.mark.parametrize("cls,bits", [(quantizers.LSQWeight, 2), (quantizers.LSQActivation, 3)])
def test_lsq_step_gradient_matches_reference(cls, bits):
    x = W if cls is quantizers.LSQWeight else A
    """The trainable variable is log(s): its gradient is s * dL/ds (the paper's dL/ds, chain rule), summed per
    output channel for per-channel weights."""
    q = cls(bits)
    q.build(x.shape)
    steps = np.linspace(0.3, 0.45, q.log_step.shape[0]) if q.log_step.shape.rank else 0.37
    q.assign_step(steps)
    upstream = RNG.standard_normal(x.shape).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(q(tf.constant(x)) * upstream)
    grad = tape.gradient(loss, q.trainable_variables)[0].numpy()
    _, _, ds = lsq_ref(q, x.astype("float64"))
    axes = tuple(range(x.ndim - 1)) if np.ndim(steps) else None
    np.testing.assert_allclose(grad, q.learned_step() * np.sum(upstream * ds, axis=axes), rtol=1e-4, atol=1e-6)


def test_pact_alpha_gradient_matches_reference():
    q = quantizers.PACTActivation(2, alpha_init=1.1)
    upstream = RNG.standard_normal(A.shape).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(q(tf.constant(A)) * upstream)
    grad = tape.gradient(loss, q.trainable_variables)[0].numpy()
    _, _, da = pact_ref(q, A.astype("float64"))
    assert da.sum() > 0  # some inputs are clipped
    np.testing.assert_allclose(grad, np.sum(upstream * da), rtol=1e-5)


# -- names and families -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lqnet", "bireal", "groupnet", "lsq", "pact", "dorefa"])
def test_families_and_names_are_registered(name):
    assert name in quantizers.families()
    bits = 1 if name in ("bireal", "groupnet") else 2
    w, a = quantizers.make_pair(name, bits, bits)
    assert w.bits == bits and a.bits == bits
    assert type(quantizers.get(f"{type(w).__name__}:{bits}")) is type(w)
    assert type(quantizers.get(f"{type(a).__name__}:{bits}")) is type(a)


# -- LQ-Net QEM -------------------------------------------------------------------------------------

def best_uniform_error(x, levels):
    """MSE of the best symmetric uniform quantizer with ``levels`` levels (step searched finely)."""
    best = np.inf
    for step in np.linspace(0.01, 3.0, 3000):
        q = (np.clip(np.floor(x / step), -levels // 2, levels // 2 - 1) + 0.5) * step
        best = min(best, float(np.mean((q - x) ** 2)))
    return best


@pytest.mark.parametrize("bits", [2, 3])
def test_qem_error_decreases_monotonically_and_beats_uniform(bits):
    x = np.random.default_rng(1).standard_normal((8000, 1)).astype("float32")
    q = quantizers.LQNetWeight(bits)
    q.build(x.shape)
    q.basis.assign(0.1 * 2.0 ** np.arange(bits, dtype="float32")[None])  # a poor start
    codes = tf.constant(q.codes)
    errors = []
    for _ in range(250):
        errors.append(float(lqnet.quantization_error(x, tf.convert_to_tensor(q.basis), codes)))
        q(x, training=True)  # one in-graph QEM update (training, state updates enabled)
    errors = np.array(errors)
    assert np.all(np.diff(errors) <= 1e-7), "QEM must not increase the error"
    assert errors[-1] < 0.5 * errors[0]
    assert errors[-2] - errors[-1] < 1e-6  # converged
    uniform = best_uniform_error(x, 2**bits)
    assert errors[-1] < uniform, (errors[-1], uniform)


def test_qem_needs_training_and_enabled_state_updates():
    q = quantizers.LQNetActivation(2)
    q.build(A.shape)
    before = q.basis.numpy().copy()
    q(A, training=False)
    np.testing.assert_array_equal(q.basis.numpy(), before)
    with quantizers.frozen_state():
        q(A, training=True)
    np.testing.assert_array_equal(q.basis.numpy(), before)
    q(A, training=True)
    assert not np.allclose(q.basis.numpy(), before)


def lqnet_convs(model):
    return [l for l in model.layers if isinstance(l, agq_keras.QConv2D)
            and isinstance(l.kernel_quantizer, quantizers.LQNetWeight)]


def test_lqnet_basis_updates_once_per_ag_step_from_f():
    t = agq_keras.build("resnet20", plain=True, aux=True, quantizer="lqnet", w_bits=2, a_bits=2,
                        num_classes=4, input_shape=(8, 8, 1))
    t.compile(optimizer=keras.optimizers.SGD(0.01))
    x = RNG.random((8, 8, 8, 1)).astype("float32")
    y = RNG.integers(0, 4, 8).astype("int32")
    conv = lqnet_convs(t.f)[3]
    wq, aq = conv.kernel_quantizer, conv.input_quantizer
    kernel, basis, act_basis = conv.kernel.numpy(), wq.basis.numpy(), aq.basis.numpy()
    t.fit(x, y, batch_size=8, epochs=1, verbose=0)
    # The weight basis saw the pre-step kernel exactly once: one QEM step from the old basis.
    np.testing.assert_allclose(wq.basis.numpy(), np_qem_step(kernel, basis, True), rtol=1e-4, atol=1e-7)
    assert not np.allclose(aq.basis.numpy(), act_basis)
    # Traced once for F's pass; H's pass (frozen state) built no update.
    assert t.trace_count == 1 and wq.qem_updates_traced == 1 and aq.qem_updates_traced == 1
    after = wq.basis.numpy()
    t.evaluate(x, y, verbose=0)  # inference: no update
    np.testing.assert_array_equal(wq.basis.numpy(), after)


def test_lqnet_basis_survives_keras_round_trip(tmp_path):
    inputs = keras.Input((6, 6, 2))
    layer = agq_keras.QConv2D(3, 3, kernel_quantizer="lqnet_weight:2", input_quantizer="lqnet_activation:2")
    model = keras.Model(inputs, layer(inputs))
    x = RNG.random((4, 6, 6, 2)).astype("float32")
    for _ in range(3):
        model(x, training=True)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    basis = layer.kernel_quantizer.basis.numpy()
    assert not np.allclose(basis, quantizers.LQNetWeight(2).initial_basis((3, 3, 2, 3)))  # QEM moved it
    np.testing.assert_allclose(loaded.layers[-1].kernel_quantizer.basis.numpy(), basis)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)


# -- every family trains inside QConv2D inside an AG trainer --------------------------------------------

SMOKE = {
    "dorefa": ("resnet20", 2, {}),
    "lqnet": ("resnet20", 2, {}),
    "lsq": ("resnet20", 2, {}),
    "pact": ("resnet20", 2, {}),
    "bireal": ("birealnet20", 1, {}),
    "groupnet": ("groupnet20", 1, {"num_bases": 2}),
}


# LSQ (quantize()'s default) trains in the default tier; the other families, real training runs, in the slow tier.
@pytest.mark.parametrize("family", [f if f == "lsq" else pytest.param(f, marks=pytest.mark.slow)
                                    for f in sorted(SMOKE)])
def test_each_family_trains_in_an_ag_trainer(family):
    arch, bits, kw = SMOKE[family]
    t = agq_keras.build(arch, aux=True, quantizer=family, w_bits=bits, a_bits=bits, num_classes=4,
                        input_shape=(8, 8, 1), **kw)
    convs = [l for l in t.f.layers if isinstance(l, agq_keras.QConv2D) and l.name != "stem_conv"
             and not l.name.endswith("shortcut")]
    assert convs and all(c.weight_bits == bits and c.input_bits == bits for c in convs)
    t.compile(optimizer=keras.optimizers.Adam(1e-3))
    rng = np.random.default_rng(7)
    x = rng.random((16, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 4, 16).astype("int32")
    learned = {"lsq": "log_step", "pact": "alpha", "groupnet": "scales"}.get(family)
    variables = [v for v in t.f.trainable_variables if learned and v.path.endswith("/" + learned)]
    if family == "pact":
        for v in variables:  # alpha only gets gradient where x >= alpha: make sure some inputs clip
            v.assign(0.5)
    before = [v.numpy() for v in variables]
    history = t.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and np.isfinite(history.history["h_loss"]).all()
    if learned:  # LSQ's steps / PACT's clips / GroupNet's base scalars are shared F/H weights that train
        assert len(variables) >= (9 if family == "groupnet" else 18)  # per block / per quantizer
        shared, _, _ = t.variable_groups()
        assert {id(v) for v in variables} <= {id(v) for v in shared}
        unmoved = [v.path for v, b in zip(variables, before) if np.isclose(v.numpy(), b).any()]
        assert not unmoved, f"{learned} did not move: {unmoved}"


# -- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,bad,allowed", [
    (quantizers.BiRealWeight, 2, "allowed: 1"),
    (quantizers.BiRealActivation, 0, "allowed: 1"),
    (quantizers.GroupNetActivation, 2, "allowed: 1"),
    (quantizers.LQNetWeight, 5, r"allowed: 1\.\.4"),
    (quantizers.LQNetActivation, 0, r"allowed: 1\.\.4"),
    (quantizers.LSQWeight, 1, r"allowed: 2\.\.8"),
    (quantizers.LSQActivation, 9, r"allowed: 2\.\.8"),
    (quantizers.PACTActivation, 9, r"allowed: 1\.\.8"),
])
def test_unsupported_bits_are_rejected(cls, bad, allowed):
    with pytest.raises(ValueError, match=f"bits={bad} is not supported; {allowed}"):
        cls(bad)


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="momentum=1.5"):
        quantizers.LQNetWeight(2, momentum=1.5)
    with pytest.raises(ValueError, match="step_init=-1"):
        quantizers.LSQWeight(2, step_init=-1)
    with pytest.raises(ValueError, match="alpha_init=0"):
        quantizers.PACTActivation(2, alpha_init=0)
    with pytest.raises(ValueError, match=r"bits=2 is not supported; allowed: 1"):
        agq_keras.build("birealnet20", quantizer="bireal", w_bits=2, a_bits=1, num_classes=4,
                        input_shape=(8, 8, 1))
