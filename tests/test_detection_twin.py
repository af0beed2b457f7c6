"""The Fashion-MNIST detection twin (determinism, tight boxes, the pipeline, bad arguments) and the COCO/VOC
loaders on tensorflow-datasets mock data."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from agq_keras import detection as det
from agq_keras.data import detection_twin as dt
from agq_keras.data import fashion_mnist


@pytest.fixture(scope="module")
def garments():
    return fashion_mnist.load("test", subset=300)


@pytest.fixture(scope="module")
def twin(garments):
    return dt.generate(*garments, 40, seed=3, split="test", canvas_size=96, max_objects=5, scale_range=(0.75, 1.5))


def test_shapes_counts_and_padding(twin):
    images, boxes, labels, counts = twin
    assert images.shape == (40, 96, 96, 1) and images.dtype == np.uint8
    assert boxes.shape == (40, 5, 4) and labels.shape == (40, 5) and counts.shape == (40,)
    assert counts.min() >= 1 and counts.max() <= 5 and len(set(counts.tolist())) > 2
    for i, n in enumerate(counts):
        assert (labels[i, :n] >= 0).all() and (labels[i, :n] < 10).all()
        assert (labels[i, n:] == -1).all() and (boxes[i, n:] == 0).all()
    det.check_annotations(boxes, labels, (96, 96), 10)  # inside the canvas, not degenerate, known classes


def test_boxes_are_tight(twin):
    images, boxes, labels, counts = twin
    for i, n in enumerate(counts):
        canvas = images[i, ..., 0] > 0
        covered = np.zeros_like(canvas)
        for y1, x1, y2, x2 in boxes[i, :n].astype(int):
            region = canvas[y1:y2, x1:x2]
            # every border row and column of the box holds a garment pixel (max compositing keeps them all)
            assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
            covered[y1:y2, x1:x2] = True
        assert not (canvas & ~covered).any()  # no garment pixel outside every box
        if n == 1:
            np.testing.assert_array_equal(boxes[i, 0], dt.tight_box(canvas))


def test_deterministic_and_prefix_stable(garments, twin):
    again = dt.generate(*garments, 40, seed=3, split="test", canvas_size=96, max_objects=5, scale_range=(0.75, 1.5))
    for a, b in zip(twin, again):
        np.testing.assert_array_equal(a, b)
    prefix = dt.generate(*garments, 7, seed=3, split="test", canvas_size=96, max_objects=5, scale_range=(0.75, 1.5))
    for a, b in zip(twin, prefix):
        np.testing.assert_array_equal(a[:7], b)
    other = dt.generate(*garments, 7, seed=4, split="test", canvas_size=96, max_objects=5, scale_range=(0.75, 1.5))
    train = dt.generate(*garments, 7, seed=3, split="train", canvas_size=96, max_objects=5, scale_range=(0.75, 1.5))
    assert not np.array_equal(other[0], prefix[0]) and not np.array_equal(train[0], prefix[0])


def test_resize_matches_tf_image_resize(garments):
    image = garments[0][5, ..., 0]
    for size in (21, 42, 56):
        ours = dt.resize_bilinear(image, size).astype(int)
        theirs = tf.image.resize(image[..., None].astype(np.float32), (size, size), antialias=False).numpy()[..., 0]
        assert np.abs(ours - np.rint(np.clip(theirs, 0, 255))).max() <= 1


def test_box_iou_by_hand():
    np.testing.assert_allclose(dt.box_iou([[0, 0, 10, 10]], [[0, 5, 10, 15], [20, 20, 30, 30]]), [[1 / 3, 0]])


def test_pipeline_batches_padding_and_shuffle(twin):
    images, boxes, labels, _ = twin
    epoch = tf.Variable(0, dtype=tf.int64)
    ds = dt.dataset(images, boxes, labels, batch_size=16, training=True, seed=1, epoch=epoch)
    x, y = next(iter(ds))
    assert x.shape == (16, 96, 96, 1) and x.dtype == tf.float32 and float(tf.reduce_max(x)) <= 1.0
    assert y["boxes"].shape == (16, 5, 4) and y["labels"].shape == (16, 5)
    first = [b["labels"].numpy() for _, b in ds]
    assert sum(len(f) for f in first) == 40
    assert np.array_equal(np.concatenate(first), np.concatenate([b["labels"].numpy() for _, b in ds]))  # same epoch
    epoch.assign(1)
    assert not np.array_equal(np.concatenate(first), np.concatenate([b["labels"].numpy() for _, b in ds]))
    plain = dt.dataset(images, boxes, labels, batch_size=40)
    x, y = next(iter(plain))
    np.testing.assert_array_equal(y["labels"].numpy(), labels)
    # float images are taken as they are: as_float gives what the pipeline feeds F
    np.testing.assert_allclose(x.numpy(), dt.as_float(images), rtol=1e-6)
    x_float, _ = next(iter(dt.dataset(dt.as_float(images), boxes, labels, batch_size=40)))
    np.testing.assert_allclose(x_float.numpy(), x.numpy(), rtol=1e-6)


def test_targets_from_the_pipeline(twin):
    images, boxes, labels, counts = twin
    spec = det.AnchorSpec(levels=(3, 4, 5), size_factor=2.0)
    anchors = spec.anchors((96, 96))
    ds = det.with_targets(dt.dataset(images[:4], boxes[:4], labels[:4], batch_size=4), anchors)
    _, y = next(iter(ds))
    cls = y["cls"].numpy()
    assert cls.shape == (4, len(anchors)) and y["box"].shape == (4, len(anchors), 4)
    for i in range(4):  # every object has a positive anchor of its class (low-quality matches)
        assert set(labels[i, :counts[i]].tolist()) == set(cls[i][cls[i] >= 0].tolist())


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_canvases=0), "num_canvases=0"), (dict(canvas_size=16), "canvas_size=16"),
    (dict(max_objects=0), "max_objects=0"), (dict(split="val"), "split='val'"),
    (dict(scale_range=(1.0, 5.0)), "scale_range=\\(1.0, 5.0\\)"), (dict(max_iou=2), "max_iou=2"),
    (dict(seed=-1), "seed=-1")])
def test_generate_bad_arguments(garments, kwargs, match):
    args = {"num_canvases": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        dt.generate(*garments, **args)


def test_generate_bad_garments(garments):
    with pytest.raises(ValueError, match="garment labels hold 0..10; allowed 0..9"):
        dt.generate(garments[0][:3], np.array([0, 10, 2]), 1)
    with pytest.raises(ValueError, match="garments must be"):
        dt.generate(np.zeros((3, 28, 20), np.uint8), np.zeros(3, int), 1)


def test_empty_garments_are_left_out():
    blank = np.zeros((4, 28, 28), np.uint8)
    images, boxes, labels, counts = dt.generate(blank, np.zeros(4, int), 3, canvas_size=64)
    assert (counts == 0).all() and (labels == -1).all() and not images.any()


def test_dataset_bad_arrays():
    with pytest.raises(ValueError, match="with N > 0"):
        dt.dataset(np.zeros((0, 8, 8, 1)), np.zeros((0, 2, 4)), np.zeros((0, 2)), batch_size=2)
    with pytest.raises(ValueError, match="batch_size=0"):
        dt.dataset(np.zeros((1, 8, 8, 1)), np.zeros((1, 2, 4)), np.zeros((1, 2)), batch_size=0)


@pytest.mark.parametrize("name,classes", [("voc2007", 20), ("coco2017", 80)])
def test_tfds_loaders_on_mock_data(name, classes):
    with tfds.testing.mock_data(num_examples=3):
        ds, num_classes = dt.load_tfds(name, "test", image_size=64, max_objects=5)
        examples = list(ds.take(3).as_numpy_iterator())
    assert num_classes == classes and len(examples) == 3
    for image, ann in examples:
        assert image.shape == (64, 64, 3) and 0 <= image.min() and image.max() <= 1
        assert ann["boxes"].shape == (5, 4) and ann["labels"].shape == (5,)
    boxes = np.stack([a["boxes"] for _, a in examples])
    labels = np.stack([a["labels"] for _, a in examples])
    assert (labels >= 0).any()
    det.check_annotations(boxes, labels, (64, 64), classes)  # clipped, degenerate ones dropped


def test_tfds_loader_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="dataset 'coco2014' is not available.*allowed: coco2017, voc2007"):
        dt.load_tfds("coco2014", "train")
    with pytest.raises(ValueError, match="split='validation'"):
        dt.load_tfds("voc2007", "validation")
    with pytest.raises(FileNotFoundError, match="voc2007 .* is not prepared"):
        dt.load_tfds("voc2007", "train", data_dir=str(tmp_path))
