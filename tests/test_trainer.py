"""The AG joint step (Algorithm 1): sharing, gradient combination, logs, saving."""

import json
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import keras

import agq_keras
from agq_keras.training import AGTrainer, split_variables

SHAPE = (8, 8, 1)


def make_trainer(aux_lambda=1.0, plain=True, **kw):
    return agq_keras.build("resnet20", plain=plain, aux=True, num_classes=4, input_shape=SHAPE,
                           aux_lambda=aux_lambda, **kw)


def batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n,) + SHAPE).astype("float32"), rng.integers(0, 4, n).astype("int32")


def test_shared_variables_are_the_same_objects_and_bns_are_distinct():
    t = make_trainer()
    shared, f_only, h_only = split_variables(t.f, t.h)
    f_convs = {id(l.kernel) for l in t.f.layers if isinstance(l, (agq_keras.QConv2D, agq_keras.QDense))}
    assert f_convs == {id(v) for v in shared}  # every conv/dense kernel of F is used by H
    f_bns = [l for l in t.f.layers if isinstance(l, keras.layers.BatchNormalization)]
    h_bns = [l for l in t.h.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(h_bns) == len(f_bns)  # one private BN in H for every BN of F
    f_bn_ids = {id(v) for l in f_bns for v in l.weights}
    h_bn_ids = {id(v) for l in h_bns for v in l.weights}
    assert not f_bn_ids & h_bn_ids
    assert {id(v) for v in f_only} <= f_bn_ids
    assert all(not l.name.startswith("h_") for l in t.f.layers)


def test_bn_moving_statistics_diverge_after_training():
    t = make_trainer()
    t.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = batch(32)
    t.fit(x, y, batch_size=16, epochs=2, verbose=0)
    f_bns = [l for l in t.f.layers if isinstance(l, keras.layers.BatchNormalization)]
    # The first BN reads the shared stem conv's output, identical in F and H.
    first, rest = f_bns[0], f_bns[1:]
    np.testing.assert_allclose(first.moving_mean.numpy(), t.h.get_layer("h_" + first.name).moving_mean.numpy(),
                               rtol=1e-5, atol=1e-6)
    for f_bn in rest:
        h_bn = t.h.get_layer("h_" + f_bn.name)
        assert not np.allclose(f_bn.moving_mean.numpy(), h_bn.moving_mean.numpy())
        assert not np.allclose(f_bn.moving_variance.numpy(), h_bn.moving_variance.numpy())


@pytest.fixture
def float64():
    """Exact-comparison tests run in float64, so that graph-vs-eager kernel
    differences (~1e-5 in float32) cannot mask or fake a mismatch."""
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx("float32")


def independent_grads(model, variables, x, y):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    return [g.numpy() for g in tape.gradient(loss, variables)]


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
def test_applied_update_is_the_weighted_average_of_gradients(lam, float64):
    t = make_trainer(aux_lambda=lam)
    t.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    x, y = batch()
    x = x.astype("float64")
    shared, f_only, h_only = split_variables(t.f, t.h)
    assert shared[0].dtype == "float64"
    g1 = independent_grads(t.f, shared + f_only, x, y)
    g2 = independent_grads(t.h, shared + h_only, x, y)
    before = [v.numpy().copy() for v in shared + f_only + h_only]
    t.train_on_batch(x, y)
    applied = [b - v.numpy() for b, v in zip(before, shared + f_only + h_only)]  # lr = 1
    n, m = len(shared), len(f_only)
    for i in range(n):
        np.testing.assert_allclose(applied[i], (g1[i] + lam * g2[i]) / (1 + lam), rtol=0, atol=1e-5)
    for i in range(m):
        np.testing.assert_allclose(applied[n + i], g1[n + i], rtol=0, atol=1e-5)
    for i in range(len(h_only)):
        np.testing.assert_allclose(applied[n + m + i], g2[n + i], rtol=0, atol=1e-5)
    # The combination is not trivially one of the two gradients.
    assert not np.allclose(g1[0], g2[0], atol=1e-5)


def test_fit_traces_once_and_logs_f_and_h():
    t = make_trainer()
    t.compile(metrics=["accuracy"])
    x, y = batch(64)
    history = t.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_data=(x, y))
    assert t.trace_count == 1
    assert {"loss", "accuracy", "h_loss", "h_accuracy", "val_loss", "val_accuracy"} <= set(history.history)
    assert "val_h_loss" not in history.history
    assert np.isfinite(history.history["h_loss"]).all()


