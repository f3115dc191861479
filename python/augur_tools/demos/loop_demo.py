#!/usr/bin/env python3
"""The closed loop, measured through the real Envoy: `make loop-demo`.

Two runs over the same bounded traffic (same seed, same users, same request ids,
same 50% of users on the new stack, same salt), each with its own Envoy 1.40 +
augur (served through ECDS) in front of two app processes
(python/augur_tools/sim/planted.py). The new-stack app plants hidden effects per
(feature, segment) pair — some harm (errors, latency, security events), some
help (engagement) — that augur and its model are never told.

- **static**: a static rollout — every feature `override: on` for new-stack
  users, no automated rollback.
- **loop**: the closed loop — every feature `auto`, starting from the default
  model with lenient thresholds (its priors, trained on another world, turn
  nothing off), automated rollback on (live exploration in suspect cells,
  per-cell blocks); after --retrain-at of the traffic, the external job
  `python/augur_tools/loop/retrain.py` reads the access log so far, trains a model from the
  randomised records, validates it and pushes it into the running Envoy through
  ECDS (no restart) while traffic keeps flowing.

Ground truth comes from what actually happened: the app appends, for every
request, the features it received in x-augur-features and which hidden pairs
were exposed (feature on and request in the segment). Over the whole run,
learning included:

    harmed request       = a new-stack request on which at least one harmful pair was exposed
    beneficial exposure  = one beneficial pair exposed on one request

and the last line is `harm reduction: X% (beneficial kept: Y%)` with
X = 100 (1 - harmed(loop) / harmed(static)), Y = 100 beneficial(loop) / beneficial(static).

Traffic: 30,000 requests per run at 200 requests/s on an open-loop schedule (32
keep-alive clients, no retries), so each run takes ~2.5 min and the demo ~5.5
min (bounded by --time-limit). Measured on the 2-core machine (seeds 7, 7, 11):
harm reduction 95.0 / 95.3 / 96.3%, beneficial kept 96.8 / 96.9 / 96.5%, the
retrained model applied 65-88 ms after the push, 0 requests lost.

Everything listens on 127.0.0.1; every process started here is stopped on exit;
every wait and the traffic itself are bounded in count and time.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import http.client
import json
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from augur_tools.envoy import envoyconf, harness
from augur_tools.loop import report
from augur_tools.paths import ROOT, module_cmd
from augur_tools.sim import planted, synthetic

FEATURES = list(synthetic.DEMO_FEATURES)
LENIENT = {"min_score": 0, "max_performance_cost": 1, "max_error_risk": 1, "max_security_risk": 1, "min_engagement": 0}
# What the retraining job pushes along with its model: its impacts are measured
# uplifts (probability that the feature causes a slow request / an error / a
# security event), so a feature is turned off where it causes one in five.
PUSHED_THRESHOLDS = "performance_cost=0.2,error_risk=0.2,security_risk=0.2"
# The loop run's automated rollback: the shipped defaults (README), nothing tuned.
ROLLBACK = {}
MAX_BODY = 2048


def base_plugin(name, percentage, salt):
    demo = json.loads((ROOT / "envoy" / "augur-demo.json").read_text())
    return {
        "name": name,
        "rollout": {"percentage": percentage, "salt": salt},
        "profile": demo["profile"],
    }


def static_plugin(percentage, salt):
    p = base_plugin("static", percentage, salt)
    p["features"] = [{"name": f, "override": "on"} for f in FEATURES]
    p["rollback"] = {"enabled": False}
    return p


def loop_plugin(percentage, salt, rollback=None):
    p = base_plugin("loop", percentage, salt)
    p["features"] = [dict(name=f, **LENIENT) for f in FEATURES]
    p["rollback"] = dict(ROLLBACK, **(rollback or {}))
    return p


def build_requests(n, seed, users):
    """The traffic: `n` requests from `users` synthetic users (device, location,
    history), ids r000000…, bodies capped at 2 KB. Same list for both runs."""
    population = synthetic.make_users(users, seed)
    rng = random.Random(seed + 1)
    reqs = []
    for i, (_, h) in enumerate(synthetic.traffic(population, n, rng)):
        if "content-length" in h:
            h["content-length"] = str(min(int(h["content-length"]), MAX_BODY))
        h["x-request-id"] = f"r{i:06d}"
        reqs.append(h)
    return reqs


# --------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------


class Apps:
    """The two app processes (planted.py), old and new stack, with truth files."""

    def __init__(self, work, world):
        self.ports = {"old": harness.free_port(), "new": harness.free_port()}
        self.truth = {name: work / f"truth_{name}.jsonl" for name in self.ports}
        self.procs = []
        try:
            for name, port in self.ports.items():
                self.procs.append(subprocess.Popen(
                    [*module_cmd("augur_tools.sim.planted"), "--name", name, "--port", str(port),
                     "--truth", str(self.truth[name]), "--world", world],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))
            for port in self.ports.values():
                harness.wait_until(lambda port=port: harness.port_open(port), 10, f"app on {port}")
        except BaseException:
            self.close()
            raise

    def close(self):
        for p in self.procs:
            harness.stop_process(p)


def send_all(port, reqs, threads, deadline, rate, on_progress=None):
    """Sends every request once (no retries) from `threads` keep-alive clients,
    request i not before i / rate seconds (an open-loop schedule, so both runs
    see the same traffic over the same time whatever their latencies).
    Returns (statuses by index, failures, timeline [(t, done)])."""
    statuses = [None] * len(reqs)
    failures = []
    lock = threading.Lock()
    state = {"next": 0, "done": 0}
    timeline = []

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            while time.monotonic() < deadline:
                with lock:
                    i = state["next"]
                    if i >= len(reqs):
                        return
                    state["next"] = i + 1
                wait = t0 + i / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                h = dict(reqs[i])
                method, path = h.pop(":method", "GET"), h.pop(":path", "/")
                n = int(h.pop("content-length", 0) or 0)
                body = b"x" * n if method in ("POST", "PUT", "PATCH") else None
                try:
                    conn.request(method, path, body=body, headers=h)
                    r = conn.getresponse()
                    r.read()
                    statuses[i] = r.status
                except (OSError, http.client.HTTPException) as e:
                    failures.append((i, type(e).__name__))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
                with lock:
                    state["done"] += 1
        finally:
            conn.close()

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    t0 = time.monotonic() + 0.05
    for t in ts:
        t.start()
    while any(t.is_alive() for t in ts) and time.monotonic() < deadline + 20:
        time.sleep(0.1)
        done = state["done"]
        timeline.append((time.monotonic() - t0, done))
        if on_progress:
            on_progress(done)
    for t in ts:
        t.join(timeout=1)
    return statuses, failures, timeline


ROLLBACK_LINE = re.compile(r"^\[([^\]]+)\].*augur: rollback: (.*)$")


def rollback_events(envoy_log_text):
    """(wall time, message) of the filter's rollback log lines."""
    out = []
    for line in envoy_log_text.splitlines():
        m = ROLLBACK_LINE.match(line)
        if m:
            try:
                t = time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%d %H:%M:%S")) + float("0" + m.group(1)[19:23])
            except ValueError:
                t = None
            out.append((t, m.group(2)))
    return out


