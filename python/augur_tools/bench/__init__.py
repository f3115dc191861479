"""End-to-end benchmark of augur in Envoy (`make bench-e2e`).

One run, on loopback, with the same Envoy binary (.venv's Envoy 1.40), the same
fast upstream and the same load generators for three configurations of the
Envoy under test (`--concurrency 1`, one Envoy process per configuration):

  passthrough        no wasm: one route to one cluster
  weighted_clusters  what users build with Envoy alone: a header-match route
                     (`x-user-tier: beta` → new) and a 30/70 `weighted_clusters`
                     split, each route adding a stack header for the upstream
  sticky_split       Envoy's own sticky split (Envoy >= 1.36): `weighted_clusters`
                     with `use_hash_policy: true` and a route `hash_policy` on the
                     user header, so each user keeps its stack (what augur's
                     bucketing does, without features, model or records)
  empty_filter       an empty proxy-wasm filter (examples/empty_filter.rs, the
                     same wasm profile, target, SIMD and wasm-opt flags as augur)
                     in the same V8: the floor any wasm filter pays here
  host_calls         a proxy-wasm filter making only augur's host calls
                     (examples/host_calls_filter.rs: reads both header maps,
                     writes the headers and the record augur writes for a
                     typical new- or old-stack request of the saturation set, in
                     the same share): what Envoy and V8 spend on the calls any
                     filter doing augur's job must make
  augur              the augur filter (target/augur.wasm, default model) with
                     envoy/augur-demo.json, routing on the header it writes
  augur_tiny_model   (--breakdown) augur with a 20→32→4 model and no model
                     thresholds: how much of augur's cost is inference

All write the same access-log line (envoyconf.ACCESS_LOG_FORMAT; without augur
its `decision` is `-`). The upstream is a separate Envoy answering every request
itself (`direct_response`), so it is not the bottleneck.

Measured per configuration:
  * Envoy's ready time: from exec to the first 200 through the listener;
  * the first requests after start (warm-up) against the steady state;
  * latency at a fixed, moderate, open-loop rate: `oha -q RATE` (requests are
    issued on a timer whatever the responses do, up to `--latency-conns` in
    flight), p50/p90/p99/p99.9 in microseconds;
  * throughput at saturation with a fixed concurrency: `wrk -t1 -cN` with a Lua
    script cycling through synthetic requests of many users (python/augur_tools/sim/synthetic.py),
    and the Envoy's CPU time per request.
The Envoys are started one after the other and stay up (idle when not
measured); latency and saturation are measured in `--rounds` interleaved rounds
(the order rotates), each value is the median over rounds, and a round during
which other processes took more than `--noise-threshold`% of a CPU is repeated
(at most `--max-retries` times): on a shared machine a build or a test run
otherwise lands on one configuration only.

Then augur is delivered through ECDS (a watched file, envoyconf.ecds_*) and new
plugin configurations with the default model re-encoded and a new
`model.version` are pushed under light load: the time from the atomic rename to
Envoy accepting it (`config_reload`), to on_configure in the VMs (Envoy log),
and to the first request decided with the new version (access log), and the
requests that failed meanwhile.

CPU layout (`--layout split`, the default on 2+ CPUs): the Envoy under test
alone on the last CPU, the upstream and the load generators on the others, so
at saturation the Envoy under test is the bottleneck (its CPU% is shown). The
price is a cross-CPU wakeup per hop, which on a VM inflates absolute latencies
(hundreds of us here) alike for every configuration; `shared` (everything on one
CPU) gives lower absolute latency but lets the generators and the upstream eat
into the Envoy's throughput.

Targets (goals, printed, never asserted): added p50 <= 25 us, added p99 <= 100
us, rps ratio >= 0.85 vs passthrough, wasm <= 4 MB, Envoy ready <= 3 s, model
push applied <= 1 s. Exits 0 when it ran, 2 when a tool is missing, 1 on error.

    .venv/bin/python -m augur_tools.bench [--quick] [--breakdown] [--layout split|shared|none]

Modules: workload (the configurations under test and the requests), measure
(tools, CPU layout and accounting, the pinned Envoys, the phases), report (the
tables and the targets), __main__ (the arguments and the run).
"""
