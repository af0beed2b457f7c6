"""The export entry point: F -> lowered graph -> calibrated ranges -> frozen plan -> flatbuffer bytes."""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from agq_keras.export import calibrate as calibrate_lib
from agq_keras.export import flatbuffer, lower, metadata, plan as plan_lib


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


def check_static_ranges(f) -> None:
    """A ValueError naming F's static ranges (:class:`~agq_keras.quantizers.RangeActivation`: the 8-bit edges,
    the int8 logits, ``stream_bits``) that no training-mode pass has set: each still holds ``top = 0``, which
    would become a requantization XNNPACK refuses to load (issue 30)."""
    from agq_keras.quantizers import RangeActivation

    unset = []
    for layer in f.layers:
        for q in (layer, getattr(layer, "input_quantizer", None)):
            if isinstance(q, RangeActivation) and q.built and float(keras.ops.convert_to_numpy(q.top)) <= 0.0:
                unset.append(layer.name if q is layer else f"{layer.name}.input_quantizer")
    if unset:
        shown = ", ".join(unset[:4]) + (f" and {len(unset) - 4} more" if len(unset) > 4 else "")
        raise ValueError(f"F {f.name!r} has static ranges that were never set ({shown}: RangeActivation with top = 0): "
                         "F has not run in training mode since it was built. Train it, or run it once on training "
                         "images with f(images, training=True), then export.")


AUTO_REPLICAS = 259  # what max_replicas=None tries first: makes 16-bit first/last layers exact


