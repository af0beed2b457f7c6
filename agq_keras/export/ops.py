"""The op kinds of the lowered graph: ONE registry (:data:`KINDS`), keyed by op kind, that says for each kind
how it calibrates (its float evaluation), which TFLite builtin it is written as, with which options and
constant operand, and the properties the lowering and the plan read (weighted, keeps its input's scale, ...).

Which Keras layer lowers to which kind is :data:`agq_keras.lowerable.LAYERS` (the one Keras-layer list, read
by :func:`agq_keras.quantize` without importing the exporter): its values are these kinds, or a role that
writes no op of its own (:data:`ROLES`). :mod:`agq_keras.export.lower` dispatches on it; a new op kind is
one entry here (and its Keras layers there), not a branch in lower, calibrate and plan.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from agq_keras.lowerable import LAYERS

# lowerable.LAYERS values that are no op kind: the layer writes no op of its own
ROLES = {
    "input": "the model input",
    "identity": "the identity at inference (Dropout)",
    "relu": "a ReLU / ReLU6 fused into its producer (or a linear Activation: the identity)",
    "batchnorm": "folded into the conv or dense before it, else an affine op",
    "stream": "F's residual-stream quantizer: its producer writes the stream's integers",
    "softmax": "a closing softmax: not in the file (lowerable.softmax_head)",
    "exact_mean": "a global average pool F rounds on both sides: a mean op with an output grid",
    "global_maxpool": "one maxpool window over the whole map, then a reshape",
}


# -- float evaluation (calibration): (op, inputs, weights (out-channels first, or None), output shape) -> y ---------
def _conv(op, xs, w, shape):
    y = tf.nn.conv2d(xs[0], tf.constant(np.transpose(w, (1, 2, 3, 0)), tf.float32), op.strides, op.padding)  # HWIO
    return y + tf.constant(op.bias, tf.float32)


def _dwconv(op, xs, w, shape):  # (C*M, kh, kw, 1) -> (kh, kw, C, M)
    kernel = np.transpose(w[..., 0], (1, 2, 0)).reshape(w.shape[1], w.shape[2], -1, op.depth_multiplier)
    y = tf.nn.depthwise_conv2d(xs[0], tf.constant(kernel, tf.float32), (1,) + tuple(op.strides) + (1,), op.padding)
    return y + tf.constant(op.bias, tf.float32)


def _affine(op, xs, w, shape):
    return xs[0] * tf.constant(w, tf.float32) + tf.constant(op.bias, tf.float32)


def _dense(op, xs, w, shape):
    return tf.matmul(xs[0], tf.constant(w.T, tf.float32)) + tf.constant(op.bias, tf.float32)


# -- TFLite options: (op, output shape, fused activation name) -> (options table, {field: value}) -------------------
def _conv_options(op, shape, act):
    return "Conv2DOptions", dict(padding=op.padding, strideH=op.strides[0], strideW=op.strides[1],
                                 dilationHFactor=1, dilationWFactor=1, fusedActivationFunction=act)


def _dwconv_options(op, shape, act):
    return "DepthwiseConv2DOptions", dict(padding=op.padding, strideH=op.strides[0], strideW=op.strides[1],
                                          depthMultiplier=op.depth_multiplier, dilationHFactor=1, dilationWFactor=1,
                                          fusedActivationFunction=act)


def _pointwise_options(op, shape, act):  # a 1x1 (or whole-map) VALID depthwise conv, one filter per channel
    return "DepthwiseConv2DOptions", dict(padding="VALID", strideH=1, strideW=1, depthMultiplier=1, dilationHFactor=1,
                                          dilationWFactor=1, fusedActivationFunction=act)


def _reshape_shape(shape):
    return (-1,) + tuple(int(d) for d in shape)  # -1: any batch (the runtime may resize it)


@dataclasses.dataclass(frozen=True)
class OpKind:
    """One op kind of the lowered graph (see the module docstring)."""
    builtin: str  # the TFLite builtin it is written as
    evaluate: Callable  # its float evaluation (calibration)
    options: Callable = lambda op, shape, act: None  # noqa: E731  (its TFLite options)
    operand: Optional[Callable] = None  # (op, output shape) -> (name suffix, int32 array): a constant second input
    weighted: bool = False  # holds codes and steps: its inputs are (x, weights, bias)
    kernel: bool = False  # weighted from a Keras kernel (conv, depthwise, dense): a BatchNorm after it folds
    depthwise: bool = False  # its filter is DEPTHWISE_CONV_2D's (1, kh, kw, C*M), quantized on axis 3
    pass_through: bool = False  # the same values moved (PAD, RESIZE, RESHAPE): its input's scale, zero point, grid
    keeps_scale: bool = False  # writes its input's scale and zero point (pass-through ops and MAX_POOL_2D)
    fuses_relu: bool = True  # a ReLU after it fuses into it
    reads_as_stored: bool = False  # reads its input in the stored type (the plan adds no int8/int16 copy)
    binary: bool = False  # two activation inputs (ADD)


KINDS = {
    "conv": OpKind("CONV_2D", _conv, _conv_options, weighted=True, kernel=True),
    "dwconv": OpKind("DEPTHWISE_CONV_2D", _dwconv, _dwconv_options, weighted=True, kernel=True, depthwise=True),
    "dense": OpKind("FULLY_CONNECTED", _dense, lambda op, shape, act: ("FullyConnectedOptions", dict(
        fusedActivationFunction=act, weightsFormat="DEFAULT", keepNumDims=False)), weighted=True, kernel=True,
        reads_as_stored=True),
    "affine": OpKind("DEPTHWISE_CONV_2D", _affine, _pointwise_options, weighted=True, depthwise=True,
                     reads_as_stored=True),
    "add": OpKind("ADD", lambda op, xs, w, shape: xs[0] + xs[1], lambda op, shape, act: ("AddOptions", dict(
        fusedActivationFunction=act, potScaleInt16=False)), binary=True),  # int16: the general (any scale) kernel
    "mean": OpKind("MEAN", lambda op, xs, w, shape: tf.reduce_mean(xs[0], axis=[1, 2]),
                   lambda op, shape, act: ("ReducerOptions", dict(keepDims=False)),
                   operand=lambda op, shape: ("axes", np.asarray([1, 2], np.int32)), fuses_relu=False),
    "maxpool": OpKind("MAX_POOL_2D", lambda op, xs, w, shape: tf.nn.max_pool2d(xs[0], op.pool, op.strides, op.padding),
                      lambda op, shape, act: ("Pool2DOptions", dict(
                          padding=op.padding, strideH=op.strides[0], strideW=op.strides[1], filterHeight=op.pool[0],
                          filterWidth=op.pool[1], fusedActivationFunction=act)), keeps_scale=True, fuses_relu=False),
    "pad": OpKind("PAD", lambda op, xs, w, shape: tf.pad(xs[0], [(0, 0), *op.paddings, (0, 0)]),
                  lambda op, shape, act: ("PadOptions", {}),
                  operand=lambda op, shape: ("paddings", np.asarray([(0, 0), *op.paddings, (0, 0)], np.int32)),
                  pass_through=True, keeps_scale=True, fuses_relu=False, reads_as_stored=True),
    # nearest, integer factors: output pixel i reads input floor(i / factor), each value repeated
    "resize": OpKind("RESIZE_NEAREST_NEIGHBOR",
                     lambda op, xs, w, shape: tf.repeat(tf.repeat(xs[0], op.factor[0], axis=1), op.factor[1], axis=2),
                     lambda op, shape, act: ("ResizeNearestNeighborOptions", dict(alignCorners=False,
                                                                                  halfPixelCenters=False)),
                     operand=lambda op, shape: ("size", np.asarray(shape[:2], np.int32)),
                     pass_through=True, keeps_scale=True, fuses_relu=False, reads_as_stored=True),
    # Flatten, Reshape: the same values in another shape
    "reshape": OpKind("RESHAPE", lambda op, xs, w, shape: tf.reshape(xs[0], (-1,) + tuple(shape)),
                      lambda op, shape, act: ("ReshapeOptions", dict(newShape=_reshape_shape(shape))),
                      operand=lambda op, shape: ("shape", np.asarray(_reshape_shape(shape), np.int32)),
                      pass_through=True, keeps_scale=True, fuses_relu=False, reads_as_stored=True),
}
# the exact global average pool (QGlobalAveragePooling2D, both sides on grids): written as a whole-map
# DEPTHWISE_CONV_2D of ones (plan.exact_pools), not as an op kind of the graph
POOL_AS_DWCONV = OpKind("DEPTHWISE_CONV_2D", _affine, _pointwise_options, weighted=True, depthwise=True)

_unknown = sorted(set(LAYERS.values()) - set(KINDS) - set(ROLES))
if _unknown:  # a Keras layer lowerable.LAYERS maps to a kind this registry lacks
    raise ImportError(f"agq_keras.lowerable.LAYERS names op kinds with no entry in export.ops.KINDS: {_unknown}")
