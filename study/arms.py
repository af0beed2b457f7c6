"""The study's vocabulary: a run (network, method, seed), the methods in the report's row order, the depths.

A run's name ``<arch>_<method>_s<seed>`` is its folder in the workdir and in the committed record (docs/runs).
"""

from __future__ import annotations

import dataclasses


DEPTHS = ("resnet20", "resnet32", "resnet56")


DEEP_ARCHS = ("resnet32", "resnet56")


# Row order and labels of the table (the bit widths and the quantizer are columns of their own).
METHODS = (
    ("fp_residual", "full precision (residual)"),
    ("fp_plain", "full precision (plain)"),
    ("residual", "residual"),
    ("residual_ag", "residual + AG"),
    ("residual_ag_ssp", "residual + AG + SSP"),
    ("plain", "plain"),
    ("plain_ag", "plain + AG"),
    ("plain_ag_ssp", "plain + AG + SSP"),
    ("plain_2x", "plain, 2x epochs (compute-matched to AG)"),
    ("plain_ag_relu", "plain + AG, ReLU after H's sums"),
    ("lsq_plain", "plain, LSQ"),
    ("lsq_plain_ag", "plain + AG, LSQ"),
    ("float", "float"),
    ("4bit", "4-bit"),
    ("4bit_ag", "4-bit + AG"),
    ("4bit_2x", "4-bit, 2x epochs (compute-matched to AG)"),
    ("float_2x", "float, 2x epochs"),
    ("staged_4bit", "4-bit, two-stage (from float F)"),
    ("staged_4bit_ag", "4-bit + AG, two-stage (from float F)"),
    ("staged_4bit_2x", "4-bit, two-stage, 2x epochs (compute-matched to AG)"),
    ("staged_4bit_ag_fpn", "4-bit + AG, adaptors on the FPN levels too, two-stage"),
)


LABELS = dict(METHODS)


@dataclasses.dataclass(frozen=True)
class Run:
    arch: str
    method: str  # a key of METHODS
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.arch}_{self.method}_s{self.seed}"

    @property
    def init_from(self) -> str | None:
        """The full-precision run whose F initialises this one (stage 1, seed 0), or None (a full-precision
        run, a detector trained from scratch)."""
        if self.arch.startswith("det_"):
            return Run(self.arch, "float").name if self.method.startswith("staged_") else None
        if self.method.startswith("fp_"):
            return None
        return Run(self.arch, "fp_residual" if self.method.startswith("residual") else "fp_plain").name

    @property
    def initialises(self) -> bool:
        """Whether other runs start from this run's F (it is kept in the record): seed 0 of a full-precision
        classifier, of the float detector."""
        return self.seed == 0 and (self.method.startswith("fp_") or
                                   (self.arch.startswith("det_") and self.method == "float"))

