"""Calibration: a float run of the lowered graph (with the plan's integer weights) over representative
images, giving each tensor's observed range. The second stage of the export pipeline."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from agq_keras import quantizers
from agq_keras.export import ops
from agq_keras.export.lower import Graph
from agq_keras.export.plan import weight_forms

OUTPUT_RANGES = ("top", "full")


def evaluate(graph: Graph, forms: dict, images, batch_size: int = 256):
    """Float evaluation of the IR with the weights ``forms`` (:func:`plan.weight_forms`) and the exact
    activation rounding. Returns ``(outputs, ranges)``: the output arrays (one per graph output, in order)
    and ``{tensor: (min, max)}``."""
    ranges: dict = {}
    results = []
    for start in range(0, len(images), batch_size):
        values = {graph.input: tf.convert_to_tensor(np.asarray(images[start:start + batch_size], np.float32))}
        for op in graph.ops:
            weights = forms[op.output].real_weights() if op.output in forms else \
                op.real_weights() if op.codes is not None else None
            y = ops.KINDS[op.kind].evaluate(op, [values[name] for name in op.inputs], weights,
                                            graph.tensors[op.output].shape)
            if op.relu:
                y = tf.nn.relu(y) if op.relu_cap is None else tf.clip_by_value(y, 0.0, op.relu_cap)
            out = graph.tensors[op.output]
            if out.grid is not None:
                step, levels = out.grid
                y = tf.round(tf.clip_by_value(y, 0.0, levels * step) / step) * step
            if out.stream_grid is not None:
                y = quantizers.fixed_step(y, *out.stream_grid)
            if out.sign:
                y = tf.where(y >= 0, 1.0, -1.0)
            values[op.output] = y
        for name, v in values.items():
            lo, hi = float(tf.reduce_min(v)), float(tf.reduce_max(v))
            old = ranges.get(name, (lo, hi))
            ranges[name] = (min(old[0], lo), max(old[1], hi))
        results.append([values[name].numpy() for name in graph.outputs])
    return [np.concatenate(arrays) for arrays in zip(*results)], ranges


def calibrate(graph: Graph, images, output_range: str = "top", max_replicas: int = 259, weights: str = "int8",
              forms=None) -> dict:
    """``{tensor: (lo, hi)}`` observed on ``images`` (the IR run with the integer weights the plan
    will store: ``forms``, :func:`plan.weight_forms` for ``max_replicas`` and ``weights`` when None).

    ``output_range="full"`` covers every logit seen. ``"top"`` (default, for
    classifiers) covers only the winning logits: from the smallest per-image
    maximum logit, less a quarter of the span above it, to the largest logit.
    Lower logits saturate at -128, which never changes the argmax but makes
    the int8 step several times finer, so near-tied winners stay apart.
    It applies to a single 2-D output (a classifier's logits); the outputs of a
    multi-output F (a detector's per-level tensors) always cover every value seen.
    """
    if output_range not in OUTPUT_RANGES:
        raise ValueError(f"output_range={output_range!r} is not supported; allowed: {', '.join(OUTPUT_RANGES)}.")
    if forms is None:
        forms = weight_forms(graph, max_replicas, weights)
    outputs, ranges = evaluate(graph, forms, images)
    if output_range == "top" and len(outputs) == 1 and outputs[0].ndim == 2 and outputs[0].shape[1] > 1:
        lo, hi = ranges[graph.output]
        top_lo = float(outputs[0].max(axis=1).min())
        ranges[graph.output] = (max(lo, top_lo - 0.25 * (hi - top_lo)), hi)
    return ranges
