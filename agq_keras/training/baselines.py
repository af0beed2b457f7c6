"""The paper's baselines of §3.1.3 / Table 3, trained by the AG trainer's step.

* **Additional losses** (eq. 3, Fig. 2a): an auxiliary classifier (full
  precision BN -> ReLU -> global average pool -> dense) on the output of every
  block that downsamples, ``L = L_F + alpha * sum_i l_i`` with ``alpha = 0.01``.
  The heads are train-time only; F is saved without them.
* **Knowledge distillation** (eq. 4, Fig. 2b): a full-precision teacher of the
  same architecture, trained jointly with the student F (mutual update, the
  guided training of Zhuang et al., CVPR 2018, the paper's reference [43]).
  Both minimise their cross-entropy plus ``beta * l_d`` with
  ``l_d = 1/2 mean_j (z_F,j - z_T,j)^2`` on the logits (one guidance point,
  M = 1, beta = 1 by default); each network only receives the gradient of
  its own objective (their weights are disjoint).
"""

from __future__ import annotations

import keras

from agq_keras import structure
from agq_keras.training.trainer import AGTrainer, check_lambda


def block_outputs(f: keras.Model, downsampling_only: bool = True) -> list:
    """Output tensors of F's blocks (those that downsample by default), in order
    (:func:`agq_keras.structure.blocks`: also for a reloaded F)."""
    blocks = structure.blocks(f)
    if not blocks:
        raise ValueError(f"additional losses need F's blocks; {f.name!r} has no quantized layer with a `fragment` "
                         "(agq_keras.build sets them; so can your own model: QConv2D(..., fragment='block name')).")
    return [f.get_layer(b.output).output for b in blocks if b.downsamples or not downsampling_only]


def aux_heads(f: keras.Model, num_classes: int, bn_momentum: float = 0.9) -> keras.Model:
    """``f_train``: F's logits followed by one auxiliary classifier's logits per downsampling block."""
    taps = block_outputs(f)
    if not taps:
        raise ValueError(f"{f.name} has no downsampling block to attach an auxiliary classifier to.")
    outs = [f.outputs[0]]
    for i, t in enumerate(taps, start=1):
        z = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"auxloss{i}_bn")(t)
        z = keras.layers.ReLU(name=f"auxloss{i}_relu")(z)
        z = keras.layers.GlobalAveragePooling2D(name=f"auxloss{i}_pool")(z)
        outs.append(keras.layers.Dense(num_classes, name=f"auxloss{i}_classifier")(z))
    return keras.Model(f.inputs, outs, name="f_train")


def additional_losses_trainer(f: keras.Model, alpha: float = 0.01, ssp=None) -> AGTrainer:
    num_classes = int(f.outputs[0].shape[-1])
    return AGTrainer(f, None, f_train=aux_heads(f, num_classes), aux_alpha=check_lambda(alpha), ssp=ssp,
                     name=f"{f.name}_auxloss")


def teacher_model(f: keras.Model, teacher: keras.Model) -> keras.Model:
    """The teacher (a separately built model) called on F's input, as a nested model."""
    teacher = keras.Model(teacher.inputs, teacher.outputs[0], name="teacher")
    return keras.Model(f.inputs, teacher(f.inputs[0]), name="teacher_on_f_input")


def kd_trainer(f: keras.Model, teacher: keras.Model, beta: float = 1.0, ssp=None) -> AGTrainer:
    beta = check_lambda(beta)
    if beta == 0:
        raise ValueError("kd_beta=0 is not allowed: KD needs a positive distillation weight.")
    if tuple(teacher.inputs[0].shape[1:]) != tuple(f.inputs[0].shape[1:]):
        raise ValueError("KD teacher and student must take the same input shape.")
    return AGTrainer(f, teacher_model(f, teacher), kd_weight=beta, ssp=ssp, name=f"{f.name}_kd")
