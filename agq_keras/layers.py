"""Quantized layers (`QConv2D`, `QDepthwiseConv2D`, `QDense`, `QGlobalAveragePooling2D`), the AG adaptor (`AuxAdaptor`) and
the builders' BatchNorm factory (`BNPersonality`).

`QConv2D`/`QDense` follow larq's convention: ``input_quantizer`` is applied to
the layer input and ``kernel_quantizer`` to the kernel before the ordinary
convolution / matmul. Each accepts anything :func:`agq_keras.quantizers.get`
accepts. Biases are off by default (the paper uses none).
"""

from __future__ import annotations

import keras
from keras import ops

from agq_keras import quantizers


class _QuantizedMixin:
    """Shared quantizer handling of QConv2D, QDepthwiseConv2D and QDense: build, config, quantized kernel and inputs."""

    def _init_quantizers(self, kernel_quantizer, input_quantizer, fragment=None):
        self.kernel_quantizer = quantizers.get(kernel_quantizer)
        self.input_quantizer = quantizers.get(input_quantizer)
        if fragment is not None and (not isinstance(fragment, str) or not fragment):
            raise ValueError(f"{type(self).__name__} {self.name!r}: fragment={fragment!r} must be a non-empty string "
                             "(the name of the block the layer belongs to) or None.")
        self.fragment = fragment

    def _kernel_for_quantizer(self):
        """The kernel as the weight quantizer sees it (output channels on the last axis)."""
        return self.kernel

    def _from_quantizer_layout(self, q):
        return q

    def build(self, input_shape):
        super().build(input_shape)
        self._build_quantizers(input_shape)

    def get_config(self):
        return self._quantizer_config(super().get_config())

    def _build_quantizers(self, input_shape):
        # Build here so quantizer variables exist before weights are loaded.
        if self.kernel_quantizer is not None and not self.kernel_quantizer.built:
            self.kernel_quantizer.build(tuple(self._kernel_for_quantizer().shape))
        if self.input_quantizer is not None and not self.input_quantizer.built:
            self.input_quantizer.build(tuple(input_shape))

    # Stochastic structured precision (agq_keras.training.ssp) attaches a gate
    # holder here; it is a plain Python object, so the gates never become
    # weights of the layer and F saves/exports exactly as without SSP.
    ssp_gate = None

    def quantized_kernel(self):
        """The kernel as the layer uses it: ``kernel_quantizer(kernel)``.

        Under SSP: ``q(W)`` where the weight gate is 1, ``W`` where it is 0.
        """
        if self.kernel_quantizer is None:
            return self.kernel
        q = self._from_quantizer_layout(self.kernel_quantizer(self._kernel_for_quantizer()))
        if self.ssp_gate is not None:
            q = ops.where(self.ssp_gate.weights_on(), q, self.kernel)
        return q

    def quantized_inputs(self, inputs):
        if self.input_quantizer is None:
            return inputs
        q = self.input_quantizer(inputs)
        if self.ssp_gate is not None:
            q = ops.where(self.ssp_gate.activations_on(), q, inputs)
        return q

    def _quantizer_config(self, config):
        config["kernel_quantizer"] = keras.saving.serialize_keras_object(self.kernel_quantizer)
        config["input_quantizer"] = keras.saving.serialize_keras_object(self.input_quantizer)
        config["fragment"] = self.fragment
        return config

    @property
    def weight_bits(self) -> int:
        return 32 if self.kernel_quantizer is None else self.kernel_quantizer.bits

    @property
    def input_bits(self) -> int:
        return 32 if self.input_quantizer is None else self.input_quantizer.bits


