"""The controller's decisions without services: windows over counter
snapshots, the tests and their levels, the order of actions, the ramp, the
configuration each action produces (checked by the real `augur` CLI), and its
settings' errors."""

import io
import json
import subprocess

import pytest

from augur_tools import augur_stats
from augur_tools.envoy import harness
from augur_tools.loop import controller, retrain

ROLLOUT = json.loads((harness.ROOT / "deploy" / "fleet" / "rollout.json").read_text())
FACTS = controller.rollout_facts(ROLLOUT)
SETTINGS = {"ramp": {"steps": [1, 5, 10, 25, 50, 100], "min_dwell_s": 30, "min_samples": 200}, "revert_after_s": 60}


def state(**kw):
    s = controller.new_state(now=1000.0)
    s["pending"] = None
    s.update(kw)
    return s


def seg(feature, segment, on, off):
    """Segment-window counts: on/off = (requests, errors)."""
    return {f"seg|{feature}|{segment}|on|requests": on[0], f"seg|{feature}|{segment}|on|errors": on[1],
            f"seg|{feature}|{segment}|off|requests": off[0], f"seg|{feature}|{segment}|off|errors": off[1]}


def stack(new, old):
    return {"stack|new|requests": new[0], "stack|new|errors": new[1], "stack|old|requests": old[0],
            "stack|old|errors": old[1]}


NO_RAMP = dict(SETTINGS, ramp=None)
QUIET = {"stack": stack((5000, 10), (5000, 10)), "step": {"stack|new|requests": 5000}}


def test_facts_come_from_the_rollout_and_the_filters_defaults():
    assert FACTS["monitored"] == ["tablets", "phones", "desktops", "latam"]
    assert FACTS["min_samples"] == augur_stats.DEFAULTS["min_samples"]
    assert FACTS["kill_after_cells"] == augur_stats.DEFAULTS["kill_after_cells"]
    assert FACTS["levels"] == augur_stats.levels(augur_stats.DEFAULTS["alpha"], 3)
    strict = controller.rollout_facts(dict(ROLLOUT, rollback={"alpha": 0.001}))
    assert strict["levels"]["single"] > FACTS["levels"]["single"]


def test_windows_sum_instances_and_survive_a_counter_reset():
    base = {"k": {"a": 10, "b": 100}}
    now = {"k": {"a": 25, "b": 7, "c": 3}}  # b restarted (7 < 100), c is new
    assert controller.window(now, base) == {"k": 15 + 7 + 3}


def test_a_harm_in_a_segment_blocks_that_feature_there():
    w = dict(QUIET, new_checkout=seg("new_checkout", "tablets", (300, 40), (300, 2)))
    action, _ = controller.decide(state(), FACTS, w, NO_RAMP, now=2000)
    assert action["kind"] == "block" and (action["feature"], action["segment"]) == ("new_checkout", "tablets")
    ev = augur_stats.harm(300, 40, 300, 2)
    assert action["evidence"]["ln_m"] == pytest.approx(ev) and ev >= FACTS["levels"]["single"]
    # The same contrast under min_samples requests per arm, or below the level: no action.
    small = dict(QUIET, new_checkout=seg("new_checkout", "tablets", (19, 19), (300, 0)))
    assert controller.decide(state(), FACTS, small, NO_RAMP, now=2000)[0] is None
    weak = dict(QUIET, new_checkout=seg("new_checkout", "tablets", (300, 12), (300, 4)))
    assert augur_stats.harm(300, 12, 300, 4) < FACTS["levels"]["single"]
    assert controller.decide(state(), FACTS, weak, NO_RAMP, now=2000)[0] is None
    # Already blocked there: not again.
    done = state(blocks=[["new_checkout", "tablets"]])
    assert controller.decide(done, FACTS, w, NO_RAMP, now=2000)[0] is None


