"""Benchmarks, measured side by side in one run: `python -m benchmarks.run` (from the repository root).

Prints a table and writes JSON (``--output``, atomically). Targets are goals, reported here,
never asserted in unit tests (docs/benchmarks.md).

* training step images/s (median of ``--steps`` timed steps after warm-up, batch 128) for
  each arch of ``--archs``: float F, 2-bit DoReFa F, AG, AG+SSP, KD, additional losses (the
  trainers ``agq_keras.experiments.run.make_trainer`` builds), with the ratios;
* deployment (``benchmarks/deploy.py``, a fresh process per model): int8 vs float32 TFLite of the
  same 2-bit plain F, file size and single-image LiteRT latency (builtin kernels and XNNPACK), and the
  exporter's peak memory, for ResNet-18 (ImageNet stem, 224x224x3, 1000 classes) and ResNet-20
  (Fashion-MNIST, 28x28x1, 10 classes), with 8-bit and the paper's 16-bit first/last layers;
* the Fashion-MNIST input pipeline's images/s vs the fastest training step's consumption;
* peak RSS of a training step, 2-bit F vs AG (fresh process each).

Smoke mode (seconds, not a measurement): ``--archs=resnet20 --variants="float F,AG" --steps=2
--warmup=1 --deploy=resnet20 --deploy_runs=2 --pipeline_batches=5 --nomemory``.
"""

from __future__ import annotations

import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("archs", ["resnet20", "resnet18"], "Architectures to time (resnet18 is CIFAR-style).")
flags.DEFINE_list("variants", ["float F", "2-bit F", "2-bit LSQ F", "4-bit F", "4-bit LSQ F", "AG", "AG+SSP", "KD",
                                "additional losses"],
                  "Training variants to time.")
flags.DEFINE_boolean("plain", True, "Plain nets (no float shortcuts); --noplain for residual.")
flags.DEFINE_integer("batch_size", 128, "Batch size of the timed steps.")
flags.DEFINE_integer("steps", 20, "Timed steps per variant (after warm-up).")
flags.DEFINE_integer("warmup", 3, "Untimed warm-up steps per variant.")
flags.DEFINE_list("deploy", ["resnet18", "resnet20"], "Exported models to measure (resnet18: ImageNet stem, "
                  "224x224x3, 1000 classes; resnet20: Fashion-MNIST); empty = skip.")
flags.DEFINE_list("deploy_first_last", ["8", "16"], "first_last_bits of the exported models (8 and/or 16).")
flags.DEFINE_integer("deploy_runs", 50, "Timed single-image invocations per TFLite model (0: sizes only).")
flags.DEFINE_integer("pipeline_batches", 200, "Timed batches of the input pipeline (0 = skip).")
flags.DEFINE_boolean("memory", True, "Measure peak RSS of 2-bit F vs AG steps (fresh processes).")
flags.DEFINE_string("output", "runs/benchmarks.json", "Write the results as JSON here.")

INPUT_SHAPE, NUM_CLASSES = (28, 28, 1), 10
TARGETS = {  # ratio name: (comparison, bound)
    "quantized/float step time": ("<=", 1.10),
    "AG/F-only step time": ("<=", 2.05),
    "2-bit LSQ/DoReFa step time": ("<=", 1.10),
    "4-bit LSQ/DoReFa step time": ("<=", 1.10),
    "AG/KD step time": ("<=", 1.0),
    "int8/float32 latency (XNNPACK)": ("<=", 0.5),
    "int8/float32 size": ("<=", 0.27),
    "packed/float32 size": ("<=", 0.14),
    "pipeline/step images/s": (">=", 5.0),
}


