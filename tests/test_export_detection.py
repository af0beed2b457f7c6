"""The exporter on a detector F (issue 12): several outputs, UpSampling2D as RESIZE_NEAREST_NEIGHBOR, head
convs called at every pyramid level, and the AP of the int8 model next to the Keras F's."""

import numpy as np
import pytest
import keras

pytest.importorskip("ai_edge_litert")

from agq_keras import detection as det, export  # noqa: E402
from agq_keras.export.flatbuffer import schema  # noqa: E402
from agq_keras.export.lower import lower  # noqa: E402
from agq_keras.layers import QConv2D  # noqa: E402
from agq_keras.quantizers import make_pair  # noqa: E402

RNG = np.random.default_rng(0)
IMAGES = np.round(RNG.random((40, 64, 64, 1)) * 255).astype("float32") / 255  # on the int8 input grid
SPEC = det.AnchorSpec(levels=(3, 4, 5), size_factor=2.0)


@pytest.fixture(scope="module")
def tiny_detector():
    """An untrained 64x64 detector (ResNet-20 backbone, P3-P5, 8 FPN channels, one tower conv) with its BatchNorm
    statistics re-estimated on random images (a live net), exported."""
    import tensorflow as tf

    from agq_keras.training.callbacks import reestimate_batch_norm

    keras.utils.set_random_seed(1)
    f = det.build_detector("resnet20", num_classes=3, input_shape=(64, 64, 1), fpn_width=8, head_depth=1,
                           anchors=SPEC)
    reestimate_batch_norm(f, tf.data.Dataset.from_tensor_slices(IMAGES[:32]).batch(16), 2)
    data, plan, notes = export.convert(f, IMAGES[:32])
    return f, data, plan, notes


def test_detector_exports_every_output_in_order(tiny_detector):
    f, data, plan, _ = tiny_detector
    graph = plan.graph
    assert len(plan.outputs) == len(f.outputs) == 6
    # F's output order and names (cls_p3..p5, box_p3..p5), each a call of the shared prediction conv
    assert graph.outputs == f.output_names == ["cls_p3", "cls_p4", "cls_p5", "box_p3", "box_p4", "box_p5"]
    assert [graph.producer(n).layer.split("+")[0] for n in graph.outputs] == ["cls_predict"] * 3 + ["box_predict"] * 3
    assert [plan.tensors[i].name for i in plan.outputs] == graph.outputs
    runner = export.Runner(data, batch_size=2)  # the file's outputs read by those names, F's spec in its metadata
    assert [d["name"] for d in runner.output_details] == f.output_names
    assert det.detector.read_metadata(runner.metadata[det.detector.METADATA_NAME]) == (
        f.anchor_spec, f.class_names, tuple(f.output_names))
    assert [plan.tensors[i].shape for i in plan.outputs] == [tuple(o.shape[1:]) for o in f.outputs]
    # a shared conv lowers once per call: unique tensors, each call its own weights (its own folded BatchNorm)
    convs = [op for op in graph.ops if op.layer.split("+")[0] == "cls_tower1_conv"]
    assert [op.output for op in convs] == ["cls_tower1_conv", "cls_tower1_conv/call1", "cls_tower1_conv/call2"]
    weights = [plan.tensor(f"{op.output}/weights") for op in convs]
    assert len({w.quant for w in weights}) == 3  # each call's own per-channel scales
    first = plan.tensors.index(weights[0])
    assert weights[0].shares is None and all(w.shares == (first if w.data.tobytes() == weights[0].data.tobytes()
                                                           else None) for w in weights[1:])
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)  # later calls read the first call's buffer: stored once
    buffers = {t.name.decode(): t.buffer for t in model.subgraphs[0].tensors}
    shared = [w for w in weights[1:] if w.shares is not None]
    assert shared and all(buffers[w.name] == buffers[weights[0].name] for w in shared)
    assert ["cls_tower1_bn_p4" in op.layer or "cls_predict_bn_p4" in op.layer for op in convs] == [False, True, False]
    assert "RESIZE_NEAREST_NEIGHBOR" in export.model_ops(data)
    assert all(op.startswith(("ADD", "CONCATENATION", "CONV_2D", "DEPTHWISE", "MAX_POOL", "QUANTIZE", "RESIZE"))
               for op in export.model_ops(data))  # builtin only: no TFLite_Detection_PostProcess (custom)
    runner = export.Runner(data, batch_size=2)
    out = runner(IMAGES[32:34])
    assert isinstance(out, list) and [o.shape for o in out] == [(2,) + tuple(o.shape[1:]) for o in f.outputs]


