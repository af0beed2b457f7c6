"""Full-precision identity and symmetric fixed-point quantizers.

The paper keeps the first convolution and the last dense layer at 16 bits
(Section 4.1); :class:`FixedPoint` is that quantizer. :class:`Identity` is
"no quantization" with the same interface (``bits=32``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from agq_keras.quantizers.base import Quantizer, register, uniform_codes


def fixed_point(x, bits: int):
    r"""Symmetric per-tensor fixed point with the straight-through gradient.

    Forward:  s = max|x| / (2^{b-1} - 1),  q = s * round(x / s)   (q = 0 where max|x| = 0)
    Gradient: dq/dx = 1 (straight-through; s is treated as a constant).
    """
    x = tf.convert_to_tensor(x)
    qmax = float(2 ** (bits - 1) - 1)

    @tf.custom_gradient
    def _fixed(x):
        scale = tf.reduce_max(tf.abs(x)) / qmax
        safe = tf.where(scale > 0, scale, tf.ones_like(scale))
        return tf.round(x / safe) * safe, lambda dy: dy

    return _fixed(x)


@register("fixed_point")
class FixedPoint(Quantizer):
    """Symmetric fixed point, ``2^{bits-1}-1`` positive levels, STE gradient.

    Forward ``q = s·round(x/s)`` with ``s = max|x| / (2^{b-1}-1)`` per tensor;
    gradient ``1``. Used at 16 bits for the first and last layers (paper §4.1).
    """

    allowed_bits = tuple(range(2, 17))

    def __init__(self, bits: int = 16, **kwargs):
        super().__init__(bits=bits, **kwargs)

    def call(self, x):
        return fixed_point(x, self.bits)

    def export_weight_grid(self, q_kernel, max_code: int = 127):
        """Codes round(w/s), |code| <= 2^{b-1} - 1, one step s = max|w|/(2^{b-1}-1) per tensor."""
        top = float(np.abs(q_kernel).max(initial=0.0))
        return uniform_codes(q_kernel, top / (2 ** (self.bits - 1) - 1) if top > 0 else 1.0, max_code)


@register("identity")
class Identity(Quantizer):
    """Full precision: ``q = x``, gradient ``1``. ``bits`` is always 32."""

    allowed_bits = (32,)

    def __init__(self, bits: int = 32, **kwargs):
        super().__init__(bits=bits, **kwargs)

    def call(self, x):
        return x
