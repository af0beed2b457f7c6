"""Exact integer TFLite export: agreement with F, grids, ops, determinism, bad input."""

import importlib
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import agq_keras
from agq_keras import export
from agq_keras.data import fashion_mnist

verify_module = importlib.import_module("agq_keras.export.verify")  # the module (export.verify is the function)
tflite_module = importlib.import_module("agq_keras.export.tflite")

pytest.importorskip("ai_edge_litert")  # the `export` extra; CI installs it through the `test` extra

TRAIN, CALIB, TEST = 3000, 300, 1000
INT8_OPS = {"ADD", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MEAN", "MAX_POOL_2D",
            "QUANTIZE"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data():
    x, y = fashion_mnist.load("train", subset=TRAIN)
    xt, yt = fashion_mnist.load("test")
    return x.astype("float32") / 255.0, y, xt.astype("float32") / 255.0, yt


def _train(f, x, y, epochs):
    f.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    f.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return f


def _build(kind, bits):
    """kind: "plain", "residual" (the paper's float residual stream) or "residual16" (F quantizes its
    residual stream to int16, ``residual_stream="int16"``: the exactly exportable residual F)."""
    extra = {"residual_stream": "int16"} if kind == "residual16" else {}
    return agq_keras.build("resnet20", plain=kind == "plain", w_bits=bits, a_bits=bits, num_classes=10,
                           input_shape=(28, 28, 1), **extra)


@pytest.fixture(scope="module")
def trained(data):
    """{(kind, bits): F}. 2-bit nets and the plain 4-bit net train ~190 steps; the other widths start
    from the 2-bit weights and train 20 more steps (so their BatchNorm statistics fit their grid)."""
    x, y = data[0], data[1]
    keras.utils.set_random_seed(7)
    nets = {}
    for kind, bits in (("plain", 2), ("residual", 2), ("residual16", 2), ("plain", 4)):
        nets[(kind, bits)] = _train(_build(kind, bits), x, y, epochs=2)
    for kind, bits in [("plain", 1), ("plain", 3), ("plain", 8), ("residual", 8), ("residual16", 3),
                       ("residual16", 4)]:
        f = _build(kind, bits)
        f.set_weights(nets[(kind, 2)].get_weights())
        nets[(kind, bits)] = _train(f, x[:640], y[:640], epochs=1)
    return nets


# Agreement thresholds per case, on 1000 test images, set at or just under what was measured with these
# briefly trained nets (docs/export.md). Residual nets are exact with F's int16 stream (residual16); the
# float-stream residual F is exported closest (test_float_stream_residual_is_closest_and_says_so); at
# 8 bits it still agrees >= 99 %.
CASES = [("plain", 1, 0.99), ("plain", 2, 0.995), ("plain", 3, 0.99), ("plain", 4, 0.99), ("plain", 8, 0.99),
         ("residual16", 2, 0.99), ("residual16", 3, 0.99), ("residual16", 4, 0.99), ("residual", 8, 0.99)]


@pytest.mark.parametrize("kind,bits,threshold", CASES, ids=[f"{k}-{b}bit" for k, b, _ in CASES])
def test_int8_model_matches_f(trained, data, kind, bits, threshold):
    f = trained[(kind, bits)]
    x, _, xt, yt = data
    model, graph, _ = export.convert(f, x[:CALIB])
    report = export.verify(model, f, xt[:TEST], yt[:TEST], graph=graph, latency_runs=0)
    assert report["io_types"] == {"input": "INT8", "output": "INT8"}
    assert set(report["ops"]) <= INT8_OPS, report["ops"]
    assert report["float_tensors"] == []
    # residual nets keep their residual stream in int16 (16x8 kernels); plain nets are int8 throughout
    assert (report["int16_tensors"] > 0) == (kind != "plain")
    assert report["argmax_agreement"] >= threshold, report["argmax_agreement"]
    assert abs(report["top1_diff_pt"]) <= 1.0
    rows = {r["layer"].split("+")[0]: r for r in report["grid_check"]}
    quantized = [layer.name for layer in f.layers
                 if isinstance(layer, agq_keras.QConv2D) and layer.kernel_quantizer.bits == bits]
    assert quantized and all(name in rows for name in quantized)
    for name in quantized:
        row = rows[name]
        # codes * scale reproduce q(W) * BN-fold exactly, with at most 2^k codes per channel
        assert row["on_grid"], row
        assert row["levels_max"] <= 2 ** bits
        assert row["max_rel_error"] < 1e-5
    # the 16-bit first/last layers are exact through repeated inputs (see docs/export.md)
    assert rows["stem_conv"]["on_grid"] and rows["classifier"]["on_grid"]


def test_plain_2bit_agreement_on_10k_test_images(trained, data):
    """On all 10 000 test images: |top-1 difference| <= 0.2 pt and >= 99 % argmax agreement.

    This net trains ~190 steps on 3000 images and measured 99.41 %; the acceptance number
    (>= 99.5 %) is measured with scripts/export_tflite.py --verify on a net trained one epoch
    (99.68 %, see docs/export.md)."""
    f = trained[("plain", 2)]
    x, _, xt, yt = data
    model, graph, _ = export.convert(f, x[:CALIB])
    report = export.verify(model, f, xt, yt, graph=graph, latency_runs=0)
    assert report["images"] == 10000
    assert report["argmax_agreement"] >= 0.99, report["argmax_agreement"]
    assert abs(report["top1_diff_pt"]) <= 0.2, report["top1_diff_pt"]


def test_int16_head_option(trained, data):
    """head_bits=16: the last feature map and the pooled features are int16 (16x8 kernels, then a
    QUANTIZE to the int8 logits); int8 I/O and the agreement threshold still hold; bad values say so."""
    f, x, xt, yt = trained[("plain", 2)], data[0][:CALIB], data[2][:TEST], data[3][:TEST]
    model, graph, _ = export.convert(f, x, head_bits=16)
    report = export.verify(model, f, xt, yt, graph=graph, latency_runs=0)
    assert report["int16_tensors"] > 0 and report["io_types"] == {"input": "INT8", "output": "INT8"}
    assert report["argmax_agreement"] >= 0.99, report["argmax_agreement"]  # measured 99.4 % (the int8 head: >= 99.5 %, test above)
    assert verify_module.int16_tensors(export.convert(f, x)[0]) == []  # the default plain model stays int8
    with pytest.raises(ValueError, match="head_bits=4 is not supported"):
        export.convert(f, x, head_bits=4)


def test_weight_codes_are_dorefa_grid(trained, data):
    """Read the int8 codes back: per channel they are m * {±1, ±3} (2-bit DoReFa)."""
    f = trained[("plain", 2)]
    model, graph, _ = export.convert(f, data[0][:CALIB])
    flat = verify_module._model(model)
    sub = flat.subgraphs[0]
    name = "stage2_block1_conv1/weights"
    t = next(t for t in sub.tensors if t.name.decode() == name)
    buf = flat.buffers[t.buffer]
    codes = np.frombuffer(bytes(buf.data), np.int8).reshape(t.shape).astype(int)
    op = next(o for o in graph.ops if o.output == "stage2_block1_conv1")
    codes = codes.reshape(codes.shape[:-1] + (op.replicas, -1)).sum(axis=-2)
    for row in codes.reshape(codes.shape[0], -1):
        m = np.gcd.reduce(np.abs(row))
        assert set(np.unique(row // m)) <= {-3, -1, 1, 3}


def test_int16_stream_is_exact_in_every_op(trained, data):
    """residual_stream="int16": every stream tensor has F's step as its int16 scale, every conv
    writing the stream has an integer output multiplier, and read back op by op, the integer stream
    equals F's FixedStep outputs except where F's float32 stem lands within float error of a
    rounding tie (a handful of elements in 200 images)."""
    f, x, xt = trained[("residual16", 2)], data[0][:CALIB], data[2][:200]
    model, graph, notes = export.convert(f, x)
    assert not [n for n in notes if "residual stream" in n]
    steps = {layer.name: layer.step for layer in f.layers if isinstance(layer, agq_keras.quantizers.FixedStep)}
    streams = {op.output: op.layer.split("+")[-1] for op in graph.ops if op.layer.split("+")[-1] in steps}
    assert len(streams) == len(steps) == 10
    for name, layer in streams.items():
        assert graph.tensors[name].stream_scale == steps[layer]
    outputs = keras.Model(f.inputs, [f.get_layer(layer).output for layer in streams.values()]).predict(xt, verbose=0)
    runner = export.Runner(model, batch_size=1, preserve=True)
    mismatched = 0
    for i, image in enumerate(xt):
        runner.raw(image[None])
        for (name, layer), keras_out in zip(streams.items(), outputs):
            codes = runner.tensor(name).astype(np.int64)
            mismatched += int(np.sum(codes != np.round(keras_out[i:i + 1] / steps[layer])))
    assert mismatched <= 0.01 * len(xt) * 16 * 28 * 28, mismatched


def test_float_stream_residual_is_closest_and_says_so(trained, data):
    """The paper's residual F (float stream): stages after the first are still exact int16 streams
    (their convs share the 1/9 grid); the first stage holds the 16-bit stem's output, is calibrated,
    and the notes say so."""
    f = trained[("residual", 2)]
    model, graph, notes = export.convert(f, data[0][:CALIB])
    assert any("residual stream" in n and "residual_stream='int16'" in n for n in notes), notes
    assert graph.tensors["stage3_block2_add"].stream_scale is not None
    assert graph.tensors["stage1_block2_add"].stream_scale is None


def test_residual_int8_stream_is_edgetpu_mappable(trained, data):
    """residual_bits=8: every tensor int8 (the Edge TPU op check passes); residual_bits=16 (default):
    the int16 residual stream is flagged; its agreement is higher (measured 92.0 vs 96.6 % at 2-bit)."""
    f, x, xt = trained[("residual", 2)], data[0][:CALIB], data[2][:300]
    int8_model = export.convert(f, x, residual_bits=8)[0]
    assert verify_module.int16_tensors(int8_model) == []
    assert export.edgetpu_report(int8_model)["all_mappable"]
    int16_model = export.convert(f, x)[0]
    report = export.edgetpu_report(int16_model)
    assert not report["all_mappable"] and any("int16" in u for u in report["unsupported"])
    ref = f.predict(xt, verbose=0).argmax(1)
    agree8 = np.mean(export.Runner(int8_model)(xt).argmax(1) == ref)
    agree16 = np.mean(export.Runner(int16_model)(xt).argmax(1) == ref)
    assert agree16 > agree8, (agree16, agree8)
    with pytest.raises(ValueError, match="residual_bits"):
        export.convert(f, x, residual_bits=4)


def test_float32_twin_matches_f(trained, data):
    f = trained[("residual", 2)]
    model, graph, _ = export.convert(f, data[0][:CALIB], mode="float32")
    out = export.Runner(model)(data[2][:500])
    ref = f.predict(data[2][:500], verbose=0)
    # float rounding can move a value across a k-bit threshold now and then; nearly all logits match
    assert np.median(np.abs(out - ref)) < 1e-4
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.99
    assert "ROUND" in export.model_ops(model)


def test_conversion_is_deterministic(trained, data, tmp_path):
    f = trained[("residual", 2)]
    path = tmp_path / "f.keras"
    f.save(path)
    a = export.convert(str(path), data[0][:CALIB])[0]
    b = export.convert(str(path), data[0][:CALIB])[0]
    assert a == b


def test_trainer_exports_f(data):
    trainer = agq_keras.build("resnet20", plain=True, aux=True, w_bits=2, a_bits=2, num_classes=10,
                              input_shape=(28, 28, 1))
    model, _, notes = export.convert(trainer, data[0][:64])
    assert any("exported its deployable network F" in n for n in notes)
    assert model == export.convert(trainer.f, data[0][:64])[0]


def test_edgetpu_check_and_c_array(trained, data, tmp_path):
    model = export.convert(trained[("plain", 2)], data[0][:CALIB])[0]
    report = export.edgetpu_report(model)
    assert report["all_mappable"] and report["unsupported"] == []
    assert "not run" in report["compiler"]
    source, header = export.c_array(model, "agq_model")
    assert "alignas(16) const unsigned char agq_model[]" in source
    assert f"const unsigned int agq_model_len = {len(model)};" in source
    assert "extern const unsigned char agq_model[];" in header
    # the C array compiles and holds exactly the model bytes
    (tmp_path / "agq_model.h").write_text(header)
    (tmp_path / "agq_model.cc").write_text(source)
    (tmp_path / "main.cc").write_text('#include <cstdio>\n#include "agq_model.h"\nint main(){'
                                      'fwrite(agq_model, 1, agq_model_len, stdout); return 0;}\n')
    exe = tmp_path / "dump"
    subprocess.run(["g++", "-std=c++17", "-o", str(exe), str(tmp_path / "main.cc"), str(tmp_path / "agq_model.cc")],
                   check=True)
    assert subprocess.run([str(exe)], check=True, capture_output=True).stdout == model
    with pytest.raises(ValueError, match="not a valid C identifier"):
        export.c_array(model, "1bad")


def test_tflite_micro_runs_the_model(trained, data):
    runtime = pytest.importorskip("tflite_micro.python.tflite_micro.runtime",
                                  reason="PyPI tflite-micro is optional (pip install tflite-micro)")
    model = export.convert(trained[("plain", 2)], data[0][:CALIB])[0]
    micro = runtime.Interpreter.from_bytes(model, arena_size=8_000_000)
    lite = export.Runner(model, batch_size=1)
    for image in data[2][:20]:
        x = lite.quantize(image[None])
        micro.set_input(x, 0)
        micro.invoke()
        assert np.array_equal(micro.get_output(0), lite.raw(image[None]))


# -- bad input --------------------------------------------------------------------------------
def test_bad_inputs(trained, data, tmp_path):
    f = trained[("plain", 2)]
    x = data[0][:CALIB]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.convert(str(tmp_path / "missing.keras"), x)
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="could not be loaded as a Keras model"):
        export.convert(str(junk), x)
    text = tmp_path / "model.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a Keras model file"):
        export.convert(str(text), x)
    with pytest.raises(ValueError, match=r"has shape \(300, 28, 28\)"):
        export.convert(f, x[..., 0])
    with pytest.raises(ValueError, match="max_replicas"):
        export.convert(f, x, max_replicas=0)
    with pytest.raises(ValueError, match="mode="):
        export.convert(f, x, mode="int4")
    with pytest.raises(FileNotFoundError, match="Output directory"):
        export.save_atomic(b"abc", str(tmp_path / "nope" / "f.tflite"))
    assert not (tmp_path / "nope").exists()


def test_unsupported_layer_is_named():
    inputs = keras.Input((8, 8, 1))
    y = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    y = keras.layers.Activation("sigmoid", name="squash")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    model = keras.Model(inputs, keras.layers.Dense(2)(y))
    with pytest.raises(ValueError, match="'squash' \\(Activation\\)"):
        export.convert(model, np.zeros((4, 8, 8, 1), np.float32))


def test_script_writes_model_report_and_c_array(trained, tmp_path):
    path = tmp_path / "f.keras"
    trained[("plain", 2)].save(path)
    out = tmp_path / "f.tflite"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "export_tflite.py"), f"--model={path}", f"--output={out}",
           "--verify", "--verify_images=300", "--calibration_images=200", "--latency_runs=3", "--c_array"]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.exists() and (tmp_path / "f.json").exists() and (tmp_path / "f.cc").exists()
    assert "argmax_agreement" in result.stdout
    # a missing output directory: clear error, nothing written
    bad = tmp_path / "missing" / "f.tflite"
    result = subprocess.run(cmd[:3] + [f"--output={bad}"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode != 0 and "Output directory" in result.stderr
    assert not bad.parent.exists()


# -- other quantizers -----------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["lsq", "pact", "bireal"])
def test_lsq_pact_and_bireal_nets_export_exactly(data, family):
    """LSQ (learned-step weights and activations), PACT (learned clip) and Bi-Real (±alpha per
    channel weights, sign activations; plain birealnet20) export with their grids: codes on the grid,
    exact thresholds (or an exact sign threshold) in every conv after the stem, int8 I/O. Where the
    int8 model disagrees with F, F's top-2 logits are within two int8 output steps (the int8
    logits' resolution, not the body); LSQ also agrees >= 99 %."""
    x, y, xt, yt = data
    keras.utils.set_random_seed(3)
    arch, bits = ("birealnet20", 1) if family == "bireal" else ("resnet20", 2)
    f = _train(agq_keras.build(arch, plain=True, quantizer=family, w_bits=bits, a_bits=bits, num_classes=10,
                               input_shape=(28, 28, 1)), x, y, epochs=1)
    model, graph, notes = export.convert(f, x[:CALIB])
    assert not [n for n in notes if "stage" in n], notes  # no fallback inside the blocks
    report = export.verify(model, f, xt[:TEST], yt[:TEST], graph=graph, latency_runs=0)
    assert report["float_tensors"] == [] and report["io_types"] == {"input": "INT8", "output": "INT8"}
    rows = [r for r in report["grid_check"] if r["layer"].startswith("stage")]
    assert rows and all(r["on_grid"] and r["levels_max"] <= 2**bits for r in rows), rows
    if family == "lsq":
        assert report["argmax_agreement"] >= 0.99, report["argmax_agreement"]
    runner = export.Runner(model)
    ref = f.predict(xt[:TEST], verbose=0)
    disagree = runner(xt[:TEST]).argmax(1) != ref.argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    step = runner.output["quantization"][0]
    assert np.all(top2[disagree, 1] - top2[disagree, 0] < 2 * step), (disagree.sum(), step)
    # the body is exact: after the 16-bit stem (docs/export.md, Limits), every channel of every conv
    # writing a k-bit tensor has thresholds proven equal to F's for every accumulator value; sign()
    # outputs are exact by construction (tflite._Writer._sign_weights) and read back equal to F's
    body = [op for op in graph.ops if graph.tensors[op.output].grid is not None and op.inputs[0] != graph.input]
    assert all(op.threshold_ranks.max() <= 1 for op in body), [op.layer for op in body
                                                               if op.threshold_ranks.max() > 1]
    signs = [op for op in graph.ops if graph.tensors[op.output].sign]
    assert bool(body) != bool(signs) and (family == "bireal") == bool(signs)
    if signs:
        pre = keras.Model(f.inputs, [f.get_layer(op.layer.split("+")[-1]).output for op in signs]).predict(
            xt[:50], verbose=0)
        probe = export.Runner(model, batch_size=1, preserve=True)
        mismatched = 0
        for i, image in enumerate(xt[:50]):
            probe.raw(image[None])
            for op, value in zip(signs, pre):
                codes = probe.tensor(op.output).astype(np.int64) - tflite_module.SIGN_ZERO_POINT
                mismatched += int(np.sum(codes != np.where(value[i:i + 1] >= 0, 1, -1)))
        assert mismatched == 0, mismatched


def test_lqnet_falls_back_to_the_closest_int8_and_says_so(data):
    """LQ-Net's learned non-uniform levels are not an int8 grid: closest per-channel int8, noted."""
    f = agq_keras.build("resnet20", plain=True, quantizer="lqnet", w_bits=2, a_bits=2, num_classes=10,
                        input_shape=(28, 28, 1))
    model, graph, notes = export.convert(f, data[0][:64])
    assert any("stage1_block1_conv1" in n and "closest, not exact" in n for n in notes), notes
    assert export.model_ops(model) and verify_module.float_tensors(model) == []
