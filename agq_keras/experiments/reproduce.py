"""The CPU-scale experiments on the real Fashion-MNIST, and docs/results.md (``scripts/reproduce.py``).

Tables (:func:`plan`), each run a ``configs/fmnist.py`` variant (``cpu_recipe`` + ``apply_method``,
steady evaluation on) trained by :func:`agq_keras.experiments.run.run` in ``workdir/<run name>``:

* ``sweep`` (issue 13, the decisive evidence): 2-bit DoReFa plain ResNet-20/32/56, arms plain, plain + AG,
  plain at 2x epochs (compute-matched: an AG step costs about two F steps) and plain + AG + SSP, 3 seeds
  each; H's sums with a ReLU at one depth; LSQ plain and plain + AG at one depth. :func:`follow_up` adds
  seeds up to 5 to the arms of every comparison of the table that Welch's test cannot decide (p >= 0.05).
* ``mobilenetv2`` (issue 11): the pre-activation MobileNetV2, float / 4-bit / 4-bit + AG, 3 seeds.
* ``fmnist6``: the first Table 6 twin (residual and plain ResNet-20, one deeper pair).
* ``detection`` (issue 12): the ResNet-20 RetinaNet-style detector on the Fashion-MNIST detection twin
  (``configs/detection.py``, the ``quick`` budget: 1024 canvases, 6 epochs, 200 test canvases),
  float / 4-bit / 4-bit + AG / 4-bit at 2x epochs (compute-matched), 3 seeds, each from scratch; then float
  at 2x epochs and the two-stage arms (4-bit, 4-bit + AG, 4-bit at 2x epochs, 4-bit + AG with adaptors on
  the FPN levels too, each from seed 0's float F: stage 2 of the recipe); reported as AP, AP50, AP75 and
  training loss in results.md's "Detection" section.

Stage 1 of the recipe (section 4.1) is the full-precision run itself: every k-bit run starts from the
full-precision F (seed 0) of its network and shortcut type (``init_checkpoint``), trained once.

Resumable per run, across sessions: a run whose ``metrics.json`` exists in the workdir or in the committed
``record`` folder (``docs/runs``) is not redone, and a run killed midway resumes from its own backup. Each
finished run's ``metrics.json`` and wall time (and the ``f.keras`` of a run others start from, seed 0 at full
precision) are copied to the record, so a new checkout continues where the last one stopped. Then
:func:`write_results` renders ``results.md`` (the verdict table, every run's top-1 steadied and raw, top-5,
training loss, epoch-to-epoch swing and time, mean ± std over seeds) and a convergence PNG next to it, from
the ``metrics.json`` files only, the evidence in one paragraph first. The library never edits the README, which
links to ``results.md``.

Sizing (15 000 training images, the recipe's 7 epochs, 10 000 test images, batch 128): the wall time of
every finished run is in docs/results.md ("Time / run"); the first Table 6 twin measured ResNet-20 plain
4.7 min, plain + AG 8.5 min and ResNet-32 about 1.6x that on this 2-core machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import time

TABLES = ("sweep", "mobilenetv2", "fmnist6", "detection")
DEPTHS = ("resnet20", "resnet32", "resnet56")
DEEP_ARCHS = ("resnet32", "resnet56")
# The paper's Table 6 deltas (top-1 points, ResNet-18 on CIFAR-100), quoted for comparison.
PAPER_DELTAS = {"plain+AG − plain": 3.3, "plain+AG+SSP − plain+AG": 0.5, "residual+AG − residual": 0.7}
# Row order and labels of the table (the bit widths and the quantizer are columns of their own).
METHODS = (
    ("fp_residual", "full precision (residual)"),
    ("fp_plain", "full precision (plain)"),
    ("residual", "residual"),
    ("residual_ag", "residual + AG"),
    ("residual_ag_ssp", "residual + AG + SSP"),
    ("plain", "plain"),
    ("plain_ag", "plain + AG"),
    ("plain_ag_ssp", "plain + AG + SSP"),
    ("plain_2x", "plain, 2x epochs (compute-matched to AG)"),
    ("plain_ag_relu", "plain + AG, ReLU after H's sums"),
    ("lsq_plain", "plain, LSQ"),
    ("lsq_plain_ag", "plain + AG, LSQ"),
    ("float", "float"),
    ("4bit", "4-bit"),
    ("4bit_ag", "4-bit + AG"),
    ("4bit_2x", "4-bit, 2x epochs (compute-matched to AG)"),
    ("float_2x", "float, 2x epochs"),
    ("staged_4bit", "4-bit, two-stage (from float F)"),
    ("staged_4bit_ag", "4-bit + AG, two-stage (from float F)"),
    ("staged_4bit_2x", "4-bit, two-stage, 2x epochs (compute-matched to AG)"),
    ("staged_4bit_ag_fpn", "4-bit + AG, adaptors on the FPN levels too, two-stage"),
)
LABELS = dict(METHODS)
# method -> the configs/fmnist.py method of its variant, and the config fields it changes.
_FMNIST_METHOD = {"fp_residual": "residual_base", "fp_plain": "plain_base", "residual": "residual_base",
                  "residual_ag": "residual_ag", "residual_ag_ssp": "residual_ag_ssp", "plain": "plain_base",
                  "plain_ag": "plain_ag", "plain_ag_ssp": "plain_ag_ssp", "plain_2x": "plain_base",
                  "plain_ag_relu": "plain_ag", "lsq_plain": "plain_base", "lsq_plain_ag": "plain_ag"}
_OVERRIDES = {"plain_ag_relu": {"aux_relu": True}, "lsq_plain": {"quantizer": "lsq"},
              "lsq_plain_ag": {"quantizer": "lsq"}}
SWEEP_ARMS = ("plain", "plain_ag", "plain_2x", "plain_ag_ssp")
# the detection table: networks are named det_<backbone>; its budget is detection.py's ``quick`` one. The
# from-scratch arms, then the float net at 2x epochs and the two-stage arms (``staged_*``: stage 2 of the
# paper's recipe, from seed 0's float F, as the classification runs do).
DETECTION_ARMS = ("float", "4bit", "4bit_ag", "4bit_2x", "float_2x", "staged_4bit", "staged_4bit_ag",
                  "staged_4bit_2x", "staged_4bit_ag_fpn")
DETECTION_BUDGET = {"train_canvases": 1024, "test_canvases": 200, "epochs": 6, "lr_decay_epochs": (5,)}
MAX_SEEDS = 5  # follow-up: an arm of a comparison Welch's test cannot decide gets seeds up to this many


@dataclasses.dataclass(frozen=True)
class Run:
    arch: str
    method: str  # a key of METHODS
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.arch}_{self.method}_s{self.seed}"

    @property
    def init_from(self) -> str | None:
        """The full-precision run whose F initialises this one (stage 1, seed 0), or None (a full-precision
        run, a detector trained from scratch)."""
        if self.arch.startswith("det_"):
            return Run(self.arch, "float").name if self.method.startswith("staged_") else None
        if self.method.startswith("fp_"):
            return None
        return Run(self.arch, "fp_residual" if self.method.startswith("residual") else "fp_plain").name

    @property
    def initialises(self) -> bool:
        """Whether other runs start from this run's F (it is kept in the record): seed 0 of a full-precision
        classifier, of the float detector."""
        return self.seed == 0 and (self.method.startswith("fp_") or
                                   (self.arch.startswith("det_") and self.method == "float"))


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")
    return value


def plan(table: str = "sweep", seeds: int = 3, deep_arch: str = "resnet32", *, lsq_arch: str = "resnet32",
         relu_arch: str = "resnet20", depths=DEPTHS) -> list[Run]:
    """The runs of a table, in an order where every run's ``init_from`` comes first.

    * ``sweep`` (issue 13): for each of ``depths``, the plain full-precision F (seed 0; every run of that
      depth starts from it), then per seed the four arms plain, plain + AG, plain at 2x epochs and plain +
      AG + SSP; then the two extras: H's sums with a ReLU against the linear sum at ``relu_arch``, and
      LSQ plain / plain + AG at ``lsq_arch``.
    * ``mobilenetv2`` (issues 11, 29): the pre-activation MobileNetV2 (alpha 0.5, linear bottleneck, 4-bit LSQ,
      residual) at full precision, k-bit and k-bit + AG, ``seeds`` seeds each; the k-bit runs start from seed
      0's float F.
    * ``fmnist6``: the first Table 6 twin (ResNet-20 residual and plain rows, and ``deep_arch``'s pair).
    * ``detection``: the ResNet-20 detector, :data:`DETECTION_ARMS`, ``seeds`` seeds each (the two-stage arms
      start from seed 0's float F).
    """
    if table not in TABLES:
        raise ValueError(f"table={table!r} is not supported; allowed: {', '.join(TABLES)}.")
    _check_int("seeds", seeds, 1)
    if deep_arch not in DEEP_ARCHS:
        raise ValueError(f"deep_arch={deep_arch!r} is not supported; allowed: {', '.join(DEEP_ARCHS)}.")
    depths = tuple(depths)
    for name, value in (("lsq_arch", lsq_arch), ("relu_arch", relu_arch)):
        if value not in DEPTHS:
            raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(DEPTHS)}.")
    if not depths or any(d not in DEPTHS for d in depths):
        raise ValueError(f"depths={depths!r} must be a non-empty subset of {', '.join(DEPTHS)}.")
    if table == "detection":
        return [Run("det_resnet20", m, s) for s in range(seeds) for m in DETECTION_ARMS]
    if table == "mobilenetv2":
        return [Run("mobilenetv2", m, s) for s in range(seeds) for m in ("fp_residual", "residual", "residual_ag")]
    if table == "sweep":
        runs = []
        for arch in depths:
            runs.append(Run(arch, "fp_plain"))
            runs += [Run(arch, m, s) for s in range(seeds) for m in SWEEP_ARMS]
        for arch, methods in ((relu_arch, ("plain_ag_relu",)), (lsq_arch, ("lsq_plain", "lsq_plain_ag"))):
            if arch not in depths:
                runs.append(Run(arch, "fp_plain"))
                depths += (arch,)
            runs += [Run(arch, m, s) for s in range(seeds) for m in methods]
        return runs
    runs = [Run("resnet20", m) for m in ("fp_residual", "fp_plain", "residual", "residual_ag", "residual_ag_ssp")]
    runs += [Run("resnet20", m, s) for s in range(seeds) for m in ("plain", "plain_ag")]
    runs += [Run("resnet20", "plain_ag_ssp"), Run("resnet20", "plain_2x")]
    runs += [Run(deep_arch, m) for m in ("fp_residual", "fp_plain", "residual", "plain", "plain_ag")]
    return runs


def select(runs: list[Run], only) -> list[Run]:
    """Keep the runs named in ``only`` (all when empty); unknown names are an error."""
    if not only:
        return runs
    names = {r.name for r in runs}
    unknown = sorted(set(only) - names)
    if unknown:
        raise ValueError(f"unknown run name(s) {unknown}; allowed: {', '.join(r.name for r in runs)}.")
    return [r for r in runs if r.name in set(only)]


def _scaled(epoch: int, base_epochs: int, epochs: int) -> int:
    return max(1, min(epochs, round(epoch * epochs / base_epochs)))


def _reschedule(c, epochs: int, doubled: bool) -> int:
    """Set ``c.epochs`` to ``epochs`` (0: the config's own), twice that for a compute-matched run, and
    rescale its learning-rate decay epochs; returns the config's own epoch count."""
    base = c.epochs
    c.epochs = (epochs or base) * (2 if doubled else 1)
    c.lr_decay_epochs = tuple(sorted({_scaled(e, base, c.epochs) for e in c.lr_decay_epochs}))
    return base


def make_config(run: Run, workdir: str, *, record: str | None = None, train_subset: int = 15000,
                test_subset: int = 0, epochs: int = 0, verbose: int = 2, data_dir: str = ""):
    """The training config of one run: ``configs/fmnist.py``'s variant (plus the method's
    overrides: LSQ, H's ReLU), the recipe's schedule rescaled to ``epochs`` (0 = the recipe's own), doubled
    for the compute-matched run. The initial F is ``workdir/<init run>/f.keras``, or the committed
    ``record/<init run>/f.keras`` when only the record holds it (a new checkout continues a sweep).
    A detector (``det_<backbone>``) is ``configs/detection.py``'s variant at
    :data:`DETECTION_BUDGET` (``train_subset`` and ``test_subset`` do not apply to it)."""
    from agq_keras.configs import fmnist

    if run.arch.startswith("det_"):
        return _detection_config(run, workdir, record, epochs=epochs, verbose=verbose, data_dir=data_dir)

    if run.arch == "mobilenetv2" and run.method.startswith("fp_"):
        c = fmnist.get_config(f"mobilenetv2_{run.method.removeprefix('fp_')}_float")
    else:
        c = fmnist.get_config(f"{run.arch}_{_FMNIST_METHOD[run.method]}")
    for key, value in _OVERRIDES.get(run.method, {}).items():
        c[key] = value
    base = _reschedule(c, epochs, run.method == "plain_2x")
    c.ssp_decay_epoch = _scaled(c.ssp_decay_epoch, base, c.epochs)
    c.train_subset, c.test_subset = _check_int("train_subset", train_subset, 0), _check_int("test_subset",
                                                                                            test_subset, 0)
    c.seed, c.verbose, c.pretrain_epochs, c.data_dir = run.seed, verbose, 0, data_dir
    c.deterministic = True  # reported runs (op determinism; the records trained before 2026-12-07 were not)
    if run.method.startswith("fp_"):
        c.w_bits = c.a_bits = 32
    else:
        c.init_checkpoint = _init_checkpoint(run, workdir, record)
    return c


def _init_checkpoint(run: Run, workdir: str, record: str | None) -> str:
    """``workdir/<init run>/f.keras``, or the committed ``record/<init run>/f.keras`` when only the record
    holds it; '' for a run that starts from scratch."""
    if run.init_from is None:
        return ""
    path = os.path.join(workdir, run.init_from, "f.keras")
    if record and not os.path.isfile(path) and os.path.isfile(os.path.join(record, run.init_from, "f.keras")):
        return os.path.join(record, run.init_from, "f.keras")
    return path


def _detection_config(run: Run, workdir: str, record: str | None, *, epochs: int, verbose: int, data_dir: str):
    from agq_keras.configs import detection

    backbone = run.arch.removeprefix("det_")
    c = detection.get_config(f"{backbone}_{run.method.removeprefix('staged_').removesuffix('_2x')}")
    for key, value in DETECTION_BUDGET.items():
        c[key] = value
    _reschedule(c, epochs, run.method.endswith("_2x"))
    c.seed, c.verbose, c.data_dir = run.seed, verbose, data_dir
    c.deterministic = True  # as make_config's
    c.init_checkpoint = _init_checkpoint(run, workdir, record)
    return c


def finished(run: Run, *folders) -> str | None:
    """The ``metrics.json`` of a finished run in the first of ``folders`` that holds one, else None."""
    for folder in folders:
        if folder and os.path.isfile(os.path.join(folder, run.name, "metrics.json")):
            return os.path.join(folder, run.name, "metrics.json")
    return None


def _to_record(run: Run, out: str, record: str) -> None:
    """Copy what the report and a later session need into the committed record: the metrics, the wall
    time, and the F of a run other runs start from (:attr:`Run.initialises`)."""
    import shutil

    dest = os.path.join(record, run.name)
    os.makedirs(dest, exist_ok=True)
    files = ["reproduce.json", "metrics.json"] + (["f.keras"] if run.initialises else [])
    for name in files:  # metrics.json last: it marks the run finished
        tmp = os.path.join(dest, f".{name}.tmp")
        shutil.copyfile(os.path.join(out, name), tmp)
        os.replace(tmp, os.path.join(dest, name))


class DeadlineReached(Exception):
    """Raised at the end of an epoch (after the run's backup is written) when the next epoch would not end
    before the deadline: the run resumes from that backup next time."""


def _deadline_callback(deadline: float):
    import keras

    class StopBeforeDeadline(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.time()

        def on_epoch_end(self, epoch, logs=None):  # after the run's backup (its callbacks come first)
            now = time.time()
            if now + (now - self.start) > deadline:
                raise DeadlineReached(f"epoch {epoch + 1} ended {deadline - now:.0f} s before the deadline, and it "
                                      f"took {now - self.start:.0f} s")

    return StopBeforeDeadline()


def run_all(runs: list[Run], workdir: str, log=print, *, record: str | None = None, deadline: float | None = None,
            start_margin_s: float = 60.0, **config_kwargs) -> dict:
    """Train every run not finished yet (in ``workdir`` or ``record``); returns ``{name: "trained" |
    "skipped" | "paused"}``. With ``record``, each finished run's metrics (and a full-precision run's F) are
    copied there, so a later session on a new checkout continues from the committed record. With
    ``deadline`` (a ``time.time()``), no run starts in its last ``start_margin_s``, and a run whose next epoch would
    end after it stops at an epoch end ("paused"; the same call again resumes it from its backup, and its
    wall time and history add up over the calls, as for a run killed midway: ``metrics.json``'s)."""
    import keras

    from agq_keras.saving import write_text
    from agq_keras.experiments import run as runner

    runner.check_workdir(workdir)
    configs = {r.name: make_config(r, workdir, record=record, **config_kwargs) for r in runs}  # validate all
    for c in configs.values():
        runner.validate(c)
    status = {}
    for r in runs:
        done = finished(r, record, workdir)
        if done:
            log(f"[skip] {r.name}: finished ({done} exists)")
            stamp = os.path.join(os.path.dirname(done), "reproduce.json")
            if not os.path.isfile(stamp):  # trained outside the driver (the train CLI): wall time not measured
                write_text(stamp, json.dumps({"wall_s": None, "run": dataclasses.asdict(r)}))
            if record and not finished(r, record):
                _to_record(r, os.path.dirname(done), record)
            status[r.name] = "skipped"
            continue
        c = make_config(r, workdir, record=record, **config_kwargs)  # an init F trained just now is found
        if c.init_checkpoint and not os.path.isfile(c.init_checkpoint):
            raise FileNotFoundError(f"run {r.name} starts from {c.init_checkpoint!r}, which does not exist: "
                                    f"run {r.init_from} first (it is listed before {r.name} in the plan).")
        if deadline is not None and time.time() > deadline - start_margin_s:
            log(f"[stop] {r.name} not started: the deadline is less than {start_margin_s:.0f} s away")
            break
        log(f"[run] {r.name}: {LABELS[r.method]}, {c.quantizer} W{c.w_bits}/A{c.a_bits}, seed {r.seed}, "
            f"{c.epochs} epoch(s)")
        out = os.path.join(workdir, r.name)
        stopper = _deadline_callback(deadline) if deadline is not None else None
        try:  # a paused or killed run resumes from its backup, which keeps its history and wall time
            metrics = runner.run(c, out, extra_callbacks=[stopper] if stopper is not None else ())
        except DeadlineReached as stop:
            keras.backend.clear_session()
            log(f"[paused] {r.name}: {stop}; the same command resumes it from its backup")
            status[r.name] = "paused"
            break
        keras.backend.clear_session()  # many runs in one process: drop the finished run's graphs
        write_text(os.path.join(out, "reproduce.json"),
                   json.dumps({"wall_s": metrics["wall_s"], "run": dataclasses.asdict(r)}))
        if record:
            _to_record(r, out, record)
        status[r.name] = "trained"
    return status


def follow_up(runs: list[Run], groups: dict) -> list[Run]:
    """Issue 13's rule: every arm of a verdict comparison that cannot be told (Welch's p >= ALPHA) gets seeds up to
    ``MAX_SEEDS``. Only comparisons between arms of ``runs`` (the table being run) count: the sweep's follow-up
    never trains the MobileNetV2 table's arms, and that table's own ``--follow_up`` does. Returns the runs to
    add (not yet in ``runs``), in plan order."""
    planned = {r.name for r in runs}
    arms_run = {(r.arch, r.method) for r in runs}
    extra = []
    for row in verdicts(groups):
        if row["verdict"] != CANNOT or not set(row["arms"]) <= arms_run:
            continue
        for arch, method in row["arms"]:
            for seed in range(MAX_SEEDS):
                r = Run(arch, method, seed)
                if r.name not in planned:
                    planned.add(r.name)
                    extra.append(r)
    return extra


# -- results --------------------------------------------------------------------------------------------------


def load_results(*folders) -> dict:
    """``{(arch, method): [per-seed dicts]}`` from every finished run under ``folders`` (a run folder holding
    ``metrics.json`` and the driver's ``reproduce.json``); a run in several folders counts once, from the
    first folder."""
    groups: dict = {}
    seen = set()
    for folder in folders:
        if not folder or not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            out = os.path.join(folder, name)
            if name in seen or not all(os.path.isfile(os.path.join(out, f)) for f in ("metrics.json",
                                                                                        "reproduce.json")):
                continue
            seen.add(name)
            with open(os.path.join(out, "metrics.json")) as fh:
                m = json.load(fh)
            with open(os.path.join(out, "reproduce.json")) as fh:
                rec = json.load(fh)
            r = Run(**rec["run"])
            history, config = m.get("history", {}), m.get("config", {})
            run = {"seed": r.seed, "train_loss": history["loss"][-1] if history.get("loss") else float("nan"),
                   "epochs": m.get("epochs"), "quantizer": config.get("quantizer"),
                   "bits": (config.get("w_bits"), config.get("a_bits")), "wall_s": rec.get("wall_s")}
            if "AP" in m["f"]:  # a detector
                run.update(ap=100 * m["f"]["AP"], ap50=100 * m["f"]["AP50"], ap75=100 * m["f"]["AP75"],
                           h_ap=100 * m["h"]["AP"] if "h" in m else None,
                           train_canvases=config.get("train_canvases"), test_images=m.get("test_images"))
            else:
                raw = m.get("f_raw", m["f"])
                run.update(top1=100 * m["f"]["top1"], top5=100 * m["f"]["top5"], raw_top1=100 * raw["top1"],
                           val_top1=[100 * a for a in history.get("val_accuracy", [])],
                           raw_val_top1=[100 * a for a in history.get("raw_val_accuracy",
                                                                       history.get("val_accuracy", []))],
                           bn_batches=config.get("bn_reestimation_batches", 0),
                           train_subset=config.get("train_subset"), test_subset=config.get("test_subset"))
            groups.setdefault((r.arch, r.method), []).append(run)
    for gs in groups.values():
        gs.sort(key=lambda g: g["seed"])
    return groups


def swing(curve) -> float | None:
    """Mean absolute change of test top-1 between consecutive epochs (points), None under 2 epochs."""
    if len(curve) < 2:
        return None
    return statistics.fmean(abs(b - a) for a, b in zip(curve, curve[1:]))


def mean_std(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _p(p: float | None) -> str:
    return "n/a" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _fmt(values, digits=2) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


ALPHA = 0.05  # a verdict is reached when Welch's two-sided t-test gives p < ALPHA


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (modified Lentz), using
    I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly (x > (a + 1) / (a + b + 2))."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    f, c, d = tiny, tiny, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            numerator = 1.0
        elif i % 2:
            numerator = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            numerator = (m * (b - m) * x) / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-14:
            break
    return front * f


def welch(delta: float, terms, threshold: float = 0.0) -> dict:
    """Welch's two-sided t-test of ``delta`` (a sum of group means with signs) against ``threshold``.

    ``terms``: ``(sample variance, n)`` of each group in ``delta``. se = sqrt(sum s_i^2 / n_i); t = (delta -
    threshold) / se; the Welch-Satterthwaite degrees of freedom df = se^4 / sum((s_i^2 / n_i)^2 / (n_i - 1));
    p = I_{df / (df + t^2)}(df / 2, 1 / 2), the two-sided tail of Student's t with df degrees of freedom.
    Returns ``{"se", "t", "df", "p"}`` (None each where a group has one value)."""
    terms = list(terms)
    if any(n < 2 or var is None for var, n in terms):
        return {"se": None, "t": None, "df": None, "p": None}
    parts = [var / n for var, n in terms]
    se = math.sqrt(sum(parts))
    if se == 0.0:
        return {"se": 0.0, "t": None, "df": None, "p": 1.0 if delta == threshold else 0.0}
    t = (delta - threshold) / se
    df = se ** 4 / sum(q * q / (n - 1) for q, (_, n) in zip(parts, terms) if q > 0)
    return {"se": se, "t": t, "df": df, "p": _betainc(df / 2.0, 0.5, df / (df + t * t))}


# The claims of the verdict table: (claim, arm a, arm b, the nets it is about, the paper's delta or None);
# the delta is a - b (top-1 points).
CLAIMS = (
    ("AG improves plain nets", "plain_ag", "plain", "resnet", 3.3),
    ("AG beats the compute-matched baseline (plain, 2x epochs)", "plain_ag", "plain_2x", "resnet", None),
    ("SSP adds on top of AG", "plain_ag_ssp", "plain_ag", "resnet", 0.5),
    ("AG helps LSQ", "lsq_plain_ag", "lsq_plain", "resnet", None),
    ("ReLU after H's sums beats the linear sum", "plain_ag_relu", "plain_ag", "resnet", None),
    ("AG improves residual nets", "residual_ag", "residual", "resnet", 0.7),
    ("AG improves the k-bit MobileNetV2", "residual_ag", "residual", "mobilenetv2", None),
)
HOLDS, FAILS, CANNOT = "holds", "does not hold (the reverse is measured)", "cannot tell at this scale"


def compare(a: list[dict], b: list[dict], key: str = "top1", threshold: float = 0.0) -> dict:
    """The ``key`` delta of two arms (mean a - mean b, points), its spread, Welch's p and the verdict on the
    claim ``delta > threshold``.

    spread = the standard error of the difference of the means, sqrt(s_a^2/n_a + s_b^2/n_b) (sample stds
    over seeds); p = :func:`welch`'s two-sided p of ``delta = threshold``. The claim holds when p < ALPHA and
    delta > threshold, the reverse is measured when p < ALPHA and delta < threshold, and it cannot be told
    otherwise (or with a single seed on either side)."""
    ma, sa = mean_std(g[key] for g in a)
    mb, sb = mean_std(g[key] for g in b)
    delta = ma - mb
    test = welch(delta, [(None if sa is None else sa ** 2, len(a)), (None if sb is None else sb ** 2, len(b))],
                 threshold)
    loss = mean_std(g["train_loss"] for g in a)[0] / mean_std(g["train_loss"] for g in b)[0] - 1
    return {"delta": delta, "spread": test["se"], "p": test["p"], "verdict": _verdict(delta, test["p"], threshold),
            "train_loss_change": loss, "seeds": (len(a), len(b))}


def _verdict(delta: float, p: float | None, threshold: float = 0.0) -> str:
    if p is None:
        return CANNOT + " (one seed)"
    return CANNOT if p >= ALPHA else HOLDS if delta > threshold else FAILS


def verdicts(groups: dict, key: str = "top1") -> list[dict]:
    """One row per claim and network where both arms have finished runs, plus "AG helps more as depth
    grows" (the AG delta of the deepest ResNet measured minus ResNet-20's, Welch over its four arms). ``key``: the
    steadied top-1 (``"top1"``, the table's rule) or the raw one (``"raw_top1"``)."""
    rows = []
    for claim, a, b, family, paper in CLAIMS:
        archs = sorted({arch for arch, _ in groups if (arch, a) in groups and (arch, b) in groups})
        for arch in (x for x in archs if x.startswith(family)):
            rows.append({"claim": claim, "arch": arch, "arms": ((arch, a), (arch, b)), "paper": paper,
                         **compare(groups[(arch, a)], groups[(arch, b)], key)})
    ag = {r["arch"]: r for r in rows if r["claim"] == CLAIMS[0][0]}
    deep = [d for d in DEPTHS[1:] if d in ag]
    if "resnet20" in ag and deep:
        hi, lo = ag[deep[-1]], ag["resnet20"]
        delta = hi["delta"] - lo["delta"]
        terms = []
        for arm in hi["arms"] + lo["arms"]:  # the four groups of the difference of differences
            std = mean_std(g[key] for g in groups[arm])[1]
            terms.append((None if std is None else std ** 2, len(groups[arm])))
        test = welch(delta, terms)
        rows.append({"claim": "AG helps more as depth grows", "arch": f"{deep[-1]} vs resnet20",
                     "arms": hi["arms"] + lo["arms"], "paper": None, "delta": delta, "spread": test["se"],
                     "p": test["p"], "verdict": _verdict(delta, test["p"]), "train_loss_change": None,
                     "seeds": hi["seeds"] + lo["seeds"]})
    return rows


# The detection claims (issue 12): (claim, arm a, arm b, threshold): AP(a) - AP(b) > threshold.
DETECTION_CLAIMS = (
    ("4-bit + AG is within 1 AP of float", "4bit_ag", "float", -1.0),
    ("4-bit + AG is above 4-bit alone", "4bit_ag", "4bit", 0.0),
    ("4-bit + AG is above the compute-matched 4-bit (2x epochs)", "4bit_ag", "4bit_2x", 0.0),
    ("two-stage 4-bit + AG is within 1 AP of float", "staged_4bit_ag", "float", -1.0),
    ("two-stage 4-bit + AG is within 1 AP of float at 2x epochs (as many epochs in all)", "staged_4bit_ag",
     "float_2x", -1.0),
    ("two-stage 4-bit + AG is above two-stage 4-bit alone", "staged_4bit_ag", "staged_4bit", 0.0),
    ("two-stage 4-bit + AG is above the compute-matched two-stage 4-bit (2x epochs)", "staged_4bit_ag",
     "staged_4bit_2x", 0.0),
    ("two-stage: AG with FPN adaptors too is above AG with block adaptors only", "staged_4bit_ag_fpn",
     "staged_4bit_ag", 0.0),
)


def detection_verdicts(groups: dict) -> list[dict]:
    """One row per detection claim and detector network where both arms have finished runs."""
    rows = []
    for arch in sorted({a for a, _ in groups if a.startswith("det_")}):
        for claim, a, b, threshold in DETECTION_CLAIMS:
            if (arch, a) in groups and (arch, b) in groups:
                rows.append({"claim": claim, "arch": arch, "arms": ((arch, a), (arch, b)), "threshold": threshold,
                             **compare(groups[(arch, a)], groups[(arch, b)], "ap", threshold)})
    return rows


def _hardware() -> str:
    model = ""
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return (f"{model or platform.processor() or 'unknown CPU'}, {os.cpu_count()} CPU core(s), "
            f"{len(gpus)} GPU(s); {platform.platform()}; Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}")


def plot(groups: dict, path: str) -> None:
    """F's test top-1 per epoch for each method (mean over seeds), one panel per architecture."""
    from agq_keras.saving import atomic_write
    from agq_keras.training.callbacks import pyplot

    plt = pyplot(os.path.basename(path))
    if plt is None:
        return
    archs = sorted({a for a, _ in groups})
    fig, axes = plt.subplots(1, max(1, len(archs)), figsize=(6 * max(1, len(archs)), 4), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for method, label in METHODS:
            seeds = [g["val_top1"] for g in groups.get((arch, method), []) if g["val_top1"]]
            if not seeds:
                continue
            n = min(len(s) for s in seeds)
            curve = [statistics.fmean(s[i] for s in seeds) for i in range(n)]
            ax.plot(range(1, n + 1), curve, marker="o", markersize=3,
                    linestyle="--" if method.startswith("fp_") or method == "plain_2x" else "-",
                    label=f"{label} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})")
        ax.set_title(f"{arch}, Fashion-MNIST: F test top-1")
        ax.set_xlabel("epoch")
        ax.set_ylabel("top-1 (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# Step cost of a depth relative to ResNet-20 (measured on the CPU: docs/results_fmnist6.md), to estimate a
# run that has no finished twin at its own depth.
DEPTH_COST = {"resnet20": 1.0, "resnet32": 1.6, "resnet56": 2.7}


def progress(groups: dict, tables=("sweep", "mobilenetv2", "detection")) -> list[dict]:
    """Per table (its default plan, 3 seeds): runs finished, their measured wall time, and the time the rest
    would take at the measured speeds: the mean wall time of finished runs of the same network and method,
    else of the same method at another ResNet depth scaled by :data:`DEPTH_COST`; runs with neither are
    counted as not estimated."""
    walls: dict = {}
    for key, gs in groups.items():
        w = [g["wall_s"] for g in gs if g["wall_s"] is not None]
        if w:
            walls[key] = statistics.fmean(w)
    done = {Run(arch, method, g["seed"]).name for (arch, method), gs in groups.items() for g in gs}
    rows = []
    for table in tables:
        runs = plan(table)
        left = [r for r in runs if r.name not in done]
        estimate, unknown = 0.0, 0
        for r in left:
            if (r.arch, r.method) in walls:
                estimate += walls[(r.arch, r.method)]
                continue
            peers = [w * DEPTH_COST[r.arch] / DEPTH_COST[a] for (a, m), w in walls.items()
                     if m == r.method and a in DEPTH_COST and r.arch in DEPTH_COST]
            if peers:
                estimate += statistics.fmean(peers)
            else:
                unknown += 1
        planned = {r.name for r in runs}
        finished = [g["wall_s"] for (arch, method), gs in groups.items() for g in gs
                    if Run(arch, method, g["seed"]).name in planned and g["wall_s"] is not None]
        rows.append({"table": table, "planned": len(runs), "finished": len(runs) - len(left),
                     "finished_s": sum(finished), "left": [r.name for r in left], "left_s": estimate,
                     "not_estimated": unknown})
    return rows


def _data_line(groups: dict) -> str:
    subsets = sorted({str(g["train_subset"] or "all 60000") for gs in groups.values() for g in gs})
    tests = sorted({str(g.get("test_subset") or "all 10000") for gs in groups.values() for g in gs})
    bn = sorted({g["bn_batches"] for gs in groups.values() for g in gs})
    steady = ("F's BatchNorm statistics re-estimated over "
              f"{', '.join(str(b) for b in bn if b)} training batches before every evaluation (raw: training's "
              "running statistics)" if any(bn) else "training's running BatchNorm statistics")
    return (f"Fashion-MNIST, {', '.join(subsets)} training images, F evaluated on {', '.join(tests)} test "
            f"images; {steady}. The k-bit runs keep the first conv and the classifier at 16 bits and start from the "
            "full-precision F (seed 0) of their network and shortcut type.")


def summary(rows: list[dict]) -> str:
    """The evidence in one paragraph (results.md's first), from the verdict rows."""
    if not rows:
        return "No verdict yet: no comparison has finished runs on both sides."
    parts = []
    for r in rows:
        spread = f"± {r['spread']:.2f} (SE), p = {r['p']:.3f}" if r["p"] is not None else "(one seed)"
        parts.append(f"{r['claim']} on {r['arch']}: {r['delta']:+.2f} pt {spread}, "
                     f"{r['seeds'][0]} vs {r['seeds'][1]} seeds: {r['verdict']}")
    return "Measured on Fashion-MNIST at CPU scale: " + "; ".join(parts) + "."


# A run whose steadied top-1 is further than this from its raw top-1 (points) is listed by the report's
# evaluation check: the BatchNorm re-estimation and training's running statistics disagree on it.
EVAL_DISAGREEMENT_PT = 5.0


def evaluation_check(groups: dict, rows: list[dict]) -> list[str]:
    """The report's check of the steadied evaluation: the runs whose steadied and raw top-1 differ by more
    than ``EVAL_DISAGREEMENT_PT``, and the verdict rows that read differently on raw top-1."""
    labels = dict(METHODS)
    lines = ["### Evaluation check", "",
             f"Runs whose steadied top-1 differs from the raw top-1 by more than {EVAL_DISAGREEMENT_PT:g} points, "
             "either way (the re-estimated BatchNorm statistics and training's running ones disagree on them):", ""]
    odd = [f"* {arch}, {labels.get(method, method)}, seed {g['seed']}: {g['top1']:.2f} % steadied, "
           f"{g['raw_top1']:.2f} % raw" for (arch, method), gs in sorted(groups.items()) for g in gs
           if abs(g["top1"] - g["raw_top1"]) > EVAL_DISAGREEMENT_PT]
    lines += odd or ["* none"]
    raw = {(r["claim"], r["arch"]): r for r in verdicts(groups, "raw_top1")}
    changed = []
    for r in rows:
        q = raw[(r["claim"], r["arch"])]
        if q["verdict"] != r["verdict"]:
            spread = f"{q['spread']:.2f}, p = {q['p']:.3f}" if q["p"] is not None else "n/a"
            changed.append(f"* {r['claim']}, {r['arch']}: {q['delta']:+.2f} ± {spread}, {q['verdict']} "
                           f"(steadied: {r['delta']:+.2f}, {r['verdict']})")
    lines += ["", "Verdicts that read differently on raw top-1 (the table keeps the steadied numbers):", ""]
    lines += changed or ["* none"]
    return lines


def split_groups(groups: dict) -> tuple[dict, dict]:
    """(the classification runs, the detectors: networks named ``det_*``)."""
    det = {k: v for k, v in groups.items() if k[0].startswith("det_")}
    return {k: v for k, v in groups.items() if k not in det}, det


def render(groups: dict, *, command: str, hardware: str, png_name: str) -> str:
    """The Markdown of results.md."""
    if not groups:
        raise ValueError("no finished run to report (no metrics.json under the workdir or the record).")
    walls = [g["wall_s"] for gs in groups.values() for g in gs if g["wall_s"] is not None]
    n_runs = sum(len(gs) for gs in groups.values())
    everything, (groups, detectors) = groups, split_groups(groups)
    lines = [
        "# Results on Fashion-MNIST (CPU scale)", "",
        "Generated by `scripts/reproduce.py` from the runs' `metrics.json` files — do not edit by hand.", "",
        f"* Command: `{command}`",
        f"* Hardware: {hardware}",
        f"* Wall time: {sum(walls) / 60:.1f} min of training in {len(walls)} timed run(s) ({n_runs} run(s) "
        "reported)",
        f"* Data: {_data_line(groups)}" if groups else "* Data: no classification run yet", "",
    ]
    rows = verdicts(groups)
    lines += ["## In one paragraph", "", summary(rows), ""]
    lines += ["## Verdict", "",
              "Δ = top-1 of the first arm minus the second (points, mean over seeds). Spread = the standard error "
              "of that difference, sqrt(s_a²/n_a + s_b²/n_b); p = Welch's two-sided t-test of Δ = 0 (unequal "
              "variances, Welch–Satterthwaite degrees of freedom; for the depth claim, a difference of two Δs, "
              "over its four arms). A claim holds when p < 0.05 and Δ > 0, the reverse is measured when p < 0.05 "
              "and Δ < 0, and it cannot be told otherwise. "
              + (f"{len(rows)} comparisons, each at 0.05 with no correction for multiplicity: about "
                 f"{ALPHA * len(rows):.1f} of them would read 'holds' or 'reverse' by chance alone if no arm "
                 "differed. " if rows else "")
              + "The training-loss change is F's final training loss, relative. The paper's deltas (ResNet-18, "
              "CIFAR-100, Table 6) are quoted, not measured here.", ""]
    if rows:
        lines += ["| Claim | Network | Δ top-1 | Spread | p | Seeds | Verdict | F train loss change | Paper Δ |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            spread = f"{r['spread']:.2f}" if r["spread"] is not None else "n/a"
            loss = f"{100 * r['train_loss_change']:+.1f} %" if r["train_loss_change"] is not None else "—"
            paper = f"{r['paper']:+.1f}" if r["paper"] is not None else "—"
            seeds = "/".join(str(n) for n in r["seeds"])
            lines.append(f"| {r['claim']} | {r['arch']} | {r['delta']:+.2f} | {spread} | {_p(r['p'])} | {seeds} | "
                         f"{r['verdict']} | {loss} | {paper} |")
        lines += [""] + evaluation_check(groups, rows)
    else:
        lines.append("No comparison has finished runs on both sides yet.")
    lines += ["", "## Progress", "",
              "Each table's plan at 3 seeds, before follow-up seeds; the time left is estimated from the finished "
              "runs' wall times (same network and method, else the same method at another depth scaled by the "
              "measured step cost), on this machine.", "",
              "| Table | Runs finished | Training time so far (min) | Runs left | Estimated time left (h) |",
              "|---|---|---|---|---|"]
    for p in progress(everything):
        unknown = f" + {p['not_estimated']} run(s) not estimated yet" if p["not_estimated"] else ""
        lines.append(f"| {p['table']} | {p['finished']} of {p['planned']} | {p['finished_s'] / 60:.1f} | "
                     f"{len(p['left'])} | {p['left_s'] / 3600:.1f}{unknown} |")
    lines += ["", "## Runs", "",
              "Top-1 and top-5 (%) of F, steadied (re-estimated BatchNorm statistics, the saved `f.keras`) and "
              "raw (training's running statistics), and F's training loss in the last epoch: mean ± sample std "
              "over seeds. Swing = the mean absolute change of test top-1 between consecutive epochs, steadied / "
              "raw, averaged over seeds.", "",
              "| Network | Method | Quantizer | W/A bits | Seeds | Epochs | Top-1 (%) | Top-1 raw (%) | Top-5 (%) "
              "| F train loss | Swing (pt) | Time / run (min) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch, label, gs, minutes in _arms(groups):
        sw = [swing(g["val_top1"]) for g in gs]
        sr = [swing(g["raw_val_top1"]) for g in gs]
        sw_text = (f"{statistics.fmean(sw):.2f} / {statistics.fmean(sr):.2f}"
                   if None not in sw and None not in sr else "n/a")
        bits = "/".join(str(b) for b in gs[0]["bits"])
        lines.append(f"| {arch} | {label} | {gs[0]['quantizer']} | {bits} | {len(gs)} | {gs[0]['epochs']} | "
                     f"{_fmt(g['top1'] for g in gs)} | {_fmt(g['raw_top1'] for g in gs)} | "
                     f"{_fmt(g['top5'] for g in gs)} | {_fmt((g['train_loss'] for g in gs), 4)} | {sw_text} | "
                     f"{minutes} |")
    lines += ["", "## Convergence (like the paper's Fig. 3)", "", f"![F test top-1 per epoch]({png_name})", ""]
    if detectors:
        lines += render_detection(detectors)
    return "\n".join(lines)


def render_detection(groups: dict) -> list[str]:
    """The "Detection" section (issue 12): the claims, then every detector run's AP, AP50, AP75 and loss."""
    canvases = sorted({str(g["train_canvases"]) for gs in groups.values() for g in gs})
    tests = sorted({str(g["test_images"]) for gs in groups.values() for g in gs})
    lines = ["## Detection", "",
             f"The RetinaNet-style detector (`agq_keras.detection`, `configs/detection.py`) on the "
             f"Fashion-MNIST detection twin: {', '.join(canvases)} training canvases (128×128, 1–6 garments), "
             f"F evaluated on {', '.join(tests)} test canvases with pycocotools' AP@[.5:.95], AP50 and AP75 (in %). "
             "ResNet-20 backbone (ImageNet stem), FPN P3–P5, class and box towers; the 4-bit nets quantize the "
             "backbone, FPN and towers with DoReFa and keep the stem and the prediction convs at 16 bits. The "
             "first arms start from scratch; the two-stage arms are stage 2 of the paper's recipe: they start "
             "from the float F of seed 0 (trained 6 epochs) and train as many epochs as their from-scratch "
             "twin.", "",
             "Δ = AP of the first arm minus the second (points, mean over seeds), spread = the standard error "
             "of the difference, p = Welch's two-sided t-test of Δ = t. A claim `Δ > t` holds when p < 0.05 and "
             "Δ > t, the reverse is measured when p < 0.05 and Δ < t, and it cannot be told otherwise (each "
             "comparison at 0.05, no correction for multiplicity). The paper (CVPR 2020) reports its 4-bit "
             "detector \"near lossless\" against full precision.", ""]
    rows = detection_verdicts(groups)
    if rows:
        lines += ["| Claim | Network | Δ AP | t | Spread | p | Seeds | Verdict | F train loss change |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            spread = f"{r['spread']:.2f}" if r["spread"] is not None else "n/a"
            lines.append(f"| {r['claim']} | {r['arch']} | {r['delta']:+.2f} | {r['threshold']:+.1f} | {spread} | "
                         f"{_p(r['p'])} | {'/'.join(str(n) for n in r['seeds'])} | {r['verdict']} | "
                         f"{100 * r['train_loss_change']:+.1f} % |")
        lines.append("")
    lines += ["| Network | Method | W/A bits | Seeds | Epochs | AP | AP50 | AP75 | F train loss | H's AP | "
              "Time / run (min) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch, label, gs, minutes in _arms(groups):
        h = [g["h_ap"] for g in gs if g["h_ap"] is not None]
        lines.append(f"| {arch} | {label} | {'/'.join(str(b) for b in gs[0]['bits'])} | {len(gs)} | "
                     f"{gs[0]['epochs']} | {_fmt(g['ap'] for g in gs)} | {_fmt(g['ap50'] for g in gs)} | "
                     f"{_fmt(g['ap75'] for g in gs)} | {_fmt((g['train_loss'] for g in gs), 4)} | "
                     f"{_fmt(h) if h else '—'} | {minutes} |")
    return lines + [""]


def _arms(groups: dict):
    """``(network, method label, its runs, mean wall time per run in min or "n/a")`` of every arm with
    finished runs, in the tables' order."""
    for arch in sorted({a for a, _ in groups}):
        for method, label in METHODS:
            gs = groups.get((arch, method))
            if gs:
                w = [g["wall_s"] for g in gs if g["wall_s"] is not None]
                yield arch, label, gs, f"{statistics.fmean(w) / 60:.1f}" if w else "n/a"


def check_results_path(results_path: str) -> None:
    """Checked before any training, so a bad path does not waste the runs."""
    if not results_path.endswith(".md"):
        raise ValueError(f"results={results_path!r} must be a .md file.")
    folder = os.path.dirname(os.path.abspath(results_path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder of results {results_path!r} does not exist; create it first.")


def write_results(workdir: str, results_path: str, *, command: str, record: str | None = None) -> dict:
    """Write ``results_path`` (Markdown, its first section the evidence in one paragraph: :func:`summary`) and
    the convergence PNG next to it, atomically, from every finished run in ``record`` and ``workdir``. Nothing
    else is written: the README links to the results, the library never edits it."""
    from agq_keras.saving import write_text

    check_results_path(results_path)
    groups = load_results(record, workdir)
    png = os.path.splitext(results_path)[0] + "_convergence.png"
    text = render(groups, command=command, hardware=_hardware(), png_name=os.path.basename(png))
    classification = split_groups(groups)[0]
    plot(classification, png)
    write_text(results_path, text)
    return {"results": results_path, "png": png, "groups": groups}
