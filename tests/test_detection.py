"""Detection maths against NumPy references: anchors, box coding, IoU, target assignment, focal loss, the
detection loss, decoding + NMS, the COCO evaluator on hand-made boxes, and every bad input."""

import math

import numpy as np
import pytest
import tensorflow as tf

from agq_keras import detection as det
from agq_keras.data.detection_twin import box_iou
from agq_keras.detection.losses import BACKGROUND, IGNORE


# -- anchors ---------------------------------------------------------------------------------------------------

def test_anchor_level_by_hand():
    spec = det.AnchorSpec(levels=(3,), size_factor=2.0, scales=(1.0,), ratios=(1.0, 4.0))
    a = spec.anchors((16, 8))  # level 3: stride 8 -> a 2x1 grid, two anchors per position
    expected = np.array([[4 - 8, 4 - 8, 4 + 8, 4 + 8],  # centre (4, 4), 16x16
                         [4 - 16, 4 - 4, 4 + 16, 4 + 4],  # ratio h/w = 4: 32 high, 8 wide
                         [12 - 8, 4 - 8, 12 + 8, 4 + 8],  # next row: centre (12, 4)
                         [12 - 16, 4 - 4, 12 + 16, 4 + 4]], np.float32)
    np.testing.assert_allclose(a, expected)


def test_anchor_count_order_and_sizes():
    spec = det.AnchorSpec(levels=(3, 4, 5), size_factor=4.0)  # the paper's: 4 x stride, 3 scales, 3 ratios
    a = spec.anchors((128, 128))
    assert spec.num_anchors == 9 and a.shape == ((16 * 16 + 8 * 8 + 4 * 4) * 9, 4)
    h, w = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    np.testing.assert_allclose(np.sqrt(h * w)[:9], 32 * np.repeat([1, 2 ** (1 / 3), 2 ** (2 / 3)], 3), rtol=1e-5)
    np.testing.assert_allclose((h / w)[:3], [0.5, 1, 2], rtol=1e-5)
    # the head's reshape order: level 4's first anchor follows level 3's last, centred on (8, 8) of stride 16
    first_p4 = a[16 * 16 * 9]
    np.testing.assert_allclose([(first_p4[0] + first_p4[2]) / 2, (first_p4[1] + first_p4[3]) / 2], [8, 8])
    # within a level: row-major positions, anchors innermost (the order of reshape(H*W*K))
    centres = (a[:16 * 16 * 9:9, :2] + a[:16 * 16 * 9:9, 2:]) / 2
    np.testing.assert_allclose(centres[1], [4, 12])
    np.testing.assert_allclose(centres[16], [12, 4])


@pytest.mark.parametrize("kwargs,match", [
    (dict(levels=()), "levels"), (dict(levels=(4, 3)), "levels"), (dict(levels=(3, 3)), "levels"),
    (dict(levels=(0, 1)), "levels"), (dict(scales=(1.0, -1.0)), "scales"), (dict(ratios=(float("nan"),)), "ratios"),
    (dict(size_factor=0), "size_factor")])
def test_anchor_spec_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        det.AnchorSpec(**{"levels": (3, 4, 5), "size_factor": 2.0, **kwargs})


def test_anchor_spec_has_no_default_levels_or_size():
    """No default to decode with by mistake (AnchorSpec() once meant size 4, where the configs train with 2)."""
    for given in ({}, {"levels": (3, 4, 5)}, {"size_factor": 2.0}):
        with pytest.raises(TypeError, match="required keyword-only argument"):
            det.AnchorSpec(**given)
    spec = det.AnchorSpec(levels=(3, 4), size_factor=3.0, ratios=(1.0,))
    assert det.AnchorSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="needs levels and size_factor"):
        det.AnchorSpec.from_dict({"levels": [3]})


# -- box coding and IoU ----------------------------------------------------------------------------------------

def _random_boxes(rng, n, size=100.0):
    yx = rng.uniform(0, size, (n, 2))
    hw = rng.uniform(1, size / 2, (n, 2))
    return np.concatenate([yx, yx + hw], -1).astype(np.float32)


