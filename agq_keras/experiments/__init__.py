"""Experiment drivers: :mod:`~agq_keras.experiments.run` (one config -> a workdir's outputs, what
``scripts/train.py`` calls) and :mod:`~agq_keras.experiments.reproduce` (the paper's Table 6 at CPU scale)."""
