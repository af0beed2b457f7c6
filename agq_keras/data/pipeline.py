"""`tf.data` input pipelines for training and evaluation.

* ``fashion_mnist``: offline IDX files (:mod:`agq_keras.data.fashion_mnist`),
  scaled to [0, 1]; 28x28x1, 10 classes.
* ``cifar100`` (tensorflow-datasets): scaled to [0, 1], per-channel mean
  subtracted; training adds 4-pixel zero padding + random 32x32 crop +
  random horizontal flip.
* ``imagenet2012`` (tensorflow-datasets, paper §4.1): resized to 256x256, a
  random 224x224 crop of the image or of its horizontal flip for training,
  the single centre crop for testing; scaled to [0, 1] with the per-channel
  ImageNet mean subtracted.
* :func:`from_arrays`: any in-memory dataset (validated: finite pixels,
  labels in range).

Every pipeline ends with ``prefetch(AUTOTUNE)``. In-memory training sets are
shuffled with a stateless permutation keyed on ``(seed, epoch)``, where the
epoch is the variable :class:`EpochCounter` sets: a run resumed at epoch k
sees exactly the order an uninterrupted run sees at epoch k.
"""

from __future__ import annotations

import numbers

import keras
import numpy as np
import tensorflow as tf

from agq_keras.data import fashion_mnist, tfds_load

DATASETS = ("fashion_mnist", "cifar100", "imagenet2012", "npz")
NUM_CLASSES = {"fashion_mnist": 10, "cifar100": 100, "imagenet2012": 1000}
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
TFDS_HOW_TO_GET = ("prepare it once with tensorflow-datasets on a machine with internet "
                   "(`python -m tensorflow_datasets.scripts.download_and_prepare --datasets={name} "
                   "--data_dir=DIR`; ImageNet needs the manually downloaded ILSVRC2012 tar files in "
                   "DIR/downloads/manual) and pass --config.data_dir=DIR")


class EpochCounter(keras.callbacks.Callback):
    """Holds the epoch the in-memory shuffle is keyed on; set at each epoch start."""

    def __init__(self):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_epoch")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch.assign(epoch)


def _check_int(name, value, minimum=1, allow_none=False):
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")
    return int(value)


def from_arrays(images, labels, num_classes: int, *, batch_size: int, training: bool, seed: int = 0,
                epoch: tf.Variable | None = None, scale: float = 255.0) -> tf.data.Dataset:
    """Batched dataset of ``(float32 images / scale, int32 labels)`` from arrays.

    Raises ValueError for non-finite pixels, a rank other than 4, labels
    outside ``[0, num_classes)`` or a length mismatch.
    """
    batch_size = _check_int("batch_size", batch_size)
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"images must have shape [N, height, width, channels], got {images.shape}.")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must have shape [N] = [{len(images)}], got {labels.shape}.")
    if len(images) == 0:
        raise ValueError("the dataset is empty.")
    if np.issubdtype(images.dtype, np.floating) and not np.all(np.isfinite(images)):
        bad = int(np.size(images) - np.count_nonzero(np.isfinite(images)))
        raise ValueError(f"images hold {bad} NaN/infinite pixel value(s); all pixels must be finite.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels hold values in [{int(labels.min())}, {int(labels.max())}]; "
                         f"allowed: 0..{num_classes - 1} ({num_classes} classes).")
    x = tf.constant(images)
    y = tf.constant(labels.astype(np.int32))
    n = len(images)
    if training:
        epoch = epoch if epoch is not None else tf.constant(0, tf.int64)
        seed_t = tf.constant(int(seed), tf.int64)

        def permutation(_):
            key = tf.stack([seed_t, tf.convert_to_tensor(epoch, tf.int64)])
            return tf.random.experimental.stateless_shuffle(tf.range(n), seed=key)

        ds = tf.data.Dataset.from_tensors(0).map(permutation).unbatch()
    else:
        ds = tf.data.Dataset.range(n)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda i: (tf.cast(tf.gather(x, i), tf.float32) / scale, tf.gather(y, i)),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _load_tfds(name, split, data_dir):
    import tensorflow_datasets as tfds

    try:
        return tfds_load.load(name, split=split, data_dir=data_dir or None, download=False, as_supervised=True)
    except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as err:
        raise FileNotFoundError(f"Dataset {name!r} ({split}) is not prepared in "
                                f"{data_dir or 'the default tensorflow-datasets folder'}: "
                                f"{TFDS_HOW_TO_GET.format(name=name)}. ({err})") from None


