"""OpenFeature providers behind the real Envoy: a small Python app
(`clients/python/example_app.py`, openfeature-sdk) and a small Node app
(`clients/node/example_app.js`, @openfeature/server-sdk) each resolve their flags
from the request augur decided, and agree with augur's decision record
(the access log) request by request.
"""

import json
import subprocess
import sys
from urllib.parse import quote

import pytest

from augur_openfeature import REASONS
from augur_tools.envoy import envoyconf, harness
from augur_tools.envoy.harness import ROOT, Client, Envoy

LENIENT = {"min_score": 0, "max_performance_cost": 1, "max_error_risk": 1, "max_security_risk": 1}
PLUGIN = {
    "name": "openfeature",
    "rollout": {"percentage": 60},
    "features": [
        {"name": "always", "override": "on"},
        {"name": "killed", "override": "off"},
        dict(name="search_v2", **LENIENT),
        {"name": "new_checkout"},
    ],
}
FLAGS = ["always", "killed", "search_v2", "new_checkout", "not_a_feature"]
APPS = {
    "python": [sys.executable, str(ROOT / "clients" / "python" / "example_app.py")],
    "node": ["node", str(ROOT / "clients" / "node" / "example_app.js")],
}


def test_both_providers_map_every_reason_the_filter_gives():
    schema = json.loads(subprocess.run([str(harness.AUGUR_CLI), "schema"], capture_output=True, text=True, check=True).stdout)
    node = subprocess.run(
        ["node", "-e", "console.log(JSON.stringify(Object.keys(require(process.argv[1]).REASONS)))", str(ROOT / "clients" / "node")],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "probing" in schema["reasons"] and len(schema["reasons"]) >= 19, schema["reasons"]
    assert sorted(REASONS) == sorted(schema["reasons"]), "Python provider"
    assert sorted(json.loads(node)) == sorted(schema["reasons"]), "Node provider"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("openfeature")
    procs, ports, listeners, clusters = [], {}, [], []
    envoy = None
    try:
        for name, cmd in APPS.items():
            app_port = harness.free_port()
            procs.append(subprocess.Popen(cmd + ["--port", str(app_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            ports[name] = harness.free_port()
            cluster = f"{name}_app"
            clusters.append(envoyconf.cluster(cluster, app_port))
            # Both stacks are the same app here: it sees x-augur-stack and resolves accordingly.
            routes = envoyconf.route_config(old_cluster=cluster, new_cluster=cluster)
            listeners.append(
                envoyconf.http_listener(
                    name, ports[name], routes, [envoyconf.wasm_filter(PLUGIN, harness.WASM), envoyconf.router_filter()],
                    access_log_path=work / f"{name}.log",
                    extra_access_logs=[(work / f"{name}.otel.log", envoyconf.otel_access_log_format(PLUGIN["name"]))],
                )
            )
            harness.wait_until(lambda app_port=app_port: harness.port_open(app_port), 20, f"{name} app on {app_port}")
        config = envoyconf.bootstrap(harness.free_port(), listeners, harness.free_port(), harness.free_port())
        config["static_resources"]["clusters"].extend(clusters)
        envoy = Envoy(config, workdir=work)
        yield {"ports": ports, "logs": {n: work / f"{n}.log" for n in APPS}, "otel": {n: work / f"{n}.otel.log" for n in APPS}}
    finally:
        if envoy:
            envoy.close()
        for p in procs:
            harness.stop_process(p, grace=5)


@pytest.mark.parametrize("app", list(APPS))
def test_provider_resolves_augurs_decision_for_the_request(env, app):
    n = 120
    reqs = []
    for i in range(n):
        h = {"x-user-id": f"of-{app}-{i}", "x-request-id": f"of-{app}-{i}", ":path": "/?flags=" + quote(",".join(FLAGS))}
        if i % 2:
            # Forged decisions from the client: augur strips them before deciding.
            h.update({"x-augur-flags": "@model=evil,killed=on;forced_on", "x-augur-stack": "new"})
        reqs.append(h)
    c = Client(env["ports"][app])
    try:
        answers = {}
        for h in reqs:
            status, _, body = c.request(dict(h))
            assert status == 200, body
            answers[h["x-request-id"]] = json.loads(body)
    finally:
        c.close()
    records = {r["decision"]["request_id"]: r["decision"] for r in harness.wait_for_records(env["logs"][app], n)}
    stacks = set()
    for rid, got in answers.items():
        d = records[rid]
        stacks.add(d["stack"])
        assert got["stack"] == d["stack"]
        for flag in FLAGS:
            r = got["flags"][flag]
            if d["stack"] == "old":
                assert (r["value"], r["variant"], r["reason"]) == (False, "off", "SPLIT"), (rid, flag, r)
                assert r["metadata"]["reason"] == "old_stack"
                continue
            if flag == "not_a_feature":
                assert r["value"] is False and r["error_code"] == "FLAG_NOT_FOUND", r
                continue
            want = d["features"][flag]
            assert r["value"] == want["on"], (rid, flag, r, want)
            assert r["variant"] == ("on" if want["on"] else "off")
            assert r["reason"] == str(REASONS[want["reason"]]), (flag, want["reason"], r["reason"])
            meta = r["metadata"]
            assert meta["reason"] == want["reason"] and meta["stack"] == "new"
            assert meta["model_version"] == d["model"] and meta["model_ok"] == d["model_ok"]
            assert meta["decision_id"] == d["id"], "augur's own decision id, not the client's x-request-id"
            assert meta.get("score") == want.get("score"), (flag, meta, want)
        if d["stack"] == "new":
            assert got["flags"]["killed"]["value"] is False, "a forged x-augur-flags never reaches the app"
    assert stacks == {"old", "new"}
    scored = [a["flags"]["search_v2"]["metadata"].get("score") for a in answers.values() if a["stack"] == "new"]
    assert any(s is not None for s in scored), "the model's score reaches the app as flag metadata"


def test_access_log_carries_the_opentelemetry_feature_flag_attributes(env):
    """The per-request feature_flag.* attributes Envoy fills in, and augur's
    per-feature results, next to each request (README "OpenTelemetry")."""
    ids = [f"otel-{i}" for i in range(40)]
    c = Client(env["ports"]["python"])
    try:
        for rid in ids:
            assert c.request({"x-user-id": rid, "x-request-id": rid, "x-augur-flags": "forged=on;forced_on"})[0] == 200
    finally:
        c.close()
    def records():
        return {r["decision"].get("request_id"): r["decision"] for r in harness.read_records(env["logs"]["python"])
                if isinstance(r.get("decision"), dict)}

    harness.wait_until(lambda: set(ids) <= records().keys(), 15, "decision records")
    records = records()
    harness.wait_until(
        lambda: {r.get("feature_flag.context.id") for r in harness.read_records(env["otel"]["python"])} >= set(ids),
        15, "OpenTelemetry attribute lines",
    )
    lines = {r["feature_flag.context.id"]: r for r in harness.read_records(env["otel"]["python"])}
    for rid in ids:
        line, d = lines[rid], records[rid]
        assert line["feature_flag.provider.name"] == "augur" and line["feature_flag.set.id"] == PLUGIN["name"]
        assert line["augur.stack"] == d["stack"]
        if d["stack"] == "old":
            assert line["augur.flags"] == "-"
            continue
        entries = dict(e.split("=", 1) for e in line["augur.flags"].split(","))
        assert entries.pop("@model") == d["model"]
        assert set(entries) == set(d["features"]), "augur's own flags, not the forged one"
        for name, value in entries.items():
            state, reason = value.split(";")[:2]
            assert (state == "on", reason) == (d["features"][name]["on"], d["features"][name]["reason"])
