"""What the retraining job learns from randomised records, and how it decides.

- **Outcomes**: per record, the four impacts' observable events (slow, error,
  engagement, security), :func:`outcome_bits`.
- **Utility** of one request in engagement counts: engagement minus the cost of
  its harms, each harm priced in engagements (``--harm-cost``, e.g. an error
  costs 3 engagements), :func:`utility`.
- **Uplift model** (T-learner): for each (feature, impact) the randomised
  records show evidence for (the cell estimator's always-valid test,
  ``retrain.estimate_effects``), two gradient-boosted regressors on the record's
  ``x``, one per arm (``arm``); the uplift of a request is on − off.
  Trees on the profile vector capture interactions (feature × device ×
  location × history …). A (feature, impact) without evidence gets uplift 0; a
  feature with no randomised records keeps the serving model's predictions.
- **Per-feature thresholds** from the trade-off, :func:`derive_thresholds`:
  for each feature and harm axis the threshold that maximises the predicted
  net gain (harm cost avoided − engagement lost) of turning the feature off
  where the pushed model's prediction is above it; each comes with its reason.
- **Policy value** on held-out randomised records, :func:`policy_gain`: the
  inverse-propensity estimate, from real outcomes, of the utility gained per
  request by the decisions a (model, thresholds) pair makes, against every
  feature on. The job compares candidate and serving on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from augur_tools.loop.train import IMPACTS
from augur_tools.records import arm, kpi_values, p_on

HARMS = ("performance_cost", "error_risk", "security_risk")
#: What one harm costs, in engagements (an error costs three engagements …).
DEFAULT_COSTS = {"performance_cost": 1.0, "error_risk": 3.0, "security_risk": 10.0}
#: The ``features[]`` field that bounds each impact (and the score).
THRESHOLD_FIELDS = {"performance_cost": "max_performance_cost", "error_risk": "max_error_risk",
                    "security_risk": "max_security_risk", "engagement": "min_engagement", "score": "min_score"}
#: The filter's defaults (README configuration reference).
FIELD_DEFAULTS = {"max_performance_cost": 0.7, "max_error_risk": 0.3, "max_security_risk": 0.5,
                  "min_engagement": 0.0, "min_score": 50.0}
#: Candidate thresholds; below 0.05 a threshold would act on estimation noise.
GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def outcome_bits(r: dict, slow_ms: float) -> dict:
    """The four impacts' observable events on one record (1.0 / 0.0)."""
    k = kpi_values(r)
    d = k["latency_ms"]
    return {
        "performance_cost": 1.0 if not math.isnan(d) and d >= slow_ms else 0.0,
        "error_risk": k["error"],
        "engagement": k["engagement"],
        "security_risk": k["security"],
    }


def outcome_matrix(records, slow_ms: float) -> np.ndarray:
    """[N, 4] outcome bits in IMPACTS order."""
    return np.asarray([[outcome_bits(r, slow_ms)[i] for i in IMPACTS] for r in records], dtype=np.float64)


def key_values(text: str | None, flag: str, allowed, example: str) -> dict:
    """``a=1,b=2`` → {key: float}; an unknown key or a value that is not a
    number is a ValueError naming the flag, the key and an example."""
    out = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        k, _, v = part.partition("=")
        k = k.strip()
        if k not in allowed:
            raise ValueError(f"{flag}: unknown {k!r}; use one of {', '.join(allowed)}, e.g. {flag} {example}")
        try:
            out[k] = float(v)
        except ValueError:
            raise ValueError(f"{flag}: {k}={v!r} is not a number, e.g. {flag} {example}") from None
    return out


def parse_costs(text: str | None) -> dict:
    """``error_risk=3,security_risk=10`` → costs in engagements (the others keep their defaults)."""
    costs = dict(DEFAULT_COSTS, **key_values(text, "--harm-cost", DEFAULT_COSTS, "error_risk=3,security_risk=10"))
    for k, v in costs.items():
        if v < 0:
            raise ValueError(f"--harm-cost: {k}={v:g} is negative; a harm costs >= 0 engagements")
    return costs


def utility(outcomes: np.ndarray, costs: dict) -> np.ndarray:
    """[N] engagement − Σ cost × harm, in engagements."""
    u = outcomes[:, IMPACTS.index("engagement")].copy()
    for h in HARMS:
        u -= costs[h] * outcomes[:, IMPACTS.index(h)]
    return u


def arm_matrix(records, features: Sequence[str]) -> np.ndarray:
    """[N, F]: 1 treatment, 0 control, -1 not randomised (``arm``: the record says)."""
    code = {"treatment": 1, "control": 0, None: -1}
    return np.asarray([[code[arm(r, f)] for f in features] for r in records], dtype=np.int8).reshape(
        len(records), len(features))


