"""Stochastic structured precision (Algorithm 2): fragments, draws, delta schedule, no retrace."""

import numpy as np
import pytest
import tensorflow as tf
import keras

import agq_keras
from agq_keras.training import AGTrainer
from agq_keras.training.ssp import SSP, DeltaSchedule, delta_at

SHAPE = (8, 8, 1)


def f_model(plain=True):
    return agq_keras.build("resnet20", plain=plain, num_classes=4, input_shape=SHAPE)


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n,) + SHAPE).astype("float32"), rng.integers(0, 4, n).astype("int32")


@pytest.mark.parametrize("fragments,plain,count,sizes", [("block", True, 9, {2}), ("layer", True, 18, {1}),
                                                         ("block", False, 9, {2, 3})])
def test_fragments_exclude_16bit_edges(fragments, plain, count, sizes):
    f = f_model(plain)
    ssp = SSP(fragments).attach(f)
    assert ssp.num_fragments == count
    assert {len(g) for g in ssp.groups} == sizes  # residual: downsampling blocks hold their shortcut
    names = {l.name for g in ssp.groups for l in g}
    assert "stem_conv" not in names and "classifier" not in names
    assert f.get_layer("stem_conv").ssp_gate is None


@pytest.mark.parametrize("delta", [0.0, 0.3, 0.5, 1.0])
def test_draw_frequency_is_one_minus_delta(delta):
    ssp = SSP("layer", delta0=delta).attach(f_model())
    b = np.stack([ssp.indicator(step).numpy() for step in range(300)])  # 300 x 18 x 2
    np.testing.assert_array_equal(b[..., 0], b[..., 1])  # without W/A both columns are the same
    n = b[..., 0].size
    tol = 4 * np.sqrt(max(delta * (1 - delta), 1e-12) / n) + 1e-9
    assert abs(b[..., 0].mean() - (1 - delta)) <= tol
    # every fragment is drawn independently: no fragment is always on or always off at 0 < delta < 1
    if 0 < delta < 1:
        per_fragment = b[..., 0].mean(axis=0)
        assert np.all((per_fragment > 0) & (per_fragment < 1))


def test_wa_split_frequencies():
    delta = 0.4
    ssp = SSP("block", wa=True, delta0=delta).attach(f_model())
    b = np.stack([ssp.indicator(step).numpy() for step in range(500)]).reshape(-1, 2)
    n = len(b)
    expected = {"qwa": (1 - delta) ** 2, "qw": (1 - delta) * delta, "qa": delta * (1 - delta), "r": delta ** 2}
    got = {"qwa": np.mean((b[:, 0] == 1) & (b[:, 1] == 1)), "qw": np.mean((b[:, 0] == 1) & (b[:, 1] == 0)),
           "qa": np.mean((b[:, 0] == 0) & (b[:, 1] == 1)), "r": np.mean((b[:, 0] == 0) & (b[:, 1] == 0))}
    for k, p in expected.items():
        assert abs(got[k] - p) <= 4 * np.sqrt(p * (1 - p) / n), (k, got[k], p)


