"""Input pipelines: real Fashion-MNIST files, tfds mock data (never a download), validation."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from agq_keras.data import fashion_mnist, pipeline


def first(ds):
    return next(iter(ds))


@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_real_files(split):
    ds, classes, shape = pipeline.make("fashion_mnist", split, batch_size=32, subset=100)
    assert classes == 10 and shape == (28, 28, 1)
    batches = list(ds)
    assert [len(b[1]) for b in batches] == [32, 32, 32, 4]
    x, y = batches[0]
    assert x.shape == (32, 28, 28, 1) and x.dtype == tf.float32 and y.dtype == tf.int32
    xs = np.concatenate([b[0].numpy() for b in batches])
    assert 0.0 <= xs.min() and xs.max() <= 1.0 and xs.max() > 0.5
    ys = np.concatenate([b[1].numpy() for b in batches])
    raw_x, raw_y = fashion_mnist.load(split, subset=100)
    if split == "test":  # test order is the file order
        np.testing.assert_array_equal(ys, raw_y)
        np.testing.assert_allclose(xs, raw_x / 255.0, atol=1e-7)
    else:  # a permutation of the same examples
        assert sorted(ys.tolist()) == sorted(raw_y.tolist())


def test_in_memory_shuffle_is_keyed_on_epoch():
    epoch = tf.Variable(0, dtype=tf.int64)
    x = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
    y = np.arange(20) % 5
    ds = pipeline.from_arrays(x, y, 5, batch_size=20, training=True, seed=7, epoch=epoch)
    order = lambda: (first(ds)[0].numpy().ravel() * 255).round().astype(int).tolist()  # noqa: E731
    e0 = order()
    assert order() == e0  # same epoch, same order (a resumed run sees the same data)
    epoch.assign(1)
    e1 = order()
    assert e1 != e0 and sorted(e1) == list(range(20))
    epoch.assign(0)
    assert order() == e0


def test_cifar100_mock():
    with tfds.testing.mock_data(num_examples=6):
        train, classes, shape = pipeline.make("cifar100", "train", batch_size=4, data_dir="/nonexistent")
        test, _, _ = pipeline.make("cifar100", "test", batch_size=4, data_dir="/nonexistent")
        x, y = first(train)
        xt, _ = first(test)
    assert classes == 100 and shape == (32, 32, 3)
    assert x.shape == (4, 32, 32, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
    mean = np.array(pipeline.CIFAR100_MEAN)
    for arr in (x.numpy(), xt.numpy()):
        assert np.all(arr >= -mean - 1e-6) and np.all(arr <= 1 - mean + 1e-6)
    assert np.all((y.numpy() >= 0) & (y.numpy() < 100))


def test_imagenet_mock_crops():
    with tfds.testing.mock_data(num_examples=4):
        train, classes, shape = pipeline.make("imagenet2012", "train", batch_size=2, image_size=56)
        test, _, _ = pipeline.make("imagenet2012", "test", batch_size=2, image_size=56)
        x, y = first(train)
        xt1, _ = first(test)
        xt2, _ = first(test)
    assert classes == 1000 and shape == (56, 56, 3)
    assert x.shape == (2, 56, 56, 3) and xt1.shape == (2, 56, 56, 3) and x.dtype == tf.float32
    np.testing.assert_array_equal(xt1.numpy(), xt2.numpy())  # single centre crop: deterministic
    mean = np.array(pipeline.IMAGENET_MEAN)
    assert np.all(x.numpy() >= -mean - 1e-5) and np.all(x.numpy() <= 1 - mean + 1e-5)
    assert np.all((y.numpy() >= 0) & (y.numpy() < 1000))


def test_imagenet_centre_crop_matches_numpy():
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (64, 64, 3)), tf.uint8)
    out = pipeline.imagenet_preprocess(image, training=False, image_size=56, resize=64).numpy()
    ref = image.numpy()[4:60, 4:60].astype(np.float32) / 255.0 - np.array(pipeline.IMAGENET_MEAN)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_missing_datasets_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_and_prepare"):
        pipeline.make("cifar100", "train", batch_size=4, data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        pipeline.make("fashion_mnist", "train", batch_size=4, data_dir=str(tmp_path / "none"))
    with pytest.raises(ValueError, match="allowed"):
        pipeline.make("mnist", "train", batch_size=4)


@pytest.mark.parametrize("x,y,match", [
    (np.full((4, 2, 2, 1), np.nan, np.float32), np.zeros(4, int), "NaN"),
    (np.zeros((4, 2, 2, 1), np.float32), np.array([0, 1, 2, 5]), r"0\.\.4"),
    (np.zeros((4, 2, 2, 1), np.float32), np.array([0, -1, 2, 3]), "labels"),
    (np.zeros((4, 2, 2), np.float32), np.zeros(4, int), "shape"),
    (np.zeros((4, 2, 2, 1), np.float32), np.zeros(3, int), "labels must have shape"),
])
def test_custom_arrays_are_validated(x, y, match):
    with pytest.raises(ValueError, match=match):
        pipeline.from_arrays(x, y, 5, batch_size=2, training=True)


def test_export_arrays_take_the_runs_preprocessing_in_order(tmp_path):
    """pipeline.arrays (the export CLI's calibration and verification data): the first images of a split,
    in order, with test-time preprocessing; for CIFAR-100 the training split is neither cropped nor
    flipped (mock data), for an npz file uint8 pixels are scaled by 1/255."""
    with tfds.testing.mock_data(num_examples=6):
        x, y = pipeline.arrays("cifar100", "train", 5, data_dir="/nonexistent")
        again, _ = pipeline.arrays("cifar100", "train", 5, data_dir="/nonexistent")
        raw = [im for im, _ in tfds.load("cifar100", split="train", as_supervised=True).take(5)]
    assert x.shape == (5, 32, 32, 3) and x.dtype == np.float32 and y.shape == (5,)
    np.testing.assert_array_equal(x, again)
    expected = np.stack([im.numpy() / 255.0 - np.array(pipeline.CIFAR100_MEAN) for im in raw]).astype(np.float32)
    np.testing.assert_allclose(x, expected, atol=1e-6)
    path = str(tmp_path / "d.npz")
    pixels = np.random.default_rng(0).integers(0, 256, (7, 6, 6, 1)).astype(np.uint8)
    np.savez(path, x_train=pixels, y_train=np.arange(7) % 3, x_test=pixels[:2], y_test=np.arange(2))
    x, y = pipeline.arrays("npz", "train", 7, data_dir=path, num_classes=3)
    np.testing.assert_allclose(x, pixels / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y, np.arange(7) % 3)
    with pytest.raises(ValueError, match="count"):
        pipeline.arrays("npz", "train", 0, data_dir=path, num_classes=3)
