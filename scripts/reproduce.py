"""The CPU-scale experiments on Fashion-MNIST, and docs/results.md.

  python scripts/reproduce.py --table=sweep --workdir=runs/sweep        # issue 13's sweep (resumable)
  python scripts/reproduce.py --table=mobilenetv2 --workdir=runs/sweep  # MobileNetV2 float / 4-bit / + AG
  python scripts/reproduce.py --table=detection --workdir=runs/sweep    # the detector: float / 4-bit / + AG / 2x
  python scripts/reproduce.py --table=table6 --workdir=runs/t6 --data_dir=/data/tfds  # the paper's Table 6 (CIFAR-100)
      [--seeds=3] [--train_subset=15000] [--epochs=0] [--only=name,...] [--follow_up] [--record=docs/runs]
      [--results=docs/results.md] [--report_only]

Trains every run not finished yet (a run whose metrics.json exists in --workdir or in the committed --record
is skipped, so re-running the same command resumes, also on a new checkout), copies each finished run's
metrics to --record, then writes --results (its first section: the evidence in one paragraph) and its
convergence PNG from every finished run; the README links to it and is never rewritten. The runs and their
sizing are in study/runner.py, the report in study/report.py: the repository's ``study`` package, which is
not installed (this script puts the repository on ``sys.path`` to import it).
"""

import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository: study/

from absl import flags  # noqa: E402

flags.DEFINE_string("table", "sweep", "Which table to run: sweep, mobilenetv2, fmnist6, detection or table6 (the "
                    "paper's CIFAR-100 ResNet-18 table from a prepared tfds --data_dir; all 50 000 training images, "
                    "record docs/runs_table6, results docs/results_table6.md unless given) "
                    "(--train_subset and --test_subset do not apply to detection, which has its own budget).")
flags.DEFINE_string("workdir", None, "Folder of the runs (one subfolder per run).")
flags.DEFINE_integer("seeds", 3, "Seeds of every k-bit arm (>= 3 for the comparisons).")
flags.DEFINE_integer("train_subset", 15000, "Training images (0 = all 60 000).")
flags.DEFINE_integer("test_subset", 0, "Test images (0 = all 10 000).")
flags.DEFINE_integer("epochs", 0, "Epochs per run (0 = the recipe's 7; the schedule is rescaled).")
flags.DEFINE_string("deep_arch", "resnet32", "fmnist6: the deeper plain/residual pair, resnet32 or resnet56.")
flags.DEFINE_list("depths", ["resnet20", "resnet32", "resnet56"], "sweep: the depths, in run order.")
flags.DEFINE_string("lsq_arch", "resnet32", "sweep: the depth of the LSQ pair (where AG helps DoReFa most).")
flags.DEFINE_string("relu_arch", "resnet20", "sweep: the depth of the ReLU-after-sums arm.")
flags.DEFINE_boolean("follow_up", False, "After the plan, add seeds up to 5 to the arms of every comparison "
                     "of the table that Welch's test cannot decide (p >= 0.05), and train them.")
flags.DEFINE_enum("scale", "cpu", ["cpu", "gpu"], "cpu: the flags as given. gpu: the GPU twin at full scale: all "
                  "60 000 training images, the paper's 35-epoch schedule (lr / 10 at 25 and 30, SSP delta 0 at 20), "
                  "--budget_s=540 unless given, record docs/runs_gpu, results docs/results_gpu.md; needs a GPU. "
                  "Each call trains until its budget and the next call resumes.")
flags.DEFINE_integer("budget_s", 0, "Stop at an epoch end before this many seconds have passed (0 = no limit); "
                     "the same command resumes.")
flags.DEFINE_string("data_dir", "", "Fashion-MNIST IDX folder ('' = /usr/share/datasets/fashion-mnist).")
flags.DEFINE_string("record", "docs/runs", "Committed record of finished runs ('' = none).")
flags.DEFINE_list("only", [], "Train only these run names (default: all); the results cover every finished run.")
flags.DEFINE_string("results", "docs/results.md", "Markdown report to write (the PNG goes next to it).")
flags.DEFINE_boolean("report_only", False, "Do not train; only write the report from finished runs.")
flags.DEFINE_integer("verbose", 2, "Keras verbosity of each run (2 = one line per epoch).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    from study import report, runner

    start = time.time()
    if FLAGS.scale == "gpu":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            raise ValueError("--scale=gpu needs a GPU, and TensorFlow sees none here; use --scale=cpu.")
        FLAGS.train_subset, FLAGS.epochs = 0, 35
        FLAGS.budget_s = FLAGS.budget_s or 540
        if FLAGS["record"].using_default_value:
            FLAGS.record = "docs/runs_gpu"
        if FLAGS["results"].using_default_value:
            FLAGS.results = "docs/results_gpu.md"
    if FLAGS.table == "table6":
        FLAGS.train_subset = 0 if FLAGS["train_subset"].using_default_value else FLAGS.train_subset
        if FLAGS["record"].using_default_value:
            FLAGS.record = "docs/runs_table6"
        if FLAGS["results"].using_default_value:
            FLAGS.results = "docs/results_table6.md"
    if FLAGS.budget_s < 0:
        raise ValueError(f"--budget_s={FLAGS.budget_s} must be >= 0 (0 = no limit).")
    runs = runner.plan(FLAGS.table, FLAGS.seeds, FLAGS.deep_arch, lsq_arch=FLAGS.lsq_arch,
                          relu_arch=FLAGS.relu_arch, depths=FLAGS.depths)
    report.check_results_path(FLAGS.results)
    record = FLAGS.record or None
    kwargs = dict(record=record, train_subset=FLAGS.train_subset, test_subset=FLAGS.test_subset,
                  epochs=FLAGS.epochs, verbose=FLAGS.verbose, data_dir=FLAGS.data_dir,
                  deadline=start + FLAGS.budget_s if FLAGS.budget_s else None)
    if not FLAGS.report_only:
        runs = runner.select(runs, FLAGS.only)
        status = runner.run_all(runs, FLAGS.workdir, **kwargs)
        while FLAGS.follow_up and len(status) == len(runs) and "paused" not in status.values():
            extra = runner.follow_up(runs, report.load_results(record, FLAGS.workdir))
            if not extra:
                break
            runs += extra
            status.update(runner.run_all(extra, FLAGS.workdir, **kwargs))
    if not report.load_results(record, FLAGS.workdir):
        print("no finished run yet: no report written")
        return 0
    command = "python scripts/reproduce.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if not FLAGS.report_only and (len(status) < len(runs) or "paused" in status.values()):
        print(f"budget reached: {sum(v != 'paused' for v in status.values())} of {len(runs)} run(s) finished; run "
              "the same command again to continue")
    out = report.write_results(FLAGS.workdir, FLAGS.results, command=command, record=record)
    print(f"wrote {out['results']} and {out['png']}")
    return 0


if __name__ == "__main__":
    from agq_keras import cli
    from agq_keras.experiments.run import DivergedError

    cli.run(main, user_errors=(DivergedError,))
