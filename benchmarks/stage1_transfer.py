"""How much of a trained full-precision F survives being loaded into a k-bit F (stage 1 -> stage 2 of the recipe).

Loads the float F (a run's ``f.keras``) into F built at each of ``--bits`` (same architecture, layers matched by
name, as ``config.init_checkpoint`` does) and reports F's test top-1 before any k-bit training: with the float
F's BatchNorm statistics, and after re-estimating them over the first ``--num_batches`` training batches (in
order, test-time preprocessing; ``agq_keras.training.callbacks.reestimate_batch_norm``).

    python3 benchmarks/stage1_transfer.py --checkpoint=docs/runs/resnet20_fp_plain_s0/f.keras --arch=resnet20 --plain
    python3 benchmarks/stage1_transfer.py --checkpoint=docs/runs/mobilenetv2_fp_residual_s0/f.keras \\
        --arch=mobilenetv2 --stem=cifar --alpha=0.5 --bits=8,4

Prints one JSON line per bit width.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the full-precision F (.keras)")
    parser.add_argument("--arch", required=True)
    parser.add_argument("--plain", action="store_true", help="plain net (no skip connections)")
    parser.add_argument("--stem", default="")
    parser.add_argument("--alpha", type=float, default=0.0)
    parser.add_argument("--bits", default="8,2", help="comma-separated weight/activation bit widths")
    parser.add_argument("--quantizer", default="dorefa")
    parser.add_argument("--test_subset", type=int, default=2000)
    parser.add_argument("--train_subset", type=int, default=15000)
    parser.add_argument("--num_batches", type=int, default=20)
    args = parser.parse_args()
    if not os.path.isfile(args.checkpoint):
        parser.error(f"--checkpoint={args.checkpoint!r} does not exist.")
    try:
        bits = [int(b) for b in args.bits.split(",")]
    except ValueError:
        parser.error(f"--bits={args.bits!r} must be comma-separated integers.")

    import keras

    import agq_keras
    from agq_keras.data import pipeline
    from agq_keras.training.callbacks import reestimate_batch_norm
    from agq_keras.training.recipe import load_by_name

    source = keras.models.load_model(args.checkpoint)
    test, num_classes, shape = pipeline.make("fashion_mnist", "test", batch_size=250, subset=args.test_subset)
    train, _, _ = pipeline.make("fashion_mnist", "train", batch_size=128, subset=args.train_subset, augment=False)

    def top1(model):
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        return 100 * float(model.evaluate(test, verbose=0)[1])

    print(json.dumps({"checkpoint": args.checkpoint, "float_top1": top1(source)}), flush=True)
    extra = {k: v for k, v in (("stem", args.stem), ("alpha", args.alpha)) if v}
    for b in bits:
        f = agq_keras.build(args.arch, plain=args.plain, quantizer=args.quantizer, w_bits=b, a_bits=b,
                            num_classes=num_classes, input_shape=tuple(shape), **extra)
        copied = load_by_name(source, f)
        loaded = top1(f)
        reestimate_batch_norm(f, train, args.num_batches)
        print(json.dumps({"bits": b, "variables_copied": copied, "variables": len(f.weights), "top1_loaded": loaded,
                          "top1_bn_reestimated": top1(f)}), flush=True)


if __name__ == "__main__":
    main()
