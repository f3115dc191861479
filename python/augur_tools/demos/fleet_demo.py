"""`make fleet-demo`: one rollout ramped across three Envoys by the controller.

Three Envoys 1.40 (`--concurrency 2`) serve augur through their own watched
ECDS files; a real Prometheus scrapes them every second; the controller
(python/augur_tools/loop/controller.py, shipped defaults: ramp 1→5→10→25→50→100% with 30 s and
200 new-stack requests per step) ramps `deploy/fleet/rollout.json`. Traffic
(~150 req/s from 600 users) spreads every user's requests over the three
proxies. When the ramp reaches 25%, a regression appears in the new release:
new_checkout fails 60% of tablet requests (the upstream's `x-demo-harm` knob).
After every action, 40 users are each sent to all three proxies and must get
the same stack, model and configured features from each.

Bounded (--time-limit, default 540 s); a progress line every 10 s; every
process is stopped on exit. The last lines:

    fleet: regression blocked on 3/3 proxies T s after onset
    fleet: users consistent across proxies: N/N
    fleet: ramp reached P% in S s
    fleet: actions audited: K
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

from augur_tools.demos import fleet as fleetmod
from augur_tools.envoy import harness
from augur_tools.loop import controller

ONSET_AT = 25
HARM = "new_checkout:0.6"


def measure_queries(f):
    """Series counts and the controller's query times (median of 5)."""
    rollout = f.rollout["name"]
    counts = {}
    for what, expr in [
        ("augur series (all proxies)", 'count({__name__=~"augur_.*"})'),
        ("augur series per proxy", 'count({__name__=~"augur_.*"}) / count(up{job="augur"})'),
        ("augur series per proxy without a feature label", 'count({__name__=~"augur_.*", feature=""}) / count(up{job="augur"})'),
        ("augur_segment_outcomes_total", "count(augur_segment_outcomes_total)"),
        ("augur_feature_outcomes_total", "count(augur_feature_outcomes_total)"),
        ("series the controller reads", " + ".join(f"count({sel})" for _, sel in controller.selectors(rollout).values())),
    ]:
        r = f.prom.query(expr)
        counts[what] = int(float(r[0]["value"][1])) if r else 0
    timings = {}
    for family, expr in controller.queries(rollout).items():
        ts = []
        for _ in range(5):
            t0 = time.monotonic()
            f.prom.query(expr)
            ts.append((time.monotonic() - t0) * 1000)
        timings[family] = statistics.median(ts)
    return counts, timings


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(harness.ROOT / ".run" / "fleet"))
    ap.add_argument("--time-limit", type=float, default=540)
    ap.add_argument("--rate", type=float, default=150)
    args = ap.parse_args(argv)
    started = time.monotonic()
    work = Path(args.workdir)
    if work.exists():
        import shutil

        shutil.rmtree(work)

    def say(msg):
        print(f"fleet-demo: {msg}", flush=True)

    f = fleetmod.Fleet(work, progress=say)
    traffic = None
    try:
        f.start_controller()
        harness.wait_until(lambda: f.audit(), 30, "the controller's first push")
        t_start = f.audit()[0]["ts"]
        traffic = fleetmod.Traffic(f, rate=args.rate)
        traffic.start()
        onset = blocked = None
        checked, consistent, total, last_progress = 0, 0, 0, 0.0
        bad_examples = []
        reached, reached_at = 0, None
        while time.monotonic() - started < args.time_limit:
            audit = f.audit()
            pct = f.rollout["rollout"]["percentage"]
            for a in audit:
                if a["kind"] == "ramp":
                    pct = a["to"]
                    reached, reached_at = a["to"], a["ts"] - t_start
            if onset is None and pct >= ONSET_AT:
                traffic.harm = HARM
                onset = time.time()
                say(f"ramp at {pct}%: the new release's regression starts ({HARM} on tablets)")
            block = next((a for a in audit if a["kind"] == "block" and a["feature"] == "new_checkout"), None)
            if block and blocked is None and onset is not None:
                blocked = block
                say(f"blocked: {block['why']} on {len(block['proxies_applied'])}/3 proxies")
            while checked < len(audit):
                ok, n, bad = fleetmod.consistency(f, [f"u7-{i}" for i in range(checked * 40, checked * 40 + 40)])
                consistent, total = consistent + ok, total + n
                bad_examples += bad
                checked += 1
            if any(a["kind"] == "revert" for a in audit):
                say("the controller reverted the rollout")
                break
            if reached == 100 and blocked:
                break
            if time.monotonic() - last_progress >= 10:
                last_progress = time.monotonic()
                say(f"t={time.monotonic() - started:.0f}s ramp {pct}% sent {traffic.sent} failed {traffic.failed} "
                    f"actions {[a['kind'] + (':' + str(a.get('to') or a.get('segment') or '')) for a in audit]}")
            time.sleep(1)
        counts, timings = measure_queries(f)
        traffic.stop()
        for what, n in counts.items():
            print(f"fleet: series: {what}: {n}")
        print("fleet: controller queries (median of 5): " + ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items()))
        holds = harness.prom_sum(f.controller_metrics(), "augur_controller_holds_total") or 0
        print(f"fleet: requests sent {traffic.sent}, failed {traffic.failed}; controller holds {holds:.0f}")
        for b in bad_examples[:2]:
            print(f"fleet: inconsistent: {b}")
        audit = f.audit()
        t = f"{blocked['ts'] - onset:.1f}" if blocked and onset else "-"
        n_applied = len(blocked["proxies_applied"]) if blocked else 0
        print(f"fleet: regression blocked on {n_applied}/3 proxies {t} s after onset")
        print(f"fleet: users consistent across proxies: {consistent}/{total}")
        print(f"fleet: ramp reached {reached}% in {reached_at or 0:.0f} s")
        print(f"fleet: actions audited: {len(audit)}")
        return 0 if blocked and consistent == total and total else 1
    finally:
        if traffic and traffic.is_alive():
            traffic.stop()
        f.close()


if __name__ == "__main__":
    sys.exit(main())