def test_detector_verifies_per_output_under_reference_kernels(tiny_detector):
    f, data, plan, _ = tiny_detector
    report = export.verify(data, f, IMAGES[32:], plan=plan, runtimes=("reference",), latency_runs=0)
    assert report["outputs"] == list(f.output_names)
    for name in f.output_names:
        # F's float residual stream is exported closest (int16 at calibrated scales), so codes are not all F's;
        # each output stays within a small part of its range
        ref = np.asarray(f.predict(IMAGES[32:], verbose=0)[f.output_names.index(name)])
        span = float(ref.max() - ref.min())
        for runtime in ("builtin", "reference"):  # (int16 codes are far finer than the body's error: few equal)
            assert 0.0 <= report["agreement_per_output"][name][runtime] <= 1.0
            assert report["mean_abs_diff_per_output"][name][runtime] < 0.2 * span, (name, runtime)
    # several outputs: int16 by default (the decoding reads them as values); output_bits=8 keeps int8
    assert "argmax_agreement" not in report and report["io_types"]["outputs"] == ["INT16"] * 6
    assert all(plan.tensors[i].dtype == "int16" for i in plan.outputs)
    int8_data, int8_plan, _ = export.convert(f, IMAGES[:32], output_bits=8)
    assert all(int8_plan.tensors[i].dtype == "int8" for i in int8_plan.outputs)
    int8_report = export.verify(int8_data, f, IMAGES[32:], plan=int8_plan, runtimes=("reference",), latency_runs=0)
    assert int8_report["io_types"]["outputs"] == ["INT8"] * 6
    assert all(0.0 < int8_report["agreement_per_output"][n]["reference"] <= 1.0 for n in f.output_names)
    for i16, i8 in zip(plan.outputs, int8_plan.outputs):  # the outputs' own rounding: ~85x finer steps
        assert plan.tensors[i16].quant.scale[0] < int8_plan.tensors[i8].quant.scale[0] / 50


def test_detector_ap_of_the_int8_model_next_to_keras(tiny_detector):
    pytest.importorskip("pycocotools")
    f, data, plan, _ = tiny_detector
    anchors = f.anchor_spec.anchors((64, 64))
    boxes = np.array([[[8, 8, 40, 40], [0, 0, 0, 0]]] * 4, np.float32)
    labels = np.array([[1, -1]] * 4, np.int32)
    report = export.verify_detector(data, f, IMAGES[32:36], boxes, labels, anchors, 3, runtimes=("reference",))
    assert set(report["ap"]) == {"keras", "builtin", "reference"}
    assert all(set(v) >= {"AP", "AP50", "AP75"} for v in report["ap"].values())
    assert "TFLite_Detection_PostProcess" in report["postprocess"]
    lines = export.summary(report)  # the report for a person: per runtime, the least agreeing output and the AP
    for runtime in ("builtin", "reference"):
        worst = min(report["agreement_per_output"], key=lambda n: report["agreement_per_output"][n][runtime])
        ap, ref = 100 * report["ap"][runtime]["AP"], 100 * report["ap"]["keras"]["AP"]
        assert any(line.startswith(runtime) and f"in the least agreeing output ({worst}), of 6 outputs; AP "
                   f"{ap:.2f} (F {ref:.2f}" in line for line in lines), lines
    assert any(line.startswith("size ") for line in lines)


