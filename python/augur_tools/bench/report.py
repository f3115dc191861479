"""The end-to-end benchmark's report: the tables, the targets (goals, printed,
never asserted) and what the run measured them against.
"""

import os
import time

from augur_tools.bench.workload import CONFIGS, FIXED_PATH
from augur_tools.envoy.harness import ROOT
from augur_tools.paths import DEMO_PLUGIN

TARGETS = {"added_p50_us": 25, "added_p99_us": 100, "rps_ratio": 0.85, "wasm_mb": 4, "ready_s": 3, "push_ms": 1000,
           "over_empty_us": 10}


# ---- report ------------------------------------------------------------------------------


def fmt(v, nd=0, width=8):
    if v is None:
        return "-".rjust(width)
    return f"{v:{width}.{nd}f}"


def verdict(ok):
    return "ok" if ok else "MISSED"


def report(results, push, ready_all, ctx, args, started):
    P, W, S, E, H, A = (results[k] for k in CONFIGS)
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
    uh = H["saturation"]["envoy_us_per_req"]
    print(f"the V8 floor: an empty proxy-wasm filter costs {ue - up_:.1f} us of Envoy CPU per request over "
          f"passthrough; Envoy's sticky split (use_hash_policy) {us_ - up_:.1f} us")
    print(f"the I/O floor: a filter making only augur's host calls (examples/host_calls_filter.rs: both header "
          f"maps read, augur's headers and record written, {100 * ctx['host_calls_new_share']:.0f}% of requests "
          f"with the new-stack writes as augur) costs {uh - ue:.1f} us over the empty filter; augur's own work "
          f"in the VM and what it adds to the calls: {ua - uh:.1f} us")
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
    print(f"host calls over empty filter us: {uh - ue:.1f}")
    print(f"augur over host calls us: {ua - uh:.1f}")
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


