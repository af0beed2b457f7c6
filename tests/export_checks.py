"""Bounds for the export tests that hold on any machine: every disagreement must be explained.

The trained test nets differ from machine to machine (oneDNN picks CPU-specific kernels, even for the
Eigen contractions), so an agreement threshold measured on one machine is not a guarantee. What the
exporter guarantees, and what these helpers check image by image:

* **Exact tensors are exact, op by op.** For every tensor the exporter stores on F's grid (k-bit
  activations, sign outputs, the int16 residual stream), the integer model's codes equal F's codes.
  Going through the ops in order, the first tensor where an image's codes differ has identical inputs
  in both models, so each differing element there must be one where F's own float32 value sits at a
  rounding tie: within ``TIE_STEPS + TIE_RELATIVE * |x/step|`` output steps of a half step (float32
  carries ~1e-7 relative error per operation and a conv sums hundreds of products; a wrong multiplier,
  bias or threshold misses by a large part of a step). Anything else is a failure.
  Where the exporter does not prove its thresholds (a channel where it kept the closest, its
  ``threshold_ranks`` 2, or an op with more levels than it searches, e.g. 8 bits), the tolerance
  grows by one accumulator unit of that channel.
* **The head is within its derived error budget.** After the last exact tensor, the int8 model rounds
  the final feature map (scale s_L) and the pooled features (s_P, MEAN rounds once more), then the
  logits (s_out). With exact inputs, each logit is off by at most
  ``E_c = sum_i |W_ic| (s_L / 2 + s_P) + s_out`` (W: the classifier's weights), unless a calibrated
  tensor saturates. An image whose body is exact may change its argmax only if F's top-2 logit margin
  is below ``2 max_c E_c`` or one of these tensors saturates on it.
  With ``first_last_bits=8`` F rounds its head itself (the 8-bit map, a pooled grid tied to it, int8
  logits): the map is then a checked grid tensor, the logits a checked stream tensor (F's step), and the
  pool is proven separately (:func:`check_int8_head`); the budget stays as an upper bound.

:func:`explain` returns the disagreements that neither explains (the tests assert there are none),
and what the explained ones were, for the failure message.
"""

from __future__ import annotations

import collections

import keras
import numpy as np
import pytest

from agq_keras import export

TIE_STEPS = 1e-3
TIE_RELATIVE = 1e-5


def _checked_tensors(f, graph):
    """[(tensor name, kind, F layer whose output is the float value, quantizer F applies to it)] in op
    order. The quantizer is the consuming layer's own ``input_quantizer`` (F's float32 arithmetic, e.g.
    DoReFa's round(x * n) in float32), or None for a stream grid (the residual stream's FixedStep, the int8
    logits' signed RangeActivation: the layer's output is the code)."""
    out = []
    for op in graph.ops:
        t = graph.tensors[op.output]
        last = op.layer.split("+")[-1]
        if op.kind == "mean":  # the pooled classifier input: a calibrated map's MEAN (the head's budget), or
            continue  # F's integer pool (QGlobalAveragePooling2D), checked by check_int8_head
        if t.stream_grid is not None:
            out.append((op.output, "stream", last, None, op))
        elif t.sign or t.grid is not None:
            consumer = next(c for c in graph.ops if op.output in c.inputs)
            quantizer = f.get_layer(consumer.layer.split("+")[0]).input_quantizer
            out.append((op.output, "sign" if t.sign else "grid", last, quantizer, op))
    return out


def stored_weights(plan, output):
    """(integer codes with the repeated-input parts summed back, per-channel scales) of the weights
    the plan stores for the op writing ``output``."""
    record, layer = plan.tensor(f"{output}/weights"), plan.layers[output]
    codes = np.asarray(record.data, np.int64)
    if layer.kind == "affine":  # a BatchNorm as a 1x1 depthwise conv: one code per channel
        codes = codes.reshape(-1)
    if layer.kind == "dwconv":  # stored (1, kh, kw, C*M): output channels first
        codes = np.moveaxis(codes[0], -1, 0)
    if layer.replicas > 1:
        codes = codes.reshape(codes.shape[:-1] + (layer.replicas, -1)).sum(axis=-2)
    scale = np.broadcast_to(np.asarray(record.quant.scale, np.float64), (len(codes),))
    return codes, scale


