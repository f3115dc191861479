"""The edges of issue 13 against the real Envoy 1.40: underscore look-alikes of
control headers, a decision id (and draws) the client cannot choose, a pushed
change of `control_header_prefix`, the log lines of a refused push, and
`augur check-config --envoy`.
"""

import json
import re
import subprocess
import time

import pytest

from augur_tools.envoy import envoyconf, harness
from augur_tools.envoy.harness import ROOT, Client
from augur_tools.loop import retrain

DEMO = json.loads((ROOT / "envoy" / "augur-demo.json").read_text())
ALL_NEW = {"rollout": {"percentage": 100}, "features": [{"name": "a", "override": "on"}]}


def plugin(name, **extra):
    return dict(ALL_NEW, name=name, **extra)


ANON = plugin("anon", rollout={"percentage": 50, "when_absent": "per_request"})


@pytest.fixture(scope="module")
def env(work, watched, upstreams, start_envoy):
    wasm = harness.WASM.resolve()
    names = ("shipped", "allow", "anon", "ecds")
    ports = {n: harness.free_port() for n in names}
    logs = {n: work / f"{n}.log" for n in names}
    allow = envoyconf.listener("allow", ports["allow"], plugin("allow"), wasm, logs["allow"])
    hcm = allow["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["common_http_protocol_options"] = envoyconf.protocol_options("ALLOW")
    listeners = [
        envoyconf.listener("shipped", ports["shipped"], plugin("shipped"), wasm, logs["shipped"]),
        allow,
        envoyconf.listener("anon", ports["anon"], ANON, wasm, logs["anon"]),
        envoyconf.ecds_listener("ecds", ports["ecds"], watched, plugin("ecds"), wasm, logs["ecds"]),
    ]
    admin = harness.free_port()
    # A slow start (V8 compiles the module per thread) is not what this tests.
    envoy = start_envoy(envoyconf.bootstrap(admin, listeners, upstreams.ports["old"], upstreams.ports["new"]), work,
                        ready_timeout=300)
    return {"envoy": envoy, "ports": ports, "logs": logs, "watched": watched, "admin": f"127.0.0.1:{admin}"}


def send(port, requests):
    c = Client(port)
    try:
        return [c.request(h) for h in requests]
    finally:
        c.close()


LOOK_ALIKES = {"x_augur_stack": "new", "x_augur_features": "admin", "x-augur_decision": "forged", "x_augur-x": "1"}


@pytest.mark.parametrize("listener", ["shipped", "allow"])
def test_underscore_look_alikes_never_reach_the_app(env, listener):
    # shipped: Envoy drops every '_' header (headers_with_underscores_action);
    # allow: a listener that must accept them, where augur strips its own.
    results = send(env["ports"][listener], [dict(LOOK_ALIKES, **{"x-user-id": f"u{i}"}) for i in range(20)])
    for status, rh, body in results:
        assert status == 200 and rh["x-served-by"] == "new"
        echoed = json.loads(body)["headers"]
        leaked = sorted(k for k in echoed if k.replace("_", "-").startswith("x-augur-") and "_" in k)
        assert not leaked, f"{listener}: {leaked} reached the app"
        assert echoed["x-augur-features"] == "a"


def test_the_decision_id_is_augurs_own(env):
    reqs = [{"x-user-id": f"id-{i}", "x-request-id": "picked-by-client"} for i in range(30)]
    results = send(env["ports"]["shipped"], reqs)
    ids = [json.loads(body)["headers"]["x-augur-decision"] for _, _, body in results]
    assert "picked-by-client" not in ids and len(set(ids)) == len(ids), ids[:5]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids), ids[:5]
    harness.wait_until(lambda: {r["decision"]["id"] for r in harness.read_records(env["logs"]["shipped"])}
                       >= set(ids), 15, "records with augur's ids")
    recs = {r["decision"]["id"]: r["decision"] for r in harness.read_records(env["logs"]["shipped"])}
    assert all(recs[i]["request_id"] == "picked-by-client" for i in ids)


def test_a_replayed_x_request_id_does_not_pick_the_stack_of_anonymous_requests(env):
    # when_absent: per_request at 50%: one x-request-id sent 200 times must
    # still be split, not land every time where the client found it lands.
    results = send(env["ports"]["anon"], [{"x-request-id": "always-the-same"}] * 200)
    served = [rh["x-served-by"] for _, rh, _ in results]
    assert 50 <= served.count("new") <= 150, served.count("new")


def push(env, cfg, version):
    return retrain.push(cfg, env["watched"], env["admin"], env["envoy"].log_path, version_info=version, timeout=15)