def test_a_latency_only_harm_blocks_on_the_filters_slow_counts():
    """`slow` is the filter's third KPI, counted per proxy with its rollback's
    cut: the same harm test as errors, on the slow counts."""
    assert controller.KPIS == ("errors", "security", "latency")
    w = dict(QUIET, search_v2={"seg|search_v2|phones|on|requests": 300, "seg|search_v2|phones|on|slow": 45,
                               "seg|search_v2|phones|off|requests": 300, "seg|search_v2|phones|off|slow": 3,
                               "seg|search_v2|phones|on|errors": 1, "seg|search_v2|phones|off|errors": 1})
    action, report = controller.decide(state(), FACTS, w, NO_RAMP, now=2000)
    assert (action["kind"], action["feature"], action["segment"]) == ("block", "search_v2", "phones")
    assert action["evidence"]["kpi"] == "latency" and action["evidence"]["on"] == [300, 45]
    assert action["evidence"]["ln_m"] == pytest.approx(augur_stats.harm(300, 45, 300, 3))
    assert "on latency" in action["why"]
    errors = [t for t in report["segments"] if t["feature"] == "search_v2" and t["segment"] == "phones"
              and t["kpi"] == "errors"]
    assert errors[0]["ln_m"] < FACTS["levels"]["screen"], "no error signal: latency alone"
    # The holdout screen and the stack (revert) test read slow too. A holdout is
    # drawn per user: its evidence pauses the ramp but never kills.
    hold = {"feat|recommendations|on|requests": 4000, "feat|recommendations|on|slow": 500,
            "feat|recommendations|holdout|requests": 4000, "feat|recommendations|holdout|slow": 300}
    action, report = controller.decide(state(), FACTS, dict(QUIET, recommendations=hold), SETTINGS, now=2000)
    assert action is None and report["ramp"] == "alarm", action
    (worst,) = [t for t in report["holdout"] if t["feature"] == "recommendations" and t["kpi"] == "latency"]
    assert worst["ln_m"] >= FACTS["levels"]["kill"], "evidence a request-level test would have killed on"
    slow_stack = dict(QUIET, stack={**stack((5000, 10), (5000, 10)), "stack|new|slow": 700, "stack|old|slow": 500})
    report = controller.decide(state(), FACTS, slow_stack, NO_RAMP, now=2000)[1]
    assert report["stack_alarm"] and max(report["stack"], key=lambda t: t["ln_m"])["kpi"] == "latency"


def test_untrusted_data_is_named_with_its_reason():
    now, job, rollout = 1000.0, "augur", "fleet"
    fresh = {"augur_requests_total": 999.5, "augur_slow_responses_total": 999.5}
    ok = ({"a": "1", "b": "1"}, {"a": 999.0, "b": 999.5}, {"a": fresh, "b": fresh})

    def why(up=ok[0], scraped=ok[1], series=ok[2]):
        r = controller.distrust(["a", "b"], up, scraped, series, now, 10, job, rollout)
        return r and r[0]

    assert why() is None
    assert why(up={"a": "1"}) == "series_missing", "b is not a target (or its series went stale)"
    assert why(up={"a": "1", "b": "0"}) == "scrape_failed"
    assert why(scraped={"a": 999.0, "b": 985.0}) == "stale_scrape"
    assert why(series={"a": fresh, "b": {"augur_requests_total": 999.5}}) == "series_missing"
    assert why(series={"a": fresh, "b": {}}) == "series_missing"
    assert why(series={"a": fresh, "b": dict(fresh, augur_slow_responses_total=980.0)}) == "stale_scrape"
    detail = controller.distrust(["a", "b"], ok[0], {"a": 999.0, "b": 985.0}, ok[2], now, 10, job, rollout)[1]
    assert detail == "proxy b: last scrape 15.0 s ago (max_scrape_age_s 10)"


def test_blocked_in_kill_after_cells_segments_is_a_kill():
    blocks = [["search_v2", s] for s in FACTS["monitored"][: FACTS["kill_after_cells"]]]
    action, _ = controller.decide(state(blocks=blocks), FACTS, QUIET, SETTINGS, now=2000)
    assert action["kind"] == "kill" and action["feature"] == "search_v2"
    action, _ = controller.decide(state(blocks=blocks[:-1]), FACTS, QUIET, SETTINGS, now=2000)
    assert action is not None and action["kind"] == "ramp"