def _unproven_channels(plan, op, s_in, step):
    """Per output channel, the extra tie tolerance (in output steps) where the exporter does not prove
    its thresholds: channels where it found no exact thresholds and kept the closest
    (``threshold_ranks == 2``), and every channel of an op it does not search (more than
    ``plan.MAX_SEARCH_LEVELS`` levels: plain requantization, the bias rounded to an integer). There
    the accumulator moves in units of ``s_in * base weight step``, and the int8 output can differ from
    F's only within one such unit of a rounding tie."""
    if op.output not in plan.layers:
        return 0.0
    codes, scale = stored_weights(plan, op.output)
    unit = s_in * scale * np.maximum(np.gcd.reduce(np.abs(codes.reshape(len(codes), -1)), axis=1), 1) / step
    ranks = plan.layers[op.output].threshold_ranks
    return unit if ranks is None else np.where(np.asarray(ranks) >= 2, unit, 0.0)


def _tflite_real(runner, name, _cache={}):
    """The real values of a tensor after the runner's last batch, and its (scale, zero point, dtype)."""
    # keyed by the interpreter object itself, which the cache holds: an id() key could be reused by a later
    # interpreter once the first is garbage-collected, and hand it another model's scales
    if _cache.get("interpreter") is not runner.interpreter:
        _cache.clear()
        _cache["interpreter"] = runner.interpreter
        _cache["details"] = {d["name"]: (d["quantization"][0], d["quantization"][1], d["dtype"])
                             for d in runner.interpreter.get_tensor_details()}
    scale, zero_point, dtype = _cache["details"][name]
    return (runner.tensor(name).astype(np.float64) - zero_point) * scale, (scale, zero_point, dtype)


def explain(f, model_bytes, plan, images, batch_size=25):
    """Check every image; returns ``(unexplained, summary)``: the list of disagreeing images that no rule
    explains (with the reason), and counts of images agreeing / explained by a tie / by the head."""
    images = np.asarray(images, np.float32)
    graph = plan.graph
    checked = _checked_tensors(f, graph)
    pool_op = next(op for op in graph.ops if op.kind == "mean")
    dense_op = graph.producer(graph.output)
    last_map = pool_op.inputs[0]
    layer_names = [layer for _, _, layer, _, _ in checked]
    stream_inputs = [f.get_layer(layer).input for _, kind, layer, _, _ in checked if kind == "stream"]
    probe = keras.Model(f.inputs, [f.get_layer(n).output for n in layer_names] + stream_inputs
                        + [f.get_layer(graph.producer(last_map).layer.split("+")[-1]).output,
                           f.get_layer(pool_op.layer.split("+")[-1]).output, f.outputs[0]])
    codes, scale = stored_weights(plan, dense_op.output)
    weights = codes * scale[:, None]  # (classes, features), F's classifier as exported
    runner = export.Runner(model_bytes, batch_size=batch_size, preserve=True)
    unexplained, summary = [], collections.Counter()
    budget = 0.0  # no image to explain (all agree): no head error budget was needed
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        n = len(batch)
        values = probe.predict(batch, verbose=0)
        values = values if isinstance(values, list) else [values]
        keras_vals = values[:len(checked)]
        pre_stream = iter(values[len(checked):len(checked) + len(stream_inputs)])
        f_map, f_pool, f_logits = (np.asarray(v, np.float64) for v in values[-3:])
        logits = runner(batch)  # one invoke: the preserved tensors below are this batch's
        first = [None] * n  # per image: (tensor, all mismatches at ties?)
        for (name, kind, _, quantizer, op), value in zip(checked, keras_vals):
            real, _ = _tflite_real(runner, name)
            real = real[:n]
            t = graph.tensors[name]
            quantized = np.asarray(quantizer(value) if quantizer is not None else value, np.float64)
            value = np.asarray(value, np.float64)
            if kind == "sign":
                f_code, ours = np.sign(quantized), np.where(real >= 0, 1, -1)
                at_tie = np.abs(value) <= TIE_STEPS * np.abs(value).max()
            else:
                step = t.grid[0] if kind == "grid" else t.stream_grid[0]
                x = (next(pre_stream) if kind == "stream" else value) / step
                if kind == "grid":  # a signed grid is stored shifted by t.offset steps (agq_keras.export.lower)
                    x = np.clip(x, -t.offset, t.grid[1] - t.offset)
                f_code, ours = np.round(quantized / step), np.round(real / step) - t.offset
                dist = np.abs(np.abs(x - np.floor(x)) - 0.5)
                s_in = _tflite_real(runner, op.inputs[0])[1][0]
                at_tie = dist <= TIE_STEPS + TIE_RELATIVE * np.abs(x) + _unproven_channels(plan, op, s_in, step)
            differ = f_code != ours
            for i in range(n):
                if first[i] is None and differ[i].any():
                    first[i] = (name, bool(np.all(at_tie[i][differ[i]])), int(differ[i].sum()))
        _, (s_map, zp_map, dt_map) = _tflite_real(runner, last_map)
        _, (s_pool, zp_pool, dt_pool) = _tflite_real(runner, pool_op.output)
        s_out = runner.output["quantization"][0]
        budget = 2 * (np.abs(weights).sum(axis=1).max() * (s_map / 2 + s_pool) + s_out)

        def saturated(v, scale, zp, dtype):
            info = np.iinfo(dtype)
            return (v < (info.min - zp) * scale) | (v > (info.max - zp) * scale)

        for i in range(n):
            if first[i] is not None:
                name, tie, count = first[i]
                if not tie:
                    unexplained.append((start + i, f"{count} codes of {name!r} differ from F's, not all at a "
                                                   "rounding tie of F (an exact tensor is wrong)"))
                    continue
            if logits[i].argmax() == f_logits[i].argmax():
                summary["agree"] += 1
                continue
            if first[i] is not None:
                summary["F float32 tie"] += 1
                summary[f"first tie at {first[i][0]}"] += 1
                continue
            top2 = np.sort(f_logits[i])[-2:]
            sat = (saturated(f_map[i], s_map, zp_map, dt_map).any() or saturated(f_pool[i], s_pool, zp_pool, dt_pool).any()
                   or saturated(top2, *runner.output["quantization"], np.int8).any())
            if top2[1] - top2[0] < budget or sat:
                summary["head rounding" if not sat else "saturated calibrated tensor"] += 1
                continue
            unexplained.append((start + i, f"exact body, F's top-2 margin {top2[1] - top2[0]:.4g} >= the head's "
                                           f"error budget {budget:.4g}, no saturation"))
    summary["images"] = len(images)
    summary["budget"] = float(budget)
    return unexplained, dict(summary)


