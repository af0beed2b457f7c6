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


class _CheckoutConfigs:
    """``agq_keras.configs`` in a source checkout that is not installed (``PYTHONPATH=<checkout>``): the
    repository's top-level ``configs/`` folder, which ``pip install`` maps to ``agq_keras/configs`` (setup.py's
    package-dir mapping, one copy). A meta path finder for that one name, consulted first, so the configs always
    come from the checkout this package was imported from (not from another, editable-installed one)."""

    folder = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "configs")

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != "agq_keras.configs":
            return None
        from importlib.util import spec_from_file_location

        return spec_from_file_location(fullname, _os.path.join(cls.folder, "__init__.py"),
                                       submodule_search_locations=[cls.folder])

    @classmethod
    def install(cls):
        installed = _os.path.isdir(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "configs"))
        if not installed and _os.path.isfile(_os.path.join(cls.folder, "__init__.py")) and cls not in _sys.meta_path:
            _sys.meta_path.insert(0, cls)


_CheckoutConfigs.install()
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
