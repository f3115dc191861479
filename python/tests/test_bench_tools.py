"""The building blocks of the end-to-end benchmark (python/augur_tools/bench/) and
of ECDS delivery (envoyconf.ecds_*): shapes, Envoy's own validation, and one
real model push through a watched file."""

import base64
import json
import os
import shutil
import subprocess

import pytest

from augur_tools.bench import workload
from augur_tools.envoy import envoyconf, harness
from augur_tools.envoy.harness import ROOT, Client, Envoy, Upstreams

DEMO = json.loads((ROOT / "envoy" / "augur-demo.json").read_text())


def test_write_atomically_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "augur.json"
    envoyconf.write_atomically(path, "one")
    envoyconf.write_atomically(path, "two")
    assert path.read_text() == "two"
    assert sorted(os.listdir(tmp_path)) == ["augur.json"]


def test_ecds_resource_is_a_discovery_response_with_the_wasm_filter():
    res = envoyconf.ecds_resource(DEMO, "/x/augur.wasm", "v7")
    assert res["version_info"] == "v7"
    (r,) = res["resources"]
    assert r["@type"] == "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
    assert r["name"] == "augur"
    assert r["typed_config"] == envoyconf.wasm_filter(DEMO, "/x/augur.wasm")["typed_config"]
    assert json.loads(r["typed_config"]["config"]["configuration"]["value"]) == DEMO


def test_ecds_http_filter_watches_the_files_directory(tmp_path):
    f = envoyconf.ecds_http_filter("augur", tmp_path / "ecds" / "augur.json")
    src = f["config_discovery"]["config_source"]["path_config_source"]
    assert f["name"] == "augur"
    assert src["path"] == str((tmp_path / "ecds" / "augur.json").resolve())
    assert src["watched_directory"]["path"] == str((tmp_path / "ecds").resolve())
    assert f["config_discovery"]["type_urls"] == [envoyconf.WASM_FILTER_TYPE_URL]


@pytest.mark.parametrize("route", ["passthrough", "weighted"])
def test_benchmark_configurations_are_valid_envoy_config(tmp_path, route):
    rc_ = (envoyconf.single_cluster_route_config() if route == "passthrough"
           else envoyconf.weighted_clusters_route_config(new_weight=30, pin_values=("beta", "staff")))
    lst = envoyconf.http_listener(route, harness.free_port(), rc_, [envoyconf.router_filter()], tmp_path / "a.log")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(envoyconf.bootstrap(harness.free_port(), [lst], 1, 2)))
    rc, out = harness.validate(path)
    assert rc == 0, out[-2000:]
    up = tmp_path / "up.json"
    up.write_text(json.dumps(envoyconf.direct_response_bootstrap(harness.free_port(), harness.free_port())))
    rc, out = harness.validate(up)
    assert rc == 0, out[-2000:]


def test_wrk_script_has_many_users_and_hosts(tmp_path):
    path = tmp_path / "r.lua"
    n = workload.wrk_script(path, n=50, seed=1)
    text = path.read_text()
    assert n == 50 and text.count("wrk.format(") == 50
    assert '["Host"] = "shop.example.com"' in text
    assert len(set(__import__("re").findall(r'"x-user-id"\] = "([^"]+)"', text))) > 10
    assert "function done(" in text and "BENCH_JSON" in text


def test_model_push_through_ecds_is_applied_without_restart_and_a_bad_one_is_rejected(tmp_path):
    """What bench_e2e measures, asserted: a new plugin configuration (new model
    bytes and version) moved into the watched directory is applied by the
    running Envoy; a refused one leaves the last good one serving."""
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    watched = ecds / "augur.json"
    wasm = harness.WASM.resolve()
    ups = Upstreams()
    envoy = None
    port = harness.free_port()
    log = tmp_path / "access.log"
    try:
        lst = envoyconf.ecds_listener("ecds", port, watched, DEMO, wasm, log, version="1")
        envoy = Envoy(envoyconf.bootstrap(harness.free_port(), [lst], ups.ports["old"], ups.ports["new"]),
                      workdir=tmp_path, concurrency=1)
        client = Client(port)

        def models():
            return [r["decision"]["model"] for r in harness.read_records(log) if isinstance(r["decision"], dict)]

        assert client.request({"x-user-id": "push-0"})[0] == 200
        harness.wait_until(lambda: models() == ["default-v1"], 10, "first record")

        model = base64.b64encode((ROOT / "models" / "default.onnx").read_bytes()).decode()
        pushed = dict(DEMO, model={"onnx_base64": model, "version": "pushed-v2"})
        envoyconf.push_ecds(watched, pushed, wasm, "2")

        def applied():
            assert client.request({"x-user-id": "push-1"})[0] == 200
            return models()[-1] == "pushed-v2"

        harness.wait_until(applied, 10, "the pushed model in the decision records")

        stat = "extension_config_discovery.http_filter.augur.update_rejected"
        before = envoy.counters().get(stat, 0)
        bad = dict(DEMO, rollout={"percentage": 150})
        envoyconf.push_ecds(watched, bad, wasm, "3")
        harness.wait_until(lambda: envoy.counters().get(stat, 0) > before, 10, "the bad push rejected")
        n = len(models())
        assert client.request({"x-user-id": "push-2"})[0] == 200
        harness.wait_until(lambda: len(models()) > n, 10, "a record after the bad push")
        assert models()[-1] == "pushed-v2", "a refused configuration leaves the last good one serving"
        client.close()
    finally:
        if envoy:
            envoy.close()
        ups.close()


