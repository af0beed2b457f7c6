"""Exact integer TFLite export of residual nets: F's int16 stream (exact), F's int8 stream (exact, every
tensor int8: the Edge TPU), the float stream (closest; residual_bits=8 for the Edge TPU), the float32
twin, determinism."""

import importlib

import numpy as np
import pytest

import agq_keras
from agq_keras import export
from agq_keras.export import intmath

pytest.importorskip("ai_edge_litert")  # the `export` extra; CI installs it through the `test` extra

import export_checks  # noqa: E402
from export_checks import CALIB, check_explained, check_grid, convert_and_verify, explain, load_data, Family  # noqa: E402

verify_module = importlib.import_module("agq_keras.export.verify")  # the module (export.verify is the function)


@pytest.fixture(scope="module")
def data():
    return load_data()


@pytest.fixture(scope="module")
def trained(data):
    """{(kind, bits): F} for the residual nets, trained on first use: F's int16 stream (residual16)
    2-bit trained 25 steps, 3/4-bit from its weights with re-estimated BatchNorm statistics, F's int8
    stream (residual8, 2-bit) from its weights + 20 steps; the float stream (residual) 2-bit, and 8-bit
    from it (export_checks.Family)."""
    x, y = data[0][:800], data[1][:800]
    families = {"residual16": Family(x, y, "residual16"), "residual": Family(x, y, "residual")}
    families["residual8"] = families["residual16"]

    class Nets:  # trained on first use
        def __getitem__(self, key):
            return families[key[0]][key]

    return Nets()


@pytest.fixture(scope="module")
def float_stream_export(trained, data):
    """The default export (residual_bits=16) of the float-stream 2-bit F: (model bytes, plan, notes), shared
    by the tests that read it (the conversion is deterministic: test_conversion_is_deterministic)."""
    return export.convert(trained[("residual", 2)], data[0][:CALIB])


# Residual nets are exact with F's int16 stream (residual16): on 300 test images every disagreement with
# F is explained by a float32 tie in F or by the head's derived rounding budget, and the first 50 images
# are checked op by op, the int16 stream included (tests/export_checks.py). The float-stream
# residual F is exported closest, not exact (test_float_stream_residual_is_closest_and_says_so): its
# agreement floor (95 %; measured 99.x %) is a smoke bound, not a guarantee of the exporter.
CASES = [("residual16", 2), pytest.param("residual16", 3, marks=pytest.mark.slow),
         pytest.param("residual16", 4, marks=pytest.mark.slow),
         pytest.param("residual", 8, marks=pytest.mark.slow)]  # 3/4 and 8 bits: with the slow tests (CI runs both)
CLOSEST_FLOOR = 0.95


@pytest.mark.parametrize("kind,bits", CASES, ids=["residual16-2bit", "residual16-3bit", "residual16-4bit", "residual-8bit"])
def test_int8_model_matches_f(trained, data, kind, bits):
    f = trained[(kind, bits)]
    x, _, xt, yt = data
    model, plan, report = convert_and_verify(f, x, xt, yt)
    assert report["int16_tensors"] > 0  # residual nets keep their residual stream in int16 (16x8 kernels)
    # 300 images: the int16 residual models run the reference 16x8 kernels, ~10 ms per image
    if kind == "residual":
        agreement = np.mean(export.Runner(model)(xt[:300]).argmax(1) == f.predict(xt[:300], verbose=0).argmax(1))
        assert agreement >= CLOSEST_FLOOR, agreement
    else:
        check_explained(f, model, plan, xt[:300])
    check_grid(f, report, bits)


def test_int16_stream_is_exact_in_every_op(trained, data):
    """residual_stream="int16": every stream tensor has F's step as its int16 scale, and read back op by
    op, the integer stream equals F's FixedStep outputs, except where F's own float32 value sits at a
    rounding tie (tests/export_checks.py: the first differing tensor of an image must differ only at
    ties; later tensors inherit the difference)."""
    f, x, xt = trained[("residual16", 2)], data[0][:CALIB], data[2][:100]
    model, plan, notes = export.convert(f, x)
    assert not [n for n in notes if "residual stream" in n]
    steps = {layer.name: layer.step for layer in f.layers if isinstance(layer, agq_keras.quantizers.FixedStep)}
    streams = {op.output: op.layer.split("+")[-1] for op in plan.graph.ops if op.layer.split("+")[-1] in steps}
    assert len(streams) == len(steps) == 10
    for name, layer in streams.items():
        assert plan.stream_scales[name] == steps[layer] == plan.tensor(name).quant.scale[0]
        assert plan.graph.tensors[name].stream_grid is not None  # checked by explain() below
    unexplained, summary = explain(f, model, plan, xt)
    assert unexplained == [] and summary["images"] == len(xt), (unexplained[:5], summary)


