"""The paper study (study/: runner, verdicts, report): the plan, the configs, and an end-to-end tiny run (two configs,
two steps, one epoch) whose report is rendered from the metrics; re-running skips finished runs."""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from agq_keras.experiments import run as experiment
from study import arms, report, runner, verdicts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plan_covers_table6_twin_and_inits_come_first():
    runs = runner.plan("fmnist6", seeds=3, deep_arch="resnet56")
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
    (dict(table="table7"), "table='table7'.*fmnist6.*table6"),
    (dict(seeds=0), "seeds=0"),
    (dict(deep_arch="resnet18"), "deep_arch='resnet18'.*resnet32"),
])
def test_plan_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        runner.plan(**kwargs)


def test_select_rejects_unknown_names():
    runs = runner.plan()
    assert [r.name for r in runner.select(runs, ["resnet20_plain_s1"])] == ["resnet20_plain_s1"]
    with pytest.raises(ValueError, match="resnet20_nope_s0"):
        runner.select(runs, ["resnet20_nope_s0"])


@pytest.mark.parametrize("method, epochs, want_epochs, want_decay, want_ssp", [
    ("plain_ag_ssp", 0, 7, (5, 6), 4),        # the recipe itself
    ("plain_2x", 0, 14, (10, 12), 8),         # compute-matched: twice the epochs, schedule scaled
    ("plain_ag_ssp", 1, 1, (1,), 1),
    ("residual_ag", 14, 14, (10, 12), 8),
])
def test_make_config_scales_the_recipe_and_validates(method, epochs, want_epochs, want_decay, want_ssp):
    c = runner.make_config(arms.Run("resnet20", method), "/w", epochs=epochs)
    assert (c.epochs, tuple(c.lr_decay_epochs), c.ssp_decay_epoch) == (want_epochs, want_decay, want_ssp)
    assert c.pretrain_epochs == 0 and (c.w_bits, c.a_bits) == (2, 2)
    assert c.init_checkpoint == os.path.join("/w", arms.Run("resnet20", method).init_from, "f.keras")
    experiment.validate(c)


def test_full_precision_config():
    c = runner.make_config(arms.Run("resnet32", "fp_plain"), "/w")
    assert (c.w_bits, c.a_bits, c.plain, c.aux, c.init_checkpoint) == (32, 32, True, False, "")
    assert c.deterministic and runner.make_config(arms.Run("det_resnet20", "float"), "/w").deterministic


def _g(top1, loss=0.5, seed=0):
    return {"top1": top1, "top5": 99.0, "raw_top1": top1, "train_loss": loss, "val_top1": [], "raw_val_top1": [],
            "epochs": 1, "train_subset": 1, "wall_s": 1.0, "seed": seed}


# Welch's two-sided p-values of scipy.stats.ttest_ind(a, b, equal_var=False) (scipy 1.17.1, computed once when
# this test was written; scipy is not a dependency): (a, b, p)
WELCH_REFERENCE = (
    ([85.0, 86.0, 84.0], [80.0, 82.0, 81.0], 0.0080499),
    ([85.36, 85.73, 86.22], [83.20, 83.12, 83.78], 0.0020026),
    ([1.0, 2.0, 3.0], [1.5, 2.5, 3.5, 9.0], 0.30202),
    ([0.1, 0.3], [0.2, 0.25, 0.4, 0.1, 0.35], 0.66009),
)


@pytest.mark.parametrize("a,b,p", WELCH_REFERENCE)
def test_welch_p_matches_the_reference(a, b, p):
    test = verdicts.welch(np.mean(a) - np.mean(b), [(np.var(a, ddof=1), len(a)), (np.var(b, ddof=1), len(b))])
    assert test["p"] == pytest.approx(p, rel=1e-4)
    assert test["se"] == pytest.approx(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)))
    # symmetric in the order of the arms; a threshold shifts the null
    back = verdicts.welch(np.mean(b) - np.mean(a), [(np.var(b, ddof=1), len(b)), (np.var(a, ddof=1), len(a))])
    assert back["p"] == pytest.approx(test["p"], rel=1e-12) and back["t"] == pytest.approx(-test["t"])
    shifted = verdicts.welch(np.mean(a) - np.mean(b), [(np.var(a, ddof=1), len(a)), (np.var(b, ddof=1), len(b))],
                              threshold=np.mean(a) - np.mean(b))
    assert shifted["p"] == pytest.approx(1.0)


