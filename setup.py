"""pyproject.toml holds the metadata; this file computes the dependencies, so that exactly one TensorFlow
distribution is installed (two, e.g. ``tensorflow-cpu`` beside ``tensorflow``, share one ``tensorflow`` module).

    pip install -e .                           # tensorflow-cpu (the default)
    AGQ_KERAS_TF=gpu pip install -e .          # tensorflow[and-cuda] instead: TensorFlow with its CUDA libraries

It also lists the packages: ``agq_keras`` and its subpackages, and the repository's top-level ``configs/`` folder
installed as ``agq_keras.configs`` (one copy: setuptools' package-dir mapping), so that a bare config name such
as ``--config=default.py`` works from any folder after ``pip install``. ``scripts/``,
``benchmarks/`` and ``tests/`` are not installed.
"""

import os

from setuptools import find_packages, setup

TENSORFLOW = {"cpu": "tensorflow-cpu==2.21.*", "gpu": "tensorflow[and-cuda]==2.21.*"}
choice = os.environ.get("AGQ_KERAS_TF", "cpu")
if choice not in TENSORFLOW:
    raise SystemExit(f"error: AGQ_KERAS_TF={choice!r} is not supported; allowed: {', '.join(TENSORFLOW)}.")

setup(packages=find_packages(include=["agq_keras", "agq_keras.*"]) + ["agq_keras.configs"],
      package_dir={"agq_keras.configs": "configs"},
      install_requires=[
    TENSORFLOW[choice],
    "keras>=3.15",
    "absl-py",
    "ml-collections",
    "tensorboard",
    "numpy",
    "matplotlib",  # convergence.png; a missing matplotlib only skips the plot, with a one-line warning
])
