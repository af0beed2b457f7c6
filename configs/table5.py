"""Table 5: blockwise vs layerwise AG, plain 2-bit DoReFa ResNet-34 on ImageNet.

Run: --config=table5.py:resnet34_plain_layerwise"""

from agq_keras.configs.base import apply_method, get_base_config, imagenet_recipe, split_variant

VARIANTS = ("resnet34_plain_blockwise", "resnet34_plain_layerwise")


def get_config(variant: str = "resnet34_plain_blockwise"):
    arch, method = split_variant(variant, VARIANTS)
    c = get_base_config()
    c.arch, c.quantizer, c.w_bits, c.a_bits = arch, "dorefa", 2, 2
    return apply_method(imagenet_recipe(c), method)
