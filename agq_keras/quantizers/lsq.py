"""LSQ: learned step size quantization, per tensor or per output channel, initialised from the data.

Reference: S. K. Esser, J. L. McKinstry, D. Bablani, R. Appuswamy, D. S. Modha, "Learned Step Size
Quantization", ICLR 2020 (eqs. 1-4). The step is stored as its natural logarithm, as TQT stores its
thresholds (S. R. Jain, A. Gural, M. Wu, C. H. Dick, "Trained Quantization Thresholds for Accurate and
Efficient Fixed-Point Inference of Deep Neural Networks", MLSys 2020): an adaptive optimizer (Adam) then
moves the step by a fraction of itself per update, whatever its size. Without it a weight step of 1e-3
moves by about the learning rate (5e-4) each update and 4-bit fine-tuning falls to chance.
"""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from agq_keras.quantizers.base import (Grid, Quantizer, check_bits, check_flag, register, register_family,
                                      state_updates_enabled, weight_grid)

MIN_STEP = 1e-8


def lsq_quantize(x, step, q_n: int, q_p: int, grad_scale: float):
    r"""LSQ forward and gradients. ``step`` is a scalar, or a vector with one step per slice of the last
    axis of ``x`` (a kernel's output channels).

    Forward:   v = x / s,   q = round(clip(v, -Q_N, Q_P)) * s
    dq/dx:     1 if -Q_N <= v <= Q_P else 0            (straight-through)
    dq/ds:     round(v) - v   if -Q_N <= v <= Q_P     (0 at the two ends)
               -Q_N           if v < -Q_N
               Q_P            if v > Q_P
               and dL/ds = g * sum(dL/dq * dq/ds) with g = ``grad_scale`` (the paper's 1 / sqrt(N Q_P), N the
               number of values sharing the step), summed over the values sharing that step.
    ``s`` is floored at 1e-8 in the forward pass.
    """
    x = tf.convert_to_tensor(x)
    step = tf.convert_to_tensor(step, x.dtype)
    reduce_axes = list(range(len(x.shape) - 1)) if step.shape.rank == 1 else None

    @tf.custom_gradient
    def _lsq(x, s):
        s_eff = tf.maximum(s, MIN_STEP)
        v = x / s_eff
        r = tf.round(tf.clip_by_value(v, -float(q_n), float(q_p)))

        def grad(dy):
            # inside: round(v) - v; below: r = -Q_N; above: r = Q_P (one mask, no per-case selects)
            inside = tf.cast(tf.logical_and(v >= -float(q_n), v <= float(q_p)), dy.dtype)
            dx = dy * inside
            ds = tf.reduce_sum(dy * r - dx * v, axis=reduce_axes) * grad_scale
            return dx, tf.reshape(ds, tf.shape(s))

        return r * s_eff, grad

    return _lsq(x, step)


def lsq_init_step(x, q_p: int, axes=None):
    r"""The data initialisation of the step: ``s = min(2 <|x|> / sqrt(Q_P), max|x| / Q_P)``, the mean and max
    over ``axes`` (None: all values; a kernel's per-channel step reduces all axes but the last).

    The first term is the paper's init; the second is the step whose grid just covers the largest value. At
    low bits the paper's step is the smaller (it clips the tail); at 8 bits it would be ~5x coarser than needed
    for a Gaussian tensor, and the covering step keeps the 8-bit grid's resolution. Floored at ``MIN_STEP``.
    """
    x = tf.abs(tf.convert_to_tensor(x))
    paper = 2.0 * tf.reduce_mean(x, axis=axes) / math.sqrt(q_p)
    covering = tf.reduce_max(x, axis=axes) / float(q_p)
    return tf.maximum(tf.minimum(paper, covering), MIN_STEP)


