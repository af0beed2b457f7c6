"""Agreement of the exported int8 model with the Keras F, for nets trained briefly on Fashion-MNIST.

  python benchmarks/export_agreement.py [--cases=residual16:2,residual16:3,...] [--train=3000] [--test=1000]

Each case ``kind:bits`` (kind: ``plain``, ``residual`` = the paper's float residual stream,
``residual16`` = ``residual_stream="int16"``; or a quantizer family for a plain net: ``lsq``,
``pact``, ``lqnet``; ``bireal`` builds ``birealnet20``) trains a resnet20 on ``--train`` images
(batch 32, Adam, ``--epochs``, seed 3), exports it with ``agq_keras.export.convert`` (300
calibration images) and prints the argmax agreement and top-1 of TFLite vs Keras on ``--test``
test images with LiteRT's builtin kernels, and the export notes' count. docs/export.md quotes it.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("cases", ["residual16:2", "residual16:3", "residual16:4", "residual:2", "lsq:2", "pact:2",
                            "lqnet:2", "bireal:1"], "kind:bits cases to train and export.")
flags.DEFINE_integer("train", 3000, "Training images.")
flags.DEFINE_integer("test", 1000, "Test images for the agreement.")
flags.DEFINE_integer("epochs", 2, "Training epochs per case.")
KINDS = ("plain", "residual", "residual16")
FAMILIES = ("lsq", "pact", "lqnet", "bireal")


def build(kind: str, bits: int):
    import agq_keras

    common = dict(w_bits=bits, a_bits=bits, num_classes=10, input_shape=(28, 28, 1))
    if kind in FAMILIES:
        return agq_keras.build("birealnet20" if kind == "bireal" else "resnet20", plain=True, quantizer=kind,
                               **common)
    extra = {"residual_stream": "int16"} if kind == "residual16" else {}
    return agq_keras.build("resnet20", plain=kind == "plain", **common, **extra)


def parse(case: str):
    kind, _, bits = case.partition(":")
    if kind not in KINDS + FAMILIES or not bits.isdigit():
        raise app.UsageError(f"bad case {case!r}: expected kind:bits with kind in {', '.join(KINDS + FAMILIES)}.")
    return kind, int(bits)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cases = [parse(c) for c in FLAGS.cases]
    import keras

    from agq_keras import export
    from agq_keras.data import fashion_mnist

    x, y = fashion_mnist.load("train", subset=FLAGS.train)
    xt, yt = fashion_mnist.load("test", subset=FLAGS.test)
    x, xt = x.astype("float32") / 255.0, xt.astype("float32") / 255.0
    for kind, bits in cases:
        keras.utils.set_random_seed(3)
        f = build(kind, bits)
        f.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        f.fit(x, y, batch_size=32, epochs=FLAGS.epochs, verbose=0)
        model, plan, notes = export.convert(f, x[:300])
        r = export.verify(model, f, xt, yt, plan=plan, latency_runs=0)
        print(f"{kind}:{bits}  agreement {100 * r['argmax_agreement']:.1f} %  top-1 TFLite/Keras "
              f"{100 * r['top1_tflite']:.2f}/{100 * r['top1_keras']:.2f} %  notes {len(notes)}", flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
