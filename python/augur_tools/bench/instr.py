"""`python -m augur_tools.bench.instr` (make bench-instr): Envoy's instructions per
request for a few variants of the filter, counted by valgrind's callgrind — the
measure for cutting augur's cost when CPU time is too noisy to tell 10% apart.

Why: on a shared 2-core VM two runs of the *same* Envoy differ by 20-40 µs of
CPU per request, more than any single cut. Instructions executed are exact: two
runs of 1,000 requests through the same Envoy agree to 0.1%.

Each variant is its own Envoy (`--concurrency 1`, the bench-e2e listener and
access log, the shipped demo plugin) under `valgrind --tool=callgrind`, started
all at once (V8 compiles the module under valgrind: ~1 min for the empty filter,
~5 min for augur). Per variant: a warm-up, then N requests over one keep-alive
connection (the bench's synthetic set, fixed order), then the same time idle;
instructions per request = (requests − idle) / N, so the periodic work (stats
flush, rollback sync), which under valgrind's ~50× slowdown would otherwise
count as per request, is taken out.

    .venv/bin/python -m augur_tools.bench.instr empty_filter augur augur:wasm=/tmp/x.wasm --functions 25

`--cache-sim` adds callgrind's cache simulation: I1/D1/LL misses per request,
inside the wasm code space and elsewhere (cold code and data show up as L1
misses; the simulated last level is large, so LL misses are ~0 here).

`--functions K` lists the K wasm functions of each augur variant that execute
the most instructions per request (self, the idle time's taken out), named
from the module's name section: for target/augur.wasm, whose names wasm-opt
drops, from a copy of the cargo output optimised with the same flags plus `-g`,
used only when its code section is byte-identical. V8 calls wasm functions
through a jump table of 8-byte slots at the start of the module's code space
(x64), and callgrind names a function by where the call lands: slot i is
function `imports + i`. Calls that do not go through the table (exports, host
functions) show as `(direct)`.
"""

import argparse
import collections
import concurrent.futures
import hashlib
import http.client
import re
import shutil
import subprocess
import time
from pathlib import Path

from augur_tools import cli
from augur_tools.bench.ab import parse_variant, start
from augur_tools.bench.measure import BenchError, EnvoyProc
from augur_tools.bench.workload import (
    copy_floors,
    fixed_request_headers,
    saturation_requests,
)
from augur_tools.envoy import envoyconf
from augur_tools.envoy.harness import ROOT, WASM, free_port
from augur_tools.paths import DEMO_PLUGIN

RAW_WASM = ROOT / "target" / "wasm32-wasip1" / "wasm" / "augur.wasm"
SLOT_BYTES = 8  # V8's x64 wasm jump-table slot


# ---- the wasm module: imports, names, code section -----------------------------------


def _leb(b, i):
    r = s = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << s
        s += 7
        if x < 0x80:
            return r, i


def _skip_limits(b, j):
    flags, j = _leb(b, j)
    _, j = _leb(b, j)
    return _leb(b, j)[1] if flags & 1 else j


def module_facts(path):
    """(imported functions, {function index: name}, sha1 of the code section)."""
    b = Path(path).read_bytes()
    i, imports, names, code = 8, 0, {}, None
    while i < len(b):
        sid = b[i]
        size, i = _leb(b, i + 1)
        end = i + size
        if sid == 2:  # imports: count the functions (their indices come first)
            n, j = _leb(b, i)
            for _ in range(n):
                for _field in range(2):
                    ln, j = _leb(b, j)
                    j += ln
                kind, j = b[j], j + 1
                if kind == 0:
                    _, j = _leb(b, j)
                    imports += 1
                elif kind == 1:
                    j = _skip_limits(b, j + 1)
                elif kind == 2:
                    j = _skip_limits(b, j)
                else:
                    j += 2
        elif sid == 10:
            code = hashlib.sha1(b[i:end]).hexdigest()
        elif sid == 0:
            ln, j = _leb(b, i)
            if b[j:j + ln] == b"name":
                j += ln
                while j < end:
                    sub, (sz, j) = b[j], _leb(b, j + 1)
                    if sub == 1:
                        n, k = _leb(b, j)
                        for _ in range(n):
                            idx, k = _leb(b, k)
                            ln2, k = _leb(b, k)
                            names[idx] = b[k:k + ln2].decode(errors="replace")
                            k += ln2
                    j += sz
        i = end
    return imports, names, code