def test_betainc_against_known_values():
    """I_x(a, b) closed forms: I_x(1, 1) = x, I_x(a, 1) = x^a, I_x(1/2, 1/2) = 2/pi asin(sqrt(x))."""
    for x in (0.001, 0.2, 0.5, 0.73, 0.999):
        assert verdicts._betainc(1.0, 1.0, x) == pytest.approx(x, rel=1e-12)
        assert verdicts._betainc(3.5, 1.0, x) == pytest.approx(x ** 3.5, rel=1e-10)
        assert verdicts._betainc(0.5, 0.5, x) == pytest.approx(2 / np.pi * np.arcsin(np.sqrt(x)), rel=1e-10)


def test_compare_spread_is_the_standard_error_of_the_difference():
    a, b = [_g(85.0, 0.4), _g(86.0, 0.4), _g(84.0, 0.4)], [_g(80.0), _g(82.0), _g(81.0)]
    row = verdicts.compare(a, b)
    se = np.sqrt(np.var([85, 86, 84], ddof=1) / 3 + np.var([80, 82, 81], ddof=1) / 3)
    assert row["delta"] == pytest.approx(4.0) and row["spread"] == pytest.approx(se)
    assert row["p"] == pytest.approx(WELCH_REFERENCE[0][2], rel=1e-4)
    assert row["verdict"] == verdicts.HOLDS and row["train_loss_change"] == pytest.approx(-0.2)
    assert verdicts.compare(b, a)["verdict"] == verdicts.FAILS
    assert verdicts.compare([_g(81.5), _g(80.5), _g(81.0)], b)["verdict"] == verdicts.CANNOT
    assert verdicts.compare([_g(90.0)], b)["verdict"].startswith(verdicts.CANNOT)
    assert verdicts.compare([_g(90.0)], b)["spread"] is None


def test_verdicts_rows_depth_claim_and_follow_up():
    groups = {("resnet20", "plain"): [_g(80.0, seed=s) for s in range(3)],
              ("resnet20", "plain_ag"): [_g(80.0 + d, seed=s) for s, d in enumerate((0.0, 0.5, 1.0))],
              ("resnet56", "plain"): [_g(70.0 + d, seed=s) for s, d in enumerate((0.0, 1.0, 2.0))],
              ("resnet56", "plain_ag"): [_g(80.0 + d, seed=s) for s, d in enumerate((0.0, 1.0, 2.0))],
              ("mobilenetv2", "residual"): [_g(88.0, seed=s) for s in range(3)],
              ("mobilenetv2", "residual_ag"): [_g(88.0 + d, seed=s) for s, d in enumerate((0.0, 0.1, 0.2))]}
    groups[("resnet20", "plain")][0] = _g(79.0)
    rows = {(r["claim"], r["arch"]): r for r in verdicts.verdicts(groups)}
    assert set(rows) == {("AG improves plain nets", "resnet20"), ("AG improves plain nets", "resnet56"),
                         ("AG helps more as depth grows", "resnet56 vs resnet20"),
                         ("AG improves the k-bit MobileNetV2", "mobilenetv2")}
    r20, r56 = rows[("AG improves plain nets", "resnet20")], rows[("AG improves plain nets", "resnet56")]
    assert r56["verdict"] == verdicts.HOLDS and r56["delta"] == pytest.approx(10.0)
    depth = rows[("AG helps more as depth grows", "resnet56 vs resnet20")]
    assert depth["delta"] == pytest.approx(r56["delta"] - r20["delta"])
    assert depth["spread"] == pytest.approx(np.hypot(r56["spread"], r20["spread"]))
    assert depth["p"] < 0.05 and depth["verdict"] == verdicts.HOLDS
    # follow-up: only the arms of comparisons that cannot be told get seeds 3 and 4
    runs = [arms.Run(a, m, g["seed"]) for (a, m), gs in groups.items() for g in gs]
    undecided = {r["arms"] for r in rows.values() if r["verdict"] == verdicts.CANNOT}
    extra = runner.follow_up(runs, groups)
    assert {(r.arch, r.method) for r in extra} == {arm for arms in undecided for arm in arms}
    assert sorted({r.seed for r in extra}) == [3, 4]
    assert not set(r.name for r in extra) & set(r.name for r in runs)
    # a table's follow-up keeps to its own arms: the MobileNetV2 pair is undecided, yet a ResNet plan skips it
    resnets = [r for r in runs if r.arch != "mobilenetv2"]
    assert {r.arch for r in runner.follow_up(resnets, groups)} == {"resnet20"}
    assert {(r.arch, r.seed) for r in runner.follow_up([r for r in runs if r.arch == "mobilenetv2"], groups)} \
        == {("mobilenetv2", 3), ("mobilenetv2", 4)}
    assert "AG improves plain nets on resnet56: +10.00 pt" in report.summary(verdicts.verdicts(groups))


