"""The exporter on F from agq_keras.quantize: depthwise convs, PAD, ReLU6, Activation and Dropout layers
(DEPTHWISE_CONV_2D with F's weight codes, PAD at its input's scale and zero point, fused RELU6)."""

import numpy as np
import pytest
import keras

pytest.importorskip("ai_edge_litert")
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from agq_keras import export  # noqa: E402
from agq_keras.auxiliary import attach  # noqa: E402
from agq_keras.export.lower import lower  # noqa: E402
from agq_keras.models.quantize import quantize  # noqa: E402
from agq_keras.training.callbacks import reestimate_batch_norm  # noqa: E402

RNG = np.random.default_rng(0)
IMAGES = np.round(RNG.random((160, 16, 16, 3)) * 255).astype("float32") / 255  # on the int8 input grid


def _details(model: bytes) -> dict:
    """The interpreter's tensor details of a TFLite model, by tensor name."""
    return {d["name"]: d for d in Interpreter(model_content=model).get_tensor_details()}


def _tiny(depth_multiplier=1):
    """stem -> BN -> ReLU6 -> pad -> depthwise (stride 2) -> BN -> ReLU -> 1x1 project -> BN -> GAP -> Dense."""
    x = inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="b1_pad")(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, depth_multiplier=depth_multiplier, use_bias=False, name="b1_dw")(x)
    x = keras.layers.BatchNormalization(name="b1_dw_bn")(x)
    x = keras.layers.Activation("relu", name="b1_dw_relu")(x)
    x = keras.layers.Conv2D(16, 1, use_bias=False, name="b1_project")(x)
    x = keras.layers.BatchNormalization(name="b1_project_bn")(x)
    x = keras.layers.ReLU(name="b1_relu")(x)
    x = keras.layers.Dropout(0.2, name="drop")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x), name="tiny")


def _f(depth_multiplier=1, **kwargs):
    """The tiny net at 2 bits with DoReFa's fixed grids (activation step 1/3), which the op-by-op checks below
    spell out; the default LSQ recipe's export: test_default_recipe_exports_fs_codes."""
    keras.utils.set_random_seed(1)
    kwargs.setdefault("quantizer", "dorefa")
    f = quantize(_tiny(depth_multiplier), w_bits=2, a_bits=2, first_last_bits=8, **kwargs)
    import tensorflow as tf

    f(IMAGES[:64], training=True)  # sets the 8-bit head's static ranges, as training does (convert refuses unset ones)
    reestimate_batch_norm(f, tf.data.Dataset.from_tensor_slices(IMAGES[:64]).batch(32), 2)  # a live, normalized net
    return f


def test_lowering_of_depthwise_pad_relu6_and_dropout():
    graph = lower(_f())
    kinds = [(op.kind, op.layer) for op in graph.ops]
    assert kinds[:4] == [("conv", "stem+stem_bn+stem_relu"), ("pad", "b1_pad"), ("dwconv", "b1_dw+b1_dw_bn+b1_dw_relu"),
                         ("conv", "b1_project+b1_project_bn+b1_relu")]
    stem, pad, dw = graph.ops[:3]
    assert stem.relu and stem.relu_cap == 6.0 and dw.relu and dw.relu_cap is None
    assert pad.paddings == ((0, 1), (0, 1)) and dw.strides == (2, 2) and dw.padding == "VALID"
    assert dw.codes.shape == (8, 3, 3, 1) and dw.exact_weights  # (C*M, kh, kw, 1), F's 2-bit grid codes
    # the pad's input takes the grid the depthwise conv wants, and the pad output keeps it
    assert graph.tensors["stem"].grid == graph.tensors["b1_pad"].grid == (1 / 3, 3.0)


