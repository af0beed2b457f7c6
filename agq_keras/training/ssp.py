"""Stochastic structured precision (SSP, paper §3.2, Algorithm 2).

F is partitioned into N fragments: every block (``fragments="block"``, its
main-path convs and its projection shortcut) or every low-bit conv, depthwise conv or dense layer
(``"layer"``). The 16-bit stem conv and classifier are never fragments: they
stay quantized at all times. At every training step a binary indicator is
drawn per fragment, ``b(i) = 1`` with probability ``1 - delta``; a fragment
with ``b(i) = 1`` is quantized, the others run in full precision (their
quantizers are bypassed: the layer uses ``W`` and ``x`` instead of ``q(W)``
and ``q(x)``).

With ``wa=True`` the indicator is a matrix ``B in {0,1}^{N x 2}``: column 0
decides the fragment's weights and column 1 its activations, each entry
independently 1 with probability ``1 - delta``. A fragment is then in
``G_qwa`` with probability ``(1-delta)^2``, in ``G_qw`` / ``G_qa`` with
``(1-delta) delta`` each and in ``G_r`` with ``delta^2``.

``delta`` starts at ``delta0`` (paper: 0.5) and decays linearly to 0 at epoch
``decay_epoch`` (paper: 20 of 35): ``delta(e) = delta0 * max(0, 1 - e / decay_epoch)``
for the 0-based epoch ``e``, set by :class:`DeltaSchedule`. At ``delta = 0`` F
is fully quantized. Outside training steps the gates are 1 (F fully
quantized), so evaluation, export and ``F.predict`` never see a draw.

Implementation: the gates are non-trainable ``tf.Variable`` s owned by the
:class:`SSP` controller, assigned inside the (traced once) train step from a
stateless draw seeded by ``(seed, optimizer.iterations)`` -- every replica
of a distribution strategy draws the same indicator, and a resumed run
draws what the uninterrupted one would have. The layers only hold a plain
Python handle on them (``layer.ssp_gate``), so the gates are never saved
with F.

With AG, H calls F's very layer objects, so in a given step H sees exactly
the same draw as F (the same fragments are full precision in both).
"""

from __future__ import annotations

import numbers

import keras
import tensorflow as tf

from agq_keras import structure

FRAGMENTS = ("block", "layer")


def check_delta(delta0) -> float:
    if (isinstance(delta0, bool) or not isinstance(delta0, numbers.Real) or not 0.0 <= float(delta0) <= 1.0):
        raise ValueError(f"ssp delta0={delta0!r} is not allowed; it must be a number in [0, 1] (paper: 0.5).")
    return float(delta0)


def check_decay_epoch(decay_epoch) -> int:
    if isinstance(decay_epoch, bool) or not isinstance(decay_epoch, numbers.Integral) or decay_epoch < 1:
        raise ValueError(f"ssp decay_epoch={decay_epoch!r} must be a positive integer (paper: 20).")
    return int(decay_epoch)


def delta_at(epoch: int, delta0: float, decay_epoch: int) -> float:
    """``delta0 * max(0, 1 - epoch / decay_epoch)`` for the 0-based ``epoch``."""
    return float(delta0) * max(0.0, 1.0 - epoch / decay_epoch)


class _Gate:
    """What a quantized layer holds: its fragment index into the controller's gates."""

    def __init__(self, controller: "SSP", index: int):
        self.controller = controller
        self.index = index

    def weights_on(self):
        return self.controller.weight_gates[self.index] > 0.5

    def activations_on(self):
        return self.controller.activation_gates[self.index] > 0.5


