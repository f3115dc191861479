"""The augur controller: one rollout across a fleet of Envoys.

Every `interval_s` it reads augur's counters from Prometheus, summed across the
proxies, runs the same always-valid tests as the filter (`augur_stats.py`, the
twin of src/rollback/stats.rs, cross-tested through `augur stat`) on the
filter's three KPIs — errors, security events and latency (responses each proxy
counted `slow`: above the slow cut its rollback has in force, the control
requests' learned p90 within rollback.slow_floor_ms..slow_ms) — and decides at
most one fleet-wide action:

    block   a feature in a monitored segment (`segments[].monitor`): the segment
            is added to the feature's `deny_segments`
    kill    a feature everywhere (`override: "off"`): blocked in
            `rollback.kill_after_cells` segments
    revert  the rollout (global `override: "off"`): the new stack worse than the
            old for `revert_after_s` without a block or kill explaining it
    ramp    the next `ramp.steps` percentage, after `ramp.min_dwell_s` and
            `ramp.min_samples` new-stack requests with no test alarming
    model   a retrained model that appeared in `model_dir` (checked with
            `augur inspect-model` and `augur check-config` first)

Each action becomes a new plugin configuration — the rollout's own file plus
every action taken so far, its `revision` the action's number + 1 — delivered
through Envoy's config plane (`delivery`, see `delivery.py`): the ECDS file of
every proxy rewritten atomically (temp + rename, what a watched
`path_config_source` needs), or the mesh's own object (Istio `WasmPlugin`,
Envoy Gateway `EnvoyExtensionPolicy`) rendered and applied. It then reads each
proxy's admin `augur_config_revision` gauge until every proxy serves the new
revision, delivers again to a proxy that missed it, and writes one audit line
(JSON: when, what, why, the evidence, which proxies applied).

It never acts on data it cannot trust: Prometheus unreachable, a proxy's scrape
failing or its samples older than `max_scrape_age_s` (e.g. the samples from
before a Prometheus restart), a proxy's series missing, a proxy not serving the
current revision. It then *holds* (logged, counted by reason).
Its state (`state`) is written atomically before every push, so a controller
killed at any point resumes where it stopped: a decided action is delivered
and audited exactly once.

    python -m augur_tools.loop.controller --config fleet.json
    python -m augur_tools.loop.controller --print-config     # every setting and its default

It serves /metrics (Prometheus text) on `listen`. Logs are JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import http.server
import json
import math
import re
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from augur_tools import augur_stats
from augur_tools.envoy import admin, envoyconf
from augur_tools.loop import delivery, retrain, train
from augur_tools.paths import ROOT

# Settings: name -> (default, meaning). `--print-config` prints them.
SETTINGS = {
    "rollout": (None, "the rollout's plugin configuration (JSON file); required"),
    "wasm": (None, ("the filter module the proxies load (path written into the ECDS resource); required for "
                    "delivery kind ecds")),
    "proxies": (None, ("[{name, admin: host:port, instance: its Prometheus instance label (default: admin), "
                       "ecds: watched file (delivery kind ecds)}]; required. A proxy without admin (delivery kind "
                       "manifest: a mesh binds the admin to the pod's loopback) is verified through Prometheus")),
    "delivery": ({"kind": "ecds"}, ("how actions reach the proxies: {kind: ecds} rewrites each proxy's ECDS file; "
                                    "{kind: manifest, manifest: Istio WasmPlugin or Envoy Gateway "
                                    "EnvoyExtensionPolicy YAML, out: the rendered file, apply: command naming "
                                    "{file}, e.g. [kubectl, apply, --server-side, --field-manager=augur-controller, "
                                    "--force-conflicts, -f, {file}]}")),
    "prometheus": ("http://127.0.0.1:9090", "Prometheus base URL"),
    "job": ("augur", "Prometheus job that scrapes the proxies' /stats/prometheus"),
    "interval_s": (1.0, "evaluation period"),
    "max_scrape_age_s": (10.0, "hold when a proxy's last scrape is older than this"),
    "state": ("controller-state.json", "persisted state (written atomically)"),
    "audit": ("controller-audit.jsonl", "audit log, one JSON line per action"),
    "listen": ("127.0.0.1:9464", "address of the controller's own /metrics"),
    "ramp": ({"steps": [1, 5, 10, 25, 50, 100], "min_dwell_s": 30, "min_samples": 200},
             "progressive ramp: percentages, minimum seconds and new-stack requests per step; null: no ramp"),
    "revert_after_s": (60.0, "the new stack worse than the old this long without a block or kill: revert"),
    "model_dir": (None, "watched directory: a new *.onnx there is validated and adopted"),
    "verify_timeout_s": (5.0, ("how long to wait for the proxies to serve a delivered revision, per attempt "
                               "(more than the scrape interval when proxies are verified through Prometheus)")),
    "push_attempts": (3, "deliveries per action before holding (retried every interval after that)"),
    "quorum": (1.0, ("share of the proxies that must be trusted (fresh, scraped, series present) and current "
                     "for the controller to act; the others are left out of the sums until they are. 1.0: every "
                     "proxy (at 1,000 proxies some are always restarting: e.g. 0.99)")),
    "augur": (str(ROOT / "target" / "release" / "augur"), "the augur CLI (check-config, inspect-model)"),
}
# The filter's three KPIs (src/rollback: errors, security, latency) and the
# outcome each one is counted as. `slow` is counted by each proxy with the slow
# cut its own rollback has in force (the control requests' learned p90 within
# rollback.slow_floor_ms..slow_ms), the same cut for both arms of a split, so
# the pooled counts feed the same harm test as errors do.
KPIS = ("errors", "security", "latency")
OUTCOME = {"errors": "errors", "security": "security", "latency": "slow"}
# Per proxy and rollout, the series whose absence means the proxy cannot be
# judged (a filter without `slow` counters would silently skip latency).
REQUIRED = ("augur_requests_total", "augur_slow_responses_total")
HOLD_REASONS = ("prometheus_down", "scrape_failed", "stale_scrape", "series_missing", "proxy_behind")


class ConfigError(ValueError):
    """A bad controller configuration: names the field and the fix."""


def load_settings(path) -> dict:
    text = Path(path).read_text()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the configuration must be a JSON or YAML object")
    unknown = sorted(set(raw) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown setting; known: {', '.join(SETTINGS)}")
    cfg = {k: copy.deepcopy(raw.get(k, d)) for k, (d, _) in SETTINGS.items()}
    base = Path(path).resolve().parent
    try:
        cfg["delivery"] = delivery.load(cfg["delivery"], base)
    except delivery.DeliveryError as e:
        raise ConfigError(str(e)) from None
    ecds = cfg["delivery"]["kind"] == "ecds"
    for k in ("rollout", "wasm", "proxies") if ecds else ("rollout", "proxies"):
        if cfg[k] in (None, "", []):
            raise ConfigError(f"{k}: required ({SETTINGS[k][1]})")
    for k in ("rollout", "wasm", "state", "audit", "model_dir", "augur"):
        if cfg[k] is not None:
            cfg[k] = str((base / cfg[k]).resolve()) if not Path(cfg[k]).is_absolute() else cfg[k]
    if not Path(cfg["rollout"]).is_file():
        raise ConfigError(f"rollout: {cfg['rollout']} is not a file; give the rollout's plugin configuration (JSON)")
    for i, p in enumerate(cfg["proxies"]):
        fields = {"name", "admin", "instance", "ecds"} if ecds else {"name", "admin", "instance"}
        if not isinstance(p, dict) or set(p) - fields or (ecds and not {"admin", "ecds"} <= set(p)) \
                or not ({"admin", "instance"} & set(p)):
            raise ConfigError(
                f"proxies[{i}]: needs admin (host:port) and ecds (the proxy's watched ECDS file), optional name and "
                "instance" if ecds else
                f"proxies[{i}]: needs admin (host:port) or instance (its Prometheus instance label), optional name "
                "(no ecds: the mesh delivers)")
        p.setdefault("instance", p.get("admin"))
        p.setdefault("name", p["instance"])
        if "ecds" in p and not Path(p["ecds"]).is_absolute():
            p["ecds"] = str((base / p["ecds"]).resolve())
    if isinstance(cfg["quorum"], bool) or not isinstance(cfg["quorum"], (int, float)) or not 0 < cfg["quorum"] <= 1:
        raise ConfigError(f"quorum: {cfg['quorum']!r} must be a share in (0, 1], e.g. 0.99")
    if not isinstance(cfg["push_attempts"], int) or cfg["push_attempts"] < 1:
        raise ConfigError(f"push_attempts: {cfg['push_attempts']!r} must be a whole number ≥ 1")
    for k in ("interval_s", "max_scrape_age_s", "revert_after_s", "verify_timeout_s"):
        if not isinstance(cfg[k], (int, float)) or cfg[k] <= 0:
            raise ConfigError(f"{k}: {cfg[k]!r} must be a positive number of seconds")
    ramp = cfg["ramp"]
    if ramp is not None:
        steps = ramp.get("steps") if isinstance(ramp, dict) else None
        if not steps or any(not isinstance(s, (int, float)) or not 0 < s <= 100 for s in steps) \
                or list(steps) != sorted(set(steps)):
            raise ConfigError("ramp.steps: must be increasing percentages in (0, 100], e.g. [1, 5, 10, 25, 50, 100]")
        unknown = set(ramp) - {"steps", "min_dwell_s", "min_samples"}
        if unknown:
            raise ConfigError(f"ramp.{min(unknown)}: unknown; ramp has steps, min_dwell_s, min_samples")
        defaults = SETTINGS["ramp"][0]
        cfg["ramp"] = {k: ramp.get(k, defaults[k]) for k in defaults}
    return cfg


def rollout_facts(plugin: dict) -> dict:
    """What the tests need from the rollout's configuration; rollback defaults
    are the filter's (`augur stat` {"test": "defaults"} = augur_stats.DEFAULTS)."""
    rb = dict(augur_stats.DEFAULTS, **(plugin.get("rollback") or {}))
    features = [f["name"] for f in plugin.get("features", [])]
    return {
        "name": plugin.get("name", "default"),
        "features": features,
        "monitored": [s["name"] for s in plugin.get("segments", []) if s.get("monitor")],
        "min_samples": int(rb["min_samples"]),
        "kill_after_cells": int(rb["kill_after_cells"]),
        "levels": augur_stats.levels(float(rb["alpha"]), len(features)),
    }


