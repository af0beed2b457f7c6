"""The training time of the paper's Table 6 (``scripts/reproduce.py --table=table6``) from measured step times.

Every run of the table's plan (study.runner.plan("table6", seeds)) is built from its own config
(study.runner.make_config: configs/paper.py's table6 row, the stage-1 schedule for the full-precision F, 2x
epochs for the compute-matched arm) exactly as training builds it (agq_keras.experiments.run.make_trainer). The
trainers of the same cost (the same shortcut type, H or not, SSP or not, bit widths) share one timing: the
median ``train_on_batch`` time at the config's batch size on random CIFAR-sized images. The estimate is

    T = sum over runs of  epochs * ceil(train images / batch size) * median step time

(evaluation and data loading not counted). Run it on the machine that will train the table: its step times
give that machine's estimate (this repository's machine has no GPU; docs say which machine measured)::

    python3 -m benchmarks.table6_time --seeds=3 --steps=4 --output=/tmp/table6_time.json
"""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("seeds", 3, "Seeds per arm (the table's default).", lower_bound=1)
flags.DEFINE_integer("steps", 4, "Timed steps per kind of trainer (after --warmup).", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing).", lower_bound=1)
flags.DEFINE_integer("train_images", 50000, "Training images per epoch (CIFAR-100's train split).", lower_bound=1)
flags.DEFINE_integer("image_size", 32, "Height and width of the training images (CIFAR-100's).", lower_bound=1)
flags.DEFINE_string("output", None, "Write the measured step times and the estimate to this JSON file.")


def cost_key(c) -> tuple:
    """What sets a run's step time: two runs with the same key train the same graph at the same batch size."""
    return (c.arch, c.plain, c.aux, c.ssp, c.w_bits, c.a_bits, c.batch_size)


def estimate(runs, configs, step_s: dict, train_images: int) -> dict:
    """``{"runs": [...], "total_s": T}``: each run's epochs, steps and seconds at its kind's step time."""
    rows = []
    for r, c in zip(runs, configs):
        steps = c.epochs * math.ceil(train_images / c.batch_size)
        rows.append({"run": r.name, "epochs": c.epochs, "steps": steps, "step_s": step_s[cost_key(c)],
                     "seconds": steps * step_s[cost_key(c)]})
    return {"runs": rows, "total_s": sum(row["seconds"] for row in rows)}


def main(argv):
    del argv
    import keras

    from agq_keras.experiments.run import make_optimizer, make_trainer
    from agq_keras.saving import write_text
    from agq_keras.training.trainer import default_loss
    from benchmarks.train_step import images_per_second
    from study import runner

    runs = runner.plan("table6", FLAGS.seeds)
    configs = [runner.make_config(r, "unused", verbose=0) for r in runs]
    step_s, kinds = {}, {}
    for r, c in zip(runs, configs):
        key = cost_key(c)
        if key in step_s:
            continue
        shape = (FLAGS.image_size, FLAGS.image_size, 3)  # the data's shape, as training builds F for it
        trainer = make_trainer(c, 100, shape)
        trainer.compile(optimizer=make_optimizer(c.optimizer, c.learning_rate), loss=default_loss())
        timed = images_per_second(trainer, c.batch_size, shape, 100, FLAGS.warmup, FLAGS.steps)
        step_s[key], kinds[r.name] = timed["median_step_s"], key
        print(f"{r.name} ({'plain' if c.plain else 'residual'}{' + AG' if c.aux else ''}{' + SSP' if c.ssp else ''}, "
              f"{c.w_bits}/{c.a_bits} bits, batch {c.batch_size}): "
              f"{timed['median_step_s']:.3f} s per step", flush=True)
        keras.backend.clear_session()
    result = estimate(runs, configs, step_s, FLAGS.train_images)
    result["step_s"] = {name: step_s[key] for name, key in kinds.items()}
    print(f"Table 6, {FLAGS.seeds} seed(s), {len(runs)} runs: {result['total_s'] / 3600:.1f} h of training steps "
          f"({result['total_s'] / 86400:.1f} days) at these step times")
    if FLAGS.output:
        write_text(FLAGS.output, json.dumps(result, indent=1))


if __name__ == "__main__":
    app.run(main)
