"""Measure issue 11's export check: keras.applications nets through quantize -> attach -> one fit step -> export,
and the int8 model's argmax agreement with F on random 8-bit images under TFLite's reference kernels.

    python3 benchmarks/any_model_export.py --out=/tmp/any_model_export.json

Each setting: the net (weights=None, 10 classes, --size input), `agq_keras.quantize` at the given bits, AG attached,
one `fit` step on --batch random images, then `agq_keras.export.convert` (calibrated on those images) and the
agreement on --images other random images (`threshold_search`: per op kind, the layers whose int32 bias was
searched, their channels, and how many of those reproduce F's codes under TFLite's fixed point only (rank 1) or
could not be made to reproduce them (rank 2, closest); `--reestimate` also re-estimates F's BatchNorm statistics on the
training batch first: an untrained keras.applications net keeps its initial moving statistics after one step).

    python3 benchmarks/any_model_export.py --out=/tmp/per_tensor.json --per_tensor=20 --only=MobileNetV2:4:4:8:8

`--per_tensor=N` also compares, on N of the test images, every int8/int16 tensor the int8 model computes with F's
value at the same place (`agq_keras.export.tensor_agreement`: the output of the last Keras layer its op
implements, on the tensor's grid), in graph order, under the reference kernels: where F and the int8 model part,
and how the difference grows. `--only` takes any settings `app:w_bits:a_bits:first_last_bits:stream_bits`
(`None` for a default). `--snap_bias` is an experiment: it moves F's folded BatchNorm biases onto whole
accumulator units before the export (:func:`snap_biases`), which removes the int32 bias's rounding from the
comparison.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def snap_biases(f) -> int:
    """An experiment, not a fix: move F's BatchNorm betas so that each BatchNorm-folded conv reading a k-bit
    grid has a folded bias that is a whole number of its accumulator units (input step x folded weight step,
    per channel), which the int32 bias then holds exactly. Returns how many layers moved."""
    from agq_keras.export import lower

    graph = lower.lower(f)
    moved = 0
    for op in graph.ops:
        src = graph.tensors[op.inputs[0]] if op.inputs else None
        if op.kind not in ("conv", "dwconv") or not op.folded or src is None or src.grid is None:
            continue
        unit = src.grid[0] * op.steps
        bn = f.get_layer(op.folded[-1])
        shift = np.round(op.bias / unit) * unit - op.bias
        bn.beta.assign((np.asarray(bn.beta, np.float64) + shift).astype("float32"))
        moved += 1
    return moved


def measure(app: str, size: int, w_bits: int, a_bits: int, first_last_bits, stream_bits, images: int, batch: int,
            reestimate: bool, per_tensor_images: int = 0, snap: bool = False) -> dict:
    import keras
    import tensorflow as tf

    from agq_keras import export
    from agq_keras.auxiliary import attach
    from agq_keras.models.quantize import quantize
    from agq_keras.training.callbacks import reestimate_batch_norm

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    kwargs = dict(alpha=0.35) if app == "MobileNetV2" else {}
    base = getattr(keras.applications, app)(weights=None, input_shape=(size, size, 3), classes=10,
                                            classifier_activation=None, **kwargs)
    f = quantize(base, w_bits=w_bits, a_bits=a_bits, first_last_bits=first_last_bits, stream_bits=stream_bits)
    trainer = attach(f)
    trainer.compile()
    x = np.round(rng.random((batch, size, size, 3)) * 255).astype("float32") / 255
    start = time.time()
    trainer.fit(x, rng.integers(0, 10, batch), epochs=1, batch_size=batch, verbose=0)
    fit_s = time.time() - start
    if reestimate:
        reestimate_batch_norm(f, tf.data.Dataset.from_tensor_slices(x).batch(batch), 1)
    snapped = snap_biases(f) if snap else 0
    test = np.round(rng.random((images, size, size, 3)) * 255).astype("float32") / 255
    start = time.time()
    model, plan, notes = export.convert(f, x)
    convert_s = time.time() - start
    ref = np.asarray(f.predict(test, verbose=0))
    out = export.runner(model, "reference")(test)
    top2 = np.sort(ref, axis=1)[:, -2:]
    thresholds = {}  # per op kind: [layers searched, channels, TFLite-only (rank 1), closest (rank 2)]
    for record in plan.layers.values():
        if record.threshold_ranks is not None:
            ranks = np.asarray(record.threshold_ranks)
            row = thresholds.setdefault(record.kind, [0, 0, 0, 0])
            row[0] += 1
            row[1] += len(ranks)
            row[2] += int(np.sum(ranks == 1))
            row[3] += int(np.sum(ranks == 2))
    return {"app": app, "size": size, "w_bits": w_bits, "a_bits": a_bits, "first_last_bits": first_last_bits,
            "stream_bits": stream_bits, "reestimate": reestimate, "snapped_layers": snapped, "images": images,
            "agreement_reference": float(np.mean(out.argmax(1) == ref.argmax(1))),
            "threshold_search": thresholds,
            "logit_std": float(ref.std(axis=1).mean()), "median_top2_gap": float(np.median(top2[:, 1] - top2[:, 0])),
            "ops": export.model_ops(model), "size_bytes": len(model), "fit_s": round(fit_s, 1),
            "convert_s": round(convert_s, 1), "notes": list(notes),
            "per_tensor": export.tensor_agreement(model, f, plan, test[:per_tensor_images]) if per_tensor_images
            else []}


SETTINGS = [("MobileNetV2", 2, 2, None, None), ("MobileNetV2", 4, 4, 8, 8), ("MobileNetV2", 2, 2, 8, 8),
            ("ResNet50V2", 2, 2, None, None),
            ("ResNet50V2", 4, 4, 8, 8)]


def _setting(text: str, parser) -> tuple:
    """``app:w:a:first_last:stream`` (e.g. ``MobileNetV2:4:4:8:None``) as a SETTINGS tuple."""
    parts = text.split(":")
    try:
        app, w, a, fl, stream = parts
        return app, int(w), int(a), None if fl == "None" else int(fl), None if stream == "None" else int(stream)
    except ValueError:
        parser.error(f"--only: {text!r} is not app:w_bits:a_bits:first_last_bits:stream_bits (e.g. "
                     f"MobileNetV2:4:4:8:None); the defaults: {', '.join(':'.join(map(str, s)) for s in SETTINGS)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reestimate", action="store_true")
    parser.add_argument("--snap_bias", action="store_true", help="an experiment: move F's BatchNorm betas so the "
                        "folded biases are whole accumulator units (snap_biases) before the export")
    parser.add_argument("--per_tensor", type=int, default=0, help="images of the per-tensor comparison (0: none)")
    parser.add_argument("--only", default="", help="settings app:w:a:first_last:stream, comma-separated "
                        "('None' for a default); default: all of SETTINGS")
    args = parser.parse_args()
    settings = SETTINGS
    if args.only:
        settings = [_setting(part, parser) for part in args.only.split(",")]
    results = []
    for app, w, a, fl, stream in settings:
        row = measure(app, args.size, w, a, fl, stream, args.images, args.batch, args.reestimate, args.per_tensor,
                      args.snap_bias)
        print(json.dumps({k: v for k, v in row.items() if k not in ("notes", "per_tensor")}), flush=True)
        for t in row["per_tensor"]:
            print(f"  {t['op']:7s} {t['layers'][:64]:64s} {t['grid']:10s} {t['dtype']:5s} "
                  f"mismatch {100 * t['mismatch']:6.2f} %  max {t['max_steps']:9.2f} steps "
                  f"({100 * t['max_range']:.1f} % of its range)", flush=True)
        results.append(row)
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