def convert(model, representative_data, *, mode: str = "int8", max_replicas=None,
            output_range: str = "top", residual_bits=None, head_bits: int = 8, output_bits=None,
            weights: str = "int8"):
    """Convert F to TFLite bytes. Returns ``(bytes, plan, notes)``.

    Args:
      model: F, an AGTrainer (F is exported) or a ``.keras`` path.
      representative_data: images (N, H, W, C) as F receives them; they set the
        int8 ranges of the tensors that are not on a quantizer grid (the input,
        residual sums, the head) and are not otherwise stored.
      mode: ``"int8"`` (full integer) or ``"float32"``.
      max_replicas: the most times a layer's input may be repeated to hold
        weight codes wider than int8 (259 makes 16-bit first/last layers exact;
        1 gives plain int8 weights everywhere). None (default): 259, unless the
        int8 file would then be larger than the float32 TFLite of F; then 1 (the
        closest int8 form of the wide layers), and a note says so. An explicit
        value whose file would be larger than float32 is refused.
      output_range: ``"top"`` or ``"full"`` (see :func:`calibrate.calibrate`).
      residual_bits: None (default): F's own stream, i.e. int8 for an F built with
        ``residual_stream="int8"`` (exact, every tensor int8: Edge TPU) and int16 otherwise (16x8
        kernels, exact for ``residual_stream="int16"``; see docs/export.md). 8 on a float or int16
        stream makes every activation int8 at calibrated scales (less exact).
      head_bits: 8 (default) or 16: the pooled features in int16 (finer calibrated head; no Edge TPU).
      output_bits: 8 or 16: int16 outputs (near-tied classes keep their order; no Edge TPU). None
        (default): 8 for a model with one output (a classifier's logits), 16 for several (a detector's
        per-level class logits and box deltas, which its decoding reads as values, not through an argmax:
        on the two-stage 4-bit + AG detector int16 outputs kept its AP within 0.16 of F's under every
        runtime, int8 ones moved it by up to 0.38; docs/export.md, "Detector").
      weights: ``"int8"`` (default) or ``"packed"``: the convs of <= 4-bit grids store packed INT4
        weights (half the bytes; TFLite's builtin kernels and TensorFlow Lite Micro run them, XNNPACK
        runs those convs on the builtin kernels; no Edge TPU).

    A model that offers ``tflite_metadata()`` (a detector F: its anchors, class names and output names) gets
    those entries in the file's metadata (:mod:`agq_keras.export.metadata`), where ``export.Runner`` and
    :func:`agq_keras.detection.predict` read them.

    The returned :class:`~agq_keras.export.plan.Plan` holds every decision (``plan.layers``,
    ``plan.tensors``) and the lowered graph (``plan.graph``).
    """
    auto = max_replicas is None
    plan_lib.check_options(mode, residual_bits, head_bits, AUTO_REPLICAS if auto else max_replicas, output_bits,
                           weights)
    if output_range not in calibrate_lib.OUTPUT_RANGES:
        raise ValueError(f"output_range={output_range!r} is not supported; allowed: "
                         f"{', '.join(calibrate_lib.OUTPUT_RANGES)}.")
    f, notes = resolve_model(model)
    check_static_ranges(f)
    images = check_images(f, representative_data)
    given = np.asarray(representative_data)
    if np.issubdtype(given.dtype, np.integer):  # raw pixels: right only for an F trained on them unscaled
        notes.append(f"the calibration images are {given.dtype} ({given.min()}..{given.max()}): the input's int8 "
                     "range is set for those values as they are; an F trained on scaled images (e.g. pixels / 255) "
                     "needs them scaled the same way.")

    def export(replicas):
        """The pipeline, once: lower, the weight forms, calibrate with them, plan, serialize; returns what
        the float32 twin reuses too (its weights are F's float ones: no second calibration)."""
        graph = lower.lower(f, max_replicas=replicas)
        forms = plan_lib.weight_forms(graph, replicas, weights if mode == "int8" else "int8")
        ranges = calibrate_lib.calibrate(graph, images, output_range=output_range, forms=forms)
        frozen = planned(graph, ranges, forms, replicas, mode)
        return flatbuffer.to_bytes(frozen), frozen, ranges, forms

    def planned(graph, ranges, forms, replicas, export_mode):
        return plan_lib.make_plan(graph, ranges, mode=export_mode, max_replicas=replicas, residual_bits=residual_bits,
                                  head_bits=head_bits, output_bits=output_bits, weights=weights,
                                  description=f"agq_keras {export_mode} export of {f.name}", forms=forms)

    replicas = AUTO_REPLICAS if auto else max_replicas
    data, frozen, ranges, forms = export(replicas)
    # the float32 file holds at least 4 bytes per weight: only a larger int8 file needs the float32 twin planned
    weight_bytes = sum(4 * (op.codes.size + len(op.bias)) for op in frozen.graph.ops if op.codes is not None)
    if mode == "int8" and replicas > 1 and len(data) > weight_bytes:
        # the float32 twin of the same graph (its size does not depend on the input repeats or the ranges)
        float_size = len(flatbuffer.to_bytes(planned(frozen.graph, ranges, forms, replicas, "float32")))
        if len(data) > float_size:
            wide = sorted(r.layer.split("+")[0] for r in frozen.layers.values() if r.replicas > 1)
            if not auto:
                ratio = len(data) / float_size
                raise ValueError(f"The int8 export with max_replicas={max_replicas} would be {ratio:.2f}x "
                                 f"its float32 TFLite ({len(data)} vs {float_size} bytes): layers {wide} repeat their "
                                 "input for wide weight codes. Export with max_replicas=1 (the closest int8 form of "
                                 "those layers), or build F with first_last_bits=8 (exact, plain int8).")
            exact_size = len(data)
            # the closest int8 weights need their own lowering and calibration (other weights, other ranges)
            data, frozen = export(1)[:2]
            notes.append(f"max_replicas=1 chosen: the exact form of {wide} (input repeats) would make the file "
                         f"{exact_size / float_size:.2f}x its float32 TFLite; their weights are the closest "
                         "per-channel int8 instead (not exact). Build F with first_last_bits=8 for a small exact "
                         "export.")
    packed = sorted(r.layer.split("+")[0] for r in frozen.layers.values() if "packed INT4" in (r.note or ""))
    if packed:
        notes.append(f"packed INT4 weights in {len(packed)} conv(s) ({', '.join(packed[:4])}"
                     f"{', ...' if len(packed) > 4 else ''}): XNNPACK (LiteRT's default interpreter) delegates INT4 "
                     "weights only for FULLY_CONNECTED, so these convs run on TFLite's builtin kernels under it "
                     "(slower than int8 under XNNPACK); TFLite Micro and the builtin kernels run them as they are. "
                     "The Edge TPU takes int8 weights only.")
    offered = getattr(f, "tflite_metadata", None)  # a detector's anchors, class names and output names
    data = metadata.add(data, offered() if callable(offered) else {})
    return data, frozen, notes + list(frozen.notes) + input_notes(frozen, images)

