"""What the end-to-end benchmark sends, and to which Envoys: the configurations
under test (CONFIGS, see augur_tools.bench) and the requests — one fixed request
of a new-stack user for the latency runs, a wrk script cycling through seeded
synthetic users for saturation.
"""

import base64
import json
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from augur_tools.envoy import envoyconf, harness
from augur_tools.envoy.harness import AUGUR_CLI, ROOT

CONFIGS = ("passthrough", "weighted_clusters", "sticky_split", "empty_filter", "host_calls", "augur")
EMPTY_WASM = ROOT / "target" / "empty_filter.wasm"
HOST_CALLS_WASM = ROOT / "target" / "host_calls_filter.wasm"
FLOORS = (EMPTY_WASM, HOST_CALLS_WASM)


def copy_floors(work):
    """The floor modules beside the module under test, where under_test_config finds them."""
    for path in FLOORS:
        shutil.copyfile(path, Path(work) / path.name)


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


def saturation_requests(n=2000, seed=2026):
    """The requests the saturation runs cycle through (wrk_script), as header dicts."""
    return harness.synthetic_requests(n, seed=seed, prefix="wrk")


def wrk_script(path, n=2000, seed=2026, max_body=1024):
    """A wrk Lua script cycling through `n` synthetic requests (python/augur_tools/sim/synthetic.py:
    many users, devices, regions, tiers, history headers, ~20% POST with a body
    of at most `max_body` bytes), and printing a JSON summary (latency in us)."""
    reqs = saturation_requests(n, seed)
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


def flags_header(record):
    """The flags header augur writes for the decision `record` (record::write_flags)."""
    out = "@model=" + record["model"] + ("" if record["model_ok"] else ";error")
    for name, f in record["features"].items():
        out += f",{name}={'on' if f['on'] else 'off'};{f['reason']}" + (f";{f['score']}" if "score" in f else "")
    return out


def host_calls_plugin(plugin_text, requests):
    """The configuration of the host-call floor (examples/host_calls_filter.rs)
    for `requests` under augur's `plugin_text`: what augur writes on a typical
    new-stack and a typical old-stack request of them (the one whose record has
    the median length; header names, values and the record as the native library
    decides and writes them) and the share of new-stack requests. Envoy makes
    the request id at the edge, so each request gets a UUID here. (A prefix
    migration's extra stack headers are not repeated: the shipped plugins have none.)"""
    c = json.loads(plugin_text)
    prefix = c.get("control_header_prefix", "x-augur-")
    send = c.get("upstream_headers", ["features", "flags", "decision"])
    stacks = {"old": "old", "new": "new", **c.get("stacks", {})}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plugin.json"
        path.write_text(plugin_text)
        reqs = [dict(h, **{"x-request-id": str(uuid.UUID(int=i + 1))}) for i, h in enumerate(requests)]
        lines = harness.cli_decide(path, reqs, raw=True)
    by_stack = {"new": [], "old": []}
    for line in lines:  # the record's `stack` is old/new, its `route` the configured name
        by_stack[json.loads(line)["stack"]].append(line)

    def writes(stack):
        if not by_stack[stack]:
            return {"headers": [], "record": ""}
        line = sorted(by_stack[stack], key=len)[len(by_stack[stack]) // 2]
        r = json.loads(line)
        headers = [(prefix + "stack", stacks[stack])]
        if stack == "new":  # in the order the filter writes them (stream.rs)
            if "decision" in send:
                headers.append((prefix + "decision", r["id"]))
            if "features" in send:
                headers.append((prefix + "features", ",".join(f for f, v in r["features"].items() if v["on"])))
            if "flags" in send:
                headers.append((prefix + "flags", flags_header(r)))
        return {"headers": headers, "record": line}

    return json.dumps({"new": writes("new"), "old": writes("old"),
                       "new_share": len(by_stack["new"]) / max(len(lines), 1)})


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


def under_test_config(kind, port, admin_port, upstream_port, access_log, plugin_text, wasm, floor_requests=None):
    """The Envoy under test for `kind` (CONFIGS, or augur*), the floors' modules
    beside `wasm`; `host_calls` writes what augur with `plugin_text` writes on
    `floor_requests` (default: the saturation requests)."""
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
    elif kind == "host_calls":
        floor = host_calls_plugin(plugin_text, floor_requests or saturation_requests())
        lst = envoyconf.http_listener(kind, port, envoyconf.route_config(),
                                      [envoyconf.wasm_filter(floor, wasm.parent / "host_calls_filter.wasm"),
                                       envoyconf.router_filter()], access_log)
    elif kind.startswith("augur"):
        lst = envoyconf.listener(kind, port, plugin_text, wasm, access_log)
    else:
        raise ValueError(kind)
    # Both clusters point at the one fast upstream.
    return envoyconf.bootstrap(admin_port, [lst], upstream_port, upstream_port)


