"""Training: the AG joint step."""

from agq_keras.training.trainer import AGTrainer, check_lambda, default_loss, split_variables
from agq_keras.training.ssp import SSP, DeltaSchedule

__all__ = ["AGTrainer", "DeltaSchedule", "SSP", "check_lambda", "default_loss", "split_variables"]
