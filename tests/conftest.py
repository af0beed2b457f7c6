import os

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
    yield
    keras.backend.clear_session()
