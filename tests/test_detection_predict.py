"""The detector as a product (issue 30): F carries its anchors, class names and input size through ``f.keras``
and into its TFLite file, and one ``detection.predict`` turns raw images of any size into boxes in their own
pixels, for the Keras F and for the TFLite file, with no anchors passed by hand."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import agq_keras
from agq_keras import detection as det
from agq_keras.data import detection_twin as dt

SPEC = det.AnchorSpec(levels=(3, 4, 5), size_factor=2.0)
SMALL = dict(input_shape=(64, 64, 1), fpn_width=8, head_depth=1, anchors=SPEC)
NAMES = tuple(dt.CLASS_NAMES)


def _small(**kwargs):
    return det.build_detector("resnet20", num_classes=len(NAMES), class_names=NAMES, **{**SMALL, **kwargs})


@pytest.fixture(scope="module")
def trained():
    """A small 4-bit LSQ detector trained briefly on 64x64 twin canvases (~40 s on one core): ``(F, test canvases
    uint8, their boxes, labels)``."""
    from agq_keras.training.trainer import AGTrainer

    keras.utils.set_random_seed(0)
    train = dt.load("train", 384, canvas_size=64, max_objects=3, seed=0)
    test = dt.load("test", 24, canvas_size=64, max_objects=3, seed=0)
    f = _small()
    trainer = AGTrainer(f, None, name="f_only")
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3), loss=det.DetectionLoss(len(NAMES)), metrics=[])
    anchors = SPEC.anchors((64, 64))
    ds = det.with_targets(dt.dataset(*train[:3], batch_size=32, training=True), anchors)
    trainer.fit(ds, epochs=6, verbose=0)
    return f, test[0], test[1], test[2]


def test_spec_survives_a_keras_round_trip(tmp_path):
    f = _small()
    assert isinstance(f, det.Detector) and (f.anchor_spec, f.class_names, f.input_size) == (SPEC, NAMES, (64, 64, 1))
    f.save(tmp_path / "f.keras")
    g = agq_keras.load_model(str(tmp_path / "f.keras"))
    assert isinstance(g, det.Detector) and g is not f
    assert (g.anchor_spec, g.class_names, g.input_size, g.output_names) == (SPEC, NAMES, (64, 64, 1), f.output_names)
    x = np.random.default_rng(0).uniform(size=(2, 64, 64, 1)).astype(np.float32)
    for a, b in zip(f(x), g(x)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # the trainer of F and H keeps F's class (and so its spec) too
    trainer = det.build_detector("resnet20", aux=True, num_classes=2, class_names=["shirt", "bag"], **SMALL)
    assert isinstance(trainer.f, det.Detector) and trainer.f.class_names == ("shirt", "bag")
    assert not isinstance(trainer.h, det.Detector)
    trainer.save(tmp_path / "trainer.keras")  # and a loaded trainer.keras's F is a Detector again, over H's layers
    loaded = agq_keras.load_model(str(tmp_path / "trainer.keras"))
    assert isinstance(loaded.f, det.Detector) and not isinstance(loaded.h, det.Detector)
    assert (loaded.f.anchor_spec, loaded.f.class_names) == (trainer.f.anchor_spec, ("shirt", "bag"))
    assert loaded.f.get_layer("cls_predict") is loaded.h.get_layer("cls_predict")
    for a, b in zip(trainer.f(x), loaded.f(x)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # an F saved before it carried its spec: a plain functional model, wrapped over the same layers
    plain = keras.Model(f.inputs, f.outputs, name="old_f")
    with pytest.raises(ValueError, match="'old_f' carries no anchors.*with_spec"):
        det.predict(plain, x)
    wrapped = det.with_spec(plain, anchors=SPEC, class_names=NAMES)
    assert wrapped.anchor_spec == SPEC and wrapped.get_layer("cls_predict") is f.get_layer("cls_predict")


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(anchors=None), ValueError, "anchors=None must be an agq_keras.detection.AnchorSpec"),
    (dict(class_names=("a", "b")), ValueError, "class_names has 2 names for num_classes=10"),
    (dict(class_names=[""] * 10), ValueError, "class_names=.* non-empty strings"),
])
def test_build_detector_needs_its_spec(kwargs, error, match):
    with pytest.raises(error, match=match):
        det.build_detector("resnet20", num_classes=10, **{**SMALL, **kwargs})
    with pytest.raises(TypeError, match="anchors"):  # no default anchors to train or decode with by mistake
        det.build_detector("resnet20", input_shape=(64, 64, 1))


def test_a_detector_refuses_anchors_that_do_not_fit_its_outputs():
    f = _small()
    fewer = det.AnchorSpec(levels=(3, 4, 5), size_factor=2.0, scales=(1.0,))  # 3 anchors per position, F has 9
    with pytest.raises(ValueError, match="output shapes .* do not match anchors"):
        det.with_spec(f, anchors=fewer, class_names=NAMES)
    with pytest.raises(ValueError, match="outputs .* are not a detector's for anchor levels \\(3, 4\\)"):
        det.with_spec(f, anchors=det.AnchorSpec(levels=(3, 4), size_factor=2.0), class_names=NAMES)


def test_letterbox_geometry():
    """A NumPy reference: one scale per image (the smaller of the two), the resized image at the top-left corner,
    black elsewhere; an image of the input's size is unchanged."""
    rng = np.random.default_rng(0)
    same = rng.uniform(size=(64, 64, 1)).astype(np.float32)
    flat = np.full((256, 192, 1), 0.5, np.float32)  # scale 1/4 -> 64 x 48
    wide = np.full((30, 100, 1), 0.25, np.float32)  # scale 0.64 -> 19 x 64
    batch, scales = det.letterbox([same, flat, wide], (64, 64))
    np.testing.assert_array_equal(batch[0], same)
    expected = np.zeros((2, 64, 64, 1), np.float32)
    expected[0, :64, :48], expected[1, :19, :64] = 0.5, 0.25
    np.testing.assert_allclose(batch[1:], expected, atol=1e-6)
    np.testing.assert_allclose(scales, [[1, 1], [0.25, 0.25], [19 / 30, 64 / 100]])


