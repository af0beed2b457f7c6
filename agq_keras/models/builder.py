"""The built-in F: :func:`build_net` makes F and the object that made its layers (:func:`agq_keras.build`
adds H or SSP), :func:`aux_taps` names where AG taps it."""

from __future__ import annotations

import dataclasses
import functools
import numbers

import keras

from agq_keras import quantizers, structure
from agq_keras.models.bireal import BiRealNet
from agq_keras.models.groupnet import GroupNet
from agq_keras.models.mobilenetv2 import MOBILENETV2, MobileNetV2
from agq_keras.models.resnet import RESNETS, BNPersonality, ResNet

# arch name -> (F builder class with body()/head()/blocks, its spec: a ResNet ArchSpec or a MobileNetSpec).
# The Bi-Real / GroupNet "20" variants are CPU-scale twins (CIFAR stem, widths 16/32/64).
SPECS = {name: (ResNet, spec) for name, spec in RESNETS.items()}
VARIANTS = {
    "birealnet18": (BiRealNet, RESNETS["resnet18"]),
    "birealnet20": (BiRealNet, RESNETS["resnet20"]),
    "groupnet18": (GroupNet, RESNETS["resnet18"]),
    "groupnet20": (GroupNet, RESNETS["resnet20"]),
}
SPECS.update(VARIANTS)
SPECS["mobilenetv2"] = (MobileNetV2, MOBILENETV2)  # stem="cifar": the small-input stem (downsampling 8)
# arch name -> callable(**net kwargs) returning an F builder.
ARCHITECTURES = {name: functools.partial(cls, spec) for name, (cls, spec) in SPECS.items()}
# arch name -> minimum input height/width (its total downsampling factor).
MIN_INPUT_SIZE = {name: spec.downsampling for name, (_, spec) in SPECS.items()}
STEMS = ("imagenet", "cifar")

EXTRA_KWARGS = {
    "bn_momentum": 0.9,  # Keras's 0.99 evaluates badly after short runs
    "bn_epsilon": 1e-5,
    "first_last_bits": None,  # None: 16, or 32 for a full-precision model; 8: plain int8 in the export
    "stem": None,  # "imagenet" or "cifar"; None: the arch's own
    "num_bases": None,  # GroupNet archs only: M binary bases per block (None: 5)
    "alpha": None,  # mobilenetv2 only: the width multiplier (None: 1.0)
    "residual_stream": "float",  # "int16" / "int8": F quantizes its residual stream as the export stores it
    "bottleneck": None,  # mobilenetv2 only: "linear" / "relu" (None: linear where the family has a signed grid)
}
# the quantizer family of ``build(arch)`` when none is given: the paper's DoReFa for the paper's archs (their
# reproduction stays comparable), the user-model recipe (LSQ, per-channel weights) for MobileNetV2
ARCH_DEFAULT_FAMILY = {"mobilenetv2": quantizers.pairs.DEFAULT_FAMILY}


def arch_family(arch: str) -> str:
    """The quantizer family ``build(arch)`` uses when none is given (:data:`ARCH_DEFAULT_FAMILY`, else DoReFa)."""
    return ARCH_DEFAULT_FAMILY.get(arch, "dorefa")


def check_extra_kwargs(kwargs, also=()) -> None:
    """A ValueError naming the arguments that are neither :data:`EXTRA_KWARGS` nor ``also``."""
    allowed = set(EXTRA_KWARGS) | set(also)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"build(): unknown argument(s) {unknown}; allowed extra arguments: {sorted(allowed)}.")


