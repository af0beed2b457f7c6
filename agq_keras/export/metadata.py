"""Named metadata entries of a TFLite file (the schema's ``Model.metadata``: a name and a buffer of bytes).

:func:`agq_keras.export.convert` writes the entries a model offers through ``model.tflite_metadata()`` (a
detector F's anchors, class names and output names:
:meth:`agq_keras.detection.detector.Detector.tflite_metadata`); runtimes ignore them, and
:class:`agq_keras.export.Runner` reads them back (``runner.metadata``).
"""

from __future__ import annotations

import flatbuffers
import numpy as np

from agq_keras.export.flatbuffer import schema


def read(model_bytes: bytes) -> dict:
    """``{name: bytes}`` of the file's metadata entries (LiteRT's own ones, e.g. ``min_runtime_version``,
    included)."""
    model = schema.Model.GetRootAs(bytearray(model_bytes), 0)
    entries = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        name = entry.Name()
        buffer = model.Buffers(entry.Buffer())
        data = buffer.DataAsNumpy() if buffer is not None and buffer.DataLength() else np.zeros(0, np.uint8)
        entries[name.decode() if isinstance(name, bytes) else name] = bytes(np.asarray(data, np.uint8))
    return entries


def add(model_bytes: bytes, entries: dict) -> bytes:
    """The same model with ``entries`` (``{name: bytes}``) added to its metadata (nothing else changes); the
    bytes unchanged when ``entries`` is empty. A name the file already holds is refused."""
    if not entries:
        return model_bytes
    present = read(model_bytes)
    for name, data in entries.items():
        if not isinstance(name, str) or not name or not isinstance(data, (bytes, bytearray)):
            raise ValueError(f"metadata entry {name!r}: the name must be a non-empty str and the value bytes.")
        if name in present:
            raise ValueError(f"metadata entry {name!r} is already in the model.")
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    model.metadata = list(model.metadata or [])
    for name, data in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(bytes(data), np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