def test_bench_refuses_to_run_without_its_tools_and_says_how_to_install(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path), HOME=str(tmp_path), CARGO_HOME=str(tmp_path))
    r = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "augur_tools.bench", "--layout", "none"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert r.returncode == 2
    assert "apt-get install -y wrk" in r.stderr and "cargo install --locked oha" in r.stderr


def test_sticky_split_keeps_each_user_on_one_stack_and_splits_users(tmp_path):
    # The bench's Envoy-only sticky row: weighted_clusters with use_hash_policy
    # on the user header. Real Envoy, real upstreams: every user keeps its stack.
    ups = Upstreams()
    envoy = None
    try:
        port = harness.free_port()
        lst = envoyconf.http_listener("sticky", port, workload.sticky_split_route_config(new_weight=30),
                                      [envoyconf.router_filter()], tmp_path / "a.log")
        envoy = Envoy(envoyconf.bootstrap(harness.free_port(), [lst], ups.ports["old"], ups.ports["new"]),
                      workdir=tmp_path)
        c = Client(port)
        try:
            first = [c.request({"x-user-id": f"sticky-{i}"})[1]["x-served-by"] for i in range(300)]
            again = [c.request({"x-user-id": f"sticky-{i}"})[1]["x-served-by"] for i in range(300)]
        finally:
            c.close()
        assert first == again, "sticky per user"
        assert 45 <= first.count("new") <= 135, first.count("new")
    finally:
        if envoy:
            envoy.close()
        ups.close()


def test_empty_filter_row_is_a_valid_wasm_listener(tmp_path):
    if not workload.EMPTY_WASM.exists():
        pytest.fail(f"{workload.EMPTY_WASM} missing: `make {workload.EMPTY_WASM.relative_to(ROOT)}`")
    cfg = workload.under_test_config("empty_filter", harness.free_port(), harness.free_port(), 1,
                                      tmp_path / "a.log", "{}", workload.EMPTY_WASM.parent / "augur.wasm")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    rc, out = harness.validate(path)
    assert rc == 0, out[-2000:]


def test_a_variants_own_plugin_reaches_envoy_and_upstream_headers_drops_the_rest(tmp_path):
    """`augur:plugin=PATH` (bench.ab / bench.instr) serves that configuration;
    with `upstream_headers: ["flags"]` a new-stack request reaches the app with
    the stack and flags headers only, and a forged features header is stripped."""
    from augur_tools.bench import ab
    from augur_tools.paths import DEMO_PLUGIN

    plugin = json.loads(DEMO_PLUGIN.read_text())
    plugin["rollout"]["percentage"] = 100
    plugin["upstream_headers"] = ["flags"]
    path = tmp_path / "slim.json"
    path.write_text(json.dumps(plugin))
    v = ab.parse_variant(f"augur:plugin={path}:name=slim")
    assert (v["plugin"], v["name"]) == (str(path), "slim")
    with pytest.raises(ab.BenchError, match="plugin=PATH"):
        ab.parse_variant("augur:config=x")
    ups = Upstreams()
    envoy = None
    try:
        envoy = ab.start(v, 0, tmp_path, None, ups.ports["new"], "{}", workload.fixed_request_headers("u1"))
        c = Client(envoy.port)
        try:
            status, _, body = c.request(dict(workload.fixed_request_headers("u1"), **{"x-augur-features": "forged"}))
        finally:
            c.close()
        assert status == 200
        seen = json.loads(body)["headers"]
        assert seen.get("x-augur-stack") == "new"
        assert seen.get("x-augur-flags", "").startswith("@model=")
        assert "x-augur-features" not in seen and "x-augur-decision" not in seen, seen
    finally:
        if envoy is not None:
            envoy.close()
        ups.close()


