"""Fashion-MNIST twin for the lsq quantizer: plain resnet20, W2/A2, + AG."""

from configs.table1_common import fmnist_twin


def get_config():
    return fmnist_twin("resnet20", "lsq", 2, 2, plain=True)
