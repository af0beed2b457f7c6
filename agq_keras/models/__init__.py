"""Model builders: the built-in F (H is :func:`agq_keras.auxiliary.attach`; :func:`agq_keras.build` composes
them), and `quantize` (any float functional model -> F)."""

from agq_keras.models.builder import ARCHITECTURES, build_net, make_net
from agq_keras.models.mobilenetv2 import MobileNetV2
from agq_keras.models.quantize import quantize
from agq_keras.models.resnet import RESNETS, ArchSpec, BNPersonality, ResNet

__all__ = ["ARCHITECTURES", "ArchSpec", "BNPersonality", "MobileNetV2", "RESNETS", "ResNet", "build_net", "make_net",
           "quantize"]
