"""Training-step throughput: images/s of one optimizer step, median of timed steps."""

from __future__ import annotations

import statistics
import time

import numpy as np
import keras
import tensorflow as tf

import agq_keras


def images_per_second(model: keras.Model, batch_size: int = 128, input_shape=(28, 28, 1),
                      num_classes: int = 10, warmup: int = 3, steps: int = 20) -> dict:
    """Median images/s of ``train_on_batch`` over ``steps`` timed steps after ``warmup``."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((batch_size,) + tuple(input_shape)).astype("float32"))
    y = tf.constant(rng.integers(0, num_classes, batch_size).astype("int32"))
    for _ in range(warmup):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"images_per_s": batch_size / median, "median_step_s": median, "steps": steps}


def compiled(model: keras.Model) -> keras.Model:
    if isinstance(model, agq_keras.AGTrainer):
        model.compile()
    else:
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def variants(arch: str, input_shape, num_classes: int, **build_kwargs) -> dict:
    """The model variants compared side by side: float F, 2-bit F, AG trainer."""
    common = dict(num_classes=num_classes, input_shape=input_shape, **build_kwargs)
    return {
        "float F": lambda: agq_keras.build(arch, w_bits=32, a_bits=32, **common),
        "2-bit F": lambda: agq_keras.build(arch, w_bits=2, a_bits=2, **common),
        "2-bit AG": lambda: agq_keras.build(arch, w_bits=2, a_bits=2, aux=True, **common),
    }
