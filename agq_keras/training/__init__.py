"""Training: the AG joint step."""

from agq_keras.training.trainer import AGTrainer, check_lambda, default_loss, split_variables

__all__ = ["AGTrainer", "check_lambda", "default_loss", "split_variables"]
