"""End-to-end benchmark of augur in Envoy (`make bench-e2e`).

One run, on loopback, with the same Envoy binary (.venv's Envoy 1.40), the same
fast upstream and the same load generators for three configurations of the
Envoy under test (`--concurrency 1`, one Envoy process per configuration):

  passthrough        no wasm: one route to one cluster
  weighted_clusters  what users build with Envoy alone: a header-match route
                     (`x-user-tier: beta` → new) and a 30/70 `weighted_clusters`
                     split, each route adding a stack header for the upstream
  sticky_split       Envoy's own sticky split (Envoy >= 1.36): `weighted_clusters`
                     with `use_hash_policy: true` and a route `hash_policy` on the
                     user header, so each user keeps its stack (what augur's
                     bucketing does, without features, model or records)
  empty_filter       an empty proxy-wasm filter (examples/empty_filter.rs, the
                     same wasm profile, target, SIMD and wasm-opt flags as augur)
                     in the same V8: the floor any wasm filter pays here
  augur              the augur filter (target/augur.wasm, default model) with
                     envoy/augur-demo.json, routing on the header it writes
  augur_tiny_model   (--breakdown) augur with a 20→32→4 model and no model
                     thresholds: how much of augur's cost is inference

All write the same access-log line (envoyconf.ACCESS_LOG_FORMAT; without augur
its `decision` is `-`). The upstream is a separate Envoy answering every request
itself (`direct_response`), so it is not the bottleneck.

Measured per configuration:
  * Envoy's ready time: from exec to the first 200 through the listener;
  * the first requests after start (warm-up) against the steady state;
  * latency at a fixed, moderate, open-loop rate: `oha -q RATE` (requests are
    issued on a timer whatever the responses do, up to `--latency-conns` in
    flight), p50/p90/p99/p99.9 in microseconds;
  * throughput at saturation with a fixed concurrency: `wrk -t1 -cN` with a Lua
    script cycling through synthetic requests of many users (python/augur_tools/sim/synthetic.py),
    and the Envoy's CPU time per request.
The Envoys are started one after the other and stay up (idle when not
measured); latency and saturation are measured in `--rounds` interleaved rounds
(the order rotates), each value is the median over rounds, and a round during
which other processes took more than `--noise-threshold`% of a CPU is repeated
(at most `--max-retries` times): on a shared machine a build or a test run
otherwise lands on one configuration only.

Then augur is delivered through ECDS (a watched file, envoyconf.ecds_*) and new
plugin configurations with the default model re-encoded and a new
`model.version` are pushed under light load: the time from the atomic rename to
Envoy accepting it (`config_reload`), to on_configure in the VMs (Envoy log),
and to the first request decided with the new version (access log), and the
requests that failed meanwhile.

CPU layout (`--layout split`, the default on 2+ CPUs): the Envoy under test
alone on the last CPU, the upstream and the load generators on the others, so
at saturation the Envoy under test is the bottleneck (its CPU% is shown). The
price is a cross-CPU wakeup per hop, which on a VM inflates absolute latencies
(hundreds of us here) alike for every configuration; `shared` (everything on one
CPU) gives lower absolute latency but lets the generators and the upstream eat
into the Envoy's throughput.

Targets (goals, printed, never asserted): added p50 <= 25 us, added p99 <= 100
us, rps ratio >= 0.85 vs passthrough, wasm <= 4 MB, Envoy ready <= 3 s, model
push applied <= 1 s. Exits 0 when it ran, 2 when a tool is missing, 1 on error.

    .venv/bin/python -m augur_tools.bench [--quick] [--breakdown] [--layout split|shared|none]
"""

import argparse
import base64
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from augur_tools.envoy import admin, envoyconf, harness
from augur_tools.envoy.harness import AUGUR_CLI, ENVOY, ROOT, WASM, free_port

DEMO_PLUGIN = ROOT / "envoy" / "augur-demo.json"
DEFAULT_MODEL = ROOT / "models" / "default.onnx"
CONFIGS = ("passthrough", "weighted_clusters", "sticky_split", "empty_filter", "augur")
EMPTY_WASM = ROOT / "target" / "empty_filter.wasm"
TARGETS = {"added_p50_us": 25, "added_p99_us": 100, "rps_ratio": 0.85, "wasm_mb": 4, "ready_s": 3, "push_ms": 1000,
           "over_empty_us": 10}
HARD_LIMIT_S = 570  # the whole run stops itself before 10 minutes

INSTALL_HINT = {
    "wrk": "apt-get install -y wrk            (Debian/Ubuntu package `wrk`)",
    "oha": "cargo install --locked oha --version 1.16.0   (crates.io; into ~/.cargo/bin)",
    "taskset": "apt-get install -y util-linux",
}


class BenchError(RuntimeError):
    pass


# ---- tools -------------------------------------------------------------------


def find_tool(name):
    path = shutil.which(name)
    if path is None and name == "oha":
        cargo_bin = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin" / "oha"
        if cargo_bin.exists():
            path = str(cargo_bin)
    return path


