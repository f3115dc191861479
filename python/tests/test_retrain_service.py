"""The retraining job as a service (python/augur_tools/loop/retrain.py --every), against a real
Envoy 1.40 + augur served through ECDS, on loopback.

The app (python/augur_tools/envoy/upstream.py) plants: feature f1 fails 60% of tablet
requests it is on for; f3 fails 50% of every request it is on for. The serving
model (s0) lets f1 on everywhere and keeps f3 off (predicted error risk 0.9).
Every feature has a 40% A/B holdout, so the records carry randomised arms.

1. a round trains a candidate on the randomised records, finds it better on the
   held-out ones (f1 off on tablets) and pushes it; the KPI watch keeps it;
2. the service process, given a worse candidate (s0 again), does not push it,
   stops after --max-rounds, and stops cleanly on SIGTERM;
3. a pushed candidate that turns f3 on (no randomised evidence about f3, a
   held-out gain from f1) makes errors jump: the watch restores s0.
"""

import io
import json
import signal
import subprocess
import time

import numpy as np
import pytest

from augur_tools.envoy import envoyconf, harness
from augur_tools.envoy.harness import ROOT, Client
from augur_tools.loop import retrain, train
from augur_tools.sim import synthetic

FEATURES = ["f1", "f2", "f3"]
DEMO = json.loads((ROOT / "envoy" / "augur-demo.json").read_text())
PY = str(ROOT / ".venv" / "bin" / "python")
TABLET = synthetic.USER_AGENTS["tablet"][0]
DESKTOP = synthetic.USER_AGENTS["desktop"][0]
PLUGIN = {
    "name": "svc",
    "rollout": {"percentage": 100, "salt": "svc-tests"},
    "profile": DEMO["profile"],
    "features": [{"name": f, "holdout": 40, "min_score": 0} for f in FEATURES],
    "rollback": {"enabled": False},
}


def linear_model(version, f1_tablet_error, f3_error):
    """A linear model (exported by python/augur_tools/loop/train.py) whose error risk for f1 is
    0.05 + `f1_tablet_error` on tablets, for f3 `f3_error`; everything else low."""
    from sklearn.linear_model import LinearRegression

    schema = train.augur_schema(str(harness.AUGUR_CLI))
    tablet = next(s["index"] for s in schema["slots"] if s["name"] == "device_tablet")
    n = len(FEATURES) * len(train.IMPACTS)
    m = LinearRegression().fit(np.zeros((2, 20), dtype=np.float32), np.zeros((2, n), dtype=np.float32))
    m.coef_ = np.zeros((n, 20))
    m.intercept_ = np.tile([0.05, 0.05, 0.5, 0.05], len(FEATURES)).astype(float)
    err = train.IMPACTS.index("error_risk")
    m.coef_[err, tablet] = f1_tablet_error
    m.intercept_[2 * len(train.IMPACTS) + err] = f3_error
    return train.export_model(m, FEATURES, version, schema["schema"])


S0 = linear_model("s0", 0.0, 0.9)  # f1 on everywhere, f3 off
C3 = linear_model("c3", 0.9, 0.05)  # f1 off on tablets, f3 ON


@pytest.fixture(scope="module")
def env(work, watched, upstreams, start_envoy):
    port, admin = harness.free_port(), harness.free_port()
    plugin = retrain.candidate_plugin(PLUGIN, S0, "s0", {})
    lst = envoyconf.ecds_listener("svc", port, watched, plugin, harness.WASM.resolve(), work / "access.log")
    envoy = start_envoy(envoyconf.bootstrap(admin, [lst], upstreams.ports["old"], upstreams.ports["new"]), work)
    return {"envoy": envoy, "port": port, "admin": f"127.0.0.1:{admin}", "watched": watched,
            "log": work / "access.log", "work": work, "s0": plugin}


def send(env, tag, n, users=600):
    """`n` requests from `users` users, every third on a tablet; the app's planted harms ride on headers."""
    c = Client(env["port"])
    ids = []
    try:
        for i in range(n):
            u = i % users
            tablet = u % 3 == 0
            rid = f"{tag}-{i}"
            h = {"x-user-id": f"u{u}", "x-request-id": rid, "user-agent": TABLET if tablet else DESKTOP,
                 "x-demo-harm": "f1:0.6,f3:0.5" if tablet else "f3:0.5"}
            if i % 4 == 0:
                h["x-demo-engage"] = "1"
            c.request(h, path="/api/search")
            ids.append(rid)
    finally:
        c.close()
    want = set(ids)
    harness.wait_until(lambda: want <= {r["decision"].get("request_id") for r in records(env)}, 15, f"{tag} records")
    return [r for r in records(env) if r["decision"].get("request_id") in want]


def records(env):
    return [r for r in harness.read_records(env["log"]) if isinstance(r.get("decision"), dict)]


def service(env, *extra):
    args = retrain.parse_args(["--log", str(env["log"]), "--ecds", str(env["watched"]), "--admin", env["admin"],
                               "--envoy-log", str(env["envoy"].log_path), "--version", "svc", "--every", "1",
                               "--augur", str(harness.AUGUR_CLI), "--watch-records", "300", *extra])
    journal = retrain.Journal(env["work"] / "journal.jsonl", out=io.StringIO())
    return retrain.Service(args, journal), journal


def actions(journal, since=0):
    return [ln["action"] for ln in journal.lines[since:]]


def line(journal, action, since=0):
    return next(ln for ln in journal.lines[since:] if ln["action"] == action)


