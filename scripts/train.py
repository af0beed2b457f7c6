"""Train a config: python scripts/train.py --config=configs/default.py --workdir=runs/default [--config.key=value ...]

Writes f.keras, trainer.keras, metrics.json, convergence.png and TensorBoard logs
(logs/) into the workdir; a killed run restarted with the same command resumes
from workdir/backup.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ and a source checkout

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (created if missing).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    from agq_keras.training import run as runner

    runner.run(_CONFIG.value, _WORKDIR.value)
    return 0


if __name__ == "__main__":
    from agq_keras import cli
    from agq_keras.training.run import DivergedError

    cli.run(main, user_errors=(DivergedError,))
