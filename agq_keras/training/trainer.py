"""The joint F/H training step of the auxiliary gradient module (Algorithm 1).

:class:`AGTrainer` is a `keras.Model` whose ``call`` is F: ``evaluate`` and
``predict`` use F only. Its ``train_step`` forwards F and H separately and
applies to each variable:

* shared (in both F and H):  (dL1/dw + lambda * dL2/dw) / (1 + lambda)
* F-only (F's BatchNorms):   dL1/dw
* H-only (H's BNs, adaptors): dL2/dw

where L1 is F's loss and L2 H's. The trainer knows nothing of ResNets: it
receives two functional models that share layers and works out the variable
sets by identity.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from agq_keras import quantizers
from agq_keras.lowerable import ends_in_softmax, softmax_outputs


def check_lambda(value) -> float:
    """lambda must be a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"aux_lambda={value!r} is not allowed; it must be a finite number >= 0 (paper: 1.0).")
    return float(value)


def default_loss(f: keras.Model | None = None):
    """Sparse cross-entropy on F's outputs: on logits, or on probabilities where ``f`` ends in a softmax (a
    keras.applications classifier head, which :func:`agq_keras.quantize` keeps; H then ends in it too)."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=f is None or not ends_in_softmax(f))


def check_loss_fits(f: keras.Model, loss) -> None:
    """Refuses a cross-entropy on logits for an F that ends in a softmax (it would train through two softmaxes)."""
    if isinstance(loss, (keras.losses.SparseCategoricalCrossentropy, keras.losses.CategoricalCrossentropy)) and \
            loss.get_config().get("from_logits") and ends_in_softmax(f):
        raise ValueError(f"loss {type(loss).__name__}(from_logits=True) does not fit F {f.name!r}, which ends in a "
                         f"softmax (layer {softmax_outputs(f)[0]!r}): give from_logits=False (compile()'s default "
                         "loss does), or remove the softmax from the model before quantize().")


def split_variables(f: keras.Model, h: keras.Model):
    """(shared, f_only, h_only) trainable variables, by object identity."""
    f_ids = {id(v) for v in f.trainable_variables}
    h_ids = {id(v) for v in h.trainable_variables}
    shared = [v for v in f.trainable_variables if id(v) in h_ids]
    f_only = [v for v in f.trainable_variables if id(v) not in h_ids]
    h_only = [v for v in h.trainable_variables if id(v) not in f_ids]
    return shared, f_only, h_only


@keras.saving.register_keras_serializable(package="agq_keras")
class AGTrainer(keras.Model):
    """Jointly trains F (deployed) and H (auxiliary) with shared weights.

    Args:
      f: the low-precision network F (functional `keras.Model`).
      h: the auxiliary network H, built on F's layer objects and F's input.
      aux_lambda: the weight lambda of H's loss (eq. 2), >= 0.

    The same step also trains F alone (``h=None``), F with auxiliary
    classifiers (``f_train``, the "additional losses" baseline), F with a
    jointly trained teacher (``kd_weight > 0``, the KD baseline), each with
    or without SSP (``ssp=``, an :class:`agq_keras.training.ssp.SSP`).

    Logs: ``loss`` (F's objective) and compiled metrics are F's (the
    headline); ``h_loss`` and ``h_accuracy`` are H's (or the teacher's).
    ``compile()`` defaults to Adam, sparse cross-entropy on logits and
    accuracy.

    A *structured* loss (an object with ``structured = True``, called as ``loss(y, outputs)`` on the whole
    output structure, e.g. :class:`agq_keras.detection.DetectionLoss`) makes F and H multi-output: the
    same step applies it to F's and H's outputs (no ``h_accuracy``).
    """

    def __init__(self, f: keras.Model, h: keras.Model | None = None, aux_lambda: float = 1.0, *,
                 f_train: keras.Model | None = None, aux_alpha: float = 0.01, kd_weight: float = 0.0,
                 ssp=None, **kwargs):
        super().__init__(**kwargs)
        if h is not None and [id(t) for t in f.inputs] != [id(t) for t in h.inputs]:
            raise ValueError("AGTrainer: F and H must be built on the same Input tensor.")
        if f_train is not None and (f_train.outputs[0] is not f.outputs[0] or len(f_train.outputs) < 2):
            raise ValueError("AGTrainer: f_train must output F's logits first, then the auxiliary logits.")
        if kd_weight and h is None:
            raise ValueError("AGTrainer: kd_weight > 0 needs a teacher network as h.")
        self.f = f
        self.h = h
        # Optional variants sharing this one step (see agq_keras.training.baselines):
        # f_train: F plus auxiliary classifiers ("additional losses", eq. 3);
        # kd_weight: h is a full-precision teacher, mutual distillation (eq. 4);
        # ssp: stochastic structured precision controller (Algorithm 2).
        self.f_train = f_train
        self.aux_alpha = check_lambda(aux_alpha)
        self.kd_weight = check_lambda(kd_weight)
        self.ssp = ssp.attach(f) if ssp is not None and ssp.weight_gates is None else ssp
        self.aux_lambda = check_lambda(aux_lambda)
        self.f_loss_tracker = keras.metrics.Mean(name="loss")
        self.h_loss_tracker = keras.metrics.Mean(name="h_loss")
        self.h_accuracy = keras.metrics.SparseCategoricalAccuracy(name="h_accuracy")
        self._h_loss_fn = default_loss(f)
        self._structured = False
        self.trace_count = 0  # python-side: how many times train_step was traced
        self.built = True  # F and H are built functional models

    # -- Keras plumbing ---------------------------------------------------
    def call(self, inputs, training=None):
        return self.f(inputs, training=training)

    def compile(self, optimizer="adam", loss=None, metrics=("accuracy",), **kwargs):
        loss = default_loss(self.f) if loss is None else loss
        check_loss_fits(self.f, loss)
        self._structured = bool(getattr(loss, "structured", False))
        if isinstance(loss, keras.losses.Loss) or self._structured:
            self._h_loss_fn = loss
        else:
            self._h_loss_fn = keras.losses.LossFunctionWrapper(keras.losses.get(loss))
        super().compile(optimizer=optimizer, loss=loss, metrics=list(metrics or []), **kwargs)
        # Create the optimizer's slots now, so that fit() traces the step once
        # (creating variables inside the first trace forces a second one).
        self.optimizer.build(self.trainable_variables)
        if _is_sparse(loss):
            # Likewise build the compiled metrics (Keras builds them lazily,
            # inside the first trace) with one dummy sparse-label batch.
            num_classes = int(self.f.outputs[0].shape[-1])
            self.compute_metrics(None, tf.zeros((1,), "int32"), tf.zeros((1, num_classes)))
            self.reset_metrics()

    def build(self, input_shape=None):
        self.built = True

    def fit(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.fit``; labels given as an array are checked first against a sparse loss (the
        default): :func:`check_sparse_labels`. A dataset's labels are not read ahead."""
        self._check_labels(y)
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.evaluate``, with :meth:`fit`'s label check."""
        self._check_labels(y)
        return super().evaluate(x, y, *args, **kwargs)

    def _check_labels(self, y) -> None:
        if y is not None and not isinstance(y, dict) and _is_sparse(getattr(self, "loss", None)):
            check_sparse_labels(y, int(self.f.outputs[0].shape[-1]))

    def _compiled_metrics(self):
        own = (self.f_loss_tracker, self.h_loss_tracker, self.h_accuracy)
        return [m for m in super().metrics if m.name != "loss" and not any(m is o for o in own)]

    @property
    def metrics(self):
        # F's loss tracker stands for "loss" (Keras's own tracker would be a second, unused "loss");
        # H's trackers only where there is an H.
        h = [self.h_loss_tracker] + ([] if self._structured else [self.h_accuracy]) if self.h is not None else []
        return [self.f_loss_tracker, *self._compiled_metrics(), *h]

    @property
    def metrics_names(self):
        """The names of ``evaluate()``'s values, in their order: F's loss, then the compiled metrics
        (``fit()`` also logs ``h_loss`` and ``h_accuracy`` where there is an H)."""
        names = ["loss"]
        for m in self._compiled_metrics():
            names += [s.name for s in getattr(m, "metrics", None) or [m]]
        return names

    def compile_from_config(self, config):
        # Restores the compile state of a saved trainer (so a loaded
        # `trainer.keras` resumes with its optimizer state).
        self.compile(**keras.saving.deserialize_keras_object(config))

    # -- the step -----------------------------------------------------------
    def variable_groups(self):
        f = self.f_train if self.f_train is not None else self.f
        if self.h is None:
            return [], list(f.trainable_variables), []
        return split_variables(f, self.h)

    def objectives(self, x, y, sample_weight=None, training=True):
        """``(loss_f, loss_h, y_f, y_h)`` of one batch (``loss_h``/``y_h`` None without h).

        loss_f = CE(F) [+ alpha * sum_i CE(aux_i)] [+ beta * l_d];
        loss_h = CE(H or teacher) [+ beta * l_d], with the distillation loss
        l_d = 1/2 mean_j (z_F,j - z_T,j)^2 on the logits (KD only).
        """
        if self.f_train is not None:
            y_f, *y_aux = self.f_train(x, training=training)
        else:
            y_f, y_aux = self.f(x, training=training), []
        loss_f = self._f_loss(x, y, y_f, sample_weight, training)
        for y_a in y_aux:
            loss_f = loss_f + self.aux_alpha * self._h_loss_fn(y, y_a, sample_weight=sample_weight)
        if self.h is None:
            return loss_f, None, y_f, None
        with quantizers.frozen_state():  # stateful quantizers update from F's pass only
            y_h = self.h(x, training=training)
        loss_h = self._h_loss_fn(y, y_h, sample_weight=sample_weight)
        if self.kd_weight:  # this replica's share of the global batch's mean, as Keras's losses reduce
            gap = tf.cast(y_f, "float32") - tf.cast(y_h, "float32")
            distill = 0.5 * tf.reduce_mean(tf.square(gap)) / _replicas()
            loss_f = loss_f + self.kd_weight * distill
            loss_h = loss_h + self.kd_weight * distill
        return loss_f, loss_h, y_f, y_h

    def train_step(self, data):
        self.trace_count += 1
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if self.ssp is not None:
            gates = self.ssp.draw(self.optimizer.iterations)
        shared, f_only, h_only = self.variable_groups()
        lam = self.aux_lambda
        with tf.GradientTape(persistent=True) as tape:
            loss_f, loss_h, y_f, y_h = self.objectives(x, y, sample_weight, training=True)
        g1 = tape.gradient(loss_f, shared + f_only)
        g2 = tape.gradient(loss_h, shared + h_only) if loss_h is not None else [None] * len(shared)
        del tape
        n = len(shared)
        combined = [_combine(a, b, lam) for a, b in zip(g1[:n], g2[:n])]
        grads = combined + list(g1[n:]) + list(g2[n:])
        variables = shared + f_only + h_only
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, variables) if g is not None])
        if self.ssp is not None:
            with tf.control_dependencies([tf.convert_to_tensor(loss_f)]):
                self.ssp.reset()
        logs = self._logs(x, y, y_f, sample_weight, loss_f, y_h=y_h, loss_h=loss_h)
        if self.ssp is not None:  # this step's fraction of quantized (weight, activation) gates
            logs["ssp_w_quantized"] = tf.reduce_mean(gates[0])
            logs["ssp_a_quantized"] = tf.reduce_mean(gates[1])
        return logs

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_f = self.f(x, training=False)
        loss_f = self._f_loss(x, y, y_f, sample_weight, False)
        return self._logs(x, y, y_f, sample_weight, loss_f)

    def _f_loss(self, x, y, y_f, sample_weight, training):
        if not self._structured:
            return self.compute_loss(x=x, y=y, y_pred=y_f, sample_weight=sample_weight, training=training)
        loss = self._h_loss_fn(y, y_f, sample_weight=sample_weight)  # the whole output structure
        return loss + tf.add_n(self.losses) / _replicas() if self.losses else loss

    def _logs(self, x, y, y_f, sample_weight, loss_f, y_h=None, loss_h=None):
        # under tf.distribute every replica's loss is its share of the global batch's (1 / replicas, so that
        # the summed gradients are the global batch's); the logs report the global batch's loss
        self.f_loss_tracker.update_state(loss_f * _replicas())
        if y_h is not None:
            self.h_loss_tracker.update_state(loss_h * _replicas())
            if not self._structured:
                self.h_accuracy.update_state(y, y_h, sample_weight=sample_weight)
        logs = self.compute_metrics(x, y, y_f, sample_weight=sample_weight)
        logs["loss"] = self.f_loss_tracker.result()
        if y_h is None:
            logs.pop("h_loss", None)
            logs.pop("h_accuracy", None)
        return logs

    # -- serialization ---------------------------------------------------------
    def get_config(self):
        # F and H share layers: serialize them as one multi-output graph so the
        # sharing survives a round trip: [F, aux_1..aux_k, H].
        # A multi-output F (and H) keeps all its outputs: [F's n outputs, aux_1..aux_k, H's n outputs].
        aux = list(self.f_train.outputs[1:]) if self.f_train is not None else []
        n = len(self.f.outputs)
        outputs = list(self.f.outputs) + aux + (list(self.h.outputs) if self.h is not None else [])
        joint = keras.Model(self.f.inputs, outputs, name="joint")
        return {"joint": keras.saving.serialize_keras_object(joint), "aux_lambda": self.aux_lambda,
                "f_name": self.f.name, "h_name": self.h.name if self.h is not None else None,
                "name": self.name, "num_aux": len(aux), "num_outputs": n, "has_h": self.h is not None,
                "aux_alpha": self.aux_alpha, "kd_weight": self.kd_weight,
                "ssp": self.ssp.get_config() if self.ssp is not None else None, "f_spec": _f_spec(self.f)}

    @classmethod
    def from_config(cls, config):
        joint = keras.saving.deserialize_keras_object(config["joint"])
        outs = list(joint.outputs) if isinstance(joint.outputs, (list, tuple)) else [joint.outputs]
        num_aux, has_h, n = config.get("num_aux", 0), config.get("has_h", True), config.get("num_outputs", 1)
        f = keras.Model(joint.inputs, outs[0] if n == 1 else outs[:n], name=config.get("f_name", "F"))
        if config.get("f_spec"):  # F is a functional subclass that carries more (a detector's anchors)
            f = _spec_class(config["f_spec"]).rewrap(f, config["f_spec"]["config"])
        h = keras.Model(joint.inputs, outs[-1] if n == 1 else outs[-n:], name=config.get("h_name") or "H") if (
            has_h) else None
        f_train = keras.Model(joint.inputs, outs[:1 + num_aux], name="f_train") if num_aux else None
        ssp = None
        if config.get("ssp"):
            from agq_keras.training.ssp import SSP

            ssp = SSP(**config["ssp"])
        return cls(f, h, aux_lambda=config["aux_lambda"], f_train=f_train,
                   aux_alpha=config.get("aux_alpha", 0.01), kd_weight=config.get("kd_weight", 0.0),
                   ssp=ssp, name=config.get("name"))