# ---------------------------------------------------------------------------
# Counters: Prometheus → per-instance snapshot → windows since a baseline
# ---------------------------------------------------------------------------

def selectors(rollout: str) -> dict:
    """Per family: (labels kept, the series read)."""
    r = f'rollout="{rollout}"'
    return {
        "seg": ("feature, segment, arm, outcome",
                f'augur_segment_outcomes_total{{{r},outcome=~"requests|errors|security|slow"}}'),
        "feat": ("feature, arm, outcome",
                 f'augur_feature_outcomes_total{{{r},arm=~"on|holdout",outcome=~"requests|errors|security|slow"}}'),
        "req": ("stack", f"augur_requests_total{{{r}}}"),
        "err": ("stack", f'augur_responses_total{{{r},class=~"5xx|other"}}'),
        "sec": ("stack", f"augur_security_events_total{{{r}}}"),
        "slow": ("stack", f"augur_slow_responses_total{{{r}}}"),
    }


def queries(rollout: str) -> dict:
    """PromQL per family; every result is summed by instance, so the controller
    can restart a window per scope and survive a proxy's counter reset."""
    return {k: f"sum by (instance, {by}) ({sel})" for k, (by, sel) in selectors(rollout).items()}


def series_key(family: str, m: dict) -> str:
    if family == "seg":
        return f"seg|{m.get('feature')}|{m.get('segment')}|{m.get('arm')}|{m.get('outcome')}"
    if family == "feat":
        return f"feat|{m.get('feature')}|{m.get('arm')}|{m.get('outcome')}"
    kind = {"req": "requests", "err": "errors", "sec": "security", "slow": "slow"}[family]
    return f"stack|{m.get('stack')}|{kind}"


