"""What survives a configuration push, in a real Envoy 1.40, on loopback.

One Envoy, one listener whose augur configuration comes from ECDS (a watched
file). A planted harm (`new_checkout` fails tablets) gets rolled back; then new
configurations are pushed while tablet requests keep arriving, and every
tablet request decided after the push must still have the blocked feature off:
a new configuration adopts the rollout's rollback state before it serves its
first request (README: "What survives a push").

Every wait is bounded; Envoy and the upstreams are stopped when the module ends.
"""

import copy
import http.client
import time

import pytest

from augur_tools.envoy import envoyconf, harness
from augur_tools.envoy.harness import Client

LENIENT = {"min_score": 0, "max_performance_cost": 1, "max_error_risk": 1, "max_security_risk": 1}
GUARDED = {
    "name": "guarded",
    "rollout": {"percentage": 100, "salt": "guard-tests"},
    "rollback": {"sync_ms": 200},
    "features": [dict(name="new_checkout", **LENIENT), dict(name="search_v2", **LENIENT)],
}
UAS = ["Mozilla/5.0 (iPhone) Mobile", "Mozilla/5.0 (iPad; CPU OS 17_0)", "Mozilla/5.0 (Windows NT 10.0)"]
TABLET = UAS[1]
BLOCKED = "wasmcustom.augur_rollback_events_total.rollout.guarded.kind.blocked"


@pytest.fixture(scope="module")
def env(work, watched, upstreams, start_envoy):
    port = harness.free_port()
    log = work / "guarded.log"
    listener = envoyconf.ecds_listener("guarded", port, watched, GUARDED, harness.WASM.resolve(), log)
    envoy = start_envoy(envoyconf.bootstrap(harness.free_port(), [listener], upstreams.ports["old"],
                                            upstreams.ports["new"]), work)
    return {"envoy": envoy, "port": port, "log": log, "watched": watched}


def push(env, plugin, version):
    """Pushes `plugin` through ECDS; returns once Envoy has accepted it."""
    reloads = "extension_config_discovery.http_filter.augur.config_reload"
    before = env["envoy"].counters().get(reloads, 0)
    envoyconf.push_ecds(env["watched"], plugin, harness.WASM.resolve(), version)
    harness.wait_until(lambda: env["envoy"].counters().get(reloads, 0) > before, 15, f"push {version} accepted")


def tablet_requests_across(env, plugin, version, tag, after_s=1.5):
    """Keeps sending tablet requests while `plugin` is pushed and for `after_s`
    after Envoy accepted it; returns their decisions, in order."""
    c = Client(env["port"])
    ids = []
    try:
        for i in range(20):  # the old configuration, for contrast
            ids.append(send_tablet(c, f"{tag}-pre-{i}"))
        reloads = "extension_config_discovery.http_filter.augur.config_reload"
        before = env["envoy"].counters().get(reloads, 0)
        envoyconf.push_ecds(env["watched"], plugin, harness.WASM.resolve(), version)
        accepted_at = None
        deadline = time.monotonic() + 20
        i = 0
        while time.monotonic() < deadline:
            ids.append(send_tablet(c, f"{tag}-{i}"))
            i += 1
            if accepted_at is None and i % 10 == 0 and env["envoy"].counters().get(reloads, 0) > before:
                accepted_at = time.monotonic()
            if accepted_at is not None and time.monotonic() - accepted_at > after_s:
                break
        assert accepted_at is not None, "push not accepted: " + env["envoy"].log()[-2000:]
    finally:
        c.close()
    return decisions(env, ids)


def decisions(env, ids):
    """The decision records of requests `ids` (their x-request-id), in order,
    once the access log holds them all."""
    recs = {}

    def got():
        recs.update({r["decision"].get("request_id"): r["decision"] for r in harness.read_records(env["log"])
                     if isinstance(r.get("decision"), dict)})
        return all(i in recs for i in ids)

    harness.wait_until(got, 15, f"{len(ids)} records")
    return [recs[i] for i in ids]


def send_tablet(client, rid):
    status, _, _ = client.request({"x-user-id": f"t-{rid}", "x-request-id": rid, "user-agent": TABLET,
                                   "x-demo-harm": "new_checkout:0.6"})
    assert status in (200, 503)
    return rid


def plant_harm_until_blocked(env):
    envoy = env["envoy"]
    c = Client(env["port"])
    try:
        for i in range(4000):
            h = {"x-user-id": f"pb-{i % 500}", "x-request-id": f"pb-{i}", "user-agent": UAS[i % 3]}
            if i % 3 == 1:
                h["x-demo-harm"] = "new_checkout:0.6"
            c.request(h)
            if i % 50 == 0 and envoy.counters().get(BLOCKED, 0) > 0:
                return
    finally:
        c.close()
    raise AssertionError("no rollback: " + envoy.log()[-2000:])


def checkout(d):
    return d["features"]["new_checkout"]


def test_a_push_never_re_exposes_a_blocked_harm(env):
    plant_harm_until_blocked(env)
    harness.wait_until(lambda: "feature new_checkout rolled back in device=tablet" in env["envoy"].log(), 10,
                       "the block in Envoy's log")
    time.sleep(0.5)  # every worker has adopted the block (two sync periods)

    # A retrain-style push: same rollout, new model label and a changed threshold.
    v2 = copy.deepcopy(GUARDED)
    v2["model"] = {"version": "guard-v2"}
    v2["features"][1]["min_score"] = 1
    decided = tablet_requests_across(env, v2, "v2", "v2")
    after = [d for d in decided if d["model"] == "guard-v2"]
    assert len(after) >= 20, f"only {len(after)} requests decided by the pushed configuration"
    exposed = [d["request_id"] for d in decided if checkout(d)["on"]]
    assert exposed == [], f"{len(exposed)} of {len(decided)} tablet requests got the blocked feature"
    assert all(checkout(d)["reason"] == "rolled_back" for d in decided)

    # A push that adds a feature keeps the blocks of the features it keeps.
    v3 = copy.deepcopy(v2)
    v3["model"] = {"version": "guard-v3"}
    v3["features"].insert(0, dict(name="recommendations", **LENIENT))
    decided = tablet_requests_across(env, v3, "v3", "v3")
    after = [d for d in decided if d["model"] == "guard-v3"]
    assert len(after) >= 20
    assert [d["request_id"] for d in decided if checkout(d)["on"]] == []
    assert all(d["features"]["recommendations"]["reason"] != "rolled_back" for d in after), "a new feature starts clean"


def test_a_new_rollback_epoch_starts_clean(env):
    if env["envoy"].counters().get(BLOCKED, 0) == 0:
        plant_harm_until_blocked(env)
    v4 = copy.deepcopy(GUARDED)
    v4["model"] = {"version": "guard-v4"}
    v4["rollback"]["epoch"] = 1
    push(env, v4, "v4")
    c = Client(env["port"])
    ids = []
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(ids) < 40:
            status, _, _ = c.request({"x-user-id": f"e-{len(ids)}", "x-request-id": f"epoch-{len(ids)}",
                                      "user-agent": TABLET})
            assert status == 200
            ids.append(f"epoch-{len(ids)}")
    finally:
        c.close()
    fresh = [d for d in decisions(env, ids) if d["model"] == "guard-v4"]
    assert fresh and all(checkout(d)["on"] for d in fresh), [checkout(d) for d in fresh][:5]


def test_envoy_kept_serving(env):
    conn = http.client.HTTPConnection("127.0.0.1", env["port"], timeout=5)
    try:
        conn.request("GET", "/", headers={"x-user-id": "still-here"})
        assert conn.getresponse().status == 200
    finally:
        conn.close()
