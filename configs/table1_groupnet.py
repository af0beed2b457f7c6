"""Table 1, GroupNet rows: GroupNet ResNet-18 with 5 binary bases per block on ImageNet, +- AG,
+- SSP (SSP fragment = a block). Binary: learning rate 5e-4 (section 4.1).

Run: --config=table1_groupnet.py:groupnet18_residual_ag_ssp"""

from agq_keras.configs.base import apply_method, get_base_config, imagenet_recipe, split_variant

VARIANTS = tuple(f"groupnet18_residual_{m}" for m in ("base", "ag", "ssp", "ag_ssp"))


def get_config(variant: str = "groupnet18_residual_ag_ssp"):
    arch, method = split_variant(variant, VARIANTS)
    c = get_base_config()
    c.arch, c.quantizer, c.w_bits, c.a_bits, c.num_bases = arch, "groupnet", 1, 1, 5
    return apply_method(imagenet_recipe(c), method)
