"""Table 3: AG against the baselines of section 3.1.3 (additional losses with alpha = 0.01 at the
downsampling blocks; KD with a jointly trained full-precision teacher of the same architecture),
2-bit DoReFa ResNet-18/34 on ImageNet, with and without skip connections.

Run: --config=table3.py:resnet18_plain_kd"""

from agq_keras.configs.base import apply_method, get_base_config, imagenet_recipe, split_variant

VARIANTS = tuple(f"{a}_{s}_{m}" for a in ("resnet18", "resnet34") for s in ("residual", "plain")
                 for m in ("additional_losses", "kd", "ag"))


def get_config(variant: str = "resnet18_plain_ag"):
    arch, method = split_variant(variant, VARIANTS)
    c = get_base_config()
    c.arch, c.quantizer, c.w_bits, c.a_bits = arch, "dorefa", 2, 2
    c.aux_alpha = 0.01
    c.kd_beta = 1.0
    return apply_method(imagenet_recipe(c), method)