def until_decided(svc, env, tag, waiting="watching", rounds=6):
    """Watch rounds, each after 150 more requests, until the watch decides."""
    for k in range(rounds):
        send(env, f"{tag}-{k}", 150)
        act = svc.round()
        if act != waiting:
            return act
    raise AssertionError(f"the watch decided nothing in {rounds} rounds")


def test_service_pushes_better_skips_worse_and_restores_a_regression(env, tmp_path):
    t_start = time.monotonic()
    send(env, "p1", 1800)
    svc, journal = service(env)

    # 1. trained on the randomised records, better on the held-out ones, pushed, kept.
    assert svc.round() == "pushed", journal.lines
    assert actions(journal) == ["trained", "compared", "pushed"]
    trained, compared = line(journal, "trained"), line(journal, "compared")
    assert trained["targets"] == "uplift" and trained["randomised"]["f3"] == 0
    assert any(e["feature"] == "f1" and e["impact"] == "error_risk" and e["cell"] == "device=tablet"
               for e in trained["effects"]), trained["effects"]
    assert 0.05 <= trained["thresholds"]["f1"]["max_error_risk"] < 0.6, trained["reasons"]["f1"]
    assert "f3" not in trained["thresholds"] or not trained["thresholds"]["f3"]
    # the trade-off: one error costs 3 engagements; avoiding f1's 60% tablet errors is worth ~0.6 per request
    assert compared["better"] and compared["delta"] > 0.2 and compared["delta"] > 2 * compared["se"], compared
    assert compared["off_candidate"]["f1"] > 0.2 and compared["off_serving"]["f1"] == 0
    pushed = line(journal, "pushed")
    assert retrain.serving_version(env["admin"]) == pushed["version"] == "svc-r1" and pushed["previous"] == "s0"
    after = send(env, "p2", 300)
    decided = [r for r in after if r["decision"]["model"] == "svc-r1"]
    assert len(decided) > 200
    f1_tablet = [r["decision"]["features"]["f1"]["reason"] for r in decided if r["decision"]["device"] == "tablet"]
    f1_desk = [r["decision"]["features"]["f1"]["reason"] for r in decided if r["decision"]["device"] != "tablet"]
    assert f1_tablet.count("error_risk") / len(f1_tablet) > 0.9 and "error_risk" not in f1_desk
    assert all(r["decision"]["features"]["f3"]["reason"] == "error_risk" for r in decided), "f3 stays off"
    n = len(journal.lines)
    assert until_decided(svc, env, "p2w") == "kept", journal.lines[n:]
    kept = line(journal, "kept", n)
    assert kept["watch"]["regressed"] == [] and kept["watch"]["kpis"]["errors"]["rate_after"] < \
        kept["watch"]["kpis"]["errors"]["rate_before"]

    # 2. the service process: a worse candidate (s0 again) is not pushed; bounded; SIGTERM.
    worse = tmp_path / "s0.onnx"
    worse.write_bytes(S0)
    base = [PY, "-m", "augur_tools.loop.retrain", "--log", str(env["log"]), "--ecds", str(env["watched"]),
            "--admin", env["admin"], "--version", "cli", "--model", str(worse), "--augur", str(harness.AUGUR_CLI)]
    before = retrain.ecds_counters(env["admin"])
    p = subprocess.run([*base, "--every", "0.2", "--max-rounds", "2"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert [x["action"] for x in lines] == ["started", "trained", "compared", "skipped", "trained", "compared",
                                            "skipped", "stopped"], p.stdout
    cmp = next(x for x in lines if x["action"] == "compared")
    assert not cmp["better"] and cmp["delta"] < -0.2 and cmp["serving"] == "svc-r1", cmp
    assert lines[-1]["reason"] == "max-rounds" and lines[-1]["rounds"] == 2
    journal_file = tmp_path / "journal.jsonl"
    proc = subprocess.Popen([*base, "--every", "30", "--journal", str(journal_file)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        harness.wait_until(lambda: journal_file.exists() and '"skipped"' in journal_file.read_text(), 30,
                           "the first round")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, proc.stderr.read()
    finally:
        harness.stop_process(proc)
    last = json.loads(journal_file.read_text().splitlines()[-1])
    assert last["action"] == "stopped" and last["reason"] == "SIGTERM" and last["rounds"] == 1
    assert retrain.ecds_counters(env["admin"]) == before, "nothing was pushed"
    assert retrain.serving_version(env["admin"]) == "svc-r1"

    # 3. a push followed by a KPI regression is restored.
    res = retrain.push(env["s0"], env["watched"], env["admin"], env["envoy"].log_path, version_info="s0-again")
    assert res.status == "applied"
    send(env, "p3", 300)
    n = len(journal.lines)
    assert svc.round(candidate=C3) == "pushed", journal.lines[n:]
    assert line(journal, "pushed", n)["previous"] == "s0"
    assert until_decided(svc, env, "p3w") == "restored", journal.lines[n:]
    restored = line(journal, "restored", n)
    assert restored["envoy"] == "applied" and "errors" in restored["watch"]["regressed"], restored
    errors = restored["watch"]["kpis"]["errors"]
    assert errors["evidence"] >= restored["watch"]["level"] and errors["rate_after"] > errors["rate_before"]
    assert retrain.serving_version(env["admin"]).startswith("restored-s0")
    back = send(env, "p4", 60)
    assert all(r["decision"]["model"] == "s0" for r in back[-20:])
    assert all(r["decision"]["features"]["f3"]["reason"] == "error_risk" for r in back[-20:])
    assert time.monotonic() - t_start < 60