def test_the_ramp_waits_for_dwell_samples_and_quiet():
    s = state(step_started=1000.0)
    assert controller.decide(s, FACTS, QUIET, SETTINGS, now=1010)[1]["ramp"] == "dwell"
    few = dict(QUIET, step={"stack|new|requests": 100})
    assert controller.decide(s, FACTS, few, SETTINGS, now=1040)[1]["ramp"] == "samples"
    action, _ = controller.decide(s, FACTS, QUIET, SETTINGS, now=1040)
    assert (action["kind"], action["from"], action["to"]) == ("ramp", 1, 5)
    # A suspect segment (screening level, below a block) or an alarming stack pauses it.
    suspect = dict(QUIET, search_v2=seg("search_v2", "phones", (300, 26), (300, 3)))
    assert FACTS["levels"]["screen"] <= augur_stats.harm(300, 26, 300, 3) < FACTS["levels"]["single"]
    bad = dict(QUIET, stack=stack((5000, 36), (5000, 8)))
    assert augur_stats.harm(5000, 36, 5000, 8) >= FACTS["levels"]["revert"]
    for w in (suspect, bad):
        action, report = controller.decide(s, FACTS, w, SETTINGS, now=1040)
        assert action is None and report["ramp"] == "alarm"
    action, report = controller.decide(state(ramp_step=5), FACTS, QUIET, SETTINGS, now=5000)
    assert action is None and report["ramp"] == "done"


def test_an_unexplained_stack_regression_reverts_after_revert_after_s():
    bad = dict(QUIET, stack=stack((5000, 200), (5000, 10)))
    s = state(alarm_since=None)
    action, report = controller.decide(s, FACTS, bad, SETTINGS, now=2000)
    assert action is None and report["stack_alarm"]
    s["alarm_since"] = 2000
    assert controller.decide(s, FACTS, bad, SETTINGS, now=2059)[0] is None
    action, _ = controller.decide(s, FACTS, bad, SETTINGS, now=2061)
    assert action["kind"] == "revert"
    # A block that explains it comes first (and restarts the stack's window).
    both = dict(bad, new_checkout=seg("new_checkout", "tablets", (300, 40), (300, 2)))
    assert controller.decide(s, FACTS, both, SETTINGS, now=2061)[0]["kind"] == "block"
    # Reverted: nothing more.
    assert controller.decide(state(reverted=True), FACTS, both, SETTINGS, now=3000)[0] is None


def test_apply_restarts_the_regimes_it_changes():
    s = state()
    assert controller.apply(s, {"kind": "block", "feature": "new_checkout", "segment": "tablets"}, 5) == \
        ["stack", "step", "new_checkout"]
    assert s["seq"] == 1 and s["blocks"] == [["new_checkout", "tablets"]] and s["step_started"] == 5
    assert controller.apply(s, {"kind": "ramp", "from": 1, "to": 5}, 7) == ["stack", "step"]
    assert s["ramp_step"] == 1 and s["step_started"] == 7 and s["seq"] == 2


