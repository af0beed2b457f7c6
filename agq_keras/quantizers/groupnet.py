"""GroupNet's binary quantizers (one per binary branch / base).

Reference: B. Zhuang, C. Shen, M. Tan, L. Liu, I. Reid, "Structured Binary
Neural Networks for Accurate Image Classification and Semantic Segmentation"
(GroupNet), CVPR 2019 (Section 3.1). The group decomposition itself (M
binary bases per block, summed with learnable scalars) is an architecture:
:mod:`agq_keras.models.groupnet`; each base uses these quantizers.
"""

from __future__ import annotations

import tensorflow as tf

from agq_keras.quantizers.base import register, register_family
from agq_keras.quantizers.bireal import BinaryQuantizer, binary_sign, magnitude_aware_sign


def ste_sign(x):
    r"""Binary activation with the clipped straight-through estimator.

    Forward:  q = sign(x) in {-1, +1}       (sign(0) = +1)
    Gradient: dq/dx = 1 if |x| <= 1 else 0
    """
    x = tf.convert_to_tensor(x)

    @tf.custom_gradient
    def _ste_sign(x):
        return binary_sign(x), lambda dy: dy * tf.cast(tf.abs(x) <= 1.0, dy.dtype)

    return _ste_sign(x)


@register("groupnet_weight")
class GroupNetWeight(BinaryQuantizer):
    """GroupNet base weights: ``alpha_c sign(W)`` per output channel, gradient
    ``1_{|W| <= 1}`` (the same function as Bi-Real: :func:`magnitude_aware_sign`).

    Output grid: binary per output channel, {-alpha_c, +alpha_c}, alpha_c = mean|W_c|.
    """

    def call(self, w):
        return magnitude_aware_sign(w)


@register("groupnet_activation")
class GroupNetActivation(BinaryQuantizer):
    """GroupNet base activations: ``sign(x)``, clipped STE; see :func:`ste_sign`.

    Output grid: binary per tensor, exactly {-1, +1}.
    """

    def call(self, x):
        return ste_sign(x)


register_family("groupnet", GroupNetWeight, GroupNetActivation)
