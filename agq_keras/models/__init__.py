"""Model builders: F (and H through the AG trainer), and `quantize` (any float functional model -> F)."""

from agq_keras.models.builder import ARCHITECTURES, build, make_net
from agq_keras.models.mobilenetv2 import MobileNetV2
from agq_keras.models.quantize import quantize
from agq_keras.models.resnet import RESNETS, ArchSpec, BNPersonality, ResNet

__all__ = ["ARCHITECTURES", "ArchSpec", "BNPersonality", "MobileNetV2", "RESNETS", "ResNet", "build", "make_net", "quantize"]