@keras.saving.register_keras_serializable(package="agq_keras")
class QConv2D(_QuantizedMixin, keras.layers.Conv2D):
    """`keras.layers.Conv2D` computing ``conv(q_a(x), q_w(W))``.

    Args:
      filters, kernel_size, strides, padding, ...: as `keras.layers.Conv2D`.
      kernel_quantizer: weight quantizer (name, config, instance or None).
      input_quantizer: activation quantizer applied to the input, or None.
      use_bias: default False.
      fragment: the name of the block the layer belongs to (None: none). It is kept in the layer's
        config, so F's block structure (SSP's block fragments, AG's block taps) survives a `.keras`
        round trip (:mod:`agq_keras.structure`).
    """

    def __init__(self, filters, kernel_size, *, kernel_quantizer=None, input_quantizer=None,
                 use_bias=False, fragment=None, **kwargs):
        super().__init__(filters, kernel_size, use_bias=use_bias, **kwargs)
        self._init_quantizers(kernel_quantizer, input_quantizer, fragment)

    def call(self, inputs):
        outputs = self.convolution_op(self.quantized_inputs(inputs), self.quantized_kernel())
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package="agq_keras")
class QDense(_QuantizedMixin, keras.layers.Dense):
    """`keras.layers.Dense` computing ``q_a(x) @ q_w(W)``; arguments as Dense, quantizers and
    ``fragment`` as :class:`QConv2D`."""

    def __init__(self, units, *, kernel_quantizer=None, input_quantizer=None, use_bias=False, fragment=None,
                 **kwargs):
        super().__init__(units, use_bias=use_bias, **kwargs)
        self._init_quantizers(kernel_quantizer, input_quantizer, fragment)

    def call(self, inputs, training=None):
        outputs = ops.matmul(self.quantized_inputs(inputs), self.quantized_kernel())
        if self.bias is not None:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package="agq_keras")
