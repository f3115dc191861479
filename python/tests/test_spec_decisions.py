"""The language-neutral decision fixtures (spec/decisions/*.json, see
spec/README.md) through the CLI (`augur simulate`: the filter's stream runtime
natively) and through the real Envoy with the built module; the Rust runner is
tests/spec_decisions.rs. Each must decide every case as the fixture says."""

import json
import subprocess

import pytest

from augur_tools.envoy import envoyconf, harness
from augur_tools.paths import ROOT
from augur_tools.records import read_records

SPECS = sorted((ROOT / "spec" / "decisions").glob("*.json"))


def load(path):
    return json.loads(path.read_text())


def mismatches(expect, record):
    out = []
    if expect["stack"] != record.get("stack"):
        out.append(f"stack: want {expect['stack']}, got {record.get('stack')}")
    if "segments" in expect and expect["segments"] != record.get("segments"):
        out.append(f"segments: want {expect['segments']}, got {record.get('segments')}")
    for name, want in expect["features"].items():
        got = record.get("features", {}).get(name, {})
        if (want["on"], want["reason"]) != (got.get("on"), got.get("reason")):
            out.append(f"feature {name}: want {want}, got {got}")
    return out


def test_there_are_fixtures_to_run():
    assert len(SPECS) >= 3
    assert sum(len(load(p)["cases"]) for p in SPECS) >= 8


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_the_cli_decides_every_case_as_specified(path, tmp_path):
    spec = load(path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(spec["config"]))
    lines = "".join(json.dumps({"t_ms": i, "request": c["headers"]}) + "\n" for i, c in enumerate(spec["cases"]))
    r = subprocess.run([str(harness.AUGUR_CLI), "simulate", "--config", str(config)], input=lines,
                       capture_output=True, text=True, timeout=30, check=True)
    answers = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(answers) == len(spec["cases"])
    failures = [f"{c['name']}: {m}" for c, a in zip(spec["cases"], answers) for m in mismatches(c["expect"], a["record"])]
    assert not failures, "\n".join(failures)


def test_envoy_decides_every_case_as_specified(work, upstreams, start_envoy):
    listeners, ports = [], {}
    for path in SPECS:
        port = harness.free_port()
        ports[path] = port
        listeners.append(envoyconf.listener(path.stem, port, load(path)["config"], harness.WASM.resolve(),
                                            work / f"{path.stem}.log"))
    start_envoy(envoyconf.bootstrap(harness.free_port(), listeners, upstreams.ports["old"], upstreams.ports["new"]),
                work)
    failures = []
    for path in SPECS:
        cases = load(path)["cases"]
        client = harness.Client(ports[path])
        for i, case in enumerate(cases):
            status, _, _ = client.request(dict(case["headers"], **{"x-request-id": f"spec-{i}"}))
            assert status == 200, (path.stem, case["name"], status)
        client.close()
        log, n = work / f"{path.stem}.log", len(cases)
        harness.wait_until(lambda log=log, n=n: len(read_records(log)) >= n, 20, f"{log.name} flushed")
        by_id = {r["decision"]["request_id"]: r["decision"] for r in read_records(log) if isinstance(r.get("decision"), dict)}
        for i, case in enumerate(cases):
            failures += [f"{path.stem} / {case['name']}: {m}" for m in mismatches(case["expect"], by_id[f"spec-{i}"])]
    assert not failures, "\n".join(failures)
