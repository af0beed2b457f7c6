"""The paper study's runs (``scripts/reproduce.py``): the CPU-scale experiments on the real Fashion-MNIST.

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
precision) are copied to the record, so a new checkout continues where the last one stopped;
:mod:`study.report` then renders ``results.md`` from the record.

Sizing (15 000 training images, the recipe's 7 epochs, 10 000 test images, batch 128): the wall time of
every finished run is in docs/results.md ("Time / run"); the first Table 6 twin measured ResNet-20 plain
4.7 min, plain + AG 8.5 min and ResNet-32 about 1.6x that on this 2-core machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from study.arms import DEEP_ARCHS, DEPTHS, LABELS, Run
from study.verdicts import CANNOT, verdicts


TABLES = ("sweep", "mobilenetv2", "fmnist6", "detection", "table6")


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


# The paper's Table 6 (CIFAR-100, 2-bit DoReFa ResNet-18, configs/paper.py's table6 rows): residual and plain,
# +- AG, + SSP, and the compute-matched plain net at 2x epochs; stage 1 is the full-precision F of each shortcut
# type (seed 0), trained with the recipe's stage-1 schedule (SGD, lr 0.1, 90 epochs, / 10 at 30 and 60).
TABLE6_ARCH = "resnet18"
TABLE6_ARMS = ("residual", "residual_ag", "residual_ag_ssp", "plain", "plain_ag", "plain_ag_ssp", "plain_2x")
MAX_SEEDS = 5  # follow-up: an arm of a comparison Welch's test cannot decide gets seeds up to this many


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
    * ``table6``: the paper's Table 6 on CIFAR-100: the full-precision F of each shortcut type (seed 0), then
      :data:`TABLE6_ARMS`, ``seeds`` seeds each.
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
    if table == "table6":
        return ([Run(TABLE6_ARCH, "fp_residual"), Run(TABLE6_ARCH, "fp_plain")]
                + [Run(TABLE6_ARCH, m, s) for s in range(seeds) for m in TABLE6_ARMS])
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
    :data:`DETECTION_BUDGET` (``train_subset`` and ``test_subset`` do not apply to it). A Table 6 run
    (:data:`TABLE6_ARCH`) is ``configs/paper.py``'s ``table6`` row, its full-precision run on the recipe's
    stage-1 schedule (``pretrain_*``); ``data_dir`` is then the prepared tfds folder."""
    from agq_keras.configs import fmnist, paper

    if run.arch.startswith("det_"):
        return _detection_config(run, workdir, record, epochs=epochs, verbose=verbose, data_dir=data_dir)

    if run.arch == TABLE6_ARCH:
        c = paper.get_config(f"table6/{run.arch}_{_FMNIST_METHOD[run.method]}")
        if run.method.startswith("fp_"):  # stage 1 of section 4.1
            c.optimizer, c.learning_rate = c.pretrain_optimizer, c.pretrain_learning_rate
            c.epochs, c.lr_decay_epochs = c.pretrain_epochs, c.pretrain_lr_decay_epochs
    elif run.arch == "mobilenetv2" and run.method.startswith("fp_"):
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