class QDepthwiseConv2D(_QuantizedMixin, keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` computing ``depthwise_conv(q_a(x), q_w(W))``.

    The kernel ``(kh, kw, C, M)`` reaches the weight quantizer as ``(kh, kw, 1, C*M)``: output
    channels on the last axis, as for a conv, so per-channel quantizers (``FixedPoint(per_channel=True)``,
    LSQ, LQ-Net) quantize each of the ``C*M`` filters on its own and every family's export grid applies
    unchanged (output channel ``c*M + m`` is TFLite's DEPTHWISE_CONV_2D channel order). Other arguments,
    quantizers and ``fragment`` as :class:`QConv2D`; biases are off by default.
    """

    def __init__(self, kernel_size, *, kernel_quantizer=None, input_quantizer=None, use_bias=False, fragment=None,
                 **kwargs):
        super().__init__(kernel_size, use_bias=use_bias, **kwargs)
        self._init_quantizers(kernel_quantizer, input_quantizer, fragment)

    def _kernel_for_quantizer(self):
        kh, kw, c, m = self.kernel.shape
        return ops.reshape(self.kernel, (kh, kw, 1, c * m))

    def _from_quantizer_layout(self, q):
        return ops.reshape(q, tuple(self.kernel.shape))

    def call(self, inputs):
        outputs = ops.depthwise_conv(self.quantized_inputs(inputs), self.quantized_kernel(), strides=self.strides,
                                     padding=self.padding, dilation_rate=self.dilation_rate,
                                     data_format=self.data_format)
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package="agq_keras")
class QGlobalAveragePooling2D(keras.layers.Layer):
    """Global average pooling on integer grids, as an int8 runtime computes it (``first_last_bits=8``).

    ``input_quantizer`` (an unsigned :class:`~agq_keras.quantizers.RangeActivation`, step ``s``) rounds
    the ``(H, W, C)`` map; the mean over its ``P = H·W`` positions is rounded to the step
    ``s_p = s·N/(2P)``, ``N = 2P - 1``, with the quantizer's levels (:func:`~agq_keras.quantizers.range_activation`,
    straight-through gradient). For the sum ``S`` of a channel's map codes the pooled code is
    ``round(2S/N)``, and ``2S/N`` is never a tie (4S is even, N(2k + 1) odd): it sits at least ``1/(2N)``
    steps from one, so F's float32 mean and an int8 runtime's integer arithmetic give the same code. The
    exporter writes it as a DEPTHWISE_CONV_2D of ones (docs/export.md, "The int8 head").
    """

    def __init__(self, input_quantizer=None, **kwargs):
        super().__init__(**kwargs)
        quantizer = quantizers.get(input_quantizer) if input_quantizer is not None else quantizers.RangeActivation(8)
        if not isinstance(quantizer, quantizers.RangeActivation) or quantizer.signed:
            raise ValueError(f"QGlobalAveragePooling2D: input_quantizer={input_quantizer!r} is not supported; "
                             "allowed: an unsigned RangeActivation (the default, RangeActivation(8)).")
        self.input_quantizer = quantizer
        self.positions = None

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[1] is None or input_shape[2] is None:
            raise ValueError(f"QGlobalAveragePooling2D needs a (batch, height, width, channels) input with a fixed "
                             f"height and width, got {tuple(input_shape)}.")
        self.positions = int(input_shape[1]) * int(input_shape[2])
        if not self.input_quantizer.built:
            self.input_quantizer.build(input_shape)
        super().build(input_shape)

    def pooled_step_ratio(self) -> float:
        """``s_p / s = N / (2P)``."""
        return (2 * self.positions - 1) / (2 * self.positions)

    def call(self, inputs, training=None):
        q = self.input_quantizer(inputs, training=training)
        mean = ops.mean(q, axis=[1, 2])
        levels = self.input_quantizer.levels
        top = self.input_quantizer.step() * (self.pooled_step_ratio() * levels)
        return quantizers.range_activation(mean, top, self.input_quantizer.bits)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def output_grid(self) -> quantizers.Grid:
        """The pooled tensor's ``"activation"`` grid: step ``s_p``, the quantizer's levels."""
        grid = self.input_quantizer.export_grid()
        return quantizers.Grid("activation", step=grid.step * self.pooled_step_ratio(), levels=grid.levels)

    def get_config(self):
        config = super().get_config()
        config["input_quantizer"] = keras.saving.serialize_keras_object(self.input_quantizer)
        return config


@keras.saving.register_keras_serializable(package="agq_keras")
class AuxAdaptor(keras.layers.Layer):
    """The AG adaptor phi: full-precision 1x1 conv (no bias) + BatchNorm.

    With ``strides > 1`` it is the projection that brings the aggregated
    feature g to a new stage's shape (like a ResNet projection shortcut).
    """

    def __init__(self, filters: int, strides: int = 1, bn_momentum: float = 0.9,
                 bn_epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"AuxAdaptor: filters must be a positive integer, got {filters!r}.")
        if not isinstance(strides, int) or strides < 1:
            raise ValueError(f"AuxAdaptor: strides must be a positive integer, got {strides!r}.")
        self.filters = filters
        self.strides = strides
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.conv = keras.layers.Conv2D(filters, 1, strides=strides, padding="same", use_bias=False,
                                        kernel_initializer="he_normal", name="conv")
        self.bn = keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name="bn")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        return self.bn(self.conv(inputs), training=training)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, strides=self.strides, bn_momentum=self.bn_momentum,
                      bn_epsilon=self.bn_epsilon)
        return config


class BNPersonality:
    """Returns the BatchNormalization layer for a role, creating it on first use (the F builders' wiring);
    stateless layers (ReLU, pooling, add) are named with the same ``prefix``. H owns a copy of each of F's
    BatchNorms, named ``h_<name>`` by :func:`agq_keras.auxiliary.attach`."""

    def __init__(self, prefix: str = "", momentum: float = 0.9, epsilon: float = 1e-5):
        self.prefix = prefix
        self.momentum = momentum
        self.epsilon = epsilon
        self.layers: dict[str, keras.layers.BatchNormalization] = {}

    def __call__(self, role: str) -> keras.layers.BatchNormalization:
        if role not in self.layers:
            self.layers[role] = keras.layers.BatchNormalization(
                momentum=self.momentum, epsilon=self.epsilon, name=self.prefix + role)
        return self.layers[role]

    def name(self, role: str) -> str:
        return self.prefix + role

    def bn_relu(self, x, role: str):
        return keras.layers.ReLU(name=self.name(role + "_relu"))(self(role)(x))