def window(now: dict, base: dict, prefix: str = "", skip=frozenset()) -> dict:
    """Counts since `base` (both {key: {instance: value}}), summed over the
    instances not in `skip` (left out of the quorum). A counter below its
    baseline was reset (the proxy restarted): counted from 0."""
    out = {}
    for key, per in now.items():
        if not key.startswith(prefix):
            continue
        b = base.get(key, {})
        out[key] = sum(v - b.get(i, 0.0) if v >= b.get(i, 0.0) else v for i, v in per.items() if i not in skip)
    return out


def subset(snapshot: dict, prefixes) -> dict:
    return {k: dict(v) for k, v in snapshot.items() if k.startswith(tuple(prefixes))}


def distrust(instances, up, scraped, series, now, max_age, job, rollout):
    """The first of `untrusted`'s reasons — (hold reason, detail) — or None."""
    bad = untrusted(instances, up, scraped, series, now, max_age, job, rollout)
    return next(iter(bad.values()), None)


def untrusted(instances, up, scraped, series, now, max_age, job, rollout) -> dict:
    """{instance: (hold reason, detail)} of the proxies whose data cannot be
    trusted now, in `instances` order. Per proxy (by its Prometheus `instance`): `up` its `up`
    value, `scraped` the time of its last scrape, `series` the newest sample
    time of each of the REQUIRED series for the rollout. A proxy Prometheus does
    not scrape, or that exports no such series, is missing (its counts would be
    absent from the sums); a failed scrape fails; a sample older than `max_age`
    seconds is stale (Prometheus stopped scraping it, or just restarted and
    still shows the samples from before)."""
    def why(i):
        if i not in up:
            return "series_missing", f"proxy {i}: no up series for job {job} (not a target of the job?)"
        if up[i] != "1":
            return "scrape_failed", f"proxy {i}: up is {up[i]} (its last scrape failed)"
        age = now - scraped.get(i, 0.0)
        if age > max_age:
            return "stale_scrape", f"proxy {i}: last scrape {age:.1f} s ago (max_scrape_age_s {max_age})"
        have = series.get(i, {})
        for name in REQUIRED:
            if name not in have:
                return "series_missing", (f"proxy {i}: no {name} for rollout {rollout} (its filter "
                                          "serves another rollout, or predates the series)")
            age = now - have[name]
            if age > max_age:
                return "stale_scrape", (f"proxy {i}: {name} last sampled {age:.1f} s ago "
                                        f"(max_scrape_age_s {max_age})")
        return None

    return {i: w for i in instances if (w := why(i)) is not None}


def may_leave_out(proxies: int, quorum: float) -> int:
    """How many of `proxies` may be left out while the rest still make the quorum."""
    return proxies - math.ceil(quorum * proxies - 1e-9)


# ---------------------------------------------------------------------------
# The decision (pure: tested without services)
# ---------------------------------------------------------------------------

def scopes_of(feature: str) -> tuple:
    return (f"seg|{feature}|", f"feat|{feature}|")


def segment_tests(windows: dict, facts: dict, state: dict) -> list:
    """Evidence (ln M) that a feature's randomised on arm is worse than its off
    arm in a monitored segment, per KPI, over the feature's window."""
    out = []
    blocked = {tuple(b) for b in state["blocks"]}
    for f in facts["features"]:
        if f in state["kills"]:
            continue
        w = windows.get(f, {})
        for s in facts["monitored"]:
            if (f, s) in blocked:
                continue

            def n(arm, o, f=f, s=s, w=w):
                return int(w.get(f"seg|{f}|{s}|{arm}|{o}", 0))

            for kpi, ev, on, off in arm_tests(n, "off", facts["min_samples"]):
                out.append({"feature": f, "segment": s, "kpi": kpi, "ln_m": ev, "on": on, "off": off})
    return out


def worst(tests: list):
    """The test with the most evidence, as the status line shows it (None when there is none)."""
    t = max(tests, key=lambda t: t["ln_m"], default=None)
    return None if t is None else {k: round(v, 2) if isinstance(v, float) else v for k, v in t.items()}


