"""Quantizer base class, the name registry and `get()`.

A quantizer is a small Keras layer wrapping a pure `tf.custom_gradient`
function. Being a layer lets a quantizer own variables (learned step sizes,
LQ-Net bases) that are saved with the layer that uses it. Stateless quantizers
simply have no weights.

Two registries live here:

* names -> quantizer classes, used by :func:`get` (``"dorefa_weight"``, ...);
* families -> ``(weight class, activation class)``, used by model builders
  (``quantizer="dorefa"``) through :func:`agq_keras.quantizers.pairs.make_pair`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import threading
from typing import Optional

import keras
import numpy as np

_CLASSES: dict[str, type] = {}
_FAMILIES: dict[str, tuple[type, type]] = {}
_STATE = threading.local()

FULL_PRECISION_BITS = 32
FIXED_POINT_BITS = 16


def register(name: str):
    """Class decorator: make a quantizer serializable and known to `get`."""

    def decorator(cls):
        cls = keras.saving.register_keras_serializable(package="agq_keras")(cls)
        _CLASSES[name] = cls
        _CLASSES[cls.__name__] = cls
        return cls

    return decorator


def register_family(name: str, weight_cls: type, activation_cls: type) -> None:
    """Register a quantizer family selectable as ``build(quantizer=name)``."""
    _FAMILIES[name] = (weight_cls, activation_cls)


def families() -> tuple[str, ...]:
    return tuple(sorted(_FAMILIES))


def family_classes(family: str) -> tuple[type, type]:
    """``(weight class, activation class)`` of a registered family."""
    if family not in _FAMILIES:
        raise ValueError(f"Unknown quantizer family {family!r}; allowed: {', '.join(families())}.")
    return _FAMILIES[family]


def names() -> tuple[str, ...]:
    return tuple(sorted(_CLASSES))


@contextlib.contextmanager
def frozen_state():
    """Within this context stateful quantizers must not update their state.

    The AG trainer forwards F first and then H through the *same* layers; a
    quantizer that learns statistics from the data it sees (LQ-Net's QEM
    basis update) must update once per step, from F's pass. The flag is read
    while tracing, so it costs nothing at run time.
    """
    previous = getattr(_STATE, "frozen", False)
    _STATE.frozen = True
    try:
        yield
    finally:
        _STATE.frozen = previous


def state_updates_enabled() -> bool:
    """False inside :func:`frozen_state` (e.g. during H's forward pass)."""
    return not getattr(_STATE, "frozen", False)


def check_bits(owner: str, bits, allowed) -> int:
    """Validate a bit width against the allowed widths; return it as int."""
    allowed = tuple(allowed)
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise ValueError(f"{owner}: bits must be an integer, got {bits!r}; allowed: {describe_bits(allowed)}.")
    if int(bits) not in allowed:
        raise ValueError(f"{owner}: bits={bits} is not supported; allowed: {describe_bits(allowed)}.")
    return int(bits)


def check_flag(owner: str, name: str, value) -> bool:
    """Validate a True/False option of a quantizer (``per_channel``, ``signed``); return it."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name}={value!r} must be True or False.")
    return value


def describe_bits(allowed) -> str:
    """``(1, 2, 3, 8)`` -> ``"1..3, 8"``."""
    runs: list[list[int]] = []
    for b in sorted(allowed):
        if runs and b == runs[-1][-1] + 1:
            runs[-1].append(b)
        else:
            runs.append([b])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}..{r[-1]}" for r in runs)


class Quantizer(keras.layers.Layer):
    """Base class: ``q = quantizer(x)``; subclasses implement :meth:`call`.

    Attributes:
      bits: the bit width of the quantizer's output grid.
      precision: ``bits`` as used by summaries/export (32 means float).
    """

    allowed_bits: tuple[int, ...] = ()

    def __init__(self, bits: int, **kwargs):
        super().__init__(**kwargs)
        self.bits = check_bits(type(self).__name__, bits, self.allowed_bits)

    def get_config(self):
        config = super().get_config()
        config["bits"] = self.bits
        return config

    def compute_output_shape(self, input_shape):
        return input_shape

    @classmethod
    def for_input_range(cls, bits: int, top: float) -> "Quantizer":
        """An activation quantizer for an input known to lie in ``[0, top]`` (a ``ReLU(max_value=top)``
        output). This default ignores ``top`` (a fixed-range quantizer such as DoReFa's [0, 1]); the
        learned-range families start their range there."""
        return cls(bits=bits)

    # -- the integer export protocol (agq_keras.export) ------------------
    def export_grid(self, q_kernel=None, max_code: int = 127) -> Optional["Grid"]:
        """The :class:`Grid` of this quantizer's outputs, or None when they are on no integer grid
        (the exporter then re-quantizes weights at max|w|/127 per channel, or calibrates an int8
        activation tensor, and says so). The one link between quantizers and the exporter.

        Args:
          q_kernel: for a weight quantizer, the quantized kernel ``self(kernel)`` as a NumPy array
            (output channels on the last axis): the grid then carries its codes and steps. None asks
            for what holds whatever the kernel (a weight grid's constant ``step``, an activation grid).
          max_code: the largest |code| the exporter can take (127 for one int8 weight; r * 127 when
            it repeats the layer input r times).
        """
        return None


@dataclasses.dataclass(frozen=True)
class Grid:
    """What the exporter needs to know about a quantizer's outputs: integers times steps.

    ``kind``:

    * ``"weights"``: ``codes * steps`` per output channel (``codes`` an integer array of the
      kernel's shape, |code| <= max_code; ``steps`` positive, one per output channel), given a
      kernel; ``step`` the constant step when it does not depend on the kernel (else None).
    * ``"activation"``: outputs ``step * (round(clip(x / step, -offset, levels - offset)))``, i.e. in
      ``{-offset * step, ..., (levels - offset) * step}`` (``levels <= 255``). ``offset`` is 0 for the
      unsigned grids (``{0, step, ..., levels * step}``, after a ReLU) and ``2^(k-1)`` for a signed k-bit
      grid (an unrectified input, as a linear bottleneck's).
    * ``"sign"``: outputs ``sign(x)`` in {-1, +1} with sign(0) = +1 (stored as int8 codes {125, 127}
      around zero point 126, docs/export.md).
    * ``"stream"``: outputs ``step * n`` with integer ``n`` in ``[-(limit + 1), limit]``, saturating, stored at scale ``step``, zero point 0 (F's
      integer residual stream; its int8 logits).
    """
    kind: str
    step: Optional[float] = None
    levels: Optional[int] = None
    offset: int = 0
    limit: Optional[int] = None
    codes: Optional[np.ndarray] = None
    steps: Optional[np.ndarray] = None

    KINDS = ("weights", "activation", "sign", "stream")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"Grid kind={self.kind!r} is not supported; allowed: {', '.join(self.KINDS)}.")


def weight_grid(q_kernel, step=None, max_code: int = 127) -> Optional[Grid]:
    """The ``"weights"`` :class:`Grid` of a kernel on a uniform grid of ``step`` (a number, or one per output
    channel; see :func:`uniform_codes`), or of the constant scalar ``step`` alone when ``q_kernel`` is None."""
    constant = None if step is None or np.ndim(step) else float(step)
    if q_kernel is None:
        return None if constant is None else Grid("weights", step=constant)
    found = uniform_codes(q_kernel, step, max_code)
    return None if found is None else Grid("weights", step=constant, codes=found[0], steps=found[1])


def uniform_codes(q_kernel, step=None, max_code: int = 127):
    """``(codes, steps)`` with ``q_kernel == codes * step`` and |codes| <= max_code, or None.

    ``step`` is a number, or one per output channel (the last axis); ``step=None`` takes the smallest
    nonzero |value| of the whole tensor (binary ±alpha kernels). Shared helper of :meth:`Quantizer.export_grid`.
    """
    q = np.asarray(q_kernel, dtype=np.float64)
    if step is None:
        nonzero = np.abs(q[q != 0])
        step = float(nonzero.min()) if nonzero.size else 1.0
    step = np.asarray(step, np.float64)
    codes = np.round(q / step)
    if np.abs(codes).max(initial=0) > max_code or not np.allclose(codes * step, q, rtol=1e-5, atol=1e-7):
        return None
    return codes.astype(np.int32), np.broadcast_to(step, (q.shape[-1],)).copy()


def get(identifier):
    """Return a quantizer from a name, a config dict, an instance or None.

    Mirrors `keras.activations.get`: ``None`` -> ``None`` (no quantization);
    a :class:`Quantizer` -> itself; a name -> that class with its default bits
    (``"dorefa_weight"``), or ``"name:bits"`` (``"dorefa_weight:3"``); a dict
    ``{"class_name": ..., "config": {...}}`` -> deserialized.
    """
    if identifier is None or isinstance(identifier, Quantizer):
        return identifier
    if isinstance(identifier, dict):
        class_name = identifier.get("class_name")
        if class_name not in _CLASSES and not str(class_name).startswith("agq_keras>"):
            raise ValueError(
                f"Unknown quantizer class {class_name!r} in config; known: {', '.join(names())}."
            )
        obj = keras.saving.deserialize_keras_object(identifier, custom_objects=dict(_CLASSES))
        if not isinstance(obj, Quantizer):
            raise ValueError(f"Config {identifier!r} does not describe a quantizer.")
        return obj
    if isinstance(identifier, str):
        name, _, bits = identifier.partition(":")
        if name not in _CLASSES:
            raise ValueError(f"Unknown quantizer {identifier!r}; known: {', '.join(names())}.")
        cls = _CLASSES[name]
        if bits:
            try:
                bits_value = int(bits)
            except ValueError:
                raise ValueError(f"Quantizer {identifier!r}: bits after ':' must be an integer.") from None
            return cls(bits=bits_value)
        return cls()
    raise ValueError(
        f"Could not interpret quantizer identifier {identifier!r}: expected None, a name "
        f"({', '.join(names())}), a config dict or a Quantizer instance."
    )