def test_encode_matches_numpy_and_round_trips():
    rng = np.random.default_rng(0)
    boxes, anchors = _random_boxes(rng, 50), _random_boxes(rng, 50)
    weights = (10.0, 10.0, 5.0, 5.0)
    t = det.encode(boxes, anchors, weights).numpy()
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ha, wa = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cy, cya = boxes[:, 0] + h / 2, anchors[:, 0] + ha / 2
    np.testing.assert_allclose(t[:, 0], 10 * (cy - cya) / ha, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(t[:, 3], 5 * np.log(w / wa), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(det.decode(t, anchors, weights).numpy(), boxes, atol=1e-3)
    np.testing.assert_allclose(det.decode(det.encode(boxes, anchors), anchors).numpy(), boxes, atol=1e-3)
    assert np.allclose(det.encode(anchors, anchors).numpy(), 0, atol=1e-6)


def test_decode_clamps_huge_deltas():
    out = det.decode(np.array([[0, 0, 1e4, 1e4]], np.float32), np.array([[0, 0, 10, 10]], np.float32)).numpy()
    assert np.isfinite(out).all() and out[0, 2] - out[0, 0] == pytest.approx(1000 / 16 * 10, rel=1e-4)


def test_iou_matches_numpy():
    rng = np.random.default_rng(1)
    a, b = _random_boxes(rng, 20), _random_boxes(rng, 7)
    np.testing.assert_allclose(det.iou(a, b).numpy(), box_iou(a, b), atol=1e-6)
    assert det.iou([[0, 0, 10, 10]], [[0, 0, 10, 5]]).numpy()[0, 0] == pytest.approx(0.5)
    assert det.iou([[0, 0, 0, 0]], [[0, 0, 0, 0]]).numpy()[0, 0] == 0  # empty union: 0, not NaN


# -- targets ---------------------------------------------------------------------------------------------------

def test_assign_thresholds_low_quality_and_padding():
    anchors = np.array([[0, 0, 10, 10],  # = gt 0: positive, zero regression
                        [0, 0, 10, 5.5],  # IoU 0.55 with gt 0: positive
                        [0, 0, 10, 4.5],  # IoU 0.45: ignored
                        [0, 0, 10, 3],  # IoU 0.3: background
                        [50, 50, 60, 80],  # gt 1's best anchor (IoU 1/3): positive by a low-quality match
                        [90, 90, 99, 99]], np.float32)  # nothing: background
    gt = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 0, 0]], np.float32)
    labels = np.array([3, 7, -1], np.int32)  # the third row is padding
    cls, box = det.assign(anchors, gt, labels)
    np.testing.assert_array_equal(cls.numpy(), [3, 3, IGNORE, BACKGROUND, 7, BACKGROUND])
    np.testing.assert_allclose(box.numpy()[0], 0, atol=1e-6)
    np.testing.assert_allclose(det.decode(box[4:5], anchors[4:5]).numpy(), gt[1:2], atol=1e-4)
    assert np.all(box.numpy()[[2, 3, 5]] == 0)
    cls, _ = det.assign(anchors, gt, labels, low_quality_matches=False)
    assert cls.numpy()[4] == BACKGROUND


def test_assign_empty_image_is_all_background():
    anchors = det.AnchorSpec(levels=(3, 4, 5), size_factor=2.0).anchors((64, 64))
    cls, box = det.assign(anchors, np.zeros((4, 4), np.float32), -np.ones((4,), np.int32))
    assert (cls.numpy() == BACKGROUND).all() and (box.numpy() == 0).all()


def test_assign_bad_thresholds():
    with pytest.raises(ValueError, match="negative_iou=0.6, positive_iou=0.5"):
        det.assign(np.zeros((1, 4)), np.zeros((1, 4)), [0], positive_iou=0.5, negative_iou=0.6)


# -- losses ----------------------------------------------------------------------------------------------------

def _np_focal(labels, logits, alpha=0.25, gamma=2.0):
    t = np.zeros_like(logits)
    for idx in np.ndindex(labels.shape):
        if labels[idx] >= 0:
            t[idx + (labels[idx],)] = 1
    p = 1 / (1 + np.exp(-logits))
    pt = np.where(t == 1, p, 1 - p)
    at = np.where(t == 1, alpha, 1 - alpha)
    return -at * (1 - pt) ** gamma * np.log(pt)


