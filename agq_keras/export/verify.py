"""Verification report of an exported model against the Keras F (LiteRT runtime)."""

from __future__ import annotations

import os
import time

import numpy as np

from agq_keras.export import metadata
from agq_keras.export.flatbuffer import schema, unpack_int4  # one home for the schema bindings
from agq_keras.lowerable import softmax_head

FLOAT_TYPES = (schema.TensorType.FLOAT32, schema.TensorType.FLOAT16, schema.TensorType.FLOAT64)
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


# LiteRT's op resolvers: TFLite's reference kernels (what TensorFlow Lite Micro runs), the optimized
# builtin kernels, and the default interpreter (XNNPACK delegate, what phones and desktops run).
KERNELS = ("reference", "builtin", "xnnpack")
RUNTIMES = KERNELS + ("micro",)  # + TensorFlow Lite Micro (the `tflite-micro` package, on the host)


def _interpreter(model_bytes: bytes, kernels: str = "builtin", preserve: bool = False):
    """A LiteRT interpreter with the ``kernels`` of :data:`KERNELS`."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as err:  # pragma: no cover
        raise ImportError("Running exported models needs LiteRT: pip install 'agq-keras[export]'") from err
    resolvers = {"reference": OpResolverType.BUILTIN_REF, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                 "xnnpack": OpResolverType.AUTO}
    if kernels not in resolvers:
        raise ValueError(f"kernels={kernels!r} is not supported; allowed: {', '.join(KERNELS)}.")
    return Interpreter(model_content=model_bytes, experimental_op_resolver_type=resolvers[kernels],
                       experimental_preserve_all_tensors=preserve)


class Runner:
    """Batch inference of a one-input TFLite model with LiteRT.

    Float images go in, float outputs come out: an int8 input is quantized with
    the model's input scale/zero point, an int8 output dequantized. A model with one
    output gives one array; a model with several (a detector's per-level tensors) a
    list of arrays in the model's output order (:meth:`outputs`).
    """

    def __init__(self, model_bytes, batch_size: int = 250, kernels: str = "builtin", preserve: bool = False):
        """``model_bytes``: the file's bytes or its path. ``preserve=True`` keeps every intermediate tensor
        readable (:meth:`tensor`), slower. ``metadata``: the file's named metadata entries (a detector's
        anchors: :func:`agq_keras.detection.predict` reads them)."""
        if isinstance(model_bytes, (str, os.PathLike)):
            with open(model_bytes, "rb") as fh:
                model_bytes = fh.read()
        self.metadata = metadata.read(model_bytes)
        self.interpreter = _interpreter(model_bytes, kernels, preserve)
        self.tensors = {d["name"]: d["index"] for d in self.interpreter.get_tensor_details()}
        self.batch_size = batch_size
        inp = self.interpreter.get_input_details()[0]
        self.interpreter.resize_tensor_input(inp["index"], [batch_size] + list(inp["shape"][1:]))
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output_details = self.interpreter.get_output_details()  # in the model's output order
        self.output = self.output_details[0]

    def quantize(self, x):
        if self.input["dtype"] not in (np.int8, np.int16):
            return x.astype(self.input["dtype"])
        scale, zp = self.input["quantization"]
        info = np.iinfo(self.input["dtype"])
        return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(self.input["dtype"])

    def raw(self, images):
        """The raw output tensor (int8 codes for an int8 model); the first output of a multi-output model."""
        return self.raw_outputs(images)[0]

    def raw_outputs(self, images) -> list:
        """Every raw output tensor, in the model's output order."""
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            n = len(batch)
            if n < self.batch_size:
                batch = np.concatenate([batch, np.zeros((self.batch_size - n,) + batch.shape[1:], batch.dtype)])
            self.interpreter.set_tensor(self.input["index"], self.quantize(batch))
            self.interpreter.invoke()
            out.append([self.interpreter.get_tensor(d["index"])[:n].copy() for d in self.output_details])
        return [np.concatenate(arrays) for arrays in zip(*out)]

    def tensor(self, name: str):
        """The stored codes of an intermediate tensor after the last batch (needs ``preserve=True``)."""
        if name not in self.tensors:
            raise KeyError(f"No tensor {name!r} in the model; it has {len(self.tensors)} tensors.")
        return self.interpreter.get_tensor(self.tensors[name]).copy()

    def outputs(self, images) -> list:
        """Every output, dequantized, in the model's output order."""
        return [dequantize(raw, detail) for raw, detail in
                zip(self.raw_outputs(np.asarray(images, np.float32)), self.output_details)]

    def __call__(self, images):
        """The dequantized output (one output), or the list of them (several)."""
        out = self.outputs(images)
        return out[0] if len(out) == 1 else out


