"""A short real training run on Fashion-MNIST learns well above chance."""

import numpy as np
import pytest
import keras

import agq_keras
from agq_keras.data import fashion_mnist

pytestmark = pytest.mark.slow  # real training runs: CI runs them with -m slow (see README)

TRAIN_IMAGES = 6000
TEST_IMAGES = 10000
THRESHOLD = 0.40  # chance is 0.10; measured 0.567 here


def test_resnet20_plain_2bit_with_ag_learns_fashion_mnist():
    x, y = fashion_mnist.load("train", subset=TRAIN_IMAGES)
    xt, yt = fashion_mnist.load("test", subset=TEST_IMAGES)
    x, xt = x.astype("float32") / 255.0, xt.astype("float32") / 255.0
    model = agq_keras.build("resnet20", plain=True, aux=True, w_bits=2, a_bits=2, num_classes=10,
                            input_shape=(28, 28, 1))
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    history = model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    accuracy = model.evaluate(xt, yt, batch_size=500, verbose=0, return_dict=True)["accuracy"]
    print(f"F test top-1 after one epoch on {TRAIN_IMAGES} images: {accuracy:.4f}")
    assert accuracy > THRESHOLD