@pytest.mark.parametrize("depth_multiplier", [1, 2])
def test_float32_export_computes_f(depth_multiplier):
    """The float32 TFLite of the lowered graph (F's rounding included, up to the 8-bit head's pooled grid) equals F
    before its last rounding: the ops' semantics. The float32 twin does not round or clip the logits onto F's
    signed 8-bit grid (``logits_q``), a known gap of the float32 twin: F's own ``logits_q`` applied to its output
    gives F's logits. (Until convert refused unset static ranges, this test ran with the head's ranges at 0, where
    F's output was the classifier's bias alone.)"""
    f = _f(depth_multiplier)
    model, _, _ = export.convert(f, IMAGES[:32], mode="float32")
    out = export.runner(model, "builtin")(IMAGES[64:])
    before_rounding = keras.Model(f.inputs, f.get_layer("logits").output)
    np.testing.assert_allclose(out, np.asarray(before_rounding.predict(IMAGES[64:], verbose=0)), atol=2e-4)
    rounded = np.asarray(f.predict(IMAGES[64:], verbose=0))
    logits_q = f.get_layer("logits_q")
    step = float(logits_q.step())
    requantized = np.asarray(logits_q(out))
    assert np.mean(np.isclose(requantized, rounded, atol=1e-5)) > 0.99  # ties at F's float32 boundaries aside
    assert np.abs(requantized - rounded).max() <= step + 1e-5 and np.ptp(rounded) > 10 * step  # a live head


def test_int8_depthwise_writes_fs_codes_and_pad_keeps_its_scale():
    """The 2-bit grid tensors F rounds (the stem's ReLU6 output, its padding, the depthwise conv's output) hold F's
    codes in the int8 model (reference kernels); PAD's output has its input's scale and zero point (zeros are the
    zero point: real 0)."""
    f = _f()
    model, plan, _ = export.convert(f, IMAGES[:64])
    assert {"DEPTHWISE_CONV_2D", "PAD", "CONV_2D"} <= set(export.model_ops(model))
    names = ["stem", "b1_pad", "b1_dw"]
    codes = export.tensor_codes(model, names, IMAGES[64:], "reference")
    quant = {name: d["quantization"] for name, d in _details(model).items()}
    assert quant["b1_pad"] == quant["stem"] and np.allclose(quant["stem"], (1 / 3, 124))
    probe = keras.Model(f.inputs, [f.get_layer("stem_relu").output, f.get_layer("b1_dw_relu").output])
    stem_f, dw_f = (np.asarray(v, np.float64) for v in probe(IMAGES[64:]))
    dw_q = f.get_layer("b1_project").input_quantizer
    for name, value in (("stem", stem_f), ("b1_dw", dw_f)):
        x = np.clip(value, 0.0, 1.0) * 3
        f_codes = np.asarray(dw_q(value.astype("float32")), np.float64) * 3
        ours = codes[name].astype(np.int64) - 124
        differ = np.round(f_codes) != ours
        at_tie = np.abs(np.abs(x - np.floor(x)) - 0.5) < 1e-4
        assert np.all(at_tie[differ]), (name, int(differ.sum()))
    padded = codes["b1_pad"].astype(np.int64)
    assert np.all(padded[:, -1, :, :] == 124) and np.all(padded[:, :, -1, :] == 124)
    np.testing.assert_array_equal(padded[:, :-1, :-1, :], codes["stem"])