def check_config(plugin, tmp_path):
    p = tmp_path / "plugin.json"
    p.write_text(json.dumps(plugin))
    r = subprocess.run([str(harness.AUGUR_CLI), "check-config", str(p)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return p


def test_every_action_is_configuration_the_filter_accepts(tmp_path):
    s = state(ramp_step=3, blocks=[["new_checkout", "tablets"], ["new_checkout", "latam"]], kills=["search_v2"])
    plugin = controller.plugin_for(ROLLOUT, s, SETTINGS)
    assert plugin["rollout"]["percentage"] == 25
    f = {x["name"]: x for x in plugin["features"]}
    assert f["new_checkout"]["deny_segments"] == ["tablets", "latam"]
    assert f["search_v2"]["override"] == "off" and "override" not in f["recommendations"]
    check_config(plugin, tmp_path)
    s["reverted"] = True
    assert controller.plugin_for(ROLLOUT, s, SETTINGS)["override"] == "off"
    assert ROLLOUT["features"][0].get("deny_segments") is None, "the rollout file itself is untouched"


def test_ramping_only_moves_users_forward(tmp_path):
    """The filter's bucket is sticky per user: raising rollout.percentage keeps
    every user already on the new stack there (`augur decide`, the filter's code)."""
    users = [{"x-user-id": f"ramp-{i}"} for i in range(3000)]
    previous = None
    for step in range(len(SETTINGS["ramp"]["steps"])):
        path = check_config(controller.plugin_for(ROLLOUT, state(ramp_step=step), SETTINGS), tmp_path)
        new = {u["x-user-id"] for u, d in zip(users, harness.cli_decide(path, users)) if d["stack"] == "new"}
        want = SETTINGS["ramp"]["steps"][step] / 100 * len(users)
        assert abs(len(new) - want) <= 4 * want ** 0.5 + 3, (step, len(new))
        if previous is not None:
            assert previous <= new, f"{len(previous - new)} users moved back at step {step}"
        previous = new
    assert len(previous) == len(users)


def test_settings_errors_name_the_field(tmp_path):
    def refused(raw):
        p = tmp_path / "c.json"
        p.write_text(json.dumps(raw))
        with pytest.raises(controller.ConfigError) as e:
            controller.load_settings(p)
        return str(e.value)

    rollout = str(harness.ROOT / "deploy" / "fleet" / "rollout.json")
    ok = {"rollout": rollout, "wasm": "augur.wasm", "proxies": [{"admin": "127.0.0.1:1", "ecds": "e/augur.json"}]}
    assert refused({k: v for k, v in ok.items() if k != "proxies"}).startswith("proxies: required")
    assert refused(dict(ok, intervl_s=1)).startswith("intervl_s: unknown setting")
    assert refused(dict(ok, ramp={"steps": [5, 1]})).startswith("ramp.steps: must be increasing")
    assert refused(dict(ok, proxies=[{"admin": "x"}])).startswith("proxies[0]: needs admin")
    assert refused(dict(ok, interval_s=0)).startswith("interval_s: 0 must be a positive")
    assert refused(dict(ok, rollout="/nonexistent.json")).startswith("rollout: /nonexistent.json is not a file")
    p = tmp_path / "good.yaml"
    p.write_text(f"rollout: {rollout}\nwasm: augur.wasm\nproxies: [{{admin: '127.0.0.1:1', ecds: e/augur.json}}]\n")
    s = controller.load_settings(p)
    assert s["ramp"] == controller.SETTINGS["ramp"][0] and s["proxies"][0]["name"] == "127.0.0.1:1"
    assert s["proxies"][0]["ecds"] == str(tmp_path / "e" / "augur.json")


def test_cli_help_and_a_refused_configuration(tmp_path):
    py = str(harness.ROOT / ".venv" / "bin" / "python")
    script = ["-m", "augur_tools.loop.controller"]
    r = subprocess.run([py, *script, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and "--config" in r.stdout and "block" in r.stdout
    (tmp_path / "bad.json").write_text('{"proxies": []}')
    r = subprocess.run([py, *script, "--config", str(tmp_path / "bad.json")], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2 and "configuration refused: rollout: required" in r.stderr, r.stderr


def test_a_new_model_in_model_dir_is_validated_then_adopted(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    settings = {"rollout": str(harness.ROOT / "deploy" / "fleet" / "rollout.json"), "wasm": "augur.wasm",
                "proxies": [{"admin": "127.0.0.1:1", "ecds": "e/augur.json"}], "model_dir": str(models),
                "state": str(tmp_path / "state.json"), "ramp": None}
    (tmp_path / "c.json").write_text(json.dumps(settings))
    log = io.StringIO()
    ctl = controller.Controller(controller.load_settings(tmp_path / "c.json"), out=log)
    assert ctl.new_model() is None
    (models / "broken.onnx").write_bytes(b"not onnx")
    assert ctl.new_model() is None and "model_refused" in log.getvalue()
    (models / "v2.onnx").write_bytes((harness.ROOT / "models" / "default.onnx").read_bytes())
    cand = ctl.new_model()
    assert cand["version"] == "default-v1" and ctl.state["model_candidate"] == cand
    assert ctl.new_model() is None, "one candidate at a time, each file once"
    action, _ = controller.decide(ctl.state, ctl.facts, QUIET, ctl.s, now=2000)
    assert action["kind"] == "model"
    assert controller.apply(ctl.state, action, 2000) == ["*"] and ctl.state["model_candidate"] is None
    plugin = controller.plugin_for(ctl.base, ctl.state, ctl.s)
    assert plugin["model"]["version"] == "default-v1" and plugin["model"]["onnx_base64"]
    check_config(plugin, tmp_path)


def test_a_crash_around_an_action_neither_repeats_nor_loses_it(tmp_path):
    """The two crash windows of an action, replayed on the files a killed
    controller leaves: decided (state has it pending) but not audited → the
    restarted controller delivers and audits it once; audited but the state not
    yet saved → it is not delivered or audited again. (Prometheus and the
    proxy's admin are unreachable here: the controller then holds.)"""
    settings = {"rollout": str(harness.ROOT / "deploy" / "fleet" / "rollout.json"), "wasm": "augur.wasm",
                "proxies": [{"name": "p", "admin": "127.0.0.1:1", "ecds": "ecds/augur.json"}],
                "prometheus": "http://127.0.0.1:1", "state": "state.json", "audit": "audit.jsonl", "ramp": None,
                "verify_timeout_s": 0.1, "push_attempts": 1}
    (tmp_path / "c.json").write_text(json.dumps(settings))
    cfg = controller.load_settings(tmp_path / "c.json")
    block = {"kind": "block", "feature": "new_checkout", "segment": "tablets", "why": "test", "evidence": {}}
    decided = state(seq=1, audited=0, blocks=[["new_checkout", "tablets"]], pending=block)
    audit = tmp_path / "audit.jsonl"
    audit.write_text(json.dumps({"seq": 0, "kind": "start"}) + "\n")
    (tmp_path / "ecds").mkdir()  # the proxy's watched directory

    def run(evaluations=3):
        with open(tmp_path / "log", "a") as log:
            ctl = controller.Controller(cfg, out=log)
            for _ in range(evaluations):
                ctl.evaluate()
        return ctl

    (tmp_path / "state.json").write_text(json.dumps(decided))
    ctl = run()
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [(a["seq"], a["kind"]) for a in lines] == [(0, "start"), (1, "block")], "delivered and audited once"
    assert ctl.state["pending"] is None and ctl.state["audited"] == 1
    pushed = json.loads((tmp_path / "ecds" / "augur.json").read_text())
    assert "fleet.1" in json.dumps(pushed), "the ECDS file carries the action's version"
    _, plugin = retrain.read_ecds(tmp_path / "ecds" / "augur.json")
    assert plugin["revision"] == 2, "and the configuration its revision (seq + 1)"
    assert ctl.metrics.holds["prometheus_down"] == 3, "then holds: nothing else decided"

    (tmp_path / "state.json").write_text(json.dumps(decided))  # the audit line made it, the state did not
    ctl = run()
    assert len(audit.read_text().splitlines()) == 2, "not audited twice"
    assert ctl.state["pending"] is None and ctl.state["audited"] == 1 and ctl.state["seq"] == 1


def test_a_hold_does_not_run_the_revert_clock(tmp_path):
    """The stack alarm started at 1000; the controller then held for 60 s (it
    could neither see a block's effect nor block): the revert comes
    revert_after_s of *trusted* alarm later, not at the end of the hold."""
    settings = {"rollout": str(harness.ROOT / "deploy" / "fleet" / "rollout.json"), "wasm": "augur.wasm",
                "proxies": [{"name": "p", "admin": "127.0.0.1:1", "ecds": "ecds/augur.json"}],
                "prometheus": "http://127.0.0.1:1", "state": "state.json", "ramp": None}
    (tmp_path / "c.json").write_text(json.dumps(settings))
    log = io.StringIO()
    ctl = controller.Controller(controller.load_settings(tmp_path / "c.json"), out=log)
    ctl.state.update(pending=None, alarm_since=1000.0)
    ctl.hold("prometheus_down", "test", now=1010.0)
    ctl.hold("prometheus_down", "test", now=1050.0)
    ctl.resume(now=1070.0)
    assert ctl.state["alarm_since"] == 1060.0 and "held_since" not in ctl.state
    assert '"held_s": 60.0' in log.getvalue()
    bad = dict(QUIET, stack=stack((5000, 200), (5000, 10)))
    assert ctl.s["revert_after_s"] == 60
    assert controller.decide(ctl.state, ctl.facts, bad, ctl.s, now=1110)[0] is None, "50 s of trusted alarm"
    assert controller.decide(ctl.state, ctl.facts, bad, ctl.s, now=1121)[0]["kind"] == "revert"
    # Persisted: a controller restarted mid-hold still pauses the clock.
    ctl.hold("prometheus_down", "test", now=1200.0)
    again = controller.Controller(controller.load_settings(tmp_path / "c.json"), out=log)
    assert again.state["held_since"] == 1200.0


def test_prometheus_durations():
    assert [controller.duration_s(x) for x in ("15s", "1m30s", "500ms", "2h", "1s")] == [15, 90, 0.5, 7200, 1]
    assert [controller.duration_s(x) for x in ("", "15", "s", "1m x")] == [None] * 4


def test_the_quorum_leaves_out_untrusted_proxies_and_counts_a_returning_one_from_its_return(tmp_path):
    assert [controller.may_leave_out(n, q) for n, q in ((3, 1.0), (3, 0.6), (3, 0.67), (1000, 0.99), (1, 0.5))] \
        == [0, 1, 0, 10, 0]
    now, fresh = 1000.0, {"augur_requests_total": 999.5, "augur_slow_responses_total": 999.5}
    bad = controller.untrusted(["a", "b", "c"], {"a": "1", "b": "0"}, {"a": 999.0, "b": 999.0},
                               {"a": fresh, "b": fresh}, now, 10, "augur", "fleet")
    assert {i: r for i, (r, _) in bad.items()} == {"b": "scrape_failed", "c": "series_missing"}, "every one, named"

    settings = {"rollout": str(harness.ROOT / "deploy" / "fleet" / "rollout.json"), "wasm": "augur.wasm",
                "proxies": [{"name": n, "admin": n, "ecds": f"{n}.json"} for n in ("a", "b")],
                "state": str(tmp_path / "state.json"), "ramp": None, "quorum": 0.5}
    (tmp_path / "c.json").write_text(json.dumps(settings))
    ctl = controller.Controller(controller.load_settings(tmp_path / "c.json"), out=io.StringIO())
    snap = {"stack|new|requests": {"a": 100.0}}  # b left out (not scraped) when the baselines are taken
    ctl.left_out = {"b": "series_missing"}
    assert ctl.windows(snap)["stack"]["stack|new|requests"] == 0
    snap = {"stack|new|requests": {"a": 150.0, "b": 5000.0}}  # b scraped again but still left out
    assert ctl.windows(snap)["stack"]["stack|new|requests"] == 50, "a left-out proxy is not summed"
    ctl.left_out = {}
    assert ctl.windows(snap, rejoined=frozenset({"b"}))["stack"]["stack|new|requests"] == 50, \
        "back in the quorum: counted from now, not its 5,000 from before"
    snap = {"stack|new|requests": {"a": 160.0, "b": 5020.0}}
    assert ctl.windows(snap)["stack"]["stack|new|requests"] == 60 + 20
    snap = {"stack|new|requests": {"a": 160.0, "b": 5020.0}, "stack|new|errors": {"a": 3.0}}
    assert ctl.windows(snap)["stack"]["stack|new|errors"] == 3, "a counter new since the baseline counts from 0"
    for bad in (0, 1.5, True):
        with pytest.raises(controller.ConfigError, match=r"quorum: .* must be a share in \(0, 1\]"):
            (tmp_path / "c.json").write_text(json.dumps(dict(settings, quorum=bad)))
            controller.load_settings(tmp_path / "c.json")
