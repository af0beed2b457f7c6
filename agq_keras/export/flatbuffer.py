"""Serialization: a frozen :class:`~agq_keras.export.plan.Plan` as TFLite flatbuffer bytes.

The last stage of the pipeline. It encodes the plan with the schema bindings that ship with LiteRT
(``ai_edge_litert.schema_py_generated``) and decides nothing: tensors, buffers and operators are
written in the plan's order, operator codes in order of first use, so the bytes are a deterministic
function of the plan. A constant the plan marks as sharing an earlier one's bytes (``TensorRecord.shares``:
a shared layer's later call, e.g. a detector's head conv at another pyramid level) points at that tensor's
buffer, so its bytes are stored once; its own quantization (scales) stays on its own tensor.
"""

from __future__ import annotations

import flatbuffers
import numpy as np

try:
    from ai_edge_litert import schema_py_generated as schema
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("agq_keras.export needs LiteRT: pip install 'agq-keras[export]' (ai-edge-litert)") from err

TENSOR_TYPES = {"int4": schema.TensorType.INT4, "int8": schema.TensorType.INT8, "int16": schema.TensorType.INT16,
                "int32": schema.TensorType.INT32,
                "int64": schema.TensorType.INT64, "float32": schema.TensorType.FLOAT32}
# option fields whose values are enum names
_ENUMS = {"padding": schema.Padding, "fusedActivationFunction": schema.ActivationFunctionType,
          "weightsFormat": schema.FullyConnectedOptionsWeightsFormat}


def _tensor(record, buffers, tensors):
    t = schema.TensorT()
    t.name = record.name
    t.shape = np.asarray(([1] if record.batch else []) + list(record.shape), np.int32)
    if record.batch:
        t.shapeSignature = np.asarray([-1] + list(record.shape), np.int32)
    t.type = TENSOR_TYPES[record.dtype]
    t.buffer = 0
    if record.shares is not None:  # the same bytes as an earlier constant (a shared layer's later call)
        t.buffer = tensors[record.shares].buffer
    elif record.data is not None:
        buf = schema.BufferT()
        raw = pack_int4(record.data) if record.dtype == "int4" else np.ascontiguousarray(record.data).tobytes()
        buf.data = np.frombuffer(raw, np.uint8)
        buffers.append(buf)
        t.buffer = len(buffers) - 1
    if record.quant is not None:
        q = schema.QuantizationParametersT()
        q.scale = list(record.quant.scale)
        q.zeroPoint = list(record.quant.zero_point)
        q.quantizedDimension = record.quant.axis
        t.quantization = q
    return t


def pack_int4(codes) -> bytes:
    """TFLite's packed INT4 layout: two codes per byte in row-major order, the first in the low nibble."""
    flat = np.asarray(codes, np.int64).ravel()
    if flat.size % 2:
        flat = np.concatenate([flat, [0]])
    nibbles = (flat & 0xF).astype(np.uint8)
    return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()


def unpack_int4(data: bytes, count: int) -> np.ndarray:
    """The ``count`` signed codes of packed INT4 ``data`` (:func:`pack_int4`'s inverse)."""
    raw = np.frombuffer(bytes(data), np.uint8)
    nibbles = np.stack([raw & 0xF, raw >> 4], axis=1).ravel()[:count].astype(np.int64)
    return np.where(nibbles > 7, nibbles - 16, nibbles)


def _options(options):
    if options is None:
        return 0, None
    table, fields = options
    obj = getattr(schema, table + "T")()
    for field, value in fields:
        setattr(obj, field, getattr(_ENUMS[field], value) if field in _ENUMS else value)
    return getattr(schema.BuiltinOptions, table), obj


def to_bytes(plan, description: str | None = None) -> bytes:
    """The flatbuffer bytes of ``plan`` (``description``: the model's description string)."""
    model = schema.ModelT()
    model.version = 3
    model.description = plan.description if description is None else description
    model.buffers = [schema.BufferT()]  # buffer 0: the empty sentinel
    model.operatorCodes = []
    sub = schema.SubGraphT()
    sub.name = "main"
    sub.tensors = []
    for record in plan.tensors:
        sub.tensors.append(_tensor(record, model.buffers, sub.tensors))
    sub.operators = []
    codes: dict = {}
    for record in plan.ops:
        code = getattr(schema.BuiltinOperator, record.builtin)
        key = (code, record.version)
        if key not in codes:
            oc = schema.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = record.version
            model.operatorCodes.append(oc)
            codes[key] = len(model.operatorCodes) - 1
        o = schema.OperatorT()
        o.opcodeIndex = codes[key]
        o.inputs = np.asarray(record.inputs, np.int32)
        o.outputs = np.asarray(record.outputs, np.int32)
        o.builtinOptionsType, o.builtinOptions = _options(record.options)
        sub.operators.append(o)
    sub.inputs = np.asarray(plan.inputs, np.int32)
    sub.outputs = np.asarray(plan.outputs, np.int32)
    model.subgraphs = [sub]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
