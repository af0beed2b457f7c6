"""One training run from an ml_collections config (what ``scripts/train.py`` calls).

``run(config, workdir)``:

1. validates the config and the workdir (nothing is written on bad input);
2. builds the input pipelines (:mod:`agq_keras.data.pipeline`);
3. optionally runs stage 1 (section 4.1): the full-precision counterpart,
   SGD, in ``workdir/stage1`` (skipped when ``stage1/f.keras`` exists), and
   loads its weights into the quantized model by layer name;
4. builds the trainer (AG / plain F / additional losses / KD, with or
   without SSP) under the ``tf.distribute`` strategy and fits it with
   BackupAndRestore (``workdir/backup``), TerminateOnNaN, TensorBoard
   (``workdir/logs``), the step learning rate, the SSP delta schedule and,
   with ``bn_reestimation_batches > 0``, BatchNorm re-estimation of F before
   every evaluation (:class:`agq_keras.training.callbacks.BNReestimation`);
5. writes ``f.keras``, ``trainer.keras``, ``metrics.json`` (the logs of every epoch, also those of the
   earlier calls of a resumed run, and ``wall_s``: the run's seconds summed over its calls) and
   ``convergence.png`` atomically, then removes the backup.

A config with ``task = "detection"`` (:mod:`agq_keras.configs.detection`) runs :func:`run_detection`
instead: the detection twin (or COCO/VOC), :func:`agq_keras.detection.build_detector`, the same trainer step
with :class:`agq_keras.detection.DetectionLoss`, the same callbacks and backup, and ``metrics.json`` with
F's (and H's) COCO AP / AP50 / AP75 plus ``detections.png``.

Steady evaluation (``config.bn_reestimation_batches = N > 0``): before every evaluation F's BatchNorm
moving statistics are recomputed, weights frozen, over the first N batches of the training split read
in order with the test-time preprocessing (a dataset object of its own: the training pipeline, its order
and the backup are untouched; the same batches every time, so it is deterministic; N is capped at the
number of training batches). Every epoch logs the steadied numbers as ``val_*`` and the raw ones (F with
training's running statistics, what a run with N = 0 reports) as ``raw_val_*``. The backup stores
training's running statistics, so a resumed run is the uninterrupted one (its history too: the backup
keeps every finished epoch's logs). At the end, ``metrics.json``'s
``f`` is F with re-estimated statistics, which is exactly the saved ``f.keras`` (and what gets
exported), ``f_raw`` the raw F, and ``bn_reestimation`` says which is which. With N = 0 (the default)
``f`` and ``val_*`` are the raw F, as before.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from agq_keras import detection, saving
from agq_keras.data import detection_twin, pipeline
from agq_keras.models.builder import ARCHITECTURES, arch_family
from agq_keras.models.mobilenetv2 import BOTTLENECKS
from agq_keras.models.resnet import RESNETS
from agq_keras.networks import build
from agq_keras.quantizers import families
from agq_keras.quantizers.pairs import DEFAULT_FAMILY, make_pair
from agq_keras.training import baselines, callbacks as cb, workdir as workdirs
from agq_keras.training.recipe import load_by_name, stage1_config
from agq_keras.training.ssp import SSP, DeltaSchedule, check_decay_epoch, check_delta
from agq_keras.training.trainer import AGTrainer, default_loss

BASELINES = ("none", "additional_losses", "kd")
STRATEGIES = ("none", "mirrored", "multi_worker", "tpu")
OPTIMIZERS = ("adam", "sgd")


class DivergedError(RuntimeError):
    """The loss became NaN/inf; the backup keeps the last good epoch."""


def _int(config, key, minimum):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"config.{key}={value!r} must be an integer >= {minimum}.")


def _choice(config, key, allowed):
    if config[key] not in allowed:
        raise ValueError(f"config.{key}={config[key]!r} is not supported; allowed: {', '.join(allowed)}.")


def _epochs_list(config, key):
    value = tuple(config[key])
    if any(isinstance(e, bool) or not isinstance(e, numbers.Integral) or e < 1 for e in value):
        raise ValueError(f"config.{key}={value!r} must be positive integer epochs.")


def _quantization(config, archs, default_family: str) -> None:
    """``config.arch``, ``config.quantizer`` and the bit widths, in errors that name the config key (the
    quantizer's own message says which widths its family allows). ``default_family``: what an empty
    ``config.quantizer`` means."""
    _choice(config, "arch", tuple(sorted(archs)))
    if config.quantizer:
        _choice(config, "quantizer", families())
    family = config.quantizer or default_family
    for key, bits in (("w_bits", (config.w_bits, 32)), ("a_bits", (32, config.a_bits))):
        try:
            make_pair(family, *bits)
        except ValueError as err:
            raise ValueError(f"config.{key}={config[key]!r} is not supported by config.quantizer={family!r}: "
                             f"{err}") from None


def validate(config) -> None:
    """Check every value before anything is built or written."""
    if config.get("task", "classification") == "detection":
        return validate_detection(config)
    _quantization(config, ARCHITECTURES, arch_family(config.arch))
    for key, minimum in (("epochs", 1), ("batch_size", 1), ("train_subset", 0), ("test_subset", 0),
                         ("pretrain_epochs", 0), ("seed", 0), ("num_bases", 0), ("num_classes", 0), ("image_size", 8)):
        _int(config, key, minimum)
    alpha = config.get("alpha", 0)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (alpha == 0 or 0 < alpha < 1e3):
        raise ValueError(f"config.alpha={alpha!r} must be a positive number (mobilenetv2's width multiplier) or 0 "
                         "(the arch default).")
    if config.get("bottleneck", "") not in ("",) + BOTTLENECKS:
        raise ValueError(f"config.bottleneck={config.bottleneck!r} is not supported; allowed: '' (the arch default), "
                         f"{', '.join(BOTTLENECKS)} (mobilenetv2 only).")
    if config.get("first_last_bits", 0) not in (0, 8, 16, 32):
        raise ValueError(f"config.first_last_bits={config.first_last_bits!r} is not supported; allowed: 0 (the "
                         "default: 16, or 32 at full precision), 8, 16, 32.")
    _choice(config, "baseline", BASELINES)
    _choice(config, "strategy", STRATEGIES)
    _choice(config, "optimizer", OPTIMIZERS)
    _choice(config, "pretrain_optimizer", OPTIMIZERS)
    _choice(config, "dataset", pipeline.DATASETS)
    _choice(config, "ssp_fragments", ("block", "layer"))
    bn_batches = config.get("bn_reestimation_batches", 0)
    if isinstance(bn_batches, bool) or not isinstance(bn_batches, numbers.Integral) or bn_batches < 0:
        raise ValueError(f"config.bn_reestimation_batches={bn_batches!r} must be an integer >= 0 (0 = off; N > 0: "
                         "re-estimate F's BatchNorm statistics over N training batches before every evaluation).")
    _epochs_list(config, "lr_decay_epochs")
    _epochs_list(config, "pretrain_lr_decay_epochs")
    for key in ("learning_rate", "pretrain_learning_rate"):
        v = config[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"config.{key}={v!r} must be a positive finite number.")
    if config.ssp:
        check_delta(config.ssp_delta0)
        check_decay_epoch(config.ssp_decay_epoch)
        if config.ssp_decay_epoch > config.epochs:
            raise ValueError(f"config.ssp_decay_epoch={config.ssp_decay_epoch} is beyond the run "
                             f"(epochs={config.epochs}); allowed: 1..{config.epochs}.")
    if config.baseline != "none" and config.aux:
        raise ValueError(f"config.baseline={config.baseline!r} is a baseline to AG: set config.aux=False.")
    if config.baseline == "kd" and not (config.kd_beta > 0):
        raise ValueError(f"config.kd_beta={config.kd_beta!r} must be > 0 for KD.")
    if config.baseline == "additional_losses" and not (config.aux_alpha >= 0):
        raise ValueError(f"config.aux_alpha={config.aux_alpha!r} must be >= 0.")


def check_workdir(workdir: str) -> None:
    if not workdir:
        raise ValueError("--workdir is required.")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir!r} exists and is a file; give a folder (new or existing).")


def make_strategy(name: str, tpu: str = ""):
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def make_optimizer(name: str, lr: float, weight_decay: float = 0.0):
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=False, weight_decay=weight_decay or None)
    return keras.optimizers.Adam(lr, weight_decay=weight_decay or None)


def make_trainer(config, num_classes: int, input_shape) -> AGTrainer:
    """The trainer for a config: AG, plain F, additional losses or KD; SSP optional."""
    kwargs = dict(plain=config.plain, quantizer=config.quantizer, w_bits=config.w_bits, a_bits=config.a_bits,
                  num_classes=num_classes, input_shape=tuple(input_shape), bn_momentum=config.bn_momentum)
    if config.stem:
        kwargs["stem"] = config.stem
    if config.num_bases:
        kwargs["num_bases"] = config.num_bases
    if config.get("alpha", 0):
        kwargs["alpha"] = config.alpha  # build() validates it (mobilenetv2 only)
    if config.get("bottleneck", ""):
        kwargs["bottleneck"] = config.bottleneck  # build() checks the arch (mobilenetv2 only)
    if config.get("residual_stream", "float") != "float":
        kwargs["residual_stream"] = config.residual_stream
    if config.get("first_last_bits", 0):
        kwargs["first_last_bits"] = config.first_last_bits
    ssp = None
    if config.ssp:
        ssp = SSP(config.ssp_fragments, wa=config.ssp_wa, delta0=config.ssp_delta0,
                  decay_epoch=config.ssp_decay_epoch, seed=config.seed)
    if config.aux:
        return build(config.arch, aux=True, aux_placement=config.aux_placement, aux_lambda=config.aux_lambda,
                     aux_relu=bool(config.get("aux_relu", False)), ssp=ssp, **kwargs)
    if config.baseline == "none":
        return build(config.arch, ssp=ssp, **kwargs) if ssp else AGTrainer(build(config.arch, **kwargs), None)
    f = build(config.arch, **kwargs)
    if config.baseline == "additional_losses":
        return baselines.additional_losses_trainer(f, alpha=config.aux_alpha, ssp=ssp)
    if config.baseline == "kd":
        teacher = build(config.arch, **{**kwargs, "w_bits": 32, "a_bits": 32, "residual_stream": "float",
                                        "first_last_bits": 32})
        return baselines.kd_trainer(f, teacher, beta=config.kd_beta, ssp=ssp)
    raise ValueError(f"config.baseline={config.baseline!r}; allowed: {', '.join(BASELINES)}.")


def initialise(trainer, source) -> None:
    """Stage 2's start: copy ``source``'s weights into the trainer's parts (F, H, the baselines' training
    model) by layer name. A ``trainer.keras`` source gives each part its own part, a model gives every part
    itself (H's shared convs and same-named layers). ``source=None`` does nothing; a source none of whose
    layers match is a clear error."""
    if source is None:
        return
    copied = 0
    for part in ("f", "h", "f_train"):
        sub = getattr(trainer, part, None)
        if sub is not None:
            src = getattr(source, part, None) or getattr(source, "f", source)
            copied += load_by_name(src, sub)
    if copied == 0:
        raise ValueError(f"no layer of {source.name!r} matches {trainer.name!r} by name.")


def _load_init(config):
    """The model of ``config.init_checkpoint`` ('' = None), with clear errors for a missing or bad file."""
    if not config.init_checkpoint:
        return None
    if not os.path.isfile(config.init_checkpoint):
        raise FileNotFoundError(f"config.init_checkpoint {config.init_checkpoint!r} does not exist.")
    return saving.load_model(config.init_checkpoint, what="config.init_checkpoint")


def run(config, workdir: str, extra_callbacks=()) -> dict:
    """Train one config; returns the metrics dict also written to ``metrics.json``.

    The workdir belongs to one config (:mod:`agq_keras.training.workdir`): a workdir holding a run of another
    config, or held by a live run, is refused before anything is built or written; this call holds its lock.
    ``extra_callbacks`` are appended to the run's own (tests use them to interrupt a run)."""
    try:
        if config.get("task", "classification") == "detection":
            return run_detection(config, workdir, extra_callbacks)
        return _run_classification(config, workdir, extra_callbacks)
    finally:
        workdirs.release(workdir)


def _run_classification(config, workdir: str, extra_callbacks=()) -> dict:
    start = time.time()
    validate(config)
    check_workdir(workdir)
    workdirs.check(workdir, config)
    init = _load_init(config)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(config.strategy, config.tpu)
    epoch_counter = pipeline.EpochCounter()
    data_kw = dict(batch_size=config.batch_size, data_dir=config.data_dir, seed=config.seed,
                   image_size=config.image_size, num_classes=config.num_classes)
    train_ds, num_classes, input_shape = pipeline.make(config.dataset, "train", subset=config.train_subset,
                                                       epoch=epoch_counter.epoch, **data_kw)
    test_ds, _, test_shape = pipeline.make(config.dataset, "test", subset=config.test_subset, **data_kw)
    if tuple(test_shape) != tuple(input_shape):
        raise ValueError(f"config.dataset={config.dataset!r}: the test images are {tuple(test_shape)} and the "
                         f"training images {tuple(input_shape)} (height, width, channels); both splits must have "
                         "one shape.")
    _check_schedule(config)
    if config.num_classes:
        num_classes = config.num_classes

    stage1_f = None
    if config.pretrain_epochs:
        stage1_dir = os.path.join(workdir, "stage1")
        stage1_path = os.path.join(stage1_dir, "f.keras")
        if not os.path.isfile(stage1_path):
            print(f"Stage 1: pre-training the full-precision {config.arch} for {config.pretrain_epochs} epoch(s)")
            run(stage1_config(config), stage1_dir)
        stage1_f = saving.load_model(stage1_path, what="stage 1 checkpoint")

    with strategy.scope():
        trainer = make_trainer(config, num_classes, input_shape)
        for source in (stage1_f, init):
            initialise(trainer, source)
        trainer.compile(optimizer=make_optimizer(config.optimizer, config.learning_rate, config.weight_decay),
                        loss=default_loss(),
                        metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5")])

    steady = _steady_evaluation(config, data_kw, test_ds)
    _claim(workdir, config)
    guard = cb.NaNGuard()
    callbacks = [
        epoch_counter,
        keras.callbacks.LearningRateScheduler(cb.step_lr(config.learning_rate, config.lr_decay_epochs)),
        guard,
        cb.SafeBackup(os.path.join(workdir, "backup"), guard, bn_reestimation=steady, start_time=start),
        keras.callbacks.TensorBoard(os.path.join(workdir, "logs"), write_graph=False, profile_batch=0),
    ]
    if trainer.ssp is not None:
        callbacks.insert(0, DeltaSchedule(trainer.ssp))
    if steady is not None:  # first: the epoch-end callbacks (TensorBoard, History) see raw_val_*
        callbacks.insert(0, steady)
    callbacks += list(extra_callbacks)
    history = _fit(trainer, train_ds, test_ds, config, callbacks, guard, workdir)

    f_raw = None
    if steady is not None:
        # F with training's running statistics (also when a resumed run had no epoch left: the backup holds them)
        steady.restore_running_statistics()
        f_raw = dict(zip(["loss", "top1", "top5"], _evaluate(trainer, test_ds)))
    metrics = {"f": None, "history": history, "epochs": config.epochs, "config": config.to_dict()}
    if trainer.h is not None:  # before F's final re-estimation: as in a run without it
        with strategy.scope():
            h = keras.Model(trainer.h.inputs, trainer.h.outputs, name="h_eval")
            h.compile(loss=default_loss(),
                      metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5")])
        loss, top1, top5 = h.evaluate(test_ds, verbose=0)
        metrics["h" if config.baseline == "none" else "teacher"] = {"top1": top1, "top5": top5, "loss": loss}
    if steady is not None:
        if steady.model is None:
            steady.set_model(trainer)
        steady.reestimate()  # the final weights' statistics: what f.keras carries and "f" evaluates
    f_eval = dict(zip(["loss", "top1", "top5"], _evaluate(trainer, test_ds)))
    metrics["f"] = {"top1": f_eval["top1"], "top5": f_eval["top5"], "loss": f_eval["loss"]}
    if steady is not None:
        metrics["f_raw"] = {"top1": f_raw["top1"], "top5": f_raw["top5"], "loss": f_raw["loss"]}
        metrics["bn_reestimation"] = {
            "num_batches": steady.num_batches, "batch_size": config.batch_size,
            "note": ("f (and f.keras, and history val_*): F with its BatchNorm moving statistics re-estimated over "
                     f"the first {steady.num_batches} training batches (in order, test-time preprocessing), weights "
                     "frozen; f_raw (and history raw_val_*): F with training's running statistics, as a run "
                     "without re-estimation reports.")}
    else:
        metrics["bn_reestimation"] = {"num_batches": 0, "note": "off: f and history val_* use training's running "
                                                                "BatchNorm statistics."}

    saving.atomic_write(os.path.join(workdir, "f.keras"), lambda p: trainer.f.save(p))
    saving.atomic_write(os.path.join(workdir, "trainer.keras"), lambda p: trainer.save(p))
    metrics["wall_s"] = _backup(callbacks).wall_s()
    saving.write_text(os.path.join(workdir, "metrics.json"), json.dumps(metrics, indent=2, default=_jsonable))
    cb.plot_convergence(metrics["history"], os.path.join(workdir, "convergence.png"),
                        f"{config.arch} {config.w_bits}/{config.a_bits}-bit {config.dataset}")
    shutil.rmtree(os.path.join(workdir, "backup"), ignore_errors=True)
    print(f"F test top-1: {100 * f_eval['top1']:.2f}%  top-5: {100 * f_eval['top5']:.2f}%"
          + (f"  (BN re-estimated over {steady.num_batches} batches; raw: {100 * f_raw['top1']:.2f}%)"
             if steady is not None else "")
          + (f"  ({'H' if config.baseline == 'none' else 'teacher'} top-1: "
             f"{100 * metrics.get('h', metrics.get('teacher', {})).get('top1', 0):.2f}%)"
             if trainer.h is not None else ""))
    return metrics


def _claim(workdir: str, config) -> None:
    """Create and lock the workdir (its config recorded), and say so when the run resumes from its backup."""
    workdirs.claim(workdir, config)
    done = cb.SafeBackup.finished_epochs(os.path.join(workdir, "backup"))
    if done:
        print(f"Resuming {workdir} from epoch {done + 1} of {config.epochs} (its backup/ holds {done} finished "
              "epoch(s)).")


def _check_schedule(config) -> None:
    """A note (not an error: a short trial run of a config keeps its schedule) when learning-rate decays lie
    beyond the run."""
    late = [e for e in config.lr_decay_epochs if e >= config.epochs]
    if late:
        print(f"note: config.lr_decay_epochs={tuple(config.lr_decay_epochs)}: the decay(s) at "
              f"{', '.join(map(str, late))} never apply in a run of {config.epochs} epoch(s) (a decay at e lowers the "
              "rate from epoch e + 1 on).")


def _backup(callbacks) -> cb.SafeBackup:
    return next(c for c in callbacks if isinstance(c, cb.SafeBackup))


def _fit(trainer, train_ds, test_ds, config, callbacks, guard, workdir) -> dict:
    """``trainer.fit`` for the run; returns the logs of every epoch, those of the earlier calls of a resumed
    run included (:class:`~agq_keras.training.callbacks.SafeBackup`); a :class:`DivergedError` when the loss
    became NaN/inf."""
    verbose = config.verbose
    if verbose == 1 and not sys.stdout.isatty():  # a progress bar written to a file or pipe: one line per epoch
        verbose = 2
    try:
        history = trainer.fit(train_ds, validation_data=test_ds, epochs=config.epochs, callbacks=callbacks,
                              verbose=verbose, shuffle=False)
    except BaseException as err:  # Ctrl-C or SIGTERM (perhaps re-raised by TensorFlow as another type), a crash:
        done = cb.SafeBackup.finished_epochs(os.path.join(workdir, "backup"))  # what the workdir keeps, as a note
        err.add_note(f"{workdir} keeps " + (f"backup/ ({done} finished epoch(s) of {config.epochs}) and logs/: rerun "
                                            "the same command to resume." if done else
                                            "logs/ and no finished epoch: rerun the same command to start again."))
        raise  # the CLI prints the note when a signal stopped the run (agq_keras.cli), Python with a traceback
    if guard.diverged_at is not None:
        epoch, batch = guard.diverged_at
        raise DivergedError(f"training diverged (loss NaN/inf) in epoch {epoch + 1}, batch {batch}; no outputs "
                            f"written, the last good state is kept in {os.path.join(workdir, 'backup')}.")
    return _backup(callbacks).history(history.history)


def _steady_evaluation(config, data_kw, test_ds):
    """The run's :class:`~agq_keras.training.callbacks.BNReestimation` (None when
    ``bn_reestimation_batches`` is 0): its own dataset, the training split in order with the test-time
    preprocessing (deterministic; building or iterating it never touches the training pipeline), at the
    training batch size; N capped at the number of training batches; ``log_raw`` on the test set."""
    n = config.get("bn_reestimation_batches", 0)
    if not n:
        return None
    data, _, _ = pipeline.make(config.dataset, "train", subset=config.train_subset, augment=False, **data_kw)
    cardinality = int(data.cardinality())
    if cardinality > 0:
        n = min(n, cardinality)
    return cb.BNReestimation(data, n, log_raw=True, validation_data=test_ds)


def _evaluate(trainer, test_ds):
    logs = trainer.evaluate(test_ds, verbose=0, return_dict=True)
    return float(logs["loss"]), float(logs["accuracy"]), float(logs["top5"])


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    return float(value) if isinstance(value, numbers.Real) else str(value)


# -- detection (agq_keras.configs.detection) --------------------------------------------------------------------

DETECTION_DATASETS = ("fmnist_twin", *detection_twin.TFDS_NAMES)


def validate_detection(config) -> None:
    """A detection config's values (:mod:`agq_keras.configs.detection`), checked before anything is written."""
    for key, minimum in (("epochs", 1), ("batch_size", 1), ("seed", 0), ("canvas_size", 32), ("max_objects", 1),
                         ("train_canvases", 0), ("test_canvases", 1), ("fpn_width", 1), ("head_depth", 0),
                         ("plot_images", 0)):
        _int(config, key, minimum)
    _quantization(config, RESNETS, DEFAULT_FAMILY)
    _choice(config, "dataset", DETECTION_DATASETS)
    _choice(config, "optimizer", OPTIMIZERS)
    _epochs_list(config, "lr_decay_epochs")
    if config.dataset == "fmnist_twin" and config.train_canvases < 1:
        raise ValueError(f"config.train_canvases={config.train_canvases!r} must be an integer >= 1 for the twin.")
    v = config.learning_rate
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"config.learning_rate={v!r} must be a positive finite number.")
    if not 0 <= config.score_threshold < 1:
        raise ValueError(f"config.score_threshold={config.score_threshold!r} must be in [0, 1).")
    unsupported = [(k, config.get(k), default) for k, default in (
        ("ssp", False), ("baseline", "none"), ("pretrain_epochs", 0), ("bn_reestimation_batches", 0),
        ("strategy", "none"), ("residual_stream", "float")) if config.get(k, default) != default]
    if unsupported:
        key, value, default = unsupported[0]
        raise ValueError(f"config.{key}={value!r} is not supported for detection; allowed: {default!r}.")
    if config.get("first_last_bits", 0) not in (0, 16, 32):
        raise ValueError(f"config.first_last_bits={config.first_last_bits!r} is not supported for detection; "
                         "allowed: 0 (16, or 32 at full precision), 16, 32.")
    spec = _anchor_spec(config)  # a ValueError for bad levels / anchor sizes
    top = 2 ** spec.levels[-1]
    if config.canvas_size % top:
        raise ValueError(f"config.canvas_size={config.canvas_size} must be a multiple of {top} (the stride of the "
                         f"top level P{spec.levels[-1]}).")


def _anchor_spec(config):
    return detection.AnchorSpec(levels=tuple(config.levels), size_factor=config.anchor_size_factor)


def _detection_data(config):
    """``(training examples (unbatched), test images, test boxes, test labels, num_classes, class names)``."""
    test = detection_split(config, "test", config.test_canvases)
    if config.dataset == "fmnist_twin":
        train = detection_twin.load("train", config.train_canvases, **_twin_kwargs(config))
        return train[:3], test[:3], detection_twin.NUM_CLASSES, detection_twin.CLASS_NAMES
    train, _ = detection_twin.load_tfds(config.dataset, "train", **_tfds_kwargs(config))
    if config.train_canvases:
        train = train.take(config.train_canvases)
    return train, test[:3], test[3], None


def _twin_kwargs(config) -> dict:
    return dict(data_dir=config.data_dir or None, seed=config.seed, canvas_size=config.canvas_size,
                max_objects=config.max_objects)


def _tfds_kwargs(config) -> dict:
    return dict(data_dir=config.data_dir, image_size=config.canvas_size, max_objects=config.max_objects)


def detection_split(config, split: str, count: int):
    """``(images float32 as F sees them, boxes, labels, num_classes)``: the first ``count`` canvases of a
    detection config's ``split`` ("train" or "test"), the twin's (generated with the config's seed) or the tfds
    dataset's, as :func:`run_detection` trains and evaluates on them. ``config``: a detection config, or the
    ``config`` dict of a run's metrics.json."""
    config = _as_config(config)
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not supported; allowed: train, test.")
    if config.dataset == "fmnist_twin":
        images, boxes, labels, _ = detection_twin.load(split, count, **_twin_kwargs(config))
        # what F sees in training: pixels / 255
        return detection_twin.as_float(images), boxes, labels, detection_twin.NUM_CLASSES
    data, num_classes = detection_twin.load_tfds(config.dataset, split, **_tfds_kwargs(config))
    images, boxes, labels = [], [], []
    for image, ann in data.take(count).as_numpy_iterator():
        images.append(image)
        boxes.append(ann["boxes"])
        labels.append(ann["labels"])
    return np.stack(images), np.stack(boxes), np.stack(labels), num_classes


def detection_anchors(config, image_size):
    """The anchors ``[A, 4]`` of a detection config (a config or a run's metrics.json ``config`` dict) for
    images of ``(height, width)``."""
    return _anchor_spec(_as_config(config)).anchors(tuple(image_size))


def _as_config(config):
    if isinstance(config, dict):  # a run's metrics.json "config"
        import ml_collections

        return ml_collections.ConfigDict(config)
    return config


def run_detection(config, workdir: str, extra_callbacks=()) -> dict:
    """Train a detection config: ``f.keras``, ``trainer.keras``, ``metrics.json`` (F's and H's AP, AP50, AP75
    with pycocotools on the test canvases; the history; the config), ``logs/`` (TensorBoard) and
    ``detections.png`` (F's boxes on the first test canvases). Resumes from ``workdir/backup``."""
    start = time.time()
    validate_detection(config)
    check_workdir(workdir)
    workdirs.check(workdir, config)
    init = _load_init(config)  # stage 2: a float detector's F (or trainer.keras) initialises F and H
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    train, (test_x, test_boxes, test_labels), num_classes, names = _detection_data(config)
    _check_schedule(config)
    spec = _anchor_spec(config)
    image_size = tuple(test_x.shape[1:3])
    anchors = spec.anchors(image_size)
    epoch_counter = pipeline.EpochCounter()
    if isinstance(train, tuple):
        detection.check_annotations(train[1], train[2], image_size, num_classes, what="training canvases")
        train_ds = detection_twin.dataset(*train, batch_size=config.batch_size, training=True, seed=config.seed,
                                          epoch=epoch_counter.epoch)
    else:
        train_ds = train.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)
    test_ds = detection_twin.dataset(test_x, test_boxes, test_labels, batch_size=config.batch_size)
    train_ds, test_ds = (detection.with_targets(d, anchors) for d in (train_ds, test_ds))
    first_last = config.get("first_last_bits", 0) or None
    trainer = detection.build_detector(
        config.arch, aux=bool(config.aux), num_classes=num_classes, input_shape=(*image_size, test_x.shape[-1]),
        quantizer=config.quantizer, w_bits=config.w_bits, a_bits=config.a_bits, first_last_bits=first_last,
        stem=config.stem or None, plain=config.plain, anchors=spec, class_names=names, fpn_width=config.fpn_width,
        head_depth=config.head_depth, aux_placement=config.aux_placement, aux_lambda=config.aux_lambda,
        aux_relu=bool(config.get("aux_relu", False)), fpn_adaptors=config.fpn_adaptors,
        bn_momentum=config.bn_momentum)
    if not config.aux:  # F alone, through the same step
        trainer = AGTrainer(trainer, None, name=trainer.name)
    initialise(trainer, init)
    trainer.compile(optimizer=make_optimizer(config.optimizer, config.learning_rate, config.weight_decay),
                    loss=detection.DetectionLoss(num_classes), metrics=[])
    _claim(workdir, config)
    guard = cb.NaNGuard()
    callbacks = [epoch_counter,
                 keras.callbacks.LearningRateScheduler(cb.step_lr(config.learning_rate, config.lr_decay_epochs)),
                 guard, cb.SafeBackup(os.path.join(workdir, "backup"), guard, start_time=start),
                 keras.callbacks.TensorBoard(os.path.join(workdir, "logs"), write_graph=False, profile_batch=0),
                 *extra_callbacks]
    history = _fit(trainer, train_ds, test_ds, config, callbacks, guard, workdir)
    kw = dict(batch_size=config.batch_size, score_threshold=config.score_threshold)
    metrics = {"f": detection.evaluate(trainer.f, test_x, test_boxes, test_labels, anchors, num_classes, **kw)}
    metrics["f"]["loss"] = float(trainer.evaluate(test_ds, verbose=0, return_dict=True)["loss"])
    if trainer.h is not None:
        metrics["h"] = detection.evaluate(trainer.h, test_x, test_boxes, test_labels, anchors, num_classes, **kw)
    metrics.update({"history": history,
                    "epochs": config.epochs, "anchors": spec.to_dict(), "test_images": int(len(test_x)),
                    "config": config.to_dict()})
    saving.atomic_write(os.path.join(workdir, "f.keras"), lambda p: trainer.f.save(p))
    saving.atomic_write(os.path.join(workdir, "trainer.keras"), lambda p: trainer.save(p))
    metrics["wall_s"] = _backup(callbacks).wall_s()
    saving.write_text(os.path.join(workdir, "metrics.json"), json.dumps(metrics, indent=2, default=_jsonable))
    n = min(config.plot_images, len(test_x))
    if n:
        shown = detection.detect_images(trainer.f, test_x[:n], anchors, num_classes, **kw)
        detection.draw_detections(test_x[:n], shown, os.path.join(workdir, "detections.png"),
                                  gt_boxes=test_boxes[:n], gt_labels=test_labels[:n], class_names=names,
                                  title=f"{config.arch} {config.w_bits}/{config.a_bits}-bit F "
                                        f"(AP {100 * metrics['f']['AP']:.1f})")
    shutil.rmtree(os.path.join(workdir, "backup"), ignore_errors=True)
    print(f"F test AP: {100 * metrics['f']['AP']:.2f}  AP50: {100 * metrics['f']['AP50']:.2f}  "
          f"AP75: {100 * metrics['f']['AP75']:.2f}"
          + (f"  (H AP: {100 * metrics['h']['AP']:.2f})" if "h" in metrics else ""))
    return metrics
