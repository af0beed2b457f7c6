"""Shared config schema (ml_collections). Every experiment config starts from
`get_base_config()` and overrides fields; unknown keys on the command line are
rejected by ml_collections (ConfigDict is locked).

`agq_keras.experiments.run.validate` checks the values (ranges, choices, combinations)
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
    c.aux_relu = False  # H: a ReLU after each aggregation sum (the authors' released code) instead of the linear sum
    c.bn_momentum = 0.9
    c.num_bases = 0  # GroupNet archs: M binary bases per block (0 = the arch default, 5)
    c.alpha = 0.0  # mobilenetv2: width multiplier (0 = the arch default, 1.0)
    c.bottleneck = ""  # mobilenetv2: "linear" / "relu" ("" = the arch default: linear for lsq, relu for the others)
    c.stem = ""  # "" = the arch's own stem; "cifar" / "imagenet"
    c.residual_stream = "float"  # "int16" / "int8": residual F keeps its skip stream on the export's grid (exact export)
    c.first_last_bits = 0  # first conv and classifier: 0 = 16 (the paper's; 32 at full precision), or 8 / 16 / 32
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
    # steady evaluation: before every evaluation, re-estimate F's BatchNorm moving statistics over this many
    # training batches (in order, test-time preprocessing), weights frozen; 0 = off (training's running
    # statistics). metrics.json then holds both: f / val_* steadied (f.keras carries these statistics),
    # f_raw / raw_val_* raw. Training itself is unchanged by it.
    c.bn_reestimation_batches = 0
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
    c.verbose = 1  # 1 = progress bar (per-epoch lines when stdout is no terminal), 2 = one line per epoch, 0 = silent
    return c


# -- the paper's recipe (section 4.1) and experiment variants -------------------------------------------------

BINARY_QUANTIZERS = ("bireal", "groupnet")


def imagenet_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Stage 2 of section 4.1 on ImageNet: Adam, 35 epochs, lr / 10 at 25 and 30, batch 256,
    lr 1e-3 (fixed point) or 5e-4 (binary); SSP delta 0.5 -> 0 at epoch 20. Stage 1 (the
    full-precision counterpart, SGD) uses the usual ResNet schedule (our choice: the paper
    does not give it): 90 epochs, lr 0.1, / 10 at 30 and 60."""
    c.dataset = "imagenet2012"
    c.num_classes = 0
    c.image_size = 224
    c.epochs = 35
    c.lr_decay_epochs = (25, 30)
    c.batch_size = 256
    c.optimizer = "adam"
    c.learning_rate = 5e-4 if c.quantizer in BINARY_QUANTIZERS else 1e-3
    c.ssp_delta0 = 0.5
    c.ssp_decay_epoch = 20
    c.pretrain_epochs = 90
    c.pretrain_optimizer = "sgd"
    c.pretrain_learning_rate = 0.1
    c.pretrain_lr_decay_epochs = (30, 60)
    c.weight_decay = 0.0
    c.bn_reestimation_batches = 0  # the paper's evaluation: training's running BN statistics
    return c


def cpu_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same two-stage shape scaled down by 5 for Fashion-MNIST on a CPU: stage 2 runs
    7 epochs with lr / 10 at 5 and 6, SSP delta reaching 0 at epoch 4; stage 1 runs 3 SGD
    epochs. Batch 128. Steady evaluation on: F's BatchNorm statistics re-estimated over 20
    training batches before every evaluation (the 2-bit plain nets' test top-1 swung 8.5 points
    from epoch to epoch on average with training's running statistics, 2.0 re-estimated:
    docs/results_discussion.md, "Steady evaluation"); metrics.json keeps the raw numbers too."""
    c.dataset = "fashion_mnist"
    c.epochs = 7
    c.lr_decay_epochs = (5, 6)
    c.batch_size = 128
    c.optimizer = "adam"
    c.learning_rate = 5e-4 if c.quantizer in BINARY_QUANTIZERS else 1e-3
    c.ssp_delta0 = 0.5
    c.ssp_decay_epoch = 4
    c.pretrain_epochs = 3
    c.pretrain_optimizer = "sgd"
    c.pretrain_learning_rate = 0.05
    c.pretrain_lr_decay_epochs = (2,)
    c.bn_reestimation_batches = 20
    return c


METHOD_TOKENS = ("plain", "residual", "ag", "ssp", "blockdrop", "layerdrop", "wa", "additional_losses", "kd",
                 "layerwise", "blockwise", "base")


def apply_method(c: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
    """Apply a method string such as ``"plain_ag_ssp"``, ``"residual_kd"``, ``"blockdrop_wa"``.

    plain/residual: skip connections; ag: the auxiliary gradient module; ssp / blockdrop:
    SSP with block fragments; layerdrop: layer fragments; wa: W/A draws; additional_losses /
    kd: the Table 3 baselines; layerwise / blockwise: AG placement; base: nothing.
    """
    rest = method.replace("additional_losses", "additional-losses")
    tokens = [t.replace("-", "_") for t in rest.split("_") if t]
    unknown = [t for t in tokens if t not in METHOD_TOKENS]
    if unknown:
        raise ValueError(f"unknown method token(s) {unknown} in {method!r}; allowed: {', '.join(METHOD_TOKENS)}.")
    c.plain = "residual" not in tokens
    c.aux = "ag" in tokens or "layerwise" in tokens or "blockwise" in tokens
    c.aux_placement = "layer" if "layerwise" in tokens else "block"
    c.ssp = any(t in tokens for t in ("ssp", "blockdrop", "layerdrop"))
    c.ssp_fragments = "layer" if "layerdrop" in tokens else "block"
    c.ssp_wa = "wa" in tokens
    c.baseline = ("additional_losses" if "additional_losses" in tokens else "kd" if "kd" in tokens else "none")
    return c


def split_variant(variant: str, variants) -> tuple[str, str]:
    """``"resnet18_plain_ag"`` -> ``("resnet18", "plain_ag")``, checking it is listed."""
    if variant not in variants:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(variants)}.")
    arch, _, method = variant.partition("_")
    return arch, method
