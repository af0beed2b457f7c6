"""Benchmarks, measured side by side in one run: `python benchmarks/run.py`.

Prints a table and writes JSON (``--output``). Targets are goals, reported here,
never asserted in unit tests.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import keras  # noqa: E402

from benchmarks import memory, train_step  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("archs", ["resnet20"], "Architectures to time.")
flags.DEFINE_integer("batch_size", 128, "Batch size of the timed steps.")
flags.DEFINE_integer("steps", 20, "Timed steps per variant (after warm-up).")
flags.DEFINE_string("output", "", "Write the results as JSON here.")


def main(argv):
    del argv
    keras.utils.set_random_seed(0)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
               "cpus": os.cpu_count(), "batch_size": FLAGS.batch_size, "train_step": {}}
    for arch in FLAGS.archs:
        row = {}
        for name, factory in train_step.variants(arch, (28, 28, 1), 10, plain=True).items():
            model = train_step.compiled(factory())
            row[name] = train_step.images_per_second(model, FLAGS.batch_size, steps=FLAGS.steps)
            keras.backend.clear_session()
        row["ratio quantized/float (time)"] = row["float F"]["images_per_s"] / row["2-bit F"]["images_per_s"]
        row["ratio AG/F-only (time)"] = row["2-bit F"]["images_per_s"] / row["2-bit AG"]["images_per_s"]
        baseline = memory.peak_rss_bytes("", arch, FLAGS.batch_size)
        row["peak RSS above import, MiB"] = {
            name: (memory.peak_rss_bytes(name, arch, FLAGS.batch_size) - baseline) / 2**20
            for name in ("2-bit F", "2-bit AG")}
        results["train_step"][arch] = row
        print(f"\n{arch} (plain, batch {FLAGS.batch_size}, median of {FLAGS.steps} steps)")
        for name, value in row.items():
            if isinstance(value, dict) and "images_per_s" in value:
                print(f"  {name:<12} {value['images_per_s']:8.1f} img/s")
            elif isinstance(value, dict):
                print(f"  {name}: " + ", ".join(f"{k} {v:.0f}" for k, v in value.items()))
            else:
                print(f"  {name:<30} {value:.2f}")
    if FLAGS.output:
        tmp = FLAGS.output + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(results, fh, indent=2)
        os.replace(tmp, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
