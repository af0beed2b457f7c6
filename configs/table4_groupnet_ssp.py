"""Table 4: SSP policies on GroupNet (5 bases) ResNet-18 (no AG).

Variants: baseline, blockdrop, layerdrop, blockdrop_wa, layerdrop_wa
(fragment = a residual block or one conv; ``wa``: also randomise weights
and activations separately). ``--config=configs/table4_groupnet_ssp.py:blockdrop_wa``.
"""

from configs.table1_common import BINARY_LR, imagenet_row, ssp_config

POLICIES = {
    "baseline": None,
    "blockdrop": ("block", False),
    "layerdrop": ("layer", False),
    "blockdrop_wa": ("block", True),
    "layerdrop_wa": ("layer", True),
}


def get_config(variant="baseline"):
    if variant not in POLICIES:
        raise ValueError(f"Unknown variant {variant!r}; allowed: {', '.join(POLICIES)}.")
    c = imagenet_row("groupnet18", "groupnet", 1, 1, "baseline", learning_rate=BINARY_LR)
    c.num_bases = 5
    if POLICIES[variant] is not None:
        fragment, wa = POLICIES[variant]
        c.ssp = ssp_config(enabled=True, fragment=fragment, wa=wa)
    return c
