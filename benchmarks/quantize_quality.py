"""Issue 29's measurement: does `agq_keras.quantize()` hold on a user's model? Float start, then quantized
fine-tuning against the float continuation of the same start, on the Fashion-MNIST twin.

    python3 benchmarks/quantize_quality.py --arms=float,8,4,2,2+ag --seeds=0,1,2 --out=/tmp/quality.json

The net: a keras.applications model (``--app``: ``MobileNetV2`` at ``--alpha``, or ``ResNet50V2``; weights=None,
10 classes, ``classifier_activation=None``, or keras's default softmax head with ``--head=softmax``, trained with
the cross-entropy on probabilities; every BatchNormalization's momentum set to 0.9), ``preact_resnet``
(a small pre-activation ResNet written with plain Keras layers, like a user's own) or ``pools_net`` (a plain CNN
with max-pooling, Flatten, Reshape and global max-pooling). Fashion-MNIST padded to 32x32
(``--train``/``--test`` images), scaled to [0, 1]. Per seed: ``--float_epochs`` of float training (Adam
``--lr``), then each arm fine-tunes ``--ft_epochs`` from those same weights (Adam ``--ft_lr``, constant or, with
``--ft_schedule=cosine``, decayed to 0 over the fine-tuning steps; batch ``--batch``):

* ``float``: the float continuation (``quantize(base, w_bits=32, a_bits=32)``);
* ``K``: ``quantize(base, w_bits=K, a_bits=K, **--quantize_kwargs)``: the library's defaults when empty;
* ``K+ag``: the same F trained with AG (``agq_keras.auxiliary.attach(f)``).

Training is deterministic (op determinism, seeded order); every arm reports F's test top-1 and last training
loss, and the table prints each quantized arm's mean minus the float continuation's. With ``--export``, each
quantized arm's F is also exported (``export.convert``, calibrated on 256 training images) and verified on the
test images under the reference, builtin and XNNPACK kernels: argmax agreement with F and top-1 per runtime, and
(``export.tensor_agreement`` on 20 test images) how many tensors hold F's grids and the first one to part from F.
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


def pools_net(input_shape, num_classes=10, head="logits"):
    """A user's plain CNN built from the layers of issue 30, item 1: conv -> ReLU -> MaxPooling2D (twice), Flatten ->
    Dense -> ReLU -> Reshape -> GlobalMaxPooling2D -> Dense (``head``: logits, or a softmax)."""
    import keras
    from keras import layers

    x = inputs = keras.Input(input_shape)
    for i, width in enumerate((32, 64)):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(layers.BatchNormalization(name=f"bn{i}")(x))
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Dense(256, activation="relu", name="fc")(layers.Flatten(name="flat")(x))
    x = layers.GlobalMaxPooling2D(name="gmax")(layers.Reshape((4, 4, 16), name="reshape")(x))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax" if head == "softmax" else None,
                                            name="predictions")(x), name="pools_net")


def make_base(app: str, alpha: float, input_shape, head: str = "logits"):
    import keras

    if app == "preact_resnet":
        base = preact_resnet(input_shape)
    elif app == "pools_net":
        base = pools_net(input_shape, head=head)
    else:
        kwargs = {"alpha": alpha} if app == "MobileNetV2" else {}
        base = getattr(keras.applications, app)(weights=None, input_shape=input_shape, classes=10,
                                                classifier_activation="softmax" if head == "softmax" else None,
                                                **kwargs)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return base


def _compile(model, lr, head="logits"):
    """Adam at ``lr`` (a number, or a ``keras.optimizers.schedules`` schedule); the cross-entropy that fits the
    model's output (``head``: logits or softmax probabilities)."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=head != "softmax"))


def export_row(f, x, xt, yt) -> dict:
    """F's int8 TFLite (``export.convert``, calibrated on 256 training images) against F on the test images."""
    from agq_keras import export

    data, plan, _ = export.convert(f, x[:256])
    report = export.verify(data, f, xt, yt, plan=plan, runtimes=("reference", "builtin", "xnnpack"),
                           latency_runs=0)
    rows = export.tensor_agreement(data, f, plan, xt[:20], runtime="reference")  # where the file parts from F
    return {"agreement": {k: 100.0 * v for k, v in report["agreement_per_runtime"].items()},
            "top1_tflite": {k: 100.0 * v for k, v in report["top1_per_runtime"].items()},
            "top1_keras": 100.0 * report["top1_keras"], "int16_tensors": report["int16_tensors"],
            "tensors": {"on_f_grids": sum(r["grid"] != "calibrated" for r in rows),
                        "calibrated": sum(r["grid"] == "calibrated" for r in rows),
                        "first_parting": export.first_parting(rows)}}


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
    _compile(model, lr, args.head)
    start = time.time()
    history = model.fit(x, y, epochs=args.ft_epochs, batch_size=args.batch, verbose=0, shuffle=True)
    wall = time.time() - start
    _compile(f, 1e-3, args.head)
    loss, acc = f.evaluate(xt, yt, batch_size=500, verbose=0)
    row = {"arm": arm, "seed": seed, "top1": 100.0 * float(acc), "test_loss": float(loss),
           "train_loss": float(history.history["loss"][-1]), "wall_s": round(wall, 1)}
    if args.export and bits_text != "float":
        row["export"] = export_row(f, x, xt, yt)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="MobileNetV2")
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--head", choices=("logits", "softmax"), default="logits",
                        help="the keras.applications classifier: logits, or keras's default softmax")
    parser.add_argument("--export", action="store_true", help="export and verify each quantized arm's F")
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
        head = "" if args.head == "logits" else f"_{args.head}"
        start_path = os.path.join(args.workdir, f"{args.app}_{args.alpha}{head}_s{seed}_e{args.float_epochs}.keras")
        if not os.path.exists(start_path):
            keras.utils.set_random_seed(seed)
            base = make_base(args.app, args.alpha, data[0][0].shape[1:], args.head)
            _compile(base, args.lr, args.head)
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
        exported = [r["export"] for r in results if r["arm"] == arm and "export" in r]
        for runtime in (exported[0]["agreement"] if exported else ()):
            agree = ", ".join(f"{e['agreement'][runtime]:.2f}" for e in exported)
            tflite = ", ".join(f"{e['top1_tflite'][runtime]:.2f}" for e in exported)
            keras_top1 = ", ".join(f"{e['top1_keras']:.2f}" for e in exported)
            print(f"  {'':8s} int8 TFLite, {runtime}: agreement with F {agree} %, top-1 {tflite} (F {keras_top1})")
    if args.out:
        with open(args.out + ".part", "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=1)
        os.replace(args.out + ".part", args.out)


if __name__ == "__main__":
    main()
