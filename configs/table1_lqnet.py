"""Table 1, LQ-Net rows: 3-bit LQ-Net ResNet-50 (with skip connections) on ImageNet, +- AG, +- SSP.

Run: --config=table1_lqnet.py:resnet50_residual_ag_ssp"""

from agq_keras.configs.base import apply_method, get_base_config, imagenet_recipe, split_variant

VARIANTS = tuple(f"resnet50_residual_{m}" for m in ("base", "ag", "ssp", "ag_ssp"))


def get_config(variant: str = "resnet50_residual_ag_ssp"):
    arch, method = split_variant(variant, VARIANTS)
    c = get_base_config()
    c.arch, c.quantizer, c.w_bits, c.a_bits = arch, "lqnet", 3, 3
    return apply_method(imagenet_recipe(c), method)
