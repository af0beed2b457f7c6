"""Keras callbacks of the training runs: step learning rate, divergence guard,
a backup that never stores a diverged state (and keeps the run's history and wall time for a resumed
call), the convergence plot, and BatchNorm re-estimation before every evaluation (:class:`BNReestimation`)."""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from agq_keras.saving import atomic_write, write_text


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
    backup keeps the last good (finite) state.

    With ``bn_reestimation`` (the run's :class:`BNReestimation`) the epoch-end backup stores F's BN
    statistics as training left them (its running statistics), not the re-estimated ones F holds after
    the validation pass: a resumed run continues the same momentum chain, so its raw numbers (and F's
    statistics at every later epoch) are those of an uninterrupted run.

    Next to the weights, every epoch-end backup writes ``progress.json``: the logs of every finished epoch
    and the wall time since ``start_time`` (the call's start), added to those of the earlier calls. A call
    that resumes from the backup starts from them, so :meth:`history` and :meth:`wall_s` cover the whole
    run, not only the epochs of the last call. (The time of an epoch cut by a kill is not counted.)"""

    def __init__(self, backup_dir, guard: NaNGuard, bn_reestimation: "BNReestimation | None" = None,
                 start_time: float | None = None, **kwargs):
        super().__init__(backup_dir, delete_checkpoint=False, **kwargs)
        self.guard = guard
        self.bn_reestimation = bn_reestimation
        self.start_time = time.time() if start_time is None else float(start_time)
        self.progress_path = os.path.join(backup_dir, "progress.json")
        self.previous = {"wall_s": 0.0, "history": {}}  # the earlier calls' epochs and time
        if os.path.isfile(self.progress_path):
            with open(self.progress_path) as fh:
                self.previous = json.load(fh)
        self.epochs: dict = {}  # this call's epoch logs, as History keeps them

    @staticmethod
    def finished_epochs(backup_dir: str) -> int:
        """How many epochs the backup in ``backup_dir`` holds (0 when there is none)."""
        path = os.path.join(backup_dir, "progress.json")
        if not os.path.isfile(path):
            return 0
        with open(path) as fh:
            history = json.load(fh).get("history", {})
        return max((len(v) for v in history.values()), default=0)

    def history(self, epochs: dict | None = None) -> dict:
        """Every epoch's logs: the earlier calls' (from the backup), then ``epochs`` (default: this call's)."""
        epochs = self.epochs if epochs is None else epochs
        before = self.previous["history"]
        return {k: [float(v) for v in before.get(k, [])] + [float(v) for v in epochs.get(k, [])]
                for k in {**before, **epochs}}

    def wall_s(self) -> float:
        """Seconds of the earlier calls (up to their last backup) plus this call's so far."""
        return float(self.previous["wall_s"]) + time.time() - self.start_time

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.diverged_at is None:
            if self.bn_reestimation is None:
                super().on_epoch_end(epoch, logs)
            else:
                with self.bn_reestimation.running_statistics():
                    super().on_epoch_end(epoch, logs)
            for key, value in (logs or {}).items():
                self.epochs.setdefault(key, []).append(float(value))
            write_text(self.progress_path, json.dumps({"wall_s": self.wall_s(), "history": self.history()}))

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
    warning) without matplotlib. A history with ``raw_val_accuracy`` (:class:`BNReestimation` with
    ``log_raw=True``) gets both curves, labelled: ``val_accuracy`` is then F with its BatchNorm statistics
    re-estimated ("steadied"), ``raw_val_accuracy`` F with training's running statistics ("raw")."""
    plt = pyplot(os.path.basename(path))
    if plt is None:
        return False
    top1 = [100.0 * a for a in history.get("val_accuracy", [])]
    raw = [100.0 * a for a in history.get("raw_val_accuracy", [])]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(range(1, len(top1) + 1), top1, marker="o",
            label="F test top-1, BN re-estimated (steadied)" if raw else "F test top-1")
    if raw:
        ax.plot(range(1, len(raw) + 1), raw, marker="x", alpha=0.7,
                label="F test top-1, raw (running BN statistics)")
    if history.get("accuracy"):
        ax.plot(range(1, len(history["accuracy"]) + 1), [100.0 * a for a in history["accuracy"]],
                linestyle="--", label="F train top-1")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return True


# -- BatchNorm re-estimation ------------------------------------------------------------------------

def deployed_net(model: keras.Model) -> keras.Model:
    """F of a model: ``model.f`` for an :class:`agq_keras.training.AGTrainer` (or any model holding its
    deployed net as ``.f``), else the model itself."""
    f = getattr(model, "f", None)
    return f if isinstance(f, keras.Model) else model


def batch_norm_inputs(f: keras.Model):
    """``[(bn, [inputs])]``: every trainable ``BatchNormalization`` layer called in F's graph (inputs to
    outputs order) with the input KerasTensor of each of its calls *in F* (a layer shared with another
    graph, e.g. H, contributes only its calls in F).

    Raises ValueError when F is not a functional model, holds a BatchNormalization layer inside a nested
    model, or one with ``renorm=True`` (its moving statistics are not the plain batch moments).
    Non-trainable BNs are left out: in training mode they normalize with their moving statistics,
    which training never updates, so re-estimating them would change what the net was trained with.
    """
    functional = getattr(f, "_functional", None)  # a built keras.Sequential wraps a functional graph
    graph = functional if functional is not None else f
    nodes_by_depth = getattr(graph, "_nodes_by_depth", None)
    if not isinstance(f, keras.Model) or not nodes_by_depth:
        raise ValueError(f"BNReestimation: F={getattr(f, 'name', f)!r} ({type(f).__name__}) is not allowed; "
                         "it needs a built functional keras.Model (or an AGTrainer whose .f is one).")
    found: dict[int, tuple] = {}
    for depth in sorted(nodes_by_depth, reverse=True):  # the deepest nodes are F's inputs
        for node in nodes_by_depth[depth]:
            op = node.operation
            if isinstance(op, keras.layers.BatchNormalization):
                if getattr(op, "renorm", False):
                    raise ValueError(f"BNReestimation: BatchNormalization layer {op.name!r} has renorm=True, which "
                                     "is not supported; allowed: renorm=False.")
                if not op.trainable:
                    continue
                args = node.arguments.args
                x = args[0] if args else node.arguments.kwargs.get("inputs")
                found.setdefault(id(op), (op, []))[1].append(x)
            elif isinstance(op, keras.layers.Layer) and not isinstance(op, keras.layers.BatchNormalization):
                nested = [layer.name for layer in op._flatten_layers(include_self=False)
                          if isinstance(layer, keras.layers.BatchNormalization)]
                if nested:
                    raise ValueError(f"BNReestimation: layer {op.name!r} of F holds BatchNormalization layer(s) "
                                     f"{nested} inside it, which is not supported; allowed: BatchNormalization "
                                     "layers called directly in F's functional graph.")
    return list(found.values())


class _BNProbe:
    """F from its inputs to the input of each of its trainable BNs, run in training mode, reduced to
    per-channel batch moments in one traced function."""

    def __init__(self, f: keras.Model):
        self.f = f
        self.groups = batch_norm_inputs(f)
        if not self.groups:
            raise ValueError(f"BNReestimation: F={f.name!r} has no trainable BatchNormalization layer to "
                             "re-estimate; allowed: a net with at least one (trainable, non-renorm) "
                             "BatchNormalization layer.")
        tensors = [t for _, ts in self.groups for t in ts]
        self.axes = []
        for bn, ts in self.groups:
            for t in ts:
                rank = len(t.shape)
                channel = bn.axis % rank
                self.axes.append([i for i in range(rank) if i != channel])
        self.model = keras.Model(f.inputs, tensors, name=f"{f.name}_bn_inputs")
        self.targets = [v for bn, _ in self.groups for v in (bn.moving_mean, bn.moving_variance)]
        self._moments = tf.function(self._batch_moments, reduce_retracing=True)

    def _batch_moments(self, x):
        outs = self.model(x, training=True)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        means, variances = [], []
        for t, axes in zip(outs, self.axes):
            t = t if t.dtype == tf.float64 else tf.cast(t, tf.float32)  # BN upcasts to (at least) float32
            mean, variance = tf.nn.moments(t, axes)  # biased variance, as BatchNormalization's
            means.append(mean)
            variances.append(variance)
        return means, variances

    def run(self, dataset: tf.data.Dataset, num_batches: int) -> int:
        from agq_keras import quantizers

        state = self.f.non_trainable_variables  # BN stats, quantizer state, dropout seed generators
        saved = [np.array(v.numpy()) for v in state]
        sums_m = sums_v = None
        count = 0
        done = False
        try:
            with quantizers.frozen_state():  # traced here, so stateful quantizers do not update
                for element in dataset.take(num_batches):
                    x = keras.utils.unpack_x_y_sample_weight(element)[0] if isinstance(element, tuple) else element
                    means, variances = self._moments(x)
                    means = [np.asarray(m, np.float64) for m in means]
                    variances = [np.asarray(v, np.float64) for v in variances]
                    if sums_m is None:
                        sums_m, sums_v = means, variances
                    else:
                        sums_m = [a + b for a, b in zip(sums_m, means)]
                        sums_v = [a + b for a, b in zip(sums_v, variances)]
                    count += 1
            if count == 0:
                raise ValueError("BNReestimation: the dataset yielded no batch; allowed: a dataset of at least "
                                 f"num_batches={num_batches} batch(es).")
            for v, value in zip(state, saved):  # everything F's training-mode pass may have moved
                v.assign(value)
            i = 0
            for bn, ts in self.groups:  # a BN called k times in F: the mean over its calls and batches
                k = len(ts)
                mean = sum(sums_m[i:i + k]) / (k * count)
                variance = sum(sums_v[i:i + k]) / (k * count)
                bn.moving_mean.assign(mean.astype(bn.moving_mean.dtype))
                bn.moving_variance.assign(variance.astype(bn.moving_variance.dtype))
                i += k
            done = True
        finally:
            if not done:
                for v, value in zip(state, saved):
                    v.assign(value)
        return count


def _check_num_batches(num_batches) -> int:
    if isinstance(num_batches, bool) or not isinstance(num_batches, numbers.Integral) or num_batches < 1:
        raise ValueError(f"BNReestimation: num_batches={num_batches!r} is not allowed; it must be a positive "
                         "integer (e.g. 20).")
    return int(num_batches)


def _check_dataset(dataset, num_batches: int) -> tf.data.Dataset:
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(f"BNReestimation: dataset={type(dataset).__name__} is not allowed; it must be a batched "
                         "tf.data.Dataset of (x, y), (x, y, sample_weight) or x batches (e.g. the training set).")
    cardinality = int(dataset.cardinality())
    if 0 <= cardinality < num_batches:
        raise ValueError(f"BNReestimation: the dataset holds {cardinality} batch(es), fewer than "
                         f"num_batches={num_batches}; allowed: num_batches <= {cardinality}, or a longer dataset.")
    return dataset


def reestimate_batch_norm(model: keras.Model, dataset: tf.data.Dataset, num_batches: int = 20) -> int:
    """Re-estimate the moving statistics of F's BatchNormalization layers once (see
    :class:`BNReestimation` for the definition); returns the number of batches used."""
    num_batches = _check_num_batches(num_batches)
    return _BNProbe(deployed_net(model)).run(_check_dataset(dataset, num_batches), num_batches)


class BNReestimation(keras.callbacks.Callback):
    """Steady evaluation: before every evaluation, recompute the moving statistics of F's BatchNorms.

    F is ``model.f`` when the model has one (:class:`agq_keras.training.AGTrainer`; H's BNs are not
    touched), else the model. ``on_test_begin`` runs it, which ``fit(validation_data=...)`` calls before
    every validation pass and ``model.evaluate(..., callbacks=[cb])`` before evaluating.

    Definition. Take the first ``num_batches`` batches ``x_1..x_B`` of a fresh iteration of ``dataset``
    (``dataset.take(num_batches)``; the same batches every time when the dataset is deterministic, e.g.
    unshuffled or :func:`agq_keras.data.pipeline.from_arrays`'s epoch-keyed order). Run F on each in
    training mode, exactly as in a training step: every BN normalizes with its batch statistics. With
    ``z_b`` the input of a BN on batch ``b`` and ``S`` its positions (all axes but the channel axis),

        mu_b    = mean_S z_b,            sigma2_b = mean_S (z_b - mu_b)^2   (biased, as BatchNormalization's
                                                                              moving variance: tf.nn.moments)
        moving_mean     <- (1/B) sum_b mu_b
        moving_variance <- (1/B) sum_b sigma2_b

    assigned as computed (no momentum mix with the old values). A BN called k times in F averages over
    its k calls too. Weights are frozen: no gradient is applied, so trainable weights are bit-identical;
    the pass runs under :func:`agq_keras.quantizers.frozen_state`, so stateful quantizers (moving ranges,
    LQ-Net bases) do not update and quantize with their stored state (as evaluation does), and every
    other non-trainable variable of F (quantizer state, dropout seed generators, other BNs) is restored
    afterwards. Non-trainable BNs are skipped (training never updates them either); renorm BNs and BNs
    inside nested models are refused.

    Inside ``fit`` the re-estimated statistics serve the validation pass and the epoch-end callbacks
    (checkpoints store them); when the next epoch begins the callback puts training's running statistics
    back, so the momentum chain training builds (and the raw numbers of ``log_raw``) is exactly that of a
    run without the callback. After ``fit`` F keeps the statistics of the last re-estimation, and the
    callback holds training's running statistics: :meth:`restore_running_statistics` puts them back (the
    raw net), :meth:`running_statistics` does so for the length of a ``with`` block (backups:
    :class:`SafeBackup`).

    Training is unchanged by it: in a training step (``training=True``, trainable BN) a BN normalizes
    with its batch statistics and its moving statistics are only written (a momentum update that reads
    nothing but the old moving statistics), so they never reach a loss, a gradient, a weight or a
    quantizer; re-estimating them every epoch changes what evaluation sees, not the training trajectory
    (tests/test_bn_reestimation.py checks bit-identical weights after ``fit`` with and without it). Give
    it a dataset object of its own, not the one ``fit`` iterates when that one reshuffles statefully
    (``shuffle(reshuffle_each_iteration=True)``), whose extra iteration would move the next epoch's order.

    Args:
      dataset: a batched ``tf.data.Dataset`` of ``(x, y)``, ``(x, y, sample_weight)`` or ``x``.
      num_batches: how many batches to average over (a positive integer; the dataset must hold that many).
      log_raw: also evaluate the raw net (F with its running moving statistics) on ``validation_data``
        before re-estimating, with this model's compiled loss and metrics, and add each value as
        ``raw_val_<name>`` (``raw_val_loss``, ``raw_val_accuracy``, ...) to the epoch logs: one run gives
        the raw and the steadied (``val_*``) numbers per epoch. Put this callback before the callbacks
        that read the epoch logs (History, added last by ``fit``, always sees them).
      validation_data: what ``fit`` validates on (a ``tf.data.Dataset`` or an ``(x, y[, w])`` tuple);
        needed by, and only allowed with, ``log_raw=True``.

    Attributes: ``count`` (re-estimations so far), ``last_num_batches``, ``raw_logs`` (the last raw
    evaluation, also outside ``fit``), ``raw_history`` (``{name: [per epoch]}`` inside ``fit``).
    """

    def __init__(self, dataset: tf.data.Dataset, num_batches: int = 20, *, log_raw: bool = False,
                 validation_data=None):
        super().__init__()
        self.num_batches = _check_num_batches(num_batches)
        self.dataset = _check_dataset(dataset, self.num_batches)
        if not isinstance(log_raw, bool):
            raise ValueError(f"BNReestimation: log_raw={log_raw!r} is not allowed; it must be True or False.")
        if log_raw and validation_data is None:
            raise ValueError("BNReestimation: log_raw=True needs validation_data (what fit() validates on, a "
                             "tf.data.Dataset or an (x, y) tuple); got None.")
        if validation_data is not None:
            if not log_raw:
                raise ValueError("BNReestimation: validation_data is only used with log_raw=True; pass "
                                 "log_raw=True or leave validation_data out.")
            if not isinstance(validation_data, (tf.data.Dataset, tuple)) or (
                    isinstance(validation_data, tuple) and len(validation_data) not in (2, 3)):
                raise ValueError(f"BNReestimation: validation_data={type(validation_data).__name__} is not "
                                 "allowed; it must be a tf.data.Dataset or an (x, y) / (x, y, sample_weight) tuple.")
        self.log_raw = log_raw
        self.validation_data = validation_data
        self.count = 0
        self.last_num_batches = 0
        self.raw_logs = None
        self.raw_history: dict[str, list] = {}
        self._pending_raw = None
        self._probe = None
        self._busy = False
        self._in_fit = False
        self._running = None

    def set_model(self, model):
        super().set_model(model)
        f = deployed_net(model)
        if self._probe is None or self._probe.f is not f:
            self._probe = _BNProbe(f)  # errors about F surface when fit/evaluate starts

    def reestimate(self) -> int:
        """Re-estimate F's BN statistics now; returns the number of batches used."""
        if self.model is None:
            raise ValueError("BNReestimation: no model set; pass the callback to fit()/evaluate() or call "
                             "set_model(model) first.")
        self.last_num_batches = self._probe.run(self.dataset, self.num_batches)
        self.count += 1
        return self.last_num_batches

    def _evaluate_raw(self) -> dict:
        kwargs = dict(verbose=0, return_dict=True, callbacks=[])  # no callbacks: no recursion, no progress bar
        data = self.validation_data
        if isinstance(data, tf.data.Dataset):
            return self.model.evaluate(data, **kwargs)
        x, y, w = keras.utils.unpack_x_y_sample_weight(data)
        return self.model.evaluate(x, y, sample_weight=w, **kwargs)

    def on_train_begin(self, logs=None):
        self._in_fit = True
        self._running = None

    def on_train_end(self, logs=None):
        self._in_fit = False  # F keeps the statistics of the last re-estimation; training's running
        # statistics stay held for restore_running_statistics() (until the next fit begins)

    @property
    def holds_running_statistics(self) -> bool:
        """True when training's running statistics are held, not in F: after a re-estimation inside fit
        (until the next epoch begins), and after fit when its last epoch re-estimated."""
        return self._running is not None

    def restore_running_statistics(self) -> bool:
        """Put training's running statistics back into F (the raw net: what a run without this callback
        would have); returns False, changing nothing, when none are held (see
        :attr:`holds_running_statistics`)."""
        if self._running is None:
            return False
        for v, value in zip(self._probe.targets, self._running):
            v.assign(value)
        self._running = None
        return True

    @contextlib.contextmanager
    def running_statistics(self):
        """Within it F holds training's running statistics (when held; else it changes nothing), and the
        re-estimated ones again afterwards: what a backup stores (:class:`SafeBackup`), so a resumed run
        continues training's momentum chain exactly."""
        if self._running is None:
            yield
            return
        steadied = [np.array(v.numpy()) for v in self._probe.targets]
        for v, value in zip(self._probe.targets, self._running):
            v.assign(value)
        try:
            yield
        finally:
            for v, value in zip(self._probe.targets, steadied):
                v.assign(value)

    def on_test_begin(self, logs=None):
        if self._busy:  # our own raw evaluation
            return
        self._busy = True
        try:
            if self.log_raw:
                self.raw_logs = {k: float(v) for k, v in self._evaluate_raw().items()}
                self._pending_raw = self.raw_logs
            if self._in_fit:  # training's running statistics, put back when the next epoch begins
                self._running = [np.array(v.numpy()) for v in self._probe.targets]
            self.reestimate()
        finally:
            self._busy = False

    def on_epoch_begin(self, epoch, logs=None):
        self._pending_raw = None  # a raw evaluation outside this epoch's validation is not logged in it
        if self._running is not None:
            for v, value in zip(self._probe.targets, self._running):
                v.assign(value)
            self._running = None

    def on_epoch_end(self, epoch, logs=None):
        if self._pending_raw is None:
            return
        for name, value in self._pending_raw.items():
            self.raw_history.setdefault(f"raw_val_{name}", []).append(value)
            if logs is not None:
                logs[f"raw_val_{name}"] = value
        self._pending_raw = None
