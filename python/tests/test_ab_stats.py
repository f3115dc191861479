"""The A/B report's statistics (python/augur_tools/loop/report.py, statsmodels) on synthetic
decision records with known planted effects: confidence intervals cover the
planted effect, the multiplicity correction is Holm's / Benjamini-Hochberg's,
and the regression adjustment on the pre-exposure profile (CUPED-style)
reduces variance exactly when the profile predicts the KPI. No Envoy."""

import io
import json
import random
import subprocess
import sys

import numpy as np
import pytest

from augur_tools.loop import report

ENGAGE_EFFECT = 0.05  # feature "a": +5 points of engagement
LATENCY_EFFECT = 10.0  # feature "a": +10 ms
HISTORY_0, HISTORY_1 = 16, 17  # profile slots (`augur schema`): the covariates that predict the KPIs


def synthetic_records(n, seed):
    """Records as the filter writes them: features a and b randomised 50/50
    (holdout-like), arms in the record; engagement depends on history_0,
    latency on history_1, errors and security events on nothing."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = [0.0] * 20
        x[0], x[1] = rng.random(), 1.0
        x[2 + rng.randrange(3)] = 1.0  # device one-hot
        x[6 + rng.randrange(4)] = 1.0  # location one-hot
        x[HISTORY_0], x[HISTORY_1], x[15] = rng.random(), rng.random(), rng.random()
        on = {f: rng.random() < 0.5 for f in ("a", "b")}
        engaged = rng.random() < 0.1 + 0.5 * x[HISTORY_0] + ENGAGE_EFFECT * on["a"]
        latency = 20 + 200 * x[HISTORY_1] + rng.gauss(0, 10) + LATENCY_EFFECT * on["a"]
        error = rng.random() < 0.02
        security = rng.random() < 0.01
        signals = "+".join(s for s, v in (("engaged", engaged), ("security", security)) if v) or "none"
        feats = {f: {"on": v, "reason": "enabled" if v else "holdout", "score": 80, "randomised": True}
                 for f, v in on.items()}
        out.append({"decision": {"rollout": "syn", "request_id": f"s{seed}-{i}", "stack": "new", "device": "desktop",
                                 "features": feats, "cells": [2, 9, 13, 15, 17, 19, 21, 23], "x": x},
                    "status": 503 if error else 200, "duration_ms": latency, "signals": signals})
    return out


def overall(rep, feature, kpi):
    return rep["features"][feature]["overall"][kpi]


def covers(ci, v):
    return ci[0] <= v <= ci[1]


@pytest.fixture(scope="module")
def reports():
    return [report.report(synthetic_records(3000, seed)) for seed in range(30)]


def test_confidence_intervals_cover_the_planted_effects(reports):
    for feature, kpi, truth in (("a", "engagement", ENGAGE_EFFECT), ("a", "latency_ms", LATENCY_EFFECT),
                                ("b", "engagement", 0.0), ("a", "error", 0.0)):
        plain = sum(covers(overall(r, feature, kpi)["ci95"], truth) for r in reports)
        adjusted = sum(covers(overall(r, feature, kpi)["adjusted"]["ci95"], truth) for r in reports)
        # 95% intervals over 30 independent data sets: 28.5 expected, < 25 has probability < 0.5%.
        assert plain >= 25 and adjusted >= 25, (feature, kpi, plain, adjusted)
    # ... and they are not vacuous: the planted latency effect is found in every data set.
    assert all(overall(r, "a", "latency_ms")["adjusted"]["ci95"][0] > 0 for r in reports)


def test_regression_adjustment_reduces_variance_where_the_profile_predicts_the_kpi(reports):
    lat = [overall(r, "a", "latency_ms")["adjusted"] for r in reports]
    eng = [overall(r, "a", "engagement")["adjusted"] for r in reports]
    sec = [overall(r, "a", "security")["adjusted"] for r in reports]
    # latency is ~97% explained by history_1; engagement ~9% by history_0; security by nothing.
    assert min(a["variance_reduction"] for a in lat) > 0.9
    assert 0.04 < float(np.median([a["variance_reduction"] for a in eng])) < 0.2
    assert abs(float(np.median([a["variance_reduction"] for a in sec]))) < 0.02
    # The reported reduction is real: across data sets the adjusted estimates
    # scatter less than the unadjusted ones, by about the reported factor.
    sd_adj = np.std([a["effect"] for a in lat])
    sd_raw = np.std([overall(r, "a", "latency_ms")["effect"] for r in reports])
    assert sd_adj < 0.4 * sd_raw, (sd_adj, sd_raw)
    assert sd_adj == pytest.approx(np.mean([a["se"] for a in lat]), rel=0.35)
    # The covariates used are the profile's independent columns (one-hot groups lose one).
    # Varying here: user_bucket, 3 device slots (2 independent), 4 locations (3), payload, history_0/1.
    assert lat[0]["covariates"] == 1 + 2 + 3 + 3


def test_multiplicity_correction_is_holm_and_benjamini_hochberg(reports):
    for rep in reports[:5]:
        entries = [overall(rep, f, k) for f in ("a", "b") for k in report.KPIS]
        p = np.array([e["adjusted"]["p"] for e in entries])
        m = len(p)
        assert rep["correction"]["family"] == m == 8
        order = np.argsort(p)
        holm = np.empty(m)
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * p[i]))
            holm[i] = running
        bh = np.empty(m)
        running = 1.0
        for rank in range(m - 1, -1, -1):
            i = order[rank]
            running = min(running, p[i] * m / (rank + 1))
            bh[i] = running
        got_h = np.array([e["p_holm"] for e in entries])
        got_b = np.array([e["q_bh"] for e in entries])
        assert got_h == pytest.approx(holm) and got_b == pytest.approx(bh)
        assert np.all(got_h >= p - 1e-12) and np.all(got_b <= got_h + 1e-12)
        assert (got_h > p + 1e-9).any(), "the correction changed something"
        # The planted latency effect survives; no null effect of b is called significant.
        assert overall(rep, "a", "latency_ms")["significant_holm"]
        assert not any(overall(rep, "b", k)["significant_holm"] for k in report.KPIS)


def test_ab_report_cli_prints_adjusted_and_corrected_columns(tmp_path):
    log = tmp_path / "access.log"
    log.write_text("\n".join(json.dumps(r) for r in synthetic_records(3000, 99)) + "\nnot json\n")
    p = subprocess.run([sys.executable, "-m", "augur_tools.loop.report", str(log), "--by", "device"],
                       capture_output=True, text=True, timeout=60, check=True)
    rep = report.report(synthetic_records(3000, 99))
    lat = overall(rep, "a", "latency_ms")
    line = next(ln for ln in p.stdout.splitlines() if ln.strip().startswith("a ") and "latency_ms" in ln)
    assert f"{lat['adjusted']['effect']:+.1f}" in line and f"{100 * lat['adjusted']['variance_reduction']:.0f}%" in line
    assert "*" in line.split("|")[1], "Holm-significant marked"
    assert "after Holm" in p.stdout and "variance" in p.stdout
    assert "1 log lines were not decision records" in p.stdout


def two_design_records(n, seed, with_p_on=True):
    """Feature "a" does nothing. A third of the requests are in a bad cell
    (device slot 3: 30% errors against 2%) where exploration randomises "a"
    50/50 (p_on 0.5); everywhere a 10% holdout (p_on 0.9). Pooled, the control
    arm is rich in the bad cell and "a" looks like it cuts errors."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        bad = rng.random() < 1 / 3
        p = 0.5 if bad else 0.9
        on = rng.random() < p
        x = [0.0] * 20
        x[1], x[3 if bad else 4] = 1.0, 1.0
        feat = {"on": on, "reason": "enabled" if on else ("exploring" if bad else "holdout"), "randomised": True}
        if with_p_on:
            feat["p_on"] = p
        error = rng.random() < (0.3 if bad else 0.02)
        out.append({"decision": {"rollout": "syn", "request_id": f"d{seed}-{i}", "stack": "new", "bucket": i,
                                 "features": {"a": feat}, "x": x},
                    "status": 503 if error else 200, "duration_ms": 5.0, "signals": "none"})
    return out