def run(kind, plugin, reqs, args, work, world="demo", seconds=None):
    """One run: apps, Envoy (ECDS), traffic, optionally the mid-run retrain.
    At most `seconds` of traffic (default --run-timeout)."""
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("*"):
        if old.is_file():
            old.unlink()
    ecds_dir = work / "ecds"
    ecds_dir.mkdir(exist_ok=True)
    watched = ecds_dir / "augur.json"
    wasm = harness.WASM.resolve()
    access_log = work / "access.log"
    out = {"kind": kind, "work": work, "plugin": plugin, "retrain": []}
    apps = Apps(work, world)
    envoy = None
    retrain_threads = []
    try:
        port = harness.free_port()
        admin = harness.free_port()
        lst = envoyconf.ecds_listener(kind, port, watched, plugin, wasm, access_log)
        envoy = harness.Envoy(envoyconf.bootstrap(admin, [lst], apps.ports["old"], apps.ports["new"]),
                              workdir=work, concurrency=2)
        out["ready_s"] = envoy.ready_seconds
        pending = sorted(args.retrain_at) if kind == "loop" else []
        t_start = time.time()

        def retrain(version):
            cmd = [
                *module_cmd("augur_tools.loop.retrain"), "--log", str(access_log),
                "--ecds", str(watched), "--admin", f"127.0.0.1:{admin}", "--envoy-log", str(envoy.log_path),
                "--version", version, "--thresholds", PUSHED_THRESHOLDS, "--timeout", "20",
            ]
            entry = {"version": version, "started": time.time() - t_start}
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.retrain_timeout, cwd=str(ROOT),
                                   check=False)
                entry.update(rc=p.returncode, output=(p.stdout + p.stderr).strip())
            except subprocess.TimeoutExpired as e:
                entry.update(rc=None, output=f"retrain timed out after {args.retrain_timeout}s: {e}")
            entry["finished"] = time.time() - t_start
            out["retrain"].append(entry)

        def on_progress(done):
            while pending and done >= pending[0] * len(reqs):
                pending.pop(0)
                version = f"loop-retrained-{len(retrain_threads) + 1}"
                th = threading.Thread(target=retrain, args=(version,), daemon=True)
                th.start()
                retrain_threads.append(th)
                out.setdefault("retrain_at_requests", []).append(done)

        # Bounded twice: per run, and by what is left of the whole demo's budget.
        deadline = time.monotonic() + min(seconds or args.run_timeout,
                                          max(10.0, args.budget_end - time.monotonic() - 30))
        t0 = time.monotonic()
        statuses, failures, timeline = send_all(port, reqs, args.threads, deadline, args.rate, on_progress)
        out["seconds"] = time.monotonic() - t0
        out["statuses"], out["failures"], out["timeline"] = statuses, failures, timeline
        for th in retrain_threads:
            th.join(timeout=max(1.0, args.retrain_timeout))
        sent = sum(1 for s in statuses if s is not None) + len(failures)
        try:
            harness.wait_until(lambda: len(harness.read_records(access_log)) >= sent, 20, "access log flushed")
        except TimeoutError:
            pass
        out["envoy_log"] = envoy.log()
        out["counters"] = envoy.counters()
        out["t_start"] = t_start
    finally:
        if envoy:
            envoy.close()
        apps.close()
    out["records"] = harness.read_records(access_log)
    for r in out["records"]:
        r["t"] = record_time(r, out["t_start"]) if "t_start" in out and r.get("start") else None
    out["events"] = [(None if t is None else t - out.get("t_start", 0.0), m)
                     for t, m in rollback_events(out.get("envoy_log", ""))]
    out["truth"] = [json.loads(x) for x in apps.truth["new"].read_text().splitlines() if x.strip()]
    out["truth_old"] = sum(1 for x in apps.truth["old"].read_text().splitlines() if x.strip())
    return out