def named_copy(module, work):
    """`module` itself when it has names; for the shipped module, the cargo output
    re-optimised with `-g` if its code is byte-identical; else None."""
    imports, names, code = module_facts(module)
    if names:
        return imports, names
    if not RAW_WASM.exists() or shutil.which("wasm-opt") is None:
        return None
    out = Path(work) / "named.wasm"
    # The Makefile's flags (one copy of them), plus -g to keep the names.
    flags = subprocess.run(["make", "-s", "wasm-opt-flags"], cwd=ROOT, check=True, capture_output=True, text=True)
    subprocess.run(["wasm-opt", *flags.stdout.split(), "-g", str(RAW_WASM), "-o", str(out)], check=True)
    imports2, names2, code2 = module_facts(out)
    return (imports2, names2) if code2 == code else None


# ---- callgrind ----------------------------------------------------------------------


def callgrind(pid, command):
    subprocess.run(["callgrind_control", command, str(pid)], check=True, capture_output=True)


def newest_dump(work, i, pid):
    parts = sorted(Path(work).glob(f"v{i}.cg.{pid}.*"), key=lambda p: int(p.suffix[1:]))
    if not parts:
        raise BenchError(f"callgrind wrote no dump for v{i} (pid {pid})")
    return parts[-1]


def self_costs(path):
    """Total instructions and self instructions per function name of one dump
    (read from the raw file: callgrind_annotate mis-assigns JIT code), and the
    self count of every event the dump has, per function name (`--cache-sim`:
    cache misses besides `Ir`)."""
    names, fn, skip = {}, None, False
    events = ["Ir"]
    per_fn = collections.Counter()
    per_fn_events = collections.defaultdict(collections.Counter)

    def name(v):
        m = re.match(r"\((\d+)\)(?: (.*))?", v)
        if not m:
            return v
        idx, text = m.groups()
        if text is not None:
            names[idx] = re.sub(r"'\d+$", "", text)  # a recursion level: the same function
        return names.get(idx, idx)

    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("fn="):
                fn = name(line[3:].strip())
            elif line.startswith("cfn="):
                name(line[4:].strip())
            elif line.startswith("calls="):
                skip = True  # the next cost line is the call's inclusive cost
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) >= 2:
                    if not skip:
                        per_fn[fn] += int(parts[1])
                        for e, v in zip(events, parts[1:]):
                            per_fn_events[fn][e] += int(v)
                    skip = False
    return sum(per_fn.values()), per_fn, per_fn_events


def code_space(pid, per_fn):
    """Start of the rwx mapping holding the most-executed JIT code (V8's code space)."""
    top = [int(f, 16) for f, _ in per_fn.most_common(50) if f and f.startswith("0x")]
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        span, perms = line.split()[:2]
        lo, hi = (int(x, 16) for x in span.split("-"))
        if perms.startswith("rwx") and any(lo <= a < hi for a in top):
            return lo
    return None


# ---- requests -----------------------------------------------------------------------


class Client:
    """Exactly `n` requests over one keep-alive connection, in a fixed order."""

    def __init__(self, port):
        self.reqs = saturation_requests()
        self.port, self.next = port, 0

    def send(self, n):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            for _ in range(n):
                h = dict(self.reqs[self.next % len(self.reqs)])
                self.next += 1
                method, path = h.pop(":method"), h.pop(":path")
                h.pop("x-request-id", None)
                length = int(h.pop("content-length", 0) or 0)
                h["Host"] = "shop.example.com"
                conn.request(method, path, body=b"x" * length if length else None, headers=h)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise BenchError(f"request {self.next} answered {r.status}")
        finally:
            conn.close()


def measure(env, i, work, n):
    """(instructions per request, idle instructions per second, per-function self
    instructions of the requests less those of the idle time)."""
    client = Client(env.port)
    client.send(min(300, n))  # warm: V8 tiers up, pools fill
    callgrind(env.pid, "-z")
    t0 = time.monotonic()
    client.send(n)
    busy_s = time.monotonic() - t0
    callgrind(env.pid, "-d")
    busy, busy_fn, busy_ev = self_costs(newest_dump(work, i, env.pid))
    callgrind(env.pid, "-z")
    time.sleep(busy_s)
    callgrind(env.pid, "-d")
    idle, idle_fn, idle_ev = self_costs(newest_dump(work, i, env.pid))
    busy_fn.subtract(idle_fn)
    for f, c in idle_ev.items():
        busy_ev[f].subtract(c)
    return (busy - idle) / n, idle / busy_s, busy_fn, busy_ev


def in_code_space(f, base):
    """The address of function name `f` inside the wasm code space at `base`, else None (Envoy's own code)."""
    if base is None or not (f and f.startswith("0x")):
        return None
    a = int(f, 16)
    return a if base <= a < base + (1 << 32) else None


