"""Train and evaluate the Fashion-MNIST twin of each quantizer (configs/fmnist_<q>.py).

    python3 scripts/fmnist_zoo.py lqnet bireal ...   (default: all six)
    python3 scripts/fmnist_zoo.py lqnet:1 lqnet:2    (another seed than the config's)

Prints F's test top-1 for each; the numbers quoted in the quantizer-zoo notes
come from this script.
"""

import importlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import agq_keras  # noqa: E402
from agq_keras.data import fashion_mnist  # noqa: E402

QUANTIZERS = ("dorefa", "lqnet", "lsq", "pact", "bireal", "groupnet")


def run(name, seed=None):
    c = importlib.import_module(f"configs.fmnist_{name}").get_config()
    if seed is not None:
        c.seed = seed
    keras.utils.set_random_seed(c.seed)
    x, y = fashion_mnist.load("train", subset=c.train_subset)
    xt, yt = fashion_mnist.load("test", subset=c.test_subset)
    x, xt = x.astype("float32") / 255.0, xt.astype("float32") / 255.0
    extra = {"num_bases": c.num_bases} if "num_bases" in c else {}
    model = agq_keras.build(c.arch, plain=c.plain, aux=c.aux, quantizer=c.quantizer, w_bits=c.w_bits,
                            a_bits=c.a_bits, num_classes=10, input_shape=(28, 28, 1),
                            aux_lambda=c.aux_lambda, aux_placement=c.aux_placement,
                            bn_momentum=c.bn_momentum, **extra)
    model.compile(optimizer=keras.optimizers.Adam(c.learning_rate))
    start = time.time()
    history = model.fit(x, y, batch_size=c.batch_size, epochs=c.epochs, verbose=0)
    accuracy = model.evaluate(xt, yt, batch_size=500, verbose=0, return_dict=True)["accuracy"]
    print(f"{name:9s} seed={c.seed} {c.arch:12s} plain={c.plain!s:5s} W{c.w_bits}/A{c.a_bits} train_loss="
          f"{history.history['loss'][-1]:.3f} F test top-1 = {accuracy:.4f} "
          f"({len(x)} train / {len(xt)} test images, {c.epochs} epoch, {time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    for arg in sys.argv[1:] or QUANTIZERS:
        name, _, seed = arg.partition(":")
        if name not in QUANTIZERS or (seed and not seed.isdigit()):
            raise SystemExit(f"bad argument {arg!r}: expected NAME or NAME:SEED, NAME one of {', '.join(QUANTIZERS)}")
        run(name, int(seed) if seed else None)
