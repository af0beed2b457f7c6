"""Steady evaluation in training runs (config.bn_reestimation_batches): metrics.json keeps the raw and
the steadied numbers, and f.keras carries the re-estimated BatchNorm statistics its "f" numbers come from.
(The callback itself: tests/test_bn_reestimation.py; a resumed run with it on: tests/test_resume.py.)"""

import json
import os

import keras
import numpy as np
import pytest

from agq_keras.configs import base, default, fmnist, paper
from agq_keras.data import pipeline
from agq_keras.experiments import run
from agq_keras.training.callbacks import reestimate_batch_norm


def tiny(**overrides):
    c = default.get_config()
    c.train_subset, c.test_subset, c.epochs, c.batch_size, c.verbose = 128, 64, 1, 32, 0
    c.aux = False  # F alone: the quickest run (the callback leaves H alone: tests/test_bn_reestimation.py)
    for k, v in overrides.items():
        c[k] = v
    return c


def bn_stats(model):
    return {(layer.name, v.name): v.numpy() for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization) for v in (layer.moving_mean, layer.moving_variance)}


def test_run_writes_raw_and_steadied_and_saves_the_reestimated_f(tmp_path):
    wd = str(tmp_path / "run")
    # 50 requested, the training subset has 128 / 32 = 4 batches: capped at 4 (the whole subset)
    metrics = run.run(tiny(bn_reestimation_batches=50), wd)
    saved = json.load(open(os.path.join(wd, "metrics.json")))
    assert saved["f"] == metrics["f"] and saved["f_raw"] == metrics["f_raw"]
    assert saved["bn_reestimation"]["num_batches"] == 4 and "f_raw" in saved["bn_reestimation"]["note"]
    assert saved["config"]["bn_reestimation_batches"] == 50
    hist = saved["history"]
    assert len(hist["val_accuracy"]) == len(hist["raw_val_accuracy"]) == len(hist["raw_val_loss"]) == 1
    # the final numbers are the last epoch's: same weights, same statistics (steadied and raw)
    assert saved["f"]["loss"] == pytest.approx(hist["val_loss"][-1], rel=1e-5)
    assert saved["f_raw"]["loss"] == pytest.approx(hist["raw_val_loss"][-1], rel=1e-5)
    assert saved["f"]["loss"] != saved["f_raw"]["loss"]  # the statistics did change
    assert open(os.path.join(wd, "convergence.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    f = keras.models.load_model(os.path.join(wd, "f.keras"))
    stored = bn_stats(f)
    assert stored
    # f.keras's statistics are a re-estimation over the same batches with its own weights
    data, _, _ = pipeline.make("fashion_mnist", "train", batch_size=32, subset=128, augment=False)
    assert reestimate_batch_norm(f, data, 4) == 4
    again = bn_stats(f)
    for key, value in stored.items():
        np.testing.assert_allclose(again[key], value, rtol=1e-5, atol=1e-6, err_msg=str(key))
    # and metrics.json's "f" is the saved f.keras (eager, no tracing: quick)
    x, y = pipeline.arrays("fashion_mnist", "test", 64)
    logits = f(x, training=False).numpy().astype(np.float64)
    assert np.mean(np.argmax(logits, -1) == y) == pytest.approx(saved["f"]["top1"], abs=1e-6)
    shifted = logits - logits.max(-1, keepdims=True)
    loss = np.mean(np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(len(y)), y])
    assert loss == pytest.approx(saved["f"]["loss"], rel=1e-4)


@pytest.mark.parametrize("value", [-1, True])  # (ConfigDict itself refuses 2.5 or "20" for an int key)
def test_bad_value_is_a_clear_error(tmp_path, value):
    wd = tmp_path / "run"
    with pytest.raises(ValueError, match=r"config\.bn_reestimation_batches=.* must be an integer >= 0 \(0 = off"):
        run.run(tiny(bn_reestimation_batches=value), str(wd))
    assert not wd.exists()


def test_defaults():
    assert base.get_base_config().bn_reestimation_batches == 0
    assert default.get_config().bn_reestimation_batches == 0  # the README's default job is unchanged
    assert fmnist.get_config("resnet20_plain_ag").bn_reestimation_batches == 20  # the CPU recipe
    assert base.cpu_recipe(base.get_base_config()).bn_reestimation_batches == 20
    # the paper's (ImageNet) recipe
    assert paper.get_config("table2/resnet18_residual_base").bn_reestimation_batches == 0