def test_int8_stream_is_exact_on_every_runtime_with_no_int16_tensor(trained, data):
    """residual_stream="int8" (exported with the default residual_bits, F's own stream): no int16 tensor
    (the Edge TPU op check passes); every stream tensor has F's step as its int8 scale (zero point 0);
    every conv writing the stream is proven exact on every runtime (rank 0): the block convs and
    shortcuts with a margin of 1/(2N) output steps (N = 7 in stage 3), the stem (per-channel weight steps
    (stream step / input step) / N_c, N_c odd, 3 input repeats) with at least MIN_MARGIN. F's codes op by op
    (explain()), and reference, builtin, XNNPACK and TensorFlow Lite Micro write the same codes in every
    stream and k-bit tensor of every image."""
    pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    f, x, xt = trained[("residual8", 2)], data[0][:CALIB], data[2][:100]
    model, plan, notes = export.convert(f, x)
    assert verify_module.int16_tensors(model) == [] and export.edgetpu_report(model)["all_mappable"]
    steps = {layer.name: layer.step for layer in f.layers if isinstance(layer, agq_keras.quantizers.FixedStep)}
    streams = {op.output: op.layer.split("+")[-1] for op in plan.graph.ops if op.layer.split("+")[-1] in steps}
    assert len(streams) == len(steps) == 21
    for name, layer in streams.items():
        record = plan.tensor(name)
        assert record.dtype == "int8" and record.quant.zero_point == (0,)
        assert record.quant.scale[0] == pytest.approx(steps[layer], rel=1e-7)
    writers = {r.layer.split("+")[0]: r for r in plan.layers.values() if r.layer.endswith("_stream_q")}
    assert len(writers) == 12  # the stem, 9 block convs, 2 projection shortcuts
    for layer, record in writers.items():
        assert np.all(record.threshold_ranks == 0), layer
        assert np.min(record.margins) >= (intmath.MIN_MARGIN if layer == "stem_conv" else 1 / 14 - 1e-4), layer
    assert writers["stem_conv"].replicas == 3
    assert not [n for n in notes if "not exact" in n], notes
    unexplained, summary = explain(f, model, plan, xt)
    assert unexplained == [] and summary["images"] == len(xt), (unexplained[:5], summary)
    # the int8 head (the 8-bit map, the pool, the logits): check_int8_head; the map's 255 levels and the
    # logits are not proven on XNNPACK (docs/export.md), so the identity below covers the body
    head = {plan.graph.output, next(op.inputs[0] for op in plan.graph.ops if op.kind == "mean")}
    export_checks.check_int8_head(f, model, plan, xt[:20])
    names = [c[0] for c in export_checks._checked_tensors(f, plan.graph) if c[1] in ("grid", "stream")
             and c[0] not in head]
    assert names[0] == "stem_conv" and len(names) == 39  # + per block bn1, conv1 (k-bit), conv2, add (stream); 2 shortcuts
    codes = {rt: export.tensor_codes(model, names, xt[:20], rt) for rt in export.RUNTIMES}
    for rt in ("builtin", "xnnpack", "micro"):
        for name in names:
            assert np.array_equal(codes[rt][name], codes["reference"][name]), (rt, name)


def test_float_stream_residual_is_closest_and_says_so(float_stream_export):
    """The paper's residual F (float stream): stages after the first are still exact int16 streams
    (their convs share the 1/9 grid); the first stage holds the 16-bit stem's output, is calibrated,
    and the notes say so."""
    model, plan, notes = float_stream_export
    assert any("residual stream" in n and "residual_stream='int16'" in n for n in notes), notes
    assert "stage3_block2_add" in plan.stream_scales
    assert "stage1_block2_add" not in plan.stream_scales


def test_residual_int8_stream_is_edgetpu_mappable(trained, data, float_stream_export):
    """residual_bits=8: every tensor int8 (the Edge TPU op check passes); residual_bits=16 (default):
    the int16 residual stream is flagged; its agreement is higher (measured 92.0 vs 96.6 % at 2-bit)."""
    f, x, xt = trained[("residual", 2)], data[0][:CALIB], data[2][:300]
    int8_model = export.convert(f, x, residual_bits=8)[0]
    assert verify_module.int16_tensors(int8_model) == []
    assert export.edgetpu_report(int8_model)["all_mappable"]
    int16_model = float_stream_export[0]
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
    model, plan, _ = export.convert(f, data[0][:CALIB], mode="float32")
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


