"""Soak test (`make soak`, not in CI): the real Envoy 1.40 with augur under a
fixed request rate for SOAK_MINUTES (default 30), a configuration push through
ECDS every SOAK_PUSH_S seconds (default 30; every third push is a bad one that
must be refused), and hostile requests mixed in (forged and underscore control
headers, non-UTF-8 values, replayed request ids, huge and odd user ids).

Prints Envoy's memory at start and end (RSS from /proc; Envoy's own allocator
stats `server.memory_allocated` / `server.memory_heap_size`, which include the
V8 heaps of the wasm VMs: Envoy exposes no per-VM heap stat), failures, pushes
applied/refused, and p50/p99 per window, with the p99 drift first→last window.
Exits 1 when a request failed, a forged header was honoured, a control header
reached a client, or a push had the wrong verdict.

    SOAK_MINUTES=5 .venv/bin/python -m augur_tools.demos.soak
"""

import json
import os
import random
import sys
import threading
import time
from pathlib import Path

from augur_tools.envoy import envoyconf, harness
from augur_tools.envoy.harness import ROOT, Client, Envoy, Upstreams
from augur_tools.loop import retrain

MINUTES = float(os.environ.get("SOAK_MINUTES", "30"))
RATE = int(os.environ.get("SOAK_RATE", "100"))
PUSH_S = float(os.environ.get("SOAK_PUSH_S", "30"))
WINDOW_S = 60.0 if MINUTES >= 5 else 15.0
THREADS = 4

DEMO = json.loads((ROOT / "envoy" / "augur-demo.json").read_text())


def plugin(k):
    """The k-th pushed configuration: the demo with a new percentage, or every
    third push a bad one (unknown field) that Envoy must refuse."""
    if k % 3 == 2:
        return dict(DEMO, name="soak", rollout=dict(DEMO["rollout"], sticky=True)), False
    return dict(DEMO, name="soak", rollout=dict(DEMO["rollout"], percentage=[30, 60][k % 2])), True


def hostile(rng, i):
    """A request a hostile client might send."""
    kind = i % 6
    h = {"x-user-id": f"soak-evil-{rng.randrange(500)}"}
    if kind == 0:
        h.update({"x-augur-stack": "new", "x-augur-features": "admin", "x-augur-decision": "forged"})
    elif kind == 1:
        h.update({"x_augur_stack": "new", "x_augur_features": "admin"})
    elif kind == 2:
        h.update({"x-user-id": "caf\xe9-\xff", "user-agent": "Bot\xff", "x-augur-stack": "new\xe9"})
    elif kind == 3:
        h.update({"x-request-id": "replayed-by-client", "x-user-sessions-30d": "1e39"})
    elif kind == 4:
        h.update({"x-user-id": "u" * 4000, "x-user-purchases-90d": "-inf"})
    else:
        h.update({"x-augur-": "1", "x-augur-stack": "", "x-user-id": ""})
    return h


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.windows = {}  # window index -> latencies (us)
        self.failures = []
        self.leaks = 0
        self.forged_honoured = 0
        self.sent = 0
        self.hostile = 0

    def add(self, window, us):
        with self.lock:
            self.windows.setdefault(window, []).append(us)
            self.sent += 1


def percentile(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, round(q / 100 * (len(v) - 1)))] if v else float("nan")


