"""The AG step under tf.distribute.MirroredStrategy on two logical CPU devices equals one device.

Logical devices must be configured before TensorFlow initialises, so the check runs in a
subprocess. Each replica receives the same half-batch A (the global batch is [A; A]), so the
per-replica BatchNorm statistics equal the single-device ones on A and the all-reduced gradient
must equal the single-device gradient on A; the logged losses (F's and H's, training and
validation) must equal the single-device ones, and so must BatchNorm re-estimation.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # real training runs: CI runs them with -m slow (see README)

SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import agq_keras
    from agq_keras.training import AGTrainer
    from agq_keras.training.baselines import kd_trainer
    from agq_keras.training.callbacks import BNReestimation
    from agq_keras.training.ssp import SSP

    mode = sys.argv[1]
    rng = np.random.default_rng(0)
    xa = rng.random((4, 8, 8, 1)).astype("float32")
    ya = rng.integers(0, 4, 4).astype("int32")

    def train(strategy, x, y):
        keras.utils.set_random_seed(1)
        with strategy.scope():
            t = agq_keras.build("resnet20", plain=True, aux=True, num_classes=4, input_shape=(8, 8, 1))
            if mode == "ssp":
                t = AGTrainer(t.f, t.h, ssp=SSP("block", wa=True, delta0=0.5, decay_epoch=1, seed=2))
            else:  # KD: a full-precision teacher, mutual distillation
                teacher = agq_keras.build("resnet20", plain=True, w_bits=32, a_bits=32, num_classes=4,
                                          input_shape=(8, 8, 1))
                t = kd_trainer(t.f, teacher, beta=1.0)
            t.compile(optimizer=keras.optimizers.SGD(0.1))
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x)).repeat(3)
        init = [v.numpy() for v in t.f.weights + t.h.weights]
        val = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))
        reest = BNReestimation(tf.data.Dataset.from_tensor_slices(xa).batch(2), num_batches=2)
        logs = t.fit(ds, epochs=1, verbose=0, validation_data=val, callbacks=[reest]).history
        stats = [v.numpy() for l in t.f.layers if isinstance(l, keras.layers.BatchNormalization)
                 for v in (l.moving_mean, l.moving_variance)]
        return init, [v.numpy() for v in t.f.weights + t.h.weights], logs, stats

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    init1, one, logs1, stats1 = train(tf.distribute.get_strategy(), xa, ya)
    init2, two, logs2, stats2 = train(mirrored, np.concatenate([xa, xa]), np.concatenate([ya, ya]))
    assert all(np.array_equal(a, b) for a, b in zip(init1, init2))  # same starting point
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(one, two))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(one, init1))
    print("MAXDIFF", worst, "MOVED", moved)
    assert moved > 1e-2, moved  # three SGD steps changed the weights a lot ...
    assert worst < 1e-3 * moved, (worst, moved)  # ... and identically on one and on two devices
    for key in ("loss", "h_loss", "val_loss"):  # the global batch's losses, not a replica's share
        print(key, logs1[key], logs2[key])
        assert np.allclose(logs1[key], logs2[key], rtol=1e-4), (key, logs1[key], logs2[key])
    # BN re-estimation (the same two batches of A on both) under the strategy
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(stats1, stats2)) < 1e-4
    print("OK")
""")


# the AG step with SSP draws (every replica draws the same); the KD baseline's step (its distillation term)
@pytest.mark.parametrize("mode", ["ssp", "kd"])
def test_mirrored_two_cpus_matches_one_device(tmp_path, mode):
    script = tmp_path / "mirrored.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}  # agq_keras: the installed package
    out = subprocess.run([sys.executable, str(script), mode], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, (out.stdout[-2000:], out.stderr[-3000:])