def propensities(arms: np.ndarray, records: Sequence[dict] | None = None,
                 features: Sequence[str] = ()) -> np.ndarray:
    """[N, F] each randomised record's chance of the treatment arm: the record's
    own ``p_on`` (the filter's design: a holdout and exploration in suspect cells
    randomise with different chances, so one pooled share per feature would bias
    an inverse-propensity estimate), else the feature's pooled treatment share
    (records without the field). NaN where not randomised."""
    out = np.full(arms.shape, np.nan)
    for j in range(arms.shape[1]):
        r = arms[:, j] >= 0
        if r.any():
            out[r, j] = float((arms[r, j] == 1).mean())
    if records is not None:
        for i, rec in enumerate(records):
            for j, f in enumerate(features):
                p = p_on(rec, f)
                if p is not None and arms[i, j] >= 0:
                    out[i, j] = p
    return out


# --------------------------------------------------------------------------
# T-learner
# --------------------------------------------------------------------------


def _regressor(seed: int):
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(max_iter=60, learning_rate=0.1, max_leaf_nodes=8, min_samples_leaf=30,
                                         l2_regularization=1.0, early_stopping=False, random_state=seed)


@dataclass
class Uplift:
    """A fitted T-learner: ``models[(feature, impact)] = (on, off)``."""

    features: list
    models: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)  # (feature, impact) -> (n_on, n_off)
    randomised: dict = field(default_factory=dict)  # feature -> randomised training rows

    def predict(self, xs: np.ndarray) -> np.ndarray:
        """[N, 4F] uplift on − off (unclipped); 0 where no model was fitted."""
        out = np.zeros((len(xs), len(self.features) * len(IMPACTS)))
        for (f, impact), (on, off) in self.models.items():
            col = self.features.index(f) * len(IMPACTS) + IMPACTS.index(impact)
            out[:, col] = on.predict(xs) - off.predict(xs)
        return out


def fit_tlearner(xs, outcomes, arms, features, pairs, seed=7, min_n=20) -> Uplift:
    """T-learner on the randomised rows of each feature, for the (feature, impact)
    ``pairs`` the evidence supports."""
    up = Uplift(list(features))
    for j, f in enumerate(features):
        up.randomised[f] = int((arms[:, j] >= 0).sum())
    for f, impact in sorted(set(pairs)):
        j, k = features.index(f), IMPACTS.index(impact)
        on, off = arms[:, j] == 1, arms[:, j] == 0
        if on.sum() < min_n or off.sum() < min_n:
            continue
        m1 = _regressor(seed).fit(xs[on], outcomes[on, k])
        m0 = _regressor(seed).fit(xs[off], outcomes[off, k])
        up.models[(f, impact)] = (m1, m0)
        up.rows[(f, impact)] = (int(on.sum()), int(off.sum()))
    return up


# --------------------------------------------------------------------------
# The filter's model rule, offline
# --------------------------------------------------------------------------


def feature_thresholds(feature_cfg: dict) -> dict:
    """The model thresholds of one ``features[]`` entry, defaults filled in."""
    return {k: float(feature_cfg.get(k, v)) for k, v in FIELD_DEFAULTS.items()}


def score(perf, err, eng, sec, weights: dict | None) -> np.ndarray:
    """README "Score": 100 × weighted sum / Σw, impacts clamped to [0, 1]."""
    w = {"performance": 1.0, "error_rate": 1.0, "engagement": 1.0, "security": 1.0, **(weights or {})}
    total = sum(w.values())
    return 100.0 * (w["performance"] * (1 - perf) + w["error_rate"] * (1 - err) + w["engagement"] * eng
                    + w["security"] * (1 - sec)) / total


def off_mask(pred: np.ndarray, plugin: dict, model_features: Sequence[str],
             features: Sequence[str] | None = None) -> np.ndarray:
    """[N, F] True where the model rules (impact thresholds, ``min_score``) of
    ``plugin`` turn an ``auto`` feature off, from clamped predictions ``pred``
    (columns in ``model_features`` order). ``features`` defaults to the plugin's."""
    cfg = {f["name"]: f for f in plugin.get("features", [])}
    features = list(features if features is not None else cfg)
    out = np.zeros((len(pred), len(features)), dtype=bool)
    for j, name in enumerate(features):
        f = cfg.get(name)
        if f is None or f.get("override", "auto") != "auto" or name not in model_features:
            continue
        i = list(model_features).index(name) * len(IMPACTS)
        perf, err, eng, sec = (pred[:, i + k] for k in range(4))
        t = feature_thresholds(f)
        out[:, j] = ((sec > t["max_security_risk"]) | (err > t["max_error_risk"])
                     | (perf > t["max_performance_cost"]) | (eng < t["min_engagement"])
                     | (score(perf, err, eng, sec, (plugin.get("scoring") or {}).get("weights")) < t["min_score"]))
    return out


# --------------------------------------------------------------------------
# Policy value (inverse propensity, real outcomes)
# --------------------------------------------------------------------------


