"""The Table 3 baselines: additional losses (eq. 3) and jointly trained KD (eq. 4)."""

import numpy as np
import pytest
import tensorflow as tf
import keras

import agq_keras
from agq_keras.training import baselines

SHAPE = (8, 8, 1)
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n,) + SHAPE).astype("float32"), rng.integers(0, 4, n).astype("int32")


def f_model(plain=True, bits=2):
    return agq_keras.build("resnet20", plain=plain, num_classes=4, input_shape=SHAPE, w_bits=bits, a_bits=bits)


@pytest.mark.parametrize("plain", [True, False])
def test_additional_losses_objective_is_eq3(plain):
    t = baselines.additional_losses_trainer(f_model(plain), alpha=0.01)
    assert len(t.f_train.outputs) == 3  # F + one head per downsampling block (stage 2 and 3 of resnet20)
    t.compile()
    x, y = data()
    loss_f, loss_h, y_f, _ = t.objectives(x, y, training=False)
    outs = t.f_train(x, training=False)
    expected = CE(y, outs[0]) + 0.01 * (CE(y, outs[1]) + CE(y, outs[2]))
    assert loss_h is None
    np.testing.assert_allclose(float(loss_f), float(expected), rtol=1e-5)
    np.testing.assert_allclose(y_f.numpy(), t.f(x, training=False).numpy(), rtol=1e-5, atol=1e-6)
    head = t.f_train.get_layer("auxloss1_classifier")
    before = head.kernel.numpy().copy()
    hist = t.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0]) and t.trace_count == 1
    assert not np.allclose(before, head.kernel.numpy())  # the heads are trained
    assert not any(l.name.startswith("auxloss") for l in t.f.layers)  # F (deployed) has no heads


def test_kd_objectives_are_eq4_and_both_networks_learn():
    f = f_model()
    teacher = f_model(bits=32)
    t = baselines.kd_trainer(f, teacher, beta=1.0)
    shared, f_only, h_only = t.variable_groups()
    assert shared == [] and len(h_only) == len(teacher.trainable_variables)
    assert all(l.weight_bits == 32 for l in teacher.layers if isinstance(l, agq_keras.QConv2D))
    t.compile()
    x, y = data()
    loss_f, loss_h, y_f, y_t = t.objectives(x, y, training=False)
    z_f, z_t = f(x, training=False), teacher(x, training=False)
    distill = 0.5 * tf.reduce_mean(tf.square(z_f - z_t))
    np.testing.assert_allclose(float(loss_f), float(CE(y, z_f) + distill), rtol=1e-5)
    np.testing.assert_allclose(float(loss_h), float(CE(y, z_t) + distill), rtol=1e-5)
    kernel_f = f.get_layer("stage2_block1_conv1").kernel
    kernel_t = teacher.get_layer("stage2_block1_conv1").kernel
    before_f, before_t = kernel_f.numpy().copy(), kernel_t.numpy().copy()
    hist = t.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0]) and np.isfinite(hist.history["h_loss"][0])
    assert not np.allclose(before_f, kernel_f.numpy()) and not np.allclose(before_t, kernel_t.numpy())


def test_kd_student_gradient_includes_distillation():
    f, teacher = f_model(), f_model(bits=32)
    t = baselines.kd_trainer(f, teacher, beta=2.0)
    t.compile()
    x, y = data(8)
    _, f_only, _ = t.variable_groups()
    with tf.GradientTape() as tape:
        loss_f, _, _, _ = t.objectives(x, y, training=False)
    g = tape.gradient(loss_f, f_only)
    with tf.GradientTape() as tape:
        z_f = f(x, training=False)
        ref = CE(y, z_f) + 2.0 * 0.5 * tf.reduce_mean(tf.square(z_f - tf.stop_gradient(teacher(x, training=False))))
    g_ref = tape.gradient(ref, f_only)
    for a, b in zip(g, g_ref):
        if a is not None:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


def test_kd_needs_positive_beta_and_same_input():
    with pytest.raises(ValueError, match="kd_beta"):
        baselines.kd_trainer(f_model(), f_model(bits=32), beta=0.0)
    other = agq_keras.build("resnet20", num_classes=4, input_shape=(16, 16, 1), w_bits=32, a_bits=32)
    with pytest.raises(ValueError, match="same input shape"):
        baselines.kd_trainer(f_model(), other)


def test_trainers_round_trip(tmp_path):
    x, _ = data(4)
    for t in (baselines.additional_losses_trainer(f_model()), baselines.kd_trainer(f_model(), f_model(bits=32))):
        t.save(tmp_path / "t.keras")
        t2 = keras.models.load_model(tmp_path / "t.keras")
        np.testing.assert_allclose(t2.f(x).numpy(), t.f(x).numpy(), rtol=1e-5, atol=1e-6)
        assert (t2.f_train is None) == (t.f_train is None) and t2.kd_weight == t.kd_weight
