"""Smoke test of `python -m benchmarks.run` in its tiny mode: it runs end to end and writes every
figure to its JSON (no speed is asserted: targets belong to the benchmark report, not to tests)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, *flags):
    """From the repository root, as docs/benchmarks.md runs it (benchmarks/ is the repository's folder;
    agq_keras is the installed package); outputs go to tmp_path (``--output``)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "benchmarks.run", *flags], capture_output=True, text=True, env=env,
                          cwd=ROOT)


@pytest.mark.slow  # trains, converts and times two nets in a subprocess (about 30 s)
def test_smoke_mode_writes_every_figure(tmp_path):
    out = tmp_path / "b.json"
    res = _run(tmp_path, "--archs=resnet20", "--variants=float F,2-bit F", "--steps=1", "--warmup=1",
               "--deploy=resnet20", "--deploy_runs=2", "--pipeline_batches=2", "--nomemory", f"--output={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    steps = r["train_step"]["resnet20"]
    assert set(steps["steps"]) == {"float F", "2-bit F"}
    assert all(v["images_per_s"] > 0 for v in steps["steps"].values())
    ratio = steps["steps"]["2-bit F"]["median_step_s"] / steps["steps"]["float F"]["median_step_s"]
    assert steps["ratios"] == {"quantized/float step time": ratio}
    assert steps["pipeline/step images/s"] > 0 and r["input_pipeline"]["images_per_s"] > 0
    d = {row["first_last_bits"]: row for row in r["deployment"]}
    assert set(d) == {8, 16} and all(row["arch"] == "resnet20" for row in d.values())
    assert d[16]["int8_size_bytes"] > d[8]["int8_size_bytes"] > 0  # 8-bit first/last: no repeated inputs
    assert all(row["float32_size_bytes"] > row["int8_size_bytes"] > row["packed_size_bytes"] for row in d.values())
    assert all(row["latency_ms_int8_xnnpack"] > 0 and row["export_peak_rss_mib"] > 0 for row in d.values())
    assert "quantized/float step time" in res.stdout and "int8/float32 size" in res.stdout
    assert not list(tmp_path.glob(".tmp_*"))


def test_bad_flag_is_a_usage_error(tmp_path):
    res = _run(tmp_path, "--variants=float F,nope", "--output=")
    assert res.returncode != 0 and "unknown variant 'nope'" in res.stderr and "Traceback" not in res.stderr


def test_ag_gradients_compare_by_hand():
    """benchmarks/ag_gradients.py's figures on vectors worked out by hand: the update (g1 + lam g2)/(1 + lam)
    and F's share of it (its cosine with g1)."""
    from benchmarks.ag_gradients import compare, group_of

    r = compare(np.array([3.0, 0.0]), np.array([0.0, 4.0]), 1.0)  # orthogonal: the update is (1.5, 2)
    assert r["g1"] == 3.0 and r["g2"] == 4.0 and np.isclose(r["ratio"], 4 / 3) and np.isclose(r["cos"], 0.0)
    assert np.isclose(r["f_share"], 1.5 / 2.5)
    r = compare(np.array([1.0, 1.0]), np.array([-3.0, -3.0]), 0.5)  # opposed: update (-0.5, -0.5) / 1.5
    assert np.isclose(r["cos"], -1.0) and np.isclose(r["f_share"], -1.0)
    assert np.isclose(compare(np.array([2.0, 0.0]), np.array([0.0, 5.0]), 0.0)["f_share"], 1.0)  # lam 0: F alone
    assert [group_of(p) for p in ("stem_conv/kernel", "stage2_block9_conv1/kernel", "classifier/kernel")] == [
        "edges", "stage2", "edges"]


def test_ag_gradients_bad_arch_is_a_usage_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "benchmarks.ag_gradients", "--archs=resnet99", f"--out={tmp_path}"],
                         capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=ROOT)
    assert res.returncode == 2 and "--archs='resnet99': unknown ['resnet99']" in res.stderr
    assert "Traceback" not in res.stderr


