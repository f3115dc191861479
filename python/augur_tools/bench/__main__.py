"""`python -m augur_tools.bench` (make bench-e2e): the end-to-end benchmark;
see augur_tools.bench for what it measures and how.

    .venv/bin/python -m augur_tools.bench [--quick] [--breakdown] [--layout split|shared|none]
"""

import argparse
import json
import shutil
import signal
import sys
import time
from pathlib import Path

from augur_tools import cli
from augur_tools.bench.measure import (
    HARD_LIMIT_S,
    BenchError,
    EnvoyProc,
    Oha,
    Wrk,
    check_tools,
    cpu_layout,
    machine_cpu_seconds,
    measure_all,
    model_push,
    ready_unpinned,
    tool_version,
)
from augur_tools.bench.report import report
from augur_tools.bench.workload import (
    CONFIGS,
    TINY_MODEL,
    copy_floors,
    fixed_request_headers,
    host_calls_plugin,
    pick_new_stack_user,
    saturation_requests,
    tiny_model_plugin,
    wrk_script,
)
from augur_tools.envoy import envoyconf
from augur_tools.envoy.harness import ENVOY, ROOT, WASM, free_port
from augur_tools.paths import DEMO_PLUGIN

# ---- main ----------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m augur_tools.bench", description="augur end-to-end benchmark (make bench-e2e)")
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
    copy_floors(work)
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
        "host_calls_new_share": json.loads(host_calls_plugin(plugin_text, saturation_requests()))["new_share"],
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
    cli.run(main, [(BenchError, "bench-e2e: ", 1)])
