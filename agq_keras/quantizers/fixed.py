"""Full-precision identity and symmetric fixed-point quantizers.

The paper keeps the first convolution and the last dense layer at 16 bits
(Section 4.1); :class:`FixedPoint` is that quantizer. :class:`Identity` is
"no quantization" with the same interface (``bits=32``).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from agq_keras.quantizers.base import Grid, Quantizer, check_flag, register, state_updates_enabled, uniform_codes


def fixed_point(x, bits: int, unit=None, per_channel: bool = False, odd_fraction: bool = False):
    r"""Symmetric fixed point with the straight-through gradient.

    Forward:  s = max|x| / (2^{b-1} - 1)   (``unit=None``), or the smallest ``unit * 2^e`` (integer e)
              that is >= it, or with ``odd_fraction`` the smallest ``unit / N`` (N odd) that is >= it
              (s itself where that would need N < 1);   q = s * round(x / s)   (q = 0 where max|x| = 0)
              ``per_channel``: one s per slice of the last axis (a kernel's output channels), max over
              the other axes.
    Gradient: dq/dx = 1 (straight-through; s is treated as a constant).
    """
    x = tf.convert_to_tensor(x)
    qmax = float(2 ** (bits - 1) - 1)
    axes = list(range(len(x.shape) - 1)) if per_channel else None

    @tf.custom_gradient
    def _fixed(x):
        scale = tf.reduce_max(tf.abs(x), axis=axes, keepdims=per_channel) / qmax
        if unit is not None and odd_fraction:
            n = tf.floor(unit / tf.maximum(scale, 1e-30))
            n = n - 1.0 + tf.math.floormod(n, 2.0)  # the largest odd N <= unit / s
            scale = tf.where(n >= 1.0, unit / tf.maximum(n, 1.0), scale)
        elif unit is not None:
            pot = unit * tf.pow(2.0, tf.math.ceil(tf.math.log(tf.maximum(scale, 1e-30) / unit) / np.log(2.0)))
            pot = tf.where(pot < scale, 2.0 * pot, pot)  # log/ceil rounding: never finer than needed
            scale = tf.where(scale > 0, pot, scale)
        safe = tf.where(scale > 0, scale, tf.ones_like(scale))
        return tf.round(x / safe) * safe, lambda dy: dy

    return _fixed(x)


def _pot_step(top: float, qmax: float, unit: float) -> float:
    """NumPy twin of ``fixed_point``'s step with ``unit`` (for the export)."""
    step = np.float32(unit) * np.float32(2.0) ** np.float32(np.ceil(np.log(np.float32(top / qmax) / unit) /
                                                                    np.log(2.0)))
    return float(2 * step if step < top / qmax else step)


def _odd_fraction_step(q: np.ndarray, top: float, qmax: int, unit: float) -> float:
    """``unit / N`` (N odd) on which the quantized values ``q`` (max ``top``) lie, found from the code of
    the largest value (``top = c unit / N`` with c <= qmax, close to qmax: the forward's N keeps max|x|
    within qmax codes); ``top / qmax`` when no such N fits."""
    for c in range(qmax, max(qmax - 32, 0), -1):
        n = int(round(c * unit / top))
        if n >= 1 and n % 2 == 1:
            codes = q * n / unit
            if np.abs(codes).max() <= qmax + 1e-3 and np.allclose(codes, np.round(codes), rtol=0, atol=1e-3):
                return unit / n
    return top / qmax


@register("fixed_point")
class FixedPoint(Quantizer):
    """Symmetric fixed point, ``2^{bits-1}-1`` positive levels, STE gradient.

    Forward ``q = s·round(x/s)`` with ``s = max|x| / (2^{b-1}-1)`` per tensor (or per output channel),
    or with ``unit`` the smallest ``unit·2^e >= max|x| / (2^{b-1}-1)`` (a power-of-two multiple of
    ``unit``: at most one bit coarser), or with ``odd_fraction`` the smallest ``unit / N`` (N odd)
    above it (see :func:`fixed_point`); gradient ``1``. Used at 16 bits for the first and last layers
    (paper §4.1). ``unit`` makes the first conv of a residual F with an int16 stream exactly exportable
    (its integer output multiplier is then a power of two); ``unit`` with ``odd_fraction`` and
    ``per_channel`` does it for an int8 stream (the multiplier is ``1/N``: never a tie; docs/export.md).
    """

    allowed_bits = tuple(range(2, 17))

    def __init__(self, bits: int = 16, unit=None, per_channel: bool = False, odd_fraction: bool = False,
                 **kwargs):
        super().__init__(bits=bits, **kwargs)
        if unit is not None and not (isinstance(unit, (int, float)) and not isinstance(unit, bool)
                                     and np.isfinite(unit) and unit > 0):
            raise ValueError(f"FixedPoint: unit={unit!r} must be None or a positive finite number.")
        if not isinstance(odd_fraction, bool) or (odd_fraction and unit is None):
            raise ValueError(f"FixedPoint: odd_fraction={odd_fraction!r} must be True or False, and False "
                             "without a unit.")
        if not isinstance(per_channel, bool) or (per_channel and unit is not None and not odd_fraction):
            raise ValueError(f"FixedPoint: per_channel={per_channel!r} must be True or False, and False with a "
                             "power-of-two unit.")
        self.unit = None if unit is None else float(unit)
        self.per_channel = per_channel
        self.odd_fraction = odd_fraction

    def call(self, x):
        return fixed_point(x, self.bits, self.unit, self.per_channel, self.odd_fraction)

    def get_config(self):
        config = super().get_config()
        config.update(unit=self.unit, per_channel=self.per_channel, odd_fraction=self.odd_fraction)
        return config

    def export_grid(self, q_kernel=None, max_code: int = 127):
        """Weights: codes round(w/s), |code| <= 2^{b-1} - 1, one step s per tensor or per output channel
        (as in the forward; s depends on the kernel). As an activation quantizer (the 16-bit classifier
        input) its step is per batch: no grid."""
        if q_kernel is None:
            return None
        found = self._codes(q_kernel, max_code)
        return None if found is None else Grid("weights", codes=found[0], steps=found[1])

    def _codes(self, q_kernel, max_code):
        qmax = 2 ** (self.bits - 1) - 1
        if self.per_channel:
            q = np.asarray(q_kernel, np.float64)
            tops = np.abs(q.reshape(-1, q.shape[-1])).max(axis=0)
            steps = np.where(tops > 0, tops / qmax, 1.0)
            if self.odd_fraction:
                steps = np.asarray([_odd_fraction_step(q[..., c], top, qmax, self.unit) if top > 0 else 1.0
                                    for c, top in enumerate(tops)])
            codes = np.round(q / steps)
            if np.abs(codes).max(initial=0) > min(max_code, qmax) or not np.allclose(codes * steps, q, rtol=1e-5,
                                                                                     atol=1e-7):
                return None
            return codes.astype(np.int32), steps
        top = float(np.abs(q_kernel).max(initial=0.0))
        if top == 0:
            return uniform_codes(q_kernel, 1.0, max_code)
        if self.unit is None:
            return uniform_codes(q_kernel, top / qmax, max_code)
        # max|q(W)| is within s/2 of max|W|, which may sit at a power boundary: try the neighbours
        step = _pot_step(top, qmax, self.unit)
        for candidate in (step, step / 2, step * 2):
            grid = uniform_codes(q_kernel, candidate, min(max_code, qmax))
            if grid is not None:
                return grid
        return None


def fixed_step(x, step: float, limit: int):
    r"""Fixed point on a constant grid, saturating like a two's-complement integer tensor of scale
    ``step`` (int16: ``limit = 32767``; int8: ``limit = 127``).

    Forward:  q = step * clip(floor(x / step + 1/2), -limit - 1, limit)   (ties round up)
    Gradient: dq/dx = 1 where -(limit + 1) * step <= x <= limit * step, else 0 (straight-through, clipped).
    """
    x = tf.convert_to_tensor(x)
    top, bottom = step * limit, -step * (limit + 1)

    @tf.custom_gradient
    def _step(x):
        q = tf.clip_by_value(tf.floor(x / step + 0.5), -float(limit + 1), float(limit)) * step
        return q, lambda dy: dy * tf.cast(tf.logical_and(x >= bottom, x <= top), dy.dtype)

    return _step(x)


@register("fixed_step")
class FixedStep(Quantizer):
    """Saturating fixed point on a constant grid: the int16 or int8 residual stream of a residual F.

    Forward ``q = step·clip(floor(x/step + 1/2), -limit - 1, limit)``; gradient 1 inside
    ``[-(limit + 1)·step, limit·step]``, 0 outside (see :func:`fixed_step`).
    ``build(..., residual_stream="int16"|"int8")`` puts them on the stream (after the stem and every
    residual ``Add``; int8 also after the convs writing the stream), with ``step`` tied to the block
    convs' output grid, so the exported stream computes exactly what F computes (docs/export.md).
    ``bits`` is the integer type the export stores (16 or 8); ``limit`` is at most ``2^(bits-1) - 1``.
    """

    allowed_bits = (8, 16)

    def __init__(self, step: float = 1.0 / 256, limit: int = 2**15 - 1, bits: int = 16, **kwargs):
        super().__init__(bits=bits, **kwargs)
        if not (isinstance(step, (int, float)) and not isinstance(step, bool) and np.isfinite(step) and step > 0):
            raise ValueError(f"FixedStep: step={step!r} must be a positive finite number.")
        top = 2 ** (self.bits - 1) - 1
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or not 1 <= limit <= top:
            raise ValueError(f"FixedStep: limit={limit!r} must be an integer in 1..{top} (int{self.bits}).")
        self.step, self.limit = float(step), int(limit)

    def call(self, x):
        return fixed_step(x, self.step, self.limit)

    def get_config(self):
        config = super().get_config()
        config.update(step=self.step, limit=self.limit)
        return config

    def export_grid(self, q_kernel=None, max_code: int = 127):
        """Outputs ``step * n``, integer ``n`` in ``[-(limit + 1), limit]``."""
        return Grid("stream", step=self.step, limit=self.limit)


def range_activation(x, top, bits: int):
    r"""Unsigned k-bit activation on a static range ``[0, top]`` (``top`` a tensor, not learned by gradient).

    Forward:  s = top / (2^k - 1);   q = s * round(clip(x, 0, top) / s)
    Gradient: dq/dx = 1 if 0 <= x <= top else 0 (straight-through, clipped).
    """
    x = tf.convert_to_tensor(x)
    n = float(2**bits - 1)

    @tf.custom_gradient
    def _range(x):
        step = top / n
        q = tf.round(tf.clip_by_value(x, 0.0, top) / step) * step
        return q, lambda dy: dy * tf.cast(tf.logical_and(x >= 0.0, x <= top), dy.dtype)

    return _range(x)


@register("range_activation")
class RangeActivation(Quantizer):
    """k-bit activations on a static range: the 8-bit input of the classifier, the 8-bit feature map
    before it, and (``signed=True``) the int8 logits (``first_last_bits=8``).

    Unsigned: forward ``q = s·round(clip(x, 0, top)/s)``, ``s = top/(2^k - 1)``; gradient 1 inside
    ``[0, top]`` (see :func:`range_activation`). Signed: :func:`fixed_step` with ``s = top/(2^(k-1) - 1)``
    and limit ``2^(k-1) - 1``, i.e. ``q = s·clip(floor(x/s + 1/2), -2^(k-1), 2^(k-1) - 1)``, gradient 1
    inside that range. ``top`` is a non-trainable variable: in every training forward pass it moves to
    ``m·top + (1 - m)·max(x)`` (``max|x|`` when signed; the first pass sets it to that maximum) and the
    pass uses the new value; in inference it is fixed, so the exported int8 tensor has the same grid
    (unsigned: scale ``s``, zero point ``127 - (2^k - 1)``; signed: scale ``s``, zero point 0).
    k = 2..8, m = ``momentum`` (0.9).
    """

    allowed_bits = tuple(range(2, 9))

    def __init__(self, bits: int = 8, momentum: float = 0.9, signed: bool = False, **kwargs):
        super().__init__(bits=bits, **kwargs)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"RangeActivation: momentum={momentum!r} must be a number in [0, 1).")
        self.momentum = float(momentum)
        self.signed = check_flag("RangeActivation", "signed", signed)

    def build(self, input_shape):
        self.top = self.add_weight(name="top", shape=(), initializer="zeros", trainable=False)
        super().build(input_shape)

    @property
    def levels(self) -> int:
        """Steps between 0 and ``top``: ``2^k - 1`` (unsigned) or ``2^(k-1) - 1`` (signed)."""
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def step(self):
        """The grid step ``max(top, MIN_TOP) / levels`` (a tensor)."""
        return tf.maximum(tf.convert_to_tensor(self.top), MIN_TOP) / self.levels

    def call(self, x, training=None):
        if training and state_updates_enabled():
            top = tf.convert_to_tensor(self.top)
            batch = tf.reduce_max(tf.abs(x) if self.signed else x)
            self.top.assign(tf.where(top > 0, self.momentum * top + (1.0 - self.momentum) * batch, batch))
        step = self.step()
        if self.signed:
            return fixed_step(x, step, self.levels)
        return range_activation(x, step * self.levels, self.bits)

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, signed=self.signed)
        return config

    def export_grid(self, q_kernel=None, max_code: int = 127):
        """Step ``top / levels`` (the stored range, floored at ``MIN_TOP``): an ``"activation"`` grid of
        ``2^k - 1`` levels, or (signed) a ``"stream"`` grid with limit ``2^(k-1) - 1``."""
        step = max(float(keras.ops.convert_to_numpy(self.top)), MIN_TOP) / self.levels
        if self.signed:
            return Grid("stream", step=step, limit=self.levels)
        return Grid("activation", step=step, levels=self.levels)


MIN_TOP = 1e-6
EDGE_BITS = (8, 16, 32)


def edge_pair(bits: int) -> tuple[Quantizer, Quantizer]:
    """``(weight quantizer, input quantizer)`` of the first conv and the classifier (``first_last_bits``):
    32 full precision; 16 the paper's per-tensor 16-bit fixed point (the input's range per batch);
    8 per-channel symmetric int8 weights (``max|w_c|/127``) and an 8-bit input on a static range
    (:class:`RangeActivation`), which export as plain int8 (no repeated inputs)."""
    if isinstance(bits, bool) or bits not in EDGE_BITS:
        raise ValueError(f"first_last_bits={bits!r} is not supported; allowed: 8, 16, 32.")
    if bits == 32:
        return Identity(), Identity()
    if bits == 16:
        return FixedPoint(16), FixedPoint(16)
    return FixedPoint(8, per_channel=True), RangeActivation(8)


@register("identity")
class Identity(Quantizer):
    """Full precision: ``q = x``, gradient ``1``. ``bits`` is always 32."""

    allowed_bits = (32,)

    def __init__(self, bits: int = 32, **kwargs):
        super().__init__(bits=bits, **kwargs)

    def call(self, x):
        return x
