"""Shared settings of the ImageNet rows of Tables 1, 2 and 4 (paper §4.1).

Rows differ in arch / quantizer / bits / skip connections and in the
variant: ``"baseline"``, ``"ag"``, ``"ssp"``, ``"ag_ssp"`` (Table 2 adds
``"plain"``, ``"plain_ag"``, ``"plain_ag_ssp"``).
"""

import ml_collections

from configs.base import get_base_config

VARIANTS = ("baseline", "ag", "ssp", "ag_ssp")
PLAIN_VARIANTS = ("baseline", "plain", "plain_ag", "plain_ag_ssp")
FIXED_POINT_LR = 1e-3  # §4.1: fixed-point methods
BINARY_LR = 5e-4  # §4.1: BNNs (Bi-Real, GroupNet)


def ssp_config(enabled=False, fragment="block", wa=False):
    """SSP settings (wired by the training CLI): delta 0.5 decayed linearly to 0 by epoch 20."""
    return ml_collections.ConfigDict(
        {"enabled": enabled, "fragment": fragment, "wa": wa, "delta0": 0.5, "decay_epoch": 20})


def imagenet_row(arch, quantizer, w_bits, a_bits, variant, *, learning_rate, allowed=VARIANTS):
    if variant not in allowed:
        raise ValueError(f"Unknown variant {variant!r}; allowed: {', '.join(allowed)}.")
    c = get_base_config()
    c.arch = arch
    c.quantizer = quantizer
    c.w_bits = w_bits
    c.a_bits = a_bits
    c.plain = variant.startswith("plain")
    c.aux = "ag" in variant.split("_")
    c.aux_lambda = 1.0
    c.aux_placement = "block"
    c.ssp = ssp_config(enabled="ssp" in variant.split("_"))
    c.dataset = "imagenet2012"
    c.epochs = 35
    c.lr_decay_epochs = (25, 30)
    c.batch_size = 256
    c.optimizer = "adam"
    c.learning_rate = learning_rate
    return c


def fmnist_twin(arch, quantizer, w_bits, a_bits, *, plain, learning_rate=2e-3, num_bases=None):
    """CPU-scale Fashion-MNIST twin: one epoch on 6000 images with AG, tested on all 10000."""
    c = get_base_config()
    c.arch = arch
    c.quantizer = quantizer
    c.w_bits = w_bits
    c.a_bits = a_bits
    c.plain = plain
    c.aux = True
    c.ssp = ssp_config(enabled=False)
    c.train_subset = 6000
    c.test_subset = 10000
    c.epochs = 1
    c.batch_size = 64
    c.learning_rate = learning_rate
    if num_bases is not None:
        c.num_bases = num_bases
    return c