def policy_gain(off: np.ndarray, arms: np.ndarray, u: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """[N] per-request contribution to the utility gained by turning features
    off where ``off`` says, against every feature on:
    Σ_f off · (control·u / (1 − π) − treatment·u / π), π the row's chance of
    the treatment arm (``pi`` [N, F] from :func:`propensities`, or one per
    feature [F]). Its mean over the randomised records is an unbiased estimate
    (the arms are random with those chances); rows not randomised for a
    feature contribute 0 for it."""
    pi = np.asarray(pi, dtype=float)
    pi = np.broadcast_to(pi, arms.shape) if pi.ndim == 1 else pi
    c = np.zeros(len(u))
    for j in range(arms.shape[1]):
        a, p = arms[:, j], pi[:, j]
        ok = (a >= 0) & (p > 0.0) & (p < 1.0)
        q = np.where(ok, p, 0.5)
        c += np.where(ok, off[:, j] * ((a == 0) * u / (1 - q) - (a == 1) * u / q), 0.0)
    return c


def compare_policies(off_cand, off_serv, arms, u, pi, groups=None) -> dict:
    """Candidate vs serving on the same randomised rows: values, paired
    difference and its standard error — cluster-robust by `groups` (each row's
    user: sticky holdouts randomise users) when given."""
    rows = (arms >= 0).any(axis=1)
    n = int(rows.sum())
    vc, vs = policy_gain(off_cand, arms, u, pi)[rows], policy_gain(off_serv, arms, u, pi)[rows]
    d = vc - vs
    if n < 2:
        se = float("inf")
    elif groups is not None:
        _, g = np.unique(np.asarray(groups)[rows], return_inverse=True)
        sums = np.bincount(g, weights=d - d.mean())
        k = len(sums)
        se = float(math.sqrt(k / max(k - 1, 1) * float((sums ** 2).sum())) / n) if k > 1 else float("inf")
    else:
        se = float(d.std(ddof=1) / math.sqrt(n))
    return {"rows": n, "value_candidate": float(vc.mean()) if n else 0.0,
            "value_serving": float(vs.mean()) if n else 0.0,
            "delta": float(d.mean()) if n else 0.0, "se": se}


# --------------------------------------------------------------------------
# Thresholds from the trade-off
# --------------------------------------------------------------------------


def derive_thresholds(pred: np.ndarray, uplift: np.ndarray, features: Sequence[str], plugin: dict,
                      costs: dict, learned: set, min_gain: float = 0.005) -> dict:
    """Per auto feature: ({threshold field: value}, reasons).

    ``pred`` [N, 4F]: the candidate model's clamped predictions (what the filter
    will compare with the thresholds); ``uplift`` [N, 4F]: the T-learner's
    estimates on the same rows (the new stack's traffic). Net benefit of the
    feature on a request = engagement uplift − Σ cost × harm uplift. For each
    harm axis (in the order of HARMS, rows already turned off by an earlier axis
    left out), the threshold t on the prediction is the one of GRID that
    maximises Σ over rows with prediction > t of (− net benefit) per request:
    off exactly where harm outweighs benefit. Ties go to the larger t (fewer
    requests off); a predicted gain below `min_gain` engagements per request
    (estimation noise) keeps the serving value. Features whose
    harms were not learned (``learned``: (feature, impact) pairs with a model)
    keep their thresholds."""
    cfg = {f["name"]: f for f in plugin.get("features", [])}
    n = max(len(pred), 1)
    out = {}
    for j, name in enumerate(features):
        f = cfg.get(name)
        if f is None or f.get("override", "auto") != "auto":
            continue
        base = j * len(IMPACTS)
        eng = np.clip(uplift[:, base + IMPACTS.index("engagement")], 0.0, 1.0)
        harm = sum(costs[h] * np.clip(uplift[:, base + IMPACTS.index(h)], 0.0, 1.0) for h in HARMS)
        net = eng - harm
        current = feature_thresholds(f)
        chosen, reasons = {}, []
        already_off = np.zeros(len(pred), dtype=bool)
        for h in HARMS:
            fld = THRESHOLD_FIELDS[h]
            if (name, h) not in learned:
                reasons.append(f"{fld} kept {current[fld]:g}: no evidence of {h} harm in the randomised records")
                continue
            p = pred[:, base + IMPACTS.index(h)]
            best_t, best_v = None, min_gain
            for t in sorted(GRID, reverse=True):
                off = (p > t) & ~already_off
                v = float(-net[off].sum() / n)
                if v > best_v + 1e-6:
                    best_t, best_v = t, v
            if best_t is None:
                reasons.append(f"{fld} kept {current[fld]:g}: turning {name} off on predicted {h} gains nothing "
                               f"(< {min_gain:g} engagements/request: harm never outweighs the engagement uplift)")
                continue
            off = (p > best_t) & ~already_off
            already_off |= off
            chosen[fld] = best_t
            reasons.append(
                f"{fld} {best_t:g}: off on {100 * off.mean():.1f}% of requests, where predicted harm "
                f"{float(harm[off].mean()):.2f} > engagement uplift {float(eng[off].mean()):.2f} (engagements; "
                f"costs {', '.join(f'{k}={v:g}' for k, v in costs.items())}); predicted gain {best_v:.3f}/request")
        out[name] = (chosen, reasons)
    return out