def dequantize(raw, detail) -> np.ndarray:
    """Float values of an output tensor's ``raw`` codes (``detail``: its LiteRT details)."""
    if detail["dtype"] not in (np.int8, np.int16):
        return raw.astype(np.float32)
    scale, zp = detail["quantization"]
    return (raw.astype(np.float32) - zp) * scale


class MicroRunner(Runner):
    """:class:`Runner` on TensorFlow Lite Micro's host interpreter (one image per invoke)."""

    def __init__(self, model_bytes: bytes, arena_size: int = 16_000_000):
        try:
            from tflite_micro.python.tflite_micro import runtime
        except ImportError as err:
            raise ImportError("Running on TensorFlow Lite Micro needs the `tflite-micro` package "
                              "(pip install tflite-micro)") from err
        self.interpreter = runtime.Interpreter.from_bytes(model_bytes, arena_size=arena_size)
        self.metadata = metadata.read(model_bytes)
        self.batch_size = 1

        def details(d):  # LiteRT's layout: dtype and (scale, zero point)
            q = d["quantization_parameters"]
            return {"dtype": d["dtype"], "quantization": (float(q["scales"][0]), int(q["zero_points"][0]))}

        self.input = details(self.interpreter.get_input_details(0))
        count = len(_model(model_bytes).subgraphs[0].outputs)
        self.output_details = [details(self.interpreter.get_output_details(i)) for i in range(count)]
        self.output = self.output_details[0]

    def raw_outputs(self, images) -> list:
        out = []
        for image in images:
            self.interpreter.set_input(self.quantize(image[None]), 0)
            self.interpreter.invoke()
            out.append([np.array(self.interpreter.get_output(i))[0] for i in range(len(self.output_details))])
        return [np.stack(arrays) for arrays in zip(*out)]


def runner(model_bytes: bytes, runtime: str, batch_size: int = 250):
    """A :class:`Runner` for one of :data:`RUNTIMES`."""
    if runtime == "micro":
        return MicroRunner(model_bytes)
    if runtime not in KERNELS:
        raise ValueError(f"runtime={runtime!r} is not supported; allowed: {', '.join(RUNTIMES)}.")
    return Runner(model_bytes, batch_size=batch_size, kernels=runtime)


def _model(model_bytes: bytes):
    return schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)


def model_ops(model_bytes: bytes) -> list:
    """Builtin op names used by the model, sorted."""
    m = _model(model_bytes)
    return sorted({_OP_NAMES.get(oc.builtinCode, str(oc.builtinCode)) for oc in m.operatorCodes})


def float_tensors(model_bytes: bytes) -> list:
    """Names of float tensors in the model body (should be empty for a full-int8 model)."""
    m = _model(model_bytes)
    return [t.name.decode() if isinstance(t.name, bytes) else t.name
            for t in m.subgraphs[0].tensors if t.type in FLOAT_TYPES]


def int16_tensors(model_bytes: bytes) -> list:
    """Names of the int16 activation tensors (the int16 residual stream; empty for a fully 8-bit model)."""
    m = _model(model_bytes)
    return [t.name.decode() if isinstance(t.name, bytes) else t.name
            for t in m.subgraphs[0].tensors if t.type == schema.TensorType.INT16]


def io_types(model_bytes: bytes) -> dict:
    """``{"input", "output"}`` type names (the first output's); with several outputs also ``"outputs"``."""
    m = _model(model_bytes)
    sub = m.subgraphs[0]
    name = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    types = {"input": name[sub.tensors[sub.inputs[0]].type], "output": name[sub.tensors[sub.outputs[0]].type]}
    if len(sub.outputs) > 1:
        types["outputs"] = [name[sub.tensors[i].type] for i in sub.outputs]
    return types


