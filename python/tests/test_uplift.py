"""What the retraining job learns and how it decides (python/augur_tools/loop/uplift.py), on
synthetic randomised records with planted effects: the T-learner finds an
interaction (feature × device × history), thresholds come from the harm /
benefit trade-off per feature, and the held-out policy value is an unbiased
estimate of what turning a feature off gains. No Envoy."""

import random

import numpy as np
import pytest

from augur_tools.loop import uplift
from augur_tools.loop.train import IMPACTS

TABLET, HISTORY_0 = 3, 16  # profile slots (`augur schema`)
ERR, ENG = IMPACTS.index("error_risk"), IMPACTS.index("engagement")


def records(n, seed, pi=0.6):
    """f_plain and f_benefit: +20 points of errors on tablets with history_0 > 0.5
    (an interaction); f_benefit also +95 points of engagement there. Each
    feature on with probability `pi`, independently, marked randomised."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = [0.0] * 20
        x[1] = 1.0
        tablet = rng.random() < 1 / 3
        x[TABLET if tablet else 4] = 1.0
        x[HISTORY_0] = rng.random()
        x[15] = rng.random()
        zone = tablet and x[HISTORY_0] > 0.5
        on = {f: rng.random() < pi for f in ("f_plain", "f_benefit")}
        p_err = 0.02 + 0.2 * zone * (on["f_plain"] + on["f_benefit"])
        p_eng = 0.02 + 0.95 * zone * on["f_benefit"]
        engaged = rng.random() < min(p_eng, 1.0)
        feats = {f: {"on": v, "reason": "enabled" if v else "holdout", "randomised": True} for f, v in on.items()}
        out.append({"decision": {"rollout": "u", "stack": "new", "bucket": i, "request_id": f"u{i}",
                                 "features": feats, "x": x},
                    "status": 503 if rng.random() < p_err else 200, "duration_ms": 5,
                    "signals": "engaged" if engaged else "none"})
    return out


FEATURES = ["f_plain", "f_benefit"]
PLUGIN = {"name": "u", "features": [{"name": f} for f in FEATURES]}


@pytest.fixture(scope="module")
def fitted():
    recs = records(6000, 1)
    xs = np.asarray([r["decision"]["x"] for r in recs])
    outcomes = uplift.outcome_matrix(recs, slow_ms=1000)
    arms = uplift.arm_matrix(recs, FEATURES)
    pairs = {(f, "error_risk") for f in FEATURES} | {("f_benefit", "engagement")}
    up = uplift.fit_tlearner(xs, outcomes, arms, FEATURES, pairs, seed=7)
    return recs, xs, up


def test_tlearner_finds_the_interaction(fitted):
    _, xs, up = fitted
    pred = up.predict(xs)
    zone = (xs[:, TABLET] == 1) & (xs[:, HISTORY_0] > 0.5)
    tablet_low = (xs[:, TABLET] == 1) & (xs[:, HISTORY_0] <= 0.5)
    col = FEATURES.index("f_plain") * len(IMPACTS) + ERR
    assert pred[zone, col].mean() == pytest.approx(0.2, abs=0.05)
    assert abs(pred[tablet_low, col].mean()) < 0.05 and abs(pred[~zone & ~tablet_low, col].mean()) < 0.05
    eng = FEATURES.index("f_benefit") * len(IMPACTS) + ENG
    assert pred[zone, eng].mean() == pytest.approx(0.95, abs=0.08)
    assert set(up.models) == {("f_plain", "error_risk"), ("f_benefit", "error_risk"), ("f_benefit", "engagement")}


def test_thresholds_follow_the_trade_off_per_feature(fitted):
    _, xs, up = fitted
    u = up.predict(xs)
    pred = np.clip(u, 0, 1)
    learned = set(up.models)
    cheap = uplift.derive_thresholds(pred, u, FEATURES, PLUGIN, dict(uplift.DEFAULT_COSTS, error_risk=3.0), learned)
    # f_plain: harm 3 × 0.2 = 0.6 engagements, no benefit → off exactly in the zone (1/6 of requests).
    t = cheap["f_plain"][0]["max_error_risk"]
    zone = (xs[:, TABLET] == 1) & (xs[:, HISTORY_0] > 0.5)
    col = FEATURES.index("f_plain") * len(IMPACTS) + ERR
    off = pred[:, col] > t
    assert 0.05 <= t < 0.2 and (off == zone).mean() > 0.97, (t, cheap["f_plain"][1])
    assert any(r.startswith(f"max_error_risk {t:g}: off on") for r in cheap["f_plain"][1])
    # f_benefit: the same harm, but 0.95 engagements gained there > 0.6 lost → kept on.
    assert "max_error_risk" not in cheap["f_benefit"][0], cheap["f_benefit"][1]
    assert any("gains nothing" in r for r in cheap["f_benefit"][1])
    # An error priced at 7 engagements (1.4 > 0.95): now f_benefit is turned off there too.
    dear = uplift.derive_thresholds(pred, u, FEATURES, PLUGIN, dict(uplift.DEFAULT_COSTS, error_risk=7.0), learned)
    assert dear["f_benefit"][0]["max_error_risk"] < 0.2
    # Not learned: kept, and said so.
    none = uplift.derive_thresholds(pred, u, FEATURES, PLUGIN, uplift.DEFAULT_COSTS, set())
    assert none["f_plain"][0] == {} and all("kept" in r for r in none["f_plain"][1])


def test_policy_value_is_unbiased_against_the_planted_truth():
    """Turning f_plain off in the zone gains 3 × 0.2 × P(zone) = 0.1
    engagements per request; off everywhere gains the same (no effect elsewhere)."""
    estimates = []
    for seed in range(8):
        recs = records(4000, 100 + seed)
        xs = np.asarray([r["decision"]["x"] for r in recs])
        arms = uplift.arm_matrix(recs, FEATURES)
        u = uplift.utility(uplift.outcome_matrix(recs, 1000), uplift.DEFAULT_COSTS)
        pi = uplift.propensities(arms)  # records without p_on: the pooled share, on every row
        assert (pi == pi[0]).all() and list(pi[0]) == pytest.approx([0.6, 0.6], abs=0.03)
        zone = (xs[:, TABLET] == 1) & (xs[:, HISTORY_0] > 0.5)
        off = np.zeros((len(recs), 2), dtype=bool)
        off[:, 0] = zone
        cmp = uplift.compare_policies(off, np.zeros_like(off), arms, u, pi)
        estimates.append((cmp["delta"], cmp["se"]))
    mean = np.mean([d for d, _ in estimates])
    se = np.mean([s for _, s in estimates]) / np.sqrt(len(estimates))
    assert abs(mean - 0.1) < 3 * se, (mean, se)
    assert all(d > 0 for d, _ in estimates)


def test_harm_costs_are_checked():
    assert uplift.parse_costs("error_risk=5")["error_risk"] == 5.0
    for bad, want in (("errors=3", "unknown .errors."), ("error_risk=x", "not a number"),
                      ("security_risk=-1", "negative")):
        with pytest.raises(ValueError, match=want):
            uplift.parse_costs(bad)


def test_policy_value_weighs_each_record_by_its_own_design():
    """Turning f_plain off does nothing (no effect anywhere), but it is
    randomised 50/50 in the zone (high engagement) and 90/10 elsewhere (the
    record's p_on): with per-record chances the estimated gain is ~0; with one
    pooled share per feature it is not."""
    rng = random.Random(5)
    recs = []
    for i in range(8000):
        zone = rng.random() < 0.3
        p = 0.5 if zone else 0.9
        on = rng.random() < p
        x = [0.0] * 20
        engaged = rng.random() < (0.6 if zone else 0.05)
        feats = {"f_plain": {"on": on, "reason": "enabled", "randomised": True, "p_on": p},
                 "f_benefit": {"on": True, "reason": "enabled"}}
        recs.append({"decision": {"rollout": "u", "stack": "new", "bucket": i, "features": feats, "x": x},
                     "status": 200, "duration_ms": 5, "signals": "engaged" if engaged else "none"})
    arms = uplift.arm_matrix(recs, FEATURES)
    u = uplift.utility(uplift.outcome_matrix(recs, 1000), uplift.DEFAULT_COSTS)
    off = np.zeros((len(recs), 2), dtype=bool)
    off[:, 0] = True
    per_record = uplift.propensities(arms, recs, FEATURES)
    assert set(np.unique(per_record[:, 0])) == {0.5, 0.9}
    right = uplift.compare_policies(off, np.zeros_like(off), arms, u, per_record)
    assert abs(right["delta"]) < 3 * right["se"], right
    pooled = uplift.compare_policies(off, np.zeros_like(off), arms, u, uplift.propensities(arms))
    assert abs(pooled["delta"]) > 5 * pooled["se"], pooled
