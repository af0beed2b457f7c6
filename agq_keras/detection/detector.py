"""The detector F as a saved product: a functional model that carries its anchors and class names.

:class:`Detector` is the functional F of :func:`~agq_keras.detection.build_detector` (the same layers and
outputs) with its :class:`~agq_keras.detection.boxes.AnchorSpec` and class names in its config, so they
survive ``f.save("f.keras")`` / ``agq_keras.load_model`` (a registered serializable with a complete
``get_config`` / ``from_config``); the input size is F's own input shape. Nothing is computed by the
metadata: the exporter walks F's graph as for any functional model, and ``export.convert`` writes
:meth:`Detector.tflite_metadata` into the TFLite file's metadata (entry :data:`METADATA_NAME`, JSON), where
:func:`~agq_keras.detection.predict` reads it back. An F saved before it carried them (a plain functional
model) is wrapped with :func:`with_spec`.
"""

from __future__ import annotations

import json
import numbers

import keras

from agq_keras.detection.boxes import AnchorSpec

METADATA_NAME = "agq_keras.detector"  # the TFLite metadata entry: JSON {"anchors", "class_names", "outputs"}


def _check(anchors, class_names, output_names, where: str):
    """``(anchors, class names)`` validated (one-line ValueErrors naming the value)."""
    if not isinstance(anchors, AnchorSpec):
        raise ValueError(f"{where}: anchors={anchors!r} must be an agq_keras.detection.AnchorSpec (the anchors F is "
                         "trained with).")
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, (list, tuple)) or not class_names or \
            not all(isinstance(c, str) and c for c in class_names):
        raise ValueError(f"{where}: class_names={class_names!r} must be a non-empty list of non-empty strings, one "
                         "per class.")
    expected = [f"{kind}_p{l}" for kind in ("cls", "box") for l in anchors.levels]
    if list(output_names) != expected:
        raise ValueError(f"{where}: the outputs {list(output_names)} are not a detector's for anchor levels "
                         f"{anchors.levels}; expected {expected}.")
    return anchors, tuple(class_names)


@keras.saving.register_keras_serializable(package="agq_keras")
class Detector(keras.Model):
    """A functional detector F (``Detector(inputs, outputs, anchors=..., class_names=...)``) whose outputs are
    ``cls_p<l>`` ([B, H_l, W_l, K * C] logits) then ``box_p<l>`` ([B, H_l, W_l, K * 4] deltas) for the levels of
    ``anchors``; ``anchor_spec``, ``class_names`` and ``input_size`` are read from it (see the module
    docstring)."""

    def __init__(self, *args, anchors=None, class_names=None, **kwargs):
        super().__init__(*args, **kwargs)
        anchors, names = _check(anchors, class_names, self.output_names, f"Detector {self.name!r}")
        shape = tuple(self.input_shape)
        if len(self.inputs) != 1 or len(shape) != 4 or any(d is None for d in shape[1:]):
            raise ValueError(f"Detector {self.name!r}: its input {shape} must be one fixed (height, width, channels).")
        k = anchors.num_anchors
        grids = anchors.grid_sizes(shape[1:3])
        wanted = [(*g, k * len(names)) for g in grids] + [(*g, k * 4) for g in grids]
        got = [tuple(o.shape[1:]) for o in self.outputs]
        if got != wanted:
            raise ValueError(f"Detector {self.name!r}: output shapes {got} do not match anchors {anchors} and "
                             f"{len(names)} classes on a {shape[1]}x{shape[2]} input; expected {wanted}.")
        self._anchor_spec, self._class_names = anchors, names

    @property
    def anchor_spec(self) -> AnchorSpec:
        """The anchors F is trained with (decode F's outputs with these)."""
        return self._anchor_spec

    @property
    def class_names(self) -> tuple:
        """One name per class, in the order of F's class logits."""
        return self._class_names

    @property
    def input_size(self) -> tuple:
        """``(height, width, channels)`` of the images F takes."""
        return tuple(int(d) for d in self.input_shape[1:])

    def spec_config(self) -> dict:
        """What this F adds to its functional graph (JSON-ready): read back by :meth:`rewrap`. An AGTrainer saves it
        next to the graph it shares with H, so a loaded ``trainer.keras``'s F is a Detector again."""
        return {"anchors": self._anchor_spec.to_dict(), "class_names": list(self._class_names)}

    @classmethod
    def rewrap(cls, graph: keras.Model, spec: dict) -> "Detector":
        """A Detector over the layers of the functional ``graph`` (the same layer objects), with ``spec`` of
        :meth:`spec_config`."""
        return cls(_single(graph.inputs), list(graph.outputs), anchors=AnchorSpec.from_dict(spec.get("anchors")),
                   class_names=spec.get("class_names"), name=graph.name, trainable=graph.trainable)

    def get_config(self):
        config = super().get_config()
        config.update(self.spec_config())
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        spec = {key: config.pop(key, None) for key in ("anchors", "class_names")}
        graph = keras.Model.from_config(config, custom_objects=custom_objects)  # the plain functional graph
        return cls.rewrap(graph, spec)

    def tflite_metadata(self) -> dict:
        """``{METADATA_NAME: JSON bytes}``: what ``export.convert`` writes into the TFLite file's metadata, so that
        :func:`~agq_keras.detection.predict` decodes the file's outputs with F's anchors and names."""
        payload = {"anchors": self._anchor_spec.to_dict(), "class_names": list(self._class_names),
                   "outputs": list(self.output_names)}
        return {METADATA_NAME: json.dumps(payload, sort_keys=True).encode("utf-8")}


def _single(inputs):
    """One input tensor as itself (the structure F was built with: a list would make Keras warn on every call)."""
    return inputs[0] if len(inputs) == 1 else inputs


def read_metadata(payload: bytes) -> tuple:
    """``(anchors, class names, output names)`` of a TFLite file's :data:`METADATA_NAME` entry."""
    try:
        data = json.loads(bytes(payload).decode("utf-8"))
        anchors = AnchorSpec.from_dict(data["anchors"])
        names, outputs = data["class_names"], data["outputs"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"the TFLite file's {METADATA_NAME!r} metadata is not a detector's ({err}).") from None
    return (*_check(anchors, names, outputs, "TFLite metadata"), tuple(outputs))


def default_class_names(num_classes: int) -> tuple:
    """``("0", "1", ...)``: the names of a detector built without ``class_names``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 1.")
    return tuple(str(c) for c in range(int(num_classes)))


def with_spec(f: keras.Model, *, anchors: AnchorSpec, class_names) -> Detector:
    """A :class:`Detector` over the layers of a plain functional detector ``f`` (e.g. an ``f.keras`` saved before
    F carried its anchors): the same weights, now with ``anchors`` and ``class_names`` (saved with it)."""
    if not isinstance(f, keras.Model) or not getattr(f, "outputs", None):
        raise ValueError(f"with_spec(): f={f!r} must be a functional keras.Model (a detector F).")
    return Detector(_single(f.inputs), list(f.outputs), anchors=anchors, class_names=class_names, name=f.name)