def arm_tests(n, control: str, min_samples: int):
    """Per KPI: (kpi, evidence that arm "on" is worse than `control`, on's
    [requests, bad], control's [requests, bad]) from the counts `n(arm, outcome)`;
    no evidence below `min_samples` requests in either arm."""
    on_n, ctl_n = n("on", "requests"), n(control, "requests")
    for kpi in KPIS:
        o = OUTCOME[kpi]
        ev = augur_stats.harm(on_n, n("on", o), ctl_n, n(control, o)) if min(on_n, ctl_n) >= min_samples else 0.0
        yield kpi, ev, [on_n, n("on", o)], [ctl_n, n(control, o)]


def holdout_tests(windows: dict, facts: dict, state: dict) -> list:
    """Evidence that a feature's on arm is worse than its A/B holdout, per KPI,
    over the feature's window. A screen only (it pauses the ramp, it never
    kills): a holdout is drawn per user, so these request counts put all of a
    user's requests in one arm, and a few users who fail on their own would
    pass for a harm; the A/B report judges holdouts per user, from records."""
    out = []
    for f in facts["features"]:
        if f in state["kills"]:
            continue
        w = windows.get(f, {})

        def n(arm, o, f=f, w=w):
            return int(w.get(f"feat|{f}|{arm}|{o}", 0))

        for kpi, ev, on, ho in arm_tests(n, "holdout", facts["min_samples"]):
            out.append({"feature": f, "kpi": kpi, "ln_m": ev, "on": on, "holdout": ho})
    return out


def stack_tests(w: dict, facts: dict) -> list:
    def n(stack, o):
        return int(w.get(f"stack|{stack}|{o}", 0))

    new_n, old_n = n("new", "requests"), n("old", "requests")
    out = []
    for kpi in KPIS:
        o = OUTCOME[kpi]
        ev = augur_stats.harm(new_n, n("new", o), old_n, n("old", o)) \
            if min(new_n, old_n) >= facts["min_samples"] else 0.0
        out.append({"kpi": kpi, "ln_m": ev, "new": [new_n, n("new", o)], "old": [old_n, n("old", o)]})
    return out


def decide(state: dict, facts: dict, windows: dict, settings: dict, now: float):
    """(action or None, report). `windows`: {"stack": …, "step": …, feature: …}
    counts since each scope's baseline. At most one action per evaluation: a
    kill, else a block (what explains a regression comes first), else a revert,
    else a new model, else the next ramp step."""
    lv = facts["levels"]
    seg = segment_tests(windows, facts, state)
    hold = holdout_tests(windows, facts, state)
    stack = stack_tests(windows.get("stack", {}), facts)
    report = {"stack": stack, "segments": seg, "holdout": hold, "levels": lv}
    if state["reverted"]:
        return None, dict(report, ramp="reverted")
    worst_stack = max(stack, key=lambda t: t["ln_m"])
    stack_alarm = worst_stack["ln_m"] >= lv["revert"]
    report["stack_alarm"] = stack_alarm
    # kill: blocked in kill_after_cells segments
    for f in facts["features"]:
        if f in state["kills"]:
            continue
        cells = [s for g, s in state["blocks"] if g == f]
        if len(cells) >= facts["kill_after_cells"]:
            return {"kind": "kill", "feature": f, "why": f"blocked in {len(cells)} segments "
                    f"(kill_after_cells {facts['kill_after_cells']})", "evidence": {"blocked_in": cells}}, report
    for t in sorted(seg, key=lambda t: -t["ln_m"]):
        if t["ln_m"] >= lv["single"]:
            return {"kind": "block", "feature": t["feature"], "segment": t["segment"],
                    "why": f"{t['feature']} on worse than off in {t['segment']} on {t['kpi']} "
                    f"(evidence {t['ln_m']:.1f} ≥ {lv['single']:.1f})", "evidence": t}, report
    if stack_alarm and state.get("alarm_since") is not None and now - state["alarm_since"] >= settings["revert_after_s"]:
        return {"kind": "revert", "why": f"new stack worse than old on {worst_stack['kpi']} for "
                f"{now - state['alarm_since']:.0f} s with no block or kill explaining it "
                f"(evidence {worst_stack['ln_m']:.1f} ≥ {lv['revert']:.1f})", "evidence": worst_stack}, report
    new_model = state.get("model_candidate")
    if new_model is not None:
        return {"kind": "model", "model": new_model, "why": f"new model {new_model['version']} in model_dir, "
                "validated by augur inspect-model and check-config", "evidence": new_model}, report
    ramp = settings["ramp"]
    if ramp is None:
        return None, dict(report, ramp="none")
    if state["ramp_step"] >= len(ramp["steps"]) - 1:
        return None, dict(report, ramp="done")
    suspect = stack_alarm or worst_stack["ln_m"] >= lv["screen"] or any(t["ln_m"] >= lv["screen"] for t in seg + hold)
    dwell = now - state["step_started"]
    samples = int(windows.get("step", {}).get("stack|new|requests", 0))
    if suspect:
        return None, dict(report, ramp="alarm")
    if dwell < ramp["min_dwell_s"]:
        return None, dict(report, ramp="dwell")
    if samples < ramp["min_samples"]:
        return None, dict(report, ramp="samples")
    steps = ramp["steps"]
    i = state["ramp_step"]
    return {"kind": "ramp", "from": steps[i], "to": steps[i + 1],
            "why": f"{dwell:.0f} s and {samples} new-stack requests at {steps[i]}% with no test alarming",
            "evidence": {"dwell_s": round(dwell, 1), "samples": samples,
                         "max_ln_m": max(t["ln_m"] for t in stack + seg + hold)}}, dict(report, ramp="advance")


