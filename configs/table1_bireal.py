"""Table 1: Bi-Real Net ResNet-18 (1-bit W/A), +/- AG, +/- SSP.

``--config=configs/table1_bireal.py:ag`` (variants: baseline, ag, ssp, ag_ssp).
"""

from configs.table1_common import BINARY_LR, imagenet_row


def get_config(variant="baseline"):
    return imagenet_row("birealnet18", "bireal", 1, 1, variant, learning_rate=BINARY_LR)
