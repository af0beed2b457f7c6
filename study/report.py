"""docs/results.md from the study's records (``scripts/reproduce.py``).

:func:`write_results` renders ``results.md`` (the verdict table, every run's top-1 steadied and raw, top-5,
training loss, epoch-to-epoch swing and time, mean ± std over seeds) and a convergence PNG next to it, from
the ``metrics.json`` files only, the evidence in one paragraph first. The library never edits the README, which
links to ``results.md``; nothing here writes it either.
"""

from __future__ import annotations

import json
import os
import platform
import statistics

from study.arms import METHODS, Run
from study.verdicts import ALPHA, detection_verdicts, mean_std, verdicts
from study.runner import plan


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
            run = {"seed": r.seed, "dataset": config.get("dataset", "fashion_mnist"),
                   "train_loss": history["loss"][-1] if history.get("loss") else float("nan"),
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


def _p(p: float | None) -> str:
    return "n/a" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _fmt(values, digits=2) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


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
        ax.set_title(f"{arch}, {DATASETS[dataset(groups)][0]}: F test top-1")
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


# dataset -> (its name in the report, its training images, the tables whose progress the report shows)
DATASETS = {"fashion_mnist": ("Fashion-MNIST", 60000, ("sweep", "mobilenetv2", "detection")),
            "cifar100": ("CIFAR-100", 50000, ("table6",))}


def dataset(groups: dict) -> str:
    """The classification runs' dataset (``fashion_mnist`` when none says): one report, one dataset."""
    found = sorted({g.get("dataset", "fashion_mnist") for gs in groups.values() for g in gs}) or ["fashion_mnist"]
    if len(found) > 1 or found[0] not in DATASETS:
        raise ValueError(f"the runs to report are on {found}; one report covers one of {', '.join(DATASETS)}.")
    return found[0]


def _data_line(groups: dict) -> str:
    name, size, _ = DATASETS[dataset(groups)]
    subsets = sorted({str(g["train_subset"] or f"all {size}") for gs in groups.values() for g in gs})
    tests = sorted({str(g.get("test_subset") or "all 10000") for gs in groups.values() for g in gs})
    bn = sorted({g["bn_batches"] for gs in groups.values() for g in gs})
    steady = ("F's BatchNorm statistics re-estimated over "
              f"{', '.join(str(b) for b in bn if b)} training batches before every evaluation (raw: training's "
              "running statistics)" if any(bn) else "training's running BatchNorm statistics")
    return (f"{name}, {', '.join(subsets)} training images, F evaluated on {', '.join(tests)} test "
            f"images; {steady}. The k-bit runs keep the first conv and the classifier at 16 bits and start from the "
            "full-precision F (seed 0) of their network and shortcut type.")


def summary(rows: list[dict], where: str = "Fashion-MNIST at CPU scale") -> str:
    """The evidence in one paragraph (results.md's first), from the verdict rows."""
    if not rows:
        return "No verdict yet: no comparison has finished runs on both sides."
    parts = []
    for r in rows:
        spread = f"± {r['spread']:.2f} (SE), p = {r['p']:.3f}" if r["p"] is not None else "(one seed)"
        parts.append(f"{r['claim']} on {r['arch']}: {r['delta']:+.2f} pt {spread}, "
                     f"{r['seeds'][0]} vs {r['seeds'][1]} seeds: {r['verdict']}")
    return f"Measured on {where}: " + "; ".join(parts) + "."


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
    name, _, tables = DATASETS[dataset(groups)]
    where = "Fashion-MNIST at CPU scale" if name == "Fashion-MNIST" else f"{name}, the paper's Table 6"
    lines = [
        f"# Results on {name} (CPU scale)" if name == "Fashion-MNIST" else f"# Results on {name}: the paper's Table 6",
        "",
        "Generated by `scripts/reproduce.py` from the runs' `metrics.json` files — do not edit by hand.", "",
        f"* Command: `{command}`",
        f"* Hardware: {hardware}",
        f"* Wall time: {sum(walls) / 60:.1f} min of training in {len(walls)} timed run(s) ({n_runs} run(s) "
        "reported)",
        f"* Data: {_data_line(groups)}" if groups else "* Data: no classification run yet", "",
    ]
    rows = verdicts(groups)
    lines += ["## In one paragraph", "", summary(rows, where), ""]
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
    for p in progress(everything, tables):
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

