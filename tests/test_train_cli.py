"""End-to-end runs: outputs in the workdir, the CLI, bad input gives a clear error and no outputs."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from agq_keras.configs.default import get_config
from agq_keras.experiments import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def tiny(**overrides):
    c = get_config()
    c.train_subset, c.test_subset, c.epochs, c.batch_size, c.verbose = 64, 64, 1, 32, 0
    for k, v in overrides.items():
        c[k] = v
    return c


def test_run_writes_all_outputs(tmp_path):
    wd = str(tmp_path / "run")
    metrics = run.run(tiny(ssp=True, ssp_decay_epoch=1), wd)
    assert sorted(os.listdir(wd)) == ["convergence.png", "f.keras", "logs", "metrics.json", "trainer.keras"]
    saved = json.load(open(os.path.join(wd, "metrics.json")))
    assert saved["f"] == metrics["f"] and 0 <= saved["f"]["top1"] <= saved["f"]["top5"] <= 1
    assert "h" in saved and len(saved["history"]["val_accuracy"]) == 1
    assert open(os.path.join(wd, "convergence.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert any(f.startswith("events") for _, _, fs in os.walk(os.path.join(wd, "logs")) for f in fs)
    f = keras.models.load_model(os.path.join(wd, "f.keras"))
    assert not any(l.name.startswith("h_") for l in f.layers)
    t = keras.models.load_model(os.path.join(wd, "trainer.keras"))
    assert t.h is not None and t.ssp is not None
    x = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(t.f(x).numpy(), f(x).numpy(), rtol=1e-5, atol=1e-5)


def test_two_stage_recipe_loads_stage1_by_name(tmp_path, monkeypatch, capsys):
    """Also: without matplotlib (the import blocked) both stages run to the end; each stage says in one
    warning line that its convergence.png was not written."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    wd = str(tmp_path / "run")
    run.run(tiny(aux=False, pretrain_epochs=1, pretrain_learning_rate=0.05), wd)
    assert sorted(os.listdir(wd)) == ["f.keras", "logs", "metrics.json", "stage1", "trainer.keras"]
    assert "convergence.png" not in os.listdir(os.path.join(wd, "stage1"))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "matplotlib" in line]
    assert len(warnings) == 2 and all(w.startswith("warning: convergence.png not written") for w in warnings)
    assert os.path.isfile(os.path.join(wd, "stage1", "f.keras"))
    stage1 = keras.models.load_model(os.path.join(wd, "stage1", "f.keras"))
    assert all(l.weight_bits == 32 for l in stage1.layers if hasattr(l, "weight_bits"))
    # stage 2 started from stage 1: run stage 2 for 0 steps by loading the same weights by name
    c = tiny(aux=False)
    t = run.make_trainer(c, 10, (28, 28, 1))
    copied = run.load_by_name(stage1, t.f)
    # every weight but the integer head's two static ranges (the pool's map and the logits; first_last_bits=8
    # in the default config), which stage 1's full-precision F has not: stage 2's first training batch sets them
    have = {(layer.name, v.name) for layer in stage1.layers for v in layer.weights}
    left = [(layer.name, v.name) for layer in t.f.layers for v in layer.weights if (layer.name, v.name) not in have]
    assert left == ([("pool", "top"), ("logits_q", "top")] if c.first_last_bits == 8 else []), left
    assert copied == len(t.f.weights) - len(left)
    np.testing.assert_array_equal(t.f.get_layer("stage2_block1_conv1").kernel.numpy(),
                                  stage1.get_layer("stage2_block1_conv1").kernel.numpy())


BAD = [
    ({"ssp": True, "ssp_delta0": 1.5, "ssp_decay_epoch": 1}, "delta0"),
    ({"ssp": True, "ssp_delta0": -0.5, "ssp_decay_epoch": 1}, "delta0"),
    ({"ssp": True, "ssp_decay_epoch": 5}, "beyond the run"),
    ({"baseline": "kd"}, "aux=False"),
    ({"strategy": "gpu"}, "strategy"),
    ({"batch_size": 0}, "batch_size"),
]


@pytest.mark.parametrize("overrides,match", BAD)
def test_bad_config_values(tmp_path, overrides, match):
    wd = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        run.run(tiny(**overrides), str(wd))
    assert not wd.exists()


def test_bad_workdir_and_checkpoint(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        run.run(tiny(), str(file))
    corrupt = tmp_path / "trainer.keras"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    wd = tmp_path / "run"
    with pytest.raises(ValueError, match="is not a .keras zip archive"):
        run.run(tiny(init_checkpoint=str(corrupt)), str(wd))
    assert not wd.exists()


class Explode(keras.callbacks.Callback):
    """Makes the run diverge in its second epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            self.model.optimizer.learning_rate.assign(1e38)


def test_diverged_run_says_so_and_keeps_last_good_backup(tmp_path):
    wd = tmp_path / "run"
    with pytest.raises(run.DivergedError, match="diverged"):
        run.run(tiny(epochs=3, aux=False, train_subset=128), str(wd), extra_callbacks=[Explode()])
    assert not (wd / "f.keras").exists() and not (wd / "metrics.json").exists()
    meta = json.load(open(wd / "backup" / "training_metadata.json"))
    assert meta["epoch"] == 1  # the last good state: after epoch 1
    f = run.make_trainer(tiny(aux=False), 10, (28, 28, 1))
    f.load_weights(str(wd / "backup" / "latest.weights.h5"))
    assert all(np.all(np.isfinite(v.numpy())) for v in f.weights)


def test_cli_default_config(tmp_path):
    """The CLI runs the default config to the end, named by its bare name from a folder outside the
    repository: the installed package's config (the README's path form: tests/test_bad_inputs.py, which
    also has the CLI's bad inputs)."""
    script = os.path.join(ROOT, "scripts", "train.py")
    wd = tmp_path / "cli"
    ok = subprocess.run([sys.executable, script, "--config=default.py", f"--workdir={wd}",
                         "--config.train_subset=64", "--config.test_subset=64", "--config.epochs=1",
                         "--config.verbose=0"], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "F test top-1:" in ok.stdout and (wd / "f.keras").exists()
