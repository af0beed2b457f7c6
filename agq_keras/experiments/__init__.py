"""Experiment drivers: :mod:`~agq_keras.experiments.run` (one config -> a workdir's outputs, what
``scripts/train.py`` calls). The paper study that runs many of them is the repository's ``study/`` package."""