# -- shared by the export test files -------------------------------------------------------------------------------
TRAIN, CALIB, TEST = 1600, 300, 500
INT8_OPS = {"ADD", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MEAN", "MAX_POOL_2D",
            "QUANTIZE"}


def load_data():
    """(x, y, x_test, y_test): TRAIN training images and all 10 000 test images, scaled x/255."""
    from agq_keras.data import fashion_mnist

    x, y = fashion_mnist.load("train", subset=TRAIN)
    xt, yt = fashion_mnist.load("test")
    return x.astype("float32") / 255.0, y, xt.astype("float32") / 255.0, yt


def train(f, x, y, epochs, seed=7):
    """Deterministic on one machine (op determinism and one thread: tests/conftest.py; a seeded data
    order). Across machines oneDNN's CPU-specific kernels still change the weights, so no bound in the
    export tests depends on the weights (see the module docstring)."""
    f.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    order = np.random.default_rng(seed).permutation(len(x))
    f.fit(x[order], y[order], batch_size=32, epochs=epochs, verbose=0, shuffle=False)
    return f


def build(kind, bits):
    """kind: "plain", "plain_edge8" (plain, ``first_last_bits=8``), "residual" (the paper's float residual
    stream), "residual16" (F quantizes its residual stream to int16, ``residual_stream="int16"``: the
    exactly exportable residual F) or "residual8" (``residual_stream="int8"`` with 8-bit first/last layers:
    exact with every tensor int8)."""
    import agq_keras

    extra = {"residual16": {"residual_stream": "int16"}, "plain_edge8": {"first_last_bits": 8},
             "residual8": {"residual_stream": "int8", "first_last_bits": 8}}.get(kind, {})
    return agq_keras.build("resnet20", plain=kind.startswith("plain"), w_bits=bits, a_bits=bits, num_classes=10,
                           input_shape=(28, 28, 1), **extra)


class Family(dict):
    """{(kind, bits): F}, trained on first use (a test marked slow costs nothing when deselected): the
    2-bit net of ``kind`` trains one epoch on ``x`` (batch 32). Another width of the same kind starts
    from its weights (by layer name) and re-estimates its BatchNorm statistics on 20 batches of 32 (so
    they fit its grid: the nets of one kind hold no quantizer state, and a forward pass costs a fraction
    of tracing a training step); another kind (e.g. "plain_edge8", whose int8 head learns its logits'
    range) trains 20 more steps instead."""

    def __init__(self, x, y, kind):
        super().__init__()
        self.x, self.y, self.kind = x, y, kind

    def __missing__(self, key):
        other, bits = key
        base = (self.kind, 2)
        if key == base:
            keras.utils.set_random_seed(7)
            f = train(build(*key), self.x, self.y, epochs=1)
        else:
            from agq_keras.training.recipe import load_by_name

            f = build(other, bits)
            load_by_name(self[base], f)
            if other == self.kind:
                import tensorflow as tf

                from agq_keras.training.callbacks import reestimate_batch_norm

                reestimate_batch_norm(f, tf.data.Dataset.from_tensor_slices(self.x[:640]).batch(32), 20)
            else:
                f = train(f, self.x[:640], self.y[:640], epochs=1)
        self[key] = f
        return f


