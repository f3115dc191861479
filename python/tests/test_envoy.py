"""augur end to end in a real Envoy 1.40 (V8), on loopback.

One Envoy runs four listeners, each with its own augur plugin configuration
(they share one VM per worker) and its own access log; the `rollout` label
keeps their stats apart. Requests go through Envoy to the two demo upstreams,
which echo what they received.
"""

import json
import time
from collections import Counter

import pytest

from augur_tools import fixtures
from augur_tools.envoy import envoyconf, harness
from augur_tools.envoy.harness import ROOT, Client

DEMO = json.loads((ROOT / "envoy" / "augur-demo.json").read_text())

RULES = {
    "name": "rules",
    "rollout": {"percentage": 100},
    "segments": [
        {"name": "beta", "header": "x-user-tier", "values": ["beta"]},
        {"name": "bots", "devices": ["bot"]},
    ],
    "features": [
        {"name": "always", "override": "on"},
        {"name": "killed", "override": "off"},
        {"name": "needs_killed", "override": "on", "requires": ["killed"]},
        {"name": "needs_always", "override": "on", "requires": ["always"]},
        {"name": "beta_only", "override": "on", "allow_segments": ["beta"]},
        {"name": "no_bots", "override": "on", "deny_segments": ["bots"]},
    ],
}

OFF = {"name": "off", "override": "off", "rollout": {"percentage": 100}, "features": [{"name": "x", "override": "on"}]}

FAILOPEN = {
    "name": "failopen",
    "rollout": {"percentage": 100},
    "model": {"onnx_base64": fixtures.b64(fixtures.nan_model()), "version": "nan-fixture"},
    "features": [
        {"name": "new_checkout", "fallback": "on"},
        {"name": "search_v2", "fallback": "off"},
    ],
}

LENIENT = {"min_score": 0, "max_performance_cost": 1, "max_error_risk": 1, "max_security_risk": 1}


def rollback_config(name):
    return {
        "name": name,
        "rollout": {"percentage": 100},
        "rollback": {"sync_ms": 200},
        "features": [dict(name="new_checkout", **LENIENT), dict(name="search_v2", **LENIENT)],
    }


def slowed_config():
    c = rollback_config("slowed")
    c["rollout"] = {"percentage": 50, "salt": "slowed"}
    return c


def probed_config():
    c = rollback_config("probed")
    c["rollback"].update({"probe_share": 0.2, "probe_after_s": 2})
    return c


LISTENERS = {
    "demo": DEMO,
    "rules": RULES,
    "off": OFF,
    "failopen": FAILOPEN,
    "harmed": rollback_config("harmed"),
    "steady": rollback_config("steady"),
    "slowed": slowed_config(),
    "probed": probed_config(),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory, upstreams, start_envoy):
    work = tmp_path_factory.mktemp("envoy")
    ports = {name: harness.free_port() for name in LISTENERS}
    logs = {name: work / f"{name}.log" for name in LISTENERS}
    listeners = [
        envoyconf.listener(name, ports[name], cfg, harness.WASM, logs[name])
        for name, cfg in LISTENERS.items()
    ]
    config = envoyconf.bootstrap(harness.free_port(), listeners, upstreams.ports["old"], upstreams.ports["new"])
    return {"envoy": start_envoy(config, work), "ports": ports, "logs": logs, "work": work}


def send(port, requests):
    """Sends header dicts; returns (status, response headers, echoed body) per request."""
    c = Client(port)
    try:
        out = []
        for h in requests:
            status, rh, body = c.request(h)
            out.append((status, rh, json.loads(body) if rh.get("content-type") == "application/json" else None))
        return out
    finally:
        c.close()


def records_for(env, name, ids):
    """Waits until the access log of listener `name` holds every id; returns {id: line}."""
    ids = set(ids)

    def by_id():
        return {r["decision"]["request_id"]: r for r in harness.read_records(env["logs"][name])}

    harness.wait_until(lambda: ids <= by_id().keys(), 15, f"{len(ids)} records in {name}.log")
    return by_id()