def test_focal_loss_matches_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, (4, 30, 5)).astype(np.float32)
    labels = rng.integers(-2, 5, (4, 30))
    np.testing.assert_allclose(det.focal_loss(labels, logits).numpy(), _np_focal(labels, logits), rtol=1e-4,
                               atol=1e-6)
    # gamma 0, alpha 0.5: half the binary cross-entropy
    bce = tf.nn.sigmoid_cross_entropy_with_logits(tf.one_hot(labels, 5), logits).numpy()
    np.testing.assert_allclose(det.focal_loss(labels, logits, alpha=0.5, gamma=0.0).numpy(), 0.5 * bce, rtol=1e-5)


def test_smooth_l1():
    d = np.array([-2.0, -0.05, 0.0, 0.1, 3.0], np.float32)
    expected = np.where(np.abs(d) < 0.11, 0.5 * d ** 2 / 0.11, np.abs(d) - 0.055)
    np.testing.assert_allclose(det.smooth_l1(d).numpy(), expected, rtol=1e-6)


def test_detection_loss_normalised_by_positives_and_ignoring():
    rng = np.random.default_rng(3)
    c = 3
    outputs = [rng.normal(size=(2, 2, 2, 2 * c)).astype(np.float32), rng.normal(size=(2, 1, 1, 2 * c)).astype(np.float32),
               rng.normal(size=(2, 2, 2, 8)).astype(np.float32), rng.normal(size=(2, 1, 1, 8)).astype(np.float32)]
    a = 2 * 2 * 2 + 2  # anchors per image
    cls = rng.choice([-2, -1, 0, 1, 2], size=(2, a))
    box = rng.normal(size=(2, a, 4)).astype(np.float32)
    logits = np.concatenate([outputs[0].reshape(2, -1, c), outputs[1].reshape(2, -1, c)], 1)
    deltas = np.concatenate([outputs[2].reshape(2, -1, 4), outputs[3].reshape(2, -1, 4)], 1)
    focal = (_np_focal(cls, logits) * (cls != -2)[..., None]).sum()
    diff = np.abs(deltas - box)
    l1 = (np.where(diff < 0.11, 0.5 * diff ** 2 / 0.11, diff - 0.055) * (cls >= 0)[..., None]).sum()
    loss = det.DetectionLoss(c, box_weight=2.0)
    expected = (focal + 2.0 * l1) / max(1, (cls >= 0).sum())
    assert float(loss({"cls": cls, "box": box}, outputs)) == pytest.approx(expected, rel=1e-4)
    no_positive = np.where(cls >= 0, -1, cls)
    assert float(loss({"cls": no_positive, "box": box}, outputs)) == pytest.approx(
        (_np_focal(no_positive, logits) * (no_positive != -2)[..., None]).sum(), rel=1e-4)  # divided by max(1, 0)
    assert det.DetectionLoss.from_config(loss.get_config()).get_config() == loss.get_config()


@pytest.mark.parametrize("kwargs,match", [(dict(num_classes=0), "num_classes=0"), (dict(num_classes=3, gamma=-1),
                                                                                    "gamma=-1")])
def test_detection_loss_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        det.DetectionLoss(**kwargs)


def test_detection_loss_odd_outputs():
    with pytest.raises(ValueError, match="even number of tensors"):
        det.DetectionLoss(2)({"cls": np.zeros((1, 4)), "box": np.zeros((1, 4, 4))}, [np.zeros((1, 2, 2, 2))] * 3)


# -- decoding + NMS --------------------------------------------------------------------------------------------

def _outputs_for(anchors, scores, deltas, c):
    """A single-level output structure (1 x A x 1 grid) holding given per-anchor logits and deltas."""
    a = len(anchors)
    logits = np.log(scores / (1 - scores)).astype(np.float32).reshape(1, a, 1, c)
    return [logits, deltas.astype(np.float32).reshape(1, a, 1, 4)]


