"""The README's default job: Fashion-MNIST, plain ResNet-20, 2-bit DoReFa, trained with AG.

A few minutes on 2 CPU cores: 12 000 training images, 3 epochs (learning rate / 10 for the last one,
the paper's schedule in miniature, which also lets BatchNorm's moving statistics settle), the full
10 000-image test set. The first conv and the classifier are 8-bit (``first_last_bits=8``: per-channel
int8 weights, a static-range 8-bit classifier input), which export as plain int8; their accuracy cost
against the paper's 16-bit was within the seed spread (docs/export.md, "8-bit first and last layers")."""

from agq_keras.configs.base import get_base_config


def get_config():
    c = get_base_config()
    c.arch = "resnet20"
    c.plain = True
    c.aux = True
    c.w_bits = c.a_bits = 2
    c.train_subset = 12000
    c.epochs = 3
    c.batch_size = 64
    c.learning_rate = 2e-3
    c.lr_decay_epochs = (2,)  # 0-based: the third epoch runs at lr / 10
    c.first_last_bits = 8
    return c