def test_split_tracks_percentage_and_is_sticky(env):
    n = 2000
    first = [{"x-user-id": f"split-user-{i}", "x-request-id": f"split-{i}"} for i in range(n)]
    again = [{"x-user-id": f"split-user-{i}", "x-request-id": f"split-again-{i}"} for i in range(n)]
    r1 = send(env["ports"]["demo"], first)
    r2 = send(env["ports"]["demo"], again)
    assert all(s == 200 for s, _, _ in r1 + r2)
    stacks1 = [rh["x-served-by"] for _, rh, _ in r1]
    stacks2 = [rh["x-served-by"] for _, rh, _ in r2]
    assert stacks1 == stacks2, "stickiness: every user gets the same stack on every request"
    share = 100.0 * stacks1.count("new") / n
    pct = DEMO["rollout"]["percentage"]
    assert abs(share - pct) < 3.0, f"new-stack share {share:.1f}% vs deployment {pct}%"
    # The bucket is a pure function of user and salt: the native library agrees request by request.
    native = harness.cli_decide(ROOT / "envoy" / "augur-demo.json", first)
    assert [d["stack"] for d in native] == stacks1


def test_feature_headers_reach_new_stack_only(env):
    reqs = harness.synthetic_requests(400, seed=11, prefix="hdr")
    results = send(env["ports"]["demo"], reqs)
    by_id = records_for(env, "demo", [r["x-request-id"] for r in reqs])
    seen = {"old": 0, "new": 0}
    for req, (status, rh, body) in zip(reqs, results):
        assert status == 200
        echoed = body["headers"]
        stack = rh["x-served-by"]
        seen[stack] += 1
        assert echoed["x-augur-stack"] == stack
        if stack == "old":
            assert "x-augur-features" not in echoed and "x-augur-decision" not in echoed
        else:
            rec = by_id[req["x-request-id"]]
            enabled = [f for f, d in rec["decision"]["features"].items() if d["on"]]
            assert echoed["x-augur-features"] == ",".join(enabled)
            assert echoed["x-augur-decision"] == rec["decision"]["id"] != req["x-request-id"]
    assert seen["old"] > 0 and seen["new"] > 0


def test_filter_decides_exactly_like_the_native_library(env):
    reqs = harness.synthetic_requests(300, seed=23, prefix="parity")
    send(env["ports"]["demo"], reqs)
    native = {d["request_id"]: d for d in harness.cli_decide(ROOT / "envoy" / "augur-demo.json", reqs)}
    want = {r["x-request-id"] for r in reqs}
    got = {rid: r["decision"] for rid, r in records_for(env, "demo", want).items()}
    for rid in want:
        g, n = got[rid], native[rid]
        for key in ("stack", "bucket", "features", "segments", "device", "model", "model_ok"):
            assert g[key] == n[key], f"{rid} {key}: envoy {g[key]} vs native {n[key]}"
        assert g["x"] == pytest.approx(n["x"], abs=1e-6)
    # The model and the thresholds are visible: some features are on for some
    # new-stack requests and off for others, for a model reason.
    new = [got[r] for r in want if got[r]["stack"] == "new"]
    assert new
    model_reasons = {"performance_cost", "error_risk", "security_risk", "low_engagement", "low_score"}
    reasons = {d["reason"] for rec in new for d in rec["features"].values()}
    assert "enabled" in reasons and reasons & model_reasons, reasons
    # Bots are denied search_v2 by segment whatever the model says.
    for rec in new:
        if rec["device"] == "bot":
            assert rec["features"]["search_v2"]["reason"] == "denied_segment"


