"""LSQ: learned step size quantization.

Reference: S. K. Esser, J. L. McKinstry, D. Bablani, R. Appuswamy,
D. S. Modha, "Learned Step Size Quantization", ICLR 2020 (eqs. 1-4).
"""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from agq_keras.quantizers.base import Grid, Quantizer, register, register_family, weight_grid

MIN_STEP = 1e-8


def lsq_quantize(x, step, q_n: int, q_p: int, grad_scale: float):
    r"""LSQ forward and gradients (x any shape, ``step`` a scalar).

    Forward:   v = x / s,   q = round(clip(v, -Q_N, Q_P)) * s
    dq/dx:     1 if -Q_N <= v <= Q_P else 0            (straight-through)
    dq/ds:     round(v) - v   if -Q_N < v < Q_P
               -Q_N           if v <= -Q_N
               Q_P            if v >= Q_P
               and dL/ds = g * sum(dL/dq * dq/ds) with g = ``grad_scale``
               (the paper's 1 / sqrt(N Q_P)).
    ``s`` is floored at 1e-8 in the forward pass.
    """
    x = tf.convert_to_tensor(x)
    step = tf.convert_to_tensor(step, x.dtype)

    @tf.custom_gradient
    def _lsq(x, s):
        s_eff = tf.maximum(s, MIN_STEP)
        v = x / s_eff
        q = tf.round(tf.clip_by_value(v, -float(q_n), float(q_p))) * s_eff

        def grad(dy):
            low, high = v <= -float(q_n), v >= float(q_p)
            inside = tf.logical_and(v >= -float(q_n), v <= float(q_p))
            dx = dy * tf.cast(inside, dy.dtype)
            local = tf.where(low, -float(q_n) * tf.ones_like(v),
                             tf.where(high, float(q_p) * tf.ones_like(v), tf.round(v) - v))
            ds = tf.reduce_sum(dy * local) * grad_scale
            return dx, tf.reshape(ds, tf.shape(s))

        return q, grad

    return _lsq(x, step)


class _LSQ(Quantizer):
    allowed_bits = tuple(range(2, 9))
    signed = True

    def __init__(self, bits: int = 2, step_init=None, **kwargs):
        super().__init__(bits=bits, **kwargs)
        if step_init is not None and (isinstance(step_init, bool) or not isinstance(step_init, numbers.Real)
                                      or not math.isfinite(step_init) or step_init <= 0):
            raise ValueError(f"{type(self).__name__}: step_init={step_init!r} must be None or a positive number.")
        self.step_init = None if step_init is None else float(step_init)
        self.q_n = 2 ** (self.bits - 1) if self.signed else 0
        self.q_p = 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def build(self, input_shape):
        init = self.step_init if self.step_init is not None else self.default_step(input_shape)
        self.step = self.add_weight(name="step", shape=(), trainable=True,
                                    initializer=keras.initializers.Constant(float(init)))
        self.num_elements = self.count(input_shape)
        super().build(input_shape)

    def call(self, x):
        g = 1.0 / math.sqrt(self.num_elements * self.q_p)
        return lsq_quantize(x, tf.convert_to_tensor(self.step), self.q_n, self.q_p, g)

    def get_config(self):
        config = super().get_config()
        config["step_init"] = self.step_init
        return config

    def learned_step(self) -> float:
        """The step the forward pass uses (floored at ``MIN_STEP``)."""
        return max(float(keras.ops.convert_to_numpy(self.step)), MIN_STEP)


@register("lsq_weight")
class LSQWeight(_LSQ):
    """LSQ weights: signed, Q_N = 2^{b-1}, Q_P = 2^{b-1} - 1, one learned step per tensor.

    See :func:`lsq_quantize`; N = number of weights for the gradient scale.
    Output grid: uniform, per tensor, step s: integers -2^{b-1} .. 2^{b-1}-1 times s.
    Default step init ``2 E|w| / sqrt(Q_P)`` (the paper's) with
    ``E|w| = sqrt(2/fan_in) sqrt(2/pi)`` (He-normal weights). b = 2..8.
    """

    signed = True

    @staticmethod
    def count(input_shape):
        return int(np.prod(input_shape))

    def export_grid(self, q_kernel=None, max_code: int = 127):
        """Integer codes -2^{b-1} .. 2^{b-1}-1 times the learned step (one per tensor); no constant
        step without a kernel (it is learned)."""
        return None if q_kernel is None else weight_grid(q_kernel, self.learned_step(), max_code)

    def default_step(self, input_shape):
        fan_in = max(1, int(np.prod(input_shape[:-1])))
        mean_abs = math.sqrt(2.0 / fan_in) * math.sqrt(2.0 / math.pi)
        return 2.0 * mean_abs / math.sqrt(self.q_p)


@register("lsq_activation")
class LSQActivation(_LSQ):
    """LSQ activations: unsigned, Q_N = 0, Q_P = 2^b - 1, one learned step per tensor.

    See :func:`lsq_quantize`; N = features per example for the gradient scale.
    Output grid: uniform, per tensor, step s: integers 0 .. 2^b - 1 times s.
    Default step init ``2 E|x| / sqrt(Q_P)`` with ``E|x| = 0.4`` (the mean of a
    BN + ReLU output). b = 2..8.
    """

    signed = False

    @staticmethod
    def count(input_shape):
        return max(1, int(np.prod([d for d in input_shape[1:] if d is not None])))

    def default_step(self, input_shape):
        return 2.0 * 0.4 / math.sqrt(self.q_p)

    def export_grid(self, q_kernel=None, max_code: int = 127):
        """Step s, ``2^b - 1`` levels: outputs ``s * round(clip(x/s, 0, Q_P))``, s the learned step."""
        return Grid("activation", step=self.learned_step(), levels=self.q_p)


register_family("lsq", LSQWeight, LSQActivation)
