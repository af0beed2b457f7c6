"""``tfds.load`` without its absl log lines: a data set that is not prepared gives the caller's one-line error
alone (issue 31), not TFDS's warnings about the folder first."""

from __future__ import annotations


def load(name: str, **kwargs):
    """``tensorflow_datasets.load(name, **kwargs)`` with absl's log level at ERROR during the call."""
    import tensorflow_datasets as tfds
    from absl import logging

    level = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        return tfds.load(name, **kwargs)
    finally:
        logging.set_verbosity(level)