def test_evaluation_check_lists_disagreeing_runs_and_raw_verdicts():
    plain = [_g(80.0 + d, seed=s) for s, d in enumerate((0.0, 0.5, 1.0))]
    ag = [_g(82.0 + d, seed=s) for s, d in enumerate((0.0, 0.5, 1.0))]
    groups = {("resnet56", "plain"): plain, ("resnet56", "plain_ag"): ag}
    rows = verdicts.verdicts(groups)
    assert report.evaluation_check(groups, rows).count("* none") == 2
    # one AG seed whose re-estimation broke a good F: the steadied verdict cannot tell, the raw one holds
    ag[1] = dict(ag[1], top1=40.0)
    rows = verdicts.verdicts(groups)
    assert rows[0]["verdict"] == verdicts.CANNOT
    assert verdicts.verdicts(groups, "raw_top1")[0]["verdict"] == verdicts.HOLDS
    lines = report.evaluation_check(groups, rows)
    assert "* resnet56, plain + AG, seed 1: 40.00 % steadied, 82.50 % raw" in lines
    assert sum(line.startswith("* resnet56, ") for line in lines) == 1  # within 5 points: not listed
    assert "* AG improves plain nets, resnet56: +2.00 ± 0.41, p = 0.008, holds (steadied: -12.17, cannot tell at " \
           "this scale)" in lines
    full = {k: [dict(g, bn_batches=20, quantizer="dorefa", bits=(2, 2)) for g in gs] for k, gs in groups.items()}
    text = report.render(full, command="c", hardware="h", png_name="p.png")
    assert "\n".join(lines) in text and text.index("## Verdict") < text.index("### Evaluation check")
    paragraph = f"## In one paragraph\n\n{report.summary(verdicts.verdicts(full))}\n"  # first, then the table
    assert paragraph in text and text.index(paragraph) < text.index("## Verdict")


