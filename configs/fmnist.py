"""CPU-scale twins of the paper's experiments: Fashion-MNIST, ResNet-20/32/56, 2-bit DoReFa, the
two-stage recipe scaled down (agq_keras.configs.base.cpu_recipe). Every method of Tables 1-5 is available:

  --config=fmnist.py:resnet20_plain_ag            (Table 2 twin)
  --config=fmnist.py:resnet32_residual_ag_ssp     (Table 1 twin)
  --config=fmnist.py:resnet20_plain_kd            (Table 3 twin)
  --config=fmnist.py:resnet20_residual_layerdrop_wa  (Table 4 twin, DoReFa)
  --config=fmnist.py:resnet56_plain_layerwise     (Table 5 twin)

and a pre-activation MobileNetV2 (alpha 0.5, the small stem for 28x28; 4-bit with the built-in MobileNetV2's
recipe -- LSQ with per-channel weight steps and a linear bottleneck, agq_keras.models.mobilenetv2 -- or full
precision for ``_float``, the same net), the float / k-bit / k-bit + AG comparison of issues 11 and 29:

  --config=fmnist.py:mobilenetv2_residual_float / mobilenetv2_residual_base / mobilenetv2_residual_ag
  (and the plain_* twins: no skip connections)
"""

from agq_keras.configs.base import apply_method, cpu_recipe, get_base_config, split_variant

METHODS = ("residual_base", "residual_ag", "residual_ssp", "residual_ag_ssp", "plain_base", "plain_ag",
           "plain_ssp", "plain_ag_ssp", "residual_additional_losses", "residual_kd", "plain_additional_losses",
           "plain_kd", "residual_blockdrop", "residual_layerdrop", "residual_blockdrop_wa",
           "residual_layerdrop_wa", "plain_blockwise", "plain_layerwise")
MOBILENET_METHODS = ("residual_float", "residual_base", "residual_ag", "plain_float", "plain_base", "plain_ag")
MOBILENET_ALPHA, MOBILENET_BITS = 0.5, 4
VARIANTS = tuple(f"{a}_{m}" for a in ("resnet20", "resnet32", "resnet56") for m in METHODS) + tuple(
    f"mobilenetv2_{m}" for m in MOBILENET_METHODS)


def get_config(variant: str = "resnet20_plain_ag"):
    arch, method = split_variant(variant, VARIANTS)
    c = get_base_config()
    c.arch, c.quantizer, c.w_bits, c.a_bits = arch, "dorefa", 2, 2
    if arch != "mobilenetv2":
        return apply_method(cpu_recipe(c), method)
    c.stem, c.alpha = "cifar", MOBILENET_ALPHA  # 28x28 -> a 4x4 final map (the arch downsamples by 8)
    c.quantizer = "lsq"  # build("mobilenetv2")'s recipe (linear bottleneck); issue 11's table ran 4-bit DoReFa
    c.bottleneck = "linear"
    c.w_bits = c.a_bits = MOBILENET_BITS
    if method.endswith("_float"):
        method = method.removesuffix("_float") + "_base"
        c.w_bits = c.a_bits = 32  # first/last layers follow at 32 bits (first_last_bits 0)
    c = apply_method(cpu_recipe(c), method)
    if c.w_bits == 32:
        c.pretrain_epochs = 0  # stage 1 would train this very net
    return c
