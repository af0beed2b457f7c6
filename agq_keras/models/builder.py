"""`build()`: F alone, or F with H inside an AG trainer."""

from __future__ import annotations

import dataclasses
import functools
import numbers

import keras

from agq_keras import quantizers
from agq_keras.auxiliary import PLACEMENTS, build_h
from agq_keras.models.bireal import BiRealNet
from agq_keras.models.groupnet import GroupNet
from agq_keras.models.mobilenetv2 import MOBILENETV2, MobileNetV2
from agq_keras.models.resnet import RESNETS, BNPersonality, ResNet
from agq_keras.training.trainer import AGTrainer, check_lambda

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

_EXTRA_KWARGS = {
    "bn_momentum": 0.9,  # Keras's 0.99 evaluates badly after short runs
    "bn_epsilon": 1e-5,
    "first_last_bits": None,  # None: 16, or 32 for a full-precision model; 8: plain int8 in the export
    "aux_relu": False,  # ReLU after each aggregation sum in H
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


def build(arch: str, *, plain: bool = False, aux: bool = False, quantizer: str | None = None,
          w_bits: int = 2, a_bits: int = 2, num_classes: int = 1000,
          input_shape=(224, 224, 3), aux_placement: str = "block", aux_lambda: float = 1.0, ssp=None,
          **kwargs):
    """Build F (``aux=False``, a functional `keras.Model`) or an :class:`AGTrainer`.

    Args:
      arch: one of :data:`ARCHITECTURES` (resnet18/34/50 ImageNet stems,
        resnet20/32/56 CIFAR stems; birealnet18/groupnet18 and their CPU twins
        birealnet20/groupnet20, see :data:`VARIANTS`; mobilenetv2, a pre-activation MobileNetV2,
        :mod:`agq_keras.models.mobilenetv2`).
      plain: remove every skip connection (F then has no ``Add`` layer).
      aux: also build H and return a trainer holding ``.f`` and ``.h``.
      quantizer: quantizer family (``agq_keras.quantizers.families()``); None: the arch's
        (:data:`ARCH_DEFAULT_FAMILY`): ``"lsq"`` (per-channel weight steps, data-initialised ranges,
        docs/quantize.md) for mobilenetv2, the paper's ``"dorefa"`` for the others.
      w_bits, a_bits: bit widths of the block convs (32 = full precision).
      num_classes: classifier width; the model outputs logits.
      input_shape: (height, width, channels).
      aux_placement: ``"block"`` (adaptor after every block) or ``"layer"``
        (after every conv).
      aux_lambda: lambda of eq. 2, >= 0.
      ssp: stochastic structured precision: an
        :class:`agq_keras.training.ssp.SSP` or a dict of its arguments
        (``{"fragments": "block", "wa": False, "delta0": 0.5, "decay_epoch": 20}``).
        Returns a trainer (with H when ``aux``); add
        ``agq_keras.training.ssp.DeltaSchedule(trainer.ssp)`` to ``fit``'s callbacks.
      **kwargs: ``bn_momentum`` (0.9), ``bn_epsilon`` (1e-5),
        ``first_last_bits`` (16, the paper's; 32 when w_bits = a_bits = 32; 8: per-channel int8
        weights and an 8-bit static-range classifier input, exported as plain int8),
        ``aux_relu`` (False), ``stem`` ("imagenet"/"cifar"),
        ``num_bases`` (GroupNet archs: M, default 5), ``alpha`` (mobilenetv2: the width multiplier,
        a positive number, default 1.0), ``bottleneck`` (mobilenetv2: ``"linear"``, the expand convs read
        BN with no ReLU on a signed grid, the default for families with one (LSQ); ``"relu"``, the default
        for the others; :mod:`agq_keras.models.mobilenetv2`), ``residual_stream`` (``"float"``, the
        paper's F; ``"int16"`` / ``"int8"``: F rounds its residual stream to the int16 / int8 grid
        the integer export uses, which makes residual nets exactly exportable, DoReFa 2..4 bits; int8
        needs no int16 tensor (Edge TPU); docs/export.md).
    """
    unknown = sorted(set(kwargs) - set(_EXTRA_KWARGS))
    if unknown:
        raise ValueError(f"build(): unknown argument(s) {unknown}; allowed extra arguments: "
                         f"{sorted(_EXTRA_KWARGS)}.")
    opts = {**_EXTRA_KWARGS, **kwargs}
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown arch {arch!r}; allowed: {', '.join(sorted(ARCHITECTURES))}.")
    if quantizer is None:
        quantizer = arch_family(arch)
    if quantizer not in quantizers.families():
        raise ValueError(f"Unknown quantizer {quantizer!r}; allowed: {', '.join(quantizers.families())}.")
    if aux_placement not in PLACEMENTS:
        raise ValueError(f"aux_placement={aux_placement!r} is not supported; allowed: {', '.join(PLACEMENTS)}.")
    aux_lambda = check_lambda(aux_lambda)
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
    f.agq_net = net  # the layer structure (blocks/fragments) for SSP and summaries
    if ssp is not None:
        from agq_keras.training.ssp import SSP

        if isinstance(ssp, dict):
            ssp = SSP(**ssp)
        if not isinstance(ssp, SSP):
            raise ValueError(f"ssp={ssp!r} must be an agq_keras.training.ssp.SSP, a dict of its arguments or None.")
    if not aux:
        if ssp is None:
            return f
        trainer = AGTrainer(f, None, ssp=ssp, name=f"{f.name}_ssp")
        trainer.agq_net = net
        return trainer
    h = build_h(net, inputs, placement=aux_placement, relu_after_sum=bool(opts["aux_relu"]),
                bn_momentum=opts["bn_momentum"], bn_epsilon=opts["bn_epsilon"])
    trainer = AGTrainer(f, h, aux_lambda=aux_lambda, ssp=ssp, name=f"{f.name}_ag")
    trainer.agq_net = net
    return trainer


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