def grid_check(model_bytes: bytes, plan) -> list:
    """Per quantized conv, depthwise conv and dense layer: the int8 weight codes read back from the flatbuffer.

    For each layer: ``levels_max`` (most distinct codes in one output channel,
    the repeated-input parts summed back), ``allowed`` (2^bits), whether
    ``codes * scale`` reproduces F's (BN-folded) weights (``max_rel_error``),
    and ``on_grid`` = both hold; with the plan's threshold ranks, the number of
    channels exact on every runtime and the smallest margin from a rounding tie.
    """
    m = _model(model_bytes)
    sub = m.subgraphs[0]
    tensors = {(t.name.decode() if isinstance(t.name, bytes) else t.name): t for t in sub.tensors}
    rows = []
    for rec in plan.layers.values():
        if rec.kind not in ("conv", "dwconv", "dense") or rec.float_weights is None:
            continue
        t = tensors.get(f"{rec.output}/weights")
        if t is None:
            continue
        data = bytes(m.buffers[t.buffer].data)
        codes = (unpack_int4(data, int(np.prod(t.shape))) if t.type == schema.TensorType.INT4 else
                 np.frombuffer(data, np.int8).astype(np.int64)).reshape(t.shape)
        if rec.kind == "dwconv":  # stored (1, kh, kw, C*M): output channels first, as F's weights
            codes = np.moveaxis(codes[0], -1, 0)[..., None]
        if rec.replicas > 1:  # sum the repeated-input parts back
            codes = codes.reshape(codes.shape[:-1] + (rec.replicas, -1)).sum(axis=-2)
        scale = np.asarray(t.quantization.scale, np.float64)
        if rec.gain is not None:  # a sign() output: weights scaled by a positive gain
            scale = scale / rec.gain
        real = codes * scale.reshape((-1,) + (1,) * (codes.ndim - 1))
        ref = rec.float_weights
        rel = float(np.abs(real - ref).max() / max(np.abs(ref).max(), 1e-12))
        levels = max(len(np.unique(row)) for row in codes.reshape(codes.shape[0], -1))
        allowed = 2 ** rec.weight_bits if rec.weight_bits <= 16 else None
        exact = rel < 1e-5 and (allowed is None or levels <= allowed)
        ranks = rec.threshold_ranks
        rows.append({"layer": rec.layer, "weight_bits": rec.weight_bits, "replicas": rec.replicas,
                     "threshold_exact_channels": None if ranks is None else int(np.sum(ranks < 2)),
                     "all_runtimes_exact_channels": None if ranks is None else int(np.sum(ranks == 0)),
                     "min_margin": None if rec.margins is None else float(rec.margins.min(initial=np.inf)),
                     "channels": int(codes.shape[0]),
                     "levels_max": int(levels), "allowed": allowed, "max_rel_error": rel,
                     "on_grid": bool(exact), "note": rec.note})
    return rows


def latency_ms(model_bytes: bytes, shape, runs: int = 50, kernels: str = "builtin") -> float:
    """Median single-image latency (ms) with LiteRT on this CPU."""
    interpreter = _interpreter(model_bytes, kernels)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    interpreter.set_tensor(inp["index"], np.zeros([1] + list(shape), inp["dtype"]))
    interpreter.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def verify(model_bytes: bytes, f, images, labels=None, *, plan=None, float_bytes: bytes | None = None,
           latency_runs: int = 50, runtimes=("builtin", "xnnpack"), micro_images: int = 1000) -> dict:
    """Compare the TFLite model with the Keras F on ``images`` (float, as F takes them).

    ``runtimes`` (of :data:`RUNTIMES`) are each run on the images (TensorFlow Lite Micro, one image per
    invoke, on the first ``micro_images``); the builtin kernels always.

    Returns a JSON-able dict: argmax agreement (per runtime), top-1 of both (with labels),
    max |logit difference| (all logits and the winning logit), ops, float
    tensors, I/O types, the per-layer grid check (with ``plan``, from :func:`convert`), sizes and
    latencies (with ``float_bytes``, the float32 TFLite of the same F). For an F with several outputs (a
    detector) every output is compared instead (:func:`output_agreement`, per output and runtime);
    ``labels`` are then not used.
    """
    return _verify(model_bytes, f, images, labels, plan=plan, float_bytes=float_bytes, latency_runs=latency_runs,
                   runtimes=runtimes, micro_images=micro_images)[0]


