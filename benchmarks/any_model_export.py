"""Measure issue 11's export check: keras.applications nets through quantize -> attach -> one fit step -> export,
and the int8 model's argmax agreement with F on random 8-bit images under TFLite's reference kernels.

    python3 benchmarks/any_model_export.py --out=/tmp/any_model_export.json

Each setting: the net (weights=None, 10 classes, --size input), `agq_keras.quantize` at the given bits, AG attached,
one `fit` step on --batch random images, then `agq_keras.export.convert` (calibrated on those images) and the
agreement on --images other random images (`--reestimate` also re-estimates F's BatchNorm statistics on the
training batch first: an untrained keras.applications net keeps its initial moving statistics after one step).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def measure(app: str, size: int, w_bits: int, a_bits: int, first_last_bits, stream_bits, images: int, batch: int,
            reestimate: bool) -> dict:
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
    test = np.round(rng.random((images, size, size, 3)) * 255).astype("float32") / 255
    start = time.time()
    model, plan, notes = export.convert(f, x)
    convert_s = time.time() - start
    ref = np.asarray(f.predict(test, verbose=0))
    out = export.runner(model, "reference")(test)
    top2 = np.sort(ref, axis=1)[:, -2:]
    return {"app": app, "size": size, "w_bits": w_bits, "a_bits": a_bits, "first_last_bits": first_last_bits,
            "stream_bits": stream_bits, "reestimate": reestimate, "images": images,
            "agreement_reference": float(np.mean(out.argmax(1) == ref.argmax(1))),
            "logit_std": float(ref.std(axis=1).mean()), "median_top2_gap": float(np.median(top2[:, 1] - top2[:, 0])),
            "ops": export.model_ops(model), "size_bytes": len(model), "fit_s": round(fit_s, 1),
            "convert_s": round(convert_s, 1), "notes": list(notes)}


SETTINGS = [("MobileNetV2", 2, 2, None, None), ("MobileNetV2", 4, 4, 8, 8), ("MobileNetV2", 2, 2, 8, 8),
            ("ResNet50V2", 2, 2, None, None),
            ("ResNet50V2", 4, 4, 8, 8)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reestimate", action="store_true")
    args = parser.parse_args()
    results = []
    for app, w, a, fl, stream in SETTINGS:
        row = measure(app, args.size, w, a, fl, stream, args.images, args.batch, args.reestimate)
        print(json.dumps({k: v for k, v in row.items() if k != "notes"}), flush=True)
        results.append(row)
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
