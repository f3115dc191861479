"""One rollout across a fleet, for real: three Envoys 1.40 (2 workers each)
serving augur through their own watched ECDS files, a real Prometheus scraping
all three every second, and the controller (python/augur_tools/loop/controller.py) as its own
process, with the shipped defaults except the ramp (off here: a fixed 50% so
the run stays short; `make fleet-demo` runs the default ramp).

Traffic spreads every user's requests over the three proxies; tablet requests
carry a planted regression (new_checkout fails 60% of them). The tests, in
order: the regression is blocked fleet-wide (a `deny_segments` every proxy
serves); one user gets the same decision from every proxy; a controller killed
with SIGKILL resumes without repeating an action; with Prometheus down it
holds (counted) and acts on nothing; a restarted proxy comes back on the
current configuration.
"""

import json
import time

import pytest

from augur_tools.demos import fleet as fleetmod
from augur_tools.envoy import harness
from augur_tools.loop import retrain

HARM = "new_checkout:0.6"


def holds(f, reason):
    return harness.prom_sum(f.controller_metrics(), "augur_controller_holds_total", reason=reason) or 0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = fleetmod.Fleet(tmp_path_factory.mktemp("fleet"), percentage=50, controller_settings={"ramp": None})
    traffic = None
    try:
        f.start_controller()
        harness.wait_until(lambda: [a["kind"] for a in f.audit()] == ["start"], 30, "the controller's first push")
        traffic = fleetmod.Traffic(f, rate=150)
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
                       "a fleet block; controller log: " + fleet.controller_log()[-1500:])
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
                _status, _, body = c.request(dict(tablet, **{"x-user-id": f"tab-{i}"}))
                flags = json.loads(body)["headers"].get("x-augur-flags")
                if flags:
                    seen.add(fleetmod.parse_flags(flags)[1]["new_checkout"])
        finally:
            c.close()
        assert seen == {(False, "denied_segment")}, (p.name, seen)


def test_one_user_gets_the_same_decision_from_every_proxy(fleet):
    ok, n, bad = fleetmod.consistency(fleet, [f"u7-{i}" for i in range(60)])
    assert (ok, n) == (60, 60), bad


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


def test_prometheus_down_means_hold_not_act(fleet):
    before = fleet.audit()
    held = holds(fleet, "prometheus_down")
    fleet.prom.stop()
    try:
        harness.wait_until(lambda: holds(fleet, "prometheus_down") >= held + 3, 20, "holds while Prometheus is down")
    finally:
        fleet.prom.start()
    assert fleet.audit() == before
    assert any(e["reason"] == "prometheus_down" for e in fleet.controller_events("hold"))
    harness.wait_until(lambda: fleet.controller_events("resume"), 30, "the controller resumed after Prometheus")


def test_a_restarted_proxy_comes_back_on_the_current_configuration(fleet):
    version = fleet.audit()[-1]["version"]
    proxy = fleet.proxies[1]
    proxy.restart()
    assert retrain.serving_version(proxy.admin) == version, "read from its ECDS file at start"
    harness.wait_until(lambda: fleet.controller_events("resume") and
                       harness.prom_sum(fleet.controller_metrics(), "augur_controller_proxies_applied") == 3,
                       60, "all three proxies applied again")
    ok, n, bad = fleetmod.consistency(fleet, [f"u7-{i}" for i in range(30)])
    assert ok == n, bad
