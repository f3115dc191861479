"""One rollout across a fleet, for real: three Envoys 1.40 (2 workers each)
serving augur through their own watched ECDS files, a real Prometheus scraping
all three every second, and the controller (python/augur_tools/loop/controller.py) as its own
process, with the shipped defaults except the ramp (off here: a fixed 50% so
the run stays short; `make fleet-demo` runs the default ramp).

Traffic spreads every user's requests over the three proxies; tablet requests
carry a planted regression (new_checkout fails 60% of them). The tests, in
order: the regression is blocked fleet-wide (a `deny_segments` every proxy
serves); one user gets the same decision from every proxy; a latency-only
regression (search_v2 200 ms slower on tablets, no error, below
`rollback.slow_ms`) is blocked fleet-wide; a controller killed with SIGKILL
resumes without repeating an action; Prometheus restarted mid-run (while a new
regression starts): the controller holds while it is down and blocks the
regression once after, no action lost or repeated; a stale scrape (Prometheus
told to scrape every 30 s) and a missing proxy (dropped from the scrape) hold
while a regression waits, which is then blocked once trusted data is back; a
proxy stopped holds the controller (its scrape fails) and, restarted, comes
back on the current configuration.
"""

import json
import time

import pytest

from augur_tools.demos import fleet as fleetmod
from augur_tools.envoy import admin, harness
from augur_tools.loop import retrain

HARM = "new_checkout:0.6"


def holds(f, reason):
    return harness.prom_sum(f.controller_metrics(), "augur_controller_holds_total", reason=reason) or 0


def wait_block(f, feature, after=None, timeout=90):
    """The one new block of `feature` after the first `after` audit lines
    (default: the audit as it is now), on every proxy."""
    after = len(f.audit()) if after is None else after

    def new():
        return [a for a in f.audit()[after:] if a["kind"] == "block" and a["feature"] == feature]

    harness.wait_until(new, timeout, lambda: f"a fleet block of {feature}\n" + f.diagnosis())
    (block,) = new()
    assert block["proxies_applied"] == ["envoy-0", "envoy-1", "envoy-2"], block
    assert set(f.serving().values()) == {block["version"]}
    return block


def denied_everywhere(f, feature, device, segment_users=30):
    """Every proxy turns `feature` off by configuration for `device` users on the new stack."""
    for p in f.proxies:
        c = harness.Client(p.port)
        try:
            seen = set()
            for i in range(segment_users):
                h, _ = fleetmod.user_headers(f"{device}-{i}")
                h.update({"user-agent": fleetmod.UAS[device], ":path": "/"})
                status, _, body = c.request(h)
                assert status == 200, (p.name, status)
                flags = json.loads(body)["headers"].get("x-augur-flags")
                if flags:
                    seen.add(fleetmod.parse_flags(flags)[1][feature])
        finally:
            c.close()
        assert seen == {(False, "denied_segment")}, (p.name, feature, seen)


def held_without_acting(f, reason, more=3, timeout=30):
    """Waits for `more` holds of `reason` and checks nothing was decided meanwhile."""
    before, held = f.audit(), holds(f, reason)
    harness.wait_until(lambda: holds(f, reason) >= held + more, timeout,
                       lambda: f"holds ({reason})\n" + f.diagnosis())
    assert f.audit() == before, [a["kind"] for a in f.audit()[len(before):]]
    return before


def no_repeats(audit):
    assert [a["seq"] for a in audit] == list(range(len(audit))), "one audit line per action, none lost"
    assert len(set(blocks_of(audit))) == len(blocks_of(audit)), blocks_of(audit)