# --------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------


def exposure(truths):
    """Harmed requests, beneficial exposures and exposures per hidden pair."""
    harmed = benefit = 0
    pairs = collections.Counter()
    for t in truths:
        harmed += bool(t["harms"])
        benefit += len(t["benefits"])
        pairs.update(t["harms"] + t["benefits"])
    return {"harmed": harmed, "benefit": benefit, "pairs": pairs, "new_requests": len(truths)}


def static_baseline(plugin, reqs, sent, effects, work):
    """The static rollout's exposure on the requests the loop run sent, decided
    by the native library (`augur decide`, the filter's own code: same bucket,
    same stack) and judged by the app's own `planted.outcome` — what a live
    static run through Envoy counts, without spending minutes of traffic on it
    (`--static-live` runs it for real)."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "static.json"
    config.write_text(json.dumps(plugin))
    chosen = [reqs[i] for i in sent]
    truths = []
    for h, d in zip(chosen, harness.cli_decide(config, chosen)):
        if d["stack"] != "new":
            continue
        up = dict(h, **{"x-augur-features": ",".join(f for f, v in d["features"].items() if v["on"]),
                        "x-augur-decision": d["id"]})
        truths.append(planted.outcome(up, h.get(":path", "/"), "new", h.get(":method", "GET"), effects)[4])
    return dict(exposure(truths), ceiling=ceiling(truths, effects))


def ceiling(truths, effects, min_benefit=95.0):
    """The best (harm reduction, beneficial kept) any policy could reach on these
    static exposures, knowing the hidden world from the first request: every
    harm blocked exactly in its own segment, nothing explored — which keeps
    every benefit except where a harm and a benefit of one feature meet — then
    features left on in such overlaps, the requests that regain the most benefit
    first, until `min_benefit`% is kept (a share of the last group: a policy can
    split a group by user). Exposure counting makes this exact: leaving anything
    on in a request makes it harmed once, whatever else is on; nothing gains by
    turning off more, or on more than the static rollout. A real loop pays on top
    for detection delay and exploration.

    Returns {"all": (x, y) with every harm blocked, "best": (x, y, kept) the
    highest harm reduction with beneficial kept >= min_benefit and the overlaps
    left on with the share of each, "min_benefit"}; None without harms or
    benefits."""
    harm_of = {planted.pair(f, s): f for k, f, s, _, _ in effects if k == "harm"}
    benefit_of = {planted.pair(f, s): f for k, f, s, _, _ in effects if k == "benefit"}
    static_harmed = sum(1 for t in truths if t["harms"])
    static_benefit = sum(len(t["benefits"]) for t in truths)
    if not static_harmed or not static_benefit:
        return None
    groups = collections.Counter()  # (benefits regained per request, overlaps) -> requests
    for t in truths:
        harmed_features = {harm_of[h] for h in t["harms"]}
        lost = [b for b in t["benefits"] if benefit_of[b] in harmed_features]
        if lost:
            label = tuple(sorted({f"{h} & {b.split('@')[1]}" for h in t["harms"] for b in lost
                                  if harm_of[h] == benefit_of[b]}))
            groups[(len(lost), label)] += 1
    benefit = static_benefit - sum(g * n for (g, _), n in groups.items())
    every = (100.0, 100.0 * benefit / static_benefit)
    need = min_benefit / 100.0 * static_benefit - benefit
    harmed, kept = 0.0, []
    for (gain, label), n in sorted(groups.items(), key=lambda kv: -kv[0][0]):
        if need <= 1e-9:
            break
        take = min(n, need / gain)
        harmed, need = harmed + take, need - take * gain
        kept.append(f"{' + '.join(label)} ({100 * take / n:.0f}%)")
    best = None if need > 1e-9 else (100.0 * (1 - harmed / static_harmed), min_benefit if kept else every[1], kept)
    return {"all": every, "best": best, "min_benefit": min_benefit}


def tally(res):
    """Ground-truth counts of one run, from the app's own view of every request."""
    out = exposure(res["truth"])
    recs = {r["decision"]["id"]: r for r in res["records"] if isinstance(r.get("decision"), dict)}
    mismatch_features = mismatch_device = 0
    for t in res["truth"]:
        r = recs.get(t["id"])
        if r is None:
            continue
        on = [f for f, d in r["decision"]["features"].items() if d["on"]]
        if on != t["features"]:
            mismatch_features += 1
        if r["decision"]["device"] != t["device"]:
            mismatch_device += 1
    truth_ids = {t["id"] for t in res["truth"]}
    new_records = [r for r in recs.values() if r["decision"]["stack"] == "new"]
    # A request Envoy answered itself (no app response) or the client lost.
    lost = len(res["failures"]) + sum(1 for r in new_records if r["decision"]["id"] not in truth_ids)
    lost += sum(1 for r in recs.values() if r.get("flags") not in ("-", None))
    out.update({
        "records": len(recs),
        "mismatch_features": mismatch_features,
        "mismatch_device": mismatch_device,
        "lost": lost,
        "failures": len(res["failures"]),
    })
    return out


