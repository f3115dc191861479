"""Runs the real parts on loopback: the pip-installed Envoy 1.40 with the augur
wasm, and the demo upstreams. Used by the integration tests and the demo.

Every wait is bounded; every process is stopped by `close()` (or the context
manager), also on failure.
"""

import http.client
import json
import os
import random
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from augur_tools import paths, records
from augur_tools.envoy import admin
from augur_tools.paths import AUGUR_CLI, ENVOY, ROOT, module_cmd

# The module the tests and demos load (AUGUR_WASM: another build).
WASM = paths.WASM


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout, what):
    """Polls `check` until it is true; else TimeoutError naming `what` (a string,
    or a callable built at the timeout, so it can show the state then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")


def stop_process(proc, grace=10):
    """Terminates `proc`, then kills it if it is still there after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Upstreams:
    """The two demo stacks, each its own process on a free loopback port."""

    def __init__(self, old_port=None, new_port=None):
        self.ports = {"old": old_port or free_port(), "new": new_port or free_port()}
        self.procs = []
        for name, port in self.ports.items():
            self.procs.append(
                subprocess.Popen(
                    module_cmd("augur_tools.envoy.upstream", "--name", name, "--port", port),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports.values():
            wait_until(lambda port=port: port_open(port), 10, f"upstream on {port}")

    def close(self):
        for p in self.procs:
            stop_process(p, grace=5)


def envoy_command(config_path, log_path, concurrency=2, flush_ms=250, binary=ENVOY):
    """The command line every Envoy here runs with. Access logs are flushed every
    10 s by default; tests read them sooner (`flush_ms`, None: Envoy's default)."""
    cmd = [
        str(binary), "-c", str(config_path), "--concurrency", str(concurrency), "--disable-hot-restart",
        "--log-path", str(log_path), "-l", "info",
    ]
    return cmd + ["--file-flush-interval-msec", str(flush_ms)] if flush_ms else cmd


class Envoy:
    """One Envoy process, from a bootstrap dict (see envoyconf) or a config file."""

    def __init__(self, config=None, workdir=None, concurrency=2, ready_timeout=90, config_path=None, admin_port=None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="augur-envoy-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if config_path is None:
            config_path = self.workdir / "envoy.json"
            config_path.write_text(json.dumps(config, indent=1))
            admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        self.config_path = Path(config_path)
        self.log_path = self.workdir / "envoy.log"
        self.admin_port = admin_port
        started = time.monotonic()
        self.proc = subprocess.Popen(
            envoy_command(self.config_path, self.log_path, concurrency),
            cwd=str(ROOT),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(self._ready, ready_timeout, "envoy /ready")
        except (RuntimeError, TimeoutError, OSError, http.client.HTTPException) as e:
            self.close()
            raise RuntimeError(f"envoy did not become ready; log:\n{self.log()[-4000:]}") from e
        self.ready_seconds = time.monotonic() - started

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"envoy exited with {self.proc.returncode}; log:\n{self.log()[-4000:]}")
        status, body = self.admin("/ready")
        return status == 200 and body.strip() == "LIVE"

    def admin(self, path, method="GET"):
        return admin.get(self.admin_port, path, method)

    def counters(self):
        """All counters as {name: value} (full names, e.g. wasmcustom.augur_requests_total...)."""
        return admin.stats(self.admin_port, "&type=Counters")

    def prometheus(self):
        return self.admin("/stats/prometheus")[1]

    def log(self):
        return self.log_path.read_text() if self.log_path.exists() else ""

    def close(self):
        stop_process(self.proc)


def validate(config_path, cwd=ROOT, timeout=120):
    """`envoy --mode validate`: also runs the filter's on_configure."""
    r = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(config_path), "--disable-hot-restart", "-l", "info"],
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout, check=False,
    )
    return r.returncode, r.stdout + r.stderr


class Client:
    """A keep-alive HTTP/1.1 client to one listener."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def request(self, headers, path=None, method=None, body=None):
        headers = dict(headers)
        path = path or headers.pop(":path", "/")
        method = method or headers.pop(":method", "GET")
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b"x" * int(headers.pop("content-length", 0) or 0)
        else:
            headers.pop("content-length", None)
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, data
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if attempt:
                    raise

    def close(self):
        self.conn.close()


# Parsed access-log lines (see augur_tools.records).
read_records = records.read_records


def wait_for_records(path, count, timeout=15):
    """Envoy flushes access logs asynchronously (about every second)."""
    wait_until(lambda: len(read_records(path)) >= count, timeout, f"{count} access-log records in {path}")
    return read_records(path)


def cli_decide(config_path, header_dicts, raw=False):
    """The native library's decision record for each request (same code as the
    filter), parsed, or (`raw`) as the text the filter would store."""
    lines = "\n".join(json.dumps(h) for h in header_dicts) + "\n"
    r = subprocess.run(
        [str(AUGUR_CLI), "decide", "--config", str(config_path)],
        input=lines, capture_output=True, text=True, timeout=120, check=True,
    )
    out = [x for x in r.stdout.splitlines() if x.strip()]
    return out if raw else [json.loads(x) for x in out]


def prom_sum(text, name, **labels):
    """Sum of the Prometheus samples of `name` whose labels include `labels`; None if none."""
    total = None
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total = (total or 0.0) + float(m.group(3))
    return total


MAX_BODY = 64 * 1024


def synthetic_requests(n, seed, prefix, users=None):
    """`n` requests from synthetic users (python/augur_tools/sim/synthetic.py), each with its own
    x-request-id. Bodies are capped at 64 KB to keep loopback runs quick."""
    from augur_tools.sim import synthetic

    rng = random.Random(seed)
    users = users or synthetic.make_users(max(1, n // 3), seed)
    reqs = []
    for i in range(n):
        h = synthetic.request_headers(rng.choice(users), rng)
        if "content-length" in h:
            h["content-length"] = str(min(int(h["content-length"]), MAX_BODY))
        h["x-request-id"] = f"{prefix}-{i:05d}"
        reqs.append(h)
    return reqs


def env_flag(name):
    return os.environ.get(name, "") not in ("", "0", "false")


class Prometheus:
    """A real Prometheus (Debian `prometheus`) on a free loopback port, with a
    generated configuration: `scrape_s` scrape (and rule evaluation) of
    `targets` ({job: ["host:port", ...]}, each at `metrics_path`), `rule_files`.
    `restart()` keeps its TSDB; `close()` stops it."""

    def __init__(self, workdir, targets, rule_files=(), scrape_s=1, metrics_path="/stats/prometheus", port=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": f"{scrape_s}s", "evaluation_interval": f"{scrape_s}s"},
            "rule_files": [str(r) for r in rule_files],
            "scrape_configs": [
                {"job_name": job, "metrics_path": metrics_path, "static_configs": [{"targets": list(t)}]}
                for job, t in targets.items()
            ],
        }
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        self.proc = None
        self.start()

    def start(self, timeout=30):
        with open(self.workdir / "prometheus.log", "a") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        wait_until(lambda: self._ready(), timeout, f"prometheus on {self.port}")

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}: "
                               + (self.workdir / "prometheus.log").read_text()[-2000:])
        return port_open(self.port) and self.query("up") is not None

    def query(self, expr, timeout=10):
        """The instant-query result list (raises on a failed query)."""
        import urllib.parse
        import urllib.request

        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{expr}: {body}")
        return body["data"]["result"]

    def wait_scraped(self, n, timeout=30):
        """Until `n` targets are up."""
        wait_until(lambda: sum(r["value"][1] == "1" for r in self.query("up")) >= n, timeout, f"{n} targets up")

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, grace=5)

    def restart(self):
        self.stop()
        self.start()

    close = stop
