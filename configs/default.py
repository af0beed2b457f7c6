"""The README's default job: Fashion-MNIST, plain ResNet-20, 2-bit DoReFa, trained with AG.

A few minutes on 2 CPU cores (6000 training images, 2 epochs, full 10k test set)."""

from configs.base import get_base_config


def get_config():
    c = get_base_config()
    c.arch = "resnet20"
    c.plain = True
    c.aux = True
    c.w_bits = c.a_bits = 2
    c.train_subset = 6000
    c.epochs = 2
    c.batch_size = 64
    c.learning_rate = 1e-3
    return c