def test_predict_returns_boxes_in_each_images_own_pixels(trained):
    """Against a NumPy reference of the inverse mapping (F's detections on the letterboxed canvas, divided by the
    per-axis scale, clipped to the image), and against the geometry itself: a canvas enlarged 2x (each pixel
    repeated) gives about twice the boxes of the canvas."""
    f, canvases, _, _ = trained
    images = [canvases[0], np.repeat(np.repeat(canvases[1], 2, 0), 2, 1), canvases[2, :, :40],
              np.repeat(canvases[3, :48], 3, 1)]  # 64x64, 128x128, 64x40, 48x192 (each its own size)
    got = det.predict(f, images, score_threshold=0.1)
    floats = [im.astype(np.float32) / 255 for im in images]
    batch, scales = det.letterbox(floats, (64, 64))
    ref = det.detect_images(f, batch, SPEC.anchors((64, 64)), len(NAMES), score_threshold=0.1)
    for image, result, (boxes, scores, classes), (sy, sx) in zip(images, got, ref, scales):
        h, w = image.shape[:2]
        boxes = np.clip(boxes / [sy, sx, sy, sx], 0, [h, w, h, w])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        assert len(result["boxes"]) == keep.sum() > 0
        np.testing.assert_allclose(result["boxes"], boxes[keep][:, [1, 0, 3, 2]], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(result["scores"], scores[keep], rtol=1e-6)
        np.testing.assert_array_equal(result["labels"], classes[keep])
        assert result["names"] == [NAMES[c] for c in classes[keep]]
        assert (result["boxes"] >= 0).all() and (result["boxes"][:, [0, 2]] <= w).all() and (
            result["boxes"][:, [1, 3]] <= h).all()
    best = []  # each of the canvas's 5 best boxes, doubled, against the enlarged canvas's 10 best
    for canvas in canvases[:6]:
        small, large = det.predict(f, [canvas, np.repeat(np.repeat(canvas, 2, 0), 2, 1)], box_format="yxyx")
        best += list(det.iou(2 * small["boxes"][:5], large["boxes"][:10]).numpy().max(1))
    assert len(best) == 30 and np.median(best) > 0.8, best


def test_keras_and_tflite_predict_agree_on_images_of_another_size(trained, tmp_path):
    """The same call on f.keras and on its TFLite file (anchors from the file's metadata): the same boxes on
    96x80 images, and APs within 0.03 of each other (fractions) on 24 test canvases."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("pycocotools")
    from agq_keras import export

    f, canvases, boxes, labels = trained
    f.save(tmp_path / "f.keras")
    calibration = dt.as_float(dt.load("train", 64, canvas_size=64, max_objects=3, seed=1)[0])
    data, _, _ = export.convert(str(tmp_path / "f.keras"), calibration)
    (tmp_path / "f.tflite").write_bytes(data)
    size = (96, 80)  # another size and aspect ratio: scale 2/3 -> 64 x 53, padded
    images = tf.image.resize(canvases, size).numpy().round().clip(0, 255).astype(np.uint8)
    gt = boxes * np.array([size[0] / 64, size[1] / 64] * 2, np.float32)
    results = {"keras": det.predict(agq_keras.load_model(str(tmp_path / "f.keras")), images, box_format="yxyx"),
               "tflite": det.predict(export.Runner(str(tmp_path / "f.tflite"), batch_size=8), images,
                                     box_format="yxyx")}
    ap = {k: det.coco_ap(gt, labels, [(r["boxes"], r["scores"], r["labels"]) for r in v], len(NAMES), size)["AP"]
          for k, v in results.items()}
    assert ap["keras"] > 0.05, ap  # a detector that finds garments
    assert abs(ap["keras"] - ap["tflite"]) <= 0.03, ap
    matched = []  # each image's 5 best boxes from F against the file's 10 best
    for a, b in zip(results["keras"], results["tflite"]):
        matched += list(det.iou(a["boxes"][:5], b["boxes"][:10]).numpy().max(1))
    assert len(matched) == 5 * len(images) and np.median(matched) > 0.9, matched


@pytest.mark.parametrize("images,match", [
    ([], "no images"),
    ("canvas.png", "must be a list of \\[height, width, 1\\] images.*got str"),
    ([np.zeros((8, 8, 3), np.uint8)], "image 0 has 3 channels .*takes 1"),
    ([np.zeros((8, 8, 1), np.uint8), np.zeros(5)], "image 1 is not an image \\(shape \\(5,\\)"),
    ([np.full((8, 8, 1), 255.0)], "float values in \\[255.0, 255.0\\].*pixels in \\[0, 1\\]"),
    ([np.zeros((8, 8, 1), np.int32)], "dtype int32; allowed: uint8"),
    ([np.zeros((0, 8, 1), np.uint8)], "image 0 is empty"),
])
def test_predict_bad_inputs(images, match):
    with pytest.raises(ValueError, match=match):
        det.predict(_small(), images)


def test_predict_bad_options_and_models():
    f = _small()
    image = np.zeros((8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match="box_format='xywh' is not supported; allowed: xyxy, yxyx"):
        det.predict(f, image, box_format="xywh")
    with pytest.raises(ValueError, match="model must be a detector F .* got str"):
        det.predict("f.tflite", image)