def misses(env, per_fn, per_fn_events, n):
    """Cache misses per request (`--cache-sim`): ({event: [in the wasm code space, elsewhere]},
    whether the code space was found: a floor's few wasm instructions may not show it)."""
    base = code_space(env.pid, per_fn)
    out = collections.defaultdict(lambda: [0.0, 0.0])
    for f, ev in per_fn_events.items():
        where = 1 if in_code_space(f, base) is None else 0
        for e, v in ev.items():
            out[e][where] += v / n
    return out, base is not None


def function_table(env, variant, work, per_fn, n, k):
    names = named_copy(variant["wasm"] or WASM, work)
    base = code_space(env.pid, per_fn)
    rows = []
    for f, cost in per_fn.most_common():
        a = in_code_space(f, base)
        if a is None:
            continue
        label = "(direct)"
        if names is not None:
            imports, by_index = names
            slot, rem = divmod(a - base, SLOT_BYTES)
            if rem == 0 and imports + slot in by_index:
                label = by_index[imports + slot]
        rows.append((cost / n, label))
        if len(rows) == k:
            break
    return rows, names is not None


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m augur_tools.bench.instr", description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+", help="kind[:wasm=PATH][:plugin=PATH][:log=plain][:name=LABEL] (as in bench.ab)")
    p.add_argument("--requests", type=int, default=1000, help="measured requests per variant")
    p.add_argument("--functions", type=int, default=0, metavar="K", help="list the K costliest wasm functions")
    p.add_argument("--ready-timeout", type=int, default=900, help="seconds for an Envoy to start under valgrind")
    p.add_argument("--cache-sim", action="store_true",
                   help="also simulate the caches: I1/D1/LL misses per request, inside the wasm code and elsewhere")
    a = p.parse_args(argv)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found: apt-get install -y valgrind")
    variants = [parse_variant(t) for t in a.variants]
    work = ROOT / ".run" / "bench-instr"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    copy_floors(work)
    up_port, up_admin = free_port(), free_port()
    upstream = EnvoyProc("upstream", envoyconf.direct_response_bootstrap(up_admin, up_port, body="ok"), work,
                         None, up_port)
    headers = fixed_request_headers("bench-user-000")
    envoys = {}
    try:
        print(f"instr: starting {len(variants)} Envoys under callgrind (V8 compiles each module under valgrind:"
              " ~1 min for the empty filter, ~5 min for augur)", flush=True)
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(len(variants)) as pool:
            futures = {}
            for i, v in enumerate(variants):
                wrapper = ["valgrind", "--tool=callgrind", "--smc-check=all-non-file",
                           f"--callgrind-out-file={work}/v{i}.cg.%p"] + (["--cache-sim=yes"] if a.cache_sim else [])
                futures[pool.submit(start, v, i, work, None, up_port, DEMO_PLUGIN.read_text(), headers, wrapper,
                                    a.ready_timeout)] = i
            for fut in concurrent.futures.as_completed(futures):
                i = futures[fut]
                envoys[i] = fut.result()
                print(f"instr: {variants[i]['name']} ready after {time.monotonic() - t0:.0f} s", flush=True)
        results = []
        for i, v in enumerate(variants):
            per_req, idle_per_s, per_fn, per_fn_events = measure(envoys[i], i, work, a.requests)
            print(f"instr: {v['name']}: {per_req:,.0f} instructions per request (idle {idle_per_s:,.0f}/s taken out)",
                  flush=True)
            results.append(per_req)
            if a.cache_sim:
                m, found = misses(envoys[i], per_fn, per_fn_events, a.requests)
                where = "in the wasm code space / elsewhere (Envoy, V8)" if found else \
                    "0 / all (no wasm code space found among the costliest code)"
                print(f"instr: {v['name']}: per request, {where}: "
                      + "; ".join(f"{e} {m[e][0]:,.0f} / {m[e][1]:,.0f}" for e in m if e != "Ir"), flush=True)
            if a.functions and v["kind"] == "augur":
                rows, named = function_table(envoys[i], v, work, per_fn, a.requests, a.functions)
                print(f"instr: {v['name']}: costliest wasm code per request (self instructions"
                      f"{'' if named else '; no names: the module has no name section'}):")
                for cost, label in rows:
                    print(f"instr:   {cost:9,.0f}  {label}")
    finally:
        for e in envoys.values():
            e.close()
        upstream.close()
    for v, x in zip(variants, results, strict=True):
        print(f"instr: {v['name']:<36} {x:10,.0f} per request, {x - results[0]:+10,.0f} vs first")
    return 0


if __name__ == "__main__":
    cli.run(main, [(BenchError, "instr: ", 1)])