def check_explained(f, model, plan, xt, body_images=50):
    """Per-op exactness on the first ``body_images`` images, and every argmax disagreement on ``xt``
    explained (:func:`explain`); returns the summary."""
    ref = f.predict(xt, batch_size=250, verbose=0).argmax(1)
    disagree = np.flatnonzero(export.Runner(model, batch_size=50)(xt).argmax(1) != ref)
    chosen = np.union1d(np.arange(min(body_images, len(xt))), disagree)
    unexplained, summary = explain(f, model, plan, xt[chosen])
    assert unexplained == [], (unexplained[:5], summary)
    return summary


def check_grid(f, report, bits):
    """The verify report's grid check: every ``bits``-bit conv of F has codes * scale = q(W) * BN fold
    (to 1e-5) with at most 2^bits codes per channel, and the 16-bit stem and classifier are on their
    grids (exact through repeated inputs, docs/export.md)."""
    import agq_keras

    rows = {r["layer"].split("+")[0]: r for r in report["grid_check"]}
    quantized = [layer.name for layer in f.layers
                 if isinstance(layer, agq_keras.QConv2D) and layer.kernel_quantizer.bits == bits]
    assert quantized and all(name in rows for name in quantized)
    for name in quantized:
        row = rows[name]
        assert row["on_grid"], row
        assert row["levels_max"] <= 2 ** bits
        assert row["max_rel_error"] < 1e-5
    assert rows["stem_conv"]["on_grid"] and rows["classifier"]["on_grid"]


def convert_and_verify(f, x, xt, yt):
    """Export F (calibrated on ``x[:CALIB]``) and verify it on 100 test images: int8 I/O, builtin int8
    ops only, no float tensor. Returns (model bytes, plan, verify report)."""
    model, plan, _ = export.convert(f, x[:CALIB])
    report = export.verify(model, f, xt[:100], yt[:100], plan=plan, latency_runs=0)
    assert report["io_types"] == {"input": "INT8", "output": "INT8"}
    assert set(report["ops"]) <= INT8_OPS, report["ops"]
    assert report["float_tensors"] == []
    return model, plan, report


def check_int8_head(f, model, plan, images):
    """The int8 head of ``first_last_bits=8`` (QGlobalAveragePooling2D, signed 8-bit logits): the pool is a
    DEPTHWISE_CONV_2D of ones proven on every runtime (rank 0, margin ~1/(2N) output steps,
    N = 2P - 1), and under every runtime its codes are round(2S/N) of the map codes S that runtime wrote;
    the logits tensor is int8 at F's logits step, zero point 0. Returns the per-runtime codes."""
    pool_op = next(op for op in plan.graph.ops if op.kind == "mean")
    map_name, positions = pool_op.inputs[0], int(np.prod(plan.graph.tensors[pool_op.inputs[0]].shape[:2]))
    n = 2 * positions - 1
    record = plan.layers[pool_op.output]
    assert record.kind == "pool" and np.all(record.threshold_ranks == 0), record
    # 1/(2N) less the float32 scales' error (the runtime multiplier is ~1e-7 off 2/N, over up to 255 steps)
    assert np.min(record.margins) >= 1 / (2 * n) - 1e-4, np.min(record.margins)
    assert "MEAN" not in export.model_ops(model)
    logits = plan.tensor(plan.graph.output)
    step = float(f.get_layer("logits_q").top.numpy()) / 127
    assert logits.dtype == "int8" and logits.quant.zero_point == (0,)
    assert logits.quant.scale[0] == pytest.approx(step, rel=1e-6)
    zp_map = plan.tensor(map_name).quant.zero_point[0]
    zp_pool = plan.tensor(pool_op.output).quant.zero_point[0]
    codes = {rt: export.tensor_codes(model, [map_name, pool_op.output], images, rt) for rt in export.RUNTIMES}
    for rt, got in codes.items():
        sums = (got[map_name].astype(np.int64) - zp_map).sum(axis=(1, 2))
        want = np.floor(2 * sums / n + 0.5).astype(np.int64)  # never a tie
        assert np.array_equal(got[pool_op.output].reshape(len(images), -1).astype(np.int64) - zp_pool, want), rt
    return codes
