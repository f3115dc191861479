"""The closed loop on a simulated clock: `make loop-sim`.

The same worlds, traffic, seeds, plugin configurations and judging as
`make loop-demo` (augur_tools.demos.loop_demo), but instead of Envoy and two app
processes, the filter's own runtime runs in `augur simulate` (the native
library: control-header stripping, decide, record, outcome counting, rollback
sync on ticks — one worker) and the app's hidden world is `planted.outcome`
called in-process. Request i is sent at i / rate seconds of simulated time and
answered `1-5 ms + planted delay` later, so a run that takes Envoy two minutes
takes a few seconds here and is reproducible to the request.

What it leaves out: the mid-run retraining push (`augur_tools.loop.retrain` needs an
Envoy to push to; loop-demo with `--retrain-at` and no fractions is the like-for-like run),
Envoy's second worker, scheduling noise. Use it to compare rollback policies
over many seeds; the numbers that count are loop-demo's.

    python -m augur_tools.demos.loop_sim --worlds demo tangled --seeds 7 11 13

The last line is `sim harm reduction: X% (beneficial kept: Y%)`, the minimum
over the runs, like loop-demo's.
"""

from __future__ import annotations

import argparse
import heapq
import json
import subprocess
import sys
import time
from pathlib import Path

from augur_tools.demos import loop_demo
from augur_tools.envoy import harness
from augur_tools.paths import ROOT
from augur_tools.sim import planted


class Simulator:
    """An `augur simulate` process: one JSON line in, one answer out."""

    def __init__(self, config_path, seed):
        self.err_path = Path(config_path).with_suffix(".err")
        with open(self.err_path, "w", encoding="utf-8") as err:
            self.proc = subprocess.Popen(
                [str(harness.AUGUR_CLI), "simulate", "--config", str(config_path), "--seed", str(seed)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
            )
        self.events = []  # (seconds, message), as the filter logs them

    def ask(self, obj):
        self.proc.stdin.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise RuntimeError(f"augur simulate stopped: {self.err_path.read_text().strip()}")
        answer = json.loads(line)
        for t_ms, msg in answer.get("rollback", []):
            self.events.append((t_ms / 1000.0, msg))
        return answer

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def response_headers(status, engaged, security):
    h = {":status": str(status)}
    if engaged:
        h["x-augur-engagement"] = "1"
    if security:
        h["x-augur-security"] = "1"
    return h


def simulate(plugin, reqs, effects, rate, work, seed):
    """One loop run of `reqs` through `augur simulate`; the loop_demo run shape
    (records with a time, rollback events, the new-stack app's truths)."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "sim.json"
    config.write_text(json.dumps(plugin))
    sim = Simulator(config, seed)
    records, truths, pending = [], [], []
    truth_old = 0
    try:
        for i, h in enumerate(reqs):
            t_ms = round(i * 1000 / rate)
            while pending and pending[0][0] <= t_ms:
                at, seq, headers = heapq.heappop(pending)
                sim.ask({"t_ms": at, "response": seq, "headers": headers})
            a = sim.ask({"t_ms": t_ms, "request": h})
            d = a["record"]
            records.append({"decision": d, "t": t_ms / 1000.0})
            up = dict(h, **a["set"])
            status, delay_ms, engaged, security, truth = planted.outcome(
                up, h.get(":path", "/"), d["stack"], h.get(":method", "GET"), effects)
            if d["stack"] == "new":
                truths.append(truth)
            else:
                truth_old += 1
            latency = 1 + int(4 * planted.draw(h["x-request-id"], "latency")) + delay_ms
            heapq.heappush(pending, (t_ms + latency, a["seq"], response_headers(status, engaged, security)))
        while pending:
            at, seq, headers = heapq.heappop(pending)
            sim.ask({"t_ms": at, "response": seq, "headers": headers})
    finally:
        sim.close()
    return {"kind": "loop", "plugin": plugin, "records": records, "events": sim.events, "truth": truths,
            "truth_old": truth_old, "retrain": []}


def one_world(world, seed, args, work, draws):
    effects = planted.effects(world)
    reqs = loop_demo.build_requests(args.requests, seed, args.users)
    salt = f"{args.salt}-{seed}"
    t0 = time.monotonic()
    loop = simulate(loop_demo.loop_plugin(args.percentage, salt), reqs, effects, args.rate,
                    work / f"{world}-{seed}", draws)
    loop["tally"] = dict(loop_demo.exposure(loop["truth"]), lost=0)
    static = loop_demo.static_baseline(loop_demo.static_plugin(args.percentage, salt), reqs,
                                       range(len(reqs)), effects, work / f"{world}-{seed}")
    print(f"\n#### sim world {world}, seed {seed}, draws {draws}: {len(reqs)} requests in "
          f"{time.monotonic() - t0:.1f}s")
    for t, msg in loop["events"]:
        if "rolled back" in msg or "regressed" in msg or "killed" in msg:
            print(f"    at {t:6.1f}s: {msg}")
    return loop_demo.judge(world, seed, loop, static, reqs, effects, len(reqs))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worlds", nargs="+", default=list(planted.WORLDS), choices=list(planted.WORLDS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 11, 13])
    ap.add_argument("--requests", type=int, default=22000, help="requests per run (loop-demo's default)")
    ap.add_argument("--users", type=int, default=4000)
    ap.add_argument("--percentage", type=float, default=50)
    ap.add_argument("--salt", default="loop-demo")
    ap.add_argument("--rate", type=float, default=200, help="simulated requests per second")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per world and seed, each with other exploration draws (the worker's seed)")
    ap.add_argument("--workdir", default=str(ROOT / ".run" / "loop-sim"))
    args = ap.parse_args(argv)
    if not Path(harness.AUGUR_CLI).exists():
        print(f"loop-sim: missing {harness.AUGUR_CLI} (make cli)", file=sys.stderr)
        return 2
    started = time.monotonic()
    plan = [(w, s, 1000 * s + r) for w in args.worlds for s in args.seeds for r in range(args.repeat)]
    runs = [one_world(w, s, args, Path(args.workdir), d) for w, s, d in plan]
    loop_demo.final(runs, time.monotonic() - started, len(plan), prefix="sim ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
