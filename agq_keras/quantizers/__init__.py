"""Quantizers: pure custom-gradient functions wrapped by serializable classes.

``get(identifier)`` resolves names, config dicts and instances;
``make_pair(family, w_bits, a_bits)`` gives a fresh pair for one layer.
"""

from agq_keras.quantizers.base import (
    Quantizer,
    families,
    frozen_state,
    get,
    make_pair,
    names,
    register,
    register_family,
    state_updates_enabled,
)
from agq_keras.quantizers.dorefa import DoReFaActivation, DoReFaWeight, dorefa_activation, dorefa_weight
from agq_keras.quantizers.fixed import FixedPoint, Identity, fixed_point

__all__ = [
    "DoReFaActivation",
    "DoReFaWeight",
    "FixedPoint",
    "Identity",
    "Quantizer",
    "dorefa_activation",
    "dorefa_weight",
    "families",
    "fixed_point",
    "frozen_state",
    "get",
    "make_pair",
    "names",
    "register",
    "register_family",
    "state_updates_enabled",
]
