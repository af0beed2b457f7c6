"""Fashion-MNIST twin for the bireal quantizer: birealnet20 (residual, CIFAR stem), W1/A1, + AG."""

from configs.table1_common import fmnist_twin


def get_config():
    return fmnist_twin("birealnet20", "bireal", 1, 1, plain=False)
