"""CPU-scale twins of the paper's experiments: Fashion-MNIST, ResNet-20/32/56, 2-bit DoReFa, the
two-stage recipe scaled down (agq_keras.configs.base.cpu_recipe). Every method of Tables 1-5 is available:

  --config=fmnist.py:resnet20_plain_ag            (Table 2 twin)
  --config=fmnist.py:resnet32_residual_ag_ssp     (Table 1 twin)
  --config=fmnist.py:resnet20_plain_kd            (Table 3 twin)
  --config=fmnist.py:resnet20_residual_layerdrop_wa  (Table 4 twin, DoReFa)
  --config=fmnist.py:resnet56_plain_layerwise     (Table 5 twin)
"""

from agq_keras.configs.base import apply_method, cpu_recipe, get_base_config, split_variant

METHODS = ("residual_base", "residual_ag", "residual_ssp", "residual_ag_ssp", "plain_base", "plain_ag",
           "plain_ssp", "plain_ag_ssp", "residual_additional_losses", "residual_kd", "plain_additional_losses",
           "plain_kd", "residual_blockdrop", "residual_layerdrop", "residual_blockdrop_wa",
           "residual_layerdrop_wa", "plain_blockwise", "plain_layerwise")
VARIANTS = tuple(f"{a}_{m}" for a in ("resnet20", "resnet32", "resnet56") for m in METHODS)


def get_config(variant: str = "resnet20_plain_ag"):
    arch, method = split_variant(variant, VARIANTS)
    c = get_base_config()
    c.arch, c.quantizer, c.w_bits, c.a_bits = arch, "dorefa", 2, 2
    return apply_method(cpu_recipe(c), method)
