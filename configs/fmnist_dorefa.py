"""Fashion-MNIST twin for the dorefa quantizer: plain resnet20, W2/A2, + AG."""

from configs.table1_common import fmnist_twin


def get_config():
    return fmnist_twin("resnet20", "dorefa", 2, 2, plain=True)
