"""The CPU-scale twin of the paper's Table 6 on the real Fashion-MNIST (``scripts/reproduce.py``).

Runs (2-bit DoReFa, ``agq_keras/configs/fmnist.py`` variants, i.e. ``agq_keras.configs.base.cpu_recipe`` +
``apply_method``), each trained by :func:`agq_keras.experiments.run.run` in ``workdir/<run name>``:

* ResNet-20: full precision (residual, and plain), residual 2-bit, +AG, +AG+SSP, plain 2-bit,
  plain+AG (both over ``seeds`` seeds), plain+AG+SSP, and a *compute-matched* plain 2-bit baseline
  trained for twice the epochs (an AG step costs about two F steps);
* the deeper pair (ResNet-32 by default): full precision (residual, plain), residual 2-bit,
  plain 2-bit, plain+AG.

Stage 1 of the recipe (section 4.1) is the full-precision row itself: every 2-bit run starts from
the full-precision F of the same architecture and shortcut type (``init_checkpoint``; seed 0),
so it is trained once, not once per run.

Resumable per run: a run whose ``metrics.json`` exists is not redone (a run killed midway resumes
from its own backup). Then :func:`write_results` renders ``results.md`` (a Table 6-like table:
top-1, top-5 and F's final training loss as mean ± std over seeds, the deltas next to the paper's,
the command, the hardware, the wall time) and a convergence PNG next to it, from the
``metrics.json`` files only.

Default sizing (15 000 training images, the recipe's 7 epochs, the full 10 000 test images,
batch 128, 3 seeds, 18 runs): at the speeds measured on this 2-core machine when quiet (float F
about 1000 images/s, 2-bit F about 800, an AG step about 450; ResNet-32 about 1.6x slower than
ResNet-20) the training is about 3 500 s, the per-epoch evaluations about 600 s and building,
tracing and saving about 500 s: about 80 minutes in all (the estimate). Measured: the committed
docs/results.md took 103 min of run wall time (the machine was shared with other jobs for part of it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time

TABLES = ("fmnist6",)
DEEP_ARCHS = ("resnet32", "resnet56")
# The paper's Table 6 deltas (top-1 points, ResNet-18 on CIFAR-100), quoted for comparison.
PAPER_DELTAS = {"plain+AG − plain": 3.3, "plain+AG+SSP − plain+AG": 0.5, "residual+AG − residual": 0.7}
# Row order and labels of the table.
METHODS = (
    ("fp_residual", "full precision (residual)"),
    ("fp_plain", "full precision (plain)"),
    ("residual", "residual 2-bit"),
    ("residual_ag", "residual 2-bit + AG"),
    ("residual_ag_ssp", "residual 2-bit + AG + SSP"),
    ("plain", "plain 2-bit"),
    ("plain_ag", "plain 2-bit + AG"),
    ("plain_ag_ssp", "plain 2-bit + AG + SSP"),
    ("plain_2x", "plain 2-bit, 2x epochs (compute-matched to AG)"),
)
LABELS = dict(METHODS)
_FMNIST_METHOD = {"fp_residual": "residual_base", "fp_plain": "plain_base", "residual": "residual_base",
                  "residual_ag": "residual_ag", "residual_ag_ssp": "residual_ag_ssp", "plain": "plain_base",
                  "plain_ag": "plain_ag", "plain_ag_ssp": "plain_ag_ssp", "plain_2x": "plain_base"}


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
        """The full-precision run whose F initialises this one (stage 1), or None."""
        if self.method.startswith("fp_"):
            return None
        return Run(self.arch, "fp_residual" if self.method.startswith("residual") else "fp_plain").name


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")
    return value


def plan(table: str = "fmnist6", seeds: int = 3, deep_arch: str = "resnet32") -> list[Run]:
    """The runs of a table, in an order where every run's ``init_from`` comes first."""
    if table not in TABLES:
        raise ValueError(f"table={table!r} is not supported; allowed: {', '.join(TABLES)}.")
    _check_int("seeds", seeds, 1)
    if deep_arch not in DEEP_ARCHS:
        raise ValueError(f"deep_arch={deep_arch!r} is not supported; allowed: {', '.join(DEEP_ARCHS)}.")
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