def test_designs_are_compared_within_themselves_not_pooled():
    """The record's p_on strata: the effect of a feature that does nothing is
    ~0 within each design; pooling the designs (records without p_on) makes it
    look like it removes errors — the bias this guards against."""
    recs = two_design_records(6000, 3)
    e = overall(report.report(recs), "a", "error")
    assert e["strata"] == 2 and e["strata_dropped"] == 0
    assert covers(e["ci95"], 0.0), e
    assert covers(e["adjusted"]["ci95"], 0.0), e["adjusted"]
    assert (e["events_treatment"], e["events_control"]) == (
        sum(r["status"] == 503 for r in recs if r["decision"]["features"]["a"]["on"]),
        sum(r["status"] == 503 for r in recs if not r["decision"]["features"]["a"]["on"]))
    pooled = overall(report.report(two_design_records(6000, 3, with_p_on=False)), "a", "error")
    assert "strata" not in pooled
    assert pooled["ci95"][1] < -0.05, f"pooled designs should look strongly beneficial: {pooled}"
    # Without the profile (one record lacks x) the adjustment still keeps the designs apart.
    del recs[0]["decision"]["x"]
    rep = report.report(recs)
    a = overall(rep, "a", "error")["adjusted"]
    assert covers(a["ci95"], 0.0) and not overall(rep, "a", "error")["significant_holm"], a
    # Records from before the field: counted, and said so.
    mixed = two_design_records(6000, 4)
    for r in mixed[::2]:
        del r["decision"]["features"]["a"]["p_on"]
    rep = report.report(mixed)
    assert rep["features"]["a"]["records_without_p_on"] == 3000
    out = io.StringIO()
    report.print_report(rep, None, out)
    assert "3000 of a's randomised records carry no p_on" in out.getvalue()
