"""BatchNorm re-estimation (agq_keras.training.callbacks.BNReestimation): the statistics equal a NumPy
recomputation over the same batches; only F's BNs move (not H's, not the weights, not quantizer state);
it fires in fit(validation_data=...) and in evaluate; training is unchanged by it; bad arguments."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import agq_keras
from agq_keras import quantizers
from agq_keras.training.callbacks import BNReestimation, reestimate_batch_norm

EPS = (0.01, 0.001)  # the two BNs' epsilons (non-default first, so that it matters)


def small_net(dropout=False):
    """input -> conv -> BN -> ReLU [-> dropout] -> conv -> BN -> dense (valid 3x3 convs)."""
    x = inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, name="conv1")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=EPS[0], name="bn1")(x)
    x = keras.layers.ReLU()(x)
    if dropout:
        x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Conv2D(3, 3, name="conv2")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=EPS[1], name="bn2")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="dense")(x))


def scramble(model, rng):
    """Non-trivial gamma/beta and moving statistics, so that each of them matters."""
    for bn in (model.get_layer("bn1"), model.get_layer("bn2")):
        c = bn.gamma.shape[0]
        bn.gamma.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
        bn.beta.assign(rng.normal(0, 1, c).astype("float32"))
        bn.moving_mean.assign(rng.normal(0, 3, c).astype("float32"))
        bn.moving_variance.assign(rng.uniform(5, 9, c).astype("float32"))


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0.5, 2.0, (n, 6, 6, 2)).astype("float32"), rng.integers(0, 3, n).astype("int32")


def conv_valid(x, kernel, bias):
    k = kernel.shape[0]
    h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
    out = np.zeros((x.shape[0], h, w, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            out += np.einsum("nhwc,cd->nhwd", x[:, i:i + h, j:j + w, :], kernel[i, j])
    return out + bias


def numpy_stats(model, batches):
    """The NumPy reference: forward each batch with batch-statistics BN; average the batch moments."""
    w = {name: [np.asarray(v, np.float64) for v in model.get_layer(name).get_weights()]
         for name in ("conv1", "conv2", "bn1", "bn2")}
    acc = {"bn1": [], "bn2": []}
    for x in batches:
        z1 = conv_valid(np.asarray(x, np.float64), *w["conv1"])
        m1, v1 = z1.mean((0, 1, 2)), z1.var((0, 1, 2))  # np.var: the biased variance
        gamma, beta = w["bn1"][:2]
        y1 = np.maximum(gamma * (z1 - m1) / np.sqrt(v1 + EPS[0]) + beta, 0.0)
        z2 = conv_valid(y1, *w["conv2"])
        acc["bn1"].append((m1, v1))
        acc["bn2"].append((z2.mean((0, 1, 2)), z2.var((0, 1, 2))))
    return {k: (np.mean([m for m, _ in v], 0), np.mean([s for _, s in v], 0)) for k, v in acc.items()}


def bn_stats(model, names=("bn1", "bn2")):
    return {n: (model.get_layer(n).moving_mean.numpy(), model.get_layer(n).moving_variance.numpy()) for n in names}


def assert_stats(got, want):
    for name in want:
        np.testing.assert_allclose(got[name][0], want[name][0], rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got[name][1], want[name][1], rtol=1e-5, atol=1e-5, err_msg=name)


def test_statistics_equal_numpy_over_the_first_batches():
    model = small_net()
    scramble(model, np.random.default_rng(1))
    x, y = data(40)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # 5 batches; the first 3 are used
    weights = [v.numpy() for v in model.trainable_variables]
    assert reestimate_batch_norm(model, ds, num_batches=3) == 3
    want = numpy_stats(model, [x[:8], x[8:16], x[16:24]])
    assert_stats(bn_stats(model), want)  # as computed: no momentum mix with the scrambled old values
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(weights, model.trainable_variables))
    # A fresh iteration each time: the same batches, the same statistics; an x-only dataset works too.
    reestimate_batch_norm(model, tf.data.Dataset.from_tensor_slices(x).batch(8), num_batches=3)
    assert_stats(bn_stats(model), want)


def test_a_bn_called_twice_averages_over_its_calls():
    inputs = keras.Input((5, 3))
    conv, bn = keras.layers.Conv1D(3, 1, name="c"), keras.layers.BatchNormalization(name="shared_bn")
    z1 = conv(inputs)
    z2 = keras.layers.Dense(3, name="d")(bn(z1))
    model = keras.Model(inputs, bn(z2))
    x = np.random.default_rng(2).normal(1.0, 2.0, (6, 5, 3)).astype("float32")
    reestimate_batch_norm(model, tf.data.Dataset.from_tensor_slices(x).batch(6), num_batches=1)
    k, b = (np.asarray(v, np.float64) for v in conv.get_weights())
    a1 = np.asarray(x, np.float64) @ k[0] + b
    g, be = (np.asarray(v, np.float64) for v in bn.get_weights()[:2])
    n1 = g * (a1 - a1.mean((0, 1))) / np.sqrt(a1.var((0, 1)) + bn.epsilon) + be
    kd, bd = (np.asarray(v, np.float64) for v in model.get_layer("d").get_weights())
    a2 = n1 @ kd + bd
    np.testing.assert_allclose(bn.moving_mean.numpy(), (a1.mean((0, 1)) + a2.mean((0, 1))) / 2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), (a1.var((0, 1)) + a2.var((0, 1))) / 2, rtol=1e-5)


def test_ag_trainer_only_fs_bns_move():
    trainer = agq_keras.build("resnet20", plain=True, aux=True, num_classes=10, input_shape=(16, 16, 1),
                              first_last_bits=8)
    f, h = trainer.f, trainer.h
    f_bns = [la for la in f.layers if isinstance(la, keras.layers.BatchNormalization)]
    f_ids = {id(la) for la in f_bns}
    h_bns = [la for la in h.layers if isinstance(la, keras.layers.BatchNormalization) and id(la) not in f_ids]
    assert f_bns and h_bns
    rng = np.random.default_rng(3)
    for bn in f_bns + h_bns:
        bn.moving_mean.assign(rng.normal(0, 1, bn.moving_mean.shape).astype("float32"))
        bn.moving_variance.assign(rng.uniform(1, 2, bn.moving_variance.shape).astype("float32"))
    bn_vars = {id(v) for bn in f_bns for v in (bn.moving_mean, bn.moving_variance)}
    q_state = [v for v in f.non_trainable_variables if id(v) not in bn_vars]  # RangeActivation tops
    assert q_state
    for v in q_state:
        v.assign(1.7)  # a trained range: a training-mode pass outside frozen_state would move it
    x = rng.uniform(0, 1, (16, 16, 16, 1)).astype("float32")
    before = {"weights": [v.numpy() for v in trainer.trainable_variables],
              "h": [(b.moving_mean.numpy(), b.moving_variance.numpy()) for b in h_bns],
              "q": [v.numpy() for v in q_state]}

    # Reference: momentum 0 makes a training-mode BN store its batch moments; two batches, averaged.
    old = [(b.moving_mean.numpy(), b.moving_variance.numpy()) for b in f_bns]
    per_batch = []
    for half in (x[:8], x[8:]):
        for b in f_bns:
            b.momentum = 0.0
        with quantizers.frozen_state():
            f(half, training=True)
        per_batch.append([(b.moving_mean.numpy(), b.moving_variance.numpy()) for b in f_bns])
    for b, (m, v) in zip(f_bns, old):
        b.momentum = 0.9
        b.moving_mean.assign(m)
        b.moving_variance.assign(v)
    assert [v.numpy() for v in q_state] == before["q"]

    cb = BNReestimation(tf.data.Dataset.from_tensor_slices(x).batch(8), num_batches=2)
    cb.set_model(trainer)  # what fit/evaluate do (both are checked on the small net)
    cb.reestimate()
    assert cb.count == 1 and cb.last_num_batches == 2
    for i, b in enumerate(f_bns):
        np.testing.assert_allclose(b.moving_mean.numpy(), (per_batch[0][i][0] + per_batch[1][i][0]) / 2,
                                   rtol=1e-4, atol=1e-5, err_msg=b.name)
        np.testing.assert_allclose(b.moving_variance.numpy(), (per_batch[0][i][1] + per_batch[1][i][1]) / 2,
                                   rtol=1e-4, atol=1e-5, err_msg=b.name)
        assert not np.allclose(b.moving_mean.numpy(), old[i][0])
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before["weights"], trainer.trainable_variables))
    for b, (m, v) in zip(h_bns, before["h"]):
        assert np.array_equal(b.moving_mean.numpy(), m) and np.array_equal(b.moving_variance.numpy(), v)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before["q"], q_state))


def compiled(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def test_fires_in_fit_logs_raw_and_leaves_training_unchanged():
    x, y = data(40)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    xv, yv = data(24, seed=5)
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(12)
    a, b = small_net(dropout=True), small_net(dropout=True)
    for va, vb in zip(a.variables, b.variables):  # also the dropout seed state
        vb.assign(va)
    cb = BNReestimation(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), num_batches=2, log_raw=True,
                        validation_data=val)
    hist = compiled(a).fit(train, validation_data=val, epochs=2, callbacks=[cb], verbose=0).history
    compiled(b).fit(train, epochs=2, verbose=0)  # validation does not touch training either
    assert cb.count == 2 and cb._probe._moments.experimental_get_tracing_count() == 1
    assert len(hist["raw_val_accuracy"]) == len(hist["raw_val_loss"]) == len(hist["val_accuracy"]) == 2
    assert cb.raw_history["raw_val_loss"] == hist["raw_val_loss"]
    # BN statistics never reach a training step: the same weights, bit for bit.
    for va, vb in zip(a.trainable_variables, b.trainable_variables):
        assert np.array_equal(va.numpy(), vb.numpy()), va.path
    # The raw numbers are those of b (no callback: the same weights, the same running statistics, as
    # the callback puts training's own back at each epoch start); after fit, a holds the steadied ones.
    raw = b.evaluate(val, return_dict=True, verbose=0)
    assert hist["raw_val_loss"][-1] == pytest.approx(raw["loss"], rel=1e-6)
    assert hist["raw_val_accuracy"][-1] == pytest.approx(raw["accuracy"], rel=1e-6)
    steady = a.evaluate(val, return_dict=True, verbose=0)
    assert hist["val_loss"][-1] == pytest.approx(steady["loss"], rel=1e-6)
    assert steady["loss"] != pytest.approx(raw["loss"], rel=1e-3)
    # bn1 (before the dropout, which the training-mode pass applies as training does) is the NumPy one.
    assert_stats(bn_stats(a), {"bn1": numpy_stats(a, [x[:8], x[8:16]])["bn1"]})


def test_fires_in_evaluate():
    model = compiled(small_net())
    scramble(model, np.random.default_rng(4))
    x, y = data(40)
    raw = model.evaluate(x, y, batch_size=40, return_dict=True, verbose=0)
    cb = BNReestimation(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), num_batches=5, log_raw=True,
                        validation_data=(x, y))
    steady = model.evaluate(x, y, batch_size=40, return_dict=True, callbacks=[cb], verbose=0)
    assert cb.count == 1
    assert cb.raw_logs == pytest.approx(raw, rel=1e-6)
    assert_stats(bn_stats(model), numpy_stats(model, [x[i:i + 8] for i in range(0, 40, 8)]))
    assert steady["loss"] != pytest.approx(raw["loss"])
    assert model.evaluate(x, y, batch_size=40, return_dict=True, verbose=0) == pytest.approx(steady, rel=1e-6)


@pytest.mark.parametrize("num_batches", [0, -2, 2.5, True, "3", None])
def test_bad_num_batches(num_batches):
    ds = tf.data.Dataset.from_tensor_slices(np.zeros((8, 6, 6, 2), "float32")).batch(2)
    with pytest.raises(ValueError, match=f"num_batches={num_batches!r} is not allowed; it must be a positive"):
        BNReestimation(ds, num_batches=num_batches)


def test_bad_arguments():
    ds = tf.data.Dataset.from_tensor_slices(np.zeros((8, 6, 6, 2), "float32")).batch(2)  # 4 batches
    with pytest.raises(ValueError, match="dataset=NoneType is not allowed; it must be a batched tf.data.Dataset"):
        BNReestimation(None)
    with pytest.raises(ValueError, match="dataset=ndarray is not allowed"):
        BNReestimation(np.zeros((8, 6, 6, 2)))
    with pytest.raises(ValueError, match="holds 4 batch\\(es\\), fewer than num_batches=5; allowed: num_batches <= 4"):
        BNReestimation(ds, num_batches=5)
    with pytest.raises(ValueError, match="log_raw=True needs validation_data"):
        BNReestimation(ds, 2, log_raw=True)
    with pytest.raises(ValueError, match="validation_data is only used with log_raw=True"):
        BNReestimation(ds, 2, validation_data=ds)
    with pytest.raises(ValueError, match="log_raw='yes' is not allowed"):
        BNReestimation(ds, 2, log_raw="yes")
    with pytest.raises(ValueError, match="validation_data=list is not allowed"):
        BNReestimation(ds, 2, log_raw=True, validation_data=[1, 2])
    no_bn = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="has no trainable BatchNormalization layer"):
        BNReestimation(ds, 2).set_model(no_bn)
    inner = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.BatchNormalization(name="inner_bn")], name="blk")
    outer_in = keras.Input((6, 6, 2))
    nested = keras.Model(outer_in, inner(outer_in))
    with pytest.raises(ValueError, match="layer 'blk' of F holds BatchNormalization layer\\(s\\) \\['inner_bn'\\]"):
        BNReestimation(ds, 2).set_model(nested)
    with pytest.raises(ValueError, match="the dataset yielded no batch"):  # unknown cardinality, empty
        reestimate_batch_norm(small_net(), ds.filter(lambda x: False), 2)
    with pytest.raises(ValueError, match="no model set"):
        BNReestimation(ds, 2).reestimate()
