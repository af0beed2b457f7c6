"""Issue 29's measurement: does `agq_keras.quantize()` hold on a user's model? Float start, then quantized
fine-tuning against the float continuation of the same start, on the Fashion-MNIST twin.

    python3 benchmarks/quantize_quality.py --arms=float,8,4,2,2+ag --seeds=0,1,2 --out=/tmp/quality.json

The net: a keras.applications model (``--app``: ``MobileNetV2`` at ``--alpha``, or ``ResNet50V2``; weights=None,
10 classes, ``classifier_activation=None``, every BatchNormalization's momentum set to 0.9) or ``preact_resnet``
(a small pre-activation ResNet written with plain Keras layers, like a user's own). Fashion-MNIST padded to 32x32
(``--train``/``--test`` images), scaled to [0, 1]. Per seed: ``--float_epochs`` of float training (Adam
``--lr``), then each arm fine-tunes ``--ft_epochs`` from those same weights (Adam ``--ft_lr``, constant or, with
``--ft_schedule=cosine``, decayed to 0 over the fine-tuning steps; batch ``--batch``):

* ``float``: the float continuation (``quantize(base, w_bits=32, a_bits=32)``);
* ``K``: ``quantize(base, w_bits=K, a_bits=K, **--quantize_kwargs)``: the library's defaults when empty;
* ``K+ag``: the same F trained with AG (``agq_keras.auxiliary.attach(f)``).

Training is deterministic (op determinism, seeded order); every arm reports F's test top-1 and last training
loss, and the table prints each quantized arm's mean minus the float continuation's.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def load_data(train: int, test: int):
    from agq_keras.data import fashion_mnist

    def prep(split, n):
        x, y = fashion_mnist.load(split, subset=n)
        x = np.pad(x.astype("float32") / 255.0, ((0, 0), (2, 2), (2, 2), (0, 0)))
        return x, y.astype("int32")

    return prep("train", train), prep("test", test)


def preact_resnet(input_shape, num_classes=10, widths=(16, 32, 64), blocks=2):
    """A user's small pre-activation ResNet (plain Keras layers): stem conv, ``blocks`` pre-activation basic
    blocks per stage (BN -> ReLU -> conv, projection shortcut at a stage change), BN -> ReLU -> pool -> Dense."""
    import keras
    from keras import layers

    x = inputs = keras.Input(input_shape)
    x = layers.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem")(x)
    for s, width in enumerate(widths):
        for b in range(blocks):
            stride = 2 if (s > 0 and b == 0) else 1
            pre = layers.ReLU(name=f"s{s}b{b}_relu1")(layers.BatchNormalization(name=f"s{s}b{b}_bn1")(x))
            shortcut = x if stride == 1 and x.shape[-1] == width else layers.Conv2D(
                width, 1, strides=stride, use_bias=False, name=f"s{s}b{b}_proj")(pre)
            y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=f"s{s}b{b}_conv1")(pre)
            y = layers.ReLU(name=f"s{s}b{b}_relu2")(layers.BatchNormalization(name=f"s{s}b{b}_bn2")(y))
            y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"s{s}b{b}_conv2")(y)
            x = layers.Add(name=f"s{s}b{b}_add")([shortcut, y])
    x = layers.ReLU(name="post_relu")(layers.BatchNormalization(name="post_bn")(x))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x), name="preact_resnet")


def make_base(app: str, alpha: float, input_shape):
    import keras

    if app == "preact_resnet":
        base = preact_resnet(input_shape)
    else:
        kwargs = {"alpha": alpha} if app == "MobileNetV2" else {}
        base = getattr(keras.applications, app)(weights=None, input_shape=input_shape, classes=10,
                                                classifier_activation=None, **kwargs)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return base


def _compile(model, lr):
    """Adam at ``lr``: a number, or a ``keras.optimizers.schedules`` schedule."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


def run_arm(arm: str, start_path: str, data, args, seed: int) -> dict:
    import keras

    import agq_keras
    from agq_keras.auxiliary import attach

    (x, y), (xt, yt) = data
    keras.utils.set_random_seed(seed + 1000)
    base = keras.models.load_model(start_path, compile=False)
    bits_text, _, method = arm.partition("+")
    kwargs = json.loads(args.quantize_kwargs)
    if bits_text == "float":
        f = agq_keras.quantize(base, w_bits=32, a_bits=32)
    else:
        f = agq_keras.quantize(base, w_bits=int(bits_text), a_bits=int(bits_text), **kwargs)
    model = attach(f) if method == "ag" else f
    lr = args.ft_lr
    if args.ft_schedule == "cosine":  # every arm, float included, gets the same schedule
        lr = keras.optimizers.schedules.CosineDecay(args.ft_lr, args.ft_epochs * -(-len(x) // args.batch))
    _compile(model, lr)
    start = time.time()
    history = model.fit(x, y, epochs=args.ft_epochs, batch_size=args.batch, verbose=0, shuffle=True)
    wall = time.time() - start
    f.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    loss, acc = f.evaluate(xt, yt, batch_size=500, verbose=0)
    return {"arm": arm, "seed": seed, "top1": 100.0 * float(acc), "test_loss": float(loss),
            "train_loss": float(history.history["loss"][-1]), "wall_s": round(wall, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="MobileNetV2")
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--arms", default="float,8,4")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--float_epochs", type=int, default=3)
    parser.add_argument("--ft_epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ft_lr", type=float, default=5e-4)
    parser.add_argument("--ft_schedule", choices=("constant", "cosine"), default="constant",
                        help="fine-tuning learning rate: constant --ft_lr, or cosine decay from it to 0 over the "
                             "fine-tuning steps (the same for every arm)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--quantize_kwargs", default="{}", help="JSON: extra arguments of agq_keras.quantize")
    parser.add_argument("--workdir", default="/tmp/quantize_quality")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    data = load_data(args.train, args.test)
    os.makedirs(args.workdir, exist_ok=True)
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        start_path = os.path.join(args.workdir, f"{args.app}_{args.alpha}_s{seed}_e{args.float_epochs}.keras")
        if not os.path.exists(start_path):
            keras.utils.set_random_seed(seed)
            base = make_base(args.app, args.alpha, data[0][0].shape[1:])
            _compile(base, args.lr)
            base.fit(*data[0], epochs=args.float_epochs, batch_size=args.batch, verbose=0, shuffle=True)
            base.save(start_path + ".part.keras")
            os.replace(start_path + ".part.keras", start_path)
        for arm in args.arms.split(","):
            row = run_arm(arm, start_path, data, args, seed)
            results.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{args.app} (alpha {args.alpha}), quantize kwargs {args.quantize_kwargs}: test top-1 per arm")
    float_mean = np.mean([r["top1"] for r in results if r["arm"] == "float"]) if any(
        r["arm"] == "float" for r in results) else None
    for arm in args.arms.split(","):
        accs = [r["top1"] for r in results if r["arm"] == arm]
        delta = "" if float_mean is None or arm == "float" else f"  vs float {np.mean(accs) - float_mean:+.2f}"
        print(f"  {arm:8s} {np.mean(accs):6.2f} +- {np.std(accs):.2f} ({len(accs)} seeds: "
              f"{', '.join(f'{a:.2f}' for a in accs)}){delta}")
    if args.out:
        with open(args.out + ".part", "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=1)
        os.replace(args.out + ".part", args.out)


if __name__ == "__main__":
    main()
