"""How much BatchNorm re-estimation steadies F's epoch-to-epoch test top-1 (issue 13, "Steady evaluation").

One training run of a plain 2-bit DoReFa ResNet (``--arch``, default ResNet-20; F alone, Adam, the CPU
recipe's learning rate 1e-3 and batch 128, constant learning rate) on a Fashion-MNIST subset, from a short
full-precision pretrain (SGD, momentum 0.9; 0 epochs: from scratch). Every epoch ``BNReestimation(log_raw=True)``
evaluates F on the test images twice: raw (the running BN statistics, ``raw_val_accuracy``) and
steadied (the BN statistics re-estimated over the first ``--num_batches`` batches of the training subset
in order, ``val_accuracy``). The callback puts training's running statistics back at each epoch start,
so both curves come from the same training trajectory, and the raw one is the curve of a run without
the callback.

With ``--ema_momentum`` (Keras's optimizer EMA, ``use_ema=True``: it only tracks, training is unchanged),
every epoch also evaluates a third F: the exponential moving average of the weights, with its BN statistics
re-estimated over the same batches (``ema_top1``); the live weights and statistics are put back
afterwards, so all three curves come from the same trajectory.

Writes ``OUT/bn_swing.json``: per-epoch raw, steadied (and EMA) top-1 (%), their mean absolute
epoch-to-epoch change (and max), and timings.

    python3 benchmarks/bn_swing.py --out=/tmp/bn_swing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import agq_keras  # noqa: E402
from agq_keras.data import pipeline  # noqa: E402
from agq_keras import saving  # noqa: E402
from agq_keras.training.callbacks import BNReestimation, reestimate_batch_norm  # noqa: E402
from agq_keras.training.recipe import load_by_name  # noqa: E402


class TimedBNReestimation(BNReestimation):
    """Also records the seconds each re-estimation takes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds = []

    def reestimate(self):
        start = time.perf_counter()
        used = super().reestimate()
        self.seconds.append(time.perf_counter() - start)
        return used


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


class EMAEvaluation(keras.callbacks.Callback):
    """At each epoch end, evaluates F with the optimizer's moving average of its weights
    (``optimizer.finalize_variable_values``; the optimizer needs ``use_ema=True``) and BN statistics
    re-estimated for those weights over ``num_batches`` batches of ``dataset``, then puts F's variables back
    exactly as they were. ``top1`` / ``loss``: one value per epoch."""

    def __init__(self, dataset, num_batches: int, test):
        super().__init__()
        self.dataset, self.num_batches, self.test = dataset, num_batches, test
        self.top1, self.loss = [], []

    def evaluate(self) -> dict:
        f = self.model
        if not f.optimizer.use_ema:
            raise ValueError("EMAEvaluation: the optimizer keeps no moving average; build it with use_ema=True.")
        saved = [np.array(v.numpy()) for v in f.variables]
        try:
            f.optimizer.finalize_variable_values(f.trainable_variables)
            reestimate_batch_norm(f, self.dataset, self.num_batches)
            return f.evaluate(self.test, verbose=0, return_dict=True)
        finally:
            for v, value in zip(f.variables, saved):
                v.assign(value)

    def on_epoch_end(self, epoch, logs=None):
        result = self.evaluate()
        self.top1.append(100.0 * float(result["accuracy"]))
        self.loss.append(float(result["loss"]))


