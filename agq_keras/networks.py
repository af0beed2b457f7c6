"""`agq_keras.build`: a built-in F alone, or ready to train: H attached (:func:`agq_keras.auxiliary.attach`)
and/or SSP, in an :class:`~agq_keras.training.AGTrainer`.

It sits above the F builders (:mod:`agq_keras.models`) and the trainer's package, so neither imports the
other: ``build(..., aux=True)`` is ``attach(F)`` with the builder's taps."""

from __future__ import annotations

from agq_keras.auxiliary import PLACEMENTS, attach
from agq_keras.models import builder
from agq_keras.training.ssp import SSP
from agq_keras.training.trainer import AGTrainer, check_lambda

# H's own extra arguments of build(), next to F's (agq_keras.models.builder._EXTRA_KWARGS)
H_KWARGS = {"aux_relu": False}  # ReLU after each aggregation sum in H


def build(arch: str, *, plain: bool = False, aux: bool = False, quantizer: str | None = None,
          w_bits: int = 2, a_bits: int = 2, num_classes: int = 1000,
          input_shape=(224, 224, 3), aux_placement: str = "block", aux_lambda: float = 1.0, ssp=None,
          **kwargs):
    """Build F (``aux=False``, a functional `keras.Model`) or an :class:`AGTrainer`.

    Args:
      arch: one of :data:`agq_keras.models.builder.ARCHITECTURES` (resnet18/34/50 ImageNet stems,
        resnet20/32/56 CIFAR stems; birealnet18/groupnet18 and their CPU twins
        birealnet20/groupnet20, see :data:`~agq_keras.models.builder.VARIANTS`; mobilenetv2, a pre-activation
        MobileNetV2, :mod:`agq_keras.models.mobilenetv2`).
      plain: remove every skip connection (F then has no ``Add`` layer).
      aux: also build H (:func:`agq_keras.auxiliary.attach` on F, tapping the builder's blocks or, with
        ``aux_placement="layer"``, its convs) and return a trainer holding ``.f`` and ``.h``.
      quantizer: quantizer family (``agq_keras.quantizers.families()``); None: the arch's
        (:data:`~agq_keras.models.builder.ARCH_DEFAULT_FAMILY`): ``"lsq"`` (per-channel weight steps,
        data-initialised ranges, docs/quantize.md) for mobilenetv2, the paper's ``"dorefa"`` for the others.
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
    builder.check_extra_kwargs(kwargs, also=H_KWARGS)
    if aux_placement not in PLACEMENTS:
        raise ValueError(f"aux_placement={aux_placement!r} is not supported; allowed: {', '.join(PLACEMENTS)}.")
    aux_lambda = check_lambda(aux_lambda)
    aux_relu = kwargs.pop("aux_relu", H_KWARGS["aux_relu"])
    f, net = builder.build_net(arch, plain=plain, quantizer=quantizer, w_bits=w_bits, a_bits=a_bits,
                               num_classes=num_classes, input_shape=input_shape, **kwargs)
    if ssp is not None:
        if isinstance(ssp, dict):
            ssp = SSP(**ssp)
        if not isinstance(ssp, SSP):
            raise ValueError(f"ssp={ssp!r} must be an agq_keras.training.ssp.SSP, a dict of its arguments or None.")
    if aux:
        bn = {k: kwargs.get(k, builder.EXTRA_KWARGS[k]) for k in ("bn_momentum", "bn_epsilon")}
        body_output = builder.block_outputs(f)[net.blocks[-1].name]  # H's head reads g_P where F's reads this
        return attach(f, builder.aux_taps(f, net, aux_placement), exits=[body_output], aux_lambda=aux_lambda,
                      placement=aux_placement, aux_relu=bool(aux_relu), ssp=ssp, **bn)
    return f if ssp is None else AGTrainer(f, None, ssp=ssp, name=f"{f.name}_ssp")
