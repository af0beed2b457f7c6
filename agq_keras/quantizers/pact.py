"""PACT: parameterized clipping activation with a learned clip value alpha.

Reference: J. Choi, Z. Wang, S. Venkataramani, P. I.-J. Chuang,
V. Srinivasan, K. Gopalakrishnan, "PACT: Parameterized Clipping Activation
for Quantized Neural Networks", arXiv:1805.06085, 2018 (eqs. 1-3). As in
the paper, weights use DoReFa (family ``"pact"`` = DoReFa weights + PACT
activations).
"""

from __future__ import annotations

import math
import numbers

import keras
import tensorflow as tf

from agq_keras.quantizers.base import Grid, Quantizer, register, register_family
from agq_keras.quantizers.dorefa import DoReFaWeight

MIN_ALPHA = 1e-3


def pact_quantize(x, alpha, bits: int):
    r"""PACT forward and gradients (``alpha`` a scalar).

    Forward:  y = clip(x, 0, alpha),  q = round(y (2^k - 1) / alpha) alpha / (2^k - 1)
    dq/dx:    1 if 0 <= x < alpha else 0          (straight-through)
    dq/dalpha: 1 if x >= alpha else 0             (round passed straight through)
    ``alpha`` is floored at 1e-3 in the forward pass.
    """
    x = tf.convert_to_tensor(x)
    alpha = tf.convert_to_tensor(alpha, x.dtype)
    n = float(2**bits - 1)

    @tf.custom_gradient
    def _pact(x, a):
        a_eff = tf.maximum(a, MIN_ALPHA)
        q = tf.round(tf.clip_by_value(x, 0.0, a_eff) * (n / a_eff)) * (a_eff / n)

        def grad(dy):
            dx = dy * tf.cast(tf.logical_and(x >= 0.0, x < a_eff), dy.dtype)
            da = tf.reduce_sum(dy * tf.cast(x >= a_eff, dy.dtype))
            return dx, tf.reshape(da, tf.shape(a))

        return q, grad

    return _pact(x, alpha)


@register("pact_activation")
class PACTActivation(Quantizer):
    """PACT activations, k = 1..8 bits, one learned clip value alpha per tensor.

    See :func:`pact_quantize`. Output grid: uniform, per tensor, step
    alpha / (2^k - 1): integers 0 .. 2^k - 1 times that step.
    ``alpha_init`` (default 3.0; the paper uses 10 with an L2 penalty on alpha).
    """

    allowed_bits = tuple(range(1, 9))

    def __init__(self, bits: int = 2, alpha_init: float = 3.0, **kwargs):
        super().__init__(bits=bits, **kwargs)
        if (isinstance(alpha_init, bool) or not isinstance(alpha_init, numbers.Real)
                or not math.isfinite(alpha_init) or alpha_init <= 0):
            raise ValueError(f"PACTActivation: alpha_init={alpha_init!r} must be a positive number.")
        self.alpha_init = float(alpha_init)

    @classmethod
    def for_input_range(cls, bits: int, top: float):
        """Clip starting at ``top``."""
        return cls(bits=bits, alpha_init=top)

    def build(self, input_shape):
        self.alpha = self.add_weight(name="alpha", shape=(), trainable=True,
                                     initializer=keras.initializers.Constant(self.alpha_init))
        super().build(input_shape)

    def call(self, x):
        return pact_quantize(x, tf.convert_to_tensor(self.alpha), self.bits)

    def get_config(self):
        config = super().get_config()
        config["alpha_init"] = self.alpha_init
        return config

    def export_grid(self, q_kernel=None, max_code: int = 127):
        """Step ``alpha / (2^k - 1)``, ``2^k - 1`` levels, with the learned alpha (floored at ``MIN_ALPHA``)."""
        alpha = max(float(keras.ops.convert_to_numpy(self.alpha)), MIN_ALPHA)
        n = 2**self.bits - 1
        return Grid("activation", step=alpha / n, levels=n)


register_family("pact", DoReFaWeight, PACTActivation)