def reasons(res):
    c = collections.Counter()
    for r in res["records"]:
        d = r.get("decision")
        if isinstance(d, dict) and d["stack"] == "new":
            for f, v in d["features"].items():
                c[(f, v["reason"])] += 1
    return c


def progress_at(timeline, seconds):
    for t, done in timeline:
        if t >= seconds:
            return done
    return timeline[-1][1] if timeline else 0


def models_timeline(res):
    """First access-log position of each model version, and stale decisions after a push."""
    first = {}
    for i, r in enumerate(res["records"]):
        d = r.get("decision")
        if isinstance(d, dict):
            first.setdefault(d["model"], i)
    return first


def first_decision_ms(res, retrain_entry):
    """ms from the push (the job prints `pushed at <epoch>`) to the first access-log
    record decided with the pushed model (by its START_TIME)."""
    m = re.search(r"pushed at ([0-9.]+)", retrain_entry.get("output", ""))
    if not m:
        return None
    pushed = float(m.group(1))
    for r in res["records"]:
        d = r.get("decision")
        if isinstance(d, dict) and d["model"] == retrain_entry["version"]:
            return max(0.0, record_time(r, pushed) * 1000)
    return None


def record_time(r, since):
    """Seconds from `since` (Unix time) to a record's START_TIME."""
    start = datetime.datetime.fromisoformat(r["start"].replace("Z", "+00:00"))
    return start.timestamp() - since


