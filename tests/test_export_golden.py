"""Golden bytes: the exporter writes the same flatbuffer, byte for byte, for a fixed set of nets.

The nets have fixed weights from a NumPy generator (kernels on a 1/256 grid, so that the quantizers'
float reductions are exact on any CPU) and the calibrated ranges are rounded to 4 significant digits
before the plan is made (a float forward pass may differ in its last bits between CPUs). Every byte
after that is the exporter's own deterministic arithmetic. A change that alters any output byte must
say so by updating ``golden/export_sha256.json``:

    AGQ_UPDATE_GOLDEN=1 python3 -m pytest -q tests/test_export_golden.py   (all cases: no ``-m`` filter)
"""

import hashlib
import json
import os
import pathlib

import keras
import numpy as np
import pytest

import agq_keras

pytest.importorskip("ai_edge_litert")  # the `export` extra; CI installs it through the `test` extra

from agq_keras.export import calibrate, flatbuffer, lower, plan  # noqa: E402

GOLDEN = pathlib.Path(__file__).parent / "golden" / "export_sha256.json"

# name -> (build arguments, export options)
CASES = {
    "plain-2bit": (dict(arch="resnet20", plain=True, bits=2), {}),
    "plain-1bit": (dict(arch="resnet20", plain=True, bits=1), {}),
    "plain-4bit": (dict(arch="resnet20", plain=True, bits=4), {}),
    "plain-8bit": (dict(arch="resnet20", plain=True, bits=8), {}),
    "plain-2bit-replicas1": (dict(arch="resnet20", plain=True, bits=2), dict(max_replicas=1)),
    "plain-2bit-float32": (dict(arch="resnet20", plain=True, bits=2), dict(mode="float32")),
    "plain-2bit-head16-full": (dict(arch="resnet20", plain=True, bits=2), dict(head_bits=16, output_range="full")),
    "residual-2bit": (dict(arch="resnet20", plain=False, bits=2), {}),
    "residual-2bit-int8": (dict(arch="resnet20", plain=False, bits=2), dict(residual_bits=8)),
    "residual16-2bit": (dict(arch="resnet20", plain=False, bits=2, residual_stream="int16"), {}),
    "residual16-4bit": (dict(arch="resnet20", plain=False, bits=4, residual_stream="int16"), {}),
    "residual8-2bit-edge8": (dict(arch="resnet20", plain=False, bits=2, residual_stream="int8", first_last_bits=8), {}),
    "plain-2bit-edge8": (dict(arch="resnet20", plain=True, bits=2, first_last_bits=8), {}),
    "lsq-2bit": (dict(arch="resnet20", plain=True, bits=2, quantizer="lsq"), {}),
    "pact-2bit": (dict(arch="resnet20", plain=True, bits=2, quantizer="pact"), {}),
    "bireal-1bit": (dict(arch="birealnet20", plain=True, bits=1, quantizer="bireal"), {}),
    "resnet18-imagenet-stem": (dict(arch="resnet18", plain=True, bits=2, input_shape=(32, 32, 3)), {}),
}


def golden_net(arch, plain, bits, quantizer="dorefa", input_shape=(16, 16, 1), **extra):
    """F with weights drawn from a fixed NumPy generator (not TensorFlow's), BatchNorm statistics included."""
    keras.utils.set_random_seed(0)
    f = agq_keras.build(arch, plain=plain, quantizer=quantizer, w_bits=bits, a_bits=bits, num_classes=10,
                        input_shape=input_shape, **extra)
    rng = np.random.default_rng(2024)
    for layer in f.layers:
        for var in layer.weights:
            name, shape = var.path.rsplit("/", 1)[-1], tuple(var.shape)
            if name == "kernel":
                fan_in = max(1, int(np.prod(shape[:-1])))
                value = np.round(rng.normal(0, np.sqrt(2 / fan_in), shape) * 256) / 256
            elif name == "gamma":
                value = rng.uniform(0.5, 1.5, shape) * np.where(rng.random(shape) < 0.1, -1, 1)
            elif name == "beta":
                value = rng.normal(0, 0.2, shape)
            elif name == "moving_mean":
                value = rng.normal(0, 0.2, shape)
            elif name == "moving_variance":
                value = rng.uniform(0.3, 2.0, shape)
            elif name == "bias":
                value = rng.normal(0, 0.05, shape)
            elif name == "top":  # a static 8-bit range (first_last_bits=8)
                value = rng.uniform(1.0, 4.0, shape)
            elif name == "log_step":  # LSQ's learned steps (set, not initialised by TF's float32 log)
                value = np.log(rng.uniform(0.05, 0.5, shape))
            elif name == "initialized":
                value = np.ones(shape)
            else:
                continue
            var.assign(value.astype(np.float32))
    return f


def export_bytes(f, images, mode="int8", max_replicas=259, output_range="top", residual_bits=None, head_bits=8):
    """The exporter's bytes with the calibrated ranges rounded to 4 significant digits (see the module doc)."""
    graph = lower.lower(f, max_replicas=max_replicas)
    ranges = calibrate.calibrate(graph, images, output_range=output_range, max_replicas=max_replicas)
    ranges = {name: tuple(float(f"{v:.4g}") for v in lo_hi) for name, lo_hi in ranges.items()}
    frozen = plan.make_plan(graph, ranges, mode=mode, max_replicas=max_replicas, residual_bits=residual_bits,
                            head_bits=head_bits, description="golden")
    return flatbuffer.to_bytes(frozen)


# The README's fast suite checks the main paths; the other cases run with the slow tests (CI runs both).
FAST = ("plain-2bit", "plain-2bit-edge8", "residual16-2bit", "residual8-2bit-edge8", "lsq-2bit", "bireal-1bit")


def _digest(name):
    net, options = CASES[name]
    f = golden_net(**net)
    images = np.random.default_rng(7).uniform(0, 1, (64,) + tuple(f.input_shape[1:])).astype(np.float32)
    return hashlib.sha256(export_bytes(f, images, **options)).hexdigest()


def test_golden_file_lists_every_case():
    expected = json.loads(GOLDEN.read_text())
    assert sorted(expected) == sorted(CASES), f"missing/extra in the golden file: {sorted(set(expected) ^ set(CASES))}"


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in CASES])
def test_export_bytes_match_the_golden_hash(name):
    digest = _digest(name)
    if os.environ.get("AGQ_UPDATE_GOLDEN"):  # run serially (without -n) to rewrite the file
        digests = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        digests[name] = digest
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({n: digests[n] for n in sorted(digests) if n in CASES}, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text()).get(name)
    assert digest == expected, f"export bytes changed for {name!r}; if intended, regenerate (see the module docstring)"
