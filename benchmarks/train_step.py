"""Training-step throughput: images/s of one optimizer step, median of timed steps.

The variants are built from configs exactly as training builds them
(:func:`agq_keras.experiments.run.make_trainer`), so the timed step is the trained one.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import keras
import tensorflow as tf

# name -> agq_keras.configs.base.apply_method method (the plain/residual token is added), bit widths and the
# quantizer family (the paper's DoReFa, or quantize()'s default recipe, LSQ with per-channel weight steps)
VARIANTS = {
    "float F": ("base", 32, "dorefa"),
    "2-bit F": ("base", 2, "dorefa"),
    "2-bit LSQ F": ("base", 2, "lsq"),
    "4-bit F": ("base", 4, "dorefa"),
    "4-bit LSQ F": ("base", 4, "lsq"),
    "AG": ("ag", 2, "dorefa"),
    "AG+SSP": ("ag_ssp", 2, "dorefa"),
    "KD": ("kd", 2, "dorefa"),
    "additional losses": ("additional_losses", 2, "dorefa"),
}


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


def config(arch: str, variant: str, plain: bool = True):
    """The training config of a variant (``configs/base.py`` schema)."""
    from agq_keras.configs.base import apply_method, get_base_config

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}.")
    method, bits, quantizer = VARIANTS[variant]
    c = get_base_config()
    c.arch, c.w_bits, c.a_bits, c.seed, c.quantizer = arch, bits, bits, 0, quantizer
    if arch in ("resnet18", "resnet34", "resnet50"):
        c.stem = "cifar"  # CIFAR-style: 3x3 stride-1 first conv, no max-pool
    return apply_method(c, f"{'plain' if plain else 'residual'}_{method}")


def compiled(arch: str, variant: str, input_shape=(28, 28, 1), num_classes: int = 10,
             plain: bool = True) -> keras.Model:
    """The compiled trainer of a variant (Adam, cross-entropy on logits), as ``run.run`` compiles it."""
    from agq_keras.experiments.run import make_optimizer, make_trainer
    from agq_keras.training.trainer import default_loss

    c = config(arch, variant, plain)
    trainer = make_trainer(c, num_classes, input_shape)
    trainer.compile(optimizer=make_optimizer(c.optimizer, c.learning_rate), loss=default_loss())
    return trainer
