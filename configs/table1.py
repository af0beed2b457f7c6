"""Table 1: 2-bit DoReFa-Net ResNet-50 (with skip connections) on ImageNet, +- AG, +- SSP.

Run: --config=table1.py:resnet50_residual_ag_ssp"""

from agq_keras.configs.base import apply_method, get_base_config, imagenet_recipe, split_variant

VARIANTS = ("resnet50_residual_base", "resnet50_residual_ag", "resnet50_residual_ssp", "resnet50_residual_ag_ssp")


def get_config(variant: str = "resnet50_residual_ag_ssp"):
    arch, method = split_variant(variant, VARIANTS)
    c = get_base_config()
    c.arch, c.quantizer, c.w_bits, c.a_bits = arch, "dorefa", 2, 2
    return apply_method(imagenet_recipe(c), method)