def _upsampling_net(size=(2, 3), interpolation="nearest"):
    """conv (ReLU, 2-bit grid for its consumer) -> UpSampling2D -> quantized conv -> conv."""
    x = inputs = keras.Input((6, 5, 2), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="first")(x)
    x = keras.layers.UpSampling2D(size, interpolation=interpolation, name="up")(x)
    wq, aq = make_pair("dorefa", 2, 2)
    x = QConv2D(3, 3, padding="same", kernel_quantizer=wq, input_quantizer=aq, name="q")(x)
    return keras.Model(inputs, x, name="up_net")


def test_upsampling_lowers_to_resize_nearest_neighbor_on_the_input_grid():
    keras.utils.set_random_seed(3)
    f = _upsampling_net()
    graph = lower(f)
    up = next(op for op in graph.ops if op.kind == "resize")
    assert up.factor == (2, 3) and up.inputs == ["first"] and graph.tensors["up"].shape == (12, 15, 4)
    assert graph.tensors["up"].grid == graph.tensors["first"].grid is not None  # the consumer's 2-bit grid
    images = np.round(RNG.random((64, 6, 5, 2)) * 255).astype("float32") / 255
    data, plan, _ = export.convert(f, images[:32])
    assert plan.tensor("up").quant == plan.tensor("first").quant
    resize = next(op for op in plan.ops if op.builtin == "RESIZE_NEAREST_NEIGHBOR")
    assert resize.version == 2 and dict(resize.options[1]) == {"alignCorners": False, "halfPixelCenters": False}
    assert plan.tensors[resize.inputs[1]].data.tolist() == [12, 15]
    for runtime in ("reference", "builtin", "xnnpack"):  # each value repeated 2 x 3 times, codes unchanged
        codes = export.tensor_codes(data, ["first", "up"], images[32:40], runtime)
        assert np.array_equal(codes["up"], np.repeat(np.repeat(codes["first"], 2, axis=1), 3, axis=2)), runtime


@pytest.mark.parametrize("attr, value, match", [
    ("interpolation", "bilinear", r"'up'.*interpolation='bilinear'.*allowed: 'nearest'"),
    ("size", (1.5, 2), r"'up'.*size=\(1\.5, 2\).*allowed: two integer factors"),  # Keras cannot call it; a
    # config may still hold it
])
def test_upsampling_bad_inputs_name_the_layer(attr, value, match):
    f = _upsampling_net()
    setattr(f.get_layer("up"), attr, value)
    with pytest.raises(ValueError, match=match):
        lower(f)


def test_two_inputs_are_refused_with_the_count():
    a, b = keras.Input((4, 4, 1)), keras.Input((4, 4, 1))
    f = keras.Model([a, b], keras.layers.Add()([a, b]), name="two")
    with pytest.raises(ValueError, match=r"'two' has 2 inputs.*exactly one input"):
        lower(f)


def test_a_detection_runs_canvases_and_anchors_from_its_metrics_config():
    """What scripts/export_tflite.py --workdir reads for a detection run: its canvases (the twin with the run's
    seed, pixels / 255 as F saw them in training) and its anchors, from metrics.json's config dict."""
    from agq_keras.configs import detection as detection_configs
    from agq_keras.data import detection_twin
    from agq_keras.experiments import run

    config = detection_configs.get_config("quick").to_dict()
    config.update(canvas_size=64, seed=3)
    images, boxes, labels, classes = run.detection_split(config, "test", 4)
    raw = detection_twin.load("test", 4, seed=3, canvas_size=64, max_objects=config["max_objects"])
    assert images.dtype == np.float32 and np.array_equal(images, detection_twin.as_float(raw[0]))
    assert np.array_equal(boxes, raw[1]) and np.array_equal(labels, raw[2]) and classes == detection_twin.NUM_CLASSES
    spec = det.AnchorSpec(levels=tuple(config["levels"]), size_factor=config["anchor_size_factor"])
    assert np.array_equal(run.detection_anchors(config, (64, 64)), spec.anchors((64, 64)))
    with pytest.raises(ValueError, match=r"split='val'.*allowed: train, test"):
        run.detection_split(config, "val", 4)
