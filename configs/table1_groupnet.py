"""Table 1: GroupNet (5 binary bases) ResNet-18, +/- AG, +/- SSP (fragment = a block).

``--config=configs/table1_groupnet.py:ag_ssp`` (variants: baseline, ag, ssp, ag_ssp).
``num_bases`` is passed to ``agq_keras.build``.
"""

from configs.table1_common import BINARY_LR, imagenet_row


def get_config(variant="baseline"):
    c = imagenet_row("groupnet18", "groupnet", 1, 1, variant, learning_rate=BINARY_LR)
    c.num_bases = 5
    return c
