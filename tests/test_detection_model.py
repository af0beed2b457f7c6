"""The detector F and its H: structure (quantized FPN/heads, fragments, shared convs), the AG rule through the
one AGTrainer step with the detection loss, `.keras` round trips, bad arguments, and one tiny end-to-end run
of a detection config (train.py's path)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import agq_keras
from agq_keras import detection as det, structure
from agq_keras.configs import detection as detection_configs
from agq_keras.data import detection_twin as dt, fashion_mnist
from agq_keras.experiments import run
from agq_keras.layers import AuxAdaptor, QConv2D
from agq_keras.training.ssp import SSP
from agq_keras.training.trainer import split_variables

SMALL = dict(input_shape=(64, 64, 1), fpn_width=8, head_depth=1,
             anchors=det.AnchorSpec(levels=(3, 4, 5), size_factor=2.0))


def test_f_outputs_bits_and_fragments():
    f = det.build_detector("resnet20", w_bits=4, a_bits=4, **SMALL)
    assert len(f.outputs) == 6 and [o.shape[1:] for o in f.outputs] == [
        (8, 8, 90), (4, 4, 90), (2, 2, 90), (8, 8, 36), (4, 4, 36), (2, 2, 36)]
    assert f.output_names == ["cls_p3", "cls_p4", "cls_p5", "box_p3", "box_p4", "box_p5"]
    convs = {l.name: l for l in f.layers if isinstance(l, QConv2D)}
    edge = {"stem_conv", "cls_predict", "box_predict"}
    assert {n for n, l in convs.items() if l.weight_bits == 16} == edge
    assert all(l.weight_bits == 4 and l.input_bits == 4 for n, l in convs.items() if n not in edge)
    assert {"fpn_p3_lateral", "fpn_p4_output", "fpn_p5_output", "cls_tower1_conv", "box_tower1_conv"} <= set(convs)
    assert all(convs[n].fragment is None for n in edge)
    blocks = {b.name for b in structure.blocks(f)}
    assert {"stage1_block1", "stage3_block3", "fpn_p3", "fpn_p4", "fpn_p5", "cls_tower1", "box_tower1"} <= blocks
    # the tap discovery and SSP's block fragments see the detector's blocks (9 backbone, 3 FPN, 2 towers)
    assert {"stage3_block3_add", "fpn_p3_output", "fpn_p5_output", "cls_tower1_conv"} <= set(structure.auto_taps(f))
    assert len(SSP("block").attach(f).groups) == 14
    # per-level BatchNorms around the shared head convs
    assert {"cls_tower1_bn_p3", "cls_tower1_bn_p5", "box_predict_bn_p4"} <= {l.name for l in f.layers}
    float_f = det.build_detector("resnet20", w_bits=32, a_bits=32, **SMALL)
    assert all(l.weight_bits == 32 and l.input_bits == 32 for l in float_f.layers if isinstance(l, QConv2D))


def test_h_shares_convs_owns_batchnorms_and_adds_adaptors():
    trainer = det.build_detector("resnet20", aux=True, **SMALL)
    f, h = trainer.f, trainer.h
    f_convs = [l for l in f.layers if isinstance(l, QConv2D)]
    h_layers = {id(l) for l in h.layers}
    assert all(id(l) in h_layers for l in f_convs)  # every conv shared
    f_bns = [l for l in f.layers if isinstance(l, keras.layers.BatchNormalization)]
    h_bns = [l for l in h.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert not {id(l) for l in f_bns} & {id(l) for l in h_bns} and all(l.name.startswith("h_") for l in h_bns)
    adaptors = [l for l in h.layers if isinstance(l, AuxAdaptor)]
    assert len([a for a in adaptors if "adaptor" in a.name]) == 9  # one per backbone block (ResNet-20)
    shared, f_only, h_only = split_variables(f, h)
    assert {id(v) for v in shared} == {id(v) for l in f_convs for v in l.trainable_variables}
    assert len(h.outputs) == 6 and [o.shape for o in h.outputs] == [o.shape for o in f.outputs]
    with_fpn = det.build_detector("resnet20", aux=True, fpn_adaptors=True, **SMALL)
    names = [l.name for l in with_fpn.h.layers if isinstance(l, AuxAdaptor)]
    assert {"h_fpn_adaptor_p3", "h_fpn_adaptor_p4", "h_fpn_adaptor_p5"} <= set(names)
    assert not any("fpn_adaptor" in l.name for l in with_fpn.f.layers)
    layerwise = det.build_detector("resnet20", aux=True, aux_placement="layer", **SMALL)
    assert len([l for l in layerwise.h.layers if isinstance(l, AuxAdaptor) and "adaptor" in l.name]) == 18  # per conv


def _batch(n=2, size=64):
    garments = fashion_mnist.load("test", subset=50)
    images, boxes, labels, _ = dt.generate(*garments, n, canvas_size=size, max_objects=3, scale_range=(0.75, 1.5))
    anchors = SMALL["anchors"].anchors((size, size))
    ds = det.with_targets(dt.dataset(images, boxes, labels, batch_size=n), anchors)
    return next(iter(ds)), (images, boxes, labels, anchors)


def test_ag_rule_with_the_detection_loss():
    """One eager step of the shared AGTrainer: shared convs get (g1 + lambda g2) / (1 + lambda) of the detection
    loss of F and of H, F's BatchNorms g1 only, H's adaptors g2 only (SGD, no momentum)."""
    lam, lr = 0.5, 0.1
    trainer = det.build_detector("resnet20", aux=True, aux_lambda=lam, **SMALL)
    trainer.compile(optimizer=keras.optimizers.SGD(lr), loss=det.DetectionLoss(10), metrics=[])
    (x, y), _ = _batch()
    shared, f_only, h_only = trainer.variable_groups()
    kernels = [v for v in shared if v.path.endswith("/kernel")]  # shared also holds the quantizers' learned steps
    picks = [kernels[3], f_only[0], h_only[0]]
    trainer.f(x, training=True)  # the first training call initialises the LSQ steps from the data
    before = [v.numpy() for v in picks]
    with tf.GradientTape(persistent=True) as tape:
        loss_f, loss_h, _, _ = trainer.objectives(x, y, training=True)
    g1 = tape.gradient(loss_f, picks[:2])
    g2 = tape.gradient(loss_h, [picks[0], picks[2]])
    logs = trainer.train_step((x, y))
    assert set(logs) == {"loss", "h_loss"} and np.isfinite(float(logs["loss"]))
    expected = [before[0] - lr * (g1[0].numpy() + lam * g2[0].numpy()) / (1 + lam),
                before[1] - lr * g1[1].numpy(), before[2] - lr * g2[1].numpy()]
    for v, e, b in zip(picks, expected, before):
        assert not np.allclose(e, b)
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-3, atol=1e-6)


def test_two_stage_start_from_a_float_detector(tmp_path):
    """Stage 2 (``config.init_checkpoint``): a float detector's saved F initialises the 4-bit F by layer name
    (every conv, so H's shared ones too, and F's BatchNorms); H's own BatchNorms keep their initial values, as
    in the classification recipe. A missing checkpoint fails before any data is made."""
    float_f = det.build_detector("resnet20", w_bits=32, a_bits=32, **SMALL)
    for v in float_f.weights:  # away from any initial value
        v.assign(np.random.default_rng(len(v.name)).normal(size=v.shape).astype("float32") ** 2 + 0.5)
    path = str(tmp_path / "float.keras")
    float_f.save(path)
    trainer = det.build_detector("resnet20", aux=True, **SMALL)
    h_bn_before = {l.name: [w.numpy() for w in l.weights] for l in trainer.h.layers
                   if isinstance(l, keras.layers.BatchNormalization)}
    run.initialise(trainer, agq_keras.load_model(path))
    source = {l.name: l for l in float_f.layers}
    copied = [l for l in trainer.f.layers if l.weights]
    assert copied and all(l.name in source for l in copied)
    for layer in copied:  # F equals the float F weight for weight (the quantizers' bits are not weights)
        for w, s in zip(layer.weights, source[layer.name].weights):
            np.testing.assert_array_equal(w.numpy(), s.numpy())
    for l in trainer.h.layers:
        if l.name in h_bn_before:
            for w, b in zip(l.weights, h_bn_before[l.name]):
                np.testing.assert_array_equal(w.numpy(), b)
    c = detection_configs.get_config("quick")
    c.init_checkpoint = str(tmp_path / "nope.keras")
    with pytest.raises(FileNotFoundError, match="config.init_checkpoint .*nope.keras' does not exist"):
        run.run(c, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="no layer of 'other' matches"):
        run.initialise(trainer, keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="x")], name="other"))


def test_round_trips(tmp_path):
    trainer = det.build_detector("resnet20", aux=True, **SMALL)
    trainer.compile(loss=det.DetectionLoss(10), metrics=[])
    x = np.random.default_rng(0).uniform(size=(2, 64, 64, 1)).astype(np.float32)
    trainer.f.save(tmp_path / "f.keras")
    f = agq_keras.load_model(str(tmp_path / "f.keras"))
    for a, b in zip(f(x), trainer.f(x)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    assert {b.name for b in structure.blocks(f)} == {b.name for b in structure.blocks(trainer.f)}
    trainer.save(tmp_path / "trainer.keras")
    loaded = keras.saving.load_model(str(tmp_path / "trainer.keras"))  # compiled: resumes with the detection loss
    assert len(loaded.f.outputs) == 6 and len(loaded.h.outputs) == 6
    assert isinstance(loaded._h_loss_fn, det.DetectionLoss) and loaded._h_loss_fn.get_config() == \
        det.DetectionLoss(10).get_config()
    for a, b in zip(loaded.h(x), trainer.h(x)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(arch="mobilenetv2"), "not a detector backbone; allowed: resnet18"),
    (dict(anchors=det.AnchorSpec(levels=(1, 2), size_factor=2.0)), "levels \\[1\\] have no backbone stage"),
    (dict(anchors=det.AnchorSpec(levels=(3, 5), size_factor=2.0)), "without a gap"),
    (dict(input_shape=(80, 80, 1)), "multiples of 32"),
    (dict(num_classes=0), "num_classes=0"), (dict(fpn_width=0), "fpn_width=0"),
    (dict(aux_placement="stage"), "aux_placement='stage'"), (dict(aux_lambda=-1.0), "aux_lambda=-1.0"),
])
def test_build_detector_bad_arguments(kwargs, match):
    args = {**SMALL, **kwargs}
    with pytest.raises(ValueError, match=match):
        det.build_detector(**args)


def test_detection_configs_validate():
    for variant in detection_configs.VARIANTS:
        c = detection_configs.get_config(variant)
        run.validate(c)
        assert c.task == "detection" and (c.aux == ("ag" in variant or variant == "quick"))
    with pytest.raises(ValueError, match="unknown variant 'resnet50_float'"):
        detection_configs.get_config("resnet50_float")


@pytest.mark.parametrize("key,value,match", [
    ("dataset", "cifar100", "config.dataset='cifar100' is not supported; allowed: fmnist_twin, coco2017, voc2007"),
    ("ssp", True, "config.ssp=True is not supported for detection"),
    ("canvas_size", 80, "config.canvas_size=80 must be a multiple of 32"),
    ("levels", (3, 3), "levels=\\(3, 3\\)"), ("first_last_bits", 8, "first_last_bits=8 is not supported"),
    ("score_threshold", 1.0, "score_threshold=1.0")])
def test_detection_config_bad_values(key, value, match):
    c = detection_configs.get_config("quick")
    c[key] = value
    with pytest.raises(ValueError, match=match):
        run.validate(c)


@pytest.mark.slow  # ~30 s (tracing F and H's fit, evaluation and NMS); the AG step itself is tested eagerly above
def test_tiny_detection_run_writes_outputs(tmp_path):
    """train.py's path for a detection config: a few steps on 16 canvases, then every output."""
    c = detection_configs.get_config("quick")
    c.canvas_size, c.train_canvases, c.test_canvases, c.batch_size = 64, 16, 8, 8
    c.fpn_width, c.head_depth, c.max_objects, c.epochs, c.verbose, c.plot_images = 8, 1, 3, 1, 0, 2
    metrics = run.run(c, str(tmp_path))
    for name in ("f.keras", "trainer.keras", "metrics.json", "detections.png"):
        assert (tmp_path / name).is_file(), name
    assert os.listdir(tmp_path / "logs") and not (tmp_path / "backup").exists()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for part in ("f", "h"):
        assert {"AP", "AP50", "AP75"} <= set(saved[part]) and all(0 <= saved[part][k] <= 1 for k in ("AP", "AP50"))
    assert saved["f"] == metrics["f"] and np.isfinite(saved["f"]["loss"])
    assert len(saved["history"]["loss"]) == 1 and "h_loss" in saved["history"]
    f = agq_keras.load_model(str(tmp_path / "f.keras"))
    assert len(f.outputs) == 6  # and F carries the run's anchors and the twin's class names
    assert f.anchor_spec == det.AnchorSpec(levels=tuple(c.levels), size_factor=c.anchor_size_factor)
    assert f.class_names == tuple(dt.CLASS_NAMES)
