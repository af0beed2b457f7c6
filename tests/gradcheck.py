"""Shared helper of the quantizer tests: forward value and input gradient of a quantizer."""

import tensorflow as tf


def forward_and_grad(q, x, upstream):
    """``(q(x), d sum(q(x) * upstream) / dx)`` as NumPy arrays."""
    xv = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xv)
        y = q(xv)
        loss = tf.reduce_sum(y * upstream)
    return y.numpy(), tape.gradient(loss, xv).numpy()
