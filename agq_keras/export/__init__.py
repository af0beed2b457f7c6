"""Exact integer TFLite export of F (see docs/export.md).

The pipeline: :mod:`lower` (Keras F -> graph) -> :mod:`calibrate` (observed ranges) -> :mod:`plan`
(every scale, zero point, code, multiplier and bias, frozen; integer arithmetic in :mod:`intmath`)
-> :mod:`layout` (TFLite tensors and operators: versions, options, input repeats) -> :mod:`flatbuffer`
(bytes). Each op kind of the graph is one entry of :data:`ops.KINDS` (how it calibrates and is written).

>>> from agq_keras import export
>>> data, plan, notes = export.convert(f, images[:500])            # full-int8 flatbuffer bytes
>>> report = export.verify(data, f, test_images, test_labels, plan=plan)  # agreement, grid check, ...
>>> rows = export.tensor_agreement(data, f, plan, test_images[:20])  # where F and the int8 model part
>>> print("\n".join(export.summary(report)))                       # the report for a person
"""

from agq_keras.export.api import check_images, convert, export_source, resolve_model, save_atomic
from agq_keras.export.plan import MODES
from agq_keras.export.report import first_parting, summary
from agq_keras.export.targets import EDGETPU_OPS, c_array, edgetpu_report
from agq_keras.export.verify import (RUNTIMES, Runner, grid_check, model_ops, runner, tensor_agreement,
                                     tensor_codes, verify, verify_detector)

__all__ = ["EDGETPU_OPS", "MODES", "RUNTIMES", "Runner", "c_array", "check_images", "convert", "edgetpu_report",
           "export_source", "first_parting", "grid_check", "model_ops", "resolve_model", "runner", "save_atomic",
           "summary", "tensor_agreement", "tensor_codes", "verify", "verify_detector"]
