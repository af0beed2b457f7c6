"""agq-keras: low-bit CNNs trained with the auxiliary gradient module (AG).

>>> import agq_keras
>>> model = agq_keras.build("resnet20", plain=True, aux=True, num_classes=10, input_shape=(28, 28, 1))
>>> model.compile()            # Adam, cross-entropy on logits, accuracy
>>> model.fit(x, y)            # Algorithm 1; model.f is the deployable F
"""

from agq_keras import layers, quantizers
from agq_keras.layers import AuxAdaptor, QConv2D, QDense
from agq_keras.models import build
from agq_keras.training import AGTrainer
from agq_keras.summary import summary

__version__ = "0.1.0"

__all__ = ["AGTrainer", "AuxAdaptor", "QConv2D", "QDense", "build", "export", "layers", "quantizers", "summary",
           "__version__"]


def __getattr__(name):
    # agq_keras.export needs LiteRT (the `export` extra): import it on first use.
    if name == "export":
        import importlib

        return importlib.import_module("agq_keras.export")
    raise AttributeError(f"module 'agq_keras' has no attribute {name!r}")
