"""The closed loop's moving parts in a real Envoy 1.40, on loopback.

One Envoy for the module, two listeners:

- `ecds`: augur served through ECDS from a watched file; models are pushed into
  it with python/augur_tools/loop/retrain.py's `push` (the retraining job's own code path);
- `ab`: augur with a static configuration that has A/B holdouts, in front of
  the demo upstream's KPI knobs, for the A/B report.

Every wait is bounded; Envoy and the upstreams are stopped when the module ends.
"""

import http.client
import json
import math
import random
import subprocess
import threading
import time
import warnings

import numpy as np
import pytest

from augur_tools import fixtures
from augur_tools.envoy import envoyconf, harness
from augur_tools.envoy.harness import ROOT, Client
from augur_tools.loop import retrain, train

FEATURES = ["new_checkout", "one_click_pay", "search_v2", "recommendations", "hd_images"]
DEMO = json.loads((ROOT / "envoy" / "augur-demo.json").read_text())
PY = str(ROOT / ".venv" / "bin" / "python")

ECDS_PLUGIN = {
    "name": "pushed",
    "rollout": {"percentage": 100, "salt": "push-tests"},
    "profile": DEMO["profile"],
    "features": [{"name": f} for f in FEATURES],
    "rollback": {"enabled": False},
}

AB_PLUGIN = {
    "name": "ab",
    "rollout": {"percentage": 100, "salt": "ab-tests"},
    "features": [
        {"name": "banner", "override": "on", "holdout": 30},
        {"name": "widget", "override": "on", "holdout": 20},
        {"name": "plain", "override": "on"},
    ],
    "rollback": {"enabled": False},
}


