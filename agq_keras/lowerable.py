"""What the integer exporter lowers, by Keras layer: the one list that :func:`agq_keras.quantize` checks up
front (so a model it accepts exports) and :func:`agq_keras.export.lower.lower` dispatches on.

* Weighted: ``Conv2D`` / ``DepthwiseConv2D`` (channels_last, no dilation, no groups), ``Dense`` (on a
  vector), and their quantized twins.
* Activations, as a layer or fused into a conv, dense or BatchNorm's producer: ``linear``, ``relu``,
  ``relu6`` (:data:`FUSABLE`); ``ReLU()`` and ``ReLU(max_value=6)``. A **softmax** only as the model's last
  op (an ``Activation("softmax")`` or ``Softmax`` layer whose output is a model output): the exported file
  stops at the logits it reads, which have the same argmax, and the export says so in its notes
  (:func:`softmax_head`). :func:`agq_keras.quantize` splits a ``Dense(activation="softmax")`` head into the
  Dense and such a layer.
* ``BatchNormalization`` (channel axis), ``Add`` (two inputs), ``ZeroPadding2D``, ``UpSampling2D``
  (nearest, integer factors), ``Dropout``, ``MaxPooling2D``, ``GlobalMaxPooling2D``,
  ``GlobalAveragePooling2D`` (keepdims=False), ``Flatten``, ``Reshape``.

Not lowered, so :func:`agq_keras.quantize` refuses them before anything is trained: ``Concatenate``,
``AveragePooling2D``, ``sigmoid``, ``hard_swish`` and every other activation (no int8 kernel computes what
F computes on a k-bit grid without a requantization F does not model).
"""

from __future__ import annotations

import keras

from agq_keras.quantizers import Quantizer

# the activations a conv, dense or BatchNorm can fuse: name -> the ReLU's cap (None: plain ReLU)
FUSABLE = {"relu": None, "relu6": 6.0}
# The one list of the Keras layers the exporter lowers: class name -> the op kind it lowers to (an entry of
# agq_keras.export.ops.KINDS) or the role of a layer that writes no op of its own (export.ops.ROLES).
# agq_keras.export.lower dispatches on it; this module imports nothing of the exporter, so quantize() reads it.
LAYERS = {
    "InputLayer": "input",
    "QConv2D": "conv", "Conv2D": "conv", "QDepthwiseConv2D": "dwconv", "DepthwiseConv2D": "dwconv",
    "QDense": "dense", "Dense": "dense",
    "BatchNormalization": "batchnorm", "ReLU": "relu", "Activation": "relu", "Softmax": "softmax", "Add": "add",
    "GlobalAveragePooling2D": "mean", "QGlobalAveragePooling2D": "exact_mean", "MaxPooling2D": "maxpool",
    "GlobalMaxPooling2D": "global_maxpool", "ZeroPadding2D": "pad", "UpSampling2D": "resize", "Dropout": "identity",
    "Flatten": "reshape", "Reshape": "reshape", "FixedStep": "stream"}
_WEIGHTED = tuple(cls for cls, kind in LAYERS.items() if kind in ("conv", "dwconv", "dense"))


def _activation(config: dict) -> str:
    """The activation's name in a layer's config (``linear`` when it has none)."""
    act = config.get("activation", "linear")
    return act if isinstance(act, str) else getattr(act, "__name__", str(act))


def is_softmax(layer) -> bool:
    """A softmax layer: ``Softmax`` or ``Activation("softmax")``."""
    cls = type(layer).__name__
    return cls == "Softmax" or (cls == "Activation" and _activation(layer.get_config()) == "softmax")


_ALLOWED = f"allowed: linear, {', '.join(FUSABLE)}; softmax only as the model's last layer"


def _weighted_problem(layer, cfg: dict, at_output: bool) -> str:
    act, cls = _activation(cfg), type(layer).__name__
    if act == "softmax" and at_output and LAYERS[cls] == "dense":
        return ("a Dense with a fused softmax: give the softmax its own layer, Dense(activation=None) then "
                "Activation('softmax') (agq_keras.quantize() does this)")
    if act != "linear" and act not in FUSABLE:
        return f"activation {act!r} ({_ALLOWED})"
    if LAYERS[cls] != "dense" and (tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1) or cfg.get("groups", 1) != 1):
        return "dilated or grouped convolutions are not supported"
    return ""