def check_tools(need_taskset):
    tools, missing = {}, []
    for name in ("wrk", "oha") + (("taskset",) if need_taskset else ()):
        tools[name] = find_tool(name)
        if tools[name] is None:
            missing.append(name)
    problems = []
    if not ENVOY.exists():
        problems.append(f"Envoy not found at {ENVOY}: run `make venv`")
    if not WASM.exists():
        problems.append(f"{WASM} not found: run `make wasm`")
    if not EMPTY_WASM.exists():
        problems.append(f"{EMPTY_WASM} not found: run `make {EMPTY_WASM.relative_to(ROOT)}`")
    if missing or problems:
        print("bench-e2e: cannot run:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        for name in missing:
            print(f"  `{name}` not found; install it with: {INSTALL_HINT[name]}", file=sys.stderr)
        sys.exit(2)
    return tools


def tool_version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        out = (r.stdout + r.stderr).strip().splitlines()
        return out[0] if out else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# ---- CPU layout and accounting -------------------------------------------------


def cpu_layout(kind):
    """(CPUs for the Envoy under test, CPUs for the upstream and load generators)."""
    cpus = sorted(os.sched_getaffinity(0))
    if kind == "none" or len(cpus) < 2:
        return None, None
    if kind == "shared":
        return [cpus[-1]], [cpus[-1]]
    return [cpus[-1]], cpus[:-1]


def pinned(cmd, cpus):
    if not cpus:
        return list(cmd)
    return ["taskset", "-c", ",".join(map(str, cpus))] + list(cmd)


def proc_cpu_seconds(pid):
    """utime + stime of a process, all threads, in seconds (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds():
    """(busy, total) CPU seconds of the whole machine, all CPUs (user+nice+system busy)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in parts[:8]]
    hz = os.sysconf("SC_CLK_TCK")
    busy = vals[0] + vals[1] + vals[2]
    return busy / hz, sum(vals) / hz


class CpuWindow:
    """CPU used during a measurement: by the given processes, and by everybody
    else on the machine (`other`, which includes other users' builds: noise)."""

    def __init__(self, pids):
        self.pids = dict(pids)
        self.t0 = time.monotonic()
        self.p0 = {k: proc_cpu_seconds(p) for k, p in self.pids.items()}
        self.m0 = machine_cpu_seconds()

    def stop(self, child_seconds=0.0):
        wall = time.monotonic() - self.t0
        used = {}
        for k, p in self.pids.items():
            a, b = self.p0[k], proc_cpu_seconds(p)
            used[k] = (b - a) if a is not None and b is not None else 0.0
        m1 = machine_cpu_seconds()
        busy = m1[0] - self.m0[0]
        ours = sum(used.values()) + child_seconds
        pct = {k: 100.0 * v / wall for k, v in used.items()}
        pct["loadgen"] = 100.0 * child_seconds / wall
        pct["other"] = max(0.0, 100.0 * (busy - ours) / wall)
        return pct