def _check_flags():
    from benchmarks.train_step import VARIANTS
    from agq_keras.models.builder import ARCHITECTURES

    for arch in FLAGS.archs:
        if arch not in ARCHITECTURES:
            raise app.UsageError(f"unknown arch {arch!r}; allowed: {', '.join(ARCHITECTURES)}.")
    for arch in FLAGS.deploy:
        if arch not in DEPLOY_MODELS:
            raise app.UsageError(f"unknown --deploy model {arch!r}; allowed: {', '.join(DEPLOY_MODELS)}.")
    for bits in FLAGS.deploy_first_last:
        if bits not in ("8", "16"):
            raise app.UsageError(f"--deploy_first_last={bits!r}; allowed: 8, 16.")
    for v in FLAGS.variants:
        if v not in VARIANTS:
            raise app.UsageError(f"unknown variant {v!r}; allowed: {', '.join(VARIANTS)}.")
    for name in ("batch_size", "steps", "warmup", "deploy_runs", "pipeline_batches"):
        if getattr(FLAGS, name) < (0 if name in ("warmup", "pipeline_batches", "deploy_runs") else 1):
            raise app.UsageError(f"--{name}={getattr(FLAGS, name)} is out of range.")


def _ratio(row, a, b):
    """Step time of ``a`` over step time of ``b`` (None when one was not timed)."""
    return row[a]["median_step_s"] / row[b]["median_step_s"] if a in row and b in row else None


def train_steps(arch: str) -> dict:
    import keras
    from benchmarks import train_step

    row = {}
    for name in FLAGS.variants:
        keras.utils.set_random_seed(0)
        model = train_step.compiled(arch, name, INPUT_SHAPE, NUM_CLASSES, plain=FLAGS.plain)
        row[name] = train_step.images_per_second(model, FLAGS.batch_size, INPUT_SHAPE, NUM_CLASSES,
                                                 warmup=FLAGS.warmup, steps=FLAGS.steps)
        del model
        keras.backend.clear_session()
    ratios = {"quantized/float step time": _ratio(row, "2-bit F", "float F"),
              "2-bit LSQ/DoReFa step time": _ratio(row, "2-bit LSQ F", "2-bit F"),
              "4-bit LSQ/DoReFa step time": _ratio(row, "4-bit LSQ F", "4-bit F"),
              "AG/F-only step time": _ratio(row, "AG", "2-bit F"),
              "AG+SSP/F-only step time": _ratio(row, "AG+SSP", "2-bit F"),
              "KD/F-only step time": _ratio(row, "KD", "2-bit F"),
              "additional losses/F-only step time": _ratio(row, "additional losses", "2-bit F"),
              "AG/KD step time": _ratio(row, "AG", "KD")}
    return {"steps": row, "ratios": {k: v for k, v in ratios.items() if v is not None}}


# name -> (arch, input shape, classes, stem)
DEPLOY_MODELS = {"resnet18": ("resnet18", (224, 224, 3), 1000, "imagenet"),
                 "resnet20": ("resnet20", INPUT_SHAPE, NUM_CLASSES, "")}


def deployment() -> list:
    from benchmarks import deploy

    rows = []
    for name in FLAGS.deploy:
        arch, shape, classes, stem = DEPLOY_MODELS[name]
        for bits in FLAGS.deploy_first_last:
            rows.append(deploy.run_fresh(arch, shape, classes, int(bits), FLAGS.deploy_runs, stem))
    return rows


def input_pipeline() -> dict:
    from agq_keras.data import pipeline

    ds, _, _ = pipeline.make("fashion_mnist", "train", batch_size=FLAGS.batch_size)
    it = iter(ds.repeat())
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(FLAGS.pipeline_batches):
        n += int(next(it)[0].shape[0])
    wall = time.perf_counter() - start
    return {"images_per_s": n / wall, "batches": FLAGS.pipeline_batches}


def memory_rows(arch: str) -> dict:
    from benchmarks import memory

    baseline = memory.peak_rss_bytes("", arch, FLAGS.batch_size)
    return {name: (memory.peak_rss_bytes(name, arch, FLAGS.batch_size) - baseline) / 2**20
            for name in ("2-bit F", "AG")}


def _target(name, value):
    if name not in TARGETS or value is None:
        return ""
    op, bound = TARGETS[name]
    ok = value <= bound if op == "<=" else value >= bound
    return f"target {op} {bound}: {'met' if ok else 'MISSED'}"