def make_config(run: Run, workdir: str, *, train_subset: int = 15000, test_subset: int = 0, epochs: int = 0,
                verbose: int = 2):
    """The training config of one run: ``agq_keras/configs/fmnist.py``'s variant, the recipe's schedule
    rescaled to ``epochs`` (0 = the recipe's own), doubled for the compute-matched run."""
    from agq_keras.configs import fmnist

    c = fmnist.get_config(f"{run.arch}_{_FMNIST_METHOD[run.method]}")
    base = c.epochs
    target = (epochs or base) * (2 if run.method == "plain_2x" else 1)
    c.lr_decay_epochs = tuple(sorted({_scaled(e, base, target) for e in c.lr_decay_epochs}))
    c.ssp_decay_epoch = _scaled(c.ssp_decay_epoch, base, target)
    c.epochs = target
    c.train_subset, c.test_subset = _check_int("train_subset", train_subset, 0), _check_int("test_subset",
                                                                                            test_subset, 0)
    c.seed, c.verbose, c.pretrain_epochs = run.seed, verbose, 0
    if run.method.startswith("fp_"):
        c.w_bits = c.a_bits = 32
    else:
        c.init_checkpoint = os.path.join(workdir, run.init_from, "f.keras")
    return c


def run_all(runs: list[Run], workdir: str, log=print, **config_kwargs) -> dict:
    """Train every run not finished yet; returns ``{name: "trained" | "skipped"}``."""
    import keras

    from agq_keras.saving import write_text
    from agq_keras.experiments import run as runner

    runner.check_workdir(workdir)
    configs = {r.name: make_config(r, workdir, **config_kwargs) for r in runs}  # validate all first
    for c in configs.values():
        runner.validate(c)
    status = {}
    for r in runs:
        out = os.path.join(workdir, r.name)
        if os.path.isfile(os.path.join(out, "metrics.json")):
            log(f"[skip] {r.name}: finished (metrics.json exists)")
            status[r.name] = "skipped"
            continue
        c = configs[r.name]
        if c.init_checkpoint and not os.path.isfile(c.init_checkpoint):
            raise FileNotFoundError(f"run {r.name} starts from {c.init_checkpoint!r}, which does not exist: "
                                    f"run {r.init_from} first (it is listed before {r.name} in the plan).")
        log(f"[run] {r.name}: {LABELS[r.method]}, seed {r.seed}, {c.epochs} epoch(s)")
        start = time.time()
        runner.run(c, out)
        wall = time.time() - start
        keras.backend.clear_session()  # 18 runs in one process: drop the finished run's graphs
        write_text(os.path.join(out, "reproduce.json"), json.dumps({"wall_s": wall, "run": dataclasses.asdict(r)}))
        status[r.name] = "trained"
    return status


# -- results --------------------------------------------------------------------------------------------------


def load_results(runs: list[Run], workdir: str) -> dict:
    """``{(arch, method): [per-seed dicts]}`` from the finished runs' files."""
    groups: dict = {}
    for r in runs:
        out = os.path.join(workdir, r.name)
        path = os.path.join(out, "metrics.json")
        if not os.path.isfile(path):
            continue
        with open(path) as fh:
            m = json.load(fh)
        wall = None
        if os.path.isfile(os.path.join(out, "reproduce.json")):
            with open(os.path.join(out, "reproduce.json")) as fh:
                wall = json.load(fh)["wall_s"]
        history = m.get("history", {})
        groups.setdefault((r.arch, r.method), []).append({
            "seed": r.seed, "top1": 100 * m["f"]["top1"], "top5": 100 * m["f"]["top5"],
            "train_loss": history["loss"][-1] if history.get("loss") else float("nan"),
            "val_top1": [100 * a for a in history.get("val_accuracy", [])], "epochs": m.get("epochs"),
            "train_subset": m.get("config", {}).get("train_subset"),
            "test_subset": m.get("config", {}).get("test_subset"), "wall_s": wall})
    return groups