def run_child(cmd, timeout):
    """Runs a load generator; returns (stdout, stderr, returncode, cpu seconds it used)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        rusage = None
        try:
            while time.monotonic() < deadline:
                pid, status, rusage = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    break
                time.sleep(0.02)
            else:
                raise BenchError(f"{cmd[0]} did not finish in {timeout:.0f}s: {' '.join(cmd)}")
        except BaseException:
            if p.returncode is None:
                p.kill()
                p.wait(5)
            raise
        out.seek(0)
        err.seek(0)
        cpu = (rusage.ru_utime + rusage.ru_stime) if rusage else 0.0
        return out.read().decode(errors="replace"), err.read().decode(errors="replace"), p.returncode, cpu


# ---- processes -------------------------------------------------------------------


def envoy_binary():
    """The Envoy executable itself: .venv/bin/envoy is a Python launcher that
    execs it, whose interpreter start would count in the ready time."""
    for cand in sorted((ROOT / ".venv").glob("lib/python*/site-packages/envoy/_bin/envoy")):
        if os.access(cand, os.X_OK):
            return cand
    return ENVOY



def http_get_ok(port, headers, timeout=0.5):
    """One request on a fresh connection; True on a 200."""
    lines = ["GET /api/search?q=ready HTTP/1.1", "host: bench", "connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        head = s.recv(64)
    return head.startswith(b"HTTP/1.1 200")


class EnvoyProc:
    """One Envoy process pinned to `cpus`; ready when a request through
    `probe_port` returns 200 (that time, from exec, is `ready_s`)."""

    def __init__(self, name, config, workdir, cpus, probe_port, probe_headers=None, ready_timeout=90, flush_ms=None):
        self.name = name
        self.workdir = Path(workdir)
        self.config_path = self.workdir / f"{name}.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log_path = self.workdir / f"{name}.envoy.log"
        self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        cmd = harness.envoy_command(self.config_path, self.log_path, 1, flush_ms, binary=envoy_binary())
        started = time.monotonic()
        self.proc = subprocess.Popen(
            pinned(cmd, cpus), cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.pid = self.proc.pid
        probe_headers = probe_headers or {}

        def ready():
            if self.proc.poll() is not None:
                hint = ""
                if "configuration refused" in self.log():
                    hint = "(is target/augur.wasm older than the plugin configuration? `make wasm`)\n"
                raise BenchError(f"envoy {name} exited with {self.proc.returncode}:\n{hint}{self.log()[-3000:]}")
            try:
                return http_get_ok(probe_port, probe_headers)
            except OSError:
                return False

        try:
            deadline = started + ready_timeout
            while True:
                t = time.monotonic()
                if ready():
                    break
                if t > deadline:
                    raise BenchError(f"envoy {name} not ready after {ready_timeout}s:\n{self.log()[-3000:]}")
                time.sleep(0.01)
        except BaseException:
            self.close()
            raise
        now = time.monotonic()
        self.ready_s = now - started
        self.first_request_us = (now - t) * 1e6  # the probe that succeeded (fresh connection)

    def admin(self, path):
        return admin.get(self.admin_port, path)

    def stat(self, name):
        return admin.stat(self.admin_port, name)

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self):
        harness.stop_process(self.proc)


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


# ---- load generators ---------------------------------------------------------------


class Oha:
    def __init__(self, exe, cpus):
        self.exe = exe
        self.cpus = cpus
        help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10, check=False).stdout
        self.json_flag = ["--output-format", "json"] if "--output-format" in help_text else ["-j"]
        self.tui_flag = ["--no-tui"] if "--no-tui" in help_text else []

    def requests(self, port, headers, rate, count, conns=8):
        """Like `run` for `count` requests, but each request's latency (us), in
        the order they were sent (oha's per-request CSV output)."""
        cmd = [self.exe, *self.tui_flag, "--output-format", "csv", "-c", str(conns), "-q", str(rate),
               "-n", str(count)]
        for k, v in headers.items():
            cmd += ["-H", f"{k}: {v}"]
        cmd.append(f"http://127.0.0.1:{port}{FIXED_PATH}")
        out, err, rc, _ = run_child(pinned(cmd, self.cpus), count / rate + 30)
        if rc != 0:
            raise BenchError(f"oha failed ({rc}): {err[-2000:]}")
        rows = []
        for line in out.splitlines()[1:]:
            f = line.split(",")
            if len(f) >= 7:
                rows.append((float(f[0]), float(f[4]) * 1e6, f[6]))
        rows.sort()
        return [(us, status) for _, us, status in rows]

    def run(self, port, headers, rate=None, duration_s=None, count=None, conns=8):
        """Open loop at `rate` req/s (requests scheduled on a timer, at most
        `conns` in flight), for `duration_s` or `count` requests. Latencies in us."""
        cmd = [self.exe, *self.tui_flag, *self.json_flag, "-c", str(conns)]
        if rate:
            cmd += ["-q", str(rate)]
        if duration_s:
            # -w: requests in flight at the deadline finish (else oha counts them as errors).
            cmd += ["-z", f"{duration_s}s", "-w"]
        else:
            cmd += ["-n", str(count)]
        for k, v in headers.items():
            cmd += ["-H", f"{k}: {v}"]
        cmd.append(f"http://127.0.0.1:{port}{FIXED_PATH}")
        budget = (duration_s or (count / (rate or 1000.0))) + 30
        out, err, rc, cpu = run_child(pinned(cmd, self.cpus), budget)
        if rc != 0:
            raise BenchError(f"oha failed ({rc}): {err[-2000:]}")
        data = json.loads(out[out.index("{"):])
        pct = data.get("latencyPercentiles", {})
        codes = {str(k): v for k, v in (data.get("statusCodeDistribution") or {}).items()}
        ok = sum(v for k, v in codes.items() if k.startswith("2"))
        errors = sum((data.get("errorDistribution") or {}).values())
        summ = data.get("summary", {})

        def us(key):
            v = pct.get(key)
            return None if v is None else v * 1e6

        return {
            "p50": us("p50"), "p90": us("p90"), "p99": us("p99"), "p999": us("p99.9"),
            "mean": (summ.get("average") or 0) * 1e6,
            "rps": summ.get("requestsPerSec"), "ok": ok, "total": sum(codes.values()) + errors,
            "failed": sum(v for k, v in codes.items() if not k.startswith("2")) + errors,
            "cpu_s": cpu,
        }


class Wrk:
    def __init__(self, exe, cpus, script):
        self.exe, self.cpus, self.script = exe, cpus, script

    def run(self, port, duration_s, conns):
        cmd = [self.exe, "-t1", f"-c{conns}", f"-d{duration_s}s", "--timeout", "5s", "-s", str(self.script),
               f"http://127.0.0.1:{port}/"]
        out, err, rc, cpu = run_child(pinned(cmd, self.cpus), duration_s + 30)
        m = re.search(r"BENCH_JSON (\{.*\})", out)
        if rc != 0 or not m:
            raise BenchError(f"wrk failed ({rc}): {out[-1500:]} {err[-1500:]}")
        d = json.loads(m.group(1))
        errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
        return {
            "rps": d["requests"] / (d["duration_us"] / 1e6), "requests": d["requests"], "errors": errors,
            "p50": d["p50"], "p90": d["p90"], "p99": d["p99"], "p999": d["p999"], "cpu_s": cpu,
        }


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


# ---- phases ---------------------------------------------------------------------------


def percentile(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, round(q / 100.0 * (len(v) - 1)))]


def cold_windows(rows):
    """p50/p99 of the first requests after start, by window of request index."""
    out = []
    edges = [0, 100, 500]
    edges = [e for e in edges if e < len(rows)] + [len(rows)]
    for a, b in itertools.pairwise(edges):
        lat = [us for us, _ in rows[a:b]]
        out.append({"from": a + 1, "to": b, "p50": percentile(lat, 50), "p99": percentile(lat, 99)})
    return {"windows": out, "failed": sum(1 for _, st in rows if not st.startswith("2"))}