@pytest.mark.slow
@pytest.mark.parametrize("app", ["MobileNetV2", "ResNet50V2"])
def test_keras_applications_quantize_attach_fit_export(app):
    """keras.applications nets (weights=None, 32x32, 10 classes) go through quantize -> attach -> one fit step ->
    export; the float32 export of the paper's F (16-bit edges, float stream) computes it (the lowering is right). Agreement of the int8 model with F on random
    inputs is measured by benchmarks/any_model_export.py (docs/export.md, "Any model"), not asserted here."""
    keras.utils.set_random_seed(0)
    kwargs = dict(alpha=0.35) if app == "MobileNetV2" else {}
    base = getattr(keras.applications, app)(weights=None, input_shape=(32, 32, 3), classes=10,
                                            classifier_activation=None, **kwargs)
    f = quantize(base, w_bits=4, a_bits=4, first_last_bits=8, stream_bits=8)
    trainer = attach(f)
    trainer.compile()
    x = np.round(RNG.random((16, 32, 32, 3)) * 255).astype("float32") / 255
    history = trainer.fit(x, np.arange(16) % 10, epochs=1, batch_size=16, verbose=0).history
    assert np.isfinite(history["loss"][0]) and np.isfinite(history["h_loss"][0])
    model, plan, _ = export.convert(f, x)
    assert "DEPTHWISE_CONV_2D" in export.model_ops(model) or app == "ResNet50V2"
    report = export.verify(model, f, x, runtimes=("reference",), latency_runs=0)
    assert set(report["agreement_per_runtime"]) == {"builtin", "reference"}
    # the float32 twin rounds F's k-bit grids but not its 8-bit streams: check the lowering on the paper's F
    # (16-bit edges, float stream), whose float32 twin computes F
    plain = quantize(base, w_bits=4, a_bits=4)
    f32, _, _ = export.convert(plain, x, mode="float32")
    ref = np.asarray(plain.predict(x, verbose=0))
    np.testing.assert_allclose(export.runner(f32, "builtin")(x), ref, atol=1e-3 * max(1.0, np.abs(ref).max()))


def test_tensor_agreement_finds_where_f_and_the_model_part():
    """export.tensor_agreement: the exact k-bit tensors of the tiny net hold F's codes (rows in graph order), and
    after one of F's kernels changes, the first row that parts is that layer's output, the rows before it still
    agree."""
    f = _f()
    model, plan, _ = export.convert(f, IMAGES[:64])
    rows = export.tensor_agreement(model, f, plan, IMAGES[64:96])
    assert [r["tensor"] for r in rows][:3] == ["stem", "b1_pad", "b1_dw"]
    assert all(r["grid"] == "k-bit" and r["dtype"] == "int8" for r in rows[:3])
    assert [r["mismatch"] for r in rows[:2]] == [0.0, 0.0] and rows[2]["mismatch"] < 0.01
    layer = f.get_layer("b1_dw")
    kernel = layer.get_weights()
    layer.set_weights([-w for w in kernel])  # F changes, the exported model does not
    parted = export.tensor_agreement(model, f, plan, IMAGES[64:96])
    assert [r["mismatch"] for r in parted[:2]] == [0.0, 0.0]
    assert parted[2]["tensor"] == "b1_dw" and parted[2]["mismatch"] > 0.1 and parted[2]["max_steps"] >= 1


def test_default_recipe_exports_fs_codes():
    """quantize()'s default recipe (LSQ: per-channel learned weight steps, activation steps from the data, the ReLU6
    reader's grid on [0, 6]) exports through the same grid protocol: every conv's int8 weights are F's codes, with
    F's per-channel steps as the TFLite per-channel scales, and the k-bit tensors hold F's codes."""
    keras.utils.set_random_seed(1)
    f = quantize(_tiny(), w_bits=4, a_bits=4, first_last_bits=8)
    f(IMAGES[:32], training=True)  # a training pass sets the activation steps from the data
    reestimate_batch_norm(f, tf.data.Dataset.from_tensor_slices(IMAGES[:64]).batch(32), 2)
    dw = f.get_layer("b1_dw")
    assert dw.input_quantizer.learned_step() == pytest.approx(6 / 15)  # ReLU6 -> pad -> depthwise: [0, 6]
    steps = dw.kernel_quantizer.learned_step()
    assert steps.shape == (8,) and len(np.unique(steps)) == 8  # one learned step per channel
    graph = lower(f)
    for op in graph.ops:
        if op.kind in ("conv", "dwconv") and op.layer.split("+")[0] in ("b1_dw", "b1_project"):
            assert op.exact_weights, op.layer
    np.testing.assert_allclose(graph.tensors["b1_pad"].grid[0], 6 / 15, rtol=1e-6)
    model, plan, _ = export.convert(f, IMAGES[:64])
    rows = export.tensor_agreement(model, f, plan, IMAGES[64:96])
    kbit = [r for r in rows if r["grid"] == "k-bit"]
    assert [r["tensor"] for r in kbit][:3] == ["stem", "b1_pad", "b1_dw"]
    # DoReFa's 1/3 grid reproduces the stem's codes exactly (the test above); a learned float32 step leaves a few
    # values within the int8 requantizer's rounding of a tie (measured: 4.6e-5 of the stem's values)
    assert all(r["mismatch"] < 1e-3 for r in kbit[:2]) and kbit[2]["mismatch"] < 0.01


