"""Issue 29, item 5: the built-in pre-activation MobileNetV2's float training with a ReLU or a linear bottleneck.

    python3 benchmarks/mobilenetv2_bottleneck.py --bottleneck=relu --train=6000 --epochs=3
    python3 benchmarks/mobilenetv2_bottleneck.py --bottleneck=linear --train=6000 --epochs=3

``agq_keras.build("mobilenetv2", alpha=0.5, stem="cifar", w_bits=32, a_bits=32, bottleneck=...)``: with
``"relu"`` every conv reads ``BN -> ReLU``, the expand conv too, so the narrow bottleneck stream passes a ReLU
before it is expanded; with ``"linear"`` (the builder's default since issue 29) the expand convs read ``BN``
alone, the original MobileNetV2's linear bottleneck (a k-bit F quantizes it on a signed grid). Fashion-MNIST
28x28, Adam 1e-3, batch 128, deterministic ops; prints the per-epoch training accuracy and loss and the test
accuracy (2000 images).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bottleneck", choices=("relu", "linear"), default="relu")
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    import agq_keras
    from agq_keras.data import fashion_mnist

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(args.seed)
    f = agq_keras.build("mobilenetv2", w_bits=32, a_bits=32, num_classes=10, input_shape=(28, 28, 1),
                        alpha=args.alpha, stem="cifar", bottleneck=args.bottleneck)
    x, y = fashion_mnist.load("train", subset=args.train)
    xt, yt = fashion_mnist.load("test", subset=2000)
    f.compile(optimizer=keras.optimizers.Adam(1e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.time()
    h = f.fit(x.astype("float32") / 255, y, epochs=args.epochs, batch_size=128, verbose=0,
              validation_data=(xt.astype("float32") / 255, yt)).history
    print(f"{args.bottleneck} bottleneck: train accuracy {[round(a, 3) for a in h['accuracy']]}, train loss "
          f"{[round(a, 3) for a in h['loss']]}, test accuracy {[round(a, 3) for a in h['val_accuracy']]} "
          f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
