"""`make demo`: Envoy 1.40 + augur + two demo stacks on loopback, synthetic
traffic, and a readable summary of what augur decided. Stops everything it
started, also on Ctrl-C or failure.

Ports: Envoy 10000 (admin 9901), old stack 18081, new stack 18082.
"""

import collections
import json
import time

from augur_tools.envoy import harness
from augur_tools.envoy.harness import ROOT, Client, Envoy, Upstreams
from augur_tools.sim import synthetic

USERS = 150
REQUESTS = 450
SEED = 2026
RUN = ROOT / ".run"
LOG = RUN / "decisions.log"


def bar(share, width=20):
    n = round(share * width)
    return "#" * n + "." * (width - n)


def main():
    RUN.mkdir(exist_ok=True)
    LOG.unlink(missing_ok=True)
    plugin = json.loads((ROOT / "envoy" / "augur-demo.json").read_text())
    print("augur demo: Envoy 1.40 (V8) + augur filter in front of an old and a new stack, on 127.0.0.1\n")
    ups = Upstreams(old_port=18081, new_port=18082)
    envoy = None
    try:
        envoy = Envoy(config_path=ROOT / "envoy" / "envoy.yaml", admin_port=9901, workdir=RUN)
        size = harness.WASM.stat().st_size
        print(
            f"module {harness.WASM.relative_to(ROOT)}: {size / 1048576:.2f} MB; "
            f"Envoy ready with the filter in {envoy.ready_seconds:.1f} s  (config envoy/envoy.yaml, log .run/envoy.log)"
        )

        users = synthetic.make_users(USERS, SEED)
        reqs = harness.synthetic_requests(REQUESTS, SEED, "demo", users)
        # A few clients try to pick their own stack and features.
        for i in range(10):
            h = dict(reqs[i], **{"x-augur-stack": "new", "x-augur-features": "everything"})
            h["x-request-id"] = f"demo-spoof-{i}"
            reqs.append(h)

        client = Client(10000)
        started = time.monotonic()
        served = collections.Counter()
        try:
            for h in reqs:
                status, rh, _ = client.request(h)
                served[(status, rh.get("x-served-by"))] += 1
        finally:
            client.close()
        elapsed = time.monotonic() - started
        print(f"sent {len(reqs)} requests from {USERS} synthetic users in {elapsed:.1f} s: {dict(served)}\n")

        recs = harness.wait_for_records(LOG, len(reqs))
        decisions = [r["decision"] for r in recs]
        report(plugin, decisions, users)

        # Stats as Prometheus sees them: augur hands its counters to Envoy every
        # stats.flush_ms (1 s); histograms appear after Envoy's own 5 s flush.
        harness.wait_until(
            lambda: (harness.prom_sum(envoy.prometheus(), "augur_requests_total") or 0) >= len(reqs), 10, "augur counters"
        )
        prom = envoy.prometheus()
        print("\n/stats/prometheus (excerpt):")
        for line in prom.splitlines():
            wanted = line.startswith(("augur_requests_total", "augur_spoofed_requests_total", "augur_model_errors_total")) or (
                line.startswith("augur_feature_decisions_total") and 'feature="hd_images"' in line
            )
            if wanted and not line.endswith(" 0"):
                print("  " + line)
        print("\nfull decision log: .run/decisions.log   (one JSON line per request)")
    finally:
        if envoy:
            envoy.close()
        ups.close()
        print("stopped Envoy and both upstreams")


def report(plugin, decisions, users):
    pct = plugin["rollout"]["percentage"]
    by_stack = collections.Counter(d["stack"] for d in decisions)
    user_stacks = collections.defaultdict(set)
    for d in decisions:
        user_stacks[d["bucket"]].add(d["stack"])
    sticky = sum(1 for s in user_stacks.values() if len(s) == 1)
    n = len(decisions)
    print(f"Routing (deployment {pct}% to the new stack, sticky per user):")
    for stack in ("old", "new"):
        print(f"  {stack:4} {by_stack[stack]:4} requests  {100 * by_stack[stack] / n:5.1f}%")
    print(f"  users seen on exactly one stack: {sticky}/{len(user_stacks)}")
    by_seg = {s["segment"]: s["percentage"] for s in plugin["rollout"].get("by_segment", [])}
    for seg, seg_pct in by_seg.items():
        members = [d for d in decisions if seg in d["segments"]]
        if members:
            share = 100 * sum(d["stack"] == "new" for d in members) / len(members)
            print(f"  segment {seg} (predicted by the model, rollout {seg_pct}%): {len(members)} requests, {share:.0f}% new")

    new = [d for d in decisions if d["stack"] == "new"]
    features = [f["name"] for f in plugin["features"]]
    groups = ["all", "mobile", "desktop", "bot", "beta", "power_users"]

    def in_group(d, g):
        return g == "all" or d["device"] == g or g in d["segments"] or (g == "mobile" and d["device"] == "tablet")

    print(f"\nFeature on-rate on the new stack ({len(new)} requests), by group:")
    print("  " + "feature".ljust(16) + "".join(g.rjust(12) for g in groups))
    for f in features:
        row = []
        for g in groups:
            members = [d for d in new if in_group(d, g)]
            row.append(f"{100 * sum(d['features'][f]['on'] for d in members) / len(members):11.0f}%" if members else "-".rjust(12))
        print("  " + f.ljust(16) + "".join(row))

    print("\nWhy features were off on the new stack:")
    for f in features:
        reasons = collections.Counter(d["features"][f]["reason"] for d in new if not d["features"][f]["on"])
        if reasons:
            print(f"  {f:16} " + ", ".join(f"{r} {c}" for r, c in reasons.most_common(3)))

    print("\nMean score per feature (0-100) on all requests:")
    for f in features:
        scores = [d["features"][f]["score"] for d in decisions if "score" in d["features"][f]]
        if scores:
            mean = sum(scores) / len(scores)
            print(f"  {f:16} {mean:5.1f} {bar(mean / 100)}")

    spoofed = [d for d in decisions if (d.get("request_id") or "").startswith("demo-spoof")]
    print(f"\nSpoofed requests: {len(spoofed)} sent x-augur-stack: new; routed to new: "
          f"{sum(d['stack'] == 'new' for d in spoofed)} (their own bucket decides)")

    print("\nA few decision records:")
    for d in new[:2]:
        print("  " + json.dumps({k: v for k, v in d.items() if k != "x"}))
    old = next((d for d in decisions if d["stack"] == "old"), None)
    if old:
        print("  " + json.dumps({k: v for k, v in old.items() if k != "x"}))


if __name__ == "__main__":
    main()