class _LSQ(Quantizer):
    """Shared state of the LSQ quantizers: ``log_step`` (trainable; one per tensor or per output channel) and
    ``initialized`` (non-trainable 0/1). While ``initialized`` is 0, :meth:`call` sets the step from the
    tensor it quantizes (:func:`lsq_init_step`) and sets the flag; ``step_init`` skips that (a fixed start)."""

    allowed_bits = tuple(range(2, 9))
    signed = True
    per_channel = False

    def __init__(self, bits: int = 2, step_init=None, **kwargs):
        super().__init__(bits=bits, **kwargs)
        if step_init is not None and (isinstance(step_init, bool) or not isinstance(step_init, numbers.Real)
                                      or not math.isfinite(step_init) or step_init <= 0):
            raise ValueError(f"{type(self).__name__}: step_init={step_init!r} must be None or a positive number.")
        self.step_init = None if step_init is None else float(step_init)
        # signed: Q_N = 2^(b-1), except 127 at 8 bits (TFLite's int8 weights exclude -128)
        self.q_n = min(2 ** (self.bits - 1), 127) if self.signed else 0
        self.q_p = 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def build(self, input_shape):
        init = self.step_init if self.step_init is not None else self.default_step(input_shape)
        shape = (int(input_shape[-1]),) if self.per_channel else ()
        self.log_step = self.add_weight(name="log_step", shape=shape, trainable=True, aggregation="mean",
                                        initializer=keras.initializers.Constant(math.log(float(init))))
        self.initialized = self.add_weight(name="initialized", shape=(), trainable=False, aggregation="mean",
                                           initializer=keras.initializers.Constant(
                                               0.0 if self.step_init is None else 1.0))
        self.num_elements = self.count(input_shape)
        super().build(input_shape)

    def _init_axes(self, x):
        """The axes the data initialisation reduces: all but the last (output channels) when per channel."""
        return list(range(len(x.shape) - 1)) if self.per_channel else None

    def step(self):
        """The step the forward pass uses (a tensor: ``exp(log_step)``)."""
        return tf.exp(tf.convert_to_tensor(self.log_step))

    def call(self, x, training=None):
        if self.should_initialize(training):
            def initialize():
                log_init = tf.math.log(lsq_init_step(tf.stop_gradient(x), self.q_p, self._init_axes(x)))
                self.log_step.assign(tf.reshape(log_init, tf.shape(self.log_step)))
                self.initialized.assign(1.0)
                return tf.constant(True)

            tf.cond(tf.convert_to_tensor(self.initialized) < 0.5, initialize, lambda: tf.constant(False))
        g = 1.0 / math.sqrt(self.num_elements * self.q_p)
        return lsq_quantize(x, self.step(), self.q_n, self.q_p, g)

    def assign_step(self, value) -> None:
        """Set the step (a scalar, or one per channel) and mark it initialised."""
        value = np.broadcast_to(np.asarray(value, np.float64), tuple(self.log_step.shape))
        self.log_step.assign(np.log(np.maximum(value, MIN_STEP)).astype("float32"))
        self.initialized.assign(1.0)

    def get_config(self):
        config = super().get_config()
        config["step_init"] = self.step_init
        return config

    def learned_step(self):
        """The step the forward pass uses (floored at ``MIN_STEP``): a float, or one per channel (NumPy). Computed
        as ``exp`` in float64 rounded to float32, the same on every CPU (the export's scales do not depend on a
        vectorised float32 ``exp``)."""
        log_step = np.asarray(keras.ops.convert_to_numpy(self.log_step), np.float64)
        step = np.maximum(np.exp(log_step).astype(np.float32), np.float32(MIN_STEP)).astype(np.float64)
        return float(step) if step.ndim == 0 else step