def mechanics(res, reqs, effects):
    """How the loop acted, judged against the world's hidden truth: time to block
    each harm, over-blocking (blocked traffic that was not harmed), false blocks
    and reverts. A request's membership in a hidden segment comes from the
    request itself (planted.attributes), whatever augur decided."""
    by_rid = {h["x-request-id"]: h for h in reqs}
    harms = [(f, seg) for kind, f, seg, _, _ in effects if kind == "harm"]
    benefits = [(f, seg) for kind, f, seg, _, _ in effects if kind == "benefit"]
    first_block = {}
    exposed_after = collections.Counter()
    blocked = collections.Counter()  # feature -> blocked decisions
    blocked_harmed = collections.Counter()  # ... on requests in one of its harm segments
    blocked_benefit = collections.Counter()  # ... on requests in one of its benefit segments
    new = 0
    for r in res["records"]:
        d = r.get("decision")
        if not isinstance(d, dict) or d["stack"] != "new":
            continue
        h = by_rid.get(d.get("request_id"))
        if h is None:
            continue
        new += 1
        req = planted.attributes(h, h.get(":path", "/"), h.get(":method", "GET"))
        t = r["t"]
        for f, v in d["features"].items():
            if v["reason"] != "rolled_back":
                continue
            blocked[f] += 1
            if any(f == hf and planted.in_segment(seg, req) for hf, seg in harms):
                blocked_harmed[f] += 1
            if any(f == bf and planted.in_segment(seg, req) for bf, seg in benefits):
                blocked_benefit[f] += 1
        for f, seg in harms:
            if not planted.in_segment(seg, req):
                continue
            name = planted.pair(f, seg)
            v = d["features"].get(f, {})
            if v.get("reason") == "rolled_back":
                first_block.setdefault(name, t)
            elif v.get("on") and name in first_block:
                exposed_after[name] += 1
    events = res["events"]
    harmful = {f for f, _ in harms}
    false_blocks = [m for _, m in events if ("rolled back" in m and m.split()[1] not in harmful)]
    # A block of a harmful feature that holds no harmed traffic is a false block too.
    false_blocks += [f"{f}: {n} blocked decisions, none harmed" for f, n in blocked.items()
                     if f in harmful and n >= 20 and blocked_harmed[f] == 0]
    total_blocked = sum(blocked.values())
    return {
        "time_to_block": {planted.pair(f, seg): first_block.get(planted.pair(f, seg)) for f, seg in harms},
        "exposed_after_block": exposed_after,
        "blocked_share": {f: n / max(new, 1) for f, n in blocked.items()},
        "overblocking": {f: 1 - blocked_harmed[f] / n for f, n in blocked.items() if n},
        "overblocking_all": (1 - sum(blocked_harmed.values()) / total_blocked) if total_blocked else 0.0,
        "blocked_benefit": blocked_benefit,
        "false_blocks": false_blocks,
        "reverts": [m for _, m in events if "regressed" in m],
        "srm": [m for _, m in events if "sample ratio mismatch" in m],
    }


