"""Table 4: SSP policies (blockdrop / layerdrop, +- W/A) on a binary GroupNet ResNet-18 (5 bases)
on ImageNet, with skip connections. The quantizer string "groupnet" is passed through to
agq_keras.build (the family is registered by agq_keras.quantizers when available).

Run: --config=configs/table4.py:resnet18_residual_blockdrop_wa"""

from configs.base import apply_method, get_base_config, imagenet_recipe, split_variant

VARIANTS = tuple(f"resnet18_residual_{m}" for m in ("base", "blockdrop", "layerdrop", "blockdrop_wa",
                                                     "layerdrop_wa"))


def get_config(variant: str = "resnet18_residual_blockdrop"):
    arch, method = split_variant(variant, VARIANTS)
    c = get_base_config()
    c.arch, c.quantizer, c.w_bits, c.a_bits = arch, "groupnet", 1, 1
    return apply_method(imagenet_recipe(c), method)