def input_notes(plan, images) -> list:
    """A note when the representative images are not exactly on the int8 input grid (e.g. pixels with a
    per-channel mean subtracted: k/255 - mean_c lie on one int8 grid only if every 255·mean_c is an
    integer and the whole span fits 256 codes), with the largest rounding, in input codes."""
    quant = plan.tensor(plan.graph.input).quant
    if quant is None:
        return []
    codes = images.astype(np.float64) / quant.scale[0] + quant.zero_point[0]
    off = float(np.abs(codes - np.round(codes)).max(initial=0.0))
    if off <= 1e-3 and codes.min(initial=0) >= -128.5 and codes.max(initial=0) <= 127.5:
        return []
    return [f"model input: the images are not on one int8 grid (scale {quant.scale[0]:.6g}, zero point "
            f"{quant.zero_point[0]}): quantizing them rounds by up to {off:.3f} codes, so the first layer is "
            "closest, not exact (per-channel mean subtraction does this unless every 255·mean is an integer "
            "and the values span at most 256 codes)"]


def export_source(workdir=None, *, model=None, output=None, dataset=None, data_dir=None, image_size=None,
                  num_classes=None) -> dict:
    """Where an export's model, output file and data come from. With ``workdir`` (a training run's folder):
    its ``f.keras``, ``f.tflite`` next to it, and the dataset, data folder, image size and classes of its
    config (``metrics.json``), so the images get the run's own preprocessing; explicit values override.
    Returns ``{"model", "output", "dataset", "data": {data_dir, image_size, num_classes}, "config"}`` (``config``:
    the run's config, ``{}`` without ``workdir``; ``config["task"] == "detection"`` for a detector's run)."""
    config = {}
    if workdir:
        metrics = os.path.join(workdir, "metrics.json")
        if not os.path.isdir(workdir):
            raise FileNotFoundError(f"workdir {workdir!r} does not exist.")
        if not os.path.isfile(metrics):
            raise FileNotFoundError(f"{metrics!r} does not exist: --workdir must be a finished training run "
                                    "(scripts/train.py writes metrics.json and f.keras there).")
        try:
            with open(metrics) as fh:
                config = dict(json.load(fh)["config"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{metrics!r} is not a training run's metrics.json (no 'config': {err}).") from None
        model = model or os.path.join(workdir, "f.keras")
        output = output or os.path.join(workdir, "f.tflite")
    if not model or not output:
        raise ValueError("Give --workdir (a training run's folder) or both --model and --output.")
    return {"model": model, "output": output, "dataset": dataset or config.get("dataset") or "fashion_mnist",
            "data": {"data_dir": config.get("data_dir", "") if data_dir is None else data_dir,
                     "image_size": image_size or config.get("image_size") or 224,
                     "num_classes": num_classes or config.get("num_classes") or 0}, "config": config}


def save_atomic(data: bytes, path: str):
    """Write ``data`` to ``path`` through a temporary file in the same folder (no partial file; the
    file's mode follows the umask): :func:`agq_keras.saving.write_bytes`."""
    from agq_keras import saving

    saving.write_bytes(path, data)