def _activation_problem(layer, cfg: dict, at_output: bool) -> str:
    act = _activation(cfg)
    if act == "softmax" and not at_output:
        return f"activation 'softmax' ({_ALLOWED})"
    if act not in ("linear", "softmax") and act not in FUSABLE:
        return f"activation {act!r} ({_ALLOWED})"
    return ""


# per Keras class, what of its config the exporter cannot lower ("" when it can)
_PROBLEMS = {
    "Activation": _activation_problem,
    "Softmax": lambda layer, cfg, at_output: "" if at_output else f"a Softmax layer ({_ALLOWED})",
    "ReLU": lambda layer, cfg, at_output: "only ReLU and ReLU(max_value=6) (no other max_value, negative_slope, "
    "threshold)" if cfg.get("negative_slope") or cfg.get("threshold") or cfg.get("max_value") not in (None, 6.0)
    else "",
    "GlobalAveragePooling2D": lambda layer, cfg, at_output: "only keepdims=False" if cfg.get("keepdims") else "",
    "UpSampling2D": lambda layer, cfg, at_output: "" if cfg.get("interpolation", "nearest") == "nearest" else
    f"interpolation={cfg['interpolation']!r} (allowed: 'nearest', which repeats values exactly)",
    "Add": lambda layer, cfg, at_output: "" if len(_inputs(layer)) in (0, 2) else
    f"Add of {len(_inputs(layer))} inputs (allowed: 2)",
    **{cls: _weighted_problem for cls in _WEIGHTED},
}


def problem(layer, at_output: bool = False) -> str:
    """Why the exporter cannot lower ``layer`` (``at_output``: its output is a model output), or ``""``."""
    cls = type(layer).__name__
    if isinstance(layer, Quantizer):  # a standalone quantizer (a stream's, the logits'): the exporter reads its grid
        return ""
    if cls not in LAYERS:
        return f"no integer TFLite lowering for {cls} (lowered: {', '.join(list(LAYERS)[1:])})"
    cfg = layer.get_config()
    if cfg.get("data_format", "channels_last") != "channels_last":
        return "only channels_last is supported"
    check = _PROBLEMS.get(cls)
    return check(layer, cfg, at_output) if check else ""


def _inputs(layer) -> list:
    """The input tensors of a layer called once (none known otherwise)."""
    try:
        inputs = layer.input
    except (AttributeError, ValueError):  # not called yet, or called several times
        return []
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def _output_layers(model: keras.Model) -> list:
    """The layers whose outputs are ``model``'s (Keras's ``output_names``: no ``get_config``, which costs a
    serialization of every layer); none for a model without them."""
    try:
        return [model.get_layer(name) for name in getattr(model, "output_names", None) or ()]
    except ValueError:  # a name that is not a layer's
        return []


def softmax_outputs(model: keras.Model) -> list:
    """The names of the softmax layers whose outputs are ``model``'s (see :func:`softmax_head`)."""
    return [layer.name for layer in _output_layers(model) if is_softmax(layer)]


def ends_in_softmax(model: keras.Model) -> bool:
    """Every output of ``model`` is a softmax layer's (see :func:`softmax_head`)."""
    layers = _output_layers(model)
    return bool(layers) and len(softmax_outputs(model)) == len(layers)


def softmax_head(model: keras.Model) -> tuple[keras.Model, list]:
    """``(model, names)``: ``model`` without the softmax layers that end it (each output a softmax layer's
    output becomes that layer's input: the logits, same argmax), and their names; ``model`` itself when no
    output is a softmax. A ``Dense(activation="softmax")`` output is not split here (:func:`problem` names it
    for the exporter; :func:`agq_keras.quantize` splits it)."""
    names = softmax_outputs(model)
    if not names:
        return model, []
    outputs = [layer.input if layer.name in names else tensor
               for layer, tensor in zip(_output_layers(model), model.outputs)]
    return keras.Model(model.inputs, outputs if len(outputs) > 1 else outputs[0], name=model.name), names