def mean_std(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _fmt(values, digits=2) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def deltas(groups: dict) -> list[dict]:
    """The Table 6 comparisons (top-1 points) with the seed spread of both sides."""
    pairs = (("plain+AG − plain", "plain_ag", "plain"), ("plain+AG+SSP − plain+AG", "plain_ag_ssp", "plain_ag"),
             ("residual+AG − residual", "residual_ag", "residual"),
             ("residual − plain+AG (gap left)", "residual", "plain_ag"),
             ("plain 2x epochs − plain (compute)", "plain_2x", "plain"),
             ("plain+AG − plain 2x epochs (compute-matched)", "plain_ag", "plain_2x"))
    rows = []
    for arch in sorted({a for a, _ in groups}):
        for name, a, b in pairs:
            if (arch, a) not in groups or (arch, b) not in groups:
                continue
            ga, gb = groups[(arch, a)], groups[(arch, b)]
            delta = mean_std(g["top1"] for g in ga)[0] - mean_std(g["top1"] for g in gb)[0]
            stds = [s for s in (mean_std(g["top1"] for g in ga)[1], mean_std(g["top1"] for g in gb)[1])
                    if s is not None]
            spread = max(stds) if stds else None
            loss_delta = (mean_std(g["train_loss"] for g in ga)[0] / mean_std(g["train_loss"] for g in gb)[0] - 1)
            if spread is None:
                verdict = "no seed spread measured (one seed each)"
            elif abs(delta) > spread:
                verdict = f"{'higher' if delta > 0 else 'lower'} by more than the seed spread"
            else:
                verdict = "within the seed spread"
            rows.append({"arch": arch, "comparison": name, "delta": delta, "spread": spread,
                         "train_loss_change": loss_delta, "verdict": verdict,
                         "paper": PAPER_DELTAS.get(name)})
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


def render(groups: dict, *, command: str, hardware: str, png_name: str) -> str:
    """The Markdown of results.md."""
    if not groups:
        raise ValueError("no finished run to report (no metrics.json under the workdir).")
    walls = [g["wall_s"] for gs in groups.values() for g in gs if g["wall_s"] is not None]
    n_runs = sum(len(gs) for gs in groups.values())
    subsets = sorted({str(g["train_subset"] or "all 60000") for gs in groups.values() for g in gs})
    tests = sorted({str(g.get("test_subset") or "all 10000") for gs in groups.values() for g in gs})
    lines = [
        "# Table 6 twin on Fashion-MNIST (CPU scale)", "",
        "Generated by `scripts/reproduce.py` from the runs' `metrics.json` files — do not edit by hand.", "",
        f"* Command: `{command}`",
        f"* Hardware: {hardware}",
        f"* Wall time: {sum(walls) / 60:.1f} min of training in {len(walls)} timed run(s) "
        f"({n_runs} run(s) reported)",
        f"* Data: Fashion-MNIST, {', '.join(subsets)} training images, F evaluated on "
        f"{', '.join(tests)} test images; "
        "2-bit DoReFa weights and activations (first conv and classifier 16-bit); each 2-bit run starts "
        "from the full-precision F of its row's architecture and shortcut type.",
        "",
        "Top-1, top-5 (%) and F's training loss in the last epoch: mean ± sample std over seeds.", "",
        "| Network | Method | Seeds | Epochs | Top-1 (%) | Top-5 (%) | F train loss | Time / run (min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arch in sorted({a for a, _ in groups}):
        for method, label in METHODS:
            gs = groups.get((arch, method))
            if not gs:
                continue
            w = [g["wall_s"] for g in gs if g["wall_s"] is not None]
            minutes = f"{statistics.fmean(w) / 60:.1f}" if w else "n/a"
            lines.append(f"| {arch} | {label} | {len(gs)} | {gs[0]['epochs']} | {_fmt(g['top1'] for g in gs)} | "
                         f"{_fmt(g['top5'] for g in gs)} | {_fmt((g['train_loss'] for g in gs), 4)} | {minutes} |")
    rows = deltas(groups)
    if rows:
        lines += ["", "## Deltas (top-1 points) against the paper's Table 6 (ResNet-18, CIFAR-100)", "",
                  "Seed spread = the larger sample std of the two sides. The paper's deltas are quoted, not "
                  "measured here.", "",
                  "| Network | Comparison | Δ top-1 | Seed spread | Verdict | F train loss change (relative) "
                  "| Paper Δ |",
                  "|---|---|---|---|---|---|---|"]
        for d in rows:
            spread = f"{d['spread']:.2f}" if d["spread"] is not None else "n/a"
            paper = f"{d['paper']:+.1f}" if d["paper"] is not None else "—"
            lines.append(f"| {d['arch']} | {d['comparison']} | {d['delta']:+.2f} | {spread} | {d['verdict']} | "
                         f"{100 * d['train_loss_change']:+.1f} % | {paper} |")
    lines += ["", "## Convergence (like the paper's Fig. 3)", "", f"![F test top-1 per epoch]({png_name})", ""]
    return "\n".join(lines)


def check_results_path(results_path: str) -> None:
    """Checked before any training, so a bad path does not waste the runs."""
    if not results_path.endswith(".md"):
        raise ValueError(f"results={results_path!r} must be a .md file.")
    folder = os.path.dirname(os.path.abspath(results_path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder of results {results_path!r} does not exist; create it first.")


def write_results(runs: list[Run], workdir: str, results_path: str, *, command: str) -> dict:
    """Write ``results_path`` (Markdown) and the convergence PNG next to it, atomically."""
    from agq_keras.saving import write_text

    check_results_path(results_path)
    groups = load_results(runs, workdir)
    png = os.path.splitext(results_path)[0] + "_convergence.png"
    text = render(groups, command=command, hardware=_hardware(), png_name=os.path.basename(png))
    plot(groups, png)
    write_text(results_path, text)
    return {"results": results_path, "png": png, "groups": groups}