def test_overrides_dependencies_and_segment_lists(env):
    cases = [
        ({"x-user-id": "plain", "user-agent": "Mozilla/5.0 (Windows NT 10.0)"}, "always,needs_always,no_bots"),
        ({"x-user-id": "tester", "x-user-tier": "beta"}, "always,needs_always,beta_only,no_bots"),
        ({"x-user-id": "crawler", "user-agent": "Googlebot/2.1"}, "always,needs_always"),
    ]
    results = send(env["ports"]["rules"], [h for h, _ in cases])
    for (h, want), (status, rh, body) in zip(cases, results):
        assert status == 200 and rh["x-served-by"] == "new"
        assert body["headers"]["x-augur-features"] == want, h
    recs = harness.wait_for_records(env["logs"]["rules"], len(cases))
    f = recs[0]["decision"]["features"]
    assert f["killed"]["reason"] == "kill_switch"
    assert f["needs_killed"]["reason"] == "prerequisite_off"
    assert f["beta_only"]["reason"] == "not_in_allowed_segment"
    assert recs[2]["decision"]["features"]["no_bots"]["reason"] == "denied_segment"


def test_global_override_off_sends_everyone_to_old_with_no_features(env):
    results = send(env["ports"]["off"], [{"x-user-id": f"u{i}"} for i in range(50)])
    for status, rh, body in results:
        assert status == 200 and rh["x-served-by"] == "old"
        assert "x-augur-features" not in body["headers"]
    recs = harness.wait_for_records(env["logs"]["off"], 50)
    assert all(r["decision"]["features"]["x"]["reason"] == "global_off" for r in recs)


def test_spoofed_control_headers_change_nothing(env):
    users = [f"spoof-{i}" for i in range(200)]
    honest = [{"x-user-id": u} for u in users]
    native = harness.cli_decide(ROOT / "envoy" / "augur-demo.json", honest)
    forged = [
        dict(h, **{"x-augur-stack": "new", "x-augur-features": "evil,admin", "x-augur-decision": "forged"})
        for h in honest
    ]
    before = env["envoy"].counters().get("wasmcustom.augur_spoofed_requests_total.rollout.demo", 0)
    results = send(env["ports"]["demo"], forged)
    for d, (status, rh, body) in zip(native, results):
        assert status == 200
        assert rh["x-served-by"] == d["stack"], "a forged x-augur-stack must not move the user"
        echoed = body["headers"]
        if d["stack"] == "old":
            assert "x-augur-features" not in echoed and "x-augur-decision" not in echoed
        else:
            enabled = [f for f, v in d["features"].items() if v["on"]]
            assert echoed["x-augur-features"] == ",".join(enabled)
            assert echoed["x-augur-decision"] != "forged"
    # Counters reach Envoy on the filter's next stats flush (stats.flush_ms).
    spoofed = lambda: env["envoy"].counters().get("wasmcustom.augur_spoofed_requests_total.rollout.demo", 0)
    harness.wait_until(lambda: spoofed() - before >= len(forged), 10, "spoofed-request counter")
    time.sleep(0.3)
    assert spoofed() - before == len(forged)


def test_header_values_that_are_not_utf8_are_served_not_crashing(env):
    # HTTP/1.1 allows obs-text (bytes 0x80-0xff) in values; http.client sends str
    # header values as latin-1, so these reach Envoy as single non-UTF-8 bytes.
    odd = [
        {"x-user-id": "caf\xe9-user", "user-agent": "Bot\xff/1.0", "x-geo-region": "\xe9u", "x-augur-stack": "new\xe9"}
        for _ in range(20)
    ]
    users = [f"after-odd-{i}" for i in range(50)]
    honest = [{"x-user-id": u} for u in users]
    native = harness.cli_decide(ROOT / "envoy" / "augur-demo.json", honest)
    results = send(env["ports"]["demo"], odd + honest)
    assert [s for s, _, _ in results] == [200] * len(results), "every request is served"
    for _, rh, body in results[: len(odd)]:
        assert rh["x-served-by"] in ("old", "new")
        assert body["headers"].get("x-augur-stack") in ("old", "new"), "the forged value was replaced"
    # The VM is alive and still decides exactly like the native library.
    for d, (_, rh, _) in zip(native, results[len(odd):]):
        assert rh["x-served-by"] == d["stack"]


