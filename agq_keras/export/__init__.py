"""Exact integer TFLite export of F (see docs/export.md).

>>> from agq_keras import export
>>> data, graph, notes = export.convert(f, images[:500])          # full-int8 flatbuffer bytes
>>> report = export.verify(data, f, test_images, test_labels)      # agreement, grid check, ops, ...
"""

from agq_keras.export.targets import EDGETPU_OPS, c_array, edgetpu_report
from agq_keras.export.tflite import MODES, check_images, convert, resolve_model, save_atomic, write
from agq_keras.export.verify import Runner, grid_check, model_ops, verify

__all__ = ["EDGETPU_OPS", "MODES", "Runner", "c_array", "check_images", "convert", "edgetpu_report", "grid_check",
           "model_ops", "resolve_model", "save_atomic", "verify", "write"]
