"""The paper's tables (Zhuang et al., CVPR 2020) as data: every row of Tables 1-6 is a variant here.

Run: --config=paper.py:TABLE/VARIANT, e.g. ``paper.py:table6/resnet18_plain_ag_ssp``,
``paper.py:table1_lqnet/resnet50_residual_ag_ssp``. VARIANT is ``<arch>_<method>`` (the method as
:func:`~agq_keras.configs.base.apply_method` reads it); every row uses the paper's two-stage ImageNet recipe
(:func:`~agq_keras.configs.base.imagenet_recipe`), then the fields of its table.
"""

from agq_keras.configs.base import apply_method, get_base_config, imagenet_recipe, split_variant


def _rows(archs, methods):
    return tuple(f"{a}_{m}" for a in archs for m in methods)


# table -> what it measures, the quantizer and its bit width (weights and activations), the config fields it
# sets on top of the recipe, and its rows.
TABLES = {
    "table1": dict(about="2-bit DoReFa-Net ResNet-50 (with skip connections) on ImageNet, +- AG, +- SSP",
                   quantizer="dorefa", bits=2, fields={},
                   rows=_rows(["resnet50"], ["residual_base", "residual_ag", "residual_ssp", "residual_ag_ssp"])),
    "table1_lqnet": dict(about="Table 1's LQ-Net rows: 3-bit LQ-Net ResNet-50, +- AG, +- SSP",
                         quantizer="lqnet", bits=3, fields={},
                         rows=_rows(["resnet50"], ["residual_base", "residual_ag", "residual_ssp",
                                                   "residual_ag_ssp"])),
    "table1_bireal": dict(about="Table 1's Bi-Real rows: Bi-Real Net ResNet-18 (a real-valued shortcut around "
                                "every binary conv), +- AG, +- SSP; binary: learning rate 5e-4",
                          quantizer="bireal", bits=1, fields={},
                          rows=_rows(["birealnet18"], ["residual_base", "residual_ag", "residual_ssp",
                                                       "residual_ag_ssp"])),
    "table1_groupnet": dict(about="Table 1's GroupNet rows: GroupNet ResNet-18, 5 binary bases per block, +- AG, "
                                  "+- SSP (SSP fragment = a block); binary: learning rate 5e-4",
                            quantizer="groupnet", bits=1, fields={"num_bases": 5},
                            rows=_rows(["groupnet18"], ["residual_base", "residual_ag", "residual_ssp",
                                                        "residual_ag_ssp"])),
    "table2": dict(about="plain (no skip connections) 2-bit DoReFa ResNet-18/34 on ImageNet, +- AG, +- SSP, and "
                         "their residual 2-bit references",
                   quantizer="dorefa", bits=2, fields={},
                   rows=_rows(["resnet18", "resnet34"], ["residual_base", "plain_base", "plain_ag", "plain_ssp",
                                                         "plain_ag_ssp"])),
    "table2_lqnet": dict(about="Table 2's LQ-Net rows: 2-bit LQ-Net ResNet-34: the residual baseline, plain, "
                               "plain + AG, plain + AG + SSP",
                         quantizer="lqnet", bits=2, fields={},
                         rows=_rows(["resnet34"], ["residual_base", "plain_base", "plain_ag", "plain_ag_ssp"])),
    "table3": dict(about="AG against the baselines of section 3.1.3 (additional losses with alpha = 0.01 at the "
                         "downsampling blocks; KD with a jointly trained full-precision teacher of the same "
                         "architecture), 2-bit DoReFa ResNet-18/34, with and without skip connections",
                   quantizer="dorefa", bits=2, fields={"aux_alpha": 0.01, "kd_beta": 1.0},
                   rows=_rows([f"{a}_{s}" for a in ("resnet18", "resnet34") for s in ("residual", "plain")],
                              ["additional_losses", "kd", "ag"])),
    "table4": dict(about="SSP policies (blockdrop / layerdrop, +- W/A) on a binary GroupNet ResNet-18 with 5 bases, "
                         "with skip connections",
                   quantizer="groupnet", bits=1, fields={"num_bases": 5},
                   rows=_rows(["groupnet18"], ["residual_base", "residual_blockdrop", "residual_layerdrop",
                                               "residual_blockdrop_wa", "residual_layerdrop_wa"])),
    "table5": dict(about="blockwise vs layerwise AG, plain 2-bit DoReFa ResNet-34",
                   quantizer="dorefa", bits=2, fields={},
                   rows=_rows(["resnet34"], ["plain_blockwise", "plain_layerwise"])),
    "table6": dict(about="2-bit DoReFa ResNet-18 (CIFAR stem: 3x3 stride-1 first conv, no max-pool) on CIFAR-100, "
                         "residual / plain, +- AG, +- SSP; the ImageNet recipe's optimiser and schedule are kept "
                         "(the paper gives no CIFAR-specific one)",
                   quantizer="dorefa", bits=2, fields={"dataset": "cifar100", "stem": "cifar", "batch_size": 128},
                   rows=_rows(["resnet18"], ["residual_base", "residual_ag", "residual_ag_ssp", "plain_base",
                                             "plain_ag", "plain_ag_ssp"])),
}
VARIANTS = tuple(f"{table}/{row}" for table, spec in TABLES.items() for row in spec["rows"])


def get_config(variant: str | None = None):
    """The config of one row, ``TABLE/VARIANT`` (:data:`VARIANTS`)."""
    if variant not in VARIANTS:
        given = "no variant" if variant is None else f"unknown variant {variant!r}"
        raise ValueError(f"{given} (--config=paper.py:TABLE/VARIANT); allowed: {', '.join(VARIANTS)}.")
    table, row = variant.split("/")
    spec = TABLES[table]
    arch, method = split_variant(row, spec["rows"])
    c = get_base_config()
    c.arch, c.quantizer, c.w_bits, c.a_bits = arch, spec["quantizer"], spec["bits"], spec["bits"]
    c = imagenet_recipe(c)
    for key, value in spec["fields"].items():
        c[key] = value
    return apply_method(c, method)
