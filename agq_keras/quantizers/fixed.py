"""Full-precision identity and symmetric fixed-point quantizers.

The paper keeps the first convolution and the last dense layer at 16 bits
(Section 4.1); :class:`FixedPoint` is that quantizer. :class:`Identity` is
"no quantization" with the same interface (``bits=32``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from agq_keras.quantizers.base import Quantizer, register, uniform_codes


def fixed_point(x, bits: int, unit=None):
    r"""Symmetric per-tensor fixed point with the straight-through gradient.

    Forward:  s = max|x| / (2^{b-1} - 1)   (``unit=None``), or the smallest ``unit * 2^e`` (integer e)
              that is >= it;   q = s * round(x / s)   (q = 0 where max|x| = 0)
    Gradient: dq/dx = 1 (straight-through; s is treated as a constant).
    """
    x = tf.convert_to_tensor(x)
    qmax = float(2 ** (bits - 1) - 1)

    @tf.custom_gradient
    def _fixed(x):
        scale = tf.reduce_max(tf.abs(x)) / qmax
        if unit is not None:
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


@register("fixed_point")
class FixedPoint(Quantizer):
    """Symmetric fixed point, ``2^{bits-1}-1`` positive levels, STE gradient.

    Forward ``q = s·round(x/s)`` with ``s = max|x| / (2^{b-1}-1)`` per tensor, or with
    ``unit`` the smallest ``unit·2^e >= max|x| / (2^{b-1}-1)`` (a power-of-two multiple of
    ``unit``: at most one bit coarser); gradient ``1``. Used at 16 bits for the first and last
    layers (paper §4.1); ``unit`` makes the first conv of a residual F with an int16 stream
    exactly exportable (its integer output multiplier is then a power of two, docs/export.md).
    """

    allowed_bits = tuple(range(2, 17))

    def __init__(self, bits: int = 16, unit=None, **kwargs):
        super().__init__(bits=bits, **kwargs)
        if unit is not None and not (isinstance(unit, (int, float)) and not isinstance(unit, bool)
                                     and np.isfinite(unit) and unit > 0):
            raise ValueError(f"FixedPoint: unit={unit!r} must be None or a positive finite number.")
        self.unit = None if unit is None else float(unit)

    def call(self, x):
        return fixed_point(x, self.bits, self.unit)

    def get_config(self):
        config = super().get_config()
        config["unit"] = self.unit
        return config

    def export_weight_grid(self, q_kernel, max_code: int = 127):
        """Codes round(w/s), |code| <= 2^{b-1} - 1, one step s per tensor (as in the forward)."""
        top = float(np.abs(q_kernel).max(initial=0.0))
        qmax = 2 ** (self.bits - 1) - 1
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
    r"""Fixed point on a constant grid, saturating (an int16 tensor of scale ``step``).

    Forward:  q = step * clip(floor(x / step + 1/2), -limit, limit)   (ties round up, as TFLite)
    Gradient: dq/dx = 1 where |x| <= limit * step, else 0 (straight-through, clipped).
    """
    x = tf.convert_to_tensor(x)
    top = step * limit

    @tf.custom_gradient
    def _step(x):
        q = tf.clip_by_value(tf.floor(x / step + 0.5), -float(limit), float(limit)) * step
        return q, lambda dy: dy * tf.cast(tf.abs(x) <= top, dy.dtype)

    return _step(x)


@register("fixed_step")
class FixedStep(Quantizer):
    """Saturating fixed point on a constant grid: the int16 residual stream of a residual F.

    Forward ``q = step·clip(floor(x/step + 1/2), -limit, limit)``; gradient 1 inside
    ``[-limit·step, limit·step]``, 0 outside. ``build(..., residual_stream="int16")`` puts one after
    the stem and after every residual ``Add``, with ``step`` dividing the block convs' output grid,
    so the exported int16 stream computes exactly what F computes (docs/export.md).
    """

    allowed_bits = (16,)

    def __init__(self, step: float = 1.0 / 256, limit: int = 2**15 - 1, bits: int = 16, **kwargs):
        super().__init__(bits=bits, **kwargs)
        if not (isinstance(step, (int, float)) and not isinstance(step, bool) and np.isfinite(step) and step > 0):
            raise ValueError(f"FixedStep: step={step!r} must be a positive finite number.")
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or not 1 <= limit <= 2**15 - 1:
            raise ValueError(f"FixedStep: limit={limit!r} must be an integer in 1..32767 (int16).")
        self.step, self.limit = float(step), int(limit)

    def call(self, x):
        return fixed_step(x, self.step, self.limit)

    def get_config(self):
        config = super().get_config()
        config.update(step=self.step, limit=self.limit)
        return config

    def export_stream_grid(self):
        """``(step, limit)``: outputs are ``step * n``, integer ``|n| <= limit``."""
        return self.step, self.limit


@register("identity")
class Identity(Quantizer):
    """Full precision: ``q = x``, gradient ``1``. ``bits`` is always 32."""

    allowed_bits = (32,)

    def __init__(self, bits: int = 32, **kwargs):
        super().__init__(bits=bits, **kwargs)

    def call(self, x):
        return x
