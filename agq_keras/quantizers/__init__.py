"""Quantizers: pure custom-gradient functions wrapped by serializable classes.

``get(identifier)`` resolves names, config dicts and instances;
``make_pair(family, w_bits, a_bits)`` gives a fresh pair for one layer.
"""

from agq_keras.quantizers.base import (
    Grid,
    Quantizer,
    families,
    frozen_state,
    get,
    names,
    register,
    register_family,
    state_updates_enabled,
)
from agq_keras.quantizers.dorefa import DoReFaActivation, DoReFaWeight, dorefa_activation, dorefa_weight
from agq_keras.quantizers.fixed import (FixedPoint, FixedStep, Identity, RangeActivation, edge_pair, fixed_point,
                                       fixed_step, range_activation)
from agq_keras.quantizers.bireal import BiRealActivation, BiRealWeight, approx_sign, magnitude_aware_sign
from agq_keras.quantizers.groupnet import GroupNetActivation, GroupNetWeight, ste_sign
from agq_keras.quantizers.lqnet import LQNetActivation, LQNetWeight, lq_quantize, qem_step
from agq_keras.quantizers.lsq import LSQActivation, LSQWeight, lsq_quantize
from agq_keras.quantizers.pact import PACTActivation, pact_quantize
from agq_keras.quantizers.pairs import make_pair

__all__ = [
    "BiRealActivation",
    "BiRealWeight",
    "GroupNetActivation",
    "GroupNetWeight",
    "LQNetActivation",
    "LQNetWeight",
    "LSQActivation",
    "LSQWeight",
    "PACTActivation",
    "approx_sign",
    "lq_quantize",
    "lsq_quantize",
    "magnitude_aware_sign",
    "pact_quantize",
    "qem_step",
    "ste_sign",
    "DoReFaActivation",
    "DoReFaWeight",
    "FixedPoint",
    "FixedStep",
    "Identity",
    "Grid",
    "Quantizer",
    "RangeActivation",
    "dorefa_activation",
    "dorefa_weight",
    "edge_pair",
    "families",
    "fixed_point",
    "fixed_step",
    "frozen_state",
    "get",
    "make_pair",
    "names",
    "range_activation",
    "register",
    "register_family",
    "state_updates_enabled",
]
