"""`python -m augur_tools.bench.ab`: Envoy CPU per request of a few variants of
the filter, side by side — the tool for cutting augur's cost (`make bench-e2e`
measures the product; this compares candidate changes to it).

Each variant is its own Envoy (pinned, `--concurrency 1`, the bench-e2e
listener and access log), all started first and kept running; then rounds of
wrk saturation runs, the order rotating every round, so drift and outside load
hit every variant alike. Prints per variant the median Envoy CPU µs per
request and the median of its per-round differences to the first variant.

    .venv/bin/python -m augur_tools.bench.ab empty_filter augur \\
        augur:wasm=/tmp/candidate.wasm augur:log=plain

A variant is `kind[:key=value]...`: `kind` is a bench-e2e configuration
(passthrough, sticky_split, empty_filter, host_calls, augur); `wasm=` another
module for augur; `plugin=` another plugin configuration (a JSON file) for augur
(for host_calls: the augur configuration whose writes it repeats);
`log=plain` the access log without augur's fields (Envoy's own fields
only); `name=` a label.
"""

import argparse
import shutil
from pathlib import Path

from augur_tools import cli
from augur_tools.bench.measure import (
    BenchError,
    CpuWindow,
    EnvoyProc,
    Wrk,
    check_tools,
    cpu_layout,
    median,
)
from augur_tools.bench.workload import (
    copy_floors,
    fixed_request_headers,
    under_test_config,
    wrk_script,
)
from augur_tools.envoy import envoyconf
from augur_tools.envoy.harness import ROOT, WASM, free_port
from augur_tools.paths import DEMO_PLUGIN

PLAIN_LOG = '{"status":%RESPONSE_CODE%,"duration_ms":%DURATION%,"cluster":"%UPSTREAM_CLUSTER%","start":"%START_TIME%"}\n'


def parse_variant(text):
    kind, *opts = text.split(":")
    v = {"kind": kind, "name": text, "wasm": None, "log": None, "plugin": None}
    for o in opts:
        k, sep, val = o.partition("=")
        if not sep or k not in ("wasm", "log", "name", "plugin"):
            raise BenchError(f"variant {text!r}: options are wasm=PATH, plugin=PATH, log=plain, name=LABEL (got {o!r})")
        v[k] = val
    if v["log"] not in (None, "plain"):
        raise BenchError(f"variant {text!r}: log= takes only `plain`")
    return v


def start(v, i, work, cpus, upstream_port, plugin_text, headers, wrapper=(), ready_timeout=90):
    """Variant `v` as Envoy `v{i}` in `work`, ready to serve (`wrapper`: a command it runs under).
    A host_calls variant repeats what augur with `plugin_text` writes on the saturation requests."""
    port, admin_port = free_port(), free_port()
    wasm = work / f"v{i}.wasm"
    shutil.copyfile(v["wasm"] or WASM, wasm)
    if v.get("plugin"):  # this variant's own plugin configuration (JSON file)
        plugin_text = Path(v["plugin"]).read_text()
    cfg = under_test_config(v["kind"], port, admin_port, upstream_port, work / f"v{i}.access.log", plugin_text, wasm)
    if v["log"] == "plain":
        for lst in cfg["static_resources"]["listeners"]:
            for f in lst["filter_chains"][0]["filters"]:
                for log in f["typed_config"].get("access_log", []):
                    log["typed_config"]["log_format"] = {"text_format_source": {"inline_string": PLAIN_LOG}}
    env = EnvoyProc(f"v{i}", cfg, work, cpus, port, headers, ready_timeout=ready_timeout, wrapper=wrapper)
    env.port = port
    return env


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m augur_tools.bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+", help="kind[:wasm=PATH][:plugin=PATH][:log=plain][:name=LABEL]")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=int, default=5, help="per variant per round")
    p.add_argument("--conns", type=int, default=32)
    a = p.parse_args(argv)
    variants = [parse_variant(t) for t in a.variants]
    envoy_cpus, gen_cpus = cpu_layout("split")
    tools = check_tools(need_taskset=envoy_cpus is not None, names=("wrk",))
    work = ROOT / ".run" / "bench-ab"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    copy_floors(work)
    script = work / "requests.lua"
    wrk_script(script)
    wrk = Wrk(tools["wrk"], gen_cpus, script)
    headers = fixed_request_headers("bench-user-000")
    up_port, up_admin = free_port(), free_port()
    upstream = EnvoyProc("upstream", envoyconf.direct_response_bootstrap(up_admin, up_port, body="ok"), work,
                         gen_cpus, up_port)
    envoys, us, rps = [], [[] for _ in variants], [[] for _ in variants]
    try:
        for i, v in enumerate(variants):
            envoys.append(start(v, i, work, envoy_cpus, up_port, DEMO_PLUGIN.read_text(), headers))
            wrk.run(envoys[-1].port, 2, a.conns)  # warm-up
        for r in range(a.rounds):
            order = list(range(len(variants)))
            order = order[r % len(order):] + order[:r % len(order)]
            for i in order:
                win = CpuWindow({"envoy": envoys[i].pid})
                res = wrk.run(envoys[i].port, a.seconds, a.conns)
                cpu = win.stop(res["cpu_s"])
                if res["errors"]:
                    raise BenchError(f"{variants[i]['name']}: {res['errors']} errors")
                us[i].append(cpu["envoy"] / 100 * 1e6 / res["rps"])
                rps[i].append(res["rps"])
            print(f"ab: round {r + 1}/{a.rounds}: " + "  ".join(f"{us[i][-1]:.1f}" for i in range(len(variants))),
                  flush=True)
    finally:
        for e in envoys:
            e.close()
        upstream.close()
    # Paired: each round's difference to the first variant (the machine's speed drifts between rounds).
    for v, xs, r in zip(variants, us, rps, strict=True):
        diffs = [x - b for x, b in zip(xs, us[0], strict=True)]
        print(f"ab: {v['name']:<36} {median(xs):6.1f} us/req, {median(diffs):+6.1f} vs first"
              f" (paired, range {min(diffs):+.1f} to {max(diffs):+.1f}; {median(r):.0f} rps)")
    return 0


if __name__ == "__main__":
    cli.run(main, [(BenchError, "ab: ", 1)])
