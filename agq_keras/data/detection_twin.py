"""The Fashion-MNIST detection twin: garments scattered on a canvas, generated offline and deterministically.

Each canvas (``canvas_size`` x ``canvas_size``, one grayscale channel, uint8, black background) holds 1 to
``max_objects`` garments drawn from the Fashion-MNIST split of the same name (the train canvases use train
garments, the test canvases test garments). For each garment: a uniform scale in ``scale_range`` (28 px ->
``round(28 * scale)`` px, bilinear), a uniform position with the garment fully inside the canvas, and a
placement kept only when its box overlaps every box already placed by IoU <= ``max_iou`` (up to 20 tries per
garment, else the garment is left out; every canvas keeps its first garment). Garments are composited with
``max`` (an overlap never erases a garment's pixels).

**Box format, everywhere in the package (``agq_keras.detection`` too): ``[y1, x1, y2, x2]`` in pixels,
float32, with the pixel row ``r`` covering ``[r, r + 1)``**: a box is the tight bounding box of the
garment's nonzero pixels after scaling, ``y1`` = its first nonzero row, ``y2`` = its last nonzero row + 1
(so ``y2 - y1`` is its height in pixels); likewise for columns. Labels are the 10 Fashion-MNIST classes,
``0..9``.

Determinism: canvas ``i`` of a split is drawn from ``numpy.random.default_rng((seed, SPLIT_IDS[split], i))``,
so a canvas does not depend on how many canvases are generated (the first 100 of a 1000-canvas set are the
100-canvas set) nor on the machine.

:func:`dataset` makes the ``tf.data`` pipeline: ``(image float32 [0, 1], {"boxes": [max_objects, 4],
"labels": [max_objects]})`` with boxes padded by zeros and labels by -1 (padding is what
``agq_keras.detection`` ignores), optionally shuffled per epoch, batched and prefetched.
:func:`load_tfds` reads COCO 2017 / VOC 2007 from tensorflow-datasets (prepared beforehand; nothing is
downloaded) into the same format.
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from agq_keras.data import fashion_mnist, tfds_load

SPLIT_IDS = {"train": 0, "test": 1}
NUM_CLASSES = fashion_mnist.NUM_CLASSES
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
PLACEMENT_TRIES = 20
PAD_LABEL = -1


def _check_int(name, value, minimum, maximum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum or (
            maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ValueError(f"{name}={value!r} is not allowed; it must be an integer {allowed}.")
    return int(value)


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """A square uint8 image resized to ``size`` x ``size`` (bilinear, half-pixel centres, like
    ``tf.image.resize``), in NumPy so that the twin is the same on every machine."""
    n = image.shape[0]
    centres = (np.arange(size) + 0.5) * (n / size) - 0.5
    centres = np.clip(centres, 0, n - 1)
    lo = np.floor(centres).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = centres - lo
    img = image.astype(np.float64)
    rows = img[lo] * (1 - w)[:, None] + img[hi] * w[:, None]
    out = rows[:, lo] * (1 - w)[None, :] + rows[:, hi] * w[None, :]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def tight_box(mask: np.ndarray):
    """``[y1, x1, y2, x2]`` of the nonzero pixels of a 2-D array (ends exclusive), or None when all zero."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [N, 4] with every box of ``b`` [M, 4] (``[y1, x1, y2, x2]``): [N, M]."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    y1 = np.maximum(a[:, None, 0], b[None, :, 0])
    x1 = np.maximum(a[:, None, 1], b[None, :, 1])
    y2 = np.minimum(a[:, None, 2], b[None, :, 2])
    x2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def generate(garments: np.ndarray, garment_labels: np.ndarray, num_canvases: int, *, seed: int = 0,
             split: str = "train", canvas_size: int = 128, max_objects: int = 6, scale_range=(0.75, 2.0),
             max_iou: float = 0.3):
    """Canvases from an array of garments (uint8 [N, 28, 28] or [N, 28, 28, 1]) and their labels.

    Returns ``(images uint8 [num_canvases, canvas_size, canvas_size, 1], boxes float32 [num_canvases,
    max_objects, 4], labels int32 [num_canvases, max_objects], counts int32 [num_canvases])``; the rows past
    ``counts[i]`` are padding (boxes 0, labels -1)."""
    num_canvases = _check_int("num_canvases", num_canvases, 1)
    canvas_size = _check_int("canvas_size", canvas_size, 32)
    max_objects = _check_int("max_objects", max_objects, 1, 100)
    seed = _check_int("seed", seed, 0)
    if split not in SPLIT_IDS:
        raise ValueError(f"split={split!r} is not available; allowed: {', '.join(SPLIT_IDS)}.")
    lo, hi = (float(s) for s in scale_range)
    largest = int(round(garments.shape[1] * hi))
    if not (0 < lo <= hi) or largest > canvas_size:
        raise ValueError(f"scale_range={tuple(scale_range)!r} is not allowed: it must be 0 < low <= high with a "
                         f"garment of {garments.shape[1]} px * high <= canvas_size={canvas_size}.")
    if not 0 <= max_iou <= 1:
        raise ValueError(f"max_iou={max_iou!r} must be in [0, 1].")
    garments = np.asarray(garments)
    if garments.ndim == 4:
        garments = garments[..., 0]
    garment_labels = np.asarray(garment_labels)
    if garments.ndim != 3 or garments.shape[1] != garments.shape[2] or len(garment_labels) != len(garments):
        raise ValueError(f"garments must be [N, S, S] with N labels; got {garments.shape} and "
                         f"{garment_labels.shape}.")
    if garment_labels.size and (garment_labels.min() < 0 or garment_labels.max() >= NUM_CLASSES):
        raise ValueError(f"garment labels hold {int(garment_labels.min())}..{int(garment_labels.max())}; "
                         f"allowed 0..{NUM_CLASSES - 1}.")
    images = np.zeros((num_canvases, canvas_size, canvas_size, 1), np.uint8)
    boxes = np.zeros((num_canvases, max_objects, 4), np.float32)
    labels = np.full((num_canvases, max_objects), PAD_LABEL, np.int32)
    counts = np.zeros((num_canvases,), np.int32)
    for i in range(num_canvases):
        rng = np.random.default_rng((seed, SPLIT_IDS[split], i))
        wanted = int(rng.integers(1, max_objects + 1))
        n = 0
        for _ in range(wanted):
            index = int(rng.integers(len(garments)))
            size = int(round(garments.shape[1] * rng.uniform(lo, hi)))
            patch = resize_bilinear(garments[index], size)
            own = tight_box(patch)
            if own is None:  # an empty garment image has no box: left out
                continue
            for _ in range(PLACEMENT_TRIES):
                y, x = (int(v) for v in rng.integers(0, canvas_size - size + 1, size=2))
                box = own + np.array([y, x, y, x], np.float32)
                if n == 0 or box_iou(box, boxes[i, :n]).max() <= max_iou:
                    break
            else:
                continue
            region = images[i, y:y + size, x:x + size, 0]
            np.maximum(region, patch, out=region)
            boxes[i, n], labels[i, n] = box, garment_labels[index]
            n += 1
        counts[i] = n
    return images, boxes, labels, counts


