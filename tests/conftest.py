import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Deterministic runs: the same process on the same machine trains the same weights (op determinism,
# one thread per op: xdist runs one worker per core anyway). Across machines oneDNN picks CPU-specific
# kernels, so bounds never rely on a trained net's exact weights (see tests/export_checks.py).
tf.config.experimental.enable_op_determinism()
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    started = time.perf_counter()
    yield
    # A full garbage collection costs seconds once a worker holds many traced models: pay it after the
    # tests that made the garbage (the slow ones), not after every small test.
    keras.backend.clear_session(free_memory=time.perf_counter() - started > 2.0)


# `--dist loadfile` hands whole files to the two workers in collection order (the README's command
# passes --no-loadscope-reorder, which would otherwise order files by their number of tests): the
# longest files (measured) go first, so that none starts late and runs alone at the end.
LONGEST_FIRST = ("test_export_residual.py", "test_export.py", "test_quantizer_zoo.py", "test_trainer.py",
                 "test_bad_inputs.py", "test_train_cli.py", "test_export_quantizers.py", "test_configs.py",
                 "test_models.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