def _f_spec(f) -> dict | None:
    """``{"module", "class_name", "config"}`` of an F whose class adds a spec to its functional graph (it has
    ``spec_config()`` and ``rewrap(graph, spec)``, e.g. :class:`agq_keras.detection.Detector`), else None."""
    if not (callable(getattr(f, "spec_config", None)) and callable(getattr(type(f), "rewrap", None))):
        return None
    return {"module": type(f).__module__, "class_name": type(f).__name__, "config": f.spec_config()}


def _spec_class(spec: dict):
    """The class an ``f_spec`` names, imported by name (the trainer sits below the packages that define such
    classes); only this library's modules are imported from a saved file."""
    import importlib

    module, name = spec.get("module", ""), spec.get("class_name", "")
    cls = getattr(importlib.import_module(module), name, None) if module.startswith("agq_keras.") else None
    if cls is None or not callable(getattr(cls, "rewrap", None)):
        raise ValueError(f"the saved trainer's F is a {module}.{name}, which is not a class of agq_keras with "
                         "rewrap(); allowed: agq_keras.detection.Detector.")
    return cls


def check_sparse_labels(y, num_classes: int) -> None:
    """One-line ValueErrors, before any step, for labels a sparse cross-entropy cannot take: one-hot rows, values
    that are not whole numbers, or class ids outside ``0 .. num_classes - 1`` (issue 31)."""
    import numpy as np

    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] == num_classes > 1:
        raise ValueError(f"labels have shape {labels.shape}: one-hot rows, but the loss (sparse cross-entropy, the "
                         f"default) takes class ids 0..{num_classes - 1}: pass labels.argmax(-1).")
    if labels.size == 0 or not np.issubdtype(labels.dtype, np.number):
        return
    if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
        raise ValueError(f"labels hold values that are not class ids (dtype {labels.dtype}, e.g. "
                         f"{labels.ravel()[~np.isclose(labels.ravel(), np.round(labels.ravel()))][:1].tolist()}); "
                         f"allowed: whole numbers 0..{num_classes - 1}.")
    lo, hi = labels.min(), labels.max()
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels hold values in [{lo:g}, {hi:g}]; allowed: 0..{num_classes - 1} ({num_classes} "
                         "classes, F's outputs).")


def _is_sparse(loss) -> bool:
    if isinstance(loss, str):
        return loss == "sparse_categorical_crossentropy"
    return isinstance(loss, keras.losses.SparseCategoricalCrossentropy)


def _replicas() -> int:
    """Replicas of the current tf.distribute strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def _combine(g1, g2, lam):
    if g1 is None:
        return None if g2 is None else g2 * (lam / (1.0 + lam))
    if g2 is None:
        return g1 / (1.0 + lam)
    return (g1 + lam * g2) / (1.0 + lam)
