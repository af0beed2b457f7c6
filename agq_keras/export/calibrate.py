"""Calibration: a float run of the lowered graph (with the plan's integer weights) over representative
images, giving each tensor's observed range. The second stage of the export pipeline."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from agq_keras import quantizers
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
            x = values[op.inputs[0]]
            weights = forms[op.output].real_weights() if op.output in forms else \
                op.real_weights() if op.codes is not None else None
            if op.kind in ("conv", "dwconv", "affine"):
                if op.kind == "conv":
                    w = np.transpose(weights, (1, 2, 3, 0))  # (H, W, I, O)
                    y = tf.nn.conv2d(x, tf.constant(w, tf.float32), op.strides, op.padding)
                elif op.kind == "dwconv":  # (C*M, kh, kw, 1) -> (kh, kw, C, M)
                    w = np.transpose(weights[..., 0], (1, 2, 0)).reshape(
                        weights.shape[1], weights.shape[2], -1, op.depth_multiplier)
                    y = tf.nn.depthwise_conv2d(x, tf.constant(w, tf.float32), (1,) + tuple(op.strides) + (1,),
                                               op.padding)
                else:
                    y = x * tf.constant(weights, tf.float32)
                y = y + tf.constant(op.bias, tf.float32)
            elif op.kind == "dense":
                y = tf.matmul(x, tf.constant(weights.T, tf.float32)) + tf.constant(op.bias, tf.float32)
            elif op.kind == "add":
                y = x + values[op.inputs[1]]
            elif op.kind == "mean":
                y = tf.reduce_mean(x, axis=[1, 2])
            elif op.kind == "pad":
                y = tf.pad(x, [(0, 0), *op.paddings, (0, 0)])
            elif op.kind == "resize":  # nearest, integer factors: each value repeated
                y = tf.repeat(tf.repeat(x, op.factor[0], axis=1), op.factor[1], axis=2)
            elif op.kind == "reshape":
                y = tf.reshape(x, (-1,) + graph.tensors[op.output].shape)
            else:
                y = tf.nn.max_pool2d(x, op.pool, op.strides, op.padding)
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


def calibrate(graph: Graph, images, output_range: str = "top", max_replicas: int = 259, weights: str = "int8") -> dict:
    """``{tensor: (lo, hi)}`` observed on ``images`` (the IR run with the integer weights the plan
    will store for ``max_replicas`` and ``weights``).

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
    forms, _ = weight_forms(graph, max_replicas, weights)
    outputs, ranges = evaluate(graph, forms, images)
    if output_range == "top" and len(outputs) == 1 and outputs[0].ndim == 2 and outputs[0].shape[1] > 1:
        lo, hi = ranges[graph.output]
        top_lo = float(outputs[0].max(axis=1).min())
        ranges[graph.output] = (max(lo, top_lo - 0.25 * (hi - top_lo)), hi)
    return ranges
