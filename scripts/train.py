"""Train a config:

    python scripts/train.py --config=configs/default.py --workdir=runs/default [--config.key=value ...]

``--config`` is a config file's path, or the bare name of one of the package's configs (``default.py``,
``fmnist.py:resnet20_plain_ag``: see configs/__init__.py), so an installed package runs from
any folder. Writes f.keras, trainer.keras, metrics.json, convergence.png and TensorBoard logs
(logs/) into the workdir; a killed run restarted with the same command resumes
from workdir/backup.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

from agq_keras import cli  # noqa: E402

_CONFIG = cli.define_config_flag("config")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (created if missing).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    from agq_keras.experiments import run as runner

    runner.run(_CONFIG.value, _WORKDIR.value)
    return 0


if __name__ == "__main__":
    from agq_keras.experiments.run import DivergedError

    cli.run(main, user_errors=(DivergedError,), config_flag="config")
