"""The dashboard and the alert rules against a real Prometheus scraping the real
Envoy.

Prometheus (Debian `prometheus`) runs on loopback with a generated
configuration: a 1 s scrape of Envoy's `/stats/prometheus` and a 1 s rule
evaluation of `deploy/prometheus/augur-rules.yaml`. The rules are loaded as
shipped except that every `for:` is 0 s, so a test run need not wait minutes
for an alert to be pending long enough; the expressions are unchanged.

Envoy runs these rollouts: `steady` (healthy traffic, half of it with forged
x-augur-* headers), `broken` (its new stack answers 503 to everything, with
automated rollback on), `modelfail` (a model that yields NaN on some requests),
`harmful` (a feature that fails half its requests), `mixed` (two listeners that
disagree on the exploration share: a sample-ratio mismatch) and `idle` (no
traffic). Every recording rule and every dashboard expression
must return data; the planted regressions must fire their alerts.
"""

import json
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from augur_tools import fixtures
from augur_tools.envoy import envoyconf, harness
from augur_tools.envoy.harness import ROOT, Client

RULES = ROOT / "deploy" / "prometheus" / "augur-rules.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "augur.json"
LENIENT = {"min_score": 0, "max_performance_cost": 1, "max_error_risk": 1, "max_security_risk": 1}
ROLLOUTS = {
    "steady": {
        "name": "steady",
        "rollout": {"percentage": 50},
        "stats": {"flush_ms": 200},
        "features": [{"name": "always", "override": "on"}, {"name": "killed", "override": "off"}, dict(name="search_v2", **LENIENT)],
    },
    "broken": {
        "name": "broken",
        "rollout": {"percentage": 50},
        "stats": {"flush_ms": 200},
        "rollback": {"sync_ms": 200},
        "features": [{"name": "x", "override": "off"}],
    },
    "modelfail": {
        "name": "modelfail",
        "rollout": {"percentage": 100},
        "stats": {"flush_ms": 200},
        "model": {"onnx_base64": fixtures.b64(fixtures.nan_model()), "version": "nan-fixture"},
        "features": [{"name": "new_checkout", "fallback": "on"}, {"name": "search_v2", "fallback": "off"}],
    },
    # new_checkout fails half of its requests everywhere: blocked in a cell, and (with
    # kill_after_cells 1, so that a few hundred requests suffice) killed.
    "harmful": {
        "name": "harmful",
        "rollout": {"percentage": 50},
        "stats": {"flush_ms": 200},
        "rollback": {"sync_ms": 200, "kill_after_cells": 1},
        "features": [dict(name="new_checkout", **LENIENT)],
    },
    "idle": {"name": "idle", "rollout": {"percentage": 50}, "features": [{"name": "x", "override": "on"}]},
}
# One rollout ("mixed") served by two listeners whose configurations disagree on
# rollback.explore_share (an operator's half-finished change): they share one
# rollback state (same name, salt and epoch), so the pooled exploration draws
# match neither configured split — a real sample-ratio mismatch. A mild harm
# (new_checkout fails 10% of its requests) makes cells suspect, so exploration runs.
for listener, share in (("mixed_a", 0.5), ("mixed_b", 0.05)):
    ROLLOUTS[listener] = {
        "name": "mixed",
        "rollout": {"percentage": 50},
        "stats": {"flush_ms": 200},
        "rollback": {"sync_ms": 200, "explore_share": share},
        "features": [dict(name="new_checkout", **LENIENT)],
    }
# The alerts the planted regressions must fire, and for which rollout.
EXPECTED_FIRING = {
    "AugurNewStackErrors": "broken",
    "AugurRolloutReverted": "broken",
    "AugurModelErrors": "modelfail",
    "AugurSpoofingSurge": "steady",
    "AugurNoTraffic": "idle",
    "AugurFeatureKilled": "harmful",
    "AugurFeatureRolledBack": "harmful",
    "AugurSampleRatioMismatch": "mixed",
}
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0)", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Mobile",
    "Mozilla/5.0 (iPad; CPU OS 17_0)", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0)",
)

class Always503(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(503)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, fmt, *args):
        pass


def prom_query(port, expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def alerts(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=10) as r:
        return json.loads(r.read())["data"]["alerts"]


def rules_for_test(tmp_path):
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    path = tmp_path / "augur-rules.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, doc


def dashboard_exprs():
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "1m").replace("$rollout", ".*")
            out.append((p["title"], expr))
    return out


