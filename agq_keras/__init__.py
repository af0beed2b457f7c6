"""agq-keras: low-bit CNNs trained with the auxiliary gradient module (AG).

>>> import agq_keras
>>> model = agq_keras.build("resnet20", plain=True, aux=True, num_classes=10, input_shape=(28, 28, 1))
>>> model.compile()            # Adam, cross-entropy on logits, accuracy
>>> model.fit(x, y)            # Algorithm 1; model.f is the deployable F
>>> f = agq_keras.quantize(my_float_model, w_bits=4, a_bits=4)   # any functional Keras model -> F
>>> trainer = agq_keras.auxiliary.attach(f)                       # + H, fit() as above
"""

import os as _os
import sys as _sys
import tempfile as _tempfile


def _import_tensorflow_quietly():
    """TensorFlow 2.21 writes a oneDNN notice and CPU-feature lines to stderr while it imports, below
    every log level; hold them back (and replay them if the import fails)."""
    if "tensorflow" in _sys.modules:
        return
    with _tempfile.TemporaryFile() as captured:
        _sys.stderr.flush()
        saved = _os.dup(2)
        _os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            _os.dup2(saved, 2)
            captured.seek(0)
            _sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            _os.dup2(saved, 2)
            _os.close(saved)


_import_tensorflow_quietly()

from agq_keras import auxiliary, layers, quantizers, structure  # noqa: E402
from agq_keras.layers import AuxAdaptor, QConv2D, QDense, QDepthwiseConv2D, QGlobalAveragePooling2D  # noqa: E402
from agq_keras.networks import build  # noqa: E402
from agq_keras.models.quantize import quantize  # noqa: E402
from agq_keras.saving import load_model  # noqa: E402
from agq_keras.training import AGTrainer  # noqa: E402
from agq_keras.summary import summary  # noqa: E402

__version__ = "0.1.0"

__all__ = ["AGTrainer", "AuxAdaptor", "QConv2D", "QDense", "QDepthwiseConv2D", "QGlobalAveragePooling2D", "auxiliary",
           "build", "export", "layers", "load_model", "quantize", "quantizers", "structure", "summary", "__version__"]


def __getattr__(name):
    # agq_keras.export needs LiteRT (the `export` extra): import it on first use.
    if name == "export":
        import importlib

        return importlib.import_module("agq_keras.export")
    raise AttributeError(f"module 'agq_keras' has no attribute {name!r}")
