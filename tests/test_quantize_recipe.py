"""The recipe for a user's model (issue 29): LSQ with per-channel weight steps and ranges initialised from the data,
per-channel DoReFa, the log-step parametrisation that keeps Adam's updates relative, and quantize()'s defaults.
NumPy references for the formulas; small nets for the behaviour."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import agq_keras
from agq_keras import quantizers
from agq_keras.models.quantize import quantize

RNG = np.random.default_rng(3)
W = (RNG.standard_normal((3, 3, 4, 6)) * np.array([0.01, 0.05, 0.1, 0.3, 1.0, 2.0])).astype("float32")
A = np.maximum(RNG.standard_normal((8, 5, 5, 4)) * 1.5, 0).astype("float32")


def init_ref(x, q_p, axes):
    x = np.abs(x.astype(np.float64))
    return np.maximum(np.minimum(2 * x.mean(axis=axes) / math.sqrt(q_p), x.max(axis=axes) / q_p), 1e-8)


# -- LSQ: data initialisation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lsq_weight_step_initialises_per_channel_from_the_kernel(bits):
    q = quantizers.LSQWeight(bits)
    out = q(tf.constant(W)).numpy()
    expected = init_ref(W, q.q_p, (0, 1, 2))
    np.testing.assert_allclose(q.learned_step(), expected, rtol=1e-5)
    codes = out / expected
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)  # each channel on its own grid
    assert np.round(codes).min() >= -q.q_n and np.round(codes).max() <= q.q_p
    assert all(len(np.unique(out[..., c])) > 1 for c in range(W.shape[-1]))  # no channel rounds to one value
    if bits == 8:  # the covering step: no weight clipped, codes symmetric in [-127, 127] (TFLite's int8 weights)
        np.testing.assert_allclose(out, W, atol=float(expected.max()) / 2 + 1e-6)
        assert q.q_n == 127


def test_lsq_weight_per_tensor_and_its_reference():
    q = quantizers.LSQWeight(4, per_channel=False)
    q(tf.constant(W))
    assert q.log_step.shape == () and q.learned_step() == pytest.approx(float(init_ref(W, q.q_p, None)), rel=1e-5)


def test_lsq_activation_initialises_from_the_first_training_batch_only():
    q = quantizers.LSQActivation(4)
    q.build(A.shape)
    default = q.learned_step()
    q(tf.constant(A))  # inference: no initialisation
    assert q.learned_step() == pytest.approx(default)
    with quantizers.frozen_state():  # H's pass: no initialisation
        q(tf.constant(A), training=True)
    assert q.learned_step() == pytest.approx(default)
    q(tf.constant(A), training=True)
    first = float(init_ref(A, 15, None))
    assert q.learned_step() == pytest.approx(first, rel=1e-5) and first != pytest.approx(default)
    q(tf.constant(A * 3), training=True)  # once only
    assert q.learned_step() == pytest.approx(first, rel=1e-5)


def test_lsq_activation_for_a_known_range_starts_on_it():
    q = quantizers.LSQActivation.for_input_range(4, 6.0)
    y = q(tf.constant(A * 4), training=True).numpy()
    assert q.learned_step() == pytest.approx(0.4) and y.max() == pytest.approx(6.0)  # [0, 6], no data init
    assert quantizers.PACTActivation.for_input_range(4, 6.0).alpha_init == 6.0
    assert type(quantizers.DoReFaActivation.for_input_range(4, 6.0)) is quantizers.DoReFaActivation


def test_lsq_state_survives_a_keras_round_trip(tmp_path):
    """A saved F keeps its learned steps and does not initialise them again when training resumes."""
    x = inputs = keras.Input((6, 6, 2))
    x = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, name="c1")(x))
    x = keras.layers.ReLU()(keras.layers.Conv2D(5, 1, name="c2")(x))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1, name="c3")(x))
    f = quantize(model, w_bits=4, a_bits=4, first_last_bits=32)  # c2: LSQ weights and input
    data = RNG.random((4, 6, 6, 2)).astype("float32")
    f(data, training=True)
    f.save(tmp_path / "f.keras")
    g = agq_keras.load_model(tmp_path / "f.keras")
    steps = [v.numpy() for v in g.weights if v.path.endswith("log_step")]
    assert len(steps) == 2
    g(data * 5, training=True)
    for v, before in zip([v for v in g.weights if v.path.endswith("log_step")], steps):
        np.testing.assert_array_equal(v.numpy(), before)
    np.testing.assert_array_equal(np.asarray(g(data)), np.asarray(f(data)))


# -- the failures LSQ had on a user's model -------------------------------------------------------------------------

def _user_net():
    """A keras.applications-style block: Glorot-uniform kernels (small depthwise weights), ReLU6."""
    x = inputs = keras.Input((12, 12, 3))
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(keras.layers.Conv2D(16, 3, name="stem")(x)))
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(x))
    x = keras.layers.Conv2D(32, 1, name="expand")(x)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))


def test_lsq_quantized_kernels_follow_the_float_kernels():
    """At 4 bits every quantized kernel stays close to its float kernel. The earlier LSQ started its step from a
    He-normal guess of the weights (sqrt(2/9) for a depthwise kernel): Glorot depthwise weights of ~0.05 all rounded
    to zero and fine-tuning fell to chance."""
    keras.utils.set_random_seed(0)
    f = quantize(_user_net(), w_bits=4, a_bits=4)
    for name in ("dw", "expand"):
        layer = f.get_layer(name)
        assert isinstance(layer.kernel_quantizer, quantizers.LSQWeight) and layer.kernel_quantizer.per_channel
        w = layer.kernel.numpy()
        q = layer.quantized_kernel().numpy()
        assert np.linalg.norm(q - w) / np.linalg.norm(w) < 0.15, name
        flat = q.reshape(9, -1) if name == "dw" else q.reshape(-1, q.shape[-1])  # (positions, output channels)
        assert np.abs(flat).max(axis=0).min() > 0, name  # no channel rounds to zero


def test_lsq_steps_move_relatively_under_adam():
    """Adam moves a variable by about the learning rate per update whatever its gradient's size; the step is stored
    as log(s), so 20 updates at 5e-4 change every step by about 1 % at most. Stored as s, a weight step of ~0.005
    moved by ~0.01 (200 %)."""
    keras.utils.set_random_seed(0)
    f = quantize(_user_net(), w_bits=4, a_bits=4)
    f.compile(optimizer=keras.optimizers.Adam(5e-4),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = RNG.random((80, 12, 12, 3)).astype("float32")
    y = RNG.integers(0, 4, 80)
    f.fit(x[:4], y[:4], batch_size=4, epochs=1, verbose=0)  # the first step initialises
    before = {name: f.get_layer(name).kernel_quantizer.learned_step() for name in ("dw", "expand")}
    f.fit(x, y, batch_size=4, epochs=1, verbose=0)
    for name, step in before.items():
        after = f.get_layer(name).kernel_quantizer.learned_step()
        assert np.all(np.abs(after / step - 1) < 0.012), (name, np.abs(after / step - 1).max())
        assert np.any(after != step), name  # they do learn


# -- per-channel DoReFa ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 4])
def test_dorefa_per_channel_matches_numpy(bits):
    x = W.astype(np.float64)
    if bits == 1:
        scale = np.abs(x).mean(axis=(0, 1, 2))
        expected, local = np.where(x >= 0, scale, -scale), np.ones_like(x)
    else:
        t = np.tanh(x)
        m = np.abs(t).max(axis=(0, 1, 2))
        n = 2**bits - 1
        expected = 2 * np.round((t / (2 * m) + 0.5) * n) / n - 1
        local = (1 - t**2) / m
    q = quantizers.DoReFaWeight(bits, per_channel=True)
    w = tf.constant(W)
    upstream = RNG.standard_normal(W.shape).astype("float32")
    with tf.GradientTape() as tape:
        tape.watch(w)
        y = q(w)
        loss = tf.reduce_sum(y * upstream)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, w).numpy(), upstream * local, rtol=1e-4, atol=1e-5)
    grid = q.export_grid(y.numpy())
    np.testing.assert_allclose(grid.codes * grid.steps, y.numpy(), rtol=1e-5, atol=1e-7)
    if bits > 1:  # every channel reaches an end of the grid: the smallest channel (|w| ~ 0.01) uses its whole range
        assert all({-1.0, 1.0} & set(np.round(y.numpy()[..., c], 5).ravel()) for c in range(W.shape[-1]))
    assert quantizers.get(keras.saving.serialize_keras_object(q)).per_channel is True


def test_lsq_per_channel_export_grid_carries_each_channels_step():
    q = quantizers.LSQWeight(4)
    y = q(tf.constant(W)).numpy()
    grid = q.export_grid(y)
    np.testing.assert_allclose(grid.steps, q.learned_step(), rtol=1e-12)
    assert grid.step is None and np.abs(grid.codes).max() <= 8
    np.testing.assert_allclose(grid.codes * grid.steps, y, rtol=1e-5, atol=1e-7)


# -- quantize()'s defaults ----------------------------------------------------------------------------------------

def test_quantize_defaults_are_the_recipe():
    f = quantize(_user_net(), w_bits=4, a_bits=4)
    dw, expand = f.get_layer("dw"), f.get_layer("expand")
    assert isinstance(dw.kernel_quantizer, quantizers.LSQWeight) and dw.kernel_quantizer.per_channel
    assert isinstance(dw.input_quantizer, quantizers.LSQActivation)
    assert dw.input_quantizer.step_init == pytest.approx(6 / 15)  # a ReLU6 reader starts on [0, 6]
    assert expand.input_quantizer.step_init == pytest.approx(6 / 15)
    d = quantize(_user_net(), quantizer="dorefa", w_bits=4, a_bits=4)
    assert d.get_layer("dw").kernel_quantizer.per_channel is True  # per channel where the family can
    p = quantize(_user_net(), quantizer="dorefa", per_channel=False, w_bits=4, a_bits=4)
    assert p.get_layer("dw").kernel_quantizer.per_channel is False
    pact = quantize(_user_net(), quantizer="pact", w_bits=4, a_bits=4)
    assert pact.get_layer("dw").input_quantizer.alpha_init == 6.0
    lq = quantize(_user_net(), quantizer="lqnet", w_bits=2, a_bits=2)  # per channel by construction
    assert isinstance(lq.get_layer("dw").kernel_quantizer, quantizers.LQNetWeight)


def test_quantize_plain_relu_readers_initialise_from_data():
    x = inputs = keras.Input((8, 8, 2))
    x = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, name="c1")(x))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1, name="c2")(keras.layers.MaxPooling2D(name="pool")(x)))
    f = quantize(model, w_bits=4, a_bits=4, policy={"c1": 4, "c2": 4})
    q = f.get_layer("c2").input_quantizer
    assert q.step_init is None
    data = RNG.random((4, 8, 8, 2)).astype("float32")
    f(data, training=True)
    probe = keras.Model(f.inputs, f.get_layer("pool").output)
    assert q.learned_step() == pytest.approx(float(init_ref(np.asarray(probe(data)), 15, None)), rel=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(quantizer="lqnet", per_channel=False), "lqnet.*no per_channel option"),
    (dict(per_channel="yes"), r"per_channel='yes' must be None, True or False"),
    (dict(w_bits=1, a_bits=1), r"w_bits=1.*LSQWeight: bits=1 is not supported; allowed: 2\.\.8"),
])
def test_quantize_bad_recipe_arguments_are_named(kwargs, match):
    args = dict(w_bits=2, a_bits=2) | kwargs
    with pytest.raises(ValueError, match=match):
        quantize(_user_net(), **args)


SIGNED = np.random.default_rng(3).standard_normal((4, 5, 5, 3)).astype("float32")


@pytest.mark.parametrize("bits,step", [(2, 0.6), (4, 0.3), (8, 0.02)])
def test_lsq_signed_activation_matches_numpy(bits, step):
    """``LSQActivation(signed=True)``: codes -2^(b-1) .. 2^(b-1) - 1 (eqs. 1-4 with Q_N = 2^(b-1)); its gradients
    (x: straight-through inside the grid; log s: s * dL/ds) and its export grid (offset Q_N)."""
    q = quantizers.LSQActivation(bits, signed=True)
    q.build(SIGNED.shape)
    q.assign_step(step)
    upstream = np.random.default_rng(4).standard_normal(SIGNED.shape).astype("float32")
    x = tf.constant(SIGNED)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = q(x, training=True)
        loss = tf.reduce_sum(y * upstream)
    dx, dlog = tape.gradient(loss, [x, q.log_step])
    s, q_n, q_p = q.learned_step(), 2 ** (bits - 1), 2 ** (bits - 1) - 1
    v = SIGNED.astype(np.float64) / s
    assert (q.q_n, q.q_p) == (q_n, q_p)
    np.testing.assert_allclose(y.numpy(), np.round(np.clip(v, -q_n, q_p)) * s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx.numpy(), upstream * ((v >= -q_n) & (v <= q_p)), rtol=1e-6)
    ds = np.where(v < -q_n, -q_n, np.where(v > q_p, q_p, np.round(v) - v)) / math.sqrt(75 * q_p)
    np.testing.assert_allclose(dlog.numpy(), s * np.sum(upstream * ds), rtol=1e-4, atol=1e-6)
    assert y.numpy().min() < 0 and len(np.unique(y.numpy())) <= 2**bits
    grid = q.export_grid()
    assert (grid.kind, grid.step, grid.levels, grid.offset) == ("activation", s, q_n + q_p, q_n)
    clone = quantizers.get(keras.saving.serialize_keras_object(q))
    assert clone.get_config() == q.get_config() and clone.signed


def test_signed_inputs_only_where_the_family_has_them():
    assert quantizers.make_pair("lsq", 4, 4, signed_input=True)[1].signed
    assert isinstance(quantizers.make_pair("lsq", 4, 32, signed_input=True)[1], quantizers.Identity)
    with pytest.raises(ValueError, match="'dorefa'.*unsigned.*lsq"):
        quantizers.make_pair("dorefa", 4, 4, signed_input=True)
    with pytest.raises(ValueError, match="signed=1 must be True or False"):
        quantizers.LSQActivation(4, signed=1)