def mlp_model(version, impacts, seed=0):
    """A model exported by python/augur_tools/loop/train.py whose every prediction is `impacts`
    (one [perf, error, engagement, security] per feature), to push."""
    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(seed)
    x = rng.random((200, 20)).astype(np.float32)
    y = np.tile(np.asarray(impacts, dtype=np.float32).reshape(1, -1), (200, 1))
    mlp = MLPRegressor(hidden_layer_sizes=(4,), max_iter=1, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one iteration: it does not converge, on purpose
        mlp.fit(x, y)
    # Pin the output: zero weights into the last layer, the bias is the answer.
    mlp.coefs_[-1][:] = 0.0
    mlp.intercepts_[-1][:] = y[0]
    schema = train.augur_schema()["schema"]
    return train.export(mlp, FEATURES, version, schema)


ALL_GOOD = [0.1, 0.05, 0.6, 0.05] * len(FEATURES)  # every feature on (enabled)
ALL_RISKY = [0.1, 0.9, 0.6, 0.05] * len(FEATURES)  # every feature off (error_risk)


def plugin_with(model_bytes, version):
    return retrain.candidate_plugin(ECDS_PLUGIN, model_bytes, version, {})


@pytest.fixture(scope="module")
def env(work, watched, upstreams, start_envoy):
    wasm = harness.WASM.resolve()
    ports = {"ecds": harness.free_port(), "ab": harness.free_port()}
    logs = {"ecds": work / "ecds.log", "ab": work / "ab.log"}
    listeners = [
        envoyconf.ecds_listener("ecds", ports["ecds"], watched, ECDS_PLUGIN, wasm, logs["ecds"]),
        envoyconf.listener("ab", ports["ab"], AB_PLUGIN, wasm, logs["ab"]),
    ]
    admin = harness.free_port()
    envoy = start_envoy(envoyconf.bootstrap(admin, listeners, upstreams.ports["old"], upstreams.ports["new"]), work)
    return {"envoy": envoy, "ports": ports, "logs": logs, "watched": watched, "admin": f"127.0.0.1:{admin}",
            "work": work}


def records(env, name="ecds"):
    return [r for r in harness.read_records(env["logs"][name]) if isinstance(r.get("decision"), dict)]


def rid(record):
    """The x-request-id a logged request was sent with (the decision id is augur's own)."""
    return record["decision"].get("request_id") or ""


def decide_ids(env, ids, timeout=10):
    """{id: decision} once every id is in the ecds access log."""
    want = set(ids)

    def got():
        return {rid(r): r["decision"] for r in records(env) if rid(r) in want}

    harness.wait_until(lambda: want <= got().keys(), timeout, f"{len(want)} records")
    return got()


def probe(env, tag, n=20):
    """Sends n requests to the ecds listener; returns their decisions."""
    c = Client(env["ports"]["ecds"])
    try:
        ids = []
        for i in range(n):
            rid = f"{tag}-{i}"
            status, _, _ = c.request({"x-user-id": f"user-{i}", "x-request-id": rid,
                                      "user-agent": "Mozilla/5.0 (Windows NT 10.0)", "x-geo-region": "eu"})
            assert status == 200
            ids.append(rid)
    finally:
        c.close()
    d = decide_ids(env, ids)
    return [d[i] for i in ids]


def push_ok(env, plugin, version):
    res = retrain.push(plugin, env["watched"], env["admin"], env["envoy"].log_path, version_info=version, timeout=15)
    assert res.status == "applied", (res, env["envoy"].log()[-2000:])
    return res


def wait_for_model(env, version, tag, timeout=10):
    """Probes until requests are decided with `version` (each worker swaps on its own)."""
    deadline = time.monotonic() + timeout
    k = 0
    while time.monotonic() < deadline:
        k += 1
        ds = probe(env, f"{tag}-{k}", n=8)
        if all(d["model"] == version for d in ds):
            return ds
    raise AssertionError(f"model {version} not serving after {timeout}s")


def test_pushed_model_changes_decisions_without_restart(env):
    envoy = env["envoy"]
    pid = envoy.proc.pid
    push_ok(env, plugin_with(mlp_model("good-v1", ALL_GOOD), "good-v1"), "good-v1")
    before = wait_for_model(env, "good-v1", "t1-good")
    assert all(f["on"] and f["reason"] == "enabled" for d in before for f in d["features"].values())

    res = push_ok(env, plugin_with(mlp_model("risky-v1", ALL_RISKY), "risky-v1"), "risky-v1")
    assert res.seconds < 5 and res.serving == "risky-v1"
    after = wait_for_model(env, "risky-v1", "t1-risky")
    assert all(not f["on"] and f["reason"] == "error_risk" for d in after for f in d["features"].values())
    assert envoy.proc.poll() is None and envoy.proc.pid == pid, "no restart"


def test_model_push_under_steady_load_loses_no_request(env):
    versions = ["load-a", "load-b", "load-c"]
    plugins = [plugin_with(mlp_model(v, ALL_GOOD if i % 2 == 0 else ALL_RISKY), v) for i, v in enumerate(versions)]
    n, threads, rate = 2000, 4, 200.0
    statuses, errors = [], []
    lock = threading.Lock()
    requests_stat = "wasmcustom.augur_requests_total.rollout.pushed.stack.new"
    time.sleep(1.5)  # earlier tests' counts reach Envoy within one stats flush (1 s)
    counted_before = env["envoy"].counters().get(requests_stat, 0)
    t0 = time.monotonic() + 0.1
    counter = iter(range(n))

    def load():
        conn = http.client.HTTPConnection("127.0.0.1", env["ports"]["ecds"], timeout=10)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None or time.monotonic() > t0 + 30:
                    return
                wait = t0 + i / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    conn.request("GET", "/api/search", headers={"x-user-id": f"load-{i % 300}",
                                                                "x-request-id": f"load-{i}"})
                    r = conn.getresponse()
                    r.read()
                    with lock:
                        statuses.append(r.status)
                except (OSError, http.client.HTTPException) as e:  # a lost request: no retry
                    with lock:
                        errors.append(repr(e))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", env["ports"]["ecds"], timeout=10)
        finally:
            conn.close()

    workers = [threading.Thread(target=load, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    pushes = []
    for k, (v, p) in enumerate(zip(versions, plugins)):
        time.sleep(max(0.0, t0 + 2.5 * (k + 1) - time.monotonic()))
        pushes.append(push_ok(env, p, v))
    for w in workers:
        w.join(timeout=40)
    assert not errors, errors[:5]
    assert len(statuses) == n and set(statuses) == {200}, (len(statuses), set(statuses))
    recs = {rid(r): r for r in records(env) if rid(r).startswith("load-")}
    harness.wait_until(lambda: len({rid(r) for r in records(env)
                                    if rid(r).startswith("load-")}) >= n, 15, "load records")
    recs = {rid(r): r for r in records(env) if rid(r).startswith("load-")}
    assert len(recs) == n and all(r["status"] == 200 and r["decision"]["model_ok"] for r in recs.values())
    seen = {r["decision"]["model"] for r in recs.values()}
    assert set(versions) <= seen, seen
    assert all(p.seconds < 5 for p in pushes), [p.seconds for p in pushes]
    # Nothing lost in the stats either: counts batched by a configuration that
    # was replaced mid-flight are handed over when it goes away.
    counted = lambda: env["envoy"].counters().get(requests_stat, 0) - counted_before
    harness.wait_until(lambda: counted() >= n, 10, f"{n} requests counted")
    assert counted() == n


def test_malformed_pushes_are_refused_and_the_previous_model_keeps_serving(env, tmp_path):
    push_ok(env, plugin_with(mlp_model("keeper", ALL_GOOD), "keeper"), "keeper")
    wait_for_model(env, "keeper", "t3-before")
    good_file = env["watched"].read_text()
    rejected = "update_rejected"

    bad_b64 = dict(ECDS_PLUGIN, model={"onnx_base64": "@@not base64@@", "version": "bad-b64"})
    wrong_shape = dict(ECDS_PLUGIN, model={"onnx_base64": fixtures.b64(fixtures.wrong_shape_model()),
                                           "version": "bad-shape"})
    for plugin in (bad_b64, wrong_shape, '{"rollout": {"percentage": 50}, "features": [ truncated'):
        before = retrain.ecds_counters(env["admin"])
        res = retrain.push(plugin, env["watched"], env["admin"], env["envoy"].log_path, timeout=15)
        assert res.status == "refused", res
        assert retrain.ecds_counters(env["admin"]).get(rejected, 0) == before.get(rejected, 0) + 1
        assert res.serving == "keeper", "Envoy still serves the last good configuration"
        assert env["watched"].read_text() == good_file, "the job restored the last good file"
        ds = probe(env, f"t3-after-{res.version}", n=6)
        assert all(d["model"] == "keeper" and d["model_ok"] for d in ds)
    assert "augur: configuration refused: model" in env["envoy"].log()

    # The job's command line says so too: exit 3, "REFUSED", "keeps serving".
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(fixtures.wrong_shape_model())
    cmd = [PY, "-m", "augur_tools.loop.retrain", "--log", str(env["logs"]["ecds"]), "--ecds", str(env["watched"]),
           "--admin", env["admin"], "--envoy-log", str(env["envoy"].log_path), "--version", "cli-bad",
           "--model", str(bad)]
    p = subprocess.run(cmd + ["--no-validate"], capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "REFUSED" in p.stdout and "keeps serving" in p.stdout, p.stdout
    # Without --no-validate the job refuses to push it at all (tract / check-config).
    before = retrain.ecds_counters(env["admin"])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2 and "NOT pushed" in p.stderr, p.stdout + p.stderr
    assert retrain.ecds_counters(env["admin"]) == before, "nothing was pushed"
    assert all(d["model"] == "keeper" for d in probe(env, "t3-end", n=4))


def ab_traffic(n):
    """Requests with known KPIs from the demo upstream's knobs: a 503 for every
    11th, an engagement for every 3rd, a security event for every 17th."""
    reqs = []
    for i in range(n):
        h = {"x-user-id": f"ab-user-{i % 400}", "x-request-id": f"ab-{i}"}
        if i % 11 == 0:
            h["x-demo-status"] = "503"
        if i % 3 == 0:
            h["x-demo-engage"] = "1"
        if i % 17 == 0:
            h["x-demo-security"] = "1"
        reqs.append(h)
    return reqs


def send_ab(env, reqs):
    c = Client(env["ports"]["ab"])
    try:
        for h in reqs:
            c.request(h)
    finally:
        c.close()


def independent_counts(recs, feature, holdout):
    """The A/B arms counted straight from the log lines, without python/augur_tools/loop/report.py:
    holdout users (reason holdout) against the other users with a user id who
    would have had the feature (the filter hashes each user into a holdout)."""
    t = {"n": 0, "err": 0, "eng": 0, "sec": 0, "lat": []}
    c = {"n": 0, "err": 0, "eng": 0, "sec": 0, "lat": []}
    for r in recs:
        d = r["decision"]
        if d["stack"] != "new":
            continue
        reason = d["features"][feature]["reason"]
        if reason == "holdout":
            arm = c
        elif holdout and reason in ("enabled", "fallback_on", "forced_on") and d["x"][1] == 1:
            arm = t
        else:
            continue
        arm["n"] += 1
        arm["err"] += r["status"] >= 500 or r["status"] == 0
        arm["eng"] += "engaged" in r["signals"]
        arm["sec"] += "security" in r["signals"]
        arm["lat"].append(r["duration_ms"])
    return t, c


def test_ab_report_matches_the_records_it_read(env, tmp_path):
    reqs = ab_traffic(1200)
    send_ab(env, reqs)
    recs = harness.wait_for_records(env["logs"]["ab"], len(reqs))
    config = tmp_path / "ab.json"
    config.write_text(json.dumps(AB_PLUGIN))
    p = subprocess.run([PY, "-m", "augur_tools.loop.report", str(env["logs"]["ab"]), "--config", str(config),
                        "--json"], capture_output=True, text=True, timeout=60, check=True)
    rep = json.loads(p.stdout)
    assert rep["records"] == len(recs) == len(reqs)
    assert rep["holdout_features"] == ["banner", "widget"]
    for feature, holdout in (("banner", True), ("widget", True), ("plain", False)):
        t, ctl = independent_counts(recs, feature, holdout)
        got = rep["features"][feature]["overall"]
        if not holdout:
            assert t["n"] == ctl["n"] == 0 and got["error"]["n_treatment"] == got["error"]["n_control"] == 0
            continue
        # Sticky holdout of ~30% / 20% of 400 users.
        share = ctl["n"] / (t["n"] + ctl["n"])
        assert abs(share - (0.30 if feature == "banner" else 0.20)) < 0.08, share
        for kpi, key in (("error", "err"), ("engagement", "eng"), ("security", "sec")):
            e = got[kpi]
            assert (e["n_treatment"], e["n_control"]) == (t["n"], ctl["n"])
            assert (e["events_treatment"], e["events_control"]) == (t[key], ctl[key])
            pt, pc = t[key] / t["n"], ctl[key] / ctl["n"]
            assert e["treatment"] == pytest.approx(pt) and e["control"] == pytest.approx(pc)
            assert e["effect"] == pytest.approx(pt - pc)
            se = math.sqrt(pt * (1 - pt) / t["n"] + pc * (1 - pc) / ctl["n"])
            assert e["ci95"] == pytest.approx([pt - pc - 1.96 * se, pt - pc + 1.96 * se], abs=1e-4)
            pool = (t[key] + ctl[key]) / (t["n"] + ctl["n"])
            z = (pt - pc) / math.sqrt(pool * (1 - pool) * (1 / t["n"] + 1 / ctl["n"]))
            assert e["p"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), abs=1e-9)
        lat = got["latency_ms"]
        assert lat["treatment"] == pytest.approx(sum(t["lat"]) / t["n"])
        assert lat["control"] == pytest.approx(sum(ctl["lat"]) / ctl["n"])
        # The planted KPIs do not depend on the feature: no significant effect.
        assert got["error"]["p"] > 0.001 and got["engagement"]["p"] > 0.001
    # The text report prints the same numbers.
    p = subprocess.run([PY, "-m", "augur_tools.loop.report", str(env["logs"]["ab"]), "--config", str(config)],
                       capture_output=True, text=True, timeout=60, check=True)
    banner_err = rep["features"]["banner"]["overall"]["error"]
    line = next(ln for ln in p.stdout.splitlines() if ln.strip().startswith("banner") and " error " in ln)
    assert f"{banner_err['n_treatment']:>7}{banner_err['n_control']:>7}" in line
    assert f"{100 * banner_err['treatment']:.2f}%" in line and f"{100 * banner_err['control']:.2f}%" in line


def test_retrain_finds_the_planted_cell_not_the_broad_ones():
    """The job's estimator on synthetic records (no Envoy): a harm of f1 on
    tablets only is attributed to device=tablet, not to the broad cells every
    record shares (location=other, method=read, ...), and f2 gets nothing."""
    from augur_tools import records

    rng = random.Random(3)
    names = records.cell_names(str(harness.AUGUR_CLI))
    assert names[1] == "device=tablet" and len(names) == 25, names
    devices = {"mobile": 0, "tablet": 1, "desktop": 2}
    recs = []
    for i in range(3000):
        device = rng.choice(list(devices))
        on = {f: rng.random() < 0.5 for f in ("f1", "f2")}
        feats = {f: {"on": v, "reason": "enabled" if v else "exploring", "randomised": True} for f, v in on.items()}
        bad = (on["f1"] and device == "tablet" and rng.random() < 0.6) or rng.random() < 0.01
        cells = [devices[device], 9, 14, 15, 17, 19, 21, 23]
        recs.append({"decision": {"stack": "new", "rollout": "t", "features": feats, "cells": cells,
                                  "device": device},
                     "status": 503 if bad else 200, "duration_ms": 1, "signals": "none"})
    effects = retrain.estimate_effects(recs, ["f1", "f2"], names, slow_ms=1000)
    assert [(e.feature, e.impact, e.cell) for e in effects] == [("f1", "error_risk", "device=tablet")], effects
    assert effects[0].uplift == pytest.approx(0.6, abs=0.1)
    y = retrain.targets([records.cells(r, names) for r in recs], ["f1", "f2"], effects)
    tablet = np.array([r["decision"]["device"] == "tablet" for r in recs])
    assert np.all(y[tablet, 1] == pytest.approx(effects[0].uplift)) and np.all(y[~tablet] == 0)


def test_the_record_marks_what_report_counts(env):
    """The record's `randomised` marks are the arms python/augur_tools/loop/report.py counts, and
    its `cells` are the filter's: holdout users in the off arm, the others in
    the on arm, both marked; a feature without a holdout is never marked."""
    from augur_tools import records

    reqs = ab_traffic(300)
    for h in reqs:
        h["x-request-id"] = "marks-" + h["x-request-id"]
    send_ab(env, reqs)
    ids = {h["x-request-id"] for h in reqs}
    harness.wait_until(lambda: ids <= {r["decision"].get("request_id") for r in harness.read_records(env["logs"]["ab"])
                                       if isinstance(r.get("decision"), dict)}, 15, "records")
    recs = [r for r in harness.read_records(env["logs"]["ab"])
            if isinstance(r.get("decision"), dict) and r["decision"].get("request_id") in ids]
    names = records.cell_names(str(harness.AUGUR_CLI))
    for r in recs:
        d = r["decision"]
        assert len(d["cells"]) == 8 and records.cells(r, names)[0] == f"device={d['device']}"
        for f in ("banner", "widget"):
            want = None
            if d["stack"] == "new" and d["x"][1] == 1:
                want = "control" if d["features"][f]["reason"] == "holdout" else "treatment"
            assert records.arm(r, f) == want, (f, d["features"][f])
            # The design's chance of on: 1 - holdout (banner 30%, widget 20%; no exploration here).
            assert records.p_on(r, f) == (None if want is None else {"banner": 0.7, "widget": 0.8}[f])
        assert records.arm(r, "plain") is None