def exploration_by_quarter(res):
    """Share of new-stack requests with a feature explored off, per quarter of the run."""
    new = [r["decision"] for r in res["records"]
           if isinstance(r.get("decision"), dict) and r["decision"]["stack"] == "new"]
    if not new:
        return []
    quarter = max(1, len(new) // 4)
    return [sum(any(v["reason"] == "exploring" for v in d["features"].values()) for d in new[q:q + quarter])
            / len(new[q:q + quarter]) for q in range(0, quarter * 4, quarter) if new[q:q + quarter]]


def one_world(world, seed, args, work, seconds):
    """The static baseline and the loop run for one (world, seed)."""
    effects = planted.effects(world)
    reqs = build_requests(args.requests, seed, args.users)
    print(f"\n#### world {world}, seed {seed}: {len(reqs)} requests from {args.users} synthetic users, "
          f"{args.percentage:g}% of users on the new stack, {args.threads} keep-alive clients, at most {seconds:.0f}s",
          flush=True)
    salt = f"{args.salt}-{seed}"
    loop = run("loop", loop_plugin(args.percentage, salt), reqs, args, work / f"{world}-{seed}" / "loop",
               world, seconds)
    loop["tally"] = tally(loop)
    by_rid = {h["x-request-id"]: i for i, h in enumerate(reqs)}
    sent = sorted(by_rid[r["decision"]["request_id"]] for r in loop["records"]
                  if isinstance(r.get("decision"), dict) and r["decision"].get("request_id") in by_rid)
    static_plugin_ = static_plugin(args.percentage, salt)
    if args.static_live:
        st = run("static", static_plugin_, [reqs[i] for i in sent], args, work / f"{world}-{seed}" / "static",
                 world, seconds)
        static = dict(tally(st), ceiling=ceiling(st["truth"], effects))
    else:
        static = static_baseline(static_plugin_, reqs, sent, effects, work / f"{world}-{seed}")
    describe(loop)
    return judge(world, seed, loop, static, reqs, effects, len(sent))


def judge(world, seed, loop, static, reqs, effects, sent):
    """Prints one run's per-pair table, blocks and `run …` line against the
    static baseline; returns its summary (for `final`). Shared with loop_sim.py."""
    mech = mechanics(loop, reqs, effects)
    s, l = static, loop["tally"]
    x = 100.0 * (1 - l["harmed"] / s["harmed"]) if s["harmed"] else float("nan")
    y = 100.0 * l["benefit"] / s["benefit"] if s["benefit"] else float("nan")
    print("  per hidden pair: exposures static -> loop, time to block, exposures after it")
    for kind, f, seg, _, _ in effects:
        name = planted.pair(f, seg)
        a, b = s["pairs"][name], l["pairs"][name]
        share = f"{100 * b / a:5.1f}%" if a else "   -"
        ttb = mech["time_to_block"].get(name)
        extra = "" if kind != "harm" else (
            f"   blocked {ttb:5.1f}s after onset, {mech['exposed_after_block'][name]} exposed after"
            if ttb is not None else "   never blocked")
        print(f"    {kind:<8}{name:<34}{a:>6} -> {b:>6} ({share}){extra}")
    print("  blocks: share of new-stack decisions blocked vs share of those that were harmed (over-blocking)")
    for f, share in sorted(mech["blocked_share"].items()):
        print(f"    {f:<16} blocked {100 * share:5.1f}% of new-stack requests, over-blocked "
              f"{100 * mech['overblocking'][f]:5.1f}%, of which in a benefit segment {mech['blocked_benefit'][f]}")
    for m in mech["false_blocks"] + mech["reverts"] + mech["srm"]:
        print(f"    false action: {m}")
    c = static.get("ceiling")
    if c:
        print(f"  ceiling on this traffic: {describe_ceiling(c)}")
    expl = exploration_by_quarter(loop)
    summary = {
        "world": world, "seed": seed, "x": x, "y": y, "mech": mech, "exploration": expl, "ceiling": c,
        "lost": l["lost"], "sent": sent, "requests": len(reqs),
        "pushes": [r.get("first_decision_ms") for r in loop["retrain"]],
    }
    ttb = ", ".join(f"{n} {t:.1f}s" if t is not None else f"{n} never" for n, t in mech["time_to_block"].items())
    print(f"run {world} seed {seed}: harm reduction {x:.1f}% (beneficial kept {y:.1f}%); "
          f"over-blocking {100 * mech['overblocking_all']:.1f}%; false blocks {len(mech['false_blocks'])}, "
          f"false reverts {len(mech['reverts'])}, SRM halts {len(mech['srm'])}; lost {l['lost']}; "
          f"sent {sent}/{len(reqs)}; exploration by quarter "
          + "/".join(f"{100 * e:.0f}%" for e in expl) + f"; time to block: {ttb}", flush=True)
    return summary


def describe_ceiling(c):
    """One line for `ceiling`'s result."""
    x, y = c["all"]
    text = (f"every harm blocked exactly from the first request keeps {y:.1f}% of the benefit (harm reduction "
            f"{x:.1f}%); ")
    if c["best"] is None:
        return text + f"no exact policy keeps {c['min_benefit']:.0f}% of it"
    bx, by, kept = c["best"]
    return text + (f"the most harm reduction that keeps {c['min_benefit']:.0f}% of it is {bx:.1f}% (beneficial kept "
                   f"{by:.1f}%" + (f", leaving on {'; '.join(kept)}" if kept else "") + ")")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worlds", nargs="+", default=list(planted.WORLDS), choices=list(planted.WORLDS),
                    help="planted worlds to run (python/augur_tools/sim/planted.py)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 11, 13], help="one run per world and seed")
    ap.add_argument("--requests", type=int, default=22000, help="requests per run")
    ap.add_argument("--users", type=int, default=4000)
    ap.add_argument("--percentage", type=float, default=50, help="new-stack deployment percentage")
    ap.add_argument("--salt", default="loop-demo", help="bucketing salt (the seed is appended)")
    ap.add_argument("--threads", type=int, default=32, help="concurrent keep-alive clients")
    ap.add_argument("--rate", type=float, default=200, help="requests per second (open-loop schedule)")
    ap.add_argument("--retrain-at", type=float, nargs="*", default=[0.4],
                    help="fractions of the traffic after which the retraining job runs (loop run)")
    ap.add_argument("--run-timeout", type=float, default=200, help="seconds of traffic per run, at most")
    ap.add_argument("--retrain-timeout", type=float, default=90)
    ap.add_argument("--time-limit", type=float, default=870, help="seconds for the whole demo, at most")
    ap.add_argument("--static-live", action="store_true",
                    help="run the static baseline through Envoy too (default: the native library decides it)")
    ap.add_argument("--workdir", default=str(ROOT / ".run" / "loop"))
    args = ap.parse_args(argv)
    for path in (harness.ENVOY, harness.WASM, harness.AUGUR_CLI):
        if not Path(path).exists():
            print(f"loop-demo: missing {path} (make wasm cli venv)", file=sys.stderr)
            return 2
    started = time.monotonic()
    args.budget_end = started + args.time_limit
    work = Path(args.workdir)
    plan = [(w, seed) for w in args.worlds for seed in args.seeds]
    print(f"loop demo: {len(plan)} runs ({', '.join(args.worlds)} x seeds {' '.join(map(str, args.seeds))}), "
          f"the shipped rollback defaults, at most {args.time_limit:.0f}s")
    for w in args.worlds:
        print(f"hidden effects of world {w} (augur is never told):")
        for kind, f, seg, effect, prob in planted.effects(w):
            print(f"  {kind:<8}{f + ' @ ' + seg:<36}{effect} with p {prob}")
    runs = []
    for n, (world, seed) in enumerate(plan):
        left = args.budget_end - time.monotonic()
        per_run = (left - 20 * (len(plan) - n)) / (len(plan) - n)
        if per_run < 20:
            print(f"loop-demo: time limit reached before {world} seed {seed}", flush=True)
            break
        runs.append(one_world(world, seed, args, work, min(args.run_timeout, per_run)))
    final(runs, time.monotonic() - started, len(plan))
    return 0


def describe(res):
    t = res["tally"]
    kind = res["kind"]
    print(f"\n== {kind} run: {len(res['statuses'])} requests in {res['seconds']:.1f}s "
          f"({len(res['statuses']) / max(res['seconds'], 1e-9):.0f}/s), Envoy ready in {res['ready_s']:.1f}s")
    print(f"  new-stack requests {t['new_requests']}, old-stack {res['truth_old']}; harmed requests {t['harmed']}, "
          f"beneficial exposures {t['benefit']}")
    print(f"  requests lost (client errors, Envoy-generated responses, no app response): {t['lost']}; "
          f"record/app disagreements: features {t['mismatch_features']}, device {t['mismatch_device']}")
    if kind != "loop":
        return
    c = reasons(res)
    print("  new-stack decisions by reason:")
    for f in FEATURES:
        print(f"    {f:<16}" + ", ".join(f"{r} {n}" for (ff, r), n in sorted(c.items(), key=lambda kv: -kv[1]) if ff == f))
    shares = exploration_by_quarter(res)
    print("  exploration: share of new-stack requests with a feature explored off, by quarter of the run: "
          + ", ".join(f"{100 * x:.1f}%" for x in shares))
    events = res["events"]
    shown = [e for e in events if "rolled back" in e[1] or "regressed" in e[1]]
    suspects = sum(1 for e in events if "suspect" in e[1])
    print(f"  rollback: {len(shown)} blocks/kills, {suspects} cells became suspect (exploration)")
    for t, msg in shown[:12]:
        at = "" if t is None else f"at {t:5.1f}s (~{progress_at(res['timeline'], t)} requests): "
        print(f"    {at}{msg}")
    for r in res["retrain"]:
        print(f"  retrain job {r['version']} started at {r['started']:.1f}s, finished at {r['finished']:.1f}s, exit {r['rc']}:")
        for line in r["output"].splitlines():
            print(f"    {line}")
    first = models_timeline(res)
    print("  model versions in the access log (first record index): "
          + ", ".join(f"{m} @{i}" for m, i in sorted(first.items(), key=lambda kv: kv[1])))
    for r in res["retrain"]:
        lag = first_decision_ms(res, r)
        if lag is not None:
            r["first_decision_ms"] = lag
            print(f"  {r['version']}: first request decided with it {lag:.0f} ms after the ECDS file was replaced")
    rep = report.report([r for r in res["records"] if isinstance(r.get("decision"), dict)], res["plugin"])
    print("  A/B (python/augur_tools/loop/report.py) on the loop run's randomised records, effect on -> off:")
    for f, entry in rep["features"].items():
        o = entry["overall"]
        parts = []
        for k in report.KPIS:
            e = o[k]
            if e["effect"] is None:
                continue
            v = f"{e['effect']:+.1f}ms" if k == "latency_ms" else f"{100 * e['effect']:+.1f}pp"
            parts.append(f"{k} {v} (p {report._fmt_p(e['p'])})")
        n = o["error"]
        print(f"    {f:<16} n_on {n['n_treatment']:>5} n_ctl {n['n_control']:>5}  " + "; ".join(parts))


def final(runs, elapsed, planned, prefix=""):
    print("\n== summary (shipped defaults)")
    for w in dict.fromkeys(r["world"] for r in runs):
        rs = [r for r in runs if r["world"] == w]
        xs, ys = [r["x"] for r in rs], [r["y"] for r in rs]
        ob = [100 * r["mech"]["overblocking_all"] for r in rs]
        print(f"  world {w}: harm reduction {min(xs):.1f}-{max(xs):.1f}% (mean {sum(xs) / len(xs):.1f}), "
              f"beneficial kept {min(ys):.1f}-{max(ys):.1f}% (mean {sum(ys) / len(ys):.1f}), over-blocking "
              f"{min(ob):.1f}-{max(ob):.1f}% over seeds " + " ".join(str(r["seed"]) for r in rs))
        ttb = collections.defaultdict(list)
        for r in rs:
            for name, t in r["mech"]["time_to_block"].items():
                ttb[name].append("never" if t is None else f"{t:.1f}s")
        for name, ts in ttb.items():
            print(f"    time to block {name:<34} " + ", ".join(ts))
        ceilings = [r["ceiling"] for r in rs if r.get("ceiling")]
        if ceilings:
            best = [c["best"][0] for c in ceilings if c["best"]]
            ally = [c["all"][1] for c in ceilings]
            print(f"    ceiling (the hidden world known from the first request): every harm blocked exactly keeps "
                  f"{min(ally):.1f}-{max(ally):.1f}% of the benefit; the most harm reduction keeping "
                  f"{ceilings[0]['min_benefit']:.0f}% is "
                  + (f"{min(best):.1f}-{max(best):.1f}%" if best else "none")
                  + (f" ({len(ceilings) - len(best)} runs: none)" if best and len(best) < len(ceilings) else ""))
    false_blocks = sum(len(r["mech"]["false_blocks"]) for r in runs)
    reverts = sum(len(r["mech"]["reverts"]) for r in runs)
    short = [f"{r['world']}/{r['seed']} {r['sent']}/{r['requests']}" for r in runs if r["sent"] < r["requests"]]
    print(f"runs: {len(runs)}/{planned} in {elapsed:.0f}s; false blocks {false_blocks}, false reverts {reverts}; "
          f"requests lost {sum(r['lost'] for r in runs)}"
          + (f"; cut short by the time limit (compared on the requests sent): {', '.join(short)}" if short else ""))
    if not runs:
        print(f"{prefix}harm reduction: nan% (beneficial kept: nan%)")
        return
    x = min(r["x"] for r in runs)
    y = min(r["y"] for r in runs)
    print(f"{prefix}harm reduction: {x:.1f}% (beneficial kept: {y:.1f}%)")


if __name__ == "__main__":
    sys.exit(main())
