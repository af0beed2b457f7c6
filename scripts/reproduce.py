"""Reproduce the CPU-scale twin of the paper's Table 6 on Fashion-MNIST.

  python scripts/reproduce.py --table=fmnist6 --workdir=runs/fmnist6 [--seeds=3] [--train_subset=15000]
      [--epochs=0] [--deep_arch=resnet32] [--only=name,...] [--results=docs/results.md]

Trains every run not finished yet (a run whose metrics.json exists is skipped, so re-running the same
command resumes), then writes --results and its convergence PNG from the metrics. The runs, their sizing
and the time estimate are in agq_keras/experiments/reproduce.py.
"""

import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

flags.DEFINE_string("table", "fmnist6", "Which table to reproduce (fmnist6).")
flags.DEFINE_string("workdir", None, "Folder of the runs (one subfolder per run).")
flags.DEFINE_integer("seeds", 3, "Seeds of the plain 2-bit and plain+AG rows (>= 3 for the comparison).")
flags.DEFINE_integer("train_subset", 15000, "Training images (0 = all 60 000).")
flags.DEFINE_integer("test_subset", 0, "Test images (0 = all 10 000).")
flags.DEFINE_integer("epochs", 0, "Epochs per run (0 = the recipe's 7; the schedule is rescaled).")
flags.DEFINE_string("deep_arch", "resnet32", "The deeper plain/residual pair: resnet32 or resnet56.")
flags.DEFINE_list("only", [], "Train only these run names (default: all); the results cover every finished run.")
flags.DEFINE_string("results", "docs/results.md", "Markdown report to write (the PNG goes next to it).")
flags.DEFINE_boolean("report_only", False, "Do not train; only write the report from finished runs.")
flags.DEFINE_integer("verbose", 2, "Keras verbosity of each run (2 = one line per epoch).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    from agq_keras.experiments import reproduce

    runs = reproduce.plan(FLAGS.table, FLAGS.seeds, FLAGS.deep_arch)
    reproduce.check_results_path(FLAGS.results)
    if not FLAGS.report_only:
        reproduce.run_all(reproduce.select(runs, FLAGS.only), FLAGS.workdir, train_subset=FLAGS.train_subset,
                          test_subset=FLAGS.test_subset, epochs=FLAGS.epochs, verbose=FLAGS.verbose)
    command = "python scripts/reproduce.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = reproduce.write_results(runs, FLAGS.workdir, FLAGS.results, command=command)
    print(f"wrote {out['results']} and {out['png']}")
    return 0


if __name__ == "__main__":
    from agq_keras import cli
    from agq_keras.experiments.run import DivergedError

    cli.run(main, user_errors=(DivergedError,))