def load(split: str = "train", num_canvases: int = 2000, *, data_dir: str | None = None, seed: int = 0,
         canvas_size: int = 128, max_objects: int = 6, scale_range=(0.75, 2.0), max_iou: float = 0.3):
    """The twin of a split from the Fashion-MNIST IDX files (:func:`generate` on that split's garments)."""
    garments, garment_labels = fashion_mnist.load(split, data_dir)
    return generate(garments, garment_labels, num_canvases, seed=seed, split=split, canvas_size=canvas_size,
                    max_objects=max_objects, scale_range=scale_range, max_iou=max_iou)


def as_float(images) -> np.ndarray:
    """uint8 canvases as the detector sees them: float32 in [0, 1] (pixels / 255, as :func:`dataset` gives)."""
    return np.asarray(images, np.float32) / 255.0


def dataset(images, boxes, labels, *, batch_size: int, training: bool = False, seed: int = 0, epoch=None,
            drop_remainder: bool = False) -> tf.data.Dataset:
    """``(image float32 [0, 1], {"boxes", "labels"})`` batches from arrays (padded as :func:`generate`
    gives them; uint8 images are divided by 255, float images taken as they are). ``training``: shuffled with a stateless permutation keyed on ``(seed, epoch)`` (``epoch``
    a variable, as :class:`agq_keras.data.pipeline.EpochCounter` holds, or None for 0)."""
    images, boxes, labels = np.asarray(images), np.asarray(boxes, np.float32), np.asarray(labels, np.int32)
    n = len(images)
    if n == 0 or images.ndim != 4 or boxes.shape != (n, labels.shape[1], 4) or labels.shape[0] != n:
        raise ValueError(f"dataset(): images [N, H, W, C], boxes [N, M, 4] and labels [N, M] with N > 0 are "
                         f"required; got {images.shape}, {boxes.shape}, {labels.shape}.")
    batch_size = _check_int("batch_size", batch_size, 1)
    ds = tf.data.Dataset.from_tensor_slices((images, boxes, labels))
    if training:
        order = tf.data.Dataset.range(1).map(
            lambda _: tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64),
                                                            tf.cast(0 if epoch is None else epoch, tf.int64)])))
        ds = order.flat_map(tf.data.Dataset.from_tensor_slices).map(
            lambda i: (tf.gather(images, i), tf.gather(boxes, i), tf.gather(labels, i)))
    scale = 1.0 / 255 if images.dtype == np.uint8 else 1.0  # uint8 canvases, or images already in [0, 1]
    ds = ds.map(lambda x, b, y: (tf.cast(x, tf.float32) * scale, {"boxes": b, "labels": y}),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


# -- COCO 2017 / VOC 2007 through tensorflow-datasets (prepared beforehand) ----------------------------------

TFDS_NAMES = {"coco2017": ("coco/2017", 80), "voc2007": ("voc/2007", 20)}


def load_tfds(name: str, split: str, *, data_dir: str = "", image_size: int = 512, max_objects: int = 100):
    """COCO 2017 / VOC 2007 from tensorflow-datasets (``data_dir`` = the TFDS folder, prepared beforehand;
    nothing is downloaded) as ``(image float32 [0, 1] resized to image_size x image_size, {"boxes" (pixels of
    the resized image, [y1, x1, y2, x2]), "labels"})`` examples padded to ``max_objects``. Documented handling
    of what :func:`agq_keras.detection.check_annotations` would refuse: boxes are clipped to the image, and
    objects whose clipped box is degenerate (zero height or width) or whose label is outside
    ``0..num_classes - 1`` are dropped, as are COCO's crowd annotations and objects past ``max_objects``.
    Splits: ``train`` is tfds's ``train``; ``test`` is COCO's ``validation`` (val2017) and VOC's ``test``.
    Returns ``(dataset of examples, num_classes)``."""
    if name not in TFDS_NAMES:
        raise ValueError(f"dataset {name!r} is not available through tensorflow-datasets here; allowed: "
                         f"{', '.join(TFDS_NAMES)}.")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ValueError(f"{name} needs tensorflow-datasets: pip install -e '.[detection]'.") from None
    tfds_name, num_classes = TFDS_NAMES[name]
    image_size = _check_int("image_size", image_size, 32)
    max_objects = _check_int("max_objects", max_objects, 1)
    tfds_split = {"train": "train", "test": "validation" if name == "coco2017" else "test"}.get(split)
    if tfds_split is None:
        raise ValueError(f"split={split!r} is not available; allowed: train, test.")
    try:
        ds = tfds_load.load(tfds_name, split=tfds_split, data_dir=data_dir or None, download=False)
    except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as err:
        raise FileNotFoundError(f"{name} ({tfds_name}) is not prepared in data_dir={data_dir!r}: prepare it once "
                                f"with tensorflow-datasets on a machine with internet and pass its folder "
                                f"({type(err).__name__}).") from None

    def convert(example):
        image = tf.image.resize(tf.cast(example["image"], tf.float32) / 255.0, (image_size, image_size))
        objects = example["objects"]
        n = tf.minimum(tf.shape(objects["label"])[0], tf.shape(objects["bbox"])[0])
        boxes = tf.clip_by_value(objects["bbox"][:n], 0.0, 1.0) * float(image_size)  # tfds: normalised y1 x1 y2 x2
        labels = tf.cast(objects["label"][:n], tf.int32)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (labels >= 0) & (labels < num_classes)
        if "is_crowd" in objects:
            crowd = tf.pad(tf.cast(objects["is_crowd"][:n], tf.bool), [[0, n - tf.shape(objects["is_crowd"][:n])[0]]])
            keep &= tf.logical_not(crowd)
        boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
        boxes, labels = boxes[:max_objects], labels[:max_objects]
        pad = max_objects - tf.shape(labels)[0]
        boxes = tf.pad(boxes, [[0, pad], [0, 0]])
        labels = tf.pad(labels, [[0, pad]], constant_values=PAD_LABEL)
        boxes.set_shape((max_objects, 4))
        labels.set_shape((max_objects,))
        if image.shape[-1] != 3:
            image = tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image
        return image, {"boxes": boxes, "labels": labels}

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE), num_classes
