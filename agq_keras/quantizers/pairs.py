"""A layer's fresh quantizer pair by family name and bit widths: the one place that knows both the
registry (:mod:`~agq_keras.quantizers.base`) and the special widths' quantizers
(:mod:`~agq_keras.quantizers.fixed`), so that ``base`` never imports a family module."""

from __future__ import annotations

from agq_keras.quantizers.base import FIXED_POINT_BITS, FULL_PRECISION_BITS, Quantizer, family_classes
from agq_keras.quantizers.fixed import FixedPoint, Identity


def make_pair(family: str, w_bits: int, a_bits: int) -> tuple[Quantizer, Quantizer]:
    """Fresh ``(weight_quantizer, activation_quantizer)`` for one layer.

    ``bits=32`` gives the identity (full precision), ``bits=16`` the 16-bit
    fixed-point quantizer; any other width goes to the family's classes,
    which validate it.
    """
    weight_cls, activation_cls = family_classes(family)
    return _special(w_bits, weight_cls), _special(a_bits, activation_cls)


def _special(bits, cls) -> Quantizer:
    if bits == FULL_PRECISION_BITS and not isinstance(bits, bool):
        return Identity()
    if bits == FIXED_POINT_BITS and FIXED_POINT_BITS not in cls.allowed_bits and not isinstance(bits, bool):
        return FixedPoint(FIXED_POINT_BITS)
    try:
        return cls(bits=bits)
    except ValueError as err:
        raise ValueError(f"{err} (32 = full precision and 16 = 16-bit fixed point are also accepted)") from None