def test_bn_swing_ema_evaluation_against_numpy():
    """benchmarks/bn_swing.py's EMA curve: F evaluated with the NumPy moving average of its weights after every
    step (the first step's weights, then m * avg + (1 - m) * w) and BN statistics re-estimated for them; F's own
    variables are put back exactly, so the run goes on from the live weights."""
    import keras
    import pytest
    import tensorflow as tf

    from agq_keras.training.callbacks import reestimate_batch_norm
    from benchmarks.bn_swing import EMAEvaluation

    def net():
        x = keras.Input((4,))
        h = keras.layers.BatchNormalization(momentum=0.9)(keras.layers.Dense(3)(x))
        return keras.Model(x, keras.layers.Dense(2)(keras.layers.ReLU()(h)))

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 4)).astype("float32"), rng.integers(0, 2, 24)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras.utils.set_random_seed(0)
    f = net()
    f.compile(optimizer=keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.6), loss=loss, metrics=["accuracy"])
    after_step = []

    epoch_start = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epoch_start.append([np.array(v.numpy()) for v in self.model.variables])

        def on_train_batch_end(self, batch, logs=None):
            after_step.append([np.array(v.numpy()) for v in self.model.trainable_variables])

        def on_epoch_end(self, epoch, logs=None):  # before EMAEvaluation's
            epoch_end.append([np.array(v.numpy()) for v in self.model.variables])

    epoch_end = []
    ema = EMAEvaluation(train, 2, train)
    f.fit(train, epochs=2, callbacks=[Record(), ema], verbose=0, shuffle=False)
    assert len(ema.loss) == 2 and len(after_step) == 6
    # epoch 2 goes on from F's variables as epoch 1 left them (live weights, running statistics): not the average
    for a, b in zip(epoch_start[1], epoch_end[0]):
        np.testing.assert_array_equal(a, b)
    avg = after_step[0]
    for ws in after_step[1:]:
        avg = [0.6 * a + 0.4 * w for a, w in zip(avg, ws)]
    for v, a in zip(f.trainable_variables, avg):  # (Keras's fit ends with the average in F: finalize_variable_values)
        np.testing.assert_allclose(v.numpy(), a, rtol=1e-5, atol=1e-6)

    def evaluated(weights, trainable):
        g = net()
        g.set_weights(weights)
        for v, a in zip(g.trainable_variables, trainable):
            v.assign(a)
        reestimate_batch_norm(g, train, 2)
        g.compile(loss=loss, metrics=["accuracy"])
        return g.evaluate(train, verbose=0, return_dict=True)

    want = evaluated(epoch_end[1], avg)
    assert ema.loss[-1] == pytest.approx(want["loss"], rel=1e-5)
    assert ema.top1[-1] == pytest.approx(100 * want["accuracy"])
    assert abs(ema.loss[-1] - evaluated(epoch_end[1], after_step[-1])["loss"]) > 1e-4  # not the live weights
    f.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss)
    ema.set_model(f)
    with pytest.raises(ValueError, match="use_ema=True"):
        ema.evaluate()


def test_bn_swing_bad_flags_are_usage_errors(capsys):
    import pytest

    from benchmarks.bn_swing import main

    for argv, message in ((["--ema_momentum=1.5"], "--ema_momentum=1.5 is not allowed; it must be in [0, 1)"),
                          (["--init=f.keras", "--pretrain_epochs=2"], "give one start, not both"),
                          (["--arch=resnet18"], "invalid choice: 'resnet18'")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_table6_time_estimate_sums_epochs_times_steps_times_step_time():
    """benchmarks.table6_time: T = sum over runs of epochs * ceil(images / batch) * the run kind's step time."""
    from types import SimpleNamespace

    from benchmarks.table6_time import cost_key, estimate
    from study import runner

    runs = runner.plan("table6", 1)
    configs = [runner.make_config(r, "unused", verbose=0) for r in runs]
    step_s = {cost_key(c): 1.0 + c.aux + 0.5 * c.ssp + (c.w_bits == 32) for c in configs}
    result = estimate(runs, configs, step_s, 1000)
    assert [row["run"] for row in result["runs"]] == [r.name for r in runs]
    want = sum(c.epochs * -(-1000 // c.batch_size) * step_s[cost_key(c)] for c in configs)
    assert np.isclose(result["total_s"], want) and result["total_s"] > 0
    doubled = {row["run"]: row["epochs"] for row in result["runs"]}
    assert doubled["resnet18_plain_2x_s0"] == 2 * doubled["resnet18_plain_s0"]
    one = SimpleNamespace(epochs=3, batch_size=128, arch="a", plain=True, aux=False, ssp=False, w_bits=2, a_bits=2)
    assert estimate([SimpleNamespace(name="x")], [one], {cost_key(one): 2.0}, 50000)["total_s"] == 3 * 391 * 2.0
