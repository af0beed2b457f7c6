"""Where the step time goes: forward+backward time of the pieces of one block, side by side.

  python benchmarks/op_cost.py [--batch_size=128] [--steps=20]

For each stage shape of resnet20 (16/32/64 channels at 28/14/7 pixels) and of the CIFAR-style
resnet18 (64..512 channels at 28..4 pixels) it times, on random tensors of the training shape
(batch 128), one forward+backward pass of:

* ``conv3x3``: the block's 3x3 convolution (float weights);
* ``bn+relu``: the pre-activation BatchNorm (training mode) and ReLU;
* ``act q``: the 2-bit DoReFa activation quantizer (clip, round, straight-through gradient);
* ``weight q``: the 2-bit DoReFa weight quantizer on the conv's kernel;
* ``adaptor``: AG's adaptor (1x1 conv + BatchNorm) on the block output, H's extra per block.

and prints each as a fraction of ``conv3x3``. These are the costs the step-time ratios of
``benchmarks/run.py`` are made of (docs/benchmarks.md explains the misses with them).
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 128, "Batch of the timed tensors.")
flags.DEFINE_integer("steps", 20, "Timed repetitions per piece (median).")

STAGES = {"resnet20": [(28, 16), (14, 32), (7, 64)],
          "resnet18": [(28, 64), (14, 128), (7, 256), (4, 512)]}


def pieces(channels: int):
    """name -> (layer-like callable, needs the kernel) for one block of ``channels``."""
    import keras

    from agq_keras import AuxAdaptor, quantizers

    wq, aq = quantizers.make_pair("dorefa", 2, 2)
    bn = keras.layers.BatchNormalization(momentum=0.9)
    conv = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False)
    adaptor = AuxAdaptor(channels)
    return {"conv3x3": lambda x, k: conv(x), "bn+relu": lambda x, k: keras.ops.relu(bn(x, training=True)),
            "act q": lambda x, k: aq(x), "weight q": lambda x, k: wq(k),
            "adaptor": lambda x, k: adaptor(x, training=True)}


def time_piece(fn, x, kernel, steps: int) -> float:
    """Median seconds of one forward + backward (gradients w.r.t. the input and the kernel)."""
    import tensorflow as tf

    @tf.function(autograph=False)  # plain Python lambdas: nothing to convert
    def step():
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = fn(x, kernel)
            loss = tf.reduce_sum(tf.cast(y, tf.float32))
        return tape.gradient(loss, [x, kernel])

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        [g.numpy() for g in step() if g is not None]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(arch: str, batch_size: int, steps: int) -> list[dict]:
    import numpy as np
    import tensorflow as tf

    rows = []
    rng = np.random.default_rng(0)
    for size, channels in STAGES[arch]:
        x = tf.constant(rng.standard_normal((batch_size, size, size, channels)).astype("float32"))
        kernel = tf.constant(rng.standard_normal((3, 3, channels, channels)).astype("float32") * 0.1)
        row = {"arch": arch, "shape": [size, size, channels]}
        for name, fn in pieces(channels).items():
            row[name] = time_piece(fn, x, kernel, steps)
        rows.append(row)
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.batch_size < 1 or FLAGS.steps < 1:
        raise app.UsageError("--batch_size and --steps must be >= 1.")
    names = ("conv3x3", "bn+relu", "act q", "weight q", "adaptor")
    print(f"forward+backward, batch {FLAGS.batch_size}, median of {FLAGS.steps}; ms (fraction of conv3x3)")
    print(f"{'arch':9s} {'H x W x C':>12s} " + " ".join(f"{n:>16s}" for n in names))
    for arch in STAGES:
        for row in measure(arch, FLAGS.batch_size, FLAGS.steps):
            shape = "x".join(str(d) for d in row["shape"])
            cells = [f"{1e3 * row[n]:7.2f} ({row[n] / row['conv3x3']:4.2f})" for n in names]
            print(f"{arch:9s} {shape:>12s} " + " ".join(f"{c:>16s}" for c in cells))
    return 0


if __name__ == "__main__":
    app.run(main)
