"""The study's statistics: Welch's two-sided t-test (no SciPy: the regularized incomplete beta function by its
continued fraction) and the claims the report decides with it (a claim holds when p < :data:`ALPHA` and the
delta is above its threshold, the reverse is measured when p < ALPHA and it is below, it cannot be told
otherwise). Read by :mod:`study.runner` (the follow-up rule) and :mod:`study.report`.
"""

from __future__ import annotations

import math
import statistics

from study.arms import DEPTHS


def mean_std(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


ALPHA = 0.05  # a verdict is reached when Welch's two-sided t-test gives p < ALPHA


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (modified Lentz), using
    I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly (x > (a + 1) / (a + b + 2))."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    f, c, d = tiny, tiny, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            numerator = 1.0
        elif i % 2:
            numerator = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            numerator = (m * (b - m) * x) / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-14:
            break
    return front * f


def welch(delta: float, terms, threshold: float = 0.0) -> dict:
    """Welch's two-sided t-test of ``delta`` (a sum of group means with signs) against ``threshold``.

    ``terms``: ``(sample variance, n)`` of each group in ``delta``. se = sqrt(sum s_i^2 / n_i); t = (delta -
    threshold) / se; the Welch-Satterthwaite degrees of freedom df = se^4 / sum((s_i^2 / n_i)^2 / (n_i - 1));
    p = I_{df / (df + t^2)}(df / 2, 1 / 2), the two-sided tail of Student's t with df degrees of freedom.
    Returns ``{"se", "t", "df", "p"}`` (None each where a group has one value)."""
    terms = list(terms)
    if any(n < 2 or var is None for var, n in terms):
        return {"se": None, "t": None, "df": None, "p": None}
    parts = [var / n for var, n in terms]
    se = math.sqrt(sum(parts))
    if se == 0.0:
        return {"se": 0.0, "t": None, "df": None, "p": 1.0 if delta == threshold else 0.0}
    t = (delta - threshold) / se
    df = se ** 4 / sum(q * q / (n - 1) for q, (_, n) in zip(parts, terms) if q > 0)
    return {"se": se, "t": t, "df": df, "p": _betainc(df / 2.0, 0.5, df / (df + t * t))}


# The claims of the verdict table: (claim, arm a, arm b, the nets it is about, the paper's delta or None);
# the delta is a - b (top-1 points).
CLAIMS = (
    ("AG improves plain nets", "plain_ag", "plain", "resnet", 3.3),
    ("AG beats the compute-matched baseline (plain, 2x epochs)", "plain_ag", "plain_2x", "resnet", None),
    ("SSP adds on top of AG", "plain_ag_ssp", "plain_ag", "resnet", 0.5),
    ("AG helps LSQ", "lsq_plain_ag", "lsq_plain", "resnet", None),
    ("ReLU after H's sums beats the linear sum", "plain_ag_relu", "plain_ag", "resnet", None),
    ("AG improves residual nets", "residual_ag", "residual", "resnet", 0.7),
    ("AG improves the k-bit MobileNetV2", "residual_ag", "residual", "mobilenetv2", None),
)


HOLDS, FAILS, CANNOT = "holds", "does not hold (the reverse is measured)", "cannot tell at this scale"


def compare(a: list[dict], b: list[dict], key: str = "top1", threshold: float = 0.0) -> dict:
    """The ``key`` delta of two arms (mean a - mean b, points), its spread, Welch's p and the verdict on the
    claim ``delta > threshold``.

    spread = the standard error of the difference of the means, sqrt(s_a^2/n_a + s_b^2/n_b) (sample stds
    over seeds); p = :func:`welch`'s two-sided p of ``delta = threshold``. The claim holds when p < ALPHA and
    delta > threshold, the reverse is measured when p < ALPHA and delta < threshold, and it cannot be told
    otherwise (or with a single seed on either side)."""
    ma, sa = mean_std(g[key] for g in a)
    mb, sb = mean_std(g[key] for g in b)
    delta = ma - mb
    test = welch(delta, [(None if sa is None else sa ** 2, len(a)), (None if sb is None else sb ** 2, len(b))],
                 threshold)
    loss = mean_std(g["train_loss"] for g in a)[0] / mean_std(g["train_loss"] for g in b)[0] - 1
    return {"delta": delta, "spread": test["se"], "p": test["p"], "verdict": _verdict(delta, test["p"], threshold),
            "train_loss_change": loss, "seeds": (len(a), len(b))}


def _verdict(delta: float, p: float | None, threshold: float = 0.0) -> str:
    if p is None:
        return CANNOT + " (one seed)"
    return CANNOT if p >= ALPHA else HOLDS if delta > threshold else FAILS


def verdicts(groups: dict, key: str = "top1") -> list[dict]:
    """One row per claim and network where both arms have finished runs, plus "AG helps more as depth
    grows" (the AG delta of the deepest ResNet measured minus ResNet-20's, Welch over its four arms). ``key``: the
    steadied top-1 (``"top1"``, the table's rule) or the raw one (``"raw_top1"``)."""
    rows = []
    for claim, a, b, family, paper in CLAIMS:
        archs = sorted({arch for arch, _ in groups if (arch, a) in groups and (arch, b) in groups})
        for arch in (x for x in archs if x.startswith(family)):
            rows.append({"claim": claim, "arch": arch, "arms": ((arch, a), (arch, b)), "paper": paper,
                         **compare(groups[(arch, a)], groups[(arch, b)], key)})
    ag = {r["arch"]: r for r in rows if r["claim"] == CLAIMS[0][0]}
    deep = [d for d in DEPTHS[1:] if d in ag]
    if "resnet20" in ag and deep:
        hi, lo = ag[deep[-1]], ag["resnet20"]
        delta = hi["delta"] - lo["delta"]
        terms = []
        for arm in hi["arms"] + lo["arms"]:  # the four groups of the difference of differences
            std = mean_std(g[key] for g in groups[arm])[1]
            terms.append((None if std is None else std ** 2, len(groups[arm])))
        test = welch(delta, terms)
        rows.append({"claim": "AG helps more as depth grows", "arch": f"{deep[-1]} vs resnet20",
                     "arms": hi["arms"] + lo["arms"], "paper": None, "delta": delta, "spread": test["se"],
                     "p": test["p"], "verdict": _verdict(delta, test["p"]), "train_loss_change": None,
                     "seeds": hi["seeds"] + lo["seeds"]})
    return rows


# The detection claims (issue 12): (claim, arm a, arm b, threshold): AP(a) - AP(b) > threshold.
DETECTION_CLAIMS = (
    ("4-bit + AG is within 1 AP of float", "4bit_ag", "float", -1.0),
    ("4-bit + AG is above 4-bit alone", "4bit_ag", "4bit", 0.0),
    ("4-bit + AG is above the compute-matched 4-bit (2x epochs)", "4bit_ag", "4bit_2x", 0.0),
    ("two-stage 4-bit + AG is within 1 AP of float", "staged_4bit_ag", "float", -1.0),
    ("two-stage 4-bit + AG is within 1 AP of float at 2x epochs (as many epochs in all)", "staged_4bit_ag",
     "float_2x", -1.0),
    ("two-stage 4-bit + AG is above two-stage 4-bit alone", "staged_4bit_ag", "staged_4bit", 0.0),
    ("two-stage 4-bit + AG is above the compute-matched two-stage 4-bit (2x epochs)", "staged_4bit_ag",
     "staged_4bit_2x", 0.0),
    ("two-stage: AG with FPN adaptors too is above AG with block adaptors only", "staged_4bit_ag_fpn",
     "staged_4bit_ag", 0.0),
)


def detection_verdicts(groups: dict) -> list[dict]:
    """One row per detection claim and detector network where both arms have finished runs."""
    rows = []
    for arch in sorted({a for a, _ in groups if a.startswith("det_")}):
        for claim, a, b, threshold in DETECTION_CLAIMS:
            if (arch, a) in groups and (arch, b) in groups:
                rows.append({"claim": claim, "arch": arch, "arms": ((arch, a), (arch, b)), "threshold": threshold,
                             **compare(groups[(arch, a)], groups[(arch, b)], "ap", threshold)})
    return rows

