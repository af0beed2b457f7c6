"""Table 2: LQ-Nets ResNet-34, 2-bit: residual baseline, plain, plain + AG, plain + AG + SSP.

``--config=configs/table2_lqnet_resnet34.py:plain_ag`` (variants: baseline, plain,
plain_ag, plain_ag_ssp).
"""

from configs.table1_common import FIXED_POINT_LR, PLAIN_VARIANTS, imagenet_row


def get_config(variant="baseline"):
    return imagenet_row("resnet34", "lqnet", 2, 2, variant, learning_rate=FIXED_POINT_LR,
                        allowed=PLAIN_VARIANTS)
