"""LQ-Net: learned non-uniform quantizers with a QEM-updated basis.

Reference: D. Zhang, J. Yang, D. Ye, G. Hua, "LQ-Nets: Learned Quantization
for Highly Accurate and Compact Deep Neural Networks", ECCV 2018 (eqs. 2-7,
Algorithm 1).

A K-bit LQ quantizer has a basis ``v in R^K`` and codes ``b in C^K`` with
``C = {-1, +1}`` (weights) or ``C = {0, 1}`` (activations). Its 2^K levels are
``b . v`` over all codes; ``x`` is mapped to the nearest level (thresholds at
the midpoints between sorted levels). The basis is not trained by
back-propagation: in every training forward pass it is refit by quantization
error minimisation (QEM), the least-squares problem

    v* = argmin_v ||B v - x||^2 = (B^T B + r I)^{-1} B^T x

with ``B`` the (N, K) codes of the N quantized values (``r`` a small ridge,
proportional to N), and folded in with a moving average
``v <- m v + (1 - m) v*`` (m = 0.9). The update is an in-graph assignment in
the layer's ``call``: it happens when ``training`` is true and
:func:`agq_keras.quantizers.state_updates_enabled` (false during the AG
trainer's H pass), so a layer shared by F and H updates once per step.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import tensorflow as tf

from agq_keras.quantizers.base import Quantizer, register, register_family, state_updates_enabled

RIDGE = 1e-4  # ridge r = RIDGE * N (N = values per basis)


def code_matrix(bits: int, signed: bool) -> np.ndarray:
    """All 2^K codes as rows of a (2^K, K) float32 matrix, entries {-1,1} or {0,1}."""
    values = (-1.0, 1.0) if signed else (0.0, 1.0)
    return np.array(list(itertools.product(values, repeat=bits)), dtype="float32")


def lq_levels(basis, codes):
    """Levels ``(C, 2^K) = basis (C, K) @ codes^T``."""
    return tf.matmul(basis, codes, transpose_b=True)


def sorted_levels(basis, codes):
    """Levels sorted ascending per row and their codes: ``(C, L)`` and ``(C, L, K)``."""
    levels = lq_levels(basis, codes)
    order = tf.argsort(levels, axis=-1, stable=True)
    return tf.gather(levels, order, batch_dims=1), tf.gather(codes, order)


def level_index(x, levels):
    """Index (int32, shape of ``x``) of the nearest of the sorted ``levels``.

    ``levels`` is (C, L), sorted per row: per channel (last axis of ``x``) or
    (1, L) per tensor. Index = number of midpoints between consecutive levels
    that ``x`` exceeds (the LQ-Net thresholds); O(size of x) memory per level.
    """
    index = tf.zeros_like(x, dtype=tf.int32)
    for j in range(int(levels.shape[-1]) - 1):
        index += tf.cast(x > 0.5 * (levels[:, j] + levels[:, j + 1]), tf.int32)
    return index


def nearest(x, levels):
    """The nearest of the sorted ``levels`` (C, L) to every value of ``x``."""
    q = tf.zeros_like(x) + levels[:, 0]
    for j in range(int(levels.shape[-1]) - 1):
        step = levels[:, j + 1] - levels[:, j]
        q += tf.cast(x > levels[:, j] + 0.5 * step, x.dtype) * step
    return q


def lq_quantize(x, levels, clip_gradient: bool):
    r"""Map ``x`` to its nearest level, straight-through gradient.

    Forward:  q = argmin_{l in levels} |x - l|       (levels (C, L) sorted per row:
              per output channel = last axis of x, or (1, L) per tensor)
    Gradient: dq/dx = 1                                (clip_gradient=False: weights)
              dq/dx = 1 if 0 <= x <= max(levels) else 0  (clip_gradient=True: activations)
    ``levels`` gets no gradient (it is fit by QEM, not by back-propagation).
    """
    x = tf.convert_to_tensor(x)
    levels = tf.stop_gradient(tf.convert_to_tensor(levels, x.dtype))

    @tf.custom_gradient
    def _quantize(x):
        def grad(dy):
            if not clip_gradient:
                return dy
            inside = tf.logical_and(x >= 0.0, x <= levels[:, -1])
            return dy * tf.cast(inside, dy.dtype)

        return nearest(x, levels), grad

    return _quantize(x)


def qem_solution(x, basis, codes):
    """One QEM least-squares fit: the basis minimising ||B v - x||^2 for the
    current codes B of ``x`` (..., C) under ``basis`` (C, K), plus a ridge
    ``RIDGE * N``. ``B^T B`` and ``B^T x`` are accumulated per level (counts
    and sums of the values at each level), never materialising B.

    Where a basis element's code column is all zero (an activation bit never
    set) the old element is kept.
    """
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    channels = int(basis.shape[0])
    levels, level_codes = sorted_levels(basis, codes)  # (C, L), (C, L, K)
    num_levels = int(levels.shape[-1])
    index = level_index(x, levels)
    segment = index * channels + tf.broadcast_to(tf.range(channels, dtype=tf.int32), tf.shape(index))
    counts = tf.math.unsorted_segment_sum(tf.ones_like(x), segment, num_levels * channels)
    sums = tf.math.unsorted_segment_sum(x, segment, num_levels * channels)
    counts = tf.transpose(tf.reshape(counts, (num_levels, channels)))  # (C, L)
    sums = tf.transpose(tf.reshape(sums, (num_levels, channels)))
    btb = tf.einsum("cl,clk,clj->ckj", counts, level_codes, level_codes)
    btx = tf.einsum("cl,clk->ck", sums, level_codes)
    n = tf.reduce_sum(counts, axis=-1)[:, None, None]  # values per basis
    k = int(codes.shape[1])
    solved = tf.linalg.solve(btb + RIDGE * n * tf.eye(k, dtype=x.dtype), btx[..., None])[..., 0]
    used = tf.linalg.diag_part(btb) > 0
    return tf.where(used, solved, basis)


def qem_step(x, basis, codes, momentum: float):
    """``momentum * basis + (1 - momentum) * qem_solution(x, basis, codes)``."""
    basis = tf.convert_to_tensor(basis)
    return momentum * basis + (1.0 - momentum) * qem_solution(x, basis, tf.convert_to_tensor(codes))


def quantization_error(x, basis, codes):
    """Mean squared error of quantizing ``x`` with ``basis``."""
    levels, _ = sorted_levels(tf.convert_to_tensor(basis), tf.convert_to_tensor(codes))
    return tf.reduce_mean(tf.square(nearest(x, levels) - x))


class _LQNet(Quantizer):
    """Shared machinery of the LQ-Net weight and activation quantizers."""

    allowed_bits = (1, 2, 3, 4)
    signed = True
    per_channel = True

    def __init__(self, bits: int = 2, momentum: float = 0.9, **kwargs):
        super().__init__(bits=bits, **kwargs)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"{type(self).__name__}: momentum={momentum!r} must be a number in [0, 1).")
        self.momentum = float(momentum)
        self.codes = code_matrix(self.bits, self.signed)
        self.qem_updates_traced = 0  # python-side: QEM updates built into graphs/eager calls

    def build(self, input_shape):
        channels = int(input_shape[-1]) if self.per_channel else 1
        init = np.tile(self.initial_basis(input_shape)[None, :], (channels, 1)).astype("float32")
        self.basis = self.add_weight(name="basis", shape=(channels, self.bits),
                                     initializer=lambda shape, dtype=None: tf.constant(init, dtype or "float32"),
                                     trainable=False)
        super().build(input_shape)

    def initial_basis(self, input_shape) -> np.ndarray:
        raise NotImplementedError

    def call(self, x, training=None):
        basis = tf.convert_to_tensor(self.basis)
        codes = tf.constant(self.codes)
        q = lq_quantize(x, sorted_levels(basis, codes)[0], clip_gradient=not self.signed)
        if training and state_updates_enabled():
            self.qem_updates_traced += 1
            self.basis.assign(qem_step(x, basis, codes, self.momentum))
        return q

    def get_config(self):
        config = super().get_config()
        config["momentum"] = self.momentum
        return config


@register("lqnet_weight")
class LQNetWeight(_LQNet):
    """LQ-Net weights: per-output-channel basis v_c in R^K, codes in {-1, +1}^K.

    Forward ``q = argmin_{b in {-1,1}^K} |w - b.v_c|``; gradient ``1``
    (straight-through). See :func:`lq_quantize` and :func:`qem_step`.

    Output grid: non-uniform, per output channel (last kernel axis): the 2^K
    levels ``b . v_c`` (symmetric about 0). Basis initialised to
    ``v_k = 2^k * 2 sigma / 2^K`` with ``sigma = sqrt(2 / fan_in)`` (He
    normal), i.e. a uniform grid of odd multiples of ``2 sigma / 2^K``; QEM
    then adapts it to the actual weights. K = 1..4 bits.
    """

    signed = True
    per_channel = True

    def initial_basis(self, input_shape):
        fan_in = max(1, int(np.prod(input_shape[:-1])))
        step = 2.0 * math.sqrt(2.0 / fan_in) / 2**self.bits
        return step * 2.0 ** np.arange(self.bits)


@register("lqnet_activation")
class LQNetActivation(_LQNet):
    """LQ-Net activations: one basis v in R^K per tensor, codes in {0, 1}^K.

    Forward ``q = argmin_{b in {0,1}^K} |x - b.v|`` (so q >= 0, level 0
    included); gradient ``1`` where ``0 <= x <= max level``, else 0
    (clipped straight-through). See :func:`lq_quantize` and :func:`qem_step`.

    Output grid: non-uniform, per tensor: the 2^K levels ``b . v``. Basis
    initialised to ``v_k = 2^k * 2 / (2^K - 1)`` (a uniform grid on [0, 2],
    the range of BN + ReLU outputs); QEM adapts it. K = 1..4 bits.
    """

    signed = False
    per_channel = False

    def initial_basis(self, input_shape):
        return 2.0 ** np.arange(self.bits) * 2.0 / (2**self.bits - 1)


register_family("lqnet", LQNetWeight, LQNetActivation)
