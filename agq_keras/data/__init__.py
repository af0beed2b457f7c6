"""Datasets."""

from agq_keras.data import fashion_mnist, pipeline

__all__ = ["fashion_mnist", "pipeline"]
