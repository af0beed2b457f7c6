"""A run killed mid-way and restarted with the same command ends with the same weights."""

import json
import os

import keras
import numpy as np
import pytest

from agq_keras.configs.default import get_config
from agq_keras.experiments import run

pytestmark = pytest.mark.slow  # real training runs: CI runs them with -m slow (see README)


class Killed(Exception):
    pass


class KillAt(keras.callbacks.Callback):
    """Simulates a kill in the middle of an epoch."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise Killed()


def config():
    c = get_config()
    c.train_subset, c.test_subset, c.epochs, c.batch_size, c.verbose = 64, 32, 3, 32, 0
    c.ssp, c.ssp_decay_epoch, c.ssp_wa = True, 2, True  # AG + SSP: the draws must resume too
    c.deterministic, c.seed = True, 5
    return c


def weights(path):
    return [v.numpy() for v in keras.models.load_model(path).weights]


def test_killed_run_resumes_to_identical_weights(tmp_path, capsys):
    """... and the same history: the backup keeps the finished epochs' logs (and the wall time) of the killed call,
    and the rerun says where it resumes."""
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    full_metrics = run.run(config(), full)
    with pytest.raises(Killed):
        run.run(config(), resumed, extra_callbacks=[KillAt(epoch=2, batch=0)])
    assert not os.path.exists(os.path.join(resumed, "f.keras"))
    assert os.path.isfile(os.path.join(resumed, "backup", "latest.weights.h5"))
    with open(os.path.join(resumed, "backup", "progress.json")) as fh:
        progress = json.load(fh)
    assert len(progress["history"]["loss"]) == 2 and progress["wall_s"] > 0  # the two epochs the killed call finished
    capsys.readouterr()
    metrics = run.run(config(), resumed)  # the same command again: only the remaining epoch runs
    assert f"Resuming {resumed} from epoch 3 of 3 (its backup/ holds 2 finished epoch(s))." in capsys.readouterr().out
    assert metrics["history"] == full_metrics["history"] and len(metrics["history"]["loss"]) == 3
    assert metrics["wall_s"] > progress["wall_s"]
    a, b = weights(os.path.join(full, "trainer.keras")), weights(os.path.join(resumed, "trainer.keras"))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not os.path.exists(os.path.join(resumed, "backup"))  # removed after a finished run


def test_killed_run_with_steady_evaluation_resumes_identically(tmp_path):
    """bn_reestimation_batches > 0: the backup holds training's running BN statistics, not the re-estimated
    ones F has after validation, so the resumed run's raw numbers, final F and f.keras are the uninterrupted one's."""
    def steady():
        c = config()
        c.bn_reestimation_batches = 2
        return c

    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    a_metrics = run.run(steady(), full)
    with pytest.raises(Killed):
        run.run(steady(), resumed, extra_callbacks=[KillAt(epoch=2, batch=0)])
    b_metrics = run.run(steady(), resumed)
    for key in ("raw_val_loss", "raw_val_accuracy", "val_loss", "val_accuracy"):
        assert len(b_metrics["history"][key]) == 3 and b_metrics["history"][key] == a_metrics["history"][key], key
    assert b_metrics["f"] == a_metrics["f"] and b_metrics["f_raw"] == a_metrics["f_raw"]
    assert a_metrics["f"]["loss"] != a_metrics["f_raw"]["loss"]
    for name in ("trainer.keras", "f.keras"):
        a, b = weights(os.path.join(full, name)), weights(os.path.join(resumed, name))
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
