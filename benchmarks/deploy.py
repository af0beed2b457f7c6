"""Deployment figures of one exported F, measured in a fresh process: file sizes and single-image
LiteRT latency of the int8 export against the float32 TFLite of the same F, and the exporter's peak
memory. ``python -m benchmarks.deploy --arch=resnet18 ...`` prints one JSON line (benchmarks/run.py
calls it once per model, so one model's memory never counts against another's)."""

from __future__ import annotations

import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(arch: str, input_shape, num_classes: int, first_last_bits: int, runs: int, stem: str = "") -> dict:
    import keras
    import numpy as np

    import agq_keras
    from agq_keras import export
    from agq_keras.export.verify import latency_ms

    keras.utils.set_random_seed(0)
    f = agq_keras.build(arch, plain=True, w_bits=2, a_bits=2, num_classes=num_classes, input_shape=tuple(input_shape),
                        first_last_bits=first_last_bits, **({"stem": stem} if stem else {}))
    images = np.random.default_rng(0).uniform(0, 1, (8,) + tuple(input_shape)).astype(np.float32)
    f(images, training=True)  # sets the static ranges of an 8-bit classifier input
    before = _rss_mib()
    started = time.perf_counter()
    data = export.convert(f, images)[0]
    out = {"arch": arch, "input_shape": list(input_shape), "num_classes": num_classes,
           "first_last_bits": first_last_bits, "export_s": time.perf_counter() - started,
           "export_peak_rss_mib": _rss_mib(), "rss_before_export_mib": before,
           "model": "untrained 2-bit DoReFa plain F (size and latency do not depend on the weights)"}
    float_bytes = export.convert(f, images, mode="float32")[0]
    out["int8_size_bytes"], out["float32_size_bytes"] = len(data), len(float_bytes)
    out["size_ratio"] = len(data) / len(float_bytes)
    packed = export.convert(f, images, weights="packed")[0]  # packed INT4 k-bit convs (size only)
    out["packed_size_bytes"], out["packed_size_ratio"] = len(packed), len(packed) / len(float_bytes)
    if runs:
        for kernels in ("builtin", "xnnpack"):  # side by side, alternating models
            int8_ms = latency_ms(data, input_shape, runs, kernels)
            float_ms = latency_ms(float_bytes, input_shape, runs, kernels)
            out[f"latency_ms_int8_{kernels}"], out[f"latency_ms_float32_{kernels}"] = int8_ms, float_ms
            out[f"latency_ratio_{kernels}"] = int8_ms / float_ms
    return out


def run_fresh(arch: str, input_shape, num_classes: int, first_last_bits: int, runs: int, stem: str = "") -> dict:
    """:func:`measure` in a fresh Python process."""
    import subprocess

    cmd = [sys.executable, "-m", "benchmarks.deploy", json.dumps([arch, list(input_shape), num_classes,
                                                                  first_last_bits, runs, stem])]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"deployment benchmark of {arch} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(measure(*json.loads(sys.argv[1]))))
