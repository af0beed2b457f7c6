"""Issue 29, item 5: why the built-in pre-activation MobileNetV2 trains slowly in float. A diagnosis, not a fix.

    python3 benchmarks/mobilenetv2_bottleneck.py --variant=preact --train=6000 --epochs=3
    python3 benchmarks/mobilenetv2_bottleneck.py --variant=linear_expand --train=6000 --epochs=3

``preact`` is ``agq_keras.build("mobilenetv2", alpha=0.5, stem="cifar", w_bits=32, a_bits=32)``: every conv reads
``BN -> ReLU``, the expand conv too, so the narrow bottleneck stream passes a ReLU before it is expanded.
``linear_expand`` is the same net whose expand convs read ``BN`` alone (the original MobileNetV2's linear
bottleneck: no ReLU on the low-dimensional stream), built by overriding the builder's ``body`` here. Float only:
a k-bit F would need a signed activation grid on the expand input. Fashion-MNIST 28x28, Adam 1e-3, batch 128,
deterministic ops; prints the per-epoch training accuracy and loss and the test accuracy (2000 images).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def linear_expand_body(self, x, bn, tap=None):
    """MobileNetV2.body with no ReLU between BN1 and the expand conv of a block that has one."""
    import keras

    tap = tap or (lambda kind, tensor, name: None)
    x = self.stem_conv(x)
    for block in self.blocks:
        inputs = x
        for i, conv in enumerate(block.convs, start=1):
            linear = i == 1 and conv.name.endswith("_expand")
            x = conv(bn(f"{block.name}_bn{i}")(x) if linear else bn.bn_relu(x, f"{block.name}_bn{i}"))
            tap("layer", x, conv.name)
        if block.identity:
            x = keras.layers.Add(name=bn.name(f"{block.name}_add"))([x, inputs])
        tap("block", x, block.name)
    return x


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("preact", "linear_expand"), default="preact")
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    import agq_keras
    from agq_keras.data import fashion_mnist
    from agq_keras.models import mobilenetv2

    tf.config.experimental.enable_op_determinism()
    if args.variant == "linear_expand":
        mobilenetv2.MobileNetV2.body = linear_expand_body
    keras.utils.set_random_seed(args.seed)
    f = agq_keras.build("mobilenetv2", w_bits=32, a_bits=32, num_classes=10, input_shape=(28, 28, 1),
                        alpha=args.alpha, stem="cifar")
    x, y = fashion_mnist.load("train", subset=args.train)
    xt, yt = fashion_mnist.load("test", subset=2000)
    f.compile(optimizer=keras.optimizers.Adam(1e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.time()
    h = f.fit(x.astype("float32") / 255, y, epochs=args.epochs, batch_size=128, verbose=0,
              validation_data=(xt.astype("float32") / 255, yt)).history
    print(f"{args.variant}: train accuracy {[round(a, 3) for a in h['accuracy']]}, train loss "
          f"{[round(a, 3) for a in h['loss']]}, test accuracy {[round(a, 3) for a in h['val_accuracy']]} "
          f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
