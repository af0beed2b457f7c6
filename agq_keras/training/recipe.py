"""The two-stage recipe of section 4.1.

Stage 1 pre-trains the full-precision counterpart (same architecture at 32
bits, plain F without AG/SSP/baselines, SGD with momentum); stage 2 fine-tunes
the quantized model from it with Adam, loading stage 1's weights by layer name
(:func:`load_by_name`). :func:`agq_keras.experiments.run.run` runs stage 1 in
``WORKDIR/stage1`` when ``config.pretrain_epochs > 0``.
"""

from __future__ import annotations

import keras


def load_by_name(source: keras.Model, target: keras.Model) -> int:
    """Copy variables from ``source`` to ``target`` layers with the same name
    (variable names and shapes must agree); returns how many were copied."""
    src = {layer.name: {v.name: v for v in layer.weights} for layer in source.layers}
    copied = 0
    for layer in target.layers:
        for v in layer.weights:
            s = src.get(layer.name, {}).get(v.name)
            if s is not None and tuple(s.shape) == tuple(v.shape):
                v.assign(s)
                copied += 1
    return copied


def stage1_config(config):
    """Stage 1 of section 4.1: the full-precision counterpart, plain F, SGD."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.w_bits, c.a_bits, c.aux, c.ssp, c.baseline = 32, 32, False, False, "none"
        c.epochs, c.optimizer = config.pretrain_epochs, config.pretrain_optimizer
        c.learning_rate, c.lr_decay_epochs = config.pretrain_learning_rate, config.pretrain_lr_decay_epochs
        c.pretrain_epochs, c.init_checkpoint = 0, ""
        if "first_last_bits" in c:
            c.first_last_bits = 0  # the full-precision counterpart: 32 bits everywhere
    return c