def _verify(model_bytes, f, images, labels, *, plan, float_bytes, latency_runs, runtimes, micro_images,
            batch_size=250):
    """:func:`verify`'s report, F's outputs and ``{runtime: the TFLite model's outputs}`` (dequantized)."""
    images = np.asarray(images, np.float32)
    f = softmax_head(f)[0]  # the file stops at the logits a closing softmax reads (lowerable.softmax_head)
    ref = f.predict(images, batch_size=batch_size, verbose=0)
    batch = max(1, min(batch_size, len(images)))  # a runner holds buffers for its whole batch
    outs, details = {}, None
    for runtime in ("builtin",) + tuple(r for r in runtimes if r != "builtin"):
        if runtime not in outs:
            count = len(images) if runtime != "micro" else min(len(images), micro_images)
            run = runner(model_bytes, runtime, batch_size=batch)
            outs[runtime], details = run.outputs(images[:count]), run.output_details
    if isinstance(ref, (list, tuple)):  # several outputs: each compared
        ref = [np.asarray(r) for r in ref]
        names = list(getattr(f, "output_names", None) or [f"output_{i}" for i in range(len(ref))])
        if len(details) != len(ref):
            raise ValueError(f"F has {len(ref)} outputs, the TFLite model {len(details)}; export F itself.")
        report = {"images": int(len(images)), "outputs": names,
                  **output_agreement(ref, outs, details, names),  # TensorFlow Lite Micro: the first micro_images
                  **_model_facts(model_bytes)}
        _plan_and_size(report, model_bytes, plan, float_bytes, latency_runs, images.shape[1:])
        return report, ref, outs
    ref = np.asarray(ref)
    runner_out = outs["builtin"][0]
    win = ref.argmax(axis=1)
    agreement = {runtime: float(np.mean(out[0].argmax(axis=1) == win[:len(out[0])])) for runtime, out in outs.items()}
    report = {
        "images": int(len(images)),
        "kernels": "builtin (TFLite's optimized kernels, bit-identical to the reference kernels)",
        "argmax_agreement": agreement["builtin"],
        "argmax_agreement_xnnpack": agreement.get("xnnpack"),
        "agreement_per_runtime": agreement,  # images: all, TensorFlow Lite Micro: the first micro_images
        "max_abs_logit_diff": float(np.abs(runner_out - ref).max()),
        "max_abs_winning_logit_diff": float(np.abs(runner_out[np.arange(len(win)), win] - ref.max(axis=1)).max()),
        **_model_facts(model_bytes),
    }
    if labels is not None:
        labels = np.asarray(labels)
        report["top1_per_runtime"] = {runtime: float(np.mean(out[0].argmax(axis=1) == labels[:len(out[0])]))
                                      for runtime, out in outs.items()}
        report["top1_tflite"] = report["top1_per_runtime"]["builtin"]
        report["images_per_runtime"] = {runtime: int(len(out[0])) for runtime, out in outs.items()}
        report["top1_keras"] = float(np.mean(win == labels))
        report["top1_diff_pt"] = 100.0 * (report["top1_tflite"] - report["top1_keras"])
    _plan_and_size(report, model_bytes, plan, float_bytes, latency_runs, images.shape[1:])
    return report, [ref], outs


def output_agreement(ref, outs, details, names) -> dict:
    """Per output and runtime, the TFLite outputs ``outs`` (``{runtime: [arrays]}``, dequantized, on the
    first images) against F's ``ref`` (one array per output): ``agreement_per_output`` (the share of
    values whose integer code is F's value rounded to the output's scale and zero point: 1.0 means
    every code is F's, rounded), ``max_abs_diff_per_output`` (and in output steps) and
    ``mean_abs_diff_per_output``."""
    agreement, diff, steps, mean = {}, {}, {}, {}
    for j, name in enumerate(names):
        agreement[name], diff[name], steps[name], mean[name] = {}, {}, {}, {}
        detail = details[j]
        quantized = detail["dtype"] in (np.int8, np.int16)
        scale, zp = detail["quantization"] if quantized else (1.0, 0)
        for runtime, out in outs.items():
            f_val = ref[j][:len(out[j])].astype(np.float64)
            t_val = out[j].astype(np.float64)
            d = np.abs(t_val - f_val)
            diff[name][runtime] = float(d.max(initial=0.0))
            mean[name][runtime] = float(d.mean()) if d.size else 0.0
            if quantized:
                info = np.iinfo(detail["dtype"])
                f_code = np.clip(np.round(f_val / scale) + zp, info.min, info.max)
                agreement[name][runtime] = float(np.mean(np.round(t_val / scale) + zp == f_code))
                steps[name][runtime] = float(d.max(initial=0.0) / scale)
            else:
                agreement[name][runtime] = float(np.mean(d <= 1e-5 * np.maximum(1.0, np.abs(f_val))))
    return {"agreement_per_output": agreement, "max_abs_diff_per_output": diff,
            "max_abs_diff_steps_per_output": steps, "mean_abs_diff_per_output": mean}


