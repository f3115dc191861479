"""A fleet on loopback: N Envoys (each serving augur through its own watched
ECDS file), the two demo stacks, a real Prometheus scraping every Envoy, and
the augur controller (python/augur_tools/loop/controller.py) as its own process. Used by
`make fleet-demo` (python/augur_tools/demos/fleet_demo.py) and python/tests/test_fleet.py.

Every wait is bounded; `close()` stops every process started here.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from augur_tools.envoy import envoyconf, harness
from augur_tools.envoy.harness import ROOT, Client, Envoy, Upstreams

ROLLOUT = ROOT / "deploy" / "fleet" / "rollout.json"
CONTROLLER = "augur_tools.loop.controller"  # run as its own process: python -m
JOB = "augur"
UAS = {
    "phone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Mobile",
    "tablet": "Mozilla/5.0 (iPad; CPU OS 17_0)",
    "desktop": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
}
REGIONS = ["us", "eu", "apac", "latam"]
# Not decided by configuration, so proxies may differ on them: an exploration
# draw (random per request) and an in-proxy block (each proxy's local guard).
LOCAL_REASONS = {"exploring", "rolled_back", "probing"}


class Proxy:
    """One Envoy of the fleet; `restart()` brings it back on its ECDS file as it is now."""

    def __init__(self, name, workdir, rollout, ups, concurrency=2):
        self.name = name
        self.workdir = Path(workdir)
        self.ecds = self.workdir / "ecds" / "augur.json"
        self.ecds.parent.mkdir(parents=True, exist_ok=True)
        self.port, self.admin_port = harness.free_port(), harness.free_port()
        self.access_log = self.workdir / "access.log"
        self.concurrency = concurrency
        listener = envoyconf.ecds_listener(name, self.port, self.ecds, rollout, harness.WASM.resolve(),
                                           self.access_log, version="initial")
        self.config = envoyconf.bootstrap(self.admin_port, [listener], ups.ports["old"], ups.ports["new"])
        self.envoy = Envoy(self.config, workdir=self.workdir, concurrency=concurrency)

    @property
    def admin(self):
        return f"127.0.0.1:{self.admin_port}"

    def restart(self):
        self.stop()
        self.start()

    def stop(self):
        self.envoy.close()

    def start(self):
        self.envoy = Envoy(config_path=self.envoy.config_path, admin_port=self.admin_port, workdir=self.workdir,
                           concurrency=self.concurrency)

    def close(self):
        self.envoy.close()


class Fleet:
    def __init__(self, workdir, proxies=3, rollout=ROLLOUT, controller_settings=None, progress=None,
                 percentage=None):
        """`percentage`: run a copy of `rollout` at that deployment percentage
        (for a run without the controller's ramp)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rollout_path = Path(rollout)
        self.rollout = json.loads(self.rollout_path.read_text())
        if percentage is not None:
            self.rollout["rollout"]["percentage"] = percentage
            self.rollout_path = self.workdir / "rollout.json"
            self.rollout_path.write_text(json.dumps(self.rollout, indent=1))
        self.progress = progress or (lambda msg: None)
        self.ups = Upstreams()
        self.proxies, self.prom, self.ctl = [], None, None
        try:
            for i in range(proxies):
                self.proxies.append(Proxy(f"envoy-{i}", self.workdir / f"envoy-{i}", self.rollout, self.ups))
                self.progress(f"envoy-{i} ready in {self.proxies[-1].envoy.ready_seconds:.1f} s")
            self.prom = harness.Prometheus(self.workdir / "prometheus", {JOB: [p.admin for p in self.proxies]})
            self.prom.wait_scraped(len(self.proxies))
            self.metrics_port = harness.free_port()
            settings = {
                "rollout": str(self.rollout_path.resolve()),
                "wasm": str(harness.WASM.resolve()),
                "proxies": [{"name": p.name, "admin": p.admin, "ecds": str(p.ecds)} for p in self.proxies],
                "prometheus": self.prom.url,
                "job": JOB,
                "state": str(self.workdir / "controller" / "state.json"),
                "audit": str(self.workdir / "controller" / "audit.jsonl"),
                "listen": f"127.0.0.1:{self.metrics_port}",
                "augur": str(harness.AUGUR_CLI.resolve()),
            }
            settings.update(controller_settings or {})
            self.controller_config = self.workdir / "controller.json"
            self.controller_config.write_text(json.dumps(settings, indent=1))
        except BaseException:
            self.close()
            raise

    # -- the controller process ------------------------------------------
    def start_controller(self):
        with open(self.workdir / "controller.log", "a") as log:
            self.ctl = subprocess.Popen([sys.executable, "-m", CONTROLLER, "--config", str(self.controller_config)],
                                        stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        harness.wait_until(lambda: self._controller_up(), 30, "controller /metrics")

    def _controller_up(self):
        if self.ctl.poll() is not None:
            raise RuntimeError(f"controller exited {self.ctl.returncode}: " + self.controller_log()[-3000:])
        return harness.port_open(self.metrics_port)

    def stop_controller(self, kill=False):
        if self.ctl is not None:
            if kill:
                self.ctl.kill()
                self.ctl.wait(10)
            else:
                harness.stop_process(self.ctl, grace=10)
            self.ctl = None

    def controller_log(self):
        p = self.workdir / "controller.log"
        return p.read_text() if p.exists() else ""

    def diagnosis(self):
        """What a failed wait should show: the controller's last log lines and
        hold counts, and how old Prometheus's newest sample of `up` and of each
        series the controller requires is, per proxy."""
        from augur_tools.loop import controller

        lines = ["controller log tail:", self.controller_log()[-1500:]]
        try:
            holds = [l for l in self.controller_metrics().splitlines() if l.startswith("augur_controller_holds_total")]
            lines += ["controller holds:", *holds]
        except OSError as e:
            lines.append(f"controller metrics: {e}")
        rollout = self.rollout["name"]
        for name in ("up", *controller.REQUIRED):
            sel = f'{name}{{job="{JOB}"}}' if name == "up" else f'{name}{{rollout="{rollout}"}}'
            try:
                ages = {r["metric"].get("instance"): round(float(r["value"][1]), 1)
                        for r in self.prom.query(f"time() - max by (instance) (timestamp({sel}))")}
            except (OSError, RuntimeError) as e:
                ages = str(e)[:200]
            lines.append(f"prometheus: age of the newest {name} sample per instance (s): {ages}")
        log = self.prom.workdir / "prometheus.log"
        lines += ["prometheus log tail:", log.read_text()[-800:] if log.exists() else "(none)"]
        return "\n".join(lines)

    def controller_events(self, event=None):
        out = []
        for line in self.controller_log().splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event is None or e.get("event") == event:
                out.append(e)
        return out

    def audit(self):
        p = self.workdir / "controller" / "audit.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []

    def controller_metrics(self):
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def prometheus_reload(self, targets=None, scrape_s=None, restart=False, timeout=20):
        """Rewrites Prometheus's configuration — the job's `targets` (default:
        every proxy), its scrape interval `scrape_s` (default: the global 1 s) —
        and reloads it (SIGHUP), as an operator's change would; returns once
        Prometheus reports the reload. `restart`: stops Prometheus, rewrites the
        configuration and starts it again (same TSDB) instead."""
        import urllib.request

        config = json.loads(self.prom.config_path.read_text())
        job = next(j for j in config["scrape_configs"] if j["job_name"] == JOB)
        job["static_configs"] = [{"targets": list(targets if targets is not None else
                                                  [p.admin for p in self.proxies])}]
        for k in ("scrape_interval", "scrape_timeout"):
            job.pop(k, None)
        if scrape_s is not None:
            job["scrape_interval"], job["scrape_timeout"] = f"{scrape_s}s", "1s"

        def reloaded_at():
            with urllib.request.urlopen(f"{self.prom.url}/metrics", timeout=5) as r:
                text = r.read().decode()
            if harness.prom_sum(text, "prometheus_config_last_reload_successful") != 1:
                raise RuntimeError("prometheus refused its configuration: "
                                   + (self.prom.workdir / "prometheus.log").read_text()[-1500:])
            return harness.prom_sum(text, "prometheus_config_last_reload_success_timestamp_seconds")

        if restart:
            self.prom.stop()
            self.prom.config_path.write_text(json.dumps(config, indent=1))
            self.prom.start()
            return
        before = reloaded_at()
        self.prom.config_path.write_text(json.dumps(config, indent=1))
        self.prom.proc.send_signal(signal.SIGHUP)
        harness.wait_until(lambda: reloaded_at() != before, timeout, "prometheus reloaded its configuration")

    def serving(self):
        from augur_tools.loop import retrain

        return {p.name: retrain.serving_version(p.admin) for p in self.proxies}

    def close(self):
        self.stop_controller()
        if self.prom:
            self.prom.close()
        for p in self.proxies:
            p.close()
        self.ups.close()


def user_headers(user, rng_seed=0):
    """A user's fixed attributes: device and region come from the user id."""
    r = random.Random(f"{user}-{rng_seed}")
    device = r.choice(["phone", "phone", "tablet", "desktop", "desktop"])
    return {"x-user-id": user, "user-agent": UAS[device], "x-geo-region": r.choice(REGIONS)}, device


class Traffic(threading.Thread):
    """Background traffic at about `rate` req/s from `users` users, each user's
    requests spread over every proxy in turn. While `harm` is set, tablet
    requests carry the upstream's planted regression (`x-demo-harm`): the new
    stack fails `harm` when it is among the enabled features. `plant` adds
    more, per device: {device: {header: value}} with the upstream's knobs
    (`x-demo-harm: <feature>:<rate>`, `x-demo-slow: <feature>:<ms>`)."""

    def __init__(self, fleet, users=600, rate=150, seed=7, clients=3):
        super().__init__(daemon=True)
        self.fleet, self.rate, self.clients = fleet, rate, clients
        self.users = [f"u{seed}-{i}" for i in range(users)]
        self.rng = random.Random(seed)
        self.harm = None
        self.plant = {}
        self.sent = self.failed = 0
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def run(self):
        workers = [threading.Thread(target=self._worker, args=(k,), daemon=True) for k in range(self.clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def _worker(self, k):
        conns = [Client(p.port) for p in self.fleet.proxies]
        rng = random.Random(k)
        period = self.clients / self.rate
        turn = {}
        nxt = time.monotonic()
        try:
            while not self.stop_event.is_set():
                user = rng.choice(self.users)
                h, device = user_headers(user)
                i = turn[user] = (turn.get(user, rng.randrange(len(conns))) + 1) % len(conns)
                if self.harm and device == "tablet":
                    h["x-demo-harm"] = self.harm
                h.update(self.plant.get(device, {}))
                h[":path"] = rng.choice(["/api/checkout", "/api/search", "/", "/static/app.js"])
                try:
                    _status, _, _ = conns[i].request(h)
                    with self.lock:
                        self.sent += 1
                except OSError:
                    # A proxy restarting: counted, not retried.
                    with self.lock:
                        self.failed += 1
                    conns[i].close()
                    conns[i] = Client(self.fleet.proxies[i].port)
                nxt += period
                time.sleep(max(0.0, nxt - time.monotonic()))
        finally:
            for c in conns:
                c.close()

    def stop(self):
        self.stop_event.set()
        self.join(30)


def parse_flags(value):
    """`@model=v,f=on;reason;score,…` → (model version, {feature: (on, reason)})."""
    model, features = None, {}
    for part in (value or "").split(","):
        k, _, v = part.partition("=")
        if k == "@model":
            model = v.split(";")[0]
        elif k:
            state, _, rest = v.partition(";")
            features[k] = (state == "on", rest.split(";")[0])
    return model, features


def consistency(fleet, users, path="/api/checkout"):
    """Sends each user's same request to every proxy. A user is consistent when
    every proxy gives the same stack, the same model and the same state of every
    feature decided by configuration (an exploration draw or a proxy's local
    in-proxy block is allowed to differ). Returns (consistent, total, examples)."""
    conns = [Client(p.port) for p in fleet.proxies]
    ok, bad = 0, []
    try:
        for u in users:
            h, _ = user_headers(u)
            seen = []
            for c in conns:
                status, _headers, body = c.request(dict(h, **{":path": path}))
                echo = json.loads(body) if status == 200 else {"served_by": f"status {status}", "headers": {}}
                model, feats = parse_flags(echo["headers"].get("x-augur-flags"))
                seen.append((echo["served_by"], model, feats))
            stacks = {s for s, _, _ in seen}
            models = {m for _, m, _ in seen}
            names = set().union(*(f.keys() for _, _, f in seen))
            differ = [n for n in names
                      if not any(f.get(n, (None, ""))[1] in LOCAL_REASONS for _, _, f in seen)
                      and len({f.get(n, (None, ""))[0] for _, _, f in seen}) > 1]
            if len(stacks) == 1 and len(models) == 1 and not differ:
                ok += 1
            else:
                bad.append({"user": u, "seen": seen})
    finally:
        for c in conns:
            c.close()
    return ok, len(users), bad[:3]
