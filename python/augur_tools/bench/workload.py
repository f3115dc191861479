"""What the end-to-end benchmark sends, and to which Envoys: the configurations
under test (CONFIGS, see augur_tools.bench) and the requests — one fixed request
of a new-stack user for the latency runs, a wrk script cycling through seeded
synthetic users for saturation.
"""

import base64
import json
import subprocess
from pathlib import Path

from augur_tools.envoy import envoyconf, harness
from augur_tools.envoy.harness import AUGUR_CLI, ROOT

CONFIGS = ("passthrough", "weighted_clusters", "sticky_split", "empty_filter", "augur")
EMPTY_WASM = ROOT / "target" / "empty_filter.wasm"


# ---- requests --------------------------------------------------------------------


def pick_new_stack_user(plugin_path):
    """A user id the demo rollout puts on the new stack (so the fixed-header
    latency runs take augur's longest path: features and decision headers
    written). Asks the native CLI; falls back to a fixed id."""
    candidates = [{"x-user-id": f"bench-user-{i:03d}"} for i in range(40)]
    if AUGUR_CLI.exists():
        try:
            for c, d in zip(candidates, harness.cli_decide(plugin_path, candidates)):
                if d.get("stack") == "new":
                    return c["x-user-id"]
        except (subprocess.SubprocessError, OSError, ValueError):
            pass
    return "bench-user-000"


def fixed_request_headers(user_id):
    """A realistic request for the latency runs: a returning mobile user in the
    EU (standard tier), with the history headers the demo config reads."""
    return {
        "user-agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
        "accept": "application/json",
        "accept-language": "en-GB,en;q=0.9",
        "x-user-id": user_id,
        "x-geo-region": "eu",
        "x-user-tier": "standard",
        "x-user-sessions-30d": "23",
        "x-user-purchases-90d": "4",
        "x-user-tenure-days": "400",
        "x-user-errors-7d": "0",
    }


FIXED_PATH = "/api/search?q=running+shoes"


def lua_str(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def wrk_script(path, n=2000, seed=2026, max_body=1024):
    """A wrk Lua script cycling through `n` synthetic requests (python/augur_tools/sim/synthetic.py:
    many users, devices, regions, tiers, history headers, ~20% POST with a body
    of at most `max_body` bytes), and printing a JSON summary (latency in us)."""
    reqs = harness.synthetic_requests(n, seed=seed, prefix="wrk")
    lines = ["local reqs = {}"]
    for i, h in enumerate(reqs):
        h = dict(h)
        method, p = h.pop(":method"), h.pop(":path")
        h.pop("x-request-id", None)  # let Envoy generate one, as at an edge
        h["Host"] = "shop.example.com"
        body = "nil"
        length = int(h.pop("content-length", 0) or 0)
        if method in ("POST", "PUT", "PATCH"):
            body = lua_str("x" * min(length, max_body))
        hdrs = "{" + ", ".join(f"[{lua_str(k)}] = {lua_str(v)}" for k, v in h.items()) + "}"
        lines.append(f"reqs[{i + 1}] = wrk.format({lua_str(method)}, {lua_str(p)}, {hdrs}, {body})")
    lines += [
        "local i = 0",
        "function request()",
        "  i = i % #reqs + 1",
        "  return reqs[i]",
        "end",
        "function done(summary, latency, requests)",
        "  local e = summary.errors",
        ('  io.write(string.format(\'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
        '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
        '"p50":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%.1f,"max":%d}\\n\','
        " summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,"
        " latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),"
        " latency.mean, latency.max))"),
        "end",
    ]
    Path(path).write_text("\n".join(lines) + "\n")
    return len(reqs)


# ---- configurations -----------------------------------------------------------------

TINY_MODEL = ROOT / "benches" / "models" / "mlp_f1_h32.onnx"
MODEL_THRESHOLDS = ("min_score", "max_performance_cost", "max_error_risk", "min_engagement", "max_security_risk")


def tiny_model_plugin(plugin_text):
    """The demo configuration with the model's work taken out, for `--breakdown`:
    every demo feature `override: on` (no model thresholds), plus one feature
    scored by a 20→32→4 model (benches/models/mlp_f1_h32.onnx), so the request
    path is the same (profile, segments, flags, routing, headers, record, stats)
    but inference is ~20x cheaper than the default 20→32→32→20 model. Segments
    defined by model predictions are dropped. None when the model file is absent."""
    if not TINY_MODEL.exists():
        return None
    c = json.loads(plugin_text)
    predicted = {s["name"] for s in c.get("segments", []) if "predicted" in s}
    c["segments"] = [s for s in c.get("segments", []) if s["name"] not in predicted]
    rollout = c.get("rollout", {})
    if "by_segment" in rollout:
        rollout["by_segment"] = [b for b in rollout["by_segment"] if b.get("segment") not in predicted]
        if not rollout["by_segment"]:
            del rollout["by_segment"]
    for f in c.get("features", []):
        f["override"] = "on"
        for k in MODEL_THRESHOLDS:
            f.pop(k, None)
        for k in ("allow_segments", "deny_segments"):
            if k in f:
                f[k] = [x for x in f[k] if x not in predicted]
                if not f[k]:
                    del f[k]
    c["features"].append({"name": "f0"})
    c["model"] = {"onnx_base64": base64.b64encode(TINY_MODEL.read_bytes()).decode(), "version": "tiny-f1-h32"}
    return json.dumps(c)


def sticky_split_route_config(new_weight=30, user_header="x-user-id", stack_header="x-stack"):
    """Envoy's own sticky split: `weighted_clusters` picks the cluster from the
    route's hash policy (the user header) instead of a random draw, so a user
    keeps its stack while the weights stay the same (Envoy >= 1.36,
    `use_hash_policy`). Each cluster tells the upstream its stack, as augur does."""

    def weighted(cluster, stack, weight):
        return envoyconf.weighted_cluster(cluster, stack, weight, stack_header)

    route = {
        "name": "sticky",
        "match": {"prefix": "/"},
        "route": {
            "hash_policy": [{"header": {"header_name": user_header}}],
            "weighted_clusters": {
                "use_hash_policy": True,
                "clusters": [weighted("new_stack", "new", new_weight), weighted("old_stack", "old", 100 - new_weight)],
            },
        },
    }
    return {"name": "sticky", "virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [route]}]}


def under_test_config(kind, port, admin_port, upstream_port, access_log, plugin_text, wasm):
    if kind == "passthrough":
        lst = envoyconf.http_listener(kind, port, envoyconf.single_cluster_route_config(),
                                      [envoyconf.router_filter()], access_log)
    elif kind == "weighted_clusters":
        lst = envoyconf.http_listener(kind, port, envoyconf.weighted_clusters_route_config(new_weight=30),
                                      [envoyconf.router_filter()], access_log)
    elif kind == "sticky_split":
        lst = envoyconf.http_listener(kind, port, sticky_split_route_config(new_weight=30),
                                      [envoyconf.router_filter()], access_log)
    elif kind == "empty_filter":
        lst = envoyconf.http_listener(kind, port, envoyconf.route_config(),
                                      [envoyconf.wasm_filter("{}", wasm.parent / "empty_filter.wasm"),
                                       envoyconf.router_filter()], access_log)
    elif kind.startswith("augur"):
        lst = envoyconf.listener(kind, port, plugin_text, wasm, access_log)
    else:
        raise ValueError(kind)
    # Both clusters point at the one fast upstream.
    return envoyconf.bootstrap(admin_port, [lst], upstream_port, upstream_port)