def blocks_of(audit):
    return [(a["feature"], a["segment"]) for a in audit if a["kind"] == "block"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    # max_scrape_age_s 5 (1 s scrapes): a stale sample is seen within seconds.
    f = fleetmod.Fleet(tmp_path_factory.mktemp("fleet"), percentage=50,
                       controller_settings={"ramp": None, "max_scrape_age_s": 5})
    traffic = None
    try:
        f.start_controller()
        harness.wait_until(lambda: [a["kind"] for a in f.audit()] == ["start"], 30, "the controller's first push")
        traffic = fleetmod.Traffic(f, rate=150, clients=6)  # 6: slow answers do not starve the rate
        traffic.harm = HARM
        traffic.start()
        f.traffic = traffic
        yield f
    finally:
        if traffic:
            traffic.stop()
        f.close()


def test_a_planted_regression_is_blocked_on_every_proxy(fleet):
    onset = time.time()
    harness.wait_until(lambda: any(a["kind"] == "block" for a in fleet.audit()), 90,
                       lambda: "a fleet block\n" + fleet.diagnosis())
    (block,) = [a for a in fleet.audit() if a["kind"] == "block"]
    assert (block["feature"], block["segment"]) == ("new_checkout", "tablets"), block
    assert block["proxies_applied"] == ["envoy-0", "envoy-1", "envoy-2"]
    level = fleet.controller_events("start")[0]["levels"]["single"]
    assert block["evidence"]["ln_m"] >= level and block["evidence"]["on"][1] > block["evidence"]["off"][1]
    assert set(fleet.serving().values()) == {block["version"]}
    print(f"blocked on 3/3 proxies {block['ts'] - onset:.1f} s after onset; audit: {block['why']}")
    # Every proxy now turns new_checkout off for tablets by configuration.
    h, _ = fleetmod.user_headers("u7-1")
    tablet = dict(h, **{"user-agent": fleetmod.UAS["tablet"], ":path": "/api/checkout"})
    for p in fleet.proxies:
        c = harness.Client(p.port)
        try:
            seen = set()
            for i in range(40):  # 50%: some of these users are on the new stack
                status, _, body = c.request(dict(tablet, **{"x-user-id": f"tab-{i}"}))
                assert status == 200, (p.name, status)
                flags = json.loads(body)["headers"].get("x-augur-flags")
                if flags:
                    seen.add(fleetmod.parse_flags(flags)[1]["new_checkout"])
        finally:
            c.close()
        assert seen == {(False, "denied_segment")}, (p.name, seen)


def test_one_user_gets_the_same_decision_from_every_proxy(fleet):
    ok, n, bad = fleetmod.consistency(fleet, [f"u7-{i}" for i in range(60)])
    assert (ok, n) == (60, 60), bad


def test_a_latency_only_regression_is_blocked_on_every_proxy(fleet):
    """search_v2 answers tablets 200 ms later: no error, no security event, below
    rollback.slow_ms (1000 ms) — slow only against the learned control cut
    (its p90, at least slow_floor_ms 100 ms), the filter's latency KPI."""
    rollback = fleet.rollout.get("rollback") or {}
    assert 200 < rollback.get("slow_ms", 1000), "below the always-slow cut"
    onset = time.time()
    # Tablets: the cell the proxies are still exploring after the first block (a
    # proxy explores its strongest suspects within rollback.explore_budget first).
    fleet.traffic.plant = {"tablet": {"x-demo-slow": "search_v2:200"}}
    try:
        block = wait_block(fleet, "search_v2")
    finally:
        fleet.traffic.plant = {}
    assert block["segment"] == "tablets", block
    ev = block["evidence"]
    assert ev["kpi"] == "latency" and "on latency" in block["why"], block
    level = fleet.controller_events("start")[0]["levels"]["single"]
    assert ev["ln_m"] >= level and ev["on"][1] / ev["on"][0] > 2 * ev["off"][1] / max(ev["off"][0], 1), ev
    print(f"latency-only: blocked on 3/3 proxies {block['ts'] - onset:.1f} s after onset; audit: {block['why']}")
    denied_everywhere(fleet, "search_v2", "tablet")


def test_a_killed_controller_resumes_without_repeating_an_action(fleet):
    before = fleet.audit()
    fleet.stop_controller(kill=True)
    fleet.start_controller()
    harness.wait_until(lambda: len(fleet.controller_events("status")) > 0 and
                       fleet.controller_events("start")[-1].get("resumed"), 30, "the controller resumed")
    time.sleep(6)  # several evaluations on the same evidence
    after = fleet.audit()
    assert after == before, [a["kind"] for a in after[len(before):]]
    assert fleet.controller_events("start")[-1]["resumed"]["seq"] == before[-1]["seq"]
    assert set(fleet.serving().values()) == {before[-1]["version"]}


def test_prometheus_restarted_mid_run_holds_then_acts_once(fleet):
    """Prometheus stops while a new regression starts (recommendations fails 60%
    of desktop requests): the controller holds — counted, no action — while it
    is down; restarted (same TSDB), the controller resumes and blocks the
    regression exactly once; nothing earlier is repeated or lost."""
    held, resumed = holds(fleet, "prometheus_down"), len(fleet.controller_events("resume"))
    fleet.prom.stop()
    try:
        fleet.traffic.plant = {"desktop": {"x-demo-harm": "recommendations:0.6"}}
        before = held_without_acting(fleet, "prometheus_down", more=5)
        assert holds(fleet, "prometheus_down") >= held + 5
    finally:
        fleet.prom.start()
    try:
        harness.wait_until(lambda: len(fleet.controller_events("resume")) > resumed, 30,
                           "the controller resumed after Prometheus")
        block = wait_block(fleet, "recommendations", after=len(before))
    finally:
        fleet.traffic.plant = {}
    assert block["segment"] == "desktops" and block["seq"] == before[-1]["seq"] + 1, block
    assert any(e["reason"] == "prometheus_down" for e in fleet.controller_events("hold"))
    time.sleep(3)  # more evaluations on the same evidence: no second block
    no_repeats(fleet.audit())


def test_a_stale_scrape_holds_until_fresh_samples_return(fleet):
    """Prometheus restarted with a 10 min scrape interval (a stuck or overloaded
    scraper): it serves the samples from before the restart (Prometheus writes
    no staleness markers on shutdown), which age past max_scrape_age_s (5 s),
    and the controller holds, though a regression (new_checkout fails 60% of
    phone requests) builds up meanwhile; back to 1 s scrapes it acts on that
    regression, once. (A reload that changes the job instead marks the old
    series stale: series_missing until the next scrape, also a hold.)"""
    fleet.prometheus_reload(scrape_s=600, restart=True)
    try:
        stale = holds(fleet, "stale_scrape")
        harness.wait_until(lambda: holds(fleet, "stale_scrape") > stale, 20, "a stale-scrape hold")
        fleet.traffic.plant = {"phone": {"x-demo-harm": "new_checkout:0.6"}}
        before = held_without_acting(fleet, "stale_scrape", more=8)
        assert any(e["reason"] == "stale_scrape" and "ago (max_scrape_age_s 5" in e["detail"]
                   for e in fleet.controller_events("hold"))
    finally:
        fleet.prometheus_reload()
    try:
        block = wait_block(fleet, "new_checkout", after=len(before))
    finally:
        fleet.traffic.plant = {}
    assert (block["feature"], block["segment"]) == ("new_checkout", "phones"), block
    assert block["seq"] == before[-1]["seq"] + 1
    no_repeats(fleet.audit())


def test_a_proxy_missing_from_the_scrape_holds(fleet):
    """envoy-2 dropped from Prometheus's targets: its series go stale (marked
    by Prometheus) and the fleet's sums would lack it: hold (series_missing);
    back in the targets: resume."""
    fleet.prometheus_reload(targets=[p.admin for p in fleet.proxies[:2]])
    try:
        held_without_acting(fleet, "series_missing")
        e = [e for e in fleet.controller_events("hold") if e["reason"] == "series_missing"][-1]
        assert fleet.proxies[2].admin in e["detail"], e
    finally:
        fleet.prometheus_reload()
    resumed = len(fleet.controller_events("resume"))
    harness.wait_until(lambda: len(fleet.controller_events("resume")) > resumed, 30, "resumed")


def test_with_a_quorum_a_proxy_missing_from_the_scrape_is_left_out(fleet):
    """quorum 0.6 of three proxies: envoy-2 dropped from Prometheus's targets is
    left out of the sums (logged `left_out`) and the controller goes on deciding
    instead of holding; back in the targets it rejoins, counted from its return."""
    settings = json.loads(fleet.controller_config.read_text())
    fleet.stop_controller()
    fleet.controller_config.write_text(json.dumps(dict(settings, quorum=0.6)))
    fleet.start_controller()
    missing = fleet.proxies[2].admin
    try:
        before = len(fleet.controller_events("left_out"))
        fleet.prometheus_reload(targets=[p.admin for p in fleet.proxies[:2]])
        try:
            harness.wait_until(lambda: any(e["proxies"] == {missing: "series_missing"}
                                           for e in fleet.controller_events("left_out")[before:]),
                               30, lambda: "left out\n" + fleet.diagnosis())
        finally:
            fleet.prometheus_reload()
        harness.wait_until(lambda: any(e["rejoined"] == [missing] and e["proxies"] == {}
                                       for e in fleet.controller_events("left_out")[before:]),
                           30, lambda: "rejoined\n" + fleet.diagnosis())
    finally:
        fleet.stop_controller()
        fleet.controller_config.write_text(json.dumps(settings))
        fleet.start_controller()
    no_repeats(fleet.audit())


def test_a_restarted_proxy_comes_back_on_the_current_configuration(fleet):
    version = fleet.audit()[-1]["version"]
    proxy = fleet.proxies[1]
    proxy.stop()
    try:
        held_without_acting(fleet, "scrape_failed")  # its target is down: up 0
    finally:
        proxy.start()
    assert retrain.serving_version(proxy.admin) == version, "read from its ECDS file at start"
    assert admin.serving_revision(proxy.admin, "fleet") == fleet.audit()[-1]["revision"], "the revision verified"
    harness.wait_until(lambda: fleet.controller_events("resume") and
                       harness.prom_sum(fleet.controller_metrics(), "augur_controller_proxies_applied") == 3,
                       60, "all three proxies applied again")
    ok, n, bad = fleetmod.consistency(fleet, [f"u7-{i}" for i in range(30)])
    assert ok == n, bad