def _bottleneck():
    """stem -> BN -> ReLU6 -> 1x1 project -> BN (a linear bottleneck: F keeps it float) -> 1x1 expand -> BN -> ReLU
    -> GAP -> Dense: the project conv reads F's exact k-bit grid and writes a calibrated int16 tensor."""
    x = inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    x = keras.layers.Conv2D(6, 1, use_bias=False, name="project")(x)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.Conv2D(12, 1, use_bias=False, name="expand")(x)
    x = keras.layers.BatchNormalization(name="expand_bn")(x)
    x = keras.layers.ReLU(6.0, name="expand_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x), name="bottleneck")


def test_calibrated_int16_output_reads_a_widened_input_copy():
    """A conv writing a calibrated int16 tensor (the linear bottleneck) from F's exact k-bit int8 grid reads an int16
    copy of that grid with its codes times 2^13 (QUANTIZE, exact), so its int64 bias holds F's folded bias to
    1/8192 of an accumulator unit: its int16 output is F's float value to about one int16 step (rounding the bias to
    whole accumulator units put it hundreds of steps off)."""
    keras.utils.set_random_seed(1)
    f = quantize(_bottleneck(), quantizer="dorefa", w_bits=2, a_bits=2, first_last_bits=8)
    f(IMAGES[:64], training=True)  # the head's static ranges, as training sets them
    reestimate_batch_norm(f, tf.data.Dataset.from_tensor_slices(IMAGES[:64]).batch(32), 2)
    bn = f.get_layer("project_bn")  # betas off whole accumulator units, as after training
    bn.beta.assign(np.linspace(-0.37, 0.41, bn.beta.shape[0]).astype("float32"))
    model, plan, _ = export.convert(f, IMAGES[:64])
    details = _details(model)
    (copy,) = [n for n in details if n.endswith("/as_int16x8192")]  # 2-bit grid: codes 0..3, times 2^13
    stem = copy.split("/as_int16")[0]
    assert details[copy]["dtype"] == np.int16
    np.testing.assert_allclose(details[copy]["quantization"][0] * 8192, details[stem]["quantization"][0], rtol=1e-6)
    codes = export.tensor_codes(model, [stem, copy], IMAGES[64:96], "reference")
    np.testing.assert_array_equal(codes[copy].astype(np.int64),
                                  (codes[stem].astype(np.int64) - details[stem]["quantization"][1]) * 8192)
    rows = {r["tensor"]: r for r in export.tensor_agreement(model, f, plan, IMAGES[64:96])}
    assert rows[stem]["mismatch"] == 0.0  # the input is exact ...
    project = [r for r in rows.values() if r["layers"].startswith("project")][0]
    assert project["grid"] == "calibrated" and project["dtype"] == "int16"
    assert project["max_steps"] <= 2.0, project  # ... and so is the bottleneck, to about one int16 step


def _signed_input(expand_kernel=1):
    """stem (8-bit LSQ weights) -> BN -> expand (4-bit LSQ weights, a *signed* 4-bit LSQ input: no ReLU before it,
    a linear bottleneck) -> BN -> ReLU -> GAP -> Dense."""
    from agq_keras import quantizers
    from agq_keras.layers import QConv2D

    x = inputs = keras.Input((16, 16, 3), name="image")
    x = QConv2D(8, 3, padding="same", kernel_quantizer=quantizers.LSQWeight(8), name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = QConv2D(12, expand_kernel, padding="same", kernel_quantizer=quantizers.LSQWeight(4),
                input_quantizer=quantizers.LSQActivation(4, signed=True), name="expand")(x)
    x = keras.layers.BatchNormalization(name="expand_bn")(x)
    x = keras.layers.ReLU(name="expand_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    f = keras.Model(inputs, keras.layers.Dense(5, name="logits")(x), name="signed")
    f(IMAGES[:32], training=True)  # the LSQ steps from the data
    reestimate_batch_norm(f, tf.data.Dataset.from_tensor_slices(IMAGES[:64]).batch(32), 2)
    return f


def test_signed_activation_grid_is_stored_shifted_and_exact():
    """A signed k-bit input grid (codes -8 .. 7 at 4 bits) is stored as F's value + 8 steps on the unsigned grid
    (the stem adds the shift to its bias and fuses a ReLU), and the 1x1 expand conv takes 8 * sum(codes) off its
    int32 bias: the int8 tensor holds F's codes, and the expand conv computes what it computes in F."""
    keras.utils.set_random_seed(1)
    f = _signed_input()
    quantizer = f.get_layer("expand").input_quantizer
    quantizer.assign_step(quantizer.learned_step() / 3)  # a fine step: F clips at both ends (-8 and 7)
    step = quantizer.learned_step()
    graph = lower(f)
    stem = graph.tensors["stem"]
    assert (stem.offset, stem.grid) == (8, (step, 15.0)) and graph.producer("stem").relu
    model, plan, _ = export.convert(f, IMAGES[:64])
    assert _details(model)["stem"]["quantization"] == pytest.approx((step, 127 - 15))
    rows = {r["tensor"]: r for r in export.tensor_agreement(model, f, plan, IMAGES[64:96])}
    # F's codes, but for float32 ties of the learned step (measured: none here); both clamps are reached
    assert rows["stem"]["grid"] == "k-bit" and rows["stem"]["mismatch"] < 1e-3, rows["stem"]
    codes = export.tensor_codes(model, ["stem"], IMAGES[64:96], "reference")["stem"].astype(int) - (127 - 15) - 8
    assert codes.min() == -8 and codes.max() == 7
    # the expand conv computes F's values from the shifted tensor: exactly in the float32 file (F's rounding
    # included), and its calibrated int8 output within a step of F's but where test values pass the calibrated top
    # (measured: 1e-5 of them), not 8 * sum(codes) off
    float_model, _, _ = export.convert(f, IMAGES[:64], mode="float32")
    np.testing.assert_allclose(export.runner(float_model, "builtin")(IMAGES[64:96]), f(IMAGES[64:96]), atol=1e-5)
    scale, zero_point = _details(model)["expand"]["quantization"]
    codes = export.tensor_codes(model, ["expand"], IMAGES[64:96], "reference")["expand"].astype(float)
    ours = (codes - zero_point) * scale
    theirs = keras.Model(f.inputs, f.get_layer("expand_relu").output).predict(IMAGES[64:96], verbose=0)
    assert rows["expand"]["grid"] == "calibrated" and np.mean(np.abs(ours - theirs) > scale) < 1e-4


def test_signed_activation_grid_before_a_padded_conv_is_calibrated_and_said():
    """A 3x3 conv would pad the shifted tensor with the shifted zero: the exporter keeps that tensor calibrated and
    says why."""
    keras.utils.set_random_seed(1)
    graph = lower(_signed_input(expand_kernel=3))
    assert graph.tensors["stem"].grid is None and not graph.producer("stem").relu
    assert any("signed activation grid" in n and "1x1 conv" in n for n in graph.notes), graph.notes


def _pools_and_softmax():
    """stem -> ReLU -> MaxPooling2D -> conv -> BN -> ReLU -> MaxPooling2D -> Flatten -> Dense -> Reshape ->
    GlobalMaxPooling2D -> a softmax Dense head (keras.applications' classifier_activation="softmax")."""
    x = inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(x)
    x = keras.layers.ReLU(name="relu")(keras.layers.BatchNormalization(name="bn")(x))
    x = keras.layers.Flatten(name="flat")(keras.layers.MaxPooling2D(2, name="pool2")(x))
    x = keras.layers.Dense(32, activation="relu", name="fc")(x)
    x = keras.layers.GlobalMaxPooling2D(name="gmax")(keras.layers.Reshape((2, 2, 8), name="reshape")(x))
    return keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="predictions")(x), name="pools")


def test_pools_flatten_reshape_and_a_softmax_head_export_what_f_computes():
    """Issue 30, item 1: MaxPooling2D, GlobalMaxPooling2D, Flatten, Reshape and a softmax head go through
    quantize() -> fit (a loss on probabilities) -> export -> verify. The Dense softmax head is split into the
    Dense (logits) and a softmax layer; the file ends at the logits (said in its notes); a max-pool passes its
    consumers' grid to its input, so the pooled k-bit tensors hold F's codes."""
    keras.utils.set_random_seed(2)
    f = quantize(_pools_and_softmax(), w_bits=4, a_bits=4, first_last_bits=8)
    assert f.get_layer("predictions").get_config()["activation"] == "linear"
    assert f.layers[-1].name == "predictions_softmax" and f.layers[-1].get_config()["activation"] == "softmax"
    labels = np.arange(160) % 5
    f.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy())
    loss = f.fit(IMAGES, labels, epochs=2, batch_size=32, verbose=0).history["loss"]
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0]
    probabilities = f.predict(IMAGES[:8], verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    model, plan, notes = export.convert(f, IMAGES[:64])
    assert {"MAX_POOL_2D", "RESHAPE"} <= set(export.model_ops(model)) and "SOFTMAX" not in export.model_ops(model)
    assert any(n.startswith("predictions_softmax: the model's closing softmax is not in the file") for n in notes)
    graph = lower(f)
    assert [op.kind for op in graph.ops if op.layer == "gmax"] == ["maxpool", "reshape"]
    assert graph.tensors["stem"].grid is not None and graph.tensors["pool1"].grid == graph.tensors["stem"].grid
    assert graph.tensors["conv"].grid == graph.tensors["pool2"].grid == graph.tensors["flat"].grid is not None
    logits = keras.Model(f.inputs, f.layers[-1].input).predict(IMAGES[64:], verbose=0)
    out = export.runner(model, "reference")(IMAGES[64:])
    scale = _details(model)[export.runner(model, "reference").output_details[0]["name"]]["quantization"][0]
    assert np.abs(out - logits).max() <= 1.01 * scale  # the file's output is F's logits (on its int8 grid)
    report = export.verify(model, f, IMAGES[64:], labels[64:], plan=plan, runtimes=("reference", "xnnpack"),
                           latency_runs=0)
    assert min(report["agreement_per_runtime"].values()) >= 0.98, report["agreement_per_runtime"]
    assert report["max_abs_logit_diff"] <= 1.01 * scale  # F's logits, not its probabilities, are compared
    kbit = [r for r in export.tensor_agreement(model, f, plan, IMAGES[64:96]) if r["grid"] == "k-bit"]
    # every tensor but the logits is a k-bit tensor holding F's codes (a learned float32 step may leave a tie)
    assert [r["tensor"] for r in kbit] == ["stem", "pool1", "conv", "pool2", "flat", "fc", "reshape", "gmax/pool",
                                           "gmax"]
    assert all(r["mismatch"] < 1e-3 for r in kbit), kbit
