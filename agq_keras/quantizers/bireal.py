"""Bi-Real Net binary quantizers (ApproxSign activations, magnitude-aware weights).

Reference: Z. Liu, B. Wu, W. Luo, X. Yang, W. Liu, K.-T. Cheng, "Bi-Real
Net: Enhancing the Performance of 1-bit CNNs with Improved Representational
Capability and Advanced Training Algorithm", ECCV 2018 (eqs. 5-8).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from agq_keras.quantizers.base import Grid, Quantizer, register, register_family


def binary_sign(x):
    """``sign(x)`` with ``sign(0) = +1`` (so the output is exactly {-1, +1})."""
    return tf.where(x >= 0, tf.ones_like(x), -tf.ones_like(x))


def approx_sign(x):
    r"""Bi-Real activation binarisation with the ApproxSign gradient.

    Forward:  q = sign(x) in {-1, +1}           (sign(0) = +1)
    Gradient: dq/dx = 2 - 2|x| if |x| < 1 else 0
              (the derivative of the piecewise-quadratic ApproxSign, eq. 6)
    """
    x = tf.convert_to_tensor(x)

    @tf.custom_gradient
    def _approx_sign(x):
        def grad(dy):
            return dy * tf.where(tf.abs(x) < 1.0, 2.0 - 2.0 * tf.abs(x), tf.zeros_like(x))

        return binary_sign(x), grad

    return _approx_sign(x)


def magnitude_aware_sign(w):
    r"""Magnitude-aware weight binarisation, per output channel (last axis).

    Forward:  q = alpha_c * sign(w),  alpha_c = mean_{i in channel c} |w_i|
    Gradient: dq/dw = 1 if |w| <= 1 else 0   (straight-through through the
              clip to [-1, 1]; alpha is treated as a constant)
    """
    w = tf.convert_to_tensor(w)

    @tf.custom_gradient
    def _binary(w):
        axes = list(range(len(w.shape) - 1))
        alpha = tf.reduce_mean(tf.abs(w), axis=axes) if axes else tf.abs(w)

        def grad(dy):
            return dy * tf.cast(tf.abs(w) <= 1.0, dy.dtype)

        return alpha * binary_sign(w), grad

    return _binary(w)


class BinaryQuantizer(Quantizer):
    """Base of the 1-bit quantizers: ``bits`` must be 1."""

    allowed_bits = (1,)

    def __init__(self, bits: int = 1, **kwargs):
        super().__init__(bits=bits, **kwargs)


@register("bireal_weight")
class BiRealWeight(BinaryQuantizer):
    """Bi-Real weights: ``alpha_c sign(W)``; see :func:`magnitude_aware_sign`.

    Output grid: binary per output channel (last kernel axis), {-alpha_c, +alpha_c}
    with alpha_c = mean|W_c| (integer codes {-1, +1} times a per-channel scale).
    """

    def call(self, w):
        return magnitude_aware_sign(w)

    def export_grid(self, q_kernel=None, max_code: int = 127):
        """Codes ±1 with one step per output channel (alpha_c = its max |value|: depends on the kernel)."""
        if q_kernel is None:
            return None
        q = np.asarray(q_kernel, dtype=np.float64)
        steps = np.abs(q.reshape(-1, q.shape[-1])).max(axis=0)
        steps = np.where(steps > 0, steps, 1.0)
        codes = np.round(q / steps)
        if np.abs(codes).max(initial=0) > max_code or not np.allclose(codes * steps, q, rtol=1e-5, atol=1e-7):
            return None
        return Grid("weights", codes=codes.astype(np.int32), steps=steps)


@register("bireal_activation")
class BiRealActivation(BinaryQuantizer):
    """Bi-Real activations: ``sign(x)``, ApproxSign gradient; see :func:`approx_sign`.

    Output grid: binary per tensor, exactly {-1, +1} (scale 1). Use it without a
    ReLU in front (sign of a ReLU output is constant): the ``birealnet`` archs do.
    """

    def call(self, x):
        return approx_sign(x)

    def export_grid(self, q_kernel=None, max_code: int = 127):
        return Grid("sign")


register_family("bireal", BiRealWeight, BiRealActivation)
