"""F's structure, read from the model itself: its graph, its quantized layers, its blocks and AG's taps.

Everything here is derived from what a `.keras` file keeps (the functional config and the layers'
configs), so a reloaded F has the same structure as the F that was built:

* :func:`nodes` -- the functional graph as ``(layer, ref, input refs)`` in topological order, where a
  ref is ``(layer name, node index, tensor index)`` as in the model's config.
* :func:`quantized_layers`, :func:`low_bit` -- the QConv2D / QDepthwiseConv2D / QDense layers, and those
  below the 16-bit edge precision (SSP's fragments, AG's ``"layer"`` taps).
* :func:`blocks` -- the blocks named by the quantized layers' ``fragment`` (set by the built-in builders,
  kept in the layers' configs), each with its output: the last layer, in F's order, named after the block
  (``<block>`` or ``<block>_*``, the builders' naming: its residual sum, its stream rounding, or its last
  conv or BatchNorm in a plain net).
* :func:`auto_taps` -- the tensors AG taps with ``taps="auto"``: the block outputs when F has blocks,
  else the outputs of every ``Add`` layer and the last output of each spatial stage.
"""

from __future__ import annotations

import dataclasses

import keras

from agq_keras.layers import QConv2D, QDense, QDepthwiseConv2D

QUANTIZED = (QConv2D, QDepthwiseConv2D, QDense)
# Layers at or above this many bits are "edge" layers (stem, classifier): never SSP fragments or AG layer taps.
EDGE_BITS = 16
# Layers that only pad, drop or pass a tensor on: they never end a spatial stage.
_PASS_THROUGH = ("ZeroPadding2D", "Dropout", "SpatialDropout2D", "Cropping2D")


@dataclasses.dataclass(frozen=True)
class Node:
    layer: keras.layers.Layer
    ref: tuple  # (layer name, node index, tensor index) of its output
    inputs: tuple  # refs of its inputs, in call order
    listed: bool = False  # called with a list of tensors (Add, Concatenate, ...)
    kwargs: tuple = ()  # its call's other keyword arguments (e.g. training=False), as (name, value) pairs


@dataclasses.dataclass
class Block:
    name: str
    layers: list  # its quantized layers, in F's order
    output: str  # the name of the layer whose (first) output is the block's output
    downsamples: bool