def cifar_preprocess(image, training: bool):
    image = tf.cast(image, tf.float32) / 255.0 - tf.constant(CIFAR100_MEAN)
    if training:
        image = tf.image.pad_to_bounding_box(image, 4, 4, 40, 40)
        image = tf.image.random_crop(image, (32, 32, 3))
        image = tf.image.random_flip_left_right(image)
    return image


def imagenet_preprocess(image, training: bool, image_size: int = 224, resize: int = 256):
    image = tf.image.resize(tf.cast(image, tf.float32), (resize, resize))
    if training:
        image = tf.image.random_crop(image, (image_size, image_size, 3))
        image = tf.image.random_flip_left_right(image)
    else:
        off = (resize - image_size) // 2
        image = image[off:off + image_size, off:off + image_size, :]
    return image / 255.0 - tf.constant(IMAGENET_MEAN)


def load_npz(path: str, split: str):
    """A custom dataset: an ``.npz`` holding ``x_train, y_train, x_test, y_test`` (uint8 or float pixels)."""
    if not path or not path.endswith(".npz"):
        raise ValueError(f"dataset='npz' needs data_dir set to an .npz file, got {path!r}.")
    if not __import__("os").path.isfile(path):
        raise FileNotFoundError(f"custom dataset file {path!r} does not exist.")
    try:
        with np.load(path) as data:
            return data[f"x_{split}"], data[f"y_{split}"]
    except KeyError:
        raise ValueError(f"{path!r} must hold arrays x_train, y_train, x_test, y_test.") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read custom dataset {path!r}: {err}") from None


def make(dataset: str, split: str, *, batch_size: int, data_dir: str = "", subset: int = 0, seed: int = 0,
         epoch: tf.Variable | None = None, image_size: int = 224, num_classes: int = 0, augment=None):
    """``(tf.data.Dataset, num_classes, input_shape)`` for a dataset name and split.

    ``augment`` (default: the training split) shuffles and augments; ``augment=False`` on the training
    split gives its images in order with the test-time preprocessing (e.g. for export calibration)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} is not supported; allowed: {', '.join(DATASETS)}.")
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; allowed: train, test.")
    batch_size = _check_int("batch_size", batch_size)
    subset = _check_int("subset", subset, minimum=0)
    training = split == "train" if augment is None else bool(augment)
    if dataset == "fashion_mnist":
        x, y = fashion_mnist.load(split, data_dir or None, subset or None)
        ds = from_arrays(x, y, 10, batch_size=batch_size, training=training, seed=seed, epoch=epoch)
        return ds, 10, fashion_mnist.INPUT_SHAPE
    if dataset == "npz":
        if not num_classes:
            raise ValueError("dataset='npz' needs num_classes (>= 2).")
        x, y = load_npz(data_dir, split)
        if subset:
            x, y = x[:subset], y[:subset]
        scale = 255.0 if np.asarray(x).dtype == np.uint8 else 1.0
        ds = from_arrays(x, y, num_classes, batch_size=batch_size, training=training, seed=seed, epoch=epoch,
                         scale=scale)
        return ds, num_classes, tuple(int(d) for d in np.shape(x)[1:])
    if dataset == "cifar100":
        ds = _load_tfds("cifar100", split, data_dir)
        fn, shape = (lambda im: cifar_preprocess(im, training)), (32, 32, 3)
    else:
        image_size = _check_int("image_size", image_size)
        ds = _load_tfds("imagenet2012", "train" if split == "train" else "validation", data_dir)
        resize = max(image_size, round(image_size * 256 / 224))
        fn, shape = (lambda im: imagenet_preprocess(im, training, image_size, resize)), (image_size, image_size, 3)
    if subset:
        ds = ds.take(subset)
    if training:
        ds = ds.shuffle(10_000 if dataset == "imagenet2012" else 50_000, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda im, lab: (fn(im), tf.cast(lab, tf.int32)), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return ds, NUM_CLASSES[dataset], shape


def arrays(dataset: str, split: str, count: int, *, data_dir: str = "", image_size: int = 224, num_classes: int = 0,
           batch_size: int = 250):
    """The first ``count`` images of a split (test-time preprocessing, in order) and their labels, as NumPy
    arrays: calibration and verification data for the export, preprocessed exactly as in training."""
    count = _check_int("count", count)
    ds, _, _ = make(dataset, split, batch_size=batch_size, data_dir=data_dir, subset=count, image_size=image_size,
                    num_classes=num_classes, augment=False)
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)
