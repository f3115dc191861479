#!/usr/bin/env python3
"""A/B report: the effect of each feature on each KPI, from the real Envoy's records.

    python -m augur_tools.loop.report .run/loop/access.log [--config plugin.json] [--by device|cell] [--json]

Input: Envoy access-log lines, each ``{"decision": {...augur record...}, "status",
"duration_ms", "signals", ...}`` (python/augur_tools/envoy/envoyconf.py ACCESS_LOG_FORMAT).
Lines that are not JSON, or whose ``decision`` is not an object (requests the
filter never saw), are skipped and counted.

Which records count, per feature F: those whose record marks F as
``randomised`` (its on/off state was random on that request: an A/B holdout or
an exploration draw), in the arm its ``on`` says — treatment when on, control
when off. The filter decides which requests are randomised and writes it in the
record; this report does not re-derive it. Everything else (model / rule
decisions, rolled_back, old stack) is left out: comparing it would measure who
gets the feature, not what the feature does.

Cells (``--by cell``) are the record's ``cells``, named by ``augur schema``.

KPIs per record: error = status >= 500 or no status (0); latency = duration_ms
(Envoy's request duration); engagement = the app reported one (``signals``
contains ``engaged``); security = the app flagged the request (``signals``
contains ``security``). Effect = treatment − control, with a 95% confidence
interval (statsmodels: Wald interval for a difference of proportions, Welch
for the latency mean) and a two-sided p-value (pooled two-proportion z test;
Welch z for latency).

**Regression adjustment** (CUPED-style, ``adjusted``): the same effect from an
OLS of the KPI on the arm and the record's pre-exposure profile vector ``x``
(centred; decided from the request before any feature acted, so it cannot be
moved by the treatment), heteroskedasticity-robust (HC2) standard errors —
cluster-robust by user (the record's ``bucket``) when the records carry it, as
a sticky per-user holdout randomises users, not requests. It
estimates the same effect with less variance when the profile predicts the KPI;
``variance_reduction`` = 1 − SE²(adjusted) / SE²(unadjusted, HC2 = Welch).

**Multiplicity**: the adjusted p-values of every feature × KPI (the overall
rows) form one family, corrected with Holm (``p_holm``, family-wise error) and
Benjamini-Hochberg (``q_bh``, false discovery rate), statsmodels.stats.multitest.
The ``--by`` breakdowns are exploratory and uncorrected.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from augur_tools.records import (
    KPIS,
    arm,
    cell_names,
    cells,
    features_of,
    holdout_features,
    kpi_values,
    p_on,
    read_log,
)

Z95 = 1.959963984540054

# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------


def _stats():
    from statsmodels.stats import multitest, proportion, weightstats

    return proportion, weightstats, multitest


def proportion_effect(k_t: int, n_t: int, k_c: int, n_c: int) -> dict:
    out = {"n_treatment": n_t, "n_control": n_c, "events_treatment": k_t, "events_control": k_c}
    if n_t == 0 or n_c == 0:
        return dict(out, treatment=None, control=None, effect=None, ci95=None, p=None)
    proportion, _, _ = _stats()
    pt, pc = k_t / n_t, k_c / n_c
    diff = pt - pc
    if k_t + k_c in (0, n_t + n_c):  # no variance at all: no evidence either way
        return dict(out, treatment=pt, control=pc, effect=diff, ci95=[diff, diff], p=1.0)
    _, p = proportion.proportions_ztest([k_t, k_c], [n_t, n_c])
    lo, hi = proportion.confint_proportions_2indep(k_t, n_t, k_c, n_c, method="wald", compare="diff")
    return dict(out, treatment=pt, control=pc, effect=diff, ci95=[float(lo), float(hi)], p=float(p))


def mean_effect(xs_t: Sequence[float], xs_c: Sequence[float]) -> dict:
    xs_t = [x for x in xs_t if not math.isnan(x)]
    xs_c = [x for x in xs_c if not math.isnan(x)]
    n_t, n_c = len(xs_t), len(xs_c)
    out = {"n_treatment": n_t, "n_control": n_c}
    if n_t < 2 or n_c < 2:
        return dict(out, treatment=None, control=None, effect=None, ci95=None, p=None)
    _, weightstats, _ = _stats()
    cm = weightstats.CompareMeans(weightstats.DescrStatsW(np.asarray(xs_t)), weightstats.DescrStatsW(np.asarray(xs_c)))
    mt, mc = float(np.mean(xs_t)), float(np.mean(xs_c))
    diff = mt - mc
    if cm.std_meandiff_separatevar == 0:
        return dict(out, treatment=mt, control=mc, effect=diff, ci95=[diff, diff], p=1.0 if diff == 0 else 0.0)
    _, p = cm.ztest_ind(usevar="unequal")
    lo, hi = cm.zconfint_diff(alpha=0.05, usevar="unequal")
    return dict(out, treatment=mt, control=mc, effect=diff, ci95=[float(lo), float(hi)], p=float(p))


def independent_columns(z: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Indices of a maximal set of linearly independent, non-constant columns
    of `z` (after centring; pivoted QR): one-hot groups lose one column."""
    from scipy.linalg import qr

    if z.size == 0:
        return np.zeros(0, dtype=int)
    zc = z - z.mean(axis=0)
    live = np.flatnonzero(zc.std(axis=0) > tol)
    if not len(live):
        return live
    _, r, piv = qr(zc[:, live], mode="economic", pivoting=True)
    d = np.abs(np.diag(r))
    rank = int((d > tol * max(d[0], 1.0) * max(zc.shape)).sum())
    return np.sort(live[piv[:rank]])


