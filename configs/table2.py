"""Table 2: plain (no skip connections) 2-bit DoReFa ResNet-18/34 on ImageNet, +- AG, +- SSP,
and their residual 2-bit references.

Run: --config=table2.py:resnet34_plain_ag"""

from agq_keras.configs.base import apply_method, get_base_config, imagenet_recipe, split_variant

VARIANTS = tuple(f"{a}_{m}" for a in ("resnet18", "resnet34")
                 for m in ("residual_base", "plain_base", "plain_ag", "plain_ssp", "plain_ag_ssp"))


def get_config(variant: str = "resnet18_plain_ag"):
    arch, method = split_variant(variant, VARIANTS)
    c = get_base_config()
    c.arch, c.quantizer, c.w_bits, c.a_bits = arch, "dorefa", 2, 2
    return apply_method(imagenet_recipe(c), method)
