"""Fashion-MNIST twins for every quantizer family (the CPU-scale side of Tables 1, 2 and 4).

Variants are ``<quantizer>_<method>[_quick]``:

* quantizer: dorefa, lqnet, lsq, pact (plain/residual ResNet-20, W2/A2); bireal (Bi-Real
  ResNet-20 twin, W1/A1); groupnet (GroupNet ResNet-20 twin, 5 bases, W1/A1);
* method: as ``agq_keras.configs.base.apply_method`` (``plain_ag``, ``residual_ag_ssp``, ...);
* ``_quick``: one epoch on 6000 training images, batch 64, Adam 2e-3, no stage 1 — the
  short learning check quoted in the quantizer notes; without it, the scaled-down two-stage
  recipe (``agq_keras.configs.base.cpu_recipe``).

Run: --config=fmnist_zoo.py:lqnet_plain_ag_quick"""

from agq_keras.configs.base import apply_method, cpu_recipe, get_base_config

FAMILIES = {  # quantizer -> (arch, w_bits, a_bits)
    "dorefa": ("resnet20", 2, 2),
    "lqnet": ("resnet20", 2, 2),
    "lsq": ("resnet20", 2, 2),
    "pact": ("resnet20", 2, 2),
    "bireal": ("birealnet20", 1, 1),
    "groupnet": ("groupnet20", 1, 1),
}
METHODS = ("plain_base", "plain_ag", "plain_ag_ssp", "residual_base", "residual_ag", "residual_ag_ssp")
VARIANTS = tuple(f"{q}_{m}{s}" for q in FAMILIES for m in METHODS for s in ("", "_quick"))


def get_config(variant: str = "lqnet_plain_ag_quick"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: <quantizer>_<method>[_quick] with quantizer in "
                         f"{', '.join(FAMILIES)} and method in {', '.join(METHODS)}.")
    quick = variant.endswith("_quick")
    quantizer, _, method = variant.removesuffix("_quick").partition("_")
    c = get_base_config()
    c.arch, c.w_bits, c.a_bits = FAMILIES[quantizer]
    c.quantizer = quantizer
    if quantizer == "groupnet":
        c.num_bases = 5
    c = apply_method(cpu_recipe(c), method)
    if quick:
        c.train_subset, c.test_subset, c.epochs, c.batch_size = 6000, 0, 1, 64
        c.learning_rate, c.lr_decay_epochs, c.pretrain_epochs, c.ssp_decay_epoch = 2e-3, (), 0, 1
    return c
