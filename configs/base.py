"""Shared config schema (ml_collections). Every experiment config starts from
`get_base_config()` and overrides fields; unknown keys on the command line are
rejected by ml_collections (ConfigDict is locked)."""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # model (agq_keras.build arguments)
    c.arch = "resnet20"
    c.plain = True
    c.quantizer = "dorefa"
    c.w_bits = 2
    c.a_bits = 2
    c.aux = True
    c.aux_lambda = 1.0
    c.aux_placement = "block"
    c.bn_momentum = 0.9
    # data
    c.dataset = "fashion_mnist"
    c.data_dir = ""  # "" = the dataset's default location
    c.train_subset = 0  # 0 = all training images
    c.test_subset = 0
    # optimisation
    c.epochs = 1
    c.batch_size = 128
    c.optimizer = "adam"
    c.learning_rate = 1e-3
    c.lr_decay_epochs = ()  # learning rate / 10 at each of these epochs
    c.seed = 0
    return c
