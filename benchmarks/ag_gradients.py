"""How F's and H's gradients on the shared weights compare, by depth (issue 13: why + AG stalls at ResNet-56).

The sweep's plain + AG run (2-bit DoReFa plain ResNet, the CPU recipe, seed ``--seed``), built by the sweep's
own config (``study.runner.make_config``) and started from the committed full-precision F
(``docs/runs/<arch>_fp_plain_s0/f.keras``). At each checkpoint (before training, then after every
``--steps`` AG steps with the recipe's optimizer, learning rate, batch size and training subset), over the
next ``--batches`` training batches in training mode:

* ``|g1|``: the norm of F's gradient dL1/dW on the shared weights (the conv kernels and the classifier),
* ``|g2|``: the norm of H's gradient dL2/dW on the same weights,
* ``cos``: the cosine between the two (summed over the batches, then compared),
* ``f_share``: the component of the applied update ``(g1 + lambda g2) / (1 + lambda)`` along g1, divided by
  its norm (1: F's direction only; 0: orthogonal to it),

per stage (stage1/2/3: the block convs of that stage) and for all shared weights. A low cosine with |g2| far
above |g1| means H's gradient sets the shared weights' direction, and F's own barely moves them.

    python3 -m benchmarks.ag_gradients --out=/tmp/ag_gradients     # from the repository root (it imports study/)

Writes ``OUT/ag_gradients.json`` (atomically) and prints a table.
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

from agq_keras import saving  # noqa: E402
from agq_keras.data import pipeline  # noqa: E402
from agq_keras.experiments.run import initialise, make_optimizer, make_trainer  # noqa: E402
from agq_keras.saving import write_text  # noqa: E402
from study import arms, runner  # noqa: E402
from agq_keras.training.trainer import default_loss  # noqa: E402

ARCHS = ("resnet20", "resnet32", "resnet56")


def group_of(path: str) -> str:
    """stage1/stage2/stage3 for a block conv's variable, "edges" for the stem and the classifier."""
    head = path.split("/")[0]
    return head.split("_")[0] if head.startswith("stage") else "edges"


def compare(a: np.ndarray, b: np.ndarray, lam: float) -> dict:
    """|g1|, |g2|, their cosine and F's share of the applied update, for flat gradient vectors g1 = a, g2 = b."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    applied = (a + lam * b) / (1.0 + lam)
    nu = float(np.linalg.norm(applied))
    return {"g1": na, "g2": nb, "ratio": nb / na if na else float("inf"),
            "cos": float(a @ b / (na * nb)) if na and nb else float("nan"),
            "f_share": float(applied @ a / (nu * na)) if nu and na else float("nan")}


def measure(trainer, batches, lam: float) -> dict:
    """Sums of F's and H's gradients over ``batches`` (training mode, no update), compared per group."""
    shared, _, _ = trainer.variable_groups()
    sums1 = [np.zeros(v.shape, np.float64) for v in shared]
    sums2 = [np.zeros(v.shape, np.float64) for v in shared]
    loss1 = loss2 = 0.0
    for x, y in batches:
        with tf.GradientTape(persistent=True) as tape:
            loss_f, loss_h, _, _ = trainer.objectives(x, y, training=True)
        for acc, grads in ((sums1, tape.gradient(loss_f, shared)), (sums2, tape.gradient(loss_h, shared))):
            for s, g in zip(acc, grads):
                s += g.numpy()
        del tape
        loss1, loss2 = loss1 + float(loss_f), loss2 + float(loss_h)
    out = {"loss_f": loss1 / len(batches), "loss_h": loss2 / len(batches)}
    groups = sorted({group_of(v.path) for v in shared}) + ["all"]
    for name in groups:
        idx = [i for i, v in enumerate(shared) if name == "all" or group_of(v.path) == name]
        out[name] = compare(np.concatenate([sums1[i].ravel() for i in idx]),
                            np.concatenate([sums2[i].ravel() for i in idx]), lam)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated, from {', '.join(ARCHS)}")
    p.add_argument("--seed", type=int, default=1, help="the sweep seed (H's and the data's random init)")
    p.add_argument("--steps", type=int, default=118, help="AG steps between checkpoints (118: one epoch)")
    p.add_argument("--checkpoints", type=int, default=2, help="checkpoints after the first (0: before training only)")
    p.add_argument("--batches", type=int, default=4, help="training batches each measurement sums over")
    p.add_argument("--record", default="docs/runs", help="folder holding <arch>_fp_plain_s0/f.keras")
    p.add_argument("--data_dir", default="", help="Fashion-MNIST folder (default: the installed dataset)")
    p.add_argument("--out", default="/tmp/ag_gradients", help="output folder (created)")
    args = p.parse_args(argv)
    archs = [a for a in args.archs.split(",") if a]
    bad = [a for a in archs if a not in ARCHS]
    if bad or not archs:
        p.error(f"--archs={args.archs!r}: unknown {bad}; allowed: {', '.join(ARCHS)}")
    for name in ("steps", "batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name}={getattr(args, name)} must be >= 1")
    if args.checkpoints < 0:
        p.error(f"--checkpoints={args.checkpoints} must be >= 0")
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    result = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "args": vars(args), "archs": {}}
    for arch in archs:
        run = arms.Run(arch, "plain_ag", args.seed)
        c = runner.make_config(run, os.path.join(args.out, "unused"), record=args.record, data_dir=args.data_dir)
        if not os.path.isfile(c.init_checkpoint):
            p.error(f"{arch}: the full-precision F {c.init_checkpoint!r} does not exist (see --record)")
        keras.utils.set_random_seed(c.seed)
        counter = pipeline.EpochCounter()
        train, num_classes, shape = pipeline.make(c.dataset, "train", batch_size=c.batch_size, data_dir=c.data_dir,
                                                  seed=c.seed, subset=c.train_subset, epoch=counter.epoch)
        trainer = make_trainer(c, num_classes, shape)
        initialise(trainer, saving.load_model(c.init_checkpoint, what="the full-precision F"))
        trainer.compile(optimizer=make_optimizer(c.optimizer, c.learning_rate, c.weight_decay), loss=default_loss())
        stream = iter(train.repeat())
        rows = []
        for k in range(args.checkpoints + 1):
            if k:
                trainer.fit((next(stream) for _ in range(args.steps)), steps_per_epoch=args.steps, epochs=1,
                            shuffle=False, verbose=0)
            row = measure(trainer, [next(stream) for _ in range(args.batches)], c.aux_lambda)
            row["step"] = k * args.steps
            rows.append(row)
            print(f"{arch} step {row['step']:4d}: loss F {row['loss_f']:.3f} H {row['loss_h']:.3f}  " + "  ".join(
                f"{g}: |g2|/|g1| {row[g]['ratio']:.2f} cos {row[g]['cos']:+.2f} F share {row[g]['f_share']:+.2f}"
                for g in ("stage1", "stage3", "all")), flush=True)
        result["archs"][arch] = {"aux_lambda": c.aux_lambda, "init": c.init_checkpoint, "rows": rows}
        keras.backend.clear_session()
    result.update(wall_seconds=time.perf_counter() - started,
                  hardware=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU core(s); "
                           f"TensorFlow {tf.__version__}, Keras {keras.__version__}")
    path = os.path.join(args.out, "ag_gradients.json")
    write_text(path, json.dumps(result, indent=1) + "\n")
    print(f"wrote {path} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
