"""Shared config schema (ml_collections). Every experiment config starts from
`get_base_config()` and overrides fields; unknown keys on the command line are
rejected by ml_collections (ConfigDict is locked).

`agq_keras.training.run.validate` checks the values (ranges, choices, combinations)
before anything is written."""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # model (agq_keras.build arguments; quantizer/arch strings are passed through)
    c.arch = "resnet20"
    c.plain = True
    c.quantizer = "dorefa"
    c.w_bits = 2
    c.a_bits = 2
    c.aux = True
    c.aux_lambda = 1.0
    c.aux_placement = "block"
    c.bn_momentum = 0.9
    c.stem = ""  # "" = the arch's own stem; "cifar" / "imagenet"
    # baselines of Table 3: "none", "additional_losses" (alpha) or "kd" (beta)
    c.baseline = "none"
    c.aux_alpha = 0.01
    c.kd_beta = 1.0
    # stochastic structured precision (Algorithm 2)
    c.ssp = False
    c.ssp_fragments = "block"  # "block" or "layer"
    c.ssp_wa = False  # draw weights and activations separately (W/A)
    c.ssp_delta0 = 0.5
    c.ssp_decay_epoch = 20  # delta reaches 0 at this epoch (must be <= epochs)
    # data
    c.dataset = "fashion_mnist"  # fashion_mnist | cifar100 | imagenet2012 | npz
    c.data_dir = ""  # "" = the dataset's default location (npz: the .npz file)
    c.num_classes = 0  # 0 = the dataset's own (required for npz)
    c.image_size = 224  # ImageNet crop size
    c.train_subset = 0  # 0 = all training images
    c.test_subset = 0
    # optimisation (stage 2: the quantized model)
    c.epochs = 1
    c.batch_size = 128
    c.optimizer = "adam"
    c.learning_rate = 1e-3
    c.lr_decay_epochs = ()  # learning rate / 10 at each of these epochs
    c.weight_decay = 0.0
    c.seed = 0
    # stage 1 (section 4.1): pre-train the full-precision counterpart, 0 = skip
    c.pretrain_epochs = 0
    c.pretrain_optimizer = "sgd"
    c.pretrain_learning_rate = 0.1
    c.pretrain_lr_decay_epochs = ()
    c.init_checkpoint = ""  # a trainer.keras / f.keras to start from (weights by layer name)
    # running
    c.strategy = "none"  # none | mirrored | multi_worker | tpu
    c.tpu = ""  # TPU address for strategy=tpu
    c.deterministic = False  # tf.config.experimental.enable_op_determinism()
    c.verbose = 1  # 1 = Keras progress bar, 2 = one line per epoch, 0 = silent
    return c