def metric_names(expr):
    return set(re.findall(r"\b(augur_[a-z_]+)\b", expr))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, upstreams, start_envoy):
    work = tmp_path_factory.mktemp("monitoring")
    broken = ThreadingHTTPServer(("127.0.0.1", 0), Always503)
    threading.Thread(target=broken.serve_forever, daemon=True).start()
    ports = {name: harness.free_port() for name in ROLLOUTS}
    listeners = []
    for name, plugin in ROLLOUTS.items():
        routes = envoyconf.route_config(new_cluster="broken_new" if name == "broken" else "new_stack")
        filters = [envoyconf.wasm_filter(plugin, harness.WASM), envoyconf.router_filter()]
        listeners.append(envoyconf.http_listener(name, ports[name], routes, filters))
    admin = harness.free_port()
    config = envoyconf.bootstrap(admin, listeners, upstreams.ports["old"], upstreams.ports["new"])
    config["static_resources"]["clusters"].append(envoyconf.cluster("broken_new", broken.server_address[1]))
    rules_path, rules = rules_for_test(work)
    prom = None
    try:
        envoy = start_envoy(config, work / "envoy")
        prom = harness.Prometheus(work / "prometheus", {"envoy": [f"127.0.0.1:{admin}"]}, rule_files=[rules_path])
        prom_port = prom.port
        prom.wait_scraped(1)
        yield {"envoy": envoy, "ports": ports, "prom": prom_port, "rules": rules, "work": work}
    finally:
        if prom:
            prom.close()
        broken.shutdown()


def traffic(stack, rounds=8, per_round=120):
    """Bounded: `rounds` × `per_round` requests per busy rollout, spread over a
    few seconds so Prometheus scrapes the counters moving."""
    clients = {name: Client(port) for name, port in stack["ports"].items() if name != "idle"}
    try:
        for r in range(rounds):
            for i in range(per_round):
                u = f"mon-{r}-{i}"
                steady = {"x-user-id": u, "user-agent": "Mozilla/5.0 (Windows NT 10.0)"}
                if i % 2:
                    steady["x-augur-stack"] = "new"  # forged: counted as spoofing
                clients["steady"].request(steady)
                clients["broken"].request({"x-user-id": f"b-{i}", "x-request-id": f"b-{r}-{i}"})
                clients["modelfail"].request({"x-user-id": u, "x-user-sessions-30d": "50" if i % 2 else "5"})
                varied = {"x-user-id": u, "user-agent": USER_AGENTS[i % len(USER_AGENTS)],
                          "x-geo-region": ("us", "eu", "apac", "latam")[(i // 4) % 4]}
                clients["harmful"].request(dict(varied, **{"x-demo-harm": "new_checkout:0.5"}))
                clients["mixed_a" if i % 2 else "mixed_b"].request(dict(varied, **{"x-demo-harm": "new_checkout:0.1"}))
            time.sleep(0.5)
    finally:
        for c in clients.values():
            c.close()


def test_rules_pass_promtool():
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_expression_returns_data_and_planted_regressions_fire(stack):
    port = stack["prom"]
    traffic(stack)
    scraped = stack["envoy"].prometheus()

    # Alerts: a bounded wait for each planted regression to fire.
    def firing():
        return {(a["labels"]["alertname"], a["labels"].get("rollout")) for a in alerts(port) if a["state"] == "firing"}

    want = set(EXPECTED_FIRING.items())
    harness.wait_until(lambda: want <= firing(), 90, f"alerts {sorted(want)} firing (firing: {sorted(firing())})")
    got = firing()
    assert ("AugurNoTraffic", "steady") not in got and ("AugurModelErrors", "steady") not in got, got
    assert not any(name == "AugurAbsent" for name, _ in got)

    failures = []
    for group in stack["rules"]["groups"]:
        for rule in group["rules"]:
            expr = rule["expr"]
            result = prom_query(port, expr)  # every expression evaluates
            if "record" in rule:
                # Recording rules: both the expression and the recorded series have data.
                if not (result and prom_query(port, rule["record"])):
                    failures.append(f"recording rule {rule['record']}: no data")
            elif rule["alert"] == "AugurAbsent":
                assert result == [], "augur stats are scraped, so absent() is empty"
            elif rule["alert"] in EXPECTED_FIRING and not result:
                failures.append(f"alert {rule['alert']}: fired but its expression has no data now")
    for title, expr in dashboard_exprs():
        if not prom_query(port, expr):
            failures.append(f"dashboard panel {title!r}: no data for {expr}")
    assert not failures, "\n".join(failures)
    # Every metric the dashboard and the rules read is one Envoy exports.
    read = set().union(*(metric_names(e) for _, e in dashboard_exprs()))
    read |= set().union(*(metric_names(r["expr"]) for g in stack["rules"]["groups"] for r in g["rules"]))
    exported = set(re.findall(r"^# TYPE (augur_[a-z_]+) ", scraped, re.MULTILINE))
    assert read <= exported, read - exported
