"""Datasets."""

from agq_keras.data import fashion_mnist

__all__ = ["fashion_mnist"]