def test_the_host_call_floor_writes_what_augur_writes(tmp_path):
    """bench-e2e's `host_calls` row (examples/host_calls_filter.rs) repeats augur's
    writes: served through Envoy next to augur itself, for a new-stack and an
    old-stack request the app sees the same control headers from both (the
    decision id apart, each decision's own) and the access log the same record
    fields, and the floor alternates in the share of new-stack requests."""
    if not workload.HOST_CALLS_WASM.exists():
        pytest.fail(f"{workload.HOST_CALLS_WASM} missing: `make {workload.HOST_CALLS_WASM.relative_to(ROOT)}`")
    from augur_tools.paths import DEMO_PLUGIN

    plugin = DEMO_PLUGIN.read_text()
    decided = harness.cli_decide(DEMO_PLUGIN, [dict(workload.fixed_request_headers(f"floor-{i}"), **{
        ":method": "GET", ":path": workload.FIXED_PATH}) for i in range(40)])
    users = {d["stack"]: f"floor-{i}" for i, d in reversed(list(enumerate(decided)))}
    reqs = [dict(workload.fixed_request_headers(users[s]), **{":method": "GET", ":path": workload.FIXED_PATH})
            for s in ("new", "old")]
    floor = json.loads(workload.host_calls_plugin(plugin, reqs))
    assert floor["new_share"] == 0.5
    assert floor["old"]["headers"] == [["x-augur-stack", "old"]]
    workload.copy_floors(tmp_path)
    shutil.copyfile(harness.WASM, tmp_path / "augur.wasm")
    ups = Upstreams()
    envoys = []

    def serve(kind, sends):
        port, log = harness.free_port(), tmp_path / f"{kind}.log"
        cfg = workload.under_test_config(kind, port, harness.free_port(), ups.ports["new"], log, plugin,
                                         tmp_path / "augur.wasm", floor_requests=reqs)
        envoys.append(Envoy(cfg, workdir=tmp_path / kind))
        c = Client(port)
        try:
            seen = [json.loads(c.request(h)[2])["headers"] for h in sends]
        finally:
            c.close()
        records = harness.wait_for_records(log, len(sends))
        return [({k: v for k, v in s.items() if k.startswith("x-augur-")}, r["decision"])
                for s, r in zip(seen, records, strict=True)]

    def same(got, want):
        (h1, r1), (h2, r2) = (dict(got[0]), got[1]), (dict(want[0]), want[1])
        if h2["x-augur-stack"] == "new":  # the decision header is the record's id
            assert (h1.pop("x-augur-decision"), h2.pop("x-augur-decision")) == (r1["id"], r2["id"])
        assert h1 == h2
        keys = set(r2) - {"id", "request_id"}
        assert {k: r1[k] for k in keys} == {k: r2[k] for k in keys}

    try:
        augur = serve("augur", reqs)
        assert [h["x-augur-stack"] for h, _ in augur] == ["new", "old"]
        # Whatever the request, the floor takes the old-stack writes, then the new-stack ones, in turn.
        floor_seen = serve("host_calls", [workload.fixed_request_headers("anyone")] * 4)
        assert [h["x-augur-stack"] for h, _ in floor_seen] == ["old", "new", "old", "new"]
        for got, want in zip(floor_seen, [augur[1], augur[0]] * 2, strict=True):
            same(got, want)
    finally:
        for e in envoys:
            e.close()
        ups.close()


def test_instr_reads_self_costs_and_cache_events_from_a_callgrind_dump(tmp_path):
    """bench.instr's reader of callgrind's raw dump: self costs per function, a
    call's inclusive line left out, name compression and every event column."""
    from augur_tools.bench import instr

    dump = tmp_path / "v0.cg.1.1"
    lines = [
        "events: Ir Dr D1mr",
        "fn=(1) 0x1000",
        "0 100 40 3",
        "+1 50 10 1",
        "cfn=(2) 0x2000",
        "calls=1 0",
        "0 999 999 999",  # the call's inclusive cost: not 0x1000's own
        "fn=(2)",
        "0 20 5 2",
    ]
    dump.write_text("".join(f"{line}\n" for line in lines))
    total, per_fn, per_fn_events = instr.self_costs(dump)
    assert total == 170
    assert per_fn == {"0x1000": 150, "0x2000": 20}
    assert per_fn_events["0x1000"] == {"Ir": 150, "Dr": 50, "D1mr": 4}
    assert per_fn_events["0x2000"] == {"Ir": 20, "Dr": 5, "D1mr": 2}