def test_a_pushed_prefix_change_needs_a_migration(env):
    forged = [{"x-user-id": f"pfx-{i}", "x-augur-stack": "new", "x-ctl-stack": "new"} for i in range(10)]
    moved = plugin("ecds", rollout={"percentage": 0}, control_header_prefix="x-ctl-")
    res = push(env, moved, "prefix-no-migration")
    assert res.status == "refused", res
    assert any('control_header_prefix: changes from "x-augur-" to "x-ctl-" without a migration' in ln
               for ln in res.log), res.log
    # Still the last good configuration: 100% new, x-augur-* stripped.
    for status, rh, body in send(env["ports"]["ecds"], forged):
        assert status == 200 and rh["x-served-by"] == "new"
        assert json.loads(body)["headers"]["x-augur-stack"] == "new", "augur wrote it, under the old prefix"

    # With the migration: both prefixes stripped, the stack header written under
    # both names, so the route table (still on x-augur-stack) keeps working.
    migrating = dict(moved, previous_control_header_prefixes=["x-augur-"])
    res = push(env, migrating, "prefix-migration")
    assert res.status == "applied", res
    harness.wait_until(lambda: all(rh["x-served-by"] == "old" for _, rh, _ in send(env["ports"]["ecds"], forged)),
                       10, "the 0% rollout serving")
    for status, rh, body in send(env["ports"]["ecds"], forged):
        echoed = json.loads(body)["headers"]
        assert status == 200 and rh["x-served-by"] == "old", "a forged stack header moved a user"
        assert echoed["x-ctl-stack"] == "old" and echoed["x-augur-stack"] == "old"
    back = push(env, plugin("ecds", control_header_prefix="x-ctl-", previous_control_header_prefixes=["x-augur-"]),
                "prefix-migration-100")
    assert back.status == "applied", back
    harness.wait_until(lambda: all(rh["x-served-by"] == "new" for _, rh, _ in send(env["ports"]["ecds"], forged)),
                       10, "new stack through the old route name during the migration")


# What Envoy 1.40 logs for one refused push (README "Envoy log lines of a
# refused push"): augur's own reason at [error], then Envoy's own [critical]
# lines, which no filter can avoid while refusing: "Plugin <name> failed to
# load" once (main thread) and "Plugin configured to fail closed failed to
# load" once per thread that loads it (main + each worker), then the ECDS
# rejection at [warning].
ENVOY_REFUSAL_LINES = [
    ("error", "wasm log augur augur: configuration refused: "),
    ("critical", "Plugin augur failed to load"),
    ("critical", "Plugin configured to fail closed failed to load"),
    ("warning", "Filesystem config update rejected: Unable to create Wasm plugin augur"),
]


def test_a_refused_push_logs_its_reason_once_without_repeating_augur(env):
    bad = plugin("ecds", rollout={"percentage": 5, "sticky": True})
    res = push(env, bad, "refused-sticky")
    assert res.status == "refused", res
    time.sleep(0.5)  # the workers' lines land just after the main thread's
    lines = [ln for ln in env["envoy"].log().splitlines() if "[wasm]" in ln or "[config]" in ln]
    reason = [ln for ln in lines if "configuration refused: rollout.sticky: unknown field `sticky`" in ln]
    assert len(reason) == 1 and "[error]" in reason[0], lines
    assert "augur: augur:" not in env["envoy"].log()
    for level, text in ENVOY_REFUSAL_LINES:
        assert any(f"[{level}]" in ln and text in ln for ln in lines), (level, text, lines[-10:])
    critical = {ln.split("] ", 3)[-1] for ln in lines if "[critical]" in ln}
    assert critical <= {t for lv, t in ENVOY_REFUSAL_LINES if lv == "critical"}, critical


def check_config(plugin_path, envoy_path):
    return subprocess.run([str(harness.AUGUR_CLI), "check-config", str(plugin_path), "--envoy", str(envoy_path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_check_config_cross_checks_the_route_table(tmp_path):
    r = check_config(ROOT / "envoy" / "augur-demo.json", ROOT / "envoy" / "envoy.yaml")
    assert r.returncode == 0, r.stderr
    assert 'x-augur-stack: new" routes via new_stack' in r.stdout, r.stdout
    assert "headers_with_underscores_action" not in r.stderr, r.stderr

    moved = dict(DEMO, control_header_prefix="x-ctl-")
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    r = check_config(tmp_path / "moved.json", ROOT / "envoy" / "envoy.yaml")
    assert r.returncode == 1
    assert 'route "new_stack" matches header "x-augur-stack", which augur neither writes nor strips' in r.stderr, r.stderr
    assert '"x-ctl-stack"' in r.stderr

    migrating = dict(moved, previous_control_header_prefixes=["x-augur-"])
    (tmp_path / "migrating.json").write_text(json.dumps(migrating))
    r = check_config(tmp_path / "migrating.json", ROOT / "envoy" / "envoy.yaml")
    assert r.returncode == 0, r.stderr

    routes = envoyconf.route_config(stack_header="x-ctl-stack")
    cfg = envoyconf.demo()
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"] = routes
    del hcm["common_http_protocol_options"]
    (tmp_path / "envoy.json").write_text(json.dumps(cfg))
    r = check_config(tmp_path / "moved.json", tmp_path / "envoy.json")
    assert r.returncode == 0, r.stderr
    assert "headers_with_underscores_action" in r.stderr, "a config without it is warned about"
    r = check_config(ROOT / "envoy" / "augur-demo.json", tmp_path / "envoy.json")
    assert r.returncode == 1 and 'matches header "x-ctl-stack"' in r.stderr, r.stderr