def load(port, stats, stop, t0, seed):
    """One of THREADS paced senders (RATE / THREADS req/s each, keep-alive)."""
    rng = random.Random(seed)
    c = Client(port)
    period = THREADS / RATE
    nxt = time.monotonic()
    i = 0
    try:
        while not stop.is_set():
            nxt += period
            i += 1
            evil = i % 10 == 0
            h = hostile(rng, i // 10) if evil else {"x-user-id": f"soak-{rng.randrange(5000)}",
                                                   "user-agent": "Mozilla/5.0 (Windows NT 10.0)"}
            start = time.monotonic()
            try:
                status, rh, body = c.request(h)
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                with stats.lock:
                    stats.failures.append(f"{type(e).__name__}: {e}")
                c.close()
                c = Client(port)
                continue
            us = (time.monotonic() - start) * 1e6
            stats.add(int((start - t0) // WINDOW_S), us)
            if status != 200:
                with stats.lock:
                    stats.failures.append(f"status {status} for {sorted(h)}")
            if any(k.startswith(("x-augur-", "x_augur_")) for k in rh):
                with stats.lock:
                    stats.leaks += 1
            if evil:
                with stats.lock:
                    stats.hostile += 1
                try:
                    echoed = json.loads(body)["headers"]
                except (ValueError, KeyError):
                    echoed = {}
                if echoed.get("x-augur-decision") == "forged" or "x_augur_stack" in echoed \
                        or echoed.get("x-augur-features", "").find("admin") >= 0:
                    with stats.lock:
                        stats.forged_honoured += 1
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1:
                nxt = time.monotonic()  # fell behind by more than 1 s: do not burst
    finally:
        c.close()


def memory(envoy):
    rss = 0
    for line in Path(f"/proc/{envoy.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    _, body = envoy.admin("/stats?format=json&filter=^server\\.memory_")
    gauges = {s["name"]: s["value"] for s in json.loads(body)["stats"] if "value" in s}
    return {"rss": rss, "allocated": gauges.get("server.memory_allocated", 0),
            "heap": gauges.get("server.memory_heap_size", 0)}


def mb(n):
    return f"{n / 1e6:.1f} MB"


def main():
    work = ROOT / ".run" / "soak"
    work.mkdir(parents=True, exist_ok=True)
    watched = work / "ecds" / "augur.json"
    watched.parent.mkdir(exist_ok=True)
    port, admin = harness.free_port(), harness.free_port()
    first, _ = plugin(0)
    ups = Upstreams()
    envoy = None
    stop = threading.Event()
    stats = Stats()
    pushes = {"applied": 0, "refused": 0, "wrong": []}
    try:
        lst = envoyconf.ecds_listener("soak", port, watched, first, harness.WASM.resolve(), work / "access.log")
        envoy = Envoy(envoyconf.bootstrap(admin, [lst], ups.ports["old"], ups.ports["new"]), workdir=work,
                      ready_timeout=300)
        time.sleep(2)
        mem0 = memory(envoy)
        print(f"soak: {MINUTES:g} min at {RATE} req/s ({THREADS} paced keep-alive clients, 1 in 10 hostile), "
              f"a push every {PUSH_S:g} s (every third refused); Envoy pid {envoy.proc.pid}", flush=True)
        print(f"soak: memory at start: RSS {mb(mem0['rss'])}, allocated {mb(mem0['allocated'])}, "
              f"heap {mb(mem0['heap'])}", flush=True)
        t0 = time.monotonic()
        threads = [threading.Thread(target=load, args=(port, stats, stop, t0, s), daemon=True) for s in range(THREADS)]
        for t in threads:
            t.start()
        end = t0 + MINUTES * 60
        k = 1
        next_push = t0 + PUSH_S
        last_report = t0
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            now = time.monotonic()
            if now >= next_push and now < end:
                cfg, good = plugin(k)
                res = retrain.push(cfg, watched, f"127.0.0.1:{admin}", envoy.log_path, version_info=f"soak-{k}",
                                   timeout=15)
                want = "applied" if good else "refused"
                pushes[res.status] = pushes.get(res.status, 0) + 1
                if res.status != want:
                    pushes["wrong"].append((k, want, res.status, res.message))
                k += 1
                next_push += PUSH_S
            if now - last_report >= WINDOW_S:
                last_report = now
                m = memory(envoy)
                with stats.lock:
                    w = stats.windows.get(int((now - t0) // WINDOW_S) - 1, [])
                    print(f"soak: {int((now - t0) / 60)}m{int(now - t0) % 60:02d}s sent {stats.sent}, "
                          f"failures {len(stats.failures)}, pushes {pushes['applied']} applied / "
                          f"{pushes['refused']} refused, last window p99 {percentile(w, 99):.0f} us, "
                          f"RSS {mb(m['rss'])}", flush=True)
        stop.set()
        for t in threads:
            t.join(15)
        time.sleep(1)
        mem1 = memory(envoy)
        alive = envoy.proc.poll() is None
    finally:
        stop.set()
        if envoy:
            envoy.close()
        ups.close()

    wins = sorted(stats.windows)
    full = [w for w in wins if len(stats.windows[w]) >= RATE * WINDOW_S * 0.5]
    print()
    print(f"== augur soak ({MINUTES:g} min, {RATE} req/s, window {WINDOW_S:.0f} s)")
    for w in wins:
        v = stats.windows[w]
        print(f"   window {w:3d}: {len(v):6d} requests, p50 {percentile(v, 50):7.0f} us, p99 {percentile(v, 99):7.0f} us")
    first_w, last_w = (stats.windows[full[0]], stats.windows[full[-1]]) if full else ([], [])
    drift = percentile(last_w, 99) - percentile(first_w, 99)
    print(f"requests: {stats.sent} ({stats.hostile} hostile)")
    print(f"failures: {len(stats.failures)}" + (f" (first: {stats.failures[:3]})" if stats.failures else ""))
    print(f"forged control headers honoured: {stats.forged_honoured}")
    print(f"control headers leaked to clients: {stats.leaks}")
    print(f"pushes: {pushes['applied']} applied, {pushes['refused']} refused, wrong verdicts: {pushes['wrong']}")
    print(f"envoy alive at end: {alive}")
    print(f"memory start: RSS {mb(mem0['rss'])}, allocated {mb(mem0['allocated'])}, heap {mb(mem0['heap'])}")
    print(f"memory end:   RSS {mb(mem1['rss'])}, allocated {mb(mem1['allocated'])}, heap {mb(mem1['heap'])}")
    print(f"memory growth: RSS {mb(mem1['rss'] - mem0['rss'])}, allocated {mb(mem1['allocated'] - mem0['allocated'])}")
    print(f"p99 first window {percentile(first_w, 99):.0f} us, last window {percentile(last_w, 99):.0f} us, "
          f"drift {drift:+.0f} us")
    bad = stats.failures or stats.forged_honoured or stats.leaks or pushes["wrong"] or not alive
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
