"""Table 4: SSP policies (blockdrop / layerdrop, +- W/A) on a binary GroupNet ResNet-18 with 5 bases
on ImageNet, with skip connections.

Run: --config=table4.py:groupnet18_residual_blockdrop_wa"""

from agq_keras.configs.base import apply_method, get_base_config, imagenet_recipe, split_variant

VARIANTS = tuple(f"groupnet18_residual_{m}" for m in ("base", "blockdrop", "layerdrop", "blockdrop_wa",
                                                       "layerdrop_wa"))


def get_config(variant: str = "groupnet18_residual_blockdrop"):
    arch, method = split_variant(variant, VARIANTS)
    c = get_base_config()
    c.arch, c.quantizer, c.w_bits, c.a_bits, c.num_bases = arch, "groupnet", 1, 1, 5
    return apply_method(imagenet_recipe(c), method)