def start_config(kind, args, ctx):
    """Starts the Envoy under test for `kind` (ready time measured), measures
    its first requests (warm-up effect), then warms it up. Returns (envoy, result)."""
    work = ctx["work"]
    port, admin_port = free_port(), free_port()
    plugin = ctx["plugins"].get(kind, ctx["plugin_text"])
    cfg = under_test_config(kind, port, admin_port, ctx["upstream_port"], work / f"{kind}.access.log", plugin, ctx["wasm"])
    envoy = EnvoyProc(kind, cfg, work, ctx["envoy_cpus"], port, ctx["headers"])
    envoy.port = port
    res = {"ready_s": envoy.ready_s, "first_request_us": envoy.first_request_us, "rounds": []}
    try:
        # The first requests after start, open loop at the measuring rate.
        res["cold"] = cold_windows(ctx["oha"].requests(port, ctx["headers"], args.rate, args.cold_requests,
                                                       conns=args.latency_conns))
        # Warm-up, not measured: a saturation burst, then the rate.
        ctx["wrk"].run(port, args.warmup_seconds, args.sat_conns)
        ctx["oha"].run(port, ctx["headers"], rate=args.rate, duration_s=2, conns=args.latency_conns)
    except BaseException:
        envoy.close()
        raise
    return envoy, res


def measure_round(envoy, args, ctx, lat_s, sat_s):
    """One latency run and one saturation run against an Envoy already warm."""
    pids = {"envoy": envoy.pid, "upstream": ctx["upstream"].pid}
    win = CpuWindow(pids)
    lat = ctx["oha"].run(envoy.port, ctx["headers"], rate=args.rate, duration_s=lat_s, conns=args.latency_conns)
    lat["cpu"] = win.stop(lat["cpu_s"])
    win = CpuWindow(pids)
    sat = ctx["wrk"].run(envoy.port, sat_s, args.sat_conns)
    sat["cpu"] = win.stop(sat["cpu_s"])
    return {"latency": lat, "saturation": sat}


def median(values):
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def summarise(res):
    """Per configuration: the median over rounds of each latency percentile and
    of the saturation rps (a burst of outside load spoils one round, not the
    result); the spread of rps; the worst outside CPU seen."""
    rounds = res["rounds"]
    lat = {k: median(r["latency"][k] for r in rounds) for k in ("p50", "p90", "p99", "p999", "mean")}
    lat["failed"] = sum(r["latency"]["failed"] for r in rounds)
    lat["total"] = sum(r["latency"]["total"] for r in rounds)
    lat["cpu"] = {"other": max(r["latency"]["cpu"]["other"] for r in rounds)}
    rps = [r["saturation"]["rps"] for r in rounds]
    sat = {k: median(r["saturation"][k] for r in rounds) for k in ("rps", "p50", "p99")}
    sat["rps_min"], sat["rps_max"] = min(rps), max(rps)
    sat["errors"] = sum(r["saturation"]["errors"] for r in rounds)
    sat["requests"] = sum(r["saturation"]["requests"] for r in rounds)
    # CPU time the Envoy under test spent per request (exact even when it was not the bottleneck).
    sat["envoy_us_per_req"] = median(
        r["saturation"]["cpu"]["envoy"] / 100 * 1e6 / r["saturation"]["rps"] for r in rounds if r["saturation"]["rps"]
    )
    sat["cpu"] = {
        "envoy": median(r["saturation"]["cpu"]["envoy"] for r in rounds),
        "other": max(r["saturation"]["cpu"]["other"] for r in rounds),
    }
    res["latency"], res["saturation"] = lat, sat
    return res