@register("lsq_weight")
class LSQWeight(_LSQ):
    """LSQ weights: signed, Q_N = 2^{b-1} (127 at 8 bits), Q_P = 2^{b-1} - 1; one learned step per output channel
    (``per_channel=True``, the last axis) or per tensor.

    See :func:`lsq_quantize`; N = the weights sharing a step, for the gradient scale. Output grid: uniform,
    integers -Q_N .. Q_P times the channel's step. The step initialises from the kernel at the first call
    (:func:`lsq_init_step`, per channel), so it fits the weights the layer holds then (a float model's trained
    weights after :func:`agq_keras.quantize` copies them in); ``step_init`` fixes it instead. Until then its
    value is the paper's init for He-normal weights, ``2 E|w| / sqrt(Q_P)``, ``E|w| = sqrt(2/fan_in) sqrt(2/pi)``.
    b = 2..8.
    """

    signed = True
    OPTIONS = ("per_channel",)

    def __init__(self, bits: int = 2, step_init=None, per_channel: bool = True, **kwargs):
        super().__init__(bits=bits, step_init=step_init, **kwargs)
        self.per_channel = check_flag("LSQWeight", "per_channel", per_channel)

    def count(self, input_shape):
        total = int(np.prod(input_shape))
        return max(1, total // int(input_shape[-1])) if self.per_channel else total

    def should_initialize(self, training) -> bool:
        """The kernel is known at any call: initialise at the first, training or not."""
        return self.step_init is None and state_updates_enabled()

    def get_config(self):
        config = super().get_config()
        config["per_channel"] = self.per_channel
        return config

    def export_grid(self, q_kernel=None, max_code: int = 127):
        """Integer codes -Q_N .. Q_P times the learned step (one per tensor or per output channel); no constant
        step without a kernel (it is learned)."""
        return None if q_kernel is None else weight_grid(q_kernel, self.learned_step(), max_code)

    def default_step(self, input_shape):
        fan_in = max(1, int(np.prod(input_shape[:-1])))
        mean_abs = math.sqrt(2.0 / fan_in) * math.sqrt(2.0 / math.pi)
        return 2.0 * mean_abs / math.sqrt(self.q_p)


@register("lsq_activation")
class LSQActivation(_LSQ):
    """LSQ activations, one learned step per tensor: unsigned (Q_N = 0, Q_P = 2^b - 1), or ``signed=True``
    (Q_N = 2^{b-1}, Q_P = 2^{b-1} - 1: an unrectified input, such as a MobileNetV2 expand conv's linear
    bottleneck).

    See :func:`lsq_quantize`; N = features per example for the gradient scale. Output grid: uniform, integers
    -Q_N .. Q_P times the step. The step initialises from the first *training* batch it reads
    (:func:`lsq_init_step`); ``step_init`` fixes the start instead (:func:`agq_keras.quantize` gives a quantizer
    fed by ``ReLU(max_value=m)`` ``step_init = m / Q_P``: its grid starts on the whole [0, m]). Until then the
    step is ``2 E|x| / sqrt(Q_P)`` with ``E|x| = 0.4`` (the mean of a BN + ReLU output). b = 2..8.
    """

    signed = False
    OPTIONS = ("signed",)

    def __init__(self, bits: int = 2, step_init=None, signed: bool = False, **kwargs):
        super().__init__(bits=bits, step_init=step_init, **kwargs)
        self.signed = check_flag("LSQActivation", "signed", signed)
        if signed:  # all 2^b codes (an activation grid may hold 256 levels; -128 is not excluded as for weights)
            self.q_n, self.q_p = 2 ** (self.bits - 1), 2 ** (self.bits - 1) - 1

    @staticmethod
    def count(input_shape):
        return max(1, int(np.prod([d for d in input_shape[1:] if d is not None])))

    def should_initialize(self, training) -> bool:
        return bool(training) and self.step_init is None and state_updates_enabled()

    @classmethod
    def for_input_range(cls, bits: int, top: float):
        """Step ``top / Q_P``: the grid starts on the whole ``[0, top]`` (no data initialisation)."""
        q_p = 2 ** check_bits(cls.__name__, bits, cls.allowed_bits) - 1
        return cls(bits=bits, step_init=top / q_p)

    def default_step(self, input_shape):
        return 2.0 * 0.4 / math.sqrt(self.q_p)

    def get_config(self):
        config = super().get_config()
        config["signed"] = self.signed
        return config

    def export_grid(self, q_kernel=None, max_code: int = 127):
        """Step s, ``Q_N + Q_P`` levels from ``-Q_N``: outputs ``s * round(clip(x/s, -Q_N, Q_P))``, s the learned
        step."""
        return Grid("activation", step=self.learned_step(), levels=self.q_n + self.q_p, offset=self.q_n)


register_family("lsq", LSQWeight, LSQActivation)
