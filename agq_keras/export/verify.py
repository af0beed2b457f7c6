"""Verification report of an exported model against the Keras F (LiteRT runtime)."""

from __future__ import annotations

import time

import numpy as np

from agq_keras.export.flatbuffer import schema  # one home for the schema bindings

FLOAT_TYPES = (schema.TensorType.FLOAT32, schema.TensorType.FLOAT16, schema.TensorType.FLOAT64)
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


KERNELS = ("builtin", "xnnpack")


def _interpreter(model_bytes: bytes, kernels: str = "builtin", preserve: bool = False):
    """A LiteRT interpreter; ``kernels="builtin"`` runs TFLite's own kernels (the reference
    fixed-point arithmetic, as TensorFlow Lite Micro), ``"xnnpack"`` adds the XNNPACK delegate."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as err:  # pragma: no cover
        raise ImportError("Running exported models needs LiteRT: pip install 'agq-keras[export]'") from err
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r} is not supported; allowed: {', '.join(KERNELS)}.")
    resolver = (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if kernels == "builtin" else OpResolverType.AUTO)
    return Interpreter(model_content=model_bytes, experimental_op_resolver_type=resolver,
                       experimental_preserve_all_tensors=preserve)


class Runner:
    """Batch inference of a one-input/one-output TFLite model with LiteRT.

    Float images go in, float outputs come out: an int8 input is quantized with
    the model's input scale/zero point, an int8 output dequantized.
    """

    def __init__(self, model_bytes: bytes, batch_size: int = 250, kernels: str = "builtin", preserve: bool = False):
        """``preserve=True`` keeps every intermediate tensor readable (:meth:`tensor`), slower."""
        self.interpreter = _interpreter(model_bytes, kernels, preserve)
        self.tensors = {d["name"]: d["index"] for d in self.interpreter.get_tensor_details()}
        self.batch_size = batch_size
        inp = self.interpreter.get_input_details()[0]
        self.interpreter.resize_tensor_input(inp["index"], [batch_size] + list(inp["shape"][1:]))
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def quantize(self, x):
        if self.input["dtype"] != np.int8:
            return x.astype(self.input["dtype"])
        scale, zp = self.input["quantization"]
        return np.clip(np.round(x / scale) + zp, -128, 127).astype(np.int8)

    def raw(self, images):
        """The raw output tensor (int8 codes for an int8 model)."""
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            n = len(batch)
            if n < self.batch_size:
                batch = np.concatenate([batch, np.zeros((self.batch_size - n,) + batch.shape[1:], batch.dtype)])
            self.interpreter.set_tensor(self.input["index"], self.quantize(batch))
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self.output["index"])[:n].copy())
        return np.concatenate(out)

    def tensor(self, name: str):
        """The stored codes of an intermediate tensor after the last batch (needs ``preserve=True``)."""
        if name not in self.tensors:
            raise KeyError(f"No tensor {name!r} in the model; it has {len(self.tensors)} tensors.")
        return self.interpreter.get_tensor(self.tensors[name]).copy()

    def __call__(self, images):
        raw = self.raw(np.asarray(images, np.float32))
        if self.output["dtype"] != np.int8:
            return raw.astype(np.float32)
        scale, zp = self.output["quantization"]
        return (raw.astype(np.float32) - zp) * scale


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
    m = _model(model_bytes)
    sub = m.subgraphs[0]
    name = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return {"input": name[sub.tensors[sub.inputs[0]].type], "output": name[sub.tensors[sub.outputs[0]].type]}


def grid_check(model_bytes: bytes, plan) -> list:
    """Per quantized conv/dense: the int8 weight codes read back from the flatbuffer.

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
        if rec.kind not in ("conv", "dense") or rec.float_weights is None:
            continue
        t = tensors.get(f"{rec.output}/weights")
        if t is None:
            continue
        codes = np.frombuffer(bytes(m.buffers[t.buffer].data), np.int8).reshape(t.shape).astype(np.int64)
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
           latency_runs: int = 50) -> dict:
    """Compare the TFLite model with the Keras F on ``images`` (float, as F takes them).

    Returns a JSON-able dict: argmax agreement, top-1 of both (with labels),
    max |logit difference| (all logits and the winning logit), ops, float
    tensors, I/O types, the per-layer grid check (with ``plan``, from :func:`convert`), sizes and
    latencies (with ``float_bytes``, the float32 TFLite of the same F).
    """
    images = np.asarray(images, np.float32)
    ref = np.asarray(f.predict(images, batch_size=250, verbose=0))
    batch = max(1, min(250, len(images)))  # a runner holds buffers for its whole batch
    runner_out = Runner(model_bytes, batch_size=batch)(images)
    win = ref.argmax(axis=1)
    report = {
        "images": int(len(images)),
        "kernels": "builtin (TFLite reference kernels, as TensorFlow Lite Micro)",
        "argmax_agreement": float(np.mean(runner_out.argmax(axis=1) == win)),
        # XNNPACK has no 16x8 kernels (it would fall back to the builtin ones): not run for int16 models
        "argmax_agreement_xnnpack": None if int16_tensors(model_bytes) else
        float(np.mean(Runner(model_bytes, batch_size=batch, kernels="xnnpack")(images).argmax(axis=1) == win)),
        "max_abs_logit_diff": float(np.abs(runner_out - ref).max()),
        "max_abs_winning_logit_diff": float(np.abs(runner_out[np.arange(len(win)), win] - ref.max(axis=1)).max()),
        "ops": model_ops(model_bytes),
        "float_tensors": float_tensors(model_bytes),
        "int16_tensors": len(int16_tensors(model_bytes)),
        "io_types": io_types(model_bytes),
        "size_bytes": len(model_bytes),
    }
    if labels is not None:
        labels = np.asarray(labels)
        report["top1_tflite"] = float(np.mean(runner_out.argmax(axis=1) == labels))
        report["top1_keras"] = float(np.mean(win == labels))
        report["top1_diff_pt"] = 100.0 * (report["top1_tflite"] - report["top1_keras"])
    if plan is not None:
        report["grid_check"] = grid_check(model_bytes, plan)
        report["exact_activation_tensors"] = sum(t.grid is not None for t in plan.graph.tensors.values())
        report["notes"] = list(plan.notes)
    if float_bytes is not None:
        report["float32_size_bytes"] = len(float_bytes)
        report["size_ratio"] = len(model_bytes) / len(float_bytes)
        if latency_runs:
            shape = images.shape[1:]
            for kernels in KERNELS:
                report[f"latency_ms_int8_{kernels}"] = latency_ms(model_bytes, shape, latency_runs, kernels)
                report[f"latency_ms_float32_{kernels}"] = latency_ms(float_bytes, shape, latency_runs, kernels)
    return report
