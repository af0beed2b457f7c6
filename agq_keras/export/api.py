"""The export entry point: F -> lowered graph -> calibrated ranges -> frozen plan -> flatbuffer bytes."""

from __future__ import annotations

import os

import keras
import numpy as np

from agq_keras.export import calibrate as calibrate_lib
from agq_keras.export import flatbuffer, lower, plan as plan_lib


def resolve_model(model):
    """F from a keras.Model, an AGTrainer (its ``.f``) or a ``.keras`` path; returns (F, notes)."""
    from agq_keras import saving

    notes = []
    if isinstance(model, (str, os.PathLike)):
        model = saving.load_model(model, what="model file")
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected a keras.Model (F or an AGTrainer) or a .keras path, got {type(model).__name__}.")
    f = getattr(model, "f", None)
    if isinstance(f, keras.Model) and f is not model:
        notes.append(f"{model.name!r} is a trainer; exported its deployable network F ({f.name!r}), not H.")
        model = f
    return model, notes


def check_images(model, images, what: str = "representative dataset"):
    """float32 images matching the model input shape, else a ValueError naming both shapes."""
    images = np.asarray(images)
    expected = tuple(model.input_shape[1:])
    if images.ndim != len(expected) + 1 or tuple(images.shape[1:]) != expected or len(images) == 0:
        raise ValueError(f"The {what} has shape {images.shape}; the model expects (N,) + {expected} with N >= 1.")
    if not np.issubdtype(images.dtype, np.number) or not np.all(np.isfinite(images)):
        raise ValueError(f"The {what} must hold finite numbers (got dtype {images.dtype}).")
    return images.astype(np.float32)


def convert(model, representative_data, *, mode: str = "int8", max_replicas: int = 259,
            output_range: str = "top", residual_bits: int = 16, head_bits: int = 8):
    """Convert F to TFLite bytes. Returns ``(bytes, plan, notes)``.

    Args:
      model: F, an AGTrainer (F is exported) or a ``.keras`` path.
      representative_data: images (N, H, W, C) as F receives them; they set the
        int8 ranges of the tensors that are not on a quantizer grid (the input,
        residual sums, the head) and are not otherwise stored.
      mode: ``"int8"`` (full integer) or ``"float32"``.
      max_replicas: the most times a layer's input may be repeated to hold
        weight codes wider than int8 (259 makes 16-bit first/last layers exact;
        1 gives plain int8 weights everywhere).
      output_range: ``"top"`` or ``"full"`` (see :func:`calibrate.calibrate`).
      residual_bits: 16 (default) keeps the residual stream of residual nets in int16 (16x8 kernels,
        see docs/export.md); 8 makes every activation int8 (Edge TPU), less exact.
      head_bits: 8 (default) or 16: the pooled features in int16 (finer calibrated head; no Edge TPU).

    The returned :class:`~agq_keras.export.plan.Plan` holds every decision (``plan.layers``,
    ``plan.tensors``) and the lowered graph (``plan.graph``).
    """
    plan_lib.check_options(mode, residual_bits, head_bits, max_replicas)
    if output_range not in calibrate_lib.OUTPUT_RANGES:
        raise ValueError(f"output_range={output_range!r} is not supported; allowed: "
                         f"{', '.join(calibrate_lib.OUTPUT_RANGES)}.")
    f, notes = resolve_model(model)
    images = check_images(f, representative_data)
    graph = lower.lower(f, max_replicas=max_replicas)
    ranges = calibrate_lib.calibrate(graph, images, output_range=output_range, max_replicas=max_replicas)
    frozen = plan_lib.make_plan(graph, ranges, mode=mode, max_replicas=max_replicas, residual_bits=residual_bits,
                                head_bits=head_bits, description=f"agq_keras {mode} export of {f.name}")
    return flatbuffer.to_bytes(frozen), frozen, notes + list(frozen.notes)


def save_atomic(data: bytes, path: str):
    """Write ``data`` to ``path`` through a temporary file in the same folder (no partial file; the
    file's mode follows the umask): :func:`agq_keras.saving.write_bytes`."""
    from agq_keras import saving

    saving.write_bytes(path, data)
