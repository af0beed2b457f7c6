"""Table 2, LQ-Nets rows: 2-bit LQ-Net ResNet-34 on ImageNet: the residual baseline, plain,
plain + AG, plain + AG + SSP.

Run: --config=table2_lqnet.py:resnet34_plain_ag_ssp"""

from agq_keras.configs.base import apply_method, get_base_config, imagenet_recipe, split_variant

VARIANTS = tuple(f"resnet34_{m}" for m in ("residual_base", "plain_base", "plain_ag", "plain_ag_ssp"))


def get_config(variant: str = "resnet34_plain_ag"):
    arch, method = split_variant(variant, VARIANTS)
    c = get_base_config()
    c.arch, c.quantizer, c.w_bits, c.a_bits = arch, "lqnet", 2, 2
    return apply_method(imagenet_recipe(c), method)
