"""Fashion-MNIST read offline from IDX files.

Debian's ``dataset-fashion-mnist`` package installs the real files at
``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).
Files may be gzipped (``*-idx3-ubyte.gz``) or not.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
NUM_CLASSES = 10
INPUT_SHAPE = (28, 28, 1)
HOW_TO_GET = ("install it with `apt-get update && apt-get install -y dataset-fashion-mnist`, "
              "or pass the folder holding the IDX files")


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a uint8 array, validating it."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"Cannot read IDX file {path!r}: {err}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path!r} is not an unsigned-byte IDX file (bad magic number).")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(data) < header:
        raise ValueError(f"{path!r} has a truncated IDX header.")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise ValueError(f"{path!r} is corrupt: header says {shape} ({expected} bytes), "
                         f"file holds {len(data) - header} bytes of data.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"Fashion-MNIST file {stem}[.gz] not found in {directory!r}: {HOW_TO_GET}.")


def load(split: str = "train", data_dir: str | None = None, subset: int | None = None):
    """Return ``(images, labels)``: uint8 ``[N, 28, 28, 1]`` and int32 ``[N]``.

    ``subset`` keeps the first N examples (the files are already shuffled).
    """
    if split not in FILES:
        raise ValueError(f"split={split!r} is not available; allowed: {', '.join(FILES)}.")
    directory = data_dir or DEFAULT_DIR
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Fashion-MNIST folder {directory!r} does not exist: {HOW_TO_GET}.")
    images = read_idx(_find(directory, FILES[split][0]))
    labels = read_idx(_find(directory, FILES[split][1]))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"Fashion-MNIST {split} files in {directory!r} have unexpected shapes "
                         f"{images.shape} / {labels.shape}.")
    if labels.max() >= NUM_CLASSES:
        raise ValueError(f"Fashion-MNIST {split} labels hold {int(labels.max())}; allowed 0..{NUM_CLASSES - 1}.")
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
            raise ValueError(f"subset={subset!r} must be a positive integer or None.")
        images, labels = images[:subset], labels[:subset]
    return images[..., None], labels.astype(np.int32)
