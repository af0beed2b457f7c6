"""Table 1, Bi-Real rows: Bi-Real Net ResNet-18 (a real-valued shortcut around every binary conv)
on ImageNet, +- AG, +- SSP. Binary: learning rate 5e-4 (section 4.1).

Run: --config=table1_bireal.py:birealnet18_residual_ag_ssp"""

from agq_keras.configs.base import apply_method, get_base_config, imagenet_recipe, split_variant

VARIANTS = tuple(f"birealnet18_residual_{m}" for m in ("base", "ag", "ssp", "ag_ssp"))


def get_config(variant: str = "birealnet18_residual_ag_ssp"):
    arch, method = split_variant(variant, VARIANTS)
    c = get_base_config()
    c.arch, c.quantizer, c.w_bits, c.a_bits = arch, "bireal", 1, 1
    return apply_method(imagenet_recipe(c), method)
