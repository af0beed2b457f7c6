"""A layer's fresh quantizer pair by family name and bit widths: the one place that knows both the
registry (:mod:`~agq_keras.quantizers.base`) and the special widths' quantizers
(:mod:`~agq_keras.quantizers.fixed`), so that ``base`` never imports a family module."""

from __future__ import annotations

from agq_keras.quantizers.base import FIXED_POINT_BITS, FULL_PRECISION_BITS, Quantizer, families, family_classes
from agq_keras.quantizers.fixed import FixedPoint, Identity


# the recipe for a user's model (quantize(), build_detector(), build("mobilenetv2")): LSQ, per-channel weight steps,
# ranges from the data (docs/quantize.md); build() of the paper's archs and the paper's configs keep DoReFa
DEFAULT_FAMILY = "lsq"


def make_pair(family: str, w_bits: int, a_bits: int, *, per_channel=None, input_range=None,
              signed_input: bool = False) -> tuple[Quantizer, Quantizer]:
    """Fresh ``(weight_quantizer, activation_quantizer)`` for one layer.

    ``bits=32`` gives the identity (full precision), ``bits=16`` the 16-bit
    fixed-point quantizer; any other width goes to the family's classes,
    which validate it.

    ``per_channel``: None keeps the weight class's default; True / False asks for one scale per output
    channel / per tensor (the classes with a ``per_channel`` option: DoReFa, LSQ; an error for the others).
    ``input_range``: the largest value the activation quantizer's input can take when it is known (``m`` for
    a ``ReLU(max_value=m)``), given to the activation class's :meth:`~Quantizer.for_input_range` (LSQ starts
    its step, PACT its clip, on that range; DoReFa's range is [0, 1] whatever it reads).
    ``signed_input``: the activation quantizer reads an unrectified tensor and keeps its sign (a signed grid:
    the families with a ``signed`` activation option, :func:`has_signed_activation`; an error for the others).
    """
    weight_cls, activation_cls = family_classes(family)
    weight_kwargs = {}
    if per_channel is not None:
        if not has_per_channel_option(family):
            raise ValueError(f"quantizer family {family!r}: its weights ({weight_cls.__name__}) have no "
                             f"per_channel option; per_channel={per_channel!r} applies to the dorefa, pact and lsq "
                             "families.")
        weight_kwargs["per_channel"] = bool(per_channel)
    activation_kwargs = {}
    if signed_input:
        if not has_signed_activation(family):
            raise ValueError(f"quantizer family {family!r}: its activations ({activation_cls.__name__}) are unsigned; "
                             f"a signed activation grid is available in the families {', '.join(signed_families())}.")
        activation_kwargs["signed"] = True
    weight = _special(w_bits, weight_cls, **weight_kwargs)
    activation = _special(a_bits, activation_cls, input_range=input_range, **activation_kwargs)
    return weight, activation


def has_signed_activation(family: str) -> bool:
    """Whether the family's activation class takes ``signed`` (LSQ): a signed k-bit grid for unrectified inputs."""
    return "signed" in getattr(family_classes(family)[1], "OPTIONS", ())


def signed_families() -> list[str]:
    """The families with a signed activation grid (:func:`has_signed_activation`)."""
    return [f for f in families() if has_signed_activation(f)]


def has_per_channel_option(family: str) -> bool:
    """Whether the family's weight class takes ``per_channel`` (DoReFa, PACT's DoReFa weights, LSQ)."""
    return "per_channel" in getattr(family_classes(family)[0], "OPTIONS", ())


def _special(bits, cls, input_range=None, **kwargs) -> Quantizer:
    if bits == FULL_PRECISION_BITS and not isinstance(bits, bool):
        return Identity()
    if bits == FIXED_POINT_BITS and FIXED_POINT_BITS not in cls.allowed_bits and not isinstance(bits, bool):
        return FixedPoint(FIXED_POINT_BITS)
    try:
        if input_range is not None:
            return cls.for_input_range(bits, float(input_range))
        return cls(bits=bits, **kwargs)
    except ValueError as err:
        raise ValueError(f"{err} (32 = full precision and 16 = 16-bit fixed point are also accepted)") from None
