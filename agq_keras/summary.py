"""`summary(model)`: per-layer bit widths, deployed memory and MACs (like larq's summary)."""

from __future__ import annotations

import math

import keras


def _bits(quantizer) -> int:
    return 32 if quantizer is None else int(quantizer.bits)


def _shape(tensor_or_shape):
    return tuple(getattr(tensor_or_shape, "shape", tensor_or_shape))


def layer_rows(model: keras.Model) -> list[dict]:
    """One dict per layer with parameters: name, class, weight/activation bits, params,
    memory bytes at deployed precision, MACs and the MAC precision key ``"w{bits}a{bits}"``."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"summary() expects a keras.Model, got {type(model).__name__}.")
    f = getattr(model, "f", None)
    if isinstance(f, keras.Model) and f is not model:
        model = f  # an AG trainer: summarise the deployed F
    rows = []
    for layer in model.layers:
        params = int(sum(math.prod(w.shape) for w in layer.weights))
        if params == 0:
            continue
        row = {"name": layer.name, "class": type(layer).__name__, "weight_bits": 32, "activation_bits": 32,
               "params": params, "memory_bytes": 4.0 * params, "macs": 0, "mac_precision": None}
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            wb = _bits(getattr(layer, "kernel_quantizer", None))
            ab = _bits(getattr(layer, "input_quantizer", None))
            kernel = int(math.prod(layer.kernel.shape))
            out = _shape(layer.output)
            if isinstance(layer, keras.layers.Conv2D):
                macs = kernel * int(math.prod(d for d in out[1:-1]))
            else:
                macs = kernel
            row.update(weight_bits=wb, activation_bits=ab, memory_bytes=kernel * wb / 8 + 4.0 * (params - kernel),
                       macs=int(macs), mac_precision=f"w{wb}a{ab}")
        rows.append(row)
    return rows


def summary(model: keras.Model, print_fn=print) -> dict:
    """Print (with ``print_fn``; None: don't) and return the per-layer table and totals.

    Memory counts each kernel at its weight bit width and every other
    parameter (BatchNorm, biases, quantizer variables) at 32 bits. MACs are
    per image, grouped by ``w<weight bits>a<activation bits>``.
    """
    rows = layer_rows(model)
    macs: dict = {}
    for r in rows:
        if r["mac_precision"]:
            macs[r["mac_precision"]] = macs.get(r["mac_precision"], 0) + r["macs"]
    totals = {"params": sum(r["params"] for r in rows),
              "memory_bytes": sum(r["memory_bytes"] for r in rows),
              "float32_memory_bytes": 4.0 * sum(r["params"] for r in rows),
              "macs": sum(r["macs"] for r in rows), "macs_by_precision": dict(sorted(macs.items()))}
    if print_fn is not None:
        head = f"{'Layer':<28}{'Class':<20}{'W bits':>7}{'A bits':>7}{'Params':>10}{'Memory kB':>11}{'MACs':>12}"
        lines = [head, "-" * len(head)]
        for r in rows:
            lines.append(f"{r['name']:<28}{r['class']:<20}{r['weight_bits']:>7}{r['activation_bits']:>7}"
                         f"{r['params']:>10}{r['memory_bytes'] / 1e3:>11.2f}{r['macs']:>12}")
        lines.append("-" * len(head))
        lines.append(f"{'Total':<62}{totals['params']:>10}{totals['memory_bytes'] / 1e3:>11.2f}{totals['macs']:>12}")
        lines.append(f"Memory at deployed precision: {totals['memory_bytes'] / 1e3:.2f} kB "
                     f"(float32: {totals['float32_memory_bytes'] / 1e3:.2f} kB)")
        for key, value in totals["macs_by_precision"].items():
            lines.append(f"MACs {key}: {value}")
        print_fn("\n".join(lines))
    return {"layers": rows, "totals": totals}