def apply(state: dict, action: dict, now: float) -> list:
    """Records `action` in `state`; returns the baseline scopes it restarts
    (the regime changed: a new test on new data; "*" = all)."""
    kind = action["kind"]
    state["seq"] += 1
    state["alarm_since"] = None
    # Any change restarts the ramp step too: the new regime earns its own dwell.
    state["step_started"] = now
    if kind == "block":
        state["blocks"].append([action["feature"], action["segment"]])
        return ["stack", "step", action["feature"]]
    if kind == "kill":
        state["kills"].append(action["feature"])
        return ["stack", "step", action["feature"]]
    if kind == "revert":
        state["reverted"] = True
        return ["stack", "step"]
    if kind == "model":
        state["model"] = {k: action["model"][k] for k in ("path", "version", "sha256")}
        state["model_candidate"] = None
        return ["*"]
    if kind == "ramp":
        state["ramp_step"] += 1
        return ["stack", "step"]
    return []


def plugin_for(base: dict, state: dict, settings: dict) -> dict:
    """The rollout's configuration with every action so far: what every proxy serves."""
    p = copy.deepcopy(base)
    if settings["ramp"] is not None:
        p.setdefault("rollout", {})["percentage"] = settings["ramp"]["steps"][state["ramp_step"]]
    for f in p.get("features", []):
        deny = [s for g, s in state["blocks"] if g == f["name"]]
        if deny:
            f["deny_segments"] = list(dict.fromkeys(list(f.get("deny_segments", [])) + deny))
        if f["name"] in state["kills"]:
            f["override"] = "off"
    if state["reverted"]:
        p["override"] = "off"
    p["revision"] = revision_of(state)
    if state.get("model"):
        p = retrain.candidate_plugin(p, Path(state["model"]["path"]).read_bytes(), state["model"]["version"], {})
    return p


def version_of(facts: dict, state: dict) -> str:
    return f"{facts['name']}.{state['seq']}"


def revision_of(state: dict) -> int:
    """The configuration's `revision` after action `seq` (from 1: 0 is a
    configuration nobody versioned)."""
    return state["seq"] + 1


def new_state(now: float) -> dict:
    return {"seq": 0, "blocks": [], "kills": [], "reverted": False, "ramp_step": 0, "step_started": now,
            "model": None, "seen_models": [], "baselines": {}, "alarm_since": None, "audited": -1,
            "pending": {"kind": "start", "why": "controller started with no state: the rollout's first configuration"}}


# ---------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------

class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.actions = {}
        self.holds = {r: 0 for r in HOLD_REASONS}
        self.retries = 0
        self.last_eval = 0.0
        self.applied = 0
        self.version = 0
        self.revision = 0
        self.left_out = 0
        self.percentage = 0.0

    def text(self) -> str:
        with self.lock:
            lines = ["# HELP augur_controller_actions_total Fleet actions delivered, by kind.",
                     "# TYPE augur_controller_actions_total counter"]
            lines += [f'augur_controller_actions_total{{kind="{k}"}} {v}' for k, v in sorted(self.actions.items())]
            lines += [("# HELP augur_controller_holds_total Evaluations that held (no action) because data or "
                       "proxies could not be trusted, by reason."), "# TYPE augur_controller_holds_total counter"]
            lines += [f'augur_controller_holds_total{{reason="{k}"}} {v}' for k, v in sorted(self.holds.items())]
            lines += ["# TYPE augur_controller_push_retries_total counter",
                      f"augur_controller_push_retries_total {self.retries}",
                      "# HELP augur_controller_last_evaluation_timestamp_seconds Unix time of the last evaluation.",
                      "# TYPE augur_controller_last_evaluation_timestamp_seconds gauge",
                      f"augur_controller_last_evaluation_timestamp_seconds {self.last_eval:.3f}",
                      "# HELP augur_controller_proxies_applied Proxies serving the current configuration version.",
                      "# TYPE augur_controller_proxies_applied gauge",
                      f"augur_controller_proxies_applied {self.applied}",
                      "# TYPE augur_controller_config_version gauge",
                      f"augur_controller_config_version {self.version}",
                      ("# HELP augur_controller_config_revision The revision every proxy must serve "
                       "(compare augur_config_revision)."),
                      "# TYPE augur_controller_config_revision gauge",
                      f"augur_controller_config_revision {self.revision}",
                      ("# HELP augur_controller_proxies_left_out Proxies the quorum left out of the last "
                       "evaluation's sums (untrusted data or behind)."),
                      "# TYPE augur_controller_proxies_left_out gauge",
                      f"augur_controller_proxies_left_out {self.left_out}",
                      "# TYPE augur_controller_ramp_percentage gauge",
                      f"augur_controller_ramp_percentage {self.percentage}"]
            return "\n".join(lines) + "\n"