@pytest.fixture(scope="module")
def fitted():
    """A plain trainer (aux_lambda=0.5) after one epoch on batch(32), and that batch: shared by the tests
    that only read it (predict, evaluate, save), so that its training step is traced once."""
    keras.utils.set_random_seed(1234)  # module fixtures are set up before the per-test seed
    t = make_trainer(aux_lambda=0.5)
    t.compile()
    x, y = batch(32)
    t.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return t, x, y


def test_evaluate_and_predict_use_f_only(fitted):
    t, x, y = fitted
    np.testing.assert_allclose(t.predict(x, verbose=0), t.f.predict(x, verbose=0), rtol=1e-6)
    logs = t.evaluate(x, y, verbose=0, return_dict=True)
    f = keras.Model(t.f.inputs, t.f.outputs)  # F's layers and weights, compiled apart (t.f stays as it was)
    f.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    ref = f.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert logs["accuracy"] == pytest.approx(ref["accuracy"])


def test_f_saves_alone_without_any_trace_of_h(tmp_path):
    t = make_trainer(plain=False)
    t.compile()
    x, y = batch(32)
    t.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "f.keras")
    t.f.save(path)
    with zipfile.ZipFile(path) as zf:
        config = zf.read("config.json").decode()
    assert "h_" not in json.dumps([l["config"]["name"] for l in json.loads(config)["config"]["layers"]])
    assert "AuxAdaptor" not in config
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), t.f.predict(x, verbose=0))
    assert len(loaded.weights) == len(t.f.weights)


def test_trainer_round_trips_through_keras_file_with_sharing(fitted, tmp_path):
    t, x, _ = fitted
    path = str(tmp_path / "trainer.keras")
    t.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, AGTrainer) and loaded.aux_lambda == 0.5
    np.testing.assert_array_equal(loaded.f.predict(x, verbose=0), t.f.predict(x, verbose=0))
    np.testing.assert_array_equal(loaded.h.predict(x, verbose=0), t.h.predict(x, verbose=0))
    shared, _, _ = split_variables(loaded.f, loaded.h)
    assert len(shared) == len(split_variables(t.f, t.h)[0])


def test_lambda_zero_trains_h_without_touching_f(float64):
    t = make_trainer(aux_lambda=0.0)
    t.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    x, y = batch()
    x = x.astype("float64")
    shared, f_only, h_only = split_variables(t.f, t.h)
    g1 = independent_grads(t.f, shared, x, y)
    before = [v.numpy().copy() for v in shared + h_only]
    t.train_on_batch(x, y)
    np.testing.assert_allclose(before[0] - shared[0].numpy(), g1[0], rtol=0, atol=1e-5)
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(before[len(shared):], h_only))


def test_trainer_requires_a_common_input():
    f = agq_keras.build("resnet20", num_classes=4, input_shape=SHAPE)
    g = agq_keras.build("resnet20", num_classes=4, input_shape=SHAPE)
    with pytest.raises(ValueError, match="same Input tensor"):
        AGTrainer(f, g)


def test_fit_refuses_labels_a_sparse_loss_cannot_take():
    """issue 31, row 14: out-of-range class ids, one-hot rows and fractional labels are refused before any step,
    in one line naming what is allowed (they used to reach TensorFlow as an InvalidArgumentError)."""
    trainer = agq_keras.build("resnet20", plain=True, aux=True, w_bits=2, a_bits=2, num_classes=10,
                              input_shape=(28, 28, 1))
    trainer.compile()
    x = np.zeros((8, 28, 28, 1), "float32")
    cases = [(np.full(8, 12), r"^labels hold values in \[12, 12\]; allowed: 0\.\.9 \(10 classes, F's outputs\)\.$"),
             (np.full(8, -1), r"^labels hold values in \[-1, -1\]; allowed: 0\.\.9"),
             (np.eye(10)[np.arange(8)], r"^labels have shape \(8, 10\): one-hot rows, but the loss \(sparse "
                                        r"cross-entropy, the default\) takes class ids 0\.\.9: pass labels\.argmax"),
             (np.full(8, 2.5), r"^labels hold values that are not class ids \(dtype float64, e\.g\. \[2\.5\]\); "
                               r"allowed: whole numbers 0\.\.9\.$")]
    for y, match in cases:
        with pytest.raises(ValueError, match=match):
            trainer.fit(x, y, epochs=1, verbose=0)
        with pytest.raises(ValueError, match=match):
            trainer.evaluate(x, y, verbose=0)
    assert trainer.optimizer.iterations.numpy() == 0  # refused before any step
    trainer.fit(x, np.arange(8), epochs=1, verbose=0)  # class ids in range train
    assert trainer.optimizer.iterations.numpy() == 1
