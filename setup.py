"""pyproject.toml holds the metadata; this file computes the dependencies, so that exactly one TensorFlow
distribution is installed (two, e.g. ``tensorflow-cpu`` beside ``tensorflow``, share one ``tensorflow`` module).

    pip install -e .                           # tensorflow-cpu (the default)
    AGQ_KERAS_TF=gpu pip install -e .          # tensorflow[and-cuda] instead: TensorFlow with its CUDA libraries
"""

import os

from setuptools import setup

TENSORFLOW = {"cpu": "tensorflow-cpu==2.21.*", "gpu": "tensorflow[and-cuda]==2.21.*"}
choice = os.environ.get("AGQ_KERAS_TF", "cpu")
if choice not in TENSORFLOW:
    raise SystemExit(f"error: AGQ_KERAS_TF={choice!r} is not supported; allowed: {', '.join(TENSORFLOW)}.")

setup(install_requires=[
    TENSORFLOW[choice],
    "keras>=3.15",
    "absl-py",
    "ml-collections",
    "tensorboard",
    "numpy",
    "matplotlib",  # convergence.png; a missing matplotlib only skips the plot, with a one-line warning
])