class Controller:
    def __init__(self, settings: dict, out=sys.stdout):
        self.s = settings
        self.out = out
        self.base = json.loads(Path(settings["rollout"]).read_text())
        self.facts = rollout_facts(self.base)
        self.metrics = Metrics()
        self.stop = threading.Event()
        self.state_path = Path(settings["state"])
        self.state = self.load_state()
        self.last_hold = None
        self.last_status = 0.0
        # Instances (Prometheus `instance`) the quorum lets the controller act
        # without this evaluation, with why: untrusted data or an older revision.
        self.left_out = {}
        self.logged_left_out = dict(self.state.get("left_out", {}))  # persisted: a restart still knows who rejoins

    # -- log, state, audit --------------------------------------------------
    def log(self, event, **kw):
        self.out.write(json.dumps({"ts": round(time.time(), 3), "event": event, **kw}) + "\n")
        self.out.flush()

    def load_state(self) -> dict:
        if self.state_path.exists():
            state = json.loads(self.state_path.read_text())
            # A crash between the audit line and the state write: that action is audited.
            last = last_audit(self.s["audit"])
            if last is not None and last.get("seq", -1) > state.get("audited", -1):
                state["audited"] = last["seq"]
                state["pending"] = None
            self.log_resume = {"seq": state["seq"], "pending": bool(state.get("pending"))}
            return state
        self.log_resume = None
        return new_state(time.time())

    def save(self):
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        envoyconf.write_atomically(self.state_path, json.dumps(self.state, indent=1))

    def audit(self, action, applied, seconds):
        line = {"ts": round(time.time(), 3), "seq": self.state["seq"], "version": version_of(self.facts, self.state),
                "revision": revision_of(self.state),
                "kind": action["kind"], **{k: v for k, v in action.items() if k not in ("kind",)},
                "proxies_applied": applied, "proxies": len(self.s["proxies"]), "push_s": round(seconds, 3)}
        Path(self.s["audit"]).parent.mkdir(parents=True, exist_ok=True)
        with open(self.s["audit"], "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()

    # -- Prometheus ---------------------------------------------------------
    def api(self, path, **params):
        """The `data` of a Prometheus HTTP API call (`/api/v1/<path>`)."""
        url = self.s["prometheus"].rstrip("/") + f"/api/v1/{path}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=max(2.0, self.s["interval_s"])) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise OSError(f"prometheus: {body.get('error')}")
        return body["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def snapshot(self):
        """(snapshot, hold reason or None)."""
        job, rollout = self.s["job"], self.facts["name"]
        try:
            up = {r["metric"].get("instance"): r["value"][1] for r in self.query(f'up{{job="{job}"}}')}
            scraped = {r["metric"].get("instance"): float(r["value"][1])
                       for r in self.query(f'timestamp(up{{job="{job}"}})')}
            series = {}
            for name in REQUIRED:
                for r in self.query(f'max by (instance) (timestamp({name}{{rollout="{rollout}"}}))'):
                    series.setdefault(r["metric"].get("instance"), {})[name] = float(r["value"][1])
            snap = {}
            for family, expr in queries(rollout).items():
                for r in self.query(expr):
                    snap.setdefault(series_key(family, r["metric"]), {})[r["metric"].get("instance")] = \
                        float(r["value"][1])
        except (OSError, ValueError, urllib.error.URLError) as e:
            return None, ("prometheus_down", str(e)[:200])
        bad = untrusted([p["instance"] for p in self.s["proxies"]], up, scraped, series, time.time(),
                        self.s["max_scrape_age_s"], job, rollout)
        if len(bad) > may_leave_out(len(self.s["proxies"]), self.s["quorum"]):
            return None, next(iter(bad.values()))
        self.left_out = {i: reason for i, (reason, _) in bad.items()}
        return snap, None

    # -- the config plane ---------------------------------------------------
    def serving(self, proxies=None):
        """{proxy name: the revision it serves} (None: unreachable, or no
        configuration of the rollout loaded) for `proxies` (default: all). Read
        from each proxy's admin; a proxy without one from Prometheus (its newest
        `augur_config_revision` sample, as fresh as the scrape)."""
        proxies = self.s["proxies"] if proxies is None else proxies
        scraped = {}
        if any(not p.get("admin") for p in proxies):
            try:
                expr = f'max by (instance) (augur_config_revision{{rollout="{self.facts["name"]}"}})'
                scraped = {r["metric"].get("instance"): int(float(r["value"][1])) for r in self.query(expr)}
            except (OSError, ValueError, urllib.error.URLError):
                pass
        return {p["name"]: admin.serving_revision(p["admin"], self.facts["name"]) if p.get("admin")
                else scraped.get(p["instance"]) for p in proxies}

    def deliver(self, version, only=None, wait=True):
        """Hands the current configuration to the config plane for every proxy
        (or those in `only`) and waits for them to serve its revision; returns
        the proxies serving it, after up to `push_attempts` deliveries (one,
        and no wait, when not `wait`)."""
        plugin = plugin_for(self.base, self.state, self.s)
        revision = revision_of(self.state)
        todo = [p for p in self.s["proxies"] if only is None or p["name"] in only]

        def push():
            failed = delivery.push(self.s["delivery"], plugin, self.s["wasm"], version, todo)
            if failed:
                self.log("delivery_failed", version=version, revision=revision, why=failed)
            return not failed

        if not todo:
            return []
        if not wait:
            push()
            return []
        for attempt in range(int(self.s["push_attempts"])):
            if attempt:
                self.metrics.retries += len(todo)
                self.log("retry", version=version, proxies=[p["name"] for p in todo], attempt=attempt + 1)
            if not push():
                if self.stop.wait(min(1.0, self.s["verify_timeout_s"])):
                    break
                continue
            deadline = time.monotonic() + self.s["verify_timeout_s"]
            while todo and time.monotonic() < deadline and not self.stop.is_set():
                serving = self.serving(todo)
                todo = [p for p in todo if serving[p["name"]] != revision]
                if todo:
                    time.sleep(0.05 if all(p.get("admin") for p in todo) else 0.5)
            if not todo:
                break
        return sorted(n for n, v in self.serving().items() if v == revision)

    # -- one evaluation -------------------------------------------------------
    def hold(self, reason, detail, now):
        with self.metrics.lock:
            self.metrics.holds[reason] += 1
        if self.last_hold != reason:
            self.log("hold", reason=reason, detail=detail)
        self.last_hold = reason
        if self.state.get("held_since") is None:
            self.state["held_since"] = now
            self.save()

    def resume(self, now):
        """Trusted data again. The stack alarm's clock (`revert_after_s`) does not
        run while the controller holds: it could neither see a block's effect nor
        block, so a hold never turns into a revert by itself."""
        held = self.state.pop("held_since", None)
        held_s = max(0.0, now - held) if held is not None else 0.0
        if self.state.get("alarm_since") is not None:
            self.state["alarm_since"] += held_s
        self.save()
        self.log("resume", after=self.last_hold, held_s=round(held_s, 1))
        self.last_hold = None

    def finish_pending(self):
        """Delivers and audits the action recorded in the state, once."""
        action = self.state["pending"]
        version = version_of(self.facts, self.state)
        t0 = time.monotonic()
        applied = self.deliver(version)
        self.audit(action, applied, time.monotonic() - t0)
        self.state["audited"] = self.state["seq"]
        self.state["pending"] = None
        self.save()
        with self.metrics.lock:
            self.metrics.actions[action["kind"]] = self.metrics.actions.get(action["kind"], 0) + 1
        self.log("action", seq=self.state["seq"], version=version, revision=revision_of(self.state), applied=applied,
                 **{k: v for k, v in action.items() if k != "evidence"})

    def new_model(self):
        """A new validated model in model_dir becomes the state's candidate
        (adopted by the next evaluation with no more urgent action)."""
        d = self.s["model_dir"]
        if self.state.get("model_candidate") or not d or not Path(d).is_dir():
            return None
        for path in sorted(Path(d).glob("*.onnx")):
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if sha in self.state["seen_models"]:
                continue
            self.state["seen_models"].append(sha)
            try:
                info = train.inspect_model(self.s["augur"], path)
                version = info.get("version") or path.stem
                keep = self.state_path.parent / f"model-{sha[:16]}.onnx"
                shutil.copyfile(path, keep)
                candidate = retrain.candidate_plugin(plugin_for(self.base, self.state, self.s), data, version, {})
                retrain.check_config(self.s["augur"], candidate)
            except (train.TrainError, retrain.JobError, OSError, ValueError) as e:
                self.log("model_refused", path=str(path), why=str(e)[:400])
                self.save()
                continue
            self.state["model_candidate"] = {"path": str(keep), "version": version, "sha256": sha, "file": str(path)}
            self.log("model_candidate", path=str(path), version=version)
            self.save()
            return self.state["model_candidate"]
        return None

    def windows(self, snap, rejoined=frozenset()):
        """Counts since each scope's baseline over the proxies in the quorum. A
        proxy back in the quorum (`rejoined`) is counted from now: what it
        served while left out (an older revision, say) is not the regime under
        test, and data it could not be trusted with is not evidence. (Its
        counts from before it left are dropped too: conservative, never wrong.)"""
        base = self.state["baselines"]
        skip = frozenset(self.left_out)
        changed = False
        for scope in ["stack", "step", *self.facts["features"]]:
            if scope not in base:
                base[scope] = self.baseline(scope, snap)
                changed = True
            elif rejoined:
                for key, per in self.baseline(scope, snap).items():
                    base[scope].setdefault(key, {}).update({i: v for i, v in per.items() if i in rejoined})
                changed = True
        if changed:
            self.save()
        w = {"stack": window(snap, base["stack"], "stack|", skip),
             "step": window(snap, base["step"], "stack|new|", skip)}
        for f in self.facts["features"]:
            w[f] = {k: v for p in scopes_of(f) for k, v in window(snap, base[f], p, skip).items()}
        return w

    def baseline(self, scope, snap):
        if scope == "stack":
            return subset(snap, ["stack|"])
        if scope == "step":
            return subset(snap, ["stack|new|requests"])
        return subset(snap, scopes_of(scope))

    def evaluate(self):
        now = time.time()
        with self.metrics.lock:
            self.metrics.last_eval = now
        if self.state.get("pending"):
            self.finish_pending()
        snap, why = self.snapshot()
        if snap is None:
            return self.hold(*why, now=now)
        version = version_of(self.facts, self.state)
        serving = self.serving()
        behind = [n for n, v in serving.items() if v != revision_of(self.state)]
        instance = {p["name"]: p["instance"] for p in self.s["proxies"]}
        if behind:
            # One already left out for being behind (dead, say) gets one push and
            # no wait: the next evaluation verifies it, and the others go on.
            was_behind = {n for n in behind if self.logged_left_out.get(instance[n]) == "proxy_behind"}
            applied = self.deliver(version, only=set(behind) - was_behind)
            if was_behind:
                self.deliver(version, only=was_behind, wait=False)
            behind = [n for n in behind if n not in applied]
            self.log("repushed", version=version, proxies=sorted(set(serving) - set(behind)), behind=behind)
        with self.metrics.lock:
            self.metrics.applied = len(self.s["proxies"]) - len(behind)
            self.metrics.version = self.state["seq"]
            self.metrics.revision = revision_of(self.state)
            self.metrics.percentage = plugin_for(self.base, self.state, self.s).get("rollout", {}).get("percentage", 0)
        left_out = dict(self.left_out, **{instance[n]: "proxy_behind" for n in behind})
        if behind and len(left_out) > may_leave_out(len(self.s["proxies"]), self.s["quorum"]):
            detail = {n: serving[n] for n in behind}
            return self.hold("proxy_behind", f"proxies {behind} do not serve revision {revision_of(self.state)} "
                             f"({version}); they serve {detail} (None: unreachable, or no configuration of the "
                             "rollout accepted — a filter older than the revision field refuses every one)", now=now)
        if self.last_hold is not None or self.state.get("held_since") is not None:
            self.resume(now)
        rejoined = frozenset(self.logged_left_out) - set(left_out)
        self.left_out = left_out
        with self.metrics.lock:
            self.metrics.left_out = len(left_out)
        w = self.windows(snap, rejoined)  # resets the rejoined first, then (below) the state says they are back
        if left_out != self.logged_left_out:
            self.log("left_out", proxies=left_out, quorum=self.s["quorum"], rejoined=sorted(rejoined))
            self.logged_left_out = left_out
            self.state["left_out"] = left_out
            self.save()
        self.new_model()
        action, report = decide(self.state, self.facts, w, self.s, now)
        if report.get("stack_alarm") and self.state.get("alarm_since") is None:
            self.state["alarm_since"] = now
            self.save()
        elif not report.get("stack_alarm") and self.state.get("alarm_since") is not None:
            self.state["alarm_since"] = None
            self.save()
        if now - self.last_status >= 10:
            self.last_status = now
            self.log("status", version=version, ramp=report.get("ramp"), left_out=sorted(self.left_out),
                     percentage=self.metrics.percentage, blocks=self.state["blocks"], kills=self.state["kills"],
                     max_ln_m=round(max((t["ln_m"] for t in report["stack"] + report["segments"]), default=0), 2),
                     worst_segment=worst(report["segments"]))
        if action is None:
            return None
        for scope in apply(self.state, action, now):
            scopes = ["stack", "step", *self.facts["features"]] if scope == "*" else [scope]
            for s in scopes:
                self.state["baselines"][s] = self.baseline(s, snap)
        self.state["pending"] = action
        self.save()  # decided: from here on it is delivered exactly once, even across a restart
        self.finish_pending()
        return action

    def serve_metrics(self):
        metrics = self.metrics

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = metrics.text().encode() if self.path.startswith("/metrics") else b"augur controller: /metrics\n"
                self.send_response(200 if self.path.startswith("/metrics") else 404)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        host, _, port = self.s["listen"].rpartition(":")
        server = http.server.ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def check_scrape_interval(self):
        """Warns (once, at start) when proxies verified through Prometheus are
        scraped less often than `verify_timeout_s`: every delivery would look
        missed and be retried. Returns the warning, or None."""
        instances = {p["instance"] for p in self.s["proxies"] if not p.get("admin")}
        if not instances:
            return None
        try:
            targets = self.api("targets", state="active")["activeTargets"]
        except (OSError, ValueError, KeyError, urllib.error.URLError):
            return None  # Prometheus down: the evaluations hold and say so
        seconds = [duration_s(t.get("scrapeInterval", "")) for t in targets
                   if t.get("labels", {}).get("job") == self.s["job"] and t.get("labels", {}).get("instance") in instances]
        slowest = max((x for x in seconds if x is not None), default=None)
        if slowest is None or self.s["verify_timeout_s"] > slowest:
            return None
        why = (f"verify_timeout_s {self.s['verify_timeout_s']} is not above the scrape interval of the proxies "
               f"verified through Prometheus ({slowest:g} s): raise it (e.g. to {2 * slowest:g})")
        self.log("warning", setting="verify_timeout_s", why=why)
        return why

    def run(self, max_seconds=None):
        server = self.serve_metrics()
        self.log("start", rollout=self.facts["name"], proxies=[p["name"] for p in self.s["proxies"]],
                 metrics=f"{server.server_address[0]}:{server.server_address[1]}", resumed=self.log_resume,
                 levels={k: round(v, 2) for k, v in self.facts["levels"].items()})
        if self.log_resume is None:
            self.save()
        self.check_scrape_interval()
        started = time.monotonic()
        try:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    self.evaluate()
                except (OSError, ValueError) as e:  # never crash on one bad evaluation
                    self.log("error", why=f"{type(e).__name__}: {e}"[:400])
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    break
                self.stop.wait(max(0.0, self.s["interval_s"] - (time.monotonic() - t0)))
        finally:
            server.shutdown()
            self.log("stop", seq=self.state["seq"])


def duration_s(text):
    """Seconds in a Prometheus duration ("15s", "1m30s", "500ms"); None if not one."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", text or "")
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(float(n) * unit[u] for n, u in parts)


def last_audit(path):
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="controller configuration (JSON or YAML); see --print-config")
    ap.add_argument("--print-config", action="store_true", help="print every setting, its default and meaning")
    ap.add_argument("--max-seconds", type=float, help="stop after this long (tests, demos)")
    args = ap.parse_args(argv)
    if args.print_config:
        for k, (d, meaning) in SETTINGS.items():
            print(f"{k:18} default {json.dumps(d):60} {meaning}")
        return 0
    if not args.config:
        ap.error("--config is required (see --print-config)")
    try:
        settings = load_settings(args.config)
        ctl = Controller(settings)
    except (ConfigError, OSError, json.JSONDecodeError) as e:
        print(f"controller: configuration refused: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: ctl.stop.set())
    try:
        ctl.run(args.max_seconds)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