def test_sweep_and_mobilenet_plans():
    runs = runner.plan("sweep", seeds=3)
    names = [r.name for r in runs]
    assert len(names) == len(set(names))
    for arch in arms.DEPTHS:
        assert names.count(f"{arch}_fp_plain_s0") == 1
        for m in runner.SWEEP_ARMS:
            assert sorted(r.seed for r in runs if (r.arch, r.method) == (arch, m)) == [0, 1, 2]
    assert {(r.arch, r.method) for r in runs if r.method in ("plain_ag_relu", "lsq_plain", "lsq_plain_ag")} == {
        ("resnet20", "plain_ag_relu"), ("resnet32", "lsq_plain"), ("resnet32", "lsq_plain_ag")}
    for i, r in enumerate(runs):
        if r.init_from:
            assert r.init_from in names[:i], r.name
    only20 = runner.plan("sweep", seeds=3, depths=["resnet20"], lsq_arch="resnet56")
    assert {r.arch for r in only20} == {"resnet20", "resnet56"} and "resnet56_fp_plain_s0" in [r.name for r in only20]
    lsq = runner.make_config(arms.Run("resnet32", "lsq_plain_ag", 1), "/w")
    assert (lsq.quantizer, lsq.aux, lsq.plain, lsq.seed) == ("lsq", True, True, 1)
    assert lsq.init_checkpoint == os.path.join("/w", "resnet32_fp_plain_s0", "f.keras")
    assert runner.make_config(arms.Run("resnet20", "plain_ag_relu"), "/w").aux_relu is True
    assert runner.make_config(arms.Run("resnet20", "plain_ag"), "/w").aux_relu is False
    mob = runner.plan("mobilenetv2", seeds=3)
    assert [r.name for r in mob[:3]] == ["mobilenetv2_fp_residual_s0", "mobilenetv2_residual_s0",
                                         "mobilenetv2_residual_ag_s0"] and len(mob) == 9
    fp, ag = (runner.make_config(arms.Run("mobilenetv2", m, 2), "/w") for m in ("fp_residual", "residual_ag"))
    assert (fp.w_bits, fp.alpha, fp.stem, fp.plain, fp.init_checkpoint) == (32, 0.5, "cifar", False, "")
    assert (ag.w_bits, ag.aux, ag.init_checkpoint) == (4, True, os.path.join("/w", "mobilenetv2_fp_residual_s0",
                                                                               "f.keras"))
    for c in (lsq, fp, ag):
        experiment.validate(c)


@pytest.mark.parametrize("kwargs, match", [(dict(lsq_arch="resnet18"), "lsq_arch='resnet18'"),
                                           (dict(relu_arch="x"), "relu_arch='x'"),
                                           (dict(depths=["resnet20", "resnet44"]), "depths=.*resnet44")])
def test_sweep_plan_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        runner.plan("sweep", **kwargs)


def test_no_module_of_the_library_writes_the_readme():
    """issue 32: the study's report is docs/results.md (its first section the evidence in one paragraph); the
    installed library never edits README.md. Read from the code: no module names the README as a file."""
    import pathlib

    import agq_keras

    root = pathlib.Path(ROOT)
    files = [*pathlib.Path(agq_keras.__file__).parent.rglob("*.py"), *(root / "configs").glob("*.py"),
             *(root / "study").glob("*.py")]
    assert len(files) > 40 and any(p.name == "report.py" for p in files)
    writers = [str(p.relative_to(root)) for p in files if "README.md" in p.read_text()]
    assert writers == [], writers
    rows = [dict(claim="AG helps", arch="resnet20", delta=1.0, spread=0.5, p=0.04, seeds=(3, 3), verdict="holds")]
    assert report.summary(rows) == ("Measured on Fashion-MNIST at CPU scale: AG helps on resnet20: +1.00 pt "
                                       "± 0.50 (SE), p = 0.040, 3 vs 3 seeds: holds.")


@pytest.mark.parametrize("path, err", [("out.txt", ValueError), ("no/such/folder/results.md", FileNotFoundError)])
def test_bad_results_path(tmp_path, path, err):
    with pytest.raises(err, match="results"):
        report.check_results_path(str(tmp_path / path))


def test_missing_init_checkpoint_is_a_clear_error(tmp_path):
    runs = runner.select(runner.plan(), ["resnet20_plain_s0"])
    with pytest.raises(FileNotFoundError, match="resnet20_fp_plain_s0"):
        runner.run_all(runs, str(tmp_path), train_subset=128, test_subset=64, epochs=1, verbose=0)