def swing(top1):
    deltas = np.abs(np.diff(np.asarray(top1, np.float64)))
    return {"mean_abs_delta": float(deltas.mean()) if deltas.size else 0.0,
            "max_abs_delta": float(deltas.max()) if deltas.size else 0.0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet20", choices=("resnet20", "resnet32", "resnet56"), help="the plain ResNet")
    p.add_argument("--train_subset", type=int, default=15000, help="training images (the first N)")
    p.add_argument("--test_subset", type=int, default=5000, help="test images F is evaluated on")
    p.add_argument("--epochs", type=int, default=10, help="2-bit training epochs")
    p.add_argument("--pretrain_epochs", type=int, default=2, help="full-precision epochs first (0: from scratch)")
    p.add_argument("--init", default="", help="start from this saved full-precision F (.keras, e.g. the sweep's "
                   "docs/runs/<arch>_fp_plain_s0/f.keras) instead of a pretrain")
    p.add_argument("--pretrain_lr", type=float, default=0.05, help="SGD learning rate of the pretrain")
    p.add_argument("--num_batches", type=int, default=20, help="batches BN re-estimation averages over")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (CPU recipe)")
    p.add_argument("--ema_momentum", type=float, default=0.0,
                   help="also evaluate the EMA of the weights with this momentum (0: off; Keras's default is 0.99)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_dir", default="", help="Fashion-MNIST folder (default: the installed dataset)")
    p.add_argument("--out", default="/tmp/bn_swing", help="output folder (created)")
    args = p.parse_args(argv)
    if args.init and args.pretrain_epochs:
        p.error(f"--init={args.init} and --pretrain_epochs={args.pretrain_epochs}: give one start, not both "
                "(--pretrain_epochs=0 with --init).")
    if not 0.0 <= args.ema_momentum < 1.0:
        p.error(f"--ema_momentum={args.ema_momentum} is not allowed; it must be in [0, 1) (0: no EMA).")
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    keras.utils.set_random_seed(args.seed)

    counter = pipeline.EpochCounter()
    train, _, shape = pipeline.make("fashion_mnist", "train", batch_size=args.batch_size, data_dir=args.data_dir,
                                    subset=args.train_subset, seed=args.seed, epoch=counter.epoch)
    test, _, _ = pipeline.make("fashion_mnist", "test", batch_size=500, data_dir=args.data_dir,
                               subset=args.test_subset)
    # Its own dataset object: the training subset in order, test-time preprocessing.
    reestimation_data, _, _ = pipeline.make("fashion_mnist", "train", batch_size=args.batch_size,
                                            data_dir=args.data_dir, subset=args.train_subset, augment=False)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    f = agq_keras.build(args.arch, plain=True, w_bits=2, a_bits=2, num_classes=10, input_shape=shape)
    pretrain = {"epochs": args.pretrain_epochs}
    if args.init:
        fp = saving.load_model(args.init, what="--init F")
        fp.compile(loss=loss, metrics=["accuracy"])
        pretrain.update(init=args.init, test_top1=100.0 * fp.evaluate(test, verbose=0, return_dict=True)["accuracy"],
                        copied_variables=load_by_name(fp, f))
        print(f"init: {pretrain}", flush=True)
    if args.pretrain_epochs:
        start = time.perf_counter()
        fp = agq_keras.build(args.arch, plain=True, w_bits=32, a_bits=32, num_classes=10, input_shape=shape)
        fp.compile(optimizer=keras.optimizers.SGD(args.pretrain_lr, momentum=0.9), loss=loss, metrics=["accuracy"])
        fp.fit(train, epochs=args.pretrain_epochs, callbacks=[counter], verbose=2)
        pretrain.update(test_top1=100.0 * fp.evaluate(test, verbose=0, return_dict=True)["accuracy"],
                        copied_variables=load_by_name(fp, f), seconds=time.perf_counter() - start)
        print(f"pretrain: {pretrain}", flush=True)

    ema = {"use_ema": True, "ema_momentum": args.ema_momentum} if args.ema_momentum else {}
    f.compile(optimizer=keras.optimizers.Adam(args.lr, **ema), loss=loss, metrics=["accuracy"])
    steady = TimedBNReestimation(reestimation_data, args.num_batches, log_raw=True, validation_data=test)
    timer = EpochTimer()
    ema_eval = EMAEvaluation(reestimation_data, args.num_batches, test) if ema else None
    callbacks = [steady] + ([ema_eval] if ema_eval else []) + [counter, timer]
    hist = f.fit(train, validation_data=test, epochs=args.epochs, callbacks=callbacks, verbose=2).history

    raw = [100.0 * a for a in hist["raw_val_accuracy"]]
    steadied = [100.0 * a for a in hist["val_accuracy"]]
    result = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "args": vars(args),
        "net": f"{args.arch} plain, 2-bit DoReFa weights and activations (first conv and classifier 16-bit), F alone",
        "data": f"Fashion-MNIST, first {args.train_subset} training images, first {args.test_subset} test images",
        "pretrain": pretrain,
        "raw_top1": raw,
        "steady_top1": steadied,
        "raw_loss": hist["raw_val_loss"],
        "steady_loss": hist["val_loss"],
        "train_top1": [100.0 * a for a in hist["accuracy"]],
        "raw_swing": swing(raw),
        "steady_swing": swing(steadied),
        **({"ema_top1": ema_eval.top1, "ema_loss": ema_eval.loss, "ema_swing": swing(ema_eval.top1)}
           if ema_eval else {}),
        "reestimation_seconds": steady.seconds,
        "epoch_seconds": timer.seconds,
        "wall_seconds": time.perf_counter() - started,
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU core(s); "
                    f"TensorFlow {tf.__version__}, Keras {keras.__version__}",
    }
    path = os.path.join(args.out, "bn_swing.json")
    saving.write_text(path, json.dumps(result, indent=1) + "\n")
    ema_top1 = result.get("ema_top1", [float("nan")] * len(raw))
    print("epoch  raw top-1  steadied top-1  EMA top-1")
    for i, (r, s, e) in enumerate(zip(raw, steadied, ema_top1), 1):
        print(f"{i:5d}  {r:9.2f}  {s:14.2f}  {e:9.2f}")
    print(f"mean |delta|: raw {result['raw_swing']['mean_abs_delta']:.2f}, "
          f"steadied {result['steady_swing']['mean_abs_delta']:.2f}"
          + (f", EMA {result['ema_swing']['mean_abs_delta']:.2f}" if ema_eval else "")
          + f" points; wrote {path} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
