"""Keras callbacks of the training runs: step learning rate, divergence guard,
a backup that never stores a diverged state, and the convergence plot."""

from __future__ import annotations

import math
import os
import sys

import keras

from agq_keras.saving import atomic_write


def step_lr(base_lr: float, decay_epochs=(), factor: float = 0.1):
    """``base_lr * factor ** (number of decay epochs <= epoch)`` (paper: /10 at 25 and 30)."""
    decay_epochs = tuple(int(e) for e in decay_epochs)

    def schedule(epoch, lr=None):
        return float(base_lr) * factor ** sum(epoch >= e for e in decay_epochs)

    return schedule


class NaNGuard(keras.callbacks.TerminateOnNaN):
    """`TerminateOnNaN` that remembers the divergence (epoch, batch)."""

    def __init__(self):
        super().__init__()
        self.diverged_at = None

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.diverged_at is None:
            self.diverged_at = (self._epoch, batch)
        super().on_batch_end(batch, logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch


class SafeBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that does not save once the run has diverged, so the
    backup keeps the last good (finite) state."""

    def __init__(self, backup_dir, guard: NaNGuard, **kwargs):
        super().__init__(backup_dir, delete_checkpoint=False, **kwargs)
        self.guard = guard

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.diverged_at is None:
            super().on_epoch_end(epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        if self.guard.diverged_at is None:
            super().on_train_batch_end(batch, logs)


def pyplot(what: str):
    """``matplotlib.pyplot`` (Agg backend), or None with a one-line warning when matplotlib cannot be
    imported: a plot is never a reason to stop a run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        print(f"warning: {what} not written: matplotlib is not available ({err}); "
              "pip install matplotlib to get it.", file=sys.stderr)
        return None
    return plt


def plot_convergence(history: dict, path: str, title: str) -> bool:
    """F's test top-1 per epoch (like the paper's Fig. 3), written atomically; False (and a
    warning) without matplotlib."""
    plt = pyplot(os.path.basename(path))
    if plt is None:
        return False
    top1 = [100.0 * a for a in history.get("val_accuracy", [])]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(range(1, len(top1) + 1), top1, marker="o", label="F test top-1")
    if history.get("accuracy"):
        ax.plot(range(1, len(history["accuracy"]) + 1), [100.0 * a for a in history["accuracy"]],
                linestyle="--", label="F train top-1")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return True