def build_net(arch: str, *, plain: bool = False, quantizer: str | None = None, w_bits: int = 2, a_bits: int = 2,
              num_classes: int = 1000, input_shape=(224, 224, 3), **kwargs):
    """``(F, its builder object)``: F, a functional `keras.Model`, and the object that made its layers (its
    ``blocks`` and :meth:`layer_taps`). :func:`agq_keras.build` documents the arguments."""
    check_extra_kwargs(kwargs)
    opts = {**EXTRA_KWARGS, **kwargs}
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown arch {arch!r}; allowed: {', '.join(sorted(ARCHITECTURES))}.")
    if quantizer is None:
        quantizer = arch_family(arch)
    if quantizer not in quantizers.families():
        raise ValueError(f"Unknown quantizer {quantizer!r}; allowed: {', '.join(quantizers.families())}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2.")
    input_shape = _check_input_shape(arch, input_shape, opts["stem"])
    first_last = opts["first_last_bits"]
    if first_last is None:
        first_last = 32 if (w_bits == 32 and a_bits == 32) else quantizers.base.FIXED_POINT_BITS
    quantizers.edge_pair(first_last)  # a ValueError naming the bad value and 8, 16, 32

    arch_kwargs = {}
    if opts["num_bases"] is not None:
        if not (arch in VARIANTS and VARIANTS[arch][0] is GroupNet):
            raise ValueError(f"num_bases is only for the GroupNet archs "
                             f"({', '.join(n for n, v in VARIANTS.items() if v[0] is GroupNet)}), not {arch!r}.")
        arch_kwargs["num_bases"] = opts["num_bases"]
    for key, what in (("alpha", "alpha (the width multiplier)"), ("bottleneck", f"bottleneck={opts['bottleneck']!r}")):
        if opts[key] is not None:
            if SPECS[arch][0] is not MobileNetV2:
                raise ValueError(f"{what} is only for the MobileNet archs "
                                 f"({', '.join(n for n, v in SPECS.items() if v[0] is MobileNetV2)}), not {arch!r}.")
            arch_kwargs[key] = opts[key]
    if opts["residual_stream"] != "float":
        if arch not in RESNETS or plain:
            raise ValueError(f"residual_stream={opts['residual_stream']!r} is for residual ResNets (plain=False, "
                             f"arch in {', '.join(RESNETS)}); got arch={arch!r}, plain={plain}.")
        arch_kwargs["residual_stream"] = opts["residual_stream"]
    net = make_net(arch, plain=plain, num_classes=int(num_classes), quantizer=quantizer,
                   w_bits=w_bits, a_bits=a_bits, first_last_bits=first_last,
                   input_channels=input_shape[-1], stem=opts["stem"], **arch_kwargs)
    inputs = keras.Input(shape=input_shape, name="image")
    f_bn = BNPersonality("", opts["bn_momentum"], opts["bn_epsilon"])
    f = keras.Model(inputs, net.head(net.body(inputs, f_bn), f_bn), name=f"{arch}{'_plain' if plain else ''}")
    return f, net


def aux_taps(f: keras.Model, net, placement: str) -> dict:
    """AG's taps on an F that ``net`` built, as ``{F layer name: adaptor label}``: its blocks' outputs
    (``placement="block"``, found in F by :func:`agq_keras.structure.blocks`) or ``net.layer_taps()``
    (``"layer"``)."""
    if placement == "layer":
        return net.layer_taps()
    outputs = block_outputs(f)
    return {outputs[block.name]: block.name for block in net.blocks}


def block_outputs(f: keras.Model) -> dict:
    """``{block name: the name of the layer whose output is the block's}`` of F (:func:`agq_keras.structure.blocks`)."""
    return {block.name: block.output for block in structure.blocks(f)}


def _spec(arch: str, stem=None):
    """``(builder class, spec)`` of ``arch``, with its stem replaced when ``stem`` is given."""
    cls, spec = SPECS[arch]
    if stem is None:
        return cls, spec
    if stem not in STEMS:
        raise ValueError(f"stem={stem!r} is not supported; allowed: {', '.join(STEMS)}.")
    return cls, dataclasses.replace(spec, stem=stem)


def make_net(arch: str, *, stem=None, **kwargs):
    """The F builder object (layers + wiring) for ``arch``."""
    cls, spec = _spec(arch, stem)
    return cls(spec, **kwargs)


def _check_input_shape(arch, input_shape, stem):
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if (shape is None or len(shape) != 3
            or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise ValueError(f"input_shape={input_shape!r} must be (height, width, channels) with positive integers.")
    minimum = _spec(arch, stem)[1].downsampling
    if shape[0] < minimum or shape[1] < minimum:
        raise ValueError(f"input_shape={shape} is too small for {arch!r}: height and width must be >= "
                         f"{minimum} (the arch downsamples by {minimum}).")
    return tuple(int(d) for d in shape)