def _model_facts(model_bytes: bytes) -> dict:
    return {"ops": model_ops(model_bytes), "float_tensors": float_tensors(model_bytes),
            "int16_tensors": len(int16_tensors(model_bytes)), "io_types": io_types(model_bytes),
            "size_bytes": len(model_bytes)}


def _plan_and_size(report, model_bytes, plan, float_bytes, latency_runs, shape):
    if plan is not None:
        report["grid_check"] = grid_check(model_bytes, plan)
        report["exact_activation_tensors"] = sum(t.grid is not None for t in plan.graph.tensors.values())
        report["notes"] = list(plan.notes)
    if float_bytes is not None:
        report["float32_size_bytes"] = len(float_bytes)
        report["size_ratio"] = len(model_bytes) / len(float_bytes)
        if latency_runs:
            for kernels in ("builtin", "xnnpack"):
                report[f"latency_ms_int8_{kernels}"] = latency_ms(model_bytes, shape, latency_runs, kernels)
                report[f"latency_ms_float32_{kernels}"] = latency_ms(float_bytes, shape, latency_runs, kernels)


def verify_detector(model_bytes: bytes, f, images, gt_boxes, gt_labels, anchors, num_classes: int, *,
                    plan=None, float_bytes: bytes | None = None, latency_runs: int = 0,
                    runtimes=("builtin", "xnnpack"), micro_images: int = 1000, batch_size: int = 8,
                    detect_kwargs=None) -> dict:
    """:func:`verify` of a detector's TFLite model (every output compared), plus the COCO AP, AP50 and AP75
    of F and of the TFLite model under each runtime on the same images: ``report["ap"] = {"keras": ...,
    runtime: ...}`` (``runtimes``, as in :func:`verify`). The same decoding and NMS
    (:func:`agq_keras.detection.postprocess.detect`, outside the model) run on F's outputs and on the
    TFLite model's dequantized outputs; TFLite's ``TFLite_Detection_PostProcess`` (a custom op) is not in
    the model. ``detect_kwargs``: score and IoU thresholds of :func:`~agq_keras.detection.postprocess.detect`;
    ``batch_size``: images per invoke (small: a detector's image-reading conv with input repeats needs a
    large im2col buffer, which LiteRT caps at 2^31 elements)."""
    from agq_keras.detection import evaluation

    images = np.asarray(images, np.float32)
    report, ref, outs = _verify(model_bytes, f, images, None, plan=plan, float_bytes=float_bytes,
                                latency_runs=latency_runs, runtimes=runtimes, micro_images=micro_images,
                                batch_size=batch_size)
    gt_boxes, gt_labels = np.asarray(gt_boxes), np.asarray(gt_labels)

    def ap(outputs):
        n = len(outputs[0])
        return evaluation.evaluate_outputs(outputs, gt_boxes[:n], gt_labels[:n], anchors, num_classes,
                                           images.shape[1:3], batch_size=batch_size, **(detect_kwargs or {}))

    report["ap"] = {"keras": ap(ref), **{runtime: ap(out) for runtime, out in outs.items()}}
    report["postprocess"] = ("decode + NMS outside the model (agq_keras.detection.postprocess.detect on the "
                             "dequantized outputs); TFLite_Detection_PostProcess (a custom op) is not used")
    return report