def test_detect_decodes_and_suppresses_per_class():
    anchors = np.array([[10, 10, 30, 30], [11, 11, 31, 31], [10, 10, 30, 30], [60, 60, 80, 80]], np.float32)
    scores = np.full((4, 2), 0.01)
    scores[0, 0], scores[1, 0], scores[2, 1], scores[3, 0] = 0.9, 0.8, 0.7, 0.6
    deltas = np.zeros((4, 4))
    deltas[3] = det.encode(np.array([[62, 58, 82, 90]], np.float32), anchors[3:4]).numpy()
    boxes, s, classes, counts = det.detect(_outputs_for(anchors, scores, deltas, 2), anchors, 2, (100, 80))
    n = counts[0]
    assert n == 3  # anchor 1 overlaps anchor 0 (same class, IoU 0.82) and is suppressed; anchor 2 is another class
    np.testing.assert_allclose(s[0, :n], [0.9, 0.7, 0.6], rtol=1e-5)
    np.testing.assert_array_equal(classes[0, :n], [0, 1, 0])
    np.testing.assert_allclose(boxes[0, 2], [62, 58, 82, 80], atol=1e-3)  # decoded; x2 clipped to the width 80
    _, _, _, counts = det.detect(_outputs_for(anchors, scores, deltas, 2), anchors, 2, (100, 80), iou_threshold=0.9)
    assert counts[0] == 4


def test_detect_bad_inputs():
    anchors = np.zeros((4, 4), np.float32)
    outs = _outputs_for(anchors, np.full((4, 1), 0.5), np.zeros((4, 4)), 1)
    with pytest.raises(ValueError, match="hold 4 anchors, the anchor spec gives 3"):
        det.detect(outs, anchors[:3], 1, (10, 10))
    with pytest.raises(ValueError, match="score_threshold=1.5"):
        det.detect(outs, anchors, 1, (10, 10), score_threshold=1.5)
    with pytest.raises(ValueError, match="non-empty"):
        det.detect_images(None, np.zeros((0, 8, 8, 1)), anchors, 1)
    with pytest.raises(ValueError, match="images are uint8; the detector takes float32 pixels in \\[0, 1\\]"):
        det.detect_images(None, np.zeros((2, 8, 8, 1), np.uint8), anchors, 1)


# -- COCO evaluation -------------------------------------------------------------------------------------------

GT_BOXES = np.array([[[10, 10, 30, 40], [50, 50, 90, 70], [0, 0, 0, 0]],
                     [[5, 60, 25, 100], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
GT_LABELS = np.array([[1, 4, -1], [1, -1, -1]])


def _perfect():
    return [(GT_BOXES[i][GT_LABELS[i] >= 0], np.full((GT_LABELS[i] >= 0).sum(), 0.9), GT_LABELS[i][GT_LABELS[i] >= 0])
            for i in range(2)]


def test_coco_ap_perfect_predictions():
    ap = det.coco_ap(GT_BOXES, GT_LABELS, _perfect(), 5, (100, 120))
    assert (ap["AP"], ap["AP50"], ap["AP75"]) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))


def test_coco_ap_known_cases():
    gt = np.array([[[0, 0, 10, 10]]], np.float32)
    labels = np.array([[0]])
    # IoU 0.78: a match at thresholds 0.50..0.75 (6 of 10): AP 0.6, AP50 1, AP75 1
    ap = det.coco_ap(gt, labels, [(np.array([[0, 0, 10, 7.8]]), np.array([0.9]), np.array([0]))], 1, (20, 20))
    assert ap["AP"] == pytest.approx(0.6) and ap["AP50"] == pytest.approx(1.0) and ap["AP75"] == pytest.approx(1.0)
    # IoU 0.6: AP50 1, AP75 0, AP 0.3
    ap = det.coco_ap(gt, labels, [(np.array([[0, 0, 10, 6]]), np.array([0.9]), np.array([0]))], 1, (20, 20))
    assert ap["AP50"] == pytest.approx(1.0) and ap["AP75"] == 0 and ap["AP"] == pytest.approx(0.3)
    # a false positive scored above the true positive: precision 1/2 at recall 1 -> AP50 0.5
    dets = [(np.array([[12, 12, 18, 18], [0, 0, 10, 10]]), np.array([0.9, 0.8]), np.array([0, 0]))]
    assert det.coco_ap(gt, labels, dets, 1, (20, 20))["AP50"] == pytest.approx(0.5)
    # the right box with the wrong class, or nothing at all: 0
    assert det.coco_ap(gt, labels, [(np.array([[0, 0, 10, 10]]), np.array([0.9]), np.array([1]))], 2,
                       (20, 20))["AP"] == 0
    assert det.coco_ap(gt, labels, [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))], 1, (20, 20))["AP"] == 0