def measure_all(configs, args, ctx):
    """All configurations, each in its own Envoy (pinned, --concurrency 1),
    started one after the other and kept running (idle when not measured); then
    `rounds` rounds, each measuring every configuration in turn (the order
    rotates every round), so slow drift or a burst of outside load hits every
    configuration alike instead of one of them."""
    envoys, results = {}, {}
    try:
        for kind in configs:
            print(f"bench-e2e: start {kind} ...", flush=True)
            envoys[kind], results[kind] = start_config(kind, args, ctx)
        lat_s = max(1, round(args.latency_seconds / args.rounds))
        sat_s = max(1, round(args.saturation_seconds / args.rounds))
        retries = args.max_retries
        # Spread the retries: persistent outside load must not spend them all on one configuration.
        per_config = {k: max(1, -(-args.max_retries // len(configs))) for k in configs}
        for i in range(args.rounds):
            order = configs[i % len(configs):] + configs[:i % len(configs)]
            print(f"bench-e2e: round {i + 1}/{args.rounds}: {', '.join(order)} ...", flush=True)
            for kind in order:
                while True:
                    r = measure_round(envoys[kind], args, ctx, lat_s, sat_s)
                    noise = max(r["latency"]["cpu"]["other"], r["saturation"]["cpu"]["other"])
                    if noise <= args.noise_threshold or retries <= 0 or per_config[kind] <= 0:
                        results[kind]["rounds"].append(r)
                        break
                    # Other processes (builds, tests) took CPU during this round: measure it
                    # again after a short pause (a burst of outside load often passes).
                    retries -= 1
                    per_config[kind] -= 1
                    time.sleep(2)
                    results[kind].setdefault("discarded", []).append(r)
                    print(f"bench-e2e:   {kind}: other processes used {noise:.0f}% CPU, round repeated", flush=True)
    finally:
        for e in envoys.values():
            e.close()
    for kind in configs:
        summarise(results[kind])
    return results


LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]\[(\d+)\].*configuration accepted: .*?model (\S+) on ")


def envoy_log_times(text, version):
    """Wall-clock times (s since epoch) of the `configuration accepted ... model <version>`
    lines (one per on_configure: main thread and the worker)."""
    import datetime

    out = []
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if m and m.group(3) == version:
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
            out.append(t.timestamp())  # Envoy logs local time
    return out


def parse_start(s):
    """%START_TIME% (UTC, ms) → seconds since epoch."""
    import datetime

    t = datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return t.timestamp()


def ready_unpinned(ctx):
    """Envoy's ready time with augur when it may use every CPU, as in production:
    V8 compiles the module with background threads, so pinning the benchmark's
    Envoy to one CPU makes its start about twice as slow."""
    port, admin_port = free_port(), free_port()
    cfg = under_test_config("augur", port, admin_port, ctx["upstream_port"], ctx["work"] / "ready.access.log",
                            ctx["plugin_text"], ctx["wasm"])
    envoy = EnvoyProc("augur_ready", cfg, ctx["work"], None, port, ctx["headers"])
    envoy.close()
    return envoy.ready_s


def model_push(args, ctx):
    """augur through ECDS: start, then push new plugin configurations (new model
    bytes and version) under light load; when is each one applied?"""
    work = ctx["work"]
    ecds_dir = work / "ecds"
    ecds_dir.mkdir()
    watched = ecds_dir / "augur.json"
    plugin = json.loads(ctx["plugin_text"])
    wasm = ctx["wasm"]
    port, admin_port = free_port(), free_port()
    access_log = work / "ecds.access.log"
    lst = envoyconf.ecds_listener("augur_ecds", port, watched, plugin, wasm, access_log)
    cfg = envoyconf.bootstrap(admin_port, [lst], ctx["upstream_port"], ctx["upstream_port"])
    envoy = EnvoyProc("ecds", cfg, work, ctx["envoy_cpus"], port, ctx["headers"], flush_ms=100)
    res = {"ready_s": envoy.ready_s, "pushes": []}
    model_b64 = base64.b64encode(DEFAULT_MODEL.read_bytes()).decode()
    reload_stat = "extension_config_discovery.http_filter.augur.config_reload"
    try:
        ctx["oha"].run(port, ctx["headers"], rate=args.rate, duration_s=2, conns=args.latency_conns)  # warm
        # Light load for the whole push window, in the background.
        window = 2 + args.pushes * args.push_spacing + 1
        cmd_oha = ctx["oha"]
        load = {}

        import threading

        def background():
            try:
                load["result"] = cmd_oha.run(port, ctx["headers"], rate=args.push_rate, duration_s=window, conns=4)
            except BenchError as e:
                load["error"] = str(e)

        th = threading.Thread(target=background, daemon=True)
        th.start()
        time.sleep(2)
        for i in range(args.pushes):
            version = f"bench-push-{i + 1}"
            p = dict(plugin, model={"onnx_base64": model_b64, "version": version})
            text = json.dumps(envoyconf.ecds_resource(p, wasm, version))
            before = envoy.stat(reload_stat) or 0
            t_wall, t_mono = time.time(), time.monotonic()
            envoyconf.write_atomically(watched, text)
            accepted_ms = None
            while time.monotonic() - t_mono < args.push_spacing - 0.1:
                if (envoy.stat(reload_stat) or 0) > before:
                    accepted_ms = (time.monotonic() - t_mono) * 1000
                    break
                time.sleep(0.005)
            res["pushes"].append({"version": version, "wall": t_wall, "accepted_ms": accepted_ms})
            time.sleep(max(0.0, args.push_spacing - (time.monotonic() - t_mono)))
        th.join(window + 60)
        if "error" in load or "result" not in load:
            raise BenchError(f"light load during the pushes failed: {load.get('error', 'timed out')}")
        res["load"] = load["result"]
        time.sleep(0.5)  # access-log flush (100 ms)
        records = [r for r in harness.read_records(access_log) if isinstance(r.get("decision"), dict)]
        log_text = envoy.log()
        # Model versions in push order: a request decided with an older one after
        # the first request with the new one would be a worker lagging behind.
        order = [plugin.get("model", {}).get("version", "")] + [p["version"] for p in res["pushes"]]
        rank = {v: i for i, v in enumerate(order)}
        for i, push in enumerate(res["pushes"]):
            v, t = push["version"], push["wall"]
            new = [parse_start(r["start"]) for r in records if r["decision"].get("model") == v]
            push["first_request_ms"] = (min(new) - t) * 1000 if new else None
            if new:
                first = min(new) + 0.001  # START_TIME has ms resolution
                push["stale_after"] = sum(
                    1 for r in records
                    if parse_start(r["start"]) > first and rank.get(r["decision"].get("model"), -1) < i + 1
                )
            times = envoy_log_times(log_text, v)
            push["configured_ms"] = [(x - t) * 1000 for x in times]
        res["records"] = len(records)
    finally:
        envoy.close()
    return res


# ---- report ------------------------------------------------------------------------------


def fmt(v, nd=0, width=8):
    if v is None:
        return "-".rjust(width)
    return f"{v:{width}.{nd}f}"


def verdict(ok):
    return "ok" if ok else "MISSED"


def report(results, push, ready_all, ctx, args, started):
    P, W, S, E, A = (results[k] for k in CONFIGS)
    print()
    print(f"== augur end-to-end benchmark  ({time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, "
          f"layout {args.layout}: envoy under test on CPU {ctx['envoy_cpus'] or 'any'}, "
          f"upstream+load generators on CPU {ctx['gen_cpus'] or 'any'})")
    print(f"   envoy: {ctx['versions']['envoy']}")
    lat_s = max(1, round(args.latency_seconds / args.rounds))
    sat_s = max(1, round(args.saturation_seconds / args.rounds))
    print(f"   latency: oha ({ctx['versions']['oha']}) open loop {args.rate} req/s (at most {args.latency_conns} in "
          f"flight), one realistic request ({len(ctx['headers'])} headers, {FIXED_PATH})")
    print(f"   saturation: wrk ({ctx['versions']['wrk']}) -t1 -c{args.sat_conns}, {ctx['wrk_requests']} synthetic "
          f"requests of many users (~20% POST)")
    print(f"   {args.rounds} rounds x ({lat_s}s latency + {sat_s}s saturation) per configuration, interleaved; "
          "values are medians over rounds")
    print()
    print(f"   machine busy before start: {ctx['busy_before']:.0f}% of all CPUs (other processes)")
    print(f"   wasm: {ctx['wasm_src']} ({ctx['wasm'].stat().st_size / 1e6:.2f} MB, sha256 {ctx['wasm_sha'][:12]}), "
          f"plugin configuration {DEMO_PLUGIN.relative_to(ROOT)}")
    print()
    print(f"{'config':<18} {'ready s':>7} | {'open-loop latency us':^35} | {'saturation':^44} | "
          f"{'envoy':>6} | cpu% at sat")
    print(f"{'':<18} {'':>7} | {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} | {'rps':>8} {'(min-max)':>13} "
          f"{'p50 us':>8} {'p99 us':>8} {'err':>4} | {'us/req':>6} | {'envoy':>5} {'other':>5}")
    for k in results:
        r = results[k]
        lat, sat = r["latency"], r["saturation"]
        spread = f"{sat['rps_min']:.0f}-{sat['rps_max']:.0f}"
        print(f"{k:<18} {r['ready_s']:7.2f} | {fmt(lat['p50'])} {fmt(lat['p90'])} {fmt(lat['p99'])} "
              f"{fmt(lat['p999'])} | {fmt(sat['rps'])} {spread:>13} {fmt(sat['p50'])} {fmt(sat['p99'])} "
              f"{sat['errors']:4d} | {fmt(sat['envoy_us_per_req'], 1, 6)} | "
              f"{sat['cpu']['envoy']:5.0f} {sat['cpu']['other']:5.0f}")
    print("(envoy us/req: CPU time of the Envoy under test per request at saturation; cpu%: of one CPU, median;")
    print(" `other`: the most CPU that every other process on the machine used in a kept round, i.e. noise)")
    repeated = sum(len(results[k].get("discarded", [])) for k in results)
    if repeated:
        print(f"note: {repeated} round(s) repeated because other processes used more than {args.noise_threshold:.0f}% "
              "CPU during them")
    print()
    for k in results:
        lat = results[k]["latency"]
        if lat["failed"]:
            print(f"note: {k}: {lat['failed']} of {lat['total']} latency-run requests failed")
    noisy = [k for k in results if results[k]["saturation"]["cpu"]["other"] > args.noise_threshold
             or results[k]["latency"]["cpu"]["other"] > args.noise_threshold]
    if noisy:
        print(f"note: other processes used CPU during {', '.join(noisy)} (column `other`): numbers are noisy")
    busy = [k for k in results if results[k]["saturation"]["cpu"]["envoy"] < 85]
    if busy:
        print(f"note: the Envoy under test was below 85% CPU at saturation for {', '.join(busy)}: "
              "something else limited throughput there")

    def windows(r):
        return ", ".join(f"#{w['from']}-{w['to']} p50 {w['p50']:.0f}/p99 {w['p99']:.0f}" for w in r["cold"]["windows"])

    steady = A["latency"]
    print(f"warm-up (us, open loop {args.rate} req/s right after ready): augur {windows(A)}; "
          f"steady p50 {steady['p50']:.0f}/p99 {steady['p99']:.0f}")
    print(f"                                          passthrough {windows(P)}; "
          f"steady p50 {P['latency']['p50']:.0f}/p99 {P['latency']['p99']:.0f}")
    ua, up_, uw = (r["saturation"]["envoy_us_per_req"] for r in (A, P, W))
    print(f"augur cost: {ua - up_:.1f} us of Envoy CPU per request more than passthrough ({ua:.1f} vs {up_:.1f} us), "
          f"{ua - uw:.1f} us more than weighted_clusters ({uw:.1f} us); the rps ratio the Envoy CPU per request "
          f"implies (independent of what else limited throughput): {up_ / ua:.3f} vs passthrough, "
          f"{uw / ua:.3f} vs weighted_clusters")
    ue, us_ = E["saturation"]["envoy_us_per_req"], S["saturation"]["envoy_us_per_req"]
    print(f"the V8 floor: an empty proxy-wasm filter costs {ue - up_:.1f} us of Envoy CPU per request over "
          f"passthrough; Envoy's sticky split (use_hash_policy) {us_ - up_:.1f} us")
    print(f"first request after ready (fresh connection): augur {A['first_request_us']:.0f} us, "
          f"passthrough {P['first_request_us']:.0f} us")
    if "augur_tiny_model" in results:
        T = results["augur_tiny_model"]
        per = {k: results[k]["saturation"]["envoy_us_per_req"] for k in ("passthrough", "augur_tiny_model", "augur")}
        print(f"breakdown (Envoy CPU per request): default model - tiny model = "
              f"{per['augur'] - per['augur_tiny_model']:.1f} us (inference in wasm, the part the model size drives); "
              f"tiny model - passthrough = {per['augur_tiny_model'] - per['passthrough']:.1f} us (everything else: "
              f"VM calls, headers, profile, flags, record, stats); open-loop p50 default vs tiny model "
              f"{A['latency']['p50'] - T['latency']['p50']:.0f} us")
    print(f"envoy ready s with augur: {ready_all:.2f} on all {os.cpu_count()} CPUs, {A['ready_s']:.2f} pinned to one "
          f"(table), {push['ready_s']:.2f} via ECDS (pinned); without the filter: {P['ready_s']:.2f}")
    for p in push["pushes"]:
        conf = ", ".join(f"{x:.0f}" for x in p["configured_ms"]) or "-"
        print(f"push {p['version']}: envoy accepted (config_reload) {fmt(p['accepted_ms'], 0, 1)} ms, "
              f"on_configure done at {conf} ms, first request with the new model at "
              f"{fmt(p['first_request_ms'], 0, 1)} ms, requests with an older model after it: "
              f"{p.get('stale_after', '-')}")
    load = push["load"]
    print(f"light load during pushes: {load['total']} requests at {args.push_rate} req/s, "
          f"{load['failed']} failed, p99 {load['p99']:.0f} us")
    print()

    added_p50 = A["latency"]["p50"] - P["latency"]["p50"]
    added_p99 = A["latency"]["p99"] - P["latency"]["p99"]
    ratio = A["saturation"]["rps"] / P["saturation"]["rps"]
    w_p50 = A["latency"]["p50"] - W["latency"]["p50"]
    w_p99 = A["latency"]["p99"] - W["latency"]["p99"]
    w_ratio = A["saturation"]["rps"] / W["saturation"]["rps"]
    wasm_mb = ctx["wasm"].stat().st_size / 1e6
    applied = [p["first_request_ms"] for p in push["pushes"]]
    applied_ms = None if any(a is None for a in applied) else max(applied)
    if added_p99 < 0 or w_p99 < 0:
        print("note: a negative added p99 means the tail is noise-dominated here (VM scheduling), not that augur helps")
    print(f"added p50 us: {added_p50:.0f}")
    print(f"added p99 us: {added_p99:.0f}")
    print(f"rps ratio: {ratio:.3f}")
    print(f"vs weighted_clusters added p50 us: {w_p50:.0f}")
    print(f"vs weighted_clusters added p99 us: {w_p99:.0f}")
    print(f"vs weighted_clusters rps ratio: {w_ratio:.3f}")
    print(f"empty filter over passthrough us: {ue - up_:.1f}")
    print(f"augur over empty filter us: {ua - ue:.1f}")
    print(f"augur over sticky split us: {ua - us_:.1f}")
    print(f"vs empty filter added p50 us: {A['latency']['p50'] - E['latency']['p50']:.0f}")
    print(f"vs empty filter added p99 us: {A['latency']['p99'] - E['latency']['p99']:.0f}")
    print(f"wasm size MB: {wasm_mb:.2f}")
    print(f"envoy ready s: {ready_all:.2f}")
    print(f"model push applied ms: {'-' if applied_ms is None else f'{applied_ms:.0f}'}")
    print(f"requests failed during push: {load['failed']}")
    print()
    print("targets (goals, not asserted): "
          f"added p50 <= {TARGETS['added_p50_us']} us {verdict(added_p50 <= TARGETS['added_p50_us'])}; "
          f"added p99 <= {TARGETS['added_p99_us']} us {verdict(added_p99 <= TARGETS['added_p99_us'])}; "
          f"rps ratio >= {TARGETS['rps_ratio']} {verdict(ratio >= TARGETS['rps_ratio'])}; "
          f"wasm <= {TARGETS['wasm_mb']} MB {verdict(wasm_mb <= TARGETS['wasm_mb'])}; "
          f"ready <= {TARGETS['ready_s']} s {verdict(ready_all <= TARGETS['ready_s'])}; "
          f"push <= {TARGETS['push_ms']} ms {verdict(applied_ms is not None and applied_ms <= TARGETS['push_ms'])}; "
          f"augur over empty filter <= {TARGETS['over_empty_us']} us {verdict(ua - ue <= TARGETS['over_empty_us'])}")
    print(f"(run took {time.monotonic() - started:.0f} s; logs and configs in {ctx['work']})")


# ---- main ----------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description="augur end-to-end benchmark (make bench-e2e)")
    p.add_argument("--rate", type=int, default=1000, help="open-loop rate for the latency runs (req/s)")
    p.add_argument("--latency-seconds", type=int, default=21, help="per configuration, over all rounds")
    p.add_argument("--latency-conns", type=int, default=8, help="max requests in flight in the latency runs")
    p.add_argument("--saturation-seconds", type=int, default=15, help="per configuration, over all rounds")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the configurations (results: medians)")
    p.add_argument("--noise-threshold", type=float, default=20.0,
                   help="a round during which other processes used more CPU than this (%% of one CPU) is repeated")
    p.add_argument("--max-retries", type=int, default=6, help="rounds repeated at most, in all (bounds the run time)")
    p.add_argument("--sat-conns", type=int, default=32, help="wrk connections (fixed concurrency) at saturation")
    p.add_argument("--warmup-seconds", type=int, default=3, help="saturation burst before measuring")
    p.add_argument("--cold-requests", type=int, default=2000, help="first requests after start, reported apart")
    p.add_argument("--pushes", type=int, default=3)
    p.add_argument("--push-spacing", type=float, default=2.0, help="seconds between model pushes")
    p.add_argument("--push-rate", type=int, default=250, help="light load during the pushes (req/s)")
    p.add_argument("--layout", choices=("split", "shared", "none"), default="split",
                   help="split: envoy under test alone on the last CPU; shared: everything on it; none: no pinning")
    p.add_argument("--quick", action="store_true", help="short runs (smoke test of the script)")
    p.add_argument("--breakdown", action="store_true",
                   help="also run augur with a tiny model (how much of augur's cost is inference)")
    p.add_argument("--workdir", help="where configs and logs go (default .run/bench-e2e)")
    a = p.parse_args(argv)
    if a.quick:
        a.latency_seconds, a.saturation_seconds, a.warmup_seconds, a.rounds = 4, 4, 1, 2
        a.cold_requests, a.pushes, a.push_spacing = 500, 2, 1.5
    return a


def main(argv=None):
    args = parse_args(argv)
    started = time.monotonic()
    envoy_cpus, gen_cpus = cpu_layout(args.layout)
    tools = check_tools(need_taskset=envoy_cpus is not None)

    def too_long(signum, frame):
        raise BenchError(f"stopped: the benchmark ran past its {HARD_LIMIT_S}s limit")

    signal.signal(signal.SIGALRM, too_long)
    signal.alarm(HARD_LIMIT_S)

    b0, t0 = machine_cpu_seconds()
    time.sleep(1.0)
    b1, t1 = machine_cpu_seconds()
    idle_busy = 100.0 * (b1 - b0) / max(t1 - t0, 1e-9)
    if idle_busy > 20:
        print(f"bench-e2e: warning: the machine is already {idle_busy:.0f}% busy before the benchmark starts "
              "(other builds or tests?): results will be noisy", file=sys.stderr)
    work = Path(args.workdir or ROOT / ".run" / "bench-e2e")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    plugin_text = DEMO_PLUGIN.read_text()
    script = work / "requests.lua"
    # A snapshot: a concurrent `make wasm` must not swap the module mid-run.
    wasm = work / "augur.wasm"
    shutil.copyfile(WASM, wasm)
    shutil.copyfile(EMPTY_WASM, work / "empty_filter.wasm")
    import hashlib

    configs = list(CONFIGS)
    plugins = {}
    if args.breakdown:
        tiny = tiny_model_plugin(plugin_text)
        if tiny is None:
            print(f"bench-e2e: --breakdown needs {TINY_MODEL}; skipped", file=sys.stderr)
        else:
            plugins["augur_tiny_model"] = tiny
            configs.append("augur_tiny_model")
    ctx = {
        "wasm": wasm,
        "wasm_src": WASM.relative_to(ROOT),
        "wasm_sha": hashlib.sha256(wasm.read_bytes()).hexdigest(),
        "plugins": plugins,
        "busy_before": idle_busy,
        "work": work,
        "envoy_cpus": envoy_cpus,
        "gen_cpus": gen_cpus,
        "plugin_text": plugin_text,
        "headers": fixed_request_headers(pick_new_stack_user(DEMO_PLUGIN)),
        "wrk_requests": wrk_script(script),
        "oha": Oha(tools["oha"], gen_cpus),
        "wrk": Wrk(tools["wrk"], gen_cpus, script),
        "versions": {
            "envoy": tool_version([str(ENVOY), "--version"]).split("version:")[-1].strip(),
            "oha": tool_version([tools["oha"], "--version"]),
            "wrk": tool_version([tools["wrk"], "-v"]).split(" Copyright")[0],
        },
    }
    up_port, up_admin = free_port(), free_port()
    upstream = EnvoyProc("upstream", envoyconf.direct_response_bootstrap(up_admin, up_port, body="ok"), work,
                         gen_cpus, up_port)
    ctx["upstream"], ctx["upstream_port"] = upstream, up_port
    try:
        results = measure_all(configs, args, ctx)
        print("bench-e2e: augur start on all CPUs ...", flush=True)
        ready_all = ready_unpinned(ctx)
        print("bench-e2e: model push through ECDS ...", flush=True)
        push = model_push(args, ctx)
    finally:
        upstream.close()
        signal.alarm(0)
    report(results, push, ready_all, ctx, args, started)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench-e2e: {e}", file=sys.stderr)
        sys.exit(1)
