"""End-to-end runs: outputs in the workdir, the CLI, bad input gives a clear error and no outputs."""

import json
import os
import re
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
    assert sorted(os.listdir(wd)) == [".lock", "convergence.png", "f.keras", "logs", "metrics.json", "run_config.json",
                                      "trainer.keras"]
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


@pytest.mark.slow  # two training stages (about 12 s)
def test_two_stage_recipe_loads_stage1_by_name(tmp_path, monkeypatch, capsys):
    """Also: without matplotlib (the import blocked) both stages run to the end; each stage says in one
    warning line that its convergence.png was not written."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    wd = str(tmp_path / "run")
    run.run(tiny(aux=False, pretrain_epochs=1, pretrain_learning_rate=0.05), wd)
    assert sorted(os.listdir(wd)) == [".lock", "f.keras", "logs", "metrics.json", "run_config.json", "stage1",
                                      "trainer.keras"]
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


# -- the workdir belongs to one config, and one live run holds it (agq_keras.training.workdir) --------------------
def test_workdir_of_another_config_is_refused(tmp_path):
    """Before anything is built or written: one line naming the keys that differ; the workdir is untouched."""
    from agq_keras.training import workdir as workdirs

    wd = str(tmp_path / "run")
    workdirs.claim(wd, tiny())
    workdirs.release(wd)
    before = sorted(os.listdir(wd))
    with pytest.raises(ValueError, match=r"^workdir '.+run' belongs to a run of another config \(config\.w_bits: 2 "
                                         r"there, 4 now\): rerun with its config to resume or repeat it, or give a new "
                                         r"--workdir \(or delete that folder\) to start afresh\.$"):
        run.run(tiny(w_bits=4), wd)
    assert sorted(os.listdir(wd)) == before == [".lock", "run_config.json"]
    assert workdirs.differences(workdirs.saved_config(wd), tiny(verbose=2, data_dir="/elsewhere")) == []
    # a finished run written before run_config.json existed: its metrics.json's config counts
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.json").write_text(json.dumps({"config": tiny().to_dict()}))
    with pytest.raises(ValueError, match=r"config\.arch: 'resnet20' there, 'resnet32' now; config\.epochs: 1 there, "
                                         r"3 now\)"):
        workdirs.check(str(old), tiny(arch="resnet32", epochs=3))


def test_a_live_run_holds_its_workdir(tmp_path):
    """Another run's lock (flock is per open file, so a second open in this process stands for another process)
    refuses the run in one line with that run's pid; once it is dropped (the run ended or was killed: the system
    drops it), the workdir is free."""
    import fcntl

    from agq_keras.training import workdir as workdirs

    wd = tmp_path / "run"
    wd.mkdir()
    with open(wd / ".lock", "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.write("4242")
        other.flush()
        with pytest.raises(ValueError, match=r"^workdir '.+run' is in use by another run \(pid 4242\): wait for it "
                                             r"to finish, or give another --workdir\.$"):
            run.run(tiny(), str(wd))
    assert os.listdir(wd) == [".lock"]
    workdirs.check(str(wd), tiny())  # the other run is gone: this process takes the lock
    assert (wd / ".lock").read_text() == str(os.getpid())
    workdirs.release(str(wd))


@pytest.mark.slow
def test_cli_workdir_integrity(tmp_path):
    """issue 31, rows 1, 3 and 13, through the CLI: a second run into a live run's workdir is refused; Ctrl-C
    says what the workdir keeps; rerunning with another config is refused in one line (no mix of two runs); the
    same command resumes and says from which epoch."""
    import signal
    import time

    wd = tmp_path / "run"
    env = {**ENV, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config=default.py", f"--workdir={wd}",
            "--config.train_subset=256", "--config.test_subset=64", "--config.epochs=6"]
    first = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (wd / "backup" / "progress.json").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert (wd / "backup" / "progress.json").exists(), first.communicate()[1][-2000:]
    second = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert second.returncode == 1 and second.stderr.strip().splitlines() == [
        f"error: workdir '{wd}' is in use by another run (pid {first.pid}): wait for it to finish, or give another "
        "--workdir."], second.stderr[-2000:]
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, err[-2000:]
    note, last = err.strip().splitlines()[-2:]
    assert last == "error: interrupted (Ctrl-C); no half-written file was left.", err[-2000:]
    done = re.fullmatch(rf"{re.escape(str(wd))} keeps backup/ \(([1-5]) finished epoch\(s\) of 6\) and logs/: rerun "
                        r"the same command to resume\.", note)
    assert done, err[-2000:]
    other = subprocess.run(args + ["--config.w_bits=4"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert other.returncode == 1 and other.stderr.strip().splitlines() == [
        f"error: workdir '{wd}' belongs to a run of another config (--config.w_bits: 2 there, 4 now): rerun with its "
        "config to resume or repeat it, or give a new --workdir (or delete that folder) to start afresh."], other.stderr
    same = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert same.returncode == 0, same.stderr[-2000:]
    n = int(done.group(1))
    assert f"Resuming {wd} from epoch {n + 1} of 6 (its backup/ holds {n} finished epoch(s))." in same.stdout
    assert "\x1b[" not in same.stdout and "━" not in same.stdout  # not a terminal: one line per epoch, no bars
    assert len(json.load(open(wd / "metrics.json"))["history"]["loss"]) == 6


def test_decays_beyond_the_run_are_said(capsys):
    """issue 31, row 12: a schedule that never applies is not an error (a short trial of a config keeps its
    schedule) but is said in one line; a schedule inside the run says nothing."""
    run._check_schedule(tiny(epochs=1, lr_decay_epochs=(5,)))
    assert capsys.readouterr().out == ("note: config.lr_decay_epochs=(5,): the decay(s) at 5 never apply in a run of "
                                       "1 epoch(s) (a decay at e lowers the rate from epoch e + 1 on).\n")
    run._check_schedule(tiny(epochs=6, lr_decay_epochs=(5,)))
    assert capsys.readouterr().out == ""
