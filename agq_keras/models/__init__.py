"""Model builders: F (and H through the AG trainer)."""

from agq_keras.models.builder import ARCHITECTURES, build, make_net
from agq_keras.models.resnet import RESNETS, ArchSpec, BNPersonality, ResNet

__all__ = ["ARCHITECTURES", "ArchSpec", "BNPersonality", "RESNETS", "ResNet", "build", "make_net"]
