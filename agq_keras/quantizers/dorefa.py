"""DoReFa-Net weight and activation quantizers.

Reference: S. Zhou, Y. Wu, Z. Ni, X. Zhou, H. Wen, Y. Zou, "DoReFa-Net:
Training low bitwidth convolutional neural networks with low bitwidth
gradients", arXiv:1606.06160, 2016 (eqs. 5-9).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from agq_keras.quantizers.base import Grid, Quantizer, check_flag, register, register_family, weight_grid


def round_k(x, bits: int):
    """``round((2^k - 1) x) / (2^k - 1)``: the k-bit uniform grid on [0, 1]."""
    n = float(2**bits - 1)
    return tf.round(x * n) / n


def dorefa_weight(w, bits: int, per_channel: bool = False):
    r"""DoReFa k-bit weight quantizer.

    Forward, k = 1:  q = sign(w) * mean|w|          (sign(0) = +1)
    Forward, k >= 2: t = tanh(w),  M = max|t|,
                     q = 2 * round_k(t / (2M) + 1/2) - 1
    Gradient, k = 1:  dq/dw = 1                       (straight-through)
    Gradient, k >= 2: dq/dw = (1 - tanh(w)^2) / M     (round_k passed straight
                      through; M treated as a constant)
    ``per_channel``: mean|w| and M are taken per slice of the last axis (a kernel's output channels)
    instead of over the whole tensor, so each output channel uses its whole grid.
    The output takes at most 2^k distinct values; for k >= 2 they are
    2i/(2^k - 1) - 1, i = 0 .. 2^k - 1 (per-channel or not).
    """
    w = tf.convert_to_tensor(w)
    axes = list(range(len(w.shape) - 1)) if per_channel else None

    @tf.custom_gradient
    def _binary(w):
        scale = tf.reduce_mean(tf.abs(w), axis=axes, keepdims=per_channel)
        return tf.where(w >= 0, scale, -scale), lambda dy: dy

    @tf.custom_gradient
    def _kbit(w):
        t = tf.tanh(w)
        m = tf.reduce_max(tf.abs(t), axis=axes, keepdims=per_channel)
        m = tf.where(m > 0, m, tf.ones_like(m))
        q = 2.0 * round_k(t / (2.0 * m) + 0.5, bits) - 1.0
        return q, lambda dy: dy * (1.0 - tf.square(t)) / m

    return _binary(w) if bits == 1 else _kbit(w)


def dorefa_activation(x, bits: int):
    r"""DoReFa k-bit activation quantizer.

    Forward:  q = round_k(clip(x, 0, 1)) = round((2^k - 1) clip(x, 0, 1)) / (2^k - 1)
    Gradient: dq/dx = 1 if 0 <= x <= 1 else 0   (straight-through, clipped)
    The output takes at most 2^k values: i / (2^k - 1), i = 0 .. 2^k - 1.
    """
    x = tf.convert_to_tensor(x)

    @tf.custom_gradient
    def _act(x):
        q = round_k(tf.clip_by_value(x, 0.0, 1.0), bits)

        def grad(dy):
            inside = tf.logical_and(x >= 0.0, x <= 1.0)
            return dy * tf.cast(inside, dy.dtype)

        return q, grad

    return _act(x)


@register("dorefa_weight")
class DoReFaWeight(Quantizer):
    """DoReFa weights, k = 1..8 bits, normalised per tensor (the paper's) or per output channel
    (``per_channel=True``). See :func:`dorefa_weight` for the formulas."""

    allowed_bits = tuple(range(1, 9))
    OPTIONS = ("per_channel",)

    def __init__(self, bits: int = 2, per_channel: bool = False, **kwargs):
        super().__init__(bits=bits, **kwargs)
        self.per_channel = check_flag("DoReFaWeight", "per_channel", per_channel)

    def call(self, w):
        return dorefa_weight(w, self.bits, self.per_channel)

    def get_config(self):
        config = super().get_config()
        config["per_channel"] = self.per_channel
        return config

    def export_grid(self, q_kernel=None, max_code: int = 127):
        """k >= 2: odd codes 2i - (2^k-1), constant step 1/(2^k-1) (|code| <= 2^k - 1: one int8 weight
        for k <= 7, k = 8 needs 255), per channel or not; k = 1: codes ±1, step mean|w| (depends on the
        kernel; per channel: one step per output channel)."""
        if self.bits == 1 and self.per_channel and q_kernel is not None:
            steps = np.abs(np.asarray(q_kernel, np.float64)).reshape(-1, np.shape(q_kernel)[-1]).max(axis=0)
            return weight_grid(q_kernel, np.where(steps > 0, steps, 1.0), max_code)
        return weight_grid(q_kernel, None if self.bits == 1 else 1.0 / (2**self.bits - 1), max_code)


@register("dorefa_activation")
class DoReFaActivation(Quantizer):
    """DoReFa activations in [0, 1], k = 1..8 bits. See :func:`dorefa_activation`."""

    allowed_bits = tuple(range(1, 9))

    def __init__(self, bits: int = 2, **kwargs):
        super().__init__(bits=bits, **kwargs)

    def call(self, x):
        return dorefa_activation(x, self.bits)

    def export_grid(self, q_kernel=None, max_code: int = 127):
        n = 2**self.bits - 1
        return Grid("activation", step=1.0 / n, levels=n)


register_family("dorefa", DoReFaWeight, DoReFaActivation)