def test_delta_schedule_values():
    assert [delta_at(e, 0.5, 20) for e in (0, 5, 10, 19, 20, 30, 34)] == pytest.approx([0.5, 0.375, 0.25, 0.025, 0.0, 0.0, 0.0])
    assert [delta_at(e, 1.0, 4) for e in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


@pytest.mark.parametrize("kwargs,match", [({"delta0": 1.5}, "delta0"), ({"delta0": -0.1}, "delta0"),
                                          ({"decay_epoch": 0}, "decay_epoch"), ({"fragments": "stage"}, "fragments")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SSP(**kwargs)


def test_gate_bypasses_quantizers_forward_and_gradient():
    f = f_model()
    ssp = SSP("layer").attach(f)
    layer = ssp.groups[0][0]
    x = tf.random.uniform((2, 8, 8, 16), -1.0, 2.0)
    plain_conv = lambda inp, w: tf.nn.conv2d(inp, w, 1, "SAME")  # noqa: E731
    # gates 1: q(x), q(W); gates 0: x, W (full precision)
    np.testing.assert_allclose(layer(x).numpy(),
                               plain_conv(layer.input_quantizer(x), layer.kernel_quantizer(layer.kernel)).numpy(),
                               rtol=1e-5, atol=1e-5)
    ssp.weight_gates.assign(tf.zeros([ssp.num_fragments]))
    ssp.activation_gates.assign(tf.zeros([ssp.num_fragments]))
    with tf.GradientTape() as tape:
        out = layer(x)
        loss = tf.reduce_sum(out ** 2)
    g = tape.gradient(loss, layer.kernel)
    w = tf.convert_to_tensor(layer.kernel)
    with tf.GradientTape() as tape:
        tape.watch(w)
        ref = plain_conv(x, w)
        ref_loss = tf.reduce_sum(ref ** 2)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g.numpy(), tape.gradient(ref_loss, w).numpy(), rtol=1e-4, atol=1e-4)
    # weights quantized, activations full precision (G_qw)
    ssp.weight_gates.assign(tf.ones([ssp.num_fragments]))
    np.testing.assert_allclose(layer(x).numpy(), plain_conv(x, layer.kernel_quantizer(layer.kernel)).numpy(),
                               rtol=1e-5, atol=1e-5)


class BatchLog(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.w, self.a = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.w.append(float(logs["ssp_w_quantized"]))
        self.a.append(float(logs["ssp_a_quantized"]))


@pytest.mark.parametrize("aux", [False, True])
def test_step_draws_each_step_without_retracing(aux):
    ssp = SSP("block", wa=True, delta0=0.5, decay_epoch=2, seed=3)
    if aux:
        t = agq_keras.build("resnet20", plain=True, aux=True, num_classes=4, input_shape=SHAPE)
        trainer = AGTrainer(t.f, t.h, ssp=ssp)
    else:
        trainer = AGTrainer(f_model(), None, ssp=ssp)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    x, y = data(64)
    log = BatchLog()
    hist = trainer.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[DeltaSchedule(ssp), log])
    assert trainer.trace_count == 1  # the gates are variables: one trace for all steps and epochs
    assert hist.history["ssp_delta"] == [0.5, 0.25, 0.0]
    w = np.array(log.w).reshape(3, 16)
    # every step draws anew: epoch 1 (delta 0.5) fractions vary around 0.5, epoch 3 (delta 0) is fully quantized
    assert len(set(w[0])) > 3 and abs(w[0].mean() - 0.5) < 0.2
    np.testing.assert_array_equal(w[2], 1.0)
    np.testing.assert_array_equal(np.array(log.a).reshape(3, 16)[2], 1.0)
    # the first step's draw is the stateless draw of (seed, step 0)
    ref = ssp.indicator(0)  # delta now 0 -> recompute at 0.5 for the comparison
    ssp.delta.assign(0.5)
    assert log.w[0] == pytest.approx(float(tf.reduce_mean(ssp.indicator(0)[:, 0])))
    del ref
    # outside the step F is fully quantized
    np.testing.assert_array_equal(ssp.weight_gates.numpy(), 1.0)
    assert np.all(np.isfinite(hist.history["loss"]))
    if aux:
        assert np.all(np.isfinite(hist.history["h_loss"]))


def test_f_saves_without_gates(tmp_path):
    f = f_model()
    n_weights = len(f.weights)
    trainer = AGTrainer(f, None, ssp=SSP("layer"))
    assert len(f.weights) == n_weights
    assert not any("ssp" in v.path for v in f.weights + trainer.weights)
    f.save(tmp_path / "f.keras")
    g = keras.models.load_model(tmp_path / "f.keras")
    assert all(getattr(l, "ssp_gate", None) is None for l in g.layers)
    trainer.save(tmp_path / "t.keras")
    t2 = keras.models.load_model(tmp_path / "t.keras")
    assert t2.ssp.get_config() == trainer.ssp.get_config() and t2.ssp.num_fragments == 18


@pytest.mark.parametrize("aux", [False, True])
def test_build_ssp_option(aux):
    t = agq_keras.build("resnet20", plain=True, aux=aux, num_classes=4, input_shape=SHAPE,
                        ssp={"fragments": "layer", "wa": True, "delta0": 0.25, "decay_epoch": 3})
    assert isinstance(t, AGTrainer) and (t.h is not None) == aux
    assert t.ssp.num_fragments == 18 and t.ssp.wa and t.ssp.delta0 == 0.25
    with pytest.raises(ValueError, match="delta0"):
        agq_keras.build("resnet20", num_classes=4, input_shape=SHAPE, ssp={"delta0": 2})
    with pytest.raises(ValueError, match="ssp="):
        agq_keras.build("resnet20", num_classes=4, input_shape=SHAPE, ssp="block")