def expose(model_bytes: bytes, names) -> bytes:
    """The same model with the tensors ``names`` added to its outputs (nothing else changes), so that
    every runtime, a delegate included, has to write them: op-by-op comparison across runtimes."""
    m = _model(model_bytes)
    sub = m.subgraphs[0]
    index = {(t.name.decode() if isinstance(t.name, bytes) else t.name): i for i, t in enumerate(sub.tensors)}
    missing = [n for n in names if n not in index]
    if missing:
        raise KeyError(f"No tensor(s) {missing[:3]} in the model.")
    sub.outputs = np.asarray(list(sub.outputs) + [index[n] for n in names], np.int32)
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tensor_codes(model_bytes: bytes, names, images, runtime: str = "builtin") -> dict:
    """``{name: stored integer codes}`` of the tensors ``names`` for ``images`` under ``runtime`` (one of
    :data:`RUNTIMES`), read as extra outputs of the model (:func:`expose`)."""
    names = list(names)
    exposed = expose(model_bytes, names)
    run = runner(exposed, runtime, batch_size=len(images))  # a MicroRunner for "micro"
    out = {n: [] for n in names}
    batches = [images] if runtime != "micro" else [image[None] for image in images]
    for batch in batches:
        if runtime == "micro":
            run.interpreter.set_input(run.quantize(batch), 0)
            run.interpreter.invoke()
            for i, n in enumerate(names, start=1):
                out[n].append(np.array(run.interpreter.get_output(i)))
        else:
            it = run.interpreter
            it.set_tensor(run.input["index"], run.quantize(np.asarray(batch, np.float32)))
            it.invoke()
            details = {d["name"]: d["index"] for d in it.get_output_details()}
            for n in names:
                out[n].append(it.get_tensor(details[n]).copy())
    return {n: np.concatenate(v) for n, v in out.items()}


def tensor_agreement(model_bytes: bytes, f, plan, images, runtime: str = "reference") -> list:
    """Where F and the int8 model part: one row per integer tensor the model computes (graph order), with the
    fraction of its values whose stored code differs from F's value at the same place by more than half a step
    (``mismatch``) and the largest difference (``max_steps``; ``max_range``: as a part of the int8/int16 range).

    F's value is the output of the last Keras layer the op implements, rounded to the tensor's k-bit grid where
    it has one (F's consumer rounds it there; ``grid`` says ``"k-bit"``); a stream tensor's last layer is F's
    own stream quantizer (``"stream"``). A ``"calibrated"`` tensor (a float F tensor stored int8/int16) is never
    exact: read its ``max_range``. Ops whose last layer F calls more than once (a detector's shared head convs)
    have no single F value and are left out. ``images``: float images, as for :func:`verify`."""
    import keras

    records = {t.name: t for t in plan.tensors}
    ops = []
    for op in plan.graph.ops:
        if op.output not in records or records[op.output].quant is None:
            continue
        try:
            ops.append((op, f.get_layer(op.layer.split("+")[-1]).output))
        except (AttributeError, ValueError):  # a layer called more than once: no single output
            continue
    if not ops:
        return []
    codes = tensor_codes(model_bytes, [op.output for op, _ in ops], images, runtime=runtime)
    values = keras.Model(f.inputs, [out for _, out in ops]).predict(np.asarray(images, np.float32), verbose=0)
    values = values if isinstance(values, list) else [values]
    rows = []
    for (op, _), value in zip(ops, values):
        record, tensor = records[op.output], plan.graph.tensors[op.output]
        scale, zero = float(np.ravel(record.quant.scale)[0]), float(np.ravel(record.quant.zero_point)[0])
        ours = (codes[op.output].astype(np.float64) - zero) * scale
        ref = np.asarray(value, np.float64).reshape(ours.shape)
        if tensor.grid is not None:  # a signed grid is stored shifted by offset steps (export.lower)
            step, levels = tensor.grid
            ref = step * (np.clip(np.round(ref / step), -tensor.offset, levels - tensor.offset) + tensor.offset)
        steps = np.abs(ours - ref) / scale
        rows.append({"tensor": op.output, "op": op.kind, "layers": op.layer, "dtype": record.dtype,
                     "grid": "k-bit" if tensor.grid is not None else "stream" if tensor.stream_grid else "calibrated",
                     "mismatch": float(np.mean(steps > 0.5 + 1e-6)), "max_steps": float(steps.max(initial=0)),
                     "max_range": float(steps.max(initial=0)) / (65535 if record.dtype == "int16" else 255)})
    return rows