def regression_adjusted(y: np.ndarray, t: np.ndarray, z: np.ndarray | None, rows_per_covariate: int = 10,
                        groups: np.ndarray | None = None, designs: np.ndarray | None = None) -> dict:
    """The effect of `t` (1 treatment, 0 control) on `y` adjusted for the
    pre-exposure covariates `z` [N, K] (CUPED-style: OLS on [1, t, z − z̄], HC2
    standard errors), with the unadjusted OLS [1, t] (HC2, = Welch) beside it.
    Covariates are used when there are ≥ `rows_per_covariate` rows per column.
    With `groups` (the user of each row: a sticky per-user holdout randomises
    users, not requests) the standard errors are cluster-robust by user instead.
    ``designs`` [N, D] (one-hot design strata) are always in the model, whatever
    ``z`` and the row count: without them the arms of different designs pool."""
    import statsmodels.api as sm

    ok = ~np.isnan(y)
    y, t = y[ok], t[ok].astype(float)
    cov = {"cov_type": "HC2"}
    if groups is not None and len(np.unique(groups[ok])) >= 20:
        cov = {"cov_type": "cluster", "cov_kwds": {"groups": np.unique(groups[ok], return_inverse=True)[1]}}
    n_t, n_c = int(t.sum()), int(len(t) - t.sum())
    if n_t < 2 or n_c < 2:
        return {"effect": None, "ci95": None, "p": None, "se": None, "se_unadjusted": None,
                "variance_reduction": None, "covariates": 0}
    one = np.ones(len(y))
    fixed = np.zeros((len(y), 0))
    if designs is not None:
        d = np.asarray(designs, dtype=float)[ok]
        cols = independent_columns(d)
        fixed = d[:, cols] - d[:, cols].mean(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant KPIs: statsmodels warns about a zero scale; handled below
        base = sm.OLS(y, np.column_stack([one, t])).fit(**cov)
        fit, k = base, fixed.shape[1]
        if k:
            fit = sm.OLS(y, np.column_stack([one, t, fixed])).fit(**cov)
        if z is not None:
            z = np.asarray(z, dtype=float)[ok]
            cols = independent_columns(z)
            if len(cols) and len(y) >= rows_per_covariate * (len(cols) + k + 2):
                zc = z[:, cols] - z[:, cols].mean(axis=0)
                fit, k = sm.OLS(y, np.column_stack([one, t, fixed, zc])).fit(**cov), k + len(cols)
    se0, se = float(base.bse[1]), float(fit.bse[1])
    effect = float(fit.params[1])
    if not se > 0 or not math.isfinite(se):
        return {"effect": effect, "ci95": [effect, effect], "p": 1.0, "se": 0.0, "se_unadjusted": se0,
                "variance_reduction": None, "covariates": k}
    lo, hi = (float(v) for v in fit.conf_int(alpha=0.05)[1])
    return {"effect": effect, "ci95": [lo, hi], "p": float(fit.pvalues[1]), "se": se, "se_unadjusted": se0,
            "variance_reduction": 1.0 - (se / se0) ** 2 if se0 > 0 else None, "covariates": k,
            "se_kind": "cluster(user)" if cov["cov_type"] == "cluster" else "HC2"}


def covariates(records: Sequence[dict]) -> np.ndarray | None:
    """The records' pre-exposure profile vectors ``x`` [N, 20], or None if any lacks one."""
    xs = [r["decision"].get("x") for r in records]
    if not xs or any(not isinstance(x, list) or len(x) != len(xs[0]) for x in xs):
        return None
    return np.asarray(xs, dtype=float)


def users(records: Sequence[dict]) -> np.ndarray | None:
    """Each record's user as its rollout ``bucket`` (a hash of the user id), or
    None if any record lacks one."""
    b = [r["decision"].get("bucket") for r in records]
    return np.asarray(b) if b and all(isinstance(v, int) for v in b) else None


def stratified_effect(y_t: Sequence[float], s_t: Sequence, y_c: Sequence[float], s_c: Sequence,
                      rate: bool = False) -> dict:
    """Treatment − control within each design stratum ``s`` (the records' chance
    of the treatment arm), averaged with the strata's sizes as weights
    (post-stratification: each stratum is a randomised comparison of its own;
    pooling them would compare designs, e.g. exploration in worse cells against
    a holdout everywhere). Normal CI from the strata's variances; strata with
    one arm only are left out (``strata_dropped``). ``rate``: the KPI is 0/1,
    and the event counts are reported as :func:`proportion_effect` does."""
    from scipy.stats import norm

    by: dict = {}
    for ys, ss, arm_ix in ((y_t, s_t, 0), (y_c, s_c, 1)):
        for y, key in zip(ys, ss):
            if not math.isnan(y):
                by.setdefault(key, ([], []))[arm_ix].append(y)
    kept = {k: (np.asarray(t), np.asarray(c)) for k, (t, c) in by.items() if len(t) >= 2 and len(c) >= 2}
    n_t, n_c = sum(len(t) for t, _ in kept.values()), sum(len(c) for _, c in kept.values())
    out = {"n_treatment": n_t, "n_control": n_c, "strata": len(kept), "strata_dropped": len(by) - len(kept)}
    if rate:
        out["events_treatment"] = int(sum(float(t.sum()) for t, _ in kept.values()))
        out["events_control"] = int(sum(float(c.sum()) for _, c in kept.values()))
    if not kept:
        return dict(out, treatment=None, control=None, effect=None, ci95=None, p=None)
    total = float(n_t + n_c)
    w = {k: (len(t) + len(c)) / total for k, (t, c) in kept.items()}
    mt = sum(w[k] * float(t.mean()) for k, (t, _) in kept.items())
    mc = sum(w[k] * float(c.mean()) for k, (_, c) in kept.items())
    var = sum(w[k] ** 2 * (float(t.var(ddof=1)) / len(t) + float(c.var(ddof=1)) / len(c)) for k, (t, c) in kept.items())
    diff, se = mt - mc, math.sqrt(var)
    if se == 0:
        return dict(out, treatment=mt, control=mc, effect=diff, ci95=[diff, diff], p=1.0 if diff == 0 else 0.0)
    p = float(2 * norm.sf(abs(diff) / se))
    return dict(out, treatment=mt, control=mc, effect=diff, ci95=[diff - Z95 * se, diff + Z95 * se], p=p)


def compare(treat: list[dict], ctrl: list[dict], adjust: bool = False,
            strata: tuple[Sequence, Sequence] | None = None) -> dict:
    """Every KPI's effect, treatment − control. ``strata`` (one key per treatment
    and per control record: the chance of the treatment arm its design gave it)
    with more than one design: the effect is post-stratified
    (:func:`stratified_effect`) and the adjustment adds the designs as dummies."""
    kt = [kpi_values(r) for r in treat]
    kc = [kpi_values(r) for r in ctrl]
    out = {}
    designs = sorted(set(strata[0]) | set(strata[1]), key=str) if strata else []
    z = covariates(treat + ctrl) if adjust else None
    dummies = None
    if len(designs) > 1:
        keys = list(strata[0]) + list(strata[1])
        dummies = np.column_stack([np.asarray([k == d for k in keys], dtype=float) for d in designs])
    groups = users(treat + ctrl) if adjust else None
    arm_t = np.r_[np.ones(len(treat)), np.zeros(len(ctrl))]
    for k in KPIS:
        if len(designs) > 1:
            out[k] = stratified_effect([float(v[k]) for v in kt], strata[0], [float(v[k]) for v in kc], strata[1],
                                       rate=k != "latency_ms")
        elif k == "latency_ms":
            out[k] = mean_effect([v[k] for v in kt], [v[k] for v in kc])
        else:
            out[k] = proportion_effect(
                int(sum(v[k] for v in kt)), len(kt), int(sum(v[k] for v in kc)), len(kc)
            )
        if adjust:
            y = np.asarray([v[k] for v in kt + kc], dtype=float)
            out[k]["adjusted"] = regression_adjusted(y, arm_t, z, groups=groups, designs=dummies)
    return out


def correct(rep: dict, alpha: float = 0.05) -> dict:
    """Holm and Benjamini-Hochberg over every feature × KPI of the overall rows
    (the adjusted p-value; the unadjusted one where no adjustment ran). Writes
    ``p_holm``, ``q_bh`` into each entry; returns the family's summary."""
    _, _, multitest = _stats()
    cells = []
    for entry in rep["features"].values():
        for k in KPIS:
            e = entry["overall"][k]
            p = (e.get("adjusted") or {}).get("p")
            p = e.get("p") if p is None else p
            if p is not None:
                cells.append((e, p))
    if not cells:
        return {"family": 0, "alpha": alpha}
    ps = np.asarray([p for _, p in cells])
    rej_h, holm, _, _ = multitest.multipletests(ps, alpha=alpha, method="holm")
    rej_b, bh, _, _ = multitest.multipletests(ps, alpha=alpha, method="fdr_bh")
    for (e, _), h, q, rh, rb in zip(cells, holm, bh, rej_h, rej_b):
        e.update(p_holm=float(h), q_bh=float(q), significant_holm=bool(rh), significant_bh=bool(rb))
    return {"family": len(cells), "alpha": alpha, "significant_holm": int(rej_h.sum()),
            "significant_bh": int(rej_b.sum()), "significant_uncorrected": int((ps <= alpha).sum())}


def report(records: list[dict], config: dict | None = None, by: str | None = None, names: Sequence[str] | None = None,
           min_n: int = 1, adjust: bool = True, alpha: float = 0.05) -> dict:
    """The whole report as a dict (what --json prints)."""
    names_of_cells = cell_names() if names is None and by == "cell" else (names or [])
    holdouts = holdout_features(records, config)
    names = [f["name"] for f in config["features"]] if config else features_of(records)
    out = {
        "records": len(records),
        "new_stack": sum(1 for r in records if r["decision"].get("stack") == "new"),
        "holdout_features": sorted(holdouts),
        "features": {},
    }
    for name in names:
        treat, ctrl = [], []
        for r in records:
            a = arm(r, name)
            if a == "treatment":
                treat.append(r)
            elif a == "control":
                ctrl.append(r)
        strata = ([p_on(r, name) for r in treat], [p_on(r, name) for r in ctrl])
        entry = {"overall": compare(treat, ctrl, adjust=adjust, strata=strata)}
        undesigned = sum(p is None for side in strata for p in side)
        if 0 < undesigned < len(treat) + len(ctrl):
            # Records written before the filter carried `p_on`: one stratum that may pool designs.
            entry["records_without_p_on"] = undesigned
        if by:
            groups: dict[str, tuple[list, list]] = {}
            for arm_list, ix in ((treat, 0), (ctrl, 1)):
                for r in arm_list:
                    keys = segment_keys(r, by, names_of_cells)
                    for key in keys:
                        groups.setdefault(key, ([], []))[ix].append(r)
            entry["by_" + by] = {
                key: compare(t, c, strata=([p_on(r, name) for r in t], [p_on(r, name) for r in c]))
                for key, (t, c) in sorted(groups.items()) if len(t) >= min_n and len(c) >= min_n
            }
        out["features"][name] = entry
    out["correction"] = correct(out, alpha)
    reductions = [e["overall"][k]["adjusted"]["variance_reduction"] for e in out["features"].values() for k in KPIS
                  if (e["overall"][k].get("adjusted") or {}).get("variance_reduction") is not None]
    out["variance_reduction_median"] = float(np.median(reductions)) if reductions else None
    return out


def segment_keys(r: dict, by: str, names: Sequence[str]) -> list[str]:
    if by == "device":
        return [r["decision"].get("device", "unknown")]
    if by == "cell":
        return cells(r, names)
    raise ValueError(f"unknown --by {by!r} (device or cell)")


# --------------------------------------------------------------------------
# Text output
# --------------------------------------------------------------------------


def _fmt(k: str, v: float | None, signed=False) -> str:
    if v is None:
        return "-"
    if k == "latency_ms":
        return f"{v:+.1f}" if signed else f"{v:.1f}"
    return f"{100 * v:+.2f}%" if signed else f"{100 * v:.2f}%"


def _fmt_p(p):
    if p is None:
        return "-"
    return "<1e-6" if p < 1e-6 else f"{p:.2g}"


def _ci(k, ci):
    return "-" if ci is None else f"[{_fmt(k, ci[0], True)}, {_fmt(k, ci[1], True)}]"


def print_block(label: str, res: dict, out=sys.stdout) -> None:
    for k in KPIS:
        e = res[k]
        line = (f"  {label:<34}{k:<11}{e['n_treatment']:>7}{e['n_control']:>7}{_fmt(k, e['treatment']):>10}"
                f"{_fmt(k, e['control']):>10}{_fmt(k, e['effect'], True):>10}  {_ci(k, e['ci95']):<22}"
                f"{_fmt_p(e['p']):>7}")
        a = e.get("adjusted")
        if a is not None:
            vr = "-" if a["variance_reduction"] is None else f"{100 * a['variance_reduction']:.0f}%"
            mark = "*" if e.get("significant_holm") else " "
            line += (f" |{_fmt(k, a['effect'], True):>10}  {_ci(k, a['ci95']):<22}{_fmt_p(a['p']):>7}"
                     f"{_fmt_p(e.get('p_holm')):>8}{mark}{_fmt_p(e.get('q_bh')):>7}{vr:>6}")
        print(line, file=out)


def print_report(rep: dict, by: str | None, out=sys.stdout) -> None:
    print(
        f"A/B report: {rep['records']} records, {rep['new_stack']} on the new stack; "
        f"features with a holdout: {', '.join(rep['holdout_features']) or 'none'}",
        file=out,
    )
    c = rep.get("correction") or {}
    print(
        "  treatment / control = the feature on / off on requests whose record marks it randomised\n"
        "  (A/B holdout or exploration draw). Effect = treatment - control, 95% CI, two-sided p.\n"
        "  adjusted = regression on the pre-exposure profile x (CUPED-style, HC2); p_holm / q_bh: Holm /\n"
        f"  Benjamini-Hochberg over the {c.get('family', 0)} feature x KPI tests (* = Holm-significant at "
        f"{c.get('alpha', 0.05):g}); VR = variance reduction of the adjusted estimate.",
        file=out,
    )
    head = (f"  {'feature':<34}{'kpi':<11}{'n_on':>7}{'n_ctl':>7}{'on':>10}{'control':>10}{'effect':>10}  "
            f"{'95% CI':<22}{'p':>7} |{'adjusted':>10}  {'95% CI':<22}{'p':>7}{'p_holm':>8} {'q_bh':>7}{'VR':>6}")
    for name, entry in rep["features"].items():
        print(head, file=out)
        if entry.get("records_without_p_on"):
            print(f"  note: {entry['records_without_p_on']} of {name}'s randomised records carry no p_on (written "
                  "before the filter recorded designs): compared as one design, which may pool a holdout with "
                  "exploration", file=out)
        print_block(name, entry["overall"], out)
        for key, res in entry.get("by_" + by, {}).items() if by else ():
            print_block(f"{name} | {key}", res, out)
    if c.get("family"):
        vr = rep.get("variance_reduction_median")
        print(f"  significant at {c['alpha']:g}: {c['significant_uncorrected']} uncorrected, {c['significant_holm']} "
              f"after Holm, {c['significant_bh']} after Benjamini-Hochberg (of {c['family']}); median variance "
              f"reduction from the profile: {'-' if vr is None else f'{100 * vr:.0f}%'}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", help="Envoy access log with augur decision records")
    ap.add_argument("--config", help="the plugin configuration (JSON) the records were decided with")
    ap.add_argument("--by", choices=("device", "cell"), help="also break each feature down by segment")
    ap.add_argument("--min-n", type=int, default=30, help="with --by: minimum records per arm to show a segment")
    ap.add_argument("--rollout", help="only records of this rollout name")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--alpha", type=float, default=0.05, help="level of the multiplicity-corrected tests")
    ap.add_argument("--no-adjust", action="store_true", help="skip the regression adjustment on the profile")
    args = ap.parse_args(argv)
    records, skipped = read_log(args.log)
    if args.rollout:
        records = [r for r in records if r["decision"].get("rollout") == args.rollout]
    config = json.loads(Path(args.config).read_text()) if args.config else None
    rep = report(records, config, args.by, min_n=args.min_n, adjust=not args.no_adjust, alpha=args.alpha)
    rep["skipped_lines"] = skipped
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print_report(rep, args.by)
        if skipped:
            print(f"  ({skipped} log lines were not decision records and were skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
