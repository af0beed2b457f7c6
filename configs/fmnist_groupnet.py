"""Fashion-MNIST twin for the groupnet quantizer: groupnet20 (residual, CIFAR stem), W1/A1, + AG."""

from configs.table1_common import fmnist_twin


def get_config():
    return fmnist_twin("groupnet20", "groupnet", 1, 1, plain=False, num_bases=5)