class SSP:
    """SSP controller: fragments of F, the gate variables, the per-step draw.

    Args:
      fragments: ``"block"`` or ``"layer"``.
      wa: draw weights and activations of a fragment separately (``W/A``).
      delta0: initial stochastic ratio, in [0, 1].
      decay_epoch: the epoch at which delta reaches 0.
      seed: seed of the stateless per-step draw.
    """

    def __init__(self, fragments: str = "block", wa: bool = False, delta0: float = 0.5,
                 decay_epoch: int = 20, seed: int = 0):
        if fragments not in FRAGMENTS:
            raise ValueError(f"ssp fragments={fragments!r} is not supported; allowed: {', '.join(FRAGMENTS)}.")
        self.fragments = fragments
        self.wa = bool(wa)
        self.delta0 = check_delta(delta0)
        self.decay_epoch = check_decay_epoch(decay_epoch)
        self.seed = int(seed)
        self.groups: list[list] = []
        self.delta = None
        self.weight_gates = None
        self.activation_gates = None

    # -- fragments -------------------------------------------------------------
    @staticmethod
    def low_bit_layers(f: keras.Model) -> list:
        return [l for l in structure.quantized_layers(f) if structure.low_bit(l)]

    def partition(self, f: keras.Model) -> list[list]:
        """The fragments of F as lists of layers, in F's layer order.

        ``"block"`` groups the layers of one block: by their ``fragment`` (the block name the built-in
        builders give every quantized layer; it survives a `.keras` round trip), else by layer name
        (the name less its last ``_part``: ``block_1_expand`` and ``block_1_project`` form ``block_1``).
        """
        layers = self.low_bit_layers(f)
        if self.fragments == "layer":
            return [[l] for l in layers]
        groups: dict[str, list] = {}
        for l in layers:
            groups.setdefault(l.fragment or l.name.rsplit("_", 1)[0], []).append(l)
        return list(groups.values())

    def attach(self, f: keras.Model) -> "SSP":
        """Create the gate variables and hand each fragment's layers their gate."""
        self.groups = self.partition(f)
        if not self.groups:
            raise ValueError("SSP: F has no low-bit quantized layers to form fragments from.")
        n = len(self.groups)
        agg = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.delta = tf.Variable(self.delta0, trainable=False, dtype=tf.float32, name="ssp_delta",
                                 aggregation=agg)
        self.weight_gates = tf.Variable(tf.ones([n]), trainable=False, name="ssp_weight_gates", aggregation=agg)
        self.activation_gates = tf.Variable(tf.ones([n]), trainable=False, name="ssp_activation_gates",
                                            aggregation=agg)
        for i, group in enumerate(self.groups):
            for layer in group:
                layer.ssp_gate = _Gate(self, i)
        return self

    def detach(self) -> None:
        for group in self.groups:
            for layer in group:
                layer.ssp_gate = None

    @property
    def num_fragments(self) -> int:
        return len(self.groups)

    # -- per step -------------------------------------------------------------
    def indicator(self, step):
        """B for ``step`` (N x 2 float 0/1, column 0 weights, column 1 activations)."""
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        u = tf.random.stateless_uniform([self.num_fragments, 2], seed=seed)
        if not self.wa:
            u = tf.tile(u[:, :1], [1, 2])
        return tf.cast(u >= tf.convert_to_tensor(self.delta), tf.float32)

    def draw(self, step):
        """Assign the gates for this step (inside the traced train step)."""
        b = self.indicator(step)
        self.weight_gates.assign(b[:, 0])
        self.activation_gates.assign(b[:, 1])
        return b[:, 0], b[:, 1]

    def reset(self):
        """All gates to 1: F fully quantized (after every train step)."""
        ones = tf.ones([self.num_fragments])
        return [self.weight_gates.assign(ones), self.activation_gates.assign(ones)]

    def set_epoch(self, epoch: int) -> float:
        value = delta_at(epoch, self.delta0, self.decay_epoch)
        self.delta.assign(value)
        return value

    def get_config(self) -> dict:
        return {"fragments": self.fragments, "wa": self.wa, "delta0": self.delta0,
                "decay_epoch": self.decay_epoch, "seed": self.seed}


class DeltaSchedule(keras.callbacks.Callback):
    """Sets ``ssp.delta`` at the start of every epoch (linear decay to 0)."""

    def __init__(self, ssp: SSP):
        super().__init__()
        self.ssp = ssp

    def on_epoch_begin(self, epoch, logs=None):
        self.ssp.set_epoch(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["ssp_delta"] = float(self.ssp.delta.numpy())
