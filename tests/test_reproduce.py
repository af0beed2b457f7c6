"""The Table 6 reproduction driver: the plan, the configs, and an end-to-end tiny run (two configs,
two steps, one epoch) whose report is rendered from the metrics; re-running skips finished runs."""

import json
import os
import re
import subprocess
import sys

import pytest

from agq_keras.experiments import reproduce
from agq_keras.experiments import run as runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plan_covers_table6_twin_and_inits_come_first():
    runs = reproduce.plan("fmnist6", seeds=3, deep_arch="resnet56")
    names = [r.name for r in runs]
    assert len(names) == len(set(names))
    for method in ("fp_residual", "residual", "residual_ag", "residual_ag_ssp", "plain", "plain_ag",
                   "plain_ag_ssp", "plain_2x"):
        assert any(r.arch == "resnet20" and r.method == method for r in runs), method
    for m in ("plain", "plain_ag"):
        assert sorted(r.seed for r in runs if r.arch == "resnet20" and r.method == m) == [0, 1, 2]
    assert {r.method for r in runs if r.arch == "resnet56"} >= {"residual", "plain", "plain_ag"}
    for i, r in enumerate(runs):
        if r.init_from:
            assert r.init_from in names[:i], r.name


@pytest.mark.parametrize("kwargs, match", [
    (dict(table="table6"), "table='table6'.*fmnist6"),
    (dict(seeds=0), "seeds=0"),
    (dict(deep_arch="resnet18"), "deep_arch='resnet18'.*resnet32"),
])
def test_plan_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reproduce.plan(**kwargs)


def test_select_rejects_unknown_names():
    runs = reproduce.plan()
    assert [r.name for r in reproduce.select(runs, ["resnet20_plain_s1"])] == ["resnet20_plain_s1"]
    with pytest.raises(ValueError, match="resnet20_nope_s0"):
        reproduce.select(runs, ["resnet20_nope_s0"])


@pytest.mark.parametrize("method, epochs, want_epochs, want_decay, want_ssp", [
    ("plain_ag_ssp", 0, 7, (5, 6), 4),        # the recipe itself
    ("plain_2x", 0, 14, (10, 12), 8),         # compute-matched: twice the epochs, schedule scaled
    ("plain_ag_ssp", 1, 1, (1,), 1),
    ("residual_ag", 14, 14, (10, 12), 8),
])
def test_make_config_scales_the_recipe_and_validates(method, epochs, want_epochs, want_decay, want_ssp):
    c = reproduce.make_config(reproduce.Run("resnet20", method), "/w", epochs=epochs)
    assert (c.epochs, tuple(c.lr_decay_epochs), c.ssp_decay_epoch) == (want_epochs, want_decay, want_ssp)
    assert c.pretrain_epochs == 0 and (c.w_bits, c.a_bits) == (2, 2)
    assert c.init_checkpoint == os.path.join("/w", reproduce.Run("resnet20", method).init_from, "f.keras")
    runner.validate(c)


def test_full_precision_config():
    c = reproduce.make_config(reproduce.Run("resnet32", "fp_plain"), "/w")
    assert (c.w_bits, c.a_bits, c.plain, c.aux, c.init_checkpoint) == (32, 32, True, False, "")


def test_deltas_and_spread():
    def g(top1, loss=0.5):
        return {"top1": top1, "top5": 99.0, "train_loss": loss, "val_top1": [], "epochs": 1,
                "train_subset": 1, "wall_s": 1.0, "seed": 0}

    groups = {("resnet20", "plain"): [g(80.0, 0.5), g(82.0, 0.5), g(81.0, 0.5)],
              ("resnet20", "plain_ag"): [g(85.0, 0.4), g(86.0, 0.4), g(84.0, 0.4)],
              ("resnet20", "plain_ag_ssp"): [g(85.5, 0.4)]}
    rows = {d["comparison"]: d for d in reproduce.deltas(groups)}
    ag = rows["plain+AG − plain"]
    assert ag["delta"] == pytest.approx(4.0) and ag["spread"] == pytest.approx(1.0)
    assert ag["verdict"] == "higher by more than the seed spread" and ag["paper"] == 3.3
    assert ag["train_loss_change"] == pytest.approx(-0.2)
    ssp = rows["plain+AG+SSP − plain+AG"]
    assert ssp["delta"] == pytest.approx(0.5) and ssp["verdict"] == "within the seed spread"


@pytest.mark.parametrize("path, err", [("out.txt", ValueError), ("no/such/folder/results.md", FileNotFoundError)])
def test_bad_results_path(tmp_path, path, err):
    with pytest.raises(err, match="results"):
        reproduce.check_results_path(str(tmp_path / path))


def test_missing_init_checkpoint_is_a_clear_error(tmp_path):
    runs = reproduce.select(reproduce.plan(), ["resnet20_plain_s0"])
    with pytest.raises(FileNotFoundError, match="resnet20_fp_plain_s0"):
        reproduce.run_all(runs, str(tmp_path), train_subset=128, test_subset=64, epochs=1, verbose=0)


def test_end_to_end_tiny_and_resume(tmp_path):
    workdir, results = str(tmp_path / "runs"), str(tmp_path / "results.md")
    only = ["resnet20_fp_plain_s0", "resnet20_plain_s0"]
    kwargs = dict(train_subset=256, test_subset=128, epochs=1, verbose=0)
    runs = reproduce.plan()
    status = reproduce.run_all(reproduce.select(runs, only), workdir, **kwargs)
    assert status == {n: "trained" for n in only}
    out = reproduce.write_results(runs, workdir, results, command="pytest")
    text = open(results).read()
    with open(out["png"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.basename(out["png"]) in text
    for name, label in (("resnet20_fp_plain_s0", "full precision (plain)"), ("resnet20_plain_s0", "plain 2-bit")):
        with open(os.path.join(workdir, name, "metrics.json")) as fh:
            m = json.load(fh)
        row = re.search(rf"\| resnet20 \| {re.escape(label)} \| 1 \| 1 \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|",
                        text)
        assert row, label
        assert float(row.group(1)) == pytest.approx(100 * m["f"]["top1"], abs=0.006)
        assert float(row.group(2)) == pytest.approx(100 * m["f"]["top5"], abs=0.006)
        assert float(row.group(3)) == pytest.approx(m["history"]["loss"][-1], abs=6e-5)
    # the 2-bit run started from the full-precision F
    with open(os.path.join(workdir, "resnet20_plain_s0", "metrics.json")) as fh:
        assert json.load(fh)["config"]["init_checkpoint"].endswith(os.path.join("resnet20_fp_plain_s0", "f.keras"))
    mtime = os.path.getmtime(os.path.join(workdir, "resnet20_plain_s0", "metrics.json"))
    assert reproduce.run_all(reproduce.select(runs, only), workdir, **kwargs) == {n: "skipped" for n in only}
    assert os.path.getmtime(os.path.join(workdir, "resnet20_plain_s0", "metrics.json")) == mtime
    # the script: report only, and a bad flag value is a one-line error, not a trace
    script = os.path.join(ROOT, "scripts", "reproduce.py")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([sys.executable, script, f"--workdir={workdir}", f"--results={results}",
                          "--report_only"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "--report_only" in open(results).read()
    res = subprocess.run([sys.executable, script, f"--workdir={workdir}", "--deep_arch=resnet99"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 1 and "deep_arch='resnet99'" in res.stderr and "Traceback" not in res.stderr