def report(results: dict) -> str:
    lines = [f"{results['date']} — {results['machine']}, {results['cpus']} CPU(s); batch {results['batch_size']}, "
             f"median of {results['steps']} steps after {results['warmup']} warm-up, "
             f"{'plain' if results['plain'] else 'residual'} nets, input {INPUT_SHAPE}"]
    for arch, r in results["train_step"].items():
        lines.append(f"\n{arch}: training step")
        for name, v in r["steps"].items():
            lines.append(f"  {name:<20} {v['images_per_s']:9.1f} img/s  ({1e3 * v['median_step_s']:.0f} ms/step)")
        for name, v in r["ratios"].items():
            lines.append(f"  {name:<36} {v:6.2f}  {_target(name, v)}")
        if "pipeline/step images/s" in r:
            v = r["pipeline/step images/s"]
            lines.append(f"  {'pipeline/step images/s':<36} {v:6.1f}  {_target('pipeline/step images/s', v)}")
        if "peak_rss_mib" in r:
            m = r["peak_rss_mib"]
            lines.append("  peak RSS above import: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in m.items())
                         + f"  (AG/F {m['AG'] / m['2-bit F']:.2f})")
    if "input_pipeline" in results:
        lines.append(f"\nFashion-MNIST input pipeline: {results['input_pipeline']['images_per_s']:.0f} img/s")
    for d in results.get("deployment", []):
        lines.append(f"\nTFLite {d['arch']} {tuple(d['input_shape'])}, {d['num_classes']} classes, 2-bit, "
                     f"first/last {d['first_last_bits']}-bit (batch 1, LiteRT): "
                     f"int8 {d['int8_size_bytes'] / 2**20:.2f} MiB"
                     f" vs float32 {d['float32_size_bytes'] / 2**20:.2f} MiB, int8/float32 size {d['size_ratio']:.3f}  "
                     f"{_target('int8/float32 size', d['size_ratio'])}")
        lines.append(f"  packed INT4 convs: {d['packed_size_bytes'] / 2**20:.2f} MiB, packed/float32 size "
                     f"{d['packed_size_ratio']:.3f}  {_target('packed/float32 size', d['packed_size_ratio'])}")
        lines.append(f"  exporter: {d['export_s']:.1f} s, peak RSS {d['export_peak_rss_mib']:.0f} MiB "
                     f"({d['rss_before_export_mib']:.0f} MiB before the export)")
        for k in ("builtin", "xnnpack"):
            if f"latency_ratio_{k}" in d:
                ratio = d[f"latency_ratio_{k}"]
                target = _target("int8/float32 latency (XNNPACK)", ratio) if k == "xnnpack" else ""
                lines.append(f"  {k:<8} int8 {d[f'latency_ms_int8_{k}']:.3f} ms vs float32 "
                             f"{d[f'latency_ms_float32_{k}']:.3f} ms, int8/float32 latency {ratio:.2f}  {target}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _check_flags()
    started = time.time()
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
               "processor": _processor(), "cpus": os.cpu_count(), "batch_size": FLAGS.batch_size,
               "steps": FLAGS.steps, "warmup": FLAGS.warmup, "plain": FLAGS.plain, "targets": TARGETS,
               "train_step": {}}
    if FLAGS.pipeline_batches:
        results["input_pipeline"] = input_pipeline()
    for arch in FLAGS.archs:
        results["train_step"][arch] = r = train_steps(arch)
        if "input_pipeline" in results:
            fastest = max(v["images_per_s"] for v in r["steps"].values())
            r["pipeline/step images/s"] = results["input_pipeline"]["images_per_s"] / fastest
        if FLAGS.memory:
            r["peak_rss_mib"] = memory_rows(arch)
    if FLAGS.deploy:
        results["deployment"] = deployment()
    results["wall_s"] = time.time() - started
    print(report(results))
    print(f"\nwall time {results['wall_s']:.0f} s")
    if FLAGS.output:
        folder = os.path.dirname(os.path.abspath(FLAGS.output))
        os.makedirs(folder, exist_ok=True)
        from agq_keras.saving import write_text

        write_text(FLAGS.output, json.dumps(results, indent=2))
        print(f"wrote {FLAGS.output}")


def _processor() -> str:
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    return platform.processor()


if __name__ == "__main__":
    app.run(main)
