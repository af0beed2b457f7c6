"""Table 6: 2-bit DoReFa ResNet-18 (CIFAR stem: 3x3 stride-1 first conv, no max-pool) on CIFAR-100,
residual / plain, +- AG, +- SSP. The ImageNet recipe's optimiser and schedule are kept (the
paper gives no CIFAR-specific one).

Run: --config=table6.py:resnet18_plain_ag_ssp"""

from agq_keras.configs.base import apply_method, get_base_config, imagenet_recipe, split_variant

VARIANTS = tuple(f"resnet18_{m}" for m in ("residual_base", "residual_ag", "plain_base", "plain_ag",
                                           "plain_ag_ssp"))


def get_config(variant: str = "resnet18_plain_ag"):
    arch, method = split_variant(variant, VARIANTS)
    c = get_base_config()
    c.arch, c.quantizer, c.w_bits, c.a_bits = arch, "dorefa", 2, 2
    c = imagenet_recipe(c)
    c.dataset, c.stem, c.batch_size = "cifar100", "cifar", 128
    return apply_method(c, method)