def test_coco_ap_image_without_objects_counts_its_false_positives():
    gt = np.array([[[0, 0, 10, 10]], [[0, 0, 0, 0]]], np.float32)
    labels = np.array([[0], [-1]])
    perfect = (np.array([[0, 0, 10, 10]]), np.array([0.5]), np.array([0]))
    fp = (np.array([[0, 0, 10, 10]]), np.array([0.9]), np.array([0]))
    assert det.coco_ap(gt, labels, [perfect, (np.zeros((0, 4)), [], [])], 1, (20, 20))["AP"] == pytest.approx(1.0)
    assert det.coco_ap(gt, labels, [perfect, fp], 1, (20, 20))["AP50"] == pytest.approx(0.5)


@pytest.mark.parametrize("boxes,labels,match", [
    ([[[0, 0, 10, 10]]], [[7]], "label 7, an unknown class; allowed 0..4"),
    ([[[0, 0, 10, 10]]], [[-3]], "label -3, an unknown class"),
    ([[[0, 0, 10, 130]]], [[1]], "a box outside the image: .*0 <= x1, x2 <= 120"),
    ([[[-5, 0, 10, 10]]], [[1]], "a box outside the image"),
    ([[[5, 5, 5, 10]]], [[1]], "a degenerate box: .*y2 > y1 and x2 > x1"),
    ([[[5, 9, 8, 3]]], [[1]], "a degenerate box"),
    ([[[0, float("nan"), 10, 10]]], [[1]], "a non-finite coordinate"),
    ([[[0, 0, 10, 10]]], [[-1]], "holds no object"),
])
def test_coco_ap_bad_ground_truth(boxes, labels, match):
    with pytest.raises(ValueError, match=match):
        det.coco_ap(np.array(boxes, np.float32), np.array(labels), [(np.zeros((0, 4)), [], [])], 5, (100, 120))


def test_coco_ap_bad_detections():
    with pytest.raises(ValueError, match="1 detection lists for 2 images"):
        det.coco_ap(GT_BOXES, GT_LABELS, _perfect()[:1], 5, (100, 120))
    dets = _perfect()
    dets[0] = (dets[0][0], dets[0][1], np.array([1, 9]))
    with pytest.raises(ValueError, match="class 9; allowed 0..4"):
        det.coco_ap(GT_BOXES, GT_LABELS, dets, 5, (100, 120))


def test_check_annotations_shapes_and_padding():
    det.check_annotations(np.zeros((2, 3, 4)), -np.ones((2, 3)), (8, 8), 2)  # padding only: allowed
    with pytest.raises(ValueError, match=r"boxes \[N, M, 4\] and labels \[N, M\]"):
        det.check_annotations(np.zeros((2, 3)), np.zeros((2, 3)), (8, 8), 2)


def test_anchor_helpers_are_consistent_with_math():
    spec = det.AnchorSpec(levels=(2, 3), size_factor=3.0, scales=(1.0, 2.0), ratios=(1.0,))
    assert spec.strides() == (4, 8) and spec.grid_sizes((20, 12)) == [(5, 3), (3, 2)]
    a = spec.level_anchors(3, (1, 1))
    np.testing.assert_allclose(a, [[4 - 12, 4 - 12, 4 + 12, 4 + 12], [4 - 24, 4 - 24, 4 + 24, 4 + 24]])
    assert math.isclose(spec.to_dict()["size_factor"], 3.0)