def test_end_to_end_tiny_resume_and_record(tmp_path):
    workdir, record, results = str(tmp_path / "runs"), str(tmp_path / "record"), str(tmp_path / "results.md")
    only = ["resnet20_fp_plain_s0", "resnet20_plain_s0"]
    kwargs = dict(train_subset=256, test_subset=128, epochs=1, verbose=0)
    runs = runner.plan()
    status = runner.run_all(runner.select(runs, only), workdir, record=record, **kwargs)
    assert status == {n: "trained" for n in only}
    # the record holds the metrics, the wall time, and only the full-precision run's F
    assert sorted(os.listdir(os.path.join(record, only[0]))) == ["f.keras", "metrics.json", "reproduce.json"]
    assert sorted(os.listdir(os.path.join(record, only[1]))) == ["metrics.json", "reproduce.json"]
    out = report.write_results(workdir, results, command="pytest", record=record)
    text = open(results).read()
    with open(out["png"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.basename(out["png"]) in text
    for name, label, bits in (("resnet20_fp_plain_s0", "full precision (plain)", "32/32"),
                              ("resnet20_plain_s0", "plain", "2/2")):
        with open(os.path.join(workdir, name, "metrics.json")) as fh:
            m = json.load(fh)
        row = re.search(rf"\| resnet20 \| {re.escape(label)} \| dorefa \| {bits} \| 1 \| 1 \| ([0-9.]+) \| "
                        rf"([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|", text)
        assert row, label
        assert float(row.group(1)) == pytest.approx(100 * m["f"]["top1"], abs=0.006)
        assert float(row.group(2)) == pytest.approx(100 * m["f_raw"]["top1"], abs=0.006)
        assert float(row.group(3)) == pytest.approx(100 * m["f"]["top5"], abs=0.006)
        assert float(row.group(4)) == pytest.approx(m["history"]["loss"][-1], abs=6e-5)
    # the 2-bit run started from the full-precision F
    with open(os.path.join(workdir, "resnet20_plain_s0", "metrics.json")) as fh:
        assert json.load(fh)["config"]["init_checkpoint"].endswith(os.path.join("resnet20_fp_plain_s0", "f.keras"))
    mtime = os.path.getmtime(os.path.join(workdir, "resnet20_plain_s0", "metrics.json"))
    assert runner.run_all(runner.select(runs, only), workdir, record=record, **kwargs) == {
        n: "skipped" for n in only}
    assert os.path.getmtime(os.path.join(workdir, "resnet20_plain_s0", "metrics.json")) == mtime
    # a new checkout (empty workdir) continues from the record: finished runs are skipped, and a new run's
    # initial F is the recorded one
    fresh = str(tmp_path / "fresh")
    assert runner.run_all(runner.select(runs, only), fresh, record=record, **kwargs) == {
        n: "skipped" for n in only}
    c = runner.make_config(arms.Run("resnet20", "plain_ag", 0), fresh, record=record)
    assert c.init_checkpoint == os.path.join(record, "resnet20_fp_plain_s0", "f.keras")
    # the script: report only (from the record alone), and a bad flag value is a one-line error, not a trace
    script = os.path.join(ROOT, "scripts", "reproduce.py")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([sys.executable, script, f"--workdir={fresh}", f"--results={results}", f"--record={record}",
                          "--report_only"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "--report_only" in open(results).read() and "| resnet20 | plain | dorefa |" in open(results).read()
    res = subprocess.run([sys.executable, script, f"--workdir={workdir}", "--table=fmnist6", "--deep_arch=resnet99"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 1 and "deep_arch='resnet99'" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow  # trains three tiny runs across two calls (about 20 s)
def test_deadline_pauses_at_an_epoch_end_and_the_next_call_resumes(tmp_path):
    """The GPU twin's 10-minute calls: a run whose next epoch would end after the deadline stops at an epoch
    end (its backup written, no metrics), the next call resumes it there, and its wall time adds up."""
    workdir = str(tmp_path / "runs")
    runs = runner.select(runner.plan(), ["resnet20_fp_plain_s0"])
    kwargs = dict(train_subset=256, test_subset=64, epochs=2, verbose=0)
    logs = []
    status = runner.run_all(runs, workdir, logs.append, deadline=time.time() + 1, start_margin_s=0, **kwargs)
    out = os.path.join(workdir, "resnet20_fp_plain_s0")
    assert status == {"resnet20_fp_plain_s0": "paused"} and any("[paused]" in line for line in logs)
    assert not os.path.exists(os.path.join(out, "metrics.json"))
    with open(os.path.join(out, "backup", "progress.json")) as fh:  # the run's backup keeps its epoch and time
        first = json.load(fh)["wall_s"]
    # no run starts within start_margin_s of the deadline
    assert runner.run_all(runs, workdir, logs.append, deadline=time.time() + 30, **kwargs) == {}
    assert runner.run_all(runs, workdir, **kwargs) == {"resnet20_fp_plain_s0": "trained"}
    with open(os.path.join(out, "metrics.json")) as fh:
        history = json.load(fh)["history"]
    assert len(history["loss"]) == 2 and len(history["val_accuracy"]) == 2  # epoch 1 from the paused call
    with open(os.path.join(out, "reproduce.json")) as fh:
        assert json.load(fh)["wall_s"] > first > 0


def test_progress_estimates_the_runs_left_from_the_measured_ones():
    def g(seed, wall):
        return {**_g(80.0, seed=seed), "wall_s": wall}

    groups = {("resnet20", "fp_plain"): [g(0, 60.0)], ("resnet20", "plain"): [g(0, 100.0), g(1, 140.0)],
              ("resnet32", "plain_ag"): [g(0, 320.0)]}
    rows = {p["table"]: p for p in report.progress(groups)}
    sweep = rows["sweep"]
    planned = runner.plan("sweep")
    assert sweep["planned"] == len(planned) and sweep["finished"] == 4
    assert sweep["finished_s"] == pytest.approx(620.0) and len(sweep["left"]) == len(planned) - 4
    left = [arms.Run(*n.rsplit("_s", 1)[0].split("_", 1)) for n in sweep["left"]]
    want, unknown = 0.0, 0
    for r in left:
        if (r.arch, r.method) == ("resnet20", "plain"):
            want += 120.0
        elif r.method == "plain":
            want += 120.0 * report.DEPTH_COST[r.arch]
        elif r.method == "fp_plain":
            want += 60.0 * report.DEPTH_COST[r.arch]
        elif r.method == "plain_ag":
            want += 320.0 * report.DEPTH_COST[r.arch] / 1.6
        else:
            unknown += 1
    assert sweep["left_s"] == pytest.approx(want) and sweep["not_estimated"] == unknown > 0
    assert rows["mobilenetv2"]["finished"] == 0 and rows["mobilenetv2"]["not_estimated"] == 9


def test_detection_plan_and_configs(tmp_path):
    runs = runner.plan("detection")
    assert [r.name for r in runs[:9]] == [f"det_resnet20_{m}_s0" for m in runner.DETECTION_ARMS]
    assert len(runs) == 27
    # the two-stage arms start from seed 0's float F, which comes first in the plan and is kept in the record
    float0 = arms.Run("det_resnet20", "float", 0)
    assert {r.init_from for r in runs} == {None, float0.name}
    assert all((r.init_from is not None) == r.method.startswith("staged_") for r in runs)
    assert runs.index(float0) < min(i for i, r in enumerate(runs) if r.init_from)
    assert [r.name for r in runs if r.initialises] == [float0.name]
    configs = {r.method: runner.make_config(r, "/w", train_subset=7) for r in runs if r.seed == 1}
    for method, c in configs.items():
        experiment.validate(c)
        staged = method.startswith("staged_")
        assert (c.task, c.arch, c.seed, c.train_canvases, c.test_canvases, c.init_checkpoint) == (
            "detection", "resnet20", 1, 1024, 200, os.path.join("/w", float0.name, "f.keras") if staged else "")
        assert (c.w_bits, c.aux, c.fpn_adaptors) == ((32, False, False) if method.startswith("float") else
                                                     (4, "4bit_ag" in method, method.endswith("_fpn")))
    for method in ("4bit", "staged_4bit", "staged_4bit_ag", "staged_4bit_ag_fpn"):
        assert (configs[method].epochs, tuple(configs[method].lr_decay_epochs)) == (6, (5,))
    for method in ("4bit_2x", "float_2x", "staged_4bit_2x"):
        assert (configs[method].epochs, tuple(configs[method].lr_decay_epochs)) == (12, (10,))
    # a new checkout finds the init F in the committed record
    record = tmp_path / "record"
    (record / float0.name).mkdir(parents=True)
    (record / float0.name / "f.keras").write_bytes(b"")
    staged = runner.make_config(arms.Run("det_resnet20", "staged_4bit_ag", 2), "/w", record=str(record))
    assert staged.init_checkpoint == str(record / float0.name / "f.keras")


def _det_run(folder, method, seed, ap, loss, h_ap=None):
    out = os.path.join(folder, f"det_resnet20_{method}_s{seed}")
    os.makedirs(out)
    metrics = {"f": {"AP": ap, "AP50": ap + 0.1, "AP75": ap / 2, "loss": 1.0}, "epochs": 6, "test_images": 200,
               "history": {"loss": [1.0, loss]}, "config": {"quantizer": "dorefa", "w_bits": 4, "a_bits": 4,
                                                          "train_canvases": 1024}}
    if h_ap is not None:
        metrics["h"] = {"AP": h_ap}
    with open(os.path.join(out, "metrics.json"), "w") as fh:
        json.dump(metrics, fh)
    with open(os.path.join(out, "reproduce.json"), "w") as fh:
        json.dump({"wall_s": 60.0, "run": {"arch": "det_resnet20", "method": method, "seed": seed}}, fh)


def test_detection_section_and_claims(tmp_path):
    """The detectors' APs (from their metrics.json) get their own section and claims, with the threshold
    rule ("within 1 AP of float": delta > -1); the classification verdicts and the plot leave them out."""
    folder = str(tmp_path / "runs")
    for seed, (f, q, ag) in enumerate(((0.300, 0.100, 0.295), (0.310, 0.110, 0.300), (0.290, 0.105, 0.305))):
        _det_run(folder, "float", seed, f, 0.3)
        _det_run(folder, "4bit", seed, q, 0.6)
        _det_run(folder, "4bit_ag", seed, ag, 0.5, h_ap=ag + 0.01)
    groups = report.load_results(folder)
    assert groups[("det_resnet20", "4bit_ag")][2]["ap"] == pytest.approx(30.5)
    assert groups[("det_resnet20", "4bit_ag")][0]["h_ap"] == pytest.approx(30.5)
    rows = {r["claim"]: r for r in verdicts.detection_verdicts(groups)}
    assert set(rows) == {"4-bit + AG is within 1 AP of float", "4-bit + AG is above 4-bit alone"}
    within = rows["4-bit + AG is within 1 AP of float"]
    se = np.sqrt(np.var([30.0, 31.0, 29.0], ddof=1) / 3 + np.var([29.5, 30.0, 30.5], ddof=1) / 3)
    assert within["delta"] == pytest.approx(0.0) and within["spread"] == pytest.approx(se)
    # Welch's test of delta = -1: t = 1 / se, df = (se^4) / sum((s_i^2/3)^2 / 2)
    test = verdicts.welch(0.0, [(np.var([30.0, 31.0, 29.0], ddof=1), 3), (np.var([29.5, 30.0, 30.5], ddof=1), 3)],
                           -1.0)
    assert within["p"] == pytest.approx(test["p"]) and test["t"] == pytest.approx(1 / se)
    assert within["verdict"] == (verdicts.HOLDS if test["p"] < 0.05 else verdicts.CANNOT)
    assert rows["4-bit + AG is above 4-bit alone"]["verdict"] == verdicts.HOLDS
    assert verdicts.verdicts(groups) == []
    assert verdicts._verdict(-3.0, 0.01, -1.0) == verdicts.FAILS
    assert verdicts._verdict(-0.5, 0.2, -1.0) == verdicts.CANNOT
    assert verdicts._verdict(-0.5, 0.04, -1.0) == verdicts.HOLDS
    text = report.render(groups, command="pytest", hardware="cpu", png_name="x.png")
    section = text.split("## Detection", 1)[1]
    assert "| det_resnet20 | 4-bit + AG | 4/4 | 3 | 6 | 30.00 ± 0.50 | 40.00 ± 0.50 | 15.00 ± 0.25 | 0.5000 ± 0.0000 | " \
           "31.00 ± 0.50 | 1.0 |" in section
    assert "| 4-bit + AG is above 4-bit alone | det_resnet20 | +19.50 |" in section
    assert "| detection | 9 of 27 |" in text
    # the two-stage arms get their own claims, against float at 6 and at 12 epochs
    for seed, (st, st_ag, f2) in enumerate(((0.25, 0.28, 0.33), (0.26, 0.29, 0.34), (0.24, 0.30, 0.35))):
        _det_run(folder, "staged_4bit", seed, st, 0.4)
        _det_run(folder, "staged_4bit_ag", seed, st_ag, 0.4)
        _det_run(folder, "float_2x", seed, f2, 0.2)
    groups = report.load_results(folder)
    rows = {r["claim"]: r for r in verdicts.detection_verdicts(groups)}
    assert rows["two-stage 4-bit + AG is within 1 AP of float"]["delta"] == pytest.approx(29.0 - 30.0)
    assert rows["two-stage 4-bit + AG is within 1 AP of float at 2x epochs (as many epochs in all)"][
        "verdict"] == verdicts.FAILS  # 29 vs 34 AP
    assert rows["two-stage 4-bit + AG is above two-stage 4-bit alone"]["delta"] == pytest.approx(4.0)
    assert "two-stage 4-bit + AG is above the compute-matched two-stage 4-bit (2x epochs)" not in rows
    section = report.render(groups, command="pytest", hardware="cpu", png_name="x.png").split("## Detection")[1]
    assert "| det_resnet20 | 4-bit + AG, two-stage (from float F) | 4/4 | 3 | 6 | 29.00 ± 1.00 |" in section


def test_table6_plan_arms_seeds_and_configs():
    """The paper's Table 6 driver: stage-1 F per shortcut type, then 7 arms x seeds, from configs/paper.py."""
    runs = runner.plan("table6", seeds=3)
    assert len(runs) == 2 + len(runner.TABLE6_ARMS) * 3
    assert {(r.method, r.seed) for r in runs[2:]} == {(m, s) for m in runner.TABLE6_ARMS for s in range(3)}
    names = [r.name for r in runs]
    for i, r in enumerate(runs):
        assert r.init_from is None or r.init_from in names[:i], r.name
    cs = {r.method: runner.make_config(r, "/w", train_subset=0, data_dir="/tfds") for r in runs if r.seed == 0}
    for method, c in cs.items():
        experiment.validate(c)
        assert (c.dataset, c.stem, c.arch, c.data_dir, c.deterministic) == (
            "cifar100", "cifar", "resnet18", "/tfds", True)
        assert c.plain == ("plain" in method) and c.aux == ("_ag" in method) and c.ssp == method.endswith("ssp")
    assert (cs["fp_plain"].w_bits, cs["fp_plain"].optimizer, cs["fp_plain"].epochs) == (32, "sgd", 90)
    assert (cs["plain"].w_bits, cs["plain"].optimizer, cs["plain"].epochs) == (2, "adam", 35)
    assert (cs["plain_2x"].epochs, tuple(cs["plain_2x"].lr_decay_epochs)) == (70, (50, 60))
    assert cs["plain_ag"].init_checkpoint == os.path.join("/w", "resnet18_fp_plain_s0", "f.keras")


@pytest.mark.slow
def test_table6_end_to_end_on_mock_data(tmp_path):
    """Two seeds of plain and plain + AG (and their stage-1 F) on tfds mock CIFAR-100, one epoch on 8 images;
    the report is the Table 6 one, with a Welch verdict row."""
    import tensorflow_datasets as tfds

    workdir, results = str(tmp_path / "runs"), str(tmp_path / "results_table6.md")
    only = ["resnet18_fp_plain_s0"] + [f"resnet18_{m}_s{s}" for s in range(2) for m in ("plain", "plain_ag")]
    with tfds.testing.mock_data(num_examples=8):
        status = runner.run_all(runner.select(runner.plan("table6"), only), workdir, train_subset=8, test_subset=8,
                                epochs=1, verbose=0, data_dir=str(tmp_path / "tfds"))
    assert status == {n: "trained" for n in only}
    report.write_results(workdir, results, command="pytest")
    text = open(results).read()
    assert text.startswith("# Results on CIFAR-100: the paper's Table 6")
    assert "| AG improves plain nets | resnet18 |" in text and "| table6 | 5 of 23 |" in text