def history_refs(obj) -> list:
    """All ``keras_history`` triples inside a serialized call's args, in order."""
    found = []
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            found.append(tuple(obj["config"]["keras_history"]))
        else:
            for value in obj.values():
                found += history_refs(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            found += history_refs(value)
    return found


def functional_config(model: keras.Model, what: str = "this") -> dict:
    config = model.get_config() if isinstance(model, keras.Model) else {}
    if "layers" not in config or "input_layers" not in config:
        raise ValueError(f"{what} needs a functional keras.Model (built with keras.Model(inputs, outputs) or "
                         f"keras.Sequential), got {type(model).__name__} {getattr(model, 'name', '')!r}.")
    return config


def nodes(model: keras.Model, what: str = "this") -> list[Node]:
    """The model's graph in topological order (the order of its config)."""
    out = []
    for entry in functional_config(model, what)["layers"]:
        layer = model.get_layer(entry["name"])
        if not entry["inbound_nodes"]:
            out.append(Node(layer, (layer.name, 0, 0), ()))
        for n, node in enumerate(entry["inbound_nodes"]):
            args, kwargs = node.get("args", []), node.get("kwargs", {})
            if len(args) != 1 or any(history_refs(v) for v in kwargs.values()):
                raise ValueError(f"{what}: layer {layer.name!r} ({type(layer).__name__}) is called with "
                                 f"{len(args)} positional argument(s) or tensor keyword arguments; supported: one "
                                 "tensor or one list of tensors.")
            refs = tuple(history_refs(node))
            if any(r[2] != 0 for r in refs):
                raise ValueError(f"{what}: layer {layer.name!r} reads output {max(r[2] for r in refs)} of a "
                                 "multi-output layer; supported: single-output layers.")
            out.append(Node(layer, (layer.name, n, 0), refs, isinstance(args[0], list), tuple(sorted(kwargs.items()))))
    return out


def rebuild(model: keras.Model, inputs, *, layer_for=None, after=None, read=None) -> list:
    """Call ``model``'s layers again, in its order, on ``inputs`` (one tensor per model input), and return
    the tensors of its outputs. ``layer_for(layer)`` gives the layer to call in its place (default: the
    layer itself, i.e. shared weights); ``after(node, tensor)`` may replace a node's output tensor for
    the nodes that read it (default: unchanged); ``read(node, ref, tensor)`` may replace, for ``node``
    alone, the tensor it reads at input ``ref`` (default: unchanged). H (:func:`agq_keras.auxiliary.attach`)
    and :func:`agq_keras.models.quantize` are both such a re-run."""
    layer_for = layer_for or (lambda layer: layer)
    after = after or (lambda node, tensor: tensor)
    read = read or (lambda node, ref, tensor: tensor)
    config = functional_config(model)
    in_refs = config["input_layers"]
    if in_refs and not isinstance(in_refs[0], (list, tuple)):
        in_refs = [in_refs]
    values = {tuple(r): t for r, t in zip(in_refs, inputs)}
    for node in nodes(model):
        if isinstance(node.layer, keras.layers.InputLayer):
            continue
        args = [read(node, r, values[r]) for r in node.inputs]
        tensor = layer_for(node.layer)(args if node.listed else args[0], **dict(node.kwargs))
        values[node.ref] = after(node, tensor)
    return [values[r] for r in output_refs(model)]


def ancestors(model: keras.Model, refs) -> set:
    """The refs of the nodes ``refs`` and of every node they read from, directly or not."""
    reads = {node.ref: node.inputs for node in nodes(model)}
    found, todo = set(), list(refs)
    while todo:
        ref = todo.pop()
        if ref not in found:
            found.add(ref)
            todo += reads.get(ref, ())
    return found


def output_refs(model: keras.Model) -> list:
    outputs = functional_config(model)["output_layers"]
    if outputs and not isinstance(outputs[0], (list, tuple)):
        outputs = [outputs]
    return [tuple(r) for r in outputs]


def quantized_layers(model: keras.Model) -> list:
    return [l for l in model.layers if isinstance(l, QUANTIZED)]


def low_bit(layer) -> bool:
    """A quantized layer below the edge precision (weights or inputs under 16 bits)."""
    return isinstance(layer, QUANTIZED) and (layer.weight_bits < EDGE_BITS or layer.input_bits < EDGE_BITS)


def _spatial(tensor_shape):
    return tuple(tensor_shape[1:3]) if len(tensor_shape) == 4 else None


def blocks(model: keras.Model) -> list[Block]:
    """F's blocks from its quantized layers' ``fragment`` names (``[]`` when none is set), in F's order."""
    members: dict = {}
    for layer in quantized_layers(model):
        if layer.fragment is not None:
            members.setdefault(layer.fragment, []).append(layer)
    if not members:
        return []
    result = []
    for name, layers in members.items():
        own = [l for l in model.layers if l.name == name or l.name.startswith(name + "_")]
        end = own[-1]
        first_in, out = _spatial(layers[0].input.shape), _spatial(end.output.shape)
        result.append(Block(name, layers, end.name, first_in is not None and out is not None and out != first_in))
    return result


def auto_taps(model: keras.Model, placement: str = "block") -> list[str]:
    """The names of the layers whose outputs AG taps (in F's order).

    ``placement="layer"``: every low-bit quantized conv. ``"block"``: F's block outputs
    (:func:`blocks`) when its layers name their blocks; otherwise the outputs of every ``Add`` layer and
    the last output of each spatial stage (a run of 4-D outputs of one height and width; padding and
    dropout layers are skipped) that holds a low-bit quantized layer."""
    if placement == "layer":
        return [l.name for l in quantized_layers(model) if low_bit(l) and len(l.output.shape) == 4]
    found = blocks(model)
    if found:
        return [b.output for b in found]
    order = {}
    last, has_low_bit, taps = {}, {}, []
    for node in nodes(model):
        layer = node.layer
        order.setdefault(layer.name, len(order))
        if node.ref[1] != 0 or isinstance(layer, keras.layers.InputLayer) or type(layer).__name__ in _PASS_THROUGH:
            continue
        size = _spatial(layer.output.shape)
        if size is None:
            continue
        last[size] = layer.name
        has_low_bit[size] = has_low_bit.get(size, False) or low_bit(layer)
        if isinstance(layer, keras.layers.Add):
            taps.append(layer.name)
    taps += [name for size, name in last.items() if has_low_bit[size] and name not in taps]
    return sorted(taps, key=order.get)