def test_stats_count_every_request_and_decision(env):
    envoy = env["envoy"]
    features = [f["name"] for f in RULES["features"]]

    def snapshot():
        p = envoy.prometheus()
        get = lambda name, **labels: harness.prom_sum(p, name, rollout="rules", **labels) or 0
        snap = {
            "requests": get("augur_requests_total"),
            "new": get("augur_requests_total", stack="new"),
            "2xx": get("augur_responses_total", stack="new", **{"class": "2xx"}),
            "beta_only_on": get("augur_feature_decisions_total", feature="beta_only", state="on"),
            "killed": get("augur_feature_decisions_total", feature="killed", reason="kill_switch"),
        }
        snap.update({f: get("augur_feature_decisions_total", feature=f) for f in features})
        return snap

    n = 120
    before = snapshot()
    reqs = [{"x-user-id": f"stats-{i}", "x-user-tier": "beta" if i % 3 == 0 else "standard"} for i in range(n)]
    results = send(env["ports"]["rules"], reqs)
    assert all(s == 200 for s, _, _ in results)
    expected = {"requests": n, "new": n, "2xx": n, "beta_only_on": n // 3, "killed": n, **{f: n for f in features}}

    def flushed():
        s = snapshot()
        return all(s[k] - before[k] >= v for k, v in expected.items())

    # Counters reach Envoy on the filter's next stats flush (stats.flush_ms).
    harness.wait_until(flushed, 10, "decision and response counters")
    after = snapshot()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["requests"] == delta["new"] == delta["2xx"] == n
    for f in features:
        assert delta[f] == n, f"{f}: one decision per request"
    assert delta["beta_only_on"] == n // 3
    assert delta["killed"] == n

    # Latency per stack: counters in Prometheus' histogram layout, bounds in seconds.
    def histograms():
        p = envoy.prometheus()
        return (harness.prom_sum(p, "augur_latency_seconds_count", rollout="rules", stack="new") or 0) >= n

    harness.wait_until(histograms, 15, "latency histogram")
    prom = envoy.prometheus()
    lat = lambda b: harness.prom_sum(prom, "augur_latency_seconds_bucket", rollout="rules", stack="new", le=b)
    bounds = ["0.001", "0.002", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf"]
    latency_buckets = [lat(b) for b in bounds]
    assert None not in latency_buckets, f"every le bound is a label (dots and all): {latency_buckets}"
    assert latency_buckets == sorted(latency_buckets)
    assert latency_buckets[-1] == harness.prom_sum(prom, "augur_latency_seconds_count", rollout="rules", stack="new")
    assert harness.prom_sum(prom, "augur_latency_milliseconds_total", rollout="rules", stack="new") is not None
    assert "# TYPE augur_requests_total counter" in prom, "custom stat namespace: no envoy_ prefix"
    # The demo rollout's model scores search_v2 on every request.
    send(env["ports"]["demo"], [{"x-user-id": f"scores-{i}"} for i in range(20)])

    def scores():
        p = envoy.prometheus()
        return harness.prom_sum(p, "augur_feature_score_count", rollout="demo", feature="search_v2") or 0

    harness.wait_until(lambda: scores() >= 20, 10, "score histogram")
    prom = envoy.prometheus()
    demo_scores = harness.prom_sum(prom, "augur_feature_score_count", rollout="demo", feature="search_v2")
    # Per-feature histograms are counters in Prometheus' histogram layout.
    le = lambda b: harness.prom_sum(prom, "augur_feature_score_bucket", rollout="demo", feature="search_v2", le=b)
    buckets = [le(str(b)) for b in range(10, 101, 10)] + [le("+Inf")]
    assert buckets == sorted(buckets) and buckets[-1] == demo_scores, buckets
    assert harness.prom_sum(prom, "augur_feature_score_sum", rollout="demo", feature="search_v2") > 0


def test_app_signals_are_counted_per_feature_arm_and_never_reach_the_client(env):
    # "rules" listener: every user is on the new stack; `always` is on, `killed` is off.
    reqs = [
        {"x-user-id": f"kpi-{i}", "x-request-id": f"kpi-{i}", "x-demo-engage": "1" if i < 6 else "0",
         "x-demo-security": "1" if i == 0 else "0", "x-demo-status": "503" if 6 <= i < 9 else "200"}
        for i in range(12)
    ]
    before = env["envoy"].counters()
    results = send(env["ports"]["rules"], reqs)
    for status, rh, _ in results:
        assert not any(k.startswith("x-augur-") for k in rh), f"control header leaked to the client: {rh}"
    assert [s for s, _, _ in results] == [200] * 6 + [503] * 3 + [200] * 3
    recs = records_for(env, "rules", [r["x-request-id"] for r in reqs])
    signals = [recs[r["x-request-id"]]["signals"] for r in reqs]
    assert signals == ["engaged+security"] + ["engaged"] * 5 + ["-"] * 6  # none reported: no filter state
    base = "wasmcustom.augur_feature_outcomes_total.rollout.rules.feature"

    def delta(name):
        return env["envoy"].counters().get(name, 0) - before.get(name, 0)

    expected = {
        f"{base}.always.arm.on.outcome.requests": 12,
        f"{base}.always.arm.on.outcome.engagements": 6,
        f"{base}.always.arm.on.outcome.errors": 3,
        f"{base}.always.arm.on.outcome.security": 1,
        f"{base}.killed.arm.off.outcome.engagements": 6,
        "wasmcustom.augur_engagements_total.rollout.rules.stack.new": 6,
    }
    harness.wait_until(lambda: all(delta(k) >= v for k, v in expected.items()), 10, "outcome counters")
    assert delta(f"{base}.always.arm.on.outcome.requests") == 12
    assert delta(f"{base}.always.arm.on.outcome.engagements") == 6
    assert delta(f"{base}.always.arm.on.outcome.errors") == 3
    assert delta(f"{base}.always.arm.on.outcome.security") == 1
    assert delta(f"{base}.killed.arm.off.outcome.engagements") == 6
    assert delta("wasmcustom.augur_engagements_total.rollout.rules.stack.new") == 6


def rollback_traffic(n, harm):
    uas = ["Mozilla/5.0 (iPhone) Mobile", "Mozilla/5.0 (iPad; CPU OS 17_0)", "Mozilla/5.0 (Windows NT 10.0)"]
    reqs = []
    for i in range(n):
        h = {"x-user-id": f"rb-{i % 500}", "x-request-id": f"rb-{harm}-{i}", "user-agent": uas[i % 3]}
        if harm and i % 3 == 1:
            h["x-demo-harm"] = "new_checkout:0.6"
        reqs.append(h)
    return reqs


def test_planted_regression_is_rolled_back_in_its_cell_within_seconds(env):
    envoy = env["envoy"]
    blocked = "wasmcustom.augur_rollback_events_total.rollout.harmed.kind.blocked"
    reqs = rollback_traffic(3000, harm=True)
    c = Client(env["ports"]["harmed"])
    first_block = None
    try:
        for i, h in enumerate(reqs):
            c.request(h)
            if first_block is None and i % 50 == 0 and envoy.counters().get(blocked, 0) > 0:
                first_block = i
    finally:
        c.close()
    assert first_block is not None, "no rollback: " + envoy.log()[-2000:]
    # The counter is read at once; the log line reaches the file on Envoy's next flush (250 ms).
    line = "augur: rollback: feature new_checkout rolled back in device=tablet"
    harness.wait_until(lambda: line in envoy.log(), 5, lambda: "the block's log line: " + envoy.log()[-2000:])
    recs = records_for(env, "harmed", [reqs[-1]["x-request-id"]])
    tail = [recs[h["x-request-id"]]["decision"] for h in reqs[-300:] if h["x-request-id"] in recs]
    tablets = [d for d in tail if d["device"] == "tablet"]
    others = [d for d in tail if d["device"] != "tablet"]
    assert tablets and all(d["features"]["new_checkout"]["reason"] == "rolled_back" for d in tablets)
    assert others and all(d["features"]["new_checkout"]["reason"] != "rolled_back" for d in others)
    assert all(d["features"]["search_v2"]["reason"] != "rolled_back" for d in tail), "the innocent feature stays"


def test_a_settled_block_is_probed_at_probe_share_across_workers(env):
    """rollback.probe_after_s 2, probe_share 0.2: after the block settles, a fifth
    of the blocked tablets get new_checkout back (reason probing, p_on 0.2 on both
    arms); the split is the configured one across both workers (no sample-ratio
    halt) and the harm, which stays, is not lifted."""
    envoy = env["envoy"]
    stat = "wasmcustom.augur_rollback_events_total.rollout.probed.kind."
    c = Client(env["ports"]["probed"])
    sent, blocked_at = [], None
    try:
        for i, h in enumerate(rollback_traffic(20000, harm=True)):
            c.request(h)
            sent.append((time.monotonic(), h["x-request-id"]))
            if blocked_at is None and i % 50 == 0 and envoy.counters().get(stat + "blocked", 0) > 0:
                blocked_at = time.monotonic()
            if blocked_at is not None and time.monotonic() > blocked_at + 5:
                break
    finally:
        c.close()
    assert blocked_at is not None, "no rollback: " + envoy.log()[-2000:]
    ids = [rid for t, rid in sent if t > blocked_at + 2.6]
    recs = records_for(env, "probed", [sent[-1][1]])
    decisions = [recs[r]["decision"] for r in ids if r in recs]
    tablets = [d["features"]["new_checkout"] for d in decisions if d["device"] == "tablet"]
    reasons = Counter(f["reason"] for f in tablets)
    assert len(tablets) > 100 and set(reasons) <= {"rolled_back", "probing"}, reasons
    kept = reasons["probing"] / len(tablets)
    assert 0.1 <= kept <= 0.3, reasons
    assert all(f.get("p_on") == 0.2 for f in tablets), "both arms carry the probe's design"
    counters = envoy.counters()
    assert counters.get(stat + "srm", 0) == 0 and counters.get(stat + "lifted", 0) == 0, envoy.log()[-2000:]


def test_no_rollback_on_noise(env):
    envoy = env["envoy"]
    reqs = rollback_traffic(2000, harm=False)
    for h in reqs[::7]:
        h["x-demo-status"] = "503"  # 14% background errors, on every device and feature alike
    send(env["ports"]["steady"], reqs)
    time.sleep(0.6)  # three sync periods
    counters = envoy.counters()
    for kind in ("blocked", "killed", "reverted"):
        assert counters.get(f"wasmcustom.augur_rollback_events_total.rollout.steady.kind.{kind}", 0) == 0, kind


def test_a_latency_regression_below_slow_ms_is_rolled_back(env):
    """new_checkout makes tablets 300 ms slower — far below rollback.slow_ms
    (1000): only the slow cut learned from the old stack's own latencies sees
    it. Eight clients at once, so the planted sleeps overlap."""
    import concurrent.futures

    envoy = env["envoy"]
    blocked = "wasmcustom.augur_rollback_events_total.rollout.slowed.kind.blocked"
    uas = ["Mozilla/5.0 (iPhone) Mobile", "Mozilla/5.0 (iPad; CPU OS 17_0)", "Mozilla/5.0 (Windows NT 10.0)"]

    def worker(k):
        c = Client(env["ports"]["slowed"])
        try:
            for i in range(k, 6000, 8):
                if i % 40 < 8 and envoy.counters().get(blocked, 0) > 0:
                    return
                h = {"x-user-id": f"sl-{i % 600}", "x-request-id": f"sl-{i}", "user-agent": uas[i % 3]}
                if i % 3 == 1:
                    h["x-demo-slow"] = "new_checkout:300"
                c.request(h)
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    assert envoy.counters().get(blocked, 0) > 0, "no rollback: " + envoy.log()[-2000:]
    # The counter is read at once; the log line reaches the file on Envoy's next flush (250 ms).
    line = "feature new_checkout rolled back in device=tablet on latency"
    harness.wait_until(lambda: line in envoy.log(), 5, lambda: "a latency block: " + envoy.log()[-3000:])
    # The innocent feature is left alone (records of this listener only).
    recs = [r["decision"] for r in harness.read_records(env["logs"]["slowed"]) if isinstance(r.get("decision"), dict)]
    assert recs and all(d["features"]["search_v2"]["reason"] != "rolled_back" for d in recs)
    time.sleep(0.5)  # every worker has adopted the block
    after = [{"x-user-id": f"sl-after-{i}", "x-request-id": f"sl-after-{i}", "user-agent": uas[1]} for i in range(30)]
    send(env["ports"]["slowed"], after)
    by_id = records_for(env, "slowed", [h["x-request-id"] for h in after])
    tablets = [by_id[h["x-request-id"]]["decision"] for h in after]
    tablets = [d for d in tablets if d["stack"] == "new"]
    assert tablets and all(d["features"]["new_checkout"]["reason"] == "rolled_back" for d in tablets)


def test_model_failure_fails_open_and_is_counted(env):
    reqs = [{"x-user-id": f"fo-{i}", "x-user-sessions-30d": "50" if i % 2 else "5"} for i in range(40)]
    results = send(env["ports"]["failopen"], reqs)
    assert all(s == 200 for s, _, _ in results), "a model error never fails the request"
    for i, (_, _, body) in enumerate(results):
        want = "new_checkout" if i % 2 else body["headers"]["x-augur-features"]
        assert body["headers"]["x-augur-features"] == want
    recs = harness.wait_for_records(env["logs"]["failopen"], 40)
    failed = [r for r in recs if not r["decision"]["model_ok"]]
    assert len(failed) == 20
    for r in failed:
        assert r["decision"]["features"]["new_checkout"]["reason"] == "fallback_on"
        assert r["decision"]["features"]["search_v2"]["reason"] == "fallback_off"
    harness.wait_until(
        lambda: harness.prom_sum(env["envoy"].prometheus(), "augur_model_errors_total", rollout="failopen") == 20,
        10,
        "model error counter",
    )


def test_access_log_lines_are_decision_records_with_outcomes(env):
    recs = harness.read_records(env["logs"]["demo"])
    lines = env["logs"]["demo"].read_text().splitlines()
    assert recs and len(recs) == len(lines), "every access-log line is one JSON record"
    for r in recs:
        d = r["decision"]
        assert d["v"] == 1 and d["rollout"] == "demo"
        assert d["stack"] in ("old", "new") and isinstance(r["status"], int)
        assert r["cluster"] == f"{d['stack']}_stack"
        assert len(d["x"]) == 20


@pytest.mark.parametrize(
    "plugin, message",
    [
        (
            {"rollout": {"percentage": 5}, "features": [{"name": "a", "override": "on", "requires": ["checkout_v2"]}]},
            'augur: configuration refused: features[0].requires: unknown feature "checkout_v2"',
        ),
        (
            {"rollout": {"percentage": 5, "sticky": True}, "features": [{"name": "a", "override": "on"}]},
            "augur: configuration refused: rollout.sticky: unknown field `sticky`",
        ),
        (
            {
                "rollout": {"percentage": 5},
                "model": {"onnx_base64": fixtures.b64(fixtures.wrong_shape_model())},
                "features": [{"name": "new_checkout"}],
            },
            "augur: configuration refused: model.onnx_base64: shape: output has shape 1,12",
        ),
    ],
)
def test_bad_config_is_refused_with_the_error_in_envoys_log(tmp_path, plugin, message):
    listener = envoyconf.listener("bad", harness.free_port(), plugin, harness.WASM, tmp_path / "a.log")
    config = envoyconf.bootstrap(harness.free_port(), [listener], harness.free_port(), harness.free_port())
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    rc, out = harness.validate(path)
    assert rc != 0
    assert message in out, out[-3000:]


def test_committed_envoy_config_is_current_and_valid():
    assert (ROOT / "envoy" / "envoy.yaml").read_text() == envoyconf.to_yaml(envoyconf.demo()), (
        "envoy/envoy.yaml is stale: run `python -m augur_tools.envoy.envoyconf > envoy/envoy.yaml`"
    )
    (ROOT / ".run").mkdir(exist_ok=True)  # the demo access log lives there
    rc, out = harness.validate(ROOT / "envoy" / "envoy.yaml")
    assert rc == 0, out[-3000:]
