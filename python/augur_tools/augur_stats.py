"""augur's rollback statistic, offline: the same always-valid sequential tests
the filter runs (src/rollback/stats.rs), computed with SciPy.

Harm test (one-sided): `bad_on` of `bad` bad events landed on the tested arm,
which holds a share `pi` of the randomised requests. Under "no harm" each bad
event lands there with probability at most `pi`; the mixture likelihood ratio
against a uniform prior on the harmful side,

    M = ∫_pi^1 q^x (1-q)^(k-x) dq / ((1-pi) pi^x (1-pi)^(k-x)),

is a supermartingale, so P(M ever ≥ 1/α) ≤ α however often it is looked at.

No-harm test (the block probe's lift): the likelihood ratio of "no harm" (each
event on the probed arm with probability `pi`) against a harm that multiplies
its bad rate by `rho` (probability rho·pi / (rho·pi + 1 − pi)), a supermartingale
under any harm of `rho` or more.

Sample-ratio test (two-sided): `x` of `n` draws where a share `p0` was
configured; M = B(x+1, n-x+1) / (p0^x (1-p0)^(n-x)).

`levels(alpha, features)` is the filter's budget split; tests compare both
implementations through `augur stat`.
"""

import math

from scipy import special, stats

KPIS = 3
CELLS = 25
PAIRS = 265
SCREEN_ALPHA = 0.05
SRM_ALPHA = 0.001
# The filter's rollback defaults (Policy::default(); `augur stat` {"test": "defaults"}).
DEFAULTS = {"alpha": 0.01, "min_samples": 20, "kill_after_cells": 4, "explore_share": 0.5,
            "probe_share": 0.05, "probe_after_s": 300, "probe_rho": 2.0}


def ln_harm(bad_on, bad, pi):
    """ln M of the harm test; 0 without evidence."""
    if bad <= 0 or not 0.0 < pi < 1.0:
        return 0.0
    x, k = float(min(bad_on, bad)), float(bad)
    tail = stats.beta.logsf(pi, x + 1, k - x + 1)
    if math.isinf(tail):
        # SciPy's tail underflowed: the events sit far below `pi` (strong
        # evidence of *no* harm). Laplace at the boundary: ∫_pi^1 f ≈ f(pi) / |(ln f)'(pi)|.
        slope = (k - x) / (1 - pi) - x / pi
        return -math.log1p(-pi) - math.log(slope) if slope > 0 else 0.0
    ln_integral = special.betaln(x + 1, k - x + 1) + tail
    return ln_integral - math.log1p(-pi) - x * math.log(pi) - (k - x) * math.log1p(-pi)


def ln_no_harm(bad_on, bad, pi, rho=DEFAULTS["probe_rho"]):
    """ln of the evidence that a block's harm is gone; 0 without events."""
    if bad <= 0 or not 0.0 < pi < 1.0 or not rho > 1.0:
        return 0.0
    x, k = float(min(bad_on, bad)), float(bad)
    q = rho * pi / (rho * pi + 1.0 - pi)
    return x * math.log(pi / q) + (k - x) * math.log((1.0 - pi) / (1.0 - q))


def ln_ratio(x, n, p0):
    """ln M of the sample-ratio test; 0 without draws."""
    if n <= 0 or not 0.0 < p0 < 1.0:
        return 0.0
    x, n = float(min(x, n)), float(n)
    return special.betaln(x + 1, n - x + 1) - x * math.log(p0) - (n - x) * math.log1p(-p0)


def threshold(alpha):
    return math.log(1.0 / alpha)


def levels(alpha, features):
    """Alarm levels (ln M) per family: alpha split in four equal parts (single-
    cell blocks, pair-cell blocks, kills, reverts), each Bonferroni over its
    features × cells × KPIs; screening and sample-ratio levels are fixed (the
    latter shared by two checks per feature: exploration and probe draws)."""
    f, part = max(features, 1), alpha / 4.0
    return {
        "single": threshold(part / (f * CELLS * KPIS)),
        "pair": threshold(part / (f * PAIRS * KPIS)),
        "kill": threshold(part / (f * KPIS)),
        "revert": threshold(part / KPIS),
        "screen": threshold(SCREEN_ALPHA / (CELLS * KPIS)),
        "srm": threshold(SRM_ALPHA / (2 * f)),
    }


def harm(on_n, on_bad, off_n, off_bad):
    """Evidence that the `on` arm is worse than `off` (two randomised arms)."""
    if on_n <= 0 or off_n <= 0:
        return 0.0
    return ln_harm(on_bad, on_bad + off_bad, on_n / (on_n + off_n))
