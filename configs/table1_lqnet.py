"""Table 1: LQ-Net (3-bit) ResNet-50 with skip connections, +/- AG, +/- SSP.

``--config=configs/table1_lqnet.py:ag_ssp`` (variants: baseline, ag, ssp, ag_ssp).
"""

from configs.table1_common import FIXED_POINT_LR, imagenet_row


def get_config(variant="baseline"):
    return imagenet_row("resnet50", "lqnet", 3, 3, variant, learning_rate=FIXED_POINT_LR)
