#!/usr/bin/env python3
"""The external retraining job: records in, a validated model pushed into the running Envoy.

    python -m augur_tools.loop.retrain --log .run/loop/access.log --ecds .run/loop/ecds/augur.json \\
        --admin 127.0.0.1:9901 --envoy-log .run/loop/envoy.log --version loop-v2 \\
        [--thresholds performance_cost=0.25,error_risk=0.2,security_risk=0.2] [--dry-run]
    python -m augur_tools.loop.retrain ... --version svc --every 60 [--max-rounds N] [--journal retrain.jsonl]

1. **Read** the real Envoy's outputs: access-log lines ``{"decision": {...}, "status",
   "duration_ms", "signals", ...}`` — the decision record joined with its outcome.
2. **Estimate** each feature's effect from the *randomised* records only (the
   record marks them, see augur_tools.records), per rollback cell (device,
   location, path class, method, history low/high — the record's ``cells``,
   named through ``augur schema``), for
   each impact: performance_cost = P(latency >= rollback.slow_ms), error_risk =
   P(5xx or no status), engagement = P(app engagement), security_risk = P(app
   security event). The effect of a feature in a cell is the uplift on − off;
   cells are chosen greedily, most specific first (largest significant uplift,
   then the rest re-estimated without the rows already explained), and only
   uplifts whose evidence (python/augur_tools/augur_stats.py, the filter's own statistic)
   reaches --min-evidence on >= --min-n requests per arm count. A request's
   target impact is the uplift of the chosen cell it is in (0 elsewhere).
3. **Train** a model on (record ``x``, target) with python/augur_tools/loop/train.py's
   ``fit_family`` — ``--model mlp`` (the default), ``gbm`` (LightGBM, or
   scikit-learn GradientBoosting with ``--gbm sklearn``), ``linear``, or
   ``auto``: all three, and the one with the lowest held-out error on the
   randomised records' targets is kept (the job prints every candidate's error
   and the choice) — and export it with ``export_model`` (augur's ONNX
   contract, via skl2onnx / onnxmltools).
4. **Validate** before pushing: the ONNX graph (run by onnxruntime) agrees
   with the fitted model; it loads in the filter's kernels (``augur inspect-model``) with the expected features/version/schema;
   the plugin configuration with the inline model passes ``augur check-config``;
   on held-out records (20% of users, by the record's bucket) predictions are
   finite and, clamped to [0, 1] as the filter does, close to the targets (MAE)
   and to each learned effect in its cell, and the pushed policy does not turn
   any feature off for more than --max-off-share of requests (unless the
   serving model already did).
5. **Push** through the plugin configuration with no restart: the ECDS file
   Envoy watches (a DiscoveryResponse holding the augur TypedExtensionConfig) is
   rewritten atomically with the new ``model.onnx_base64`` / ``model.version``
   (and ``--thresholds`` on every ``auto`` feature). The job then watches
   Envoy's admin stats ``extension_config_discovery.http_filter.<name>.*``
   (``update_success`` vs ``update_rejected`` / ``config_fail``; note that
   ``config_reload`` counts refused attempts too) and the Envoy log: applied, refused
   (Envoy keeps the last good configuration serving; the job restores the last
   good file so a restart would load it too, and says so) or no reaction.

Exit status: 0 pushed and applied (or --dry-run passed validation), 2 refused
by validation (nothing pushed), 3 refused by Envoy / the filter, 4 no reaction
from Envoy within --timeout, 1 any other error.

**Service mode** (``--every SECONDS``, see :class:`Service`): every round it
reads the log, trains a candidate on the randomised records (``--targets
uplift``: the T-learner of python/augur_tools/loop/uplift.py, with per-feature thresholds from
the harm/benefit trade-off), compares it with the serving model on held-out
randomised records (the policy value of the decisions each would make,
inverse-propensity weighted, in engagements per request), pushes it only if it
is better by ``--margin`` and ``--min-z`` standard errors, then watches the
KPIs of the requests the pushed model decides against the serving model's with
the filter's always-valid test (python/augur_tools/augur_stats.py) and restores the
previous configuration if one regresses. Every action is one JSON line on
stdout (and ``--journal``). ``--max-rounds`` bounds it; SIGTERM / SIGINT stop it
after the current round (exit 0).

Reusable: :func:`push` (also used by the tests and python/augur_tools/demos/loop_demo.py),
:func:`estimate_effects`, :func:`targets`, :func:`build`, :func:`evaluate`,
:func:`kpi_watch`, :class:`Service`.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from augur_tools import augur_stats, cli
from augur_tools.envoy import envoyconf
from augur_tools.envoy.admin import ecds_counters, serving_version
from augur_tools.loop import report, train, uplift
from augur_tools.loop.train import IMPACTS, TrainError
from augur_tools.paths import DEFAULT_MODEL
from augur_tools.records import arm, cell_names, cells, read_log

THRESHOLD_FIELDS = uplift.THRESHOLD_FIELDS


class JobError(RuntimeError):
    """Stops the job with a message (exit 1)."""


class ValidationError(JobError):
    """The candidate model failed a pre-push check (exit 2): nothing was pushed."""


# --------------------------------------------------------------------------
# Effects from randomised records
# --------------------------------------------------------------------------


outcome_bits = uplift.outcome_bits


@dataclass
class Effect:
    feature: str
    impact: str
    cell: str
    uplift: float
    evidence: float
    n_on: int
    n_off: int
    rate_on: float
    rate_off: float


# ln M of 1,000: each learned effect would be a false one with probability ≤ 0.1%.
MIN_EVIDENCE = math.log(1000.0)


def estimate_effects(records, features, names, slow_ms, min_evidence=MIN_EVIDENCE, min_n=20, max_cells=4):
    """Per feature and impact, the chosen cells and their uplifts (list of Effect).
    `names`: cell names by index (`cell_names`)."""
    effects = []
    prepared = [(r, cells(r, names), outcome_bits(r, slow_ms)) for r in records]
    for f in features:
        arms = []
        for r, cs, bits in prepared:
            a = arm(r, f)
            if a is not None:
                arms.append((cs, bits, a == "treatment"))
        for impact in IMPACTS:
            chosen: list[str] = []
            for _ in range(max_cells):
                stats: dict[str, list[float]] = {}
                for cs, bits, on in arms:
                    if any(c in chosen for c in cs):
                        continue
                    y = bits[impact]
                    for c in cs:
                        s = stats.setdefault(c, [0, 0.0, 0, 0.0])  # n_on, k_on, n_off, k_off
                        if on:
                            s[0] += 1
                            s[1] += y
                        else:
                            s[2] += 1
                            s[3] += y
                best, best_lcb = None, 0.0
                for c, (n1, k1, n0, k0) in stats.items():
                    if n1 < min_n or n0 < min_n:
                        continue
                    p1, p0 = k1 / n1, k0 / n0
                    uplift = p1 - p0
                    ev = augur_stats.harm(n1, int(k1), n0, int(k0))
                    # Most specific explanation first: the largest uplift we are
                    # confident about (lower 95% bound), not the largest raw uplift,
                    # which small noisy cells would win.
                    lcb = uplift - 1.96 * math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
                    if uplift > 0 and ev >= min_evidence and (best is None or lcb > best_lcb):
                        best, best_lcb = Effect(f, impact, c, uplift, ev, n1, n0, p1, p0), lcb
                if best is None:
                    break
                chosen.append(best.cell)
                effects.append(best)
    return effects


def targets(cell_lists, features, effects) -> np.ndarray:
    """[N, 4F] target impacts: the uplift of the chosen cell each row is in
    (`cell_lists`: each row's cell names, `cells`)."""
    index = {(e.feature, e.impact): [] for e in effects}
    for e in effects:
        index[(e.feature, e.impact)].append(e)
    y = np.zeros((len(cell_lists), len(features) * len(IMPACTS)), dtype=np.float32)
    for i, row_cells in enumerate(cell_lists):
        cs = set(row_cells)
        for fi, f in enumerate(features):
            for ki, impact in enumerate(IMPACTS):
                for e in index.get((f, impact), ()):
                    if e.cell in cs:
                        y[i, fi * len(IMPACTS) + ki] = max(y[i, fi * len(IMPACTS) + ki], min(1.0, e.uplift))
    return y


# --------------------------------------------------------------------------
# Plugin configuration and the ECDS file
# --------------------------------------------------------------------------


def read_ecds(path) -> tuple[dict, dict]:
    """(the DiscoveryResponse, the plugin configuration inside it)."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise JobError(f"--ecds {path}: cannot read the ECDS file Envoy watches ({e.strerror}); give the path of "
                       "the DiscoveryResponse file of the filter's config_discovery") from None
    except ValueError as e:
        raise JobError(f"--ecds {path}: not JSON ({e}); the file must hold an ECDS DiscoveryResponse") from None
    try:
        (res,) = doc["resources"]
        value = res["typed_config"]["config"]["configuration"]["value"]
    except (KeyError, ValueError, TypeError) as e:
        raise JobError(f"{path} is not an ECDS DiscoveryResponse with one augur Wasm filter: {e}") from e
    return doc, json.loads(value)


def with_plugin(doc: dict, plugin: dict | str, version_info: str) -> dict:
    """A copy of the DiscoveryResponse with another plugin configuration (dict or raw string)."""
    doc = json.loads(json.dumps(doc))
    doc["version_info"] = str(version_info)
    value = plugin if isinstance(plugin, str) else json.dumps(plugin, indent=1)
    doc["resources"][0]["typed_config"]["config"]["configuration"]["value"] = value
    return doc


def parse_thresholds(text: str | None) -> dict:
    """``error_risk=0.2,score=40`` → {features[] field: value}."""
    try:
        pairs = uplift.key_values(text, "--thresholds", THRESHOLD_FIELDS, "error_risk=0.2,security_risk=0.2")
    except ValueError as e:
        raise JobError(str(e)) from None
    return {THRESHOLD_FIELDS[k]: v for k, v in pairs.items()}


def candidate_plugin(plugin: dict, onnx_bytes: bytes, version: str, thresholds: dict,
                     per_feature: dict | None = None) -> dict:
    """`plugin` with the model inline; `per_feature` ({name: {field: value}},
    e.g. derived by uplift.derive_thresholds) then `thresholds` (the same on
    every feature, explicit: it wins) set on every ``auto`` feature."""
    new = json.loads(json.dumps(plugin))
    new["model"] = dict(new.get("model") or {}, onnx_base64=base64.b64encode(onnx_bytes).decode(), version=version)
    for f in new.get("features", []):
        if f.get("override", "auto") == "auto":
            f.update((per_feature or {}).get(f["name"], {}))
            f.update(thresholds)
    return new


def check_config(augur: str, plugin: dict) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(plugin, f)
        path = f.name
    try:
        p = subprocess.run([augur, "check-config", path], capture_output=True, text=True, timeout=120, check=False)
    finally:
        os.unlink(path)
    if p.returncode != 0:
        raise ValidationError(f"augur check-config refused the candidate configuration: {p.stderr.strip()}")
    return p.stdout.strip()


# --------------------------------------------------------------------------
# Push through ECDS
# --------------------------------------------------------------------------


@dataclass
class PushResult:
    status: str  # "applied", "refused" or "timeout"
    version: str
    seconds: float
    message: str = ""
    serving: str | None = None  # version_info Envoy serves afterwards (config_dump)
    log: list = field(default_factory=list)

    @property
    def ok(self):
        return self.status == "applied"


def _log_size(path):
    try:
        return Path(path).stat().st_size
    except (OSError, TypeError):
        return 0


def _log_since(path, offset):
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def push(plugin, ecds_path, admin, envoy_log=None, version_info=None, timeout=15.0, name="augur",
         restore_on_refusal=True) -> PushResult:
    """Pushes `plugin` (dict, or a raw string for deliberately malformed configs)
    into the running Envoy through the watched ECDS file, and waits for Envoy's verdict.

    Applied: ``update_success`` went up. Refused: ``update_rejected`` /
    ``config_fail`` went up (the filter logs ``augur: configuration refused: ...``,
    Envoy ``Filesystem config update rejected``); Envoy keeps serving the
    last good configuration, and (``restore_on_refusal``) the file is restored to
    it so a restart loads a good one too. Timeout: neither within `timeout` s.
    """
    ecds_path = Path(ecds_path)
    previous = ecds_path.read_text()
    doc, _ = read_ecds(ecds_path)
    if isinstance(plugin, dict) and "revision" in plugin:
        # The revision belongs to whoever versions the configuration (the fleet
        # controller): this one is no longer that, so it must not say so.
        plugin = {k: v for k, v in plugin.items() if k != "revision"}
    if version_info is None:
        version_info = (plugin.get("model") or {}).get("version") if isinstance(plugin, dict) else None
        version_info = version_info or f"push-{int(time.time())}"
    before = ecds_counters(admin, name)
    log_offset = _log_size(envoy_log)
    text = json.dumps(with_plugin(doc, plugin, version_info))
    t0 = time.monotonic()
    envoyconf.write_atomically(ecds_path, text)
    status, message = "timeout", f"no update_success / update_rejected within {timeout:.0f}s"
    deadline = t0 + timeout
    # Envoy counts every reload attempt in config_reload, also one it then
    # rejects; update_success / update_rejected (and config_fail) are the verdict.
    while time.monotonic() < deadline:
        now = ecds_counters(admin, name)
        grew = {k for k in ("update_success", "update_rejected", "config_fail")
                if now.get(k, 0) > before.get(k, 0)}
        if grew & {"update_rejected", "config_fail"}:
            status, message = "refused", "update_rejected"
            break
        if "update_success" in grew:
            status, message = "applied", "update_success"
            break
        time.sleep(0.02)
    seconds = time.monotonic() - t0
    lines = _log_since(envoy_log, log_offset)
    if status == "refused":
        time.sleep(0.1)  # the filter's own message may land just after the stat
        lines = _log_since(envoy_log, log_offset)
        why = [ln for ln in lines if "configuration refused" in ln] or [
            ln for ln in lines if "rejected" in ln.lower() or "[error]" in ln
        ]
        if why:
            message = why[0].split("] ", 1)[-1].strip()[:400] if "] " in why[0] else why[0][:400]
        if restore_on_refusal:
            envoyconf.write_atomically(ecds_path, previous)
    return PushResult(status, str(version_info), seconds, message, serving_version(admin, name), lines)


# --------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------


def load_model_bytes(plugin: dict) -> bytes:
    b64 = (plugin.get("model") or {}).get("onnx_base64")
    return base64.b64decode(b64) if b64 else DEFAULT_MODEL.read_bytes()


def model_features(onnx_bytes: bytes) -> list[str]:
    import onnx

    meta = {p.key: p.value for p in onnx.load_from_string(onnx_bytes).metadata_props}
    return [f for f in meta.get("augur.features", "").split(",") if f]


def onnx_predict(onnx_bytes: bytes, xs: np.ndarray) -> np.ndarray:
    """The model's raw output (onnxruntime); the filter clamps it to [0, 1]."""
    return train.ort_predict(onnx_bytes, xs)


def off_share(pred: np.ndarray, plugin: dict, model_features: list[str]) -> dict:
    """Per auto feature the model scores: share of rows the model rules
    (thresholds, min_score) would turn off."""
    names = [f["name"] for f in plugin.get("features", [])
             if f.get("override", "auto") == "auto" and f["name"] in model_features]
    off = uplift.off_mask(pred, plugin, model_features, names)
    return {n: float(off[:, j].mean()) if len(off) else 0.0 for j, n in enumerate(names)}


def held_out(r: dict) -> bool:
    """The fixed held-out split: 20% of users by the record's rollout bucket
    (sticky per user), by request id for a record without one."""
    d = r["decision"]
    b = d.get("bucket")
    if isinstance(b, int):
        return b % 5 == 0
    return zlib.crc32(str(d.get("request_id") or d.get("id") or "").encode()) % 5 == 0


@dataclass
class Candidate:
    onnx: bytes
    plugin: dict
    effects: list
    rows: int
    randomised: dict
    held_out: int
    mae: float
    off_before: dict
    off_after: dict
    fit_s: float
    inspect: dict
    check: str
    family: str = "mlp"
    targets: str = "cells"
    thresholds: dict = field(default_factory=dict)  # per feature, derived ({name: {field: value}})
    reasons: dict = field(default_factory=dict)  # per feature: why each threshold


def inspect_bytes(augur: str, onnx_bytes: bytes) -> dict:
    """``augur inspect-model`` on model bytes: the filter's own loader (ValidationError if it refuses)."""
    with tempfile.NamedTemporaryFile(suffix=".onnx", delete=False) as f:
        f.write(onnx_bytes)
        model_path = f.name
    try:
        return train.inspect_model(augur, model_path)
    except TrainError as e:
        raise ValidationError(f"augur inspect-model cannot load the candidate: {e}") from e
    finally:
        os.unlink(model_path)


def rollout_records(records, plugin) -> list:
    """The records of `plugin`'s rollout that carry a model input."""
    rollout = plugin.get("name", "default")
    return [r for r in records if r["decision"].get("rollout") == rollout and r["decision"].get("x")]


def serving_predictions(plugin: dict, xs: np.ndarray, features: Sequence[str]) -> np.ndarray:
    """[N, 4F] the serving model's clamped predictions in `features` order (0 for
    a feature it does not score)."""
    b = load_model_bytes(plugin)
    mf = model_features(b)
    raw = np.clip(onnx_predict(b, xs), 0.0, 1.0)
    out = np.zeros((len(xs), len(features) * len(IMPACTS)), dtype=np.float32)
    for j, f in enumerate(features):
        if f in mf:
            i = mf.index(f) * len(IMPACTS)
            out[:, j * len(IMPACTS):(j + 1) * len(IMPACTS)] = raw[:, i:i + len(IMPACTS)]
    return out


def uplift_targets(records, xs, held, plugin, features, names, slow_ms, min_evidence, min_n, seed, log):
    """Targets from the T-learner (python/augur_tools/loop/uplift.py) fitted on the training
    rows' randomised records: the clamped uplift for each (feature, impact) the
    always-valid cell test finds evidence for (0 for the others); a feature with
    no randomised training record keeps the serving model's predictions.
    Returns (targets, effects, the fitted Uplift)."""
    train_recs = [r for r, h in zip(records, held) if not h]
    effects = estimate_effects(train_recs, features, names, slow_ms, min_evidence, min_n)
    outcomes = uplift.outcome_matrix(records, slow_ms)
    arms = uplift.arm_matrix(records, features)
    arms_train = np.where(held[:, None], -1, arms)
    up = uplift.fit_tlearner(xs, outcomes, arms_train, features, {(e.feature, e.impact) for e in effects},
                             seed, min_n)
    y = np.clip(up.predict(xs), 0.0, 1.0).astype(np.float32)
    unseen = [f for f in features if up.randomised.get(f, 0) == 0]
    if unseen:
        serving = serving_predictions(plugin, xs, features)
        for f in unseen:
            j = features.index(f) * len(IMPACTS)
            y[:, j:j + len(IMPACTS)] = serving[:, j:j + len(IMPACTS)]
        log(f"  no randomised training records for {', '.join(unseen)}: the serving model's predictions kept")
    for (f, impact), (n1, n0) in up.rows.items():
        col = features.index(f) * len(IMPACTS) + IMPACTS.index(impact)
        log(f"  uplift: {f:<16}{impact:<17} T-learner on {n1} on / {n0} off; predicted uplift mean "
            f"{float(y[:, col].mean()):.3f}, max {float(y[:, col].max()):.3f}")
    return y, effects, up


def build(records, plugin, version, thresholds, augur, names, seed=7, min_evidence=MIN_EVIDENCE, min_n=20,
          max_off_share=0.5, max_mae=0.05, log=print, family="mlp", gbm="lightgbm", target_kind="cells",
          costs=None) -> Candidate:
    """Effects → targets → model (``family``: mlp, gbm, linear or auto) → ONNX →
    every pre-push check. Raises ValidationError.

    ``target_kind``: ``cells`` (the chosen cells' uplifts, :func:`targets`) or
    ``uplift`` (the T-learner, :func:`uplift_targets`, and per-feature
    thresholds derived from the trade-off with ``costs``; explicit
    ``thresholds`` still win)."""
    rollout = plugin.get("name", "default")
    records = rollout_records(records, plugin)
    if len(records) < 200:
        raise ValidationError(f"only {len(records)} records of rollout {rollout!r}: not enough to retrain "
                              "(need 200; wait for traffic or check the plugin's `name`)")
    features = [f["name"] for f in plugin["features"]]
    slow_ms = float((plugin.get("rollback") or {}).get("slow_ms", 1000))
    randomised = {f: sum(1 for r in records if arm(r, f) is not None) for f in features}
    log(f"  data: {len(records)} records; randomised per feature: "
        + ", ".join(f"{f} {n}" for f, n in randomised.items()))
    xs = np.asarray([r["decision"]["x"] for r in records], dtype=np.float32)
    cell_lists = [cells(r, names) for r in records]
    held = np.array([held_out(r) for r in records])
    up = None
    if target_kind == "uplift":
        y, effects, up = uplift_targets(records, xs, held, plugin, features, names, slow_ms, min_evidence, min_n,
                                        seed, log)
    elif target_kind == "cells":
        effects = estimate_effects(records, features, names, slow_ms, min_evidence, min_n)
        y = targets(cell_lists, features, effects)
    else:
        raise JobError(f"--targets {target_kind!r}: use cells or uplift")
    if not effects:
        log("  effects: none significant (every target impact is 0)")
    for e in effects:
        log(f"  effect: {e.feature:<16}{e.impact:<17}{e.cell:<20} on {100 * e.rate_on:5.1f}% "
            f"(n={e.n_on}) vs off {100 * e.rate_off:5.1f}% (n={e.n_off}): uplift {e.uplift:+.2f}, evidence {e.evidence:.1f}")
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if family == "auto":
            model, family, _ = train.pick_family(xs[~held], y[~held], xs[held], y[held], seed, log=log, gbm=gbm)
        else:
            model = train.fit_family(family, xs[~held], y[~held], seed, gbm=gbm)
    fit_s = time.monotonic() - t0
    if family == "mlp" and any("converge" in str(w.message) for w in caught):
        log(f"  note: the MLP stopped at its iteration limit ({model.n_iter_}); the held-out checks below decide")
    schema = train.augur_schema(augur)
    onnx_bytes = train.export_model(
        model, features, version, schema["schema"],
        extra_metadata={"augur.trainer": f"python/augur_tools/loop/retrain.py model={family} targets={target_kind} "
                                         f"records={len(records)} effects={len(effects)}"},
    )
    # 1. the ONNX graph computes what was fitted (onnxruntime)
    train.check_ort_matches(onnx_bytes, model, xs[:2000])
    # 2. the filter's loader takes it (and says which kernel runs it)
    info = inspect_bytes(augur, onnx_bytes)
    want = {"features": features, "version": version, "schema": schema["schema"]}
    if {k: info.get(k) for k in want} != want:
        raise ValidationError(f"augur inspect-model reports {info}, expected {want}")
    # per-feature thresholds from the trade-off, on the new stack's training rows
    derived, reasons = {}, {}
    if up is not None:
        rows = ~held & np.array([r["decision"].get("stack") == "new" for r in records])
        rows = rows if rows.any() else ~held
        pred_tr = np.clip(onnx_predict(onnx_bytes, xs[rows]), 0.0, 1.0)
        learned = set(up.models)
        for f, (chosen, why) in uplift.derive_thresholds(pred_tr, up.predict(xs[rows]), features, plugin,
                                                         costs or uplift.DEFAULT_COSTS, learned).items():
            derived[f], reasons[f] = chosen, why
            for w in why:
                log(f"  threshold: {f:<16}{w}")
    # 3. the configuration with the inline model compiles (shapes match the features)
    new_plugin = candidate_plugin(plugin, onnx_bytes, version, thresholds, derived)
    check = check_config(augur, new_plugin)
    # 4. held-out rows: finite, in range, close to the targets, no feature wiped out
    x_te, y_te = xs[held], y[held]
    if len(x_te) == 0:
        raise ValidationError("no held-out rows")
    raw = onnx_predict(onnx_bytes, x_te)
    if not np.all(np.isfinite(raw)):
        raise ValidationError(f"{int((~np.isfinite(raw)).sum())} non-finite held-out predictions")
    pred = np.clip(raw, 0.0, 1.0)  # as the filter does
    mae = float(np.abs(pred - y_te).mean())
    if mae > max_mae:
        raise ValidationError(f"held-out MAE {mae:.3f} > {max_mae}")
    for e in effects:
        rows = np.array([e.cell in cs for cs, h in zip(cell_lists, held) if h])
        if rows.sum() >= 20:
            col = features.index(e.feature) * len(IMPACTS) + IMPACTS.index(e.impact)
            got = float(pred[rows, col].mean())
            if abs(got - min(1.0, e.uplift)) > 0.15 + 0.5 * e.uplift:
                raise ValidationError(
                    f"{e.feature}.{e.impact} in {e.cell}: held-out mean prediction {got:.2f}, target {e.uplift:.2f}"
                )
    new_stack = np.array([r["decision"].get("stack") == "new" for r in records])[held]
    scored = x_te[new_stack] if new_stack.any() else x_te
    old_bytes = load_model_bytes(plugin)
    off_before = off_share(np.clip(onnx_predict(old_bytes, scored), 0, 1), new_plugin, model_features(old_bytes))
    off_after = off_share(np.clip(onnx_predict(onnx_bytes, scored), 0, 1), new_plugin, features)
    # A feature the serving model already keeps off is not being wiped out by this one.
    wiped = {f: s for f, s in off_after.items() if s > max_off_share and s > off_before.get(f, 0.0) + 0.01}
    if wiped:
        raise ValidationError(
            "the pushed policy would turn off "
            + ", ".join(f"{f} for {100 * s:.0f}% (serving model: {100 * off_before.get(f, 0.0):.0f}%)"
                        for f, s in wiped.items())
            + f" of held-out requests (> --max-off-share {max_off_share:.0%}); raise --max-off-share if that is meant"
        )
    return Candidate(onnx_bytes, new_plugin, effects, len(records), randomised, int(held.sum()), mae,
                     off_before, off_after, fit_s, info, check, family, target_kind, derived, reasons)


def print_candidate(c: Candidate, out=sys.stdout):
    print(f"  model {c.family} fit {c.fit_s:.1f}s; held-out {c.held_out} records, MAE vs targets {c.mae:.4f}; "
          f"filter: {json.dumps(c.inspect)}; check-config: {c.check}", file=out)
    print("  share of held-out new-stack requests the pushed thresholds turn off: "
          + ", ".join(f"{f} {100 * c.off_before.get(f, 0):.0f}% -> {100 * s:.0f}%" for f, s in c.off_after.items()),
          file=out)


# --------------------------------------------------------------------------
# Candidate vs serving, and the KPI watch after a push
# --------------------------------------------------------------------------


def file_candidate(onnx_bytes: bytes, plugin: dict, version: str, thresholds: dict, augur: str,
                   validate: bool = True) -> tuple[dict, str]:
    """(the plugin configuration with a given model inline, what the checks said):
    the filter's loader (``augur inspect-model``) and ``augur check-config``."""
    new_plugin = candidate_plugin(plugin, onnx_bytes, version, thresholds)
    if not validate:
        return new_plugin, "not validated (--no-validate)"
    info = inspect_bytes(augur, onnx_bytes)
    return new_plugin, f"filter: {json.dumps(info)}; check-config: {check_config(augur, new_plugin)}"


def evaluate(records, serving_plugin: dict, candidate_plugin_: dict, costs: dict) -> dict:
    """The policy value of the decisions the candidate and the serving
    configuration (model + thresholds) make, on the held-out randomised records
    (:func:`held_out`, arms from the record), in engagements per request against
    every feature on (uplift.policy_gain: inverse propensity, real outcomes), with
    the paired difference and its standard error (cluster-robust by user, the
    record's ``bucket``), and the share each turns off."""
    records = rollout_records(records, serving_plugin)
    features = [f["name"] for f in serving_plugin["features"]]
    arms_all = uplift.arm_matrix(records, features)
    pi = uplift.propensities(arms_all, records, features)
    rows = np.array([held_out(r) for r in records], dtype=bool) & (arms_all >= 0).any(axis=1)
    if not rows.any():
        raise ValidationError("no held-out randomised records to compare on: give features a `holdout` "
                              "or let exploration run (rollback.explore_share)")
    held = [r for r, h in zip(records, rows) if h]
    slow_ms = float((serving_plugin.get("rollback") or {}).get("slow_ms", 1000))
    xs = np.asarray([r["decision"]["x"] for r in held], dtype=np.float32)
    u = uplift.utility(uplift.outcome_matrix(held, slow_ms), costs)
    arms = arms_all[rows]
    offs = {}
    for key, plugin in (("serving", serving_plugin), ("candidate", candidate_plugin_)):
        b = load_model_bytes(plugin)
        offs[key] = uplift.off_mask(np.clip(onnx_predict(b, xs), 0.0, 1.0), plugin, model_features(b), features)
    out = uplift.compare_policies(offs["candidate"], offs["serving"], arms, u, pi[rows], groups=report.users(held))
    # The designs each feature's held-out rows were randomised with: {chance of on: rows}.
    out["propensity"] = {}
    for j, f in enumerate(features):
        chances, counts = np.unique(pi[rows, j][arms[:, j] >= 0], return_counts=True)
        if len(chances):
            out["propensity"][f] = {str(round(float(p), 4)): int(n) for p, n in zip(chances, counts)}
    for key in ("candidate", "serving"):
        out[f"off_{key}"] = {f: round(float(offs[key][arms[:, j] >= 0, j].mean()), 4)
                             for j, f in enumerate(features) if (arms[:, j] >= 0).any()}
    return out


def better(cmp: dict, margin: float, min_z: float) -> tuple[bool, str]:
    """Better = the held-out policy value gains at least `margin` engagements per
    request and the gain is at least `min_z` standard errors."""
    z = cmp["delta"] / cmp["se"] if cmp["se"] > 0 else (math.inf if cmp["delta"] > 0 else 0.0)
    cmp["z"] = z
    if cmp["delta"] < margin:
        return False, f"gain {cmp['delta']:+.4f} < --margin {margin:g} engagements/request"
    if z < min_z:
        return False, f"gain {cmp['delta']:+.4f} is only {z:.2f} standard errors (< --min-z {min_z:g})"
    return True, f"gain {cmp['delta']:+.4f} >= --margin {margin:g} and {z:.2f} >= --min-z {min_z:g} standard errors"


#: (name, outcome column, "bad" means): what the watch tests after a push.
WATCH_KPIS = (("errors", "error_risk", "more"), ("security", "security_risk", "more"),
              ("slow", "performance_cost", "more"), ("engagement", "engagement", "fewer"))


def kpi_watch(records, plugin: dict, before: str, after: str, alpha: float, baseline: int = 2000,
              min_n: int = 20) -> dict:
    """The new stack's KPIs under the pushed model (records decided with model
    `after`) against the previous one (the last `baseline` decided with
    `before`), with the filter's always-valid harm test (augur_stats.harm: the
    bad events land on the pushed model's requests more than their share) — for
    engagement, engagements landing on the previous model's. An alarm at ln M ≥
    ln(len(WATCH_KPIS) / alpha): valid however often the watch looks.
    A before/after comparison, not a randomised one: a traffic change at push
    time can trip it too; the watch then errs on the side of the previous model."""
    slow_ms = float((plugin.get("rollback") or {}).get("slow_ms", 1000))
    new = [r for r in rollout_records(records, plugin) if r["decision"].get("stack") == "new"]
    b = [r for r in new if r["decision"].get("model") == before][-baseline:]
    a = [r for r in new if r["decision"].get("model") == after]
    ob, oa = uplift.outcome_matrix(b, slow_ms), uplift.outcome_matrix(a, slow_ms)
    level = augur_stats.threshold(alpha / len(WATCH_KPIS))
    out = {"before": before, "after": after, "n_before": len(b), "n_after": len(a), "level": round(level, 3),
           "kpis": {}, "regressed": []}
    for name, col, kind in WATCH_KPIS:
        k = IMPACTS.index(col)
        kb = int(ob[:, k].sum()) if len(b) else 0
        ka = int(oa[:, k].sum()) if len(a) else 0
        ev = 0.0
        if len(a) >= min_n and len(b) >= min_n:
            ev = (augur_stats.harm(len(a), ka, len(b), kb) if kind == "more"
                  else augur_stats.harm(len(b), kb, len(a), ka))
        out["kpis"][name] = {"rate_before": round(kb / len(b), 4) if b else None,
                             "rate_after": round(ka / len(a), 4) if a else None, "evidence": round(ev, 3)}
        if ev >= level:
            out["regressed"].append(name)
    return out


# --------------------------------------------------------------------------
# Service mode
# --------------------------------------------------------------------------


class Journal:
    """One JSON line per action on stdout (and appended to `path`)."""

    def __init__(self, path=None, out=None):
        self.path, self.out, self.round = path, out or sys.stdout, 0
        self.lines: list[dict] = []

    def __call__(self, action: str, **evidence):
        line = {"ts": round(time.time(), 3), "round": self.round, "action": action, **evidence}
        self.lines.append(line)
        text = json.dumps(line, default=_json_default)
        print(text, file=self.out, flush=True)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text + "\n")


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def _r(v, nd=4):
    return None if v is None else round(float(v), nd)


class Service:
    """The retraining job as a service: :meth:`round` once per ``--every``.

    A round either watches the last push (until ``--watch-records`` new-stack
    requests were decided with it: ``kept``; or a KPI regressed: ``restored``)
    or trains a candidate on the log (when ``--min-new`` records arrived since
    the last training), compares it with the serving configuration on held-out
    randomised records and pushes it if it is better (:func:`better`)."""

    def __init__(self, args, journal: Journal):
        self.a, self.log = args, journal
        self.names = cell_names(args.augur)
        self.costs = uplift.parse_costs(args.harm_cost)
        self.thresholds = parse_thresholds(args.thresholds)
        self.watch: dict | None = None
        self.trained_at = -10**9  # record count at the last training

    def records(self):
        try:
            records, _ = read_log(self.a.log)
        except OSError as e:
            raise JobError(f"--log {self.a.log}: cannot read the access log ({e.strerror}); waiting for it") from None
        return records[-self.a.window:] if self.a.window else records

    def round(self, candidate=None) -> str:
        """One round; returns its last action. `candidate`: an ONNX model (bytes)
        to evaluate instead of training one (``--model FILE`` does the same)."""
        self.log.round += 1
        try:
            if self.watch is not None:
                return self._watch()
            return self._train_compare_push(candidate)
        except (JobError, TrainError) as e:  # ValidationError included
            self.log("skipped", reason=str(e)[:600])
            return "skipped"
        except Exception as e:  # noqa: BLE001 — a service outlives one bad round; the line says what broke
            self.log("error", reason=f"{type(e).__name__}: {str(e)[:600]}")
            return "error"

    def _watch(self) -> str:
        w = self.watch
        _, plugin = read_ecds(self.a.ecds)
        res = kpi_watch(self.records(), plugin, w["before"], w["version"], self.a.watch_alpha,
                        min_n=self.a.min_n)
        if res["regressed"]:
            back = push(w["previous"], self.a.ecds, self.a.admin, self.a.envoy_log,
                        version_info=f"restored-{w['before']}-r{self.log.round}", timeout=self.a.timeout)
            self.watch = None
            self.log("restored", version=w["version"], restored=w["before"], envoy=back.status,
                     applied_ms=_r(1000 * back.seconds, 1), serving=back.serving, watch=res)
            return "restored"
        if res["n_after"] >= self.a.watch_records:
            self.watch = None
            self.log("kept", version=w["version"], watch=res)
            return "kept"
        self.log("watching", version=w["version"], watch=res)
        return "watching"

    def _train_compare_push(self, onnx_bytes=None) -> str:
        a = self.a
        _, serving = read_ecds(a.ecds)
        records = self.records()
        mine = rollout_records(records, serving)
        version = f"{a.version}-r{self.log.round}"
        if onnx_bytes is None and a.model not in (*train.FAMILIES, "auto"):
            onnx_bytes = Path(a.model).read_bytes()
        if onnx_bytes is None:
            if len(mine) - self.trained_at < a.min_new:
                self.log("skipped", reason=f"{len(mine) - max(self.trained_at, 0)} new records since the last "
                                           f"training (< --min-new {a.min_new})", records=len(mine))
                return "skipped"
            self.trained_at = len(mine)
            notes: list[str] = []
            cand = build(records, serving, version, self.thresholds, a.augur, self.names, a.seed, a.min_evidence,
                         a.min_n, a.max_off_share, log=notes.append, family=a.model, gbm=a.gbm,
                         target_kind=a.targets, costs=self.costs)
            new_plugin = cand.plugin
            self.log("trained", version=version, family=cand.family, targets=cand.targets, records=cand.rows,
                     randomised=cand.randomised, held_out=cand.held_out, mae=_r(cand.mae), fit_s=_r(cand.fit_s, 2),
                     effects=[{"feature": e.feature, "impact": e.impact, "cell": e.cell, "uplift": _r(e.uplift),
                               "evidence": _r(e.evidence, 2)} for e in cand.effects],
                     thresholds=cand.thresholds, reasons=cand.reasons, check=cand.check)
        else:
            new_plugin, check = file_candidate(onnx_bytes, serving, version, self.thresholds, a.augur)
            self.log("trained", version=version, family="given", records=len(mine), check=check)
        cmp = evaluate(records, serving, new_plugin, self.costs)
        ok, why = better(cmp, a.margin, a.min_z)
        self.log("compared", version=version, serving=(serving.get("model") or {}).get("version"),
                 better=ok, reason=why, **{k: (_r(v) if isinstance(v, float) else v) for k, v in cmp.items()})
        if not ok:
            self.log("skipped", version=version, reason=f"not better: {why}")
            return "skipped"
        if not a.admin:
            raise JobError("--admin is required to push (host:port of Envoy's admin)")
        before = next((r["decision"].get("model") for r in reversed(mine) if r["decision"].get("stack") == "new"),
                      (serving.get("model") or {}).get("version"))
        res = push(new_plugin, a.ecds, a.admin, a.envoy_log, version_info=version, timeout=a.timeout)
        if res.status != "applied":
            self.log("refused" if res.status == "refused" else "no_reaction", version=version, message=res.message,
                     serving=res.serving)
            return "refused"
        self.watch = {"version": version, "before": before, "previous": serving}
        self.log("pushed", version=version, previous=before, applied_ms=_r(1000 * res.seconds, 1),
                 serving=res.serving, gain=_r(cmp["delta"]), se=_r(cmp["se"]))
        return "pushed"


def serve(args) -> int:
    """Rounds every ``--every`` seconds until ``--max-rounds`` or SIGTERM/SIGINT."""
    journal = Journal(args.journal)
    stop = threading.Event()
    why = {"reason": "max-rounds"}

    def on_signal(signum, _frame):
        why["reason"] = signal.Signals(signum).name
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    svc = Service(args, journal)
    journal("started", every_s=args.every, max_rounds=args.max_rounds or None, margin=args.margin, min_z=args.min_z,
            costs=svc.costs, targets=args.targets, watch_records=args.watch_records, watch_alpha=args.watch_alpha)
    while not stop.is_set() and (not args.max_rounds or journal.round < args.max_rounds):
        svc.round()
        if args.max_rounds and journal.round >= args.max_rounds:
            break
        stop.wait(args.every)
    journal("stopped", reason=why["reason"], rounds=journal.round)
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", required=True, help="Envoy access log with augur decision records")
    ap.add_argument("--ecds", required=True, help="the ECDS file Envoy watches (DiscoveryResponse)")
    ap.add_argument("--admin", help="Envoy admin address host:port (required unless --dry-run)")
    ap.add_argument("--envoy-log", help="Envoy's log file, to quote a refusal")
    ap.add_argument("--version", required=True, help="the new model's augur.version / model.version")
    ap.add_argument("--thresholds", default="",
                    help="set on every auto feature with the new model, e.g. performance_cost=0.25,error_risk=0.2")
    ap.add_argument("--model", default="mlp",
                    help="model family to train: mlp (default), gbm, linear, or auto (all three, lowest held-out "
                         "error wins); any other value is an ONNX file to push instead of training one")
    ap.add_argument("--gbm", default="lightgbm", choices=("lightgbm", "sklearn"), help="gbm implementation")
    ap.add_argument("--no-validate", action="store_true", help="with --model: skip the pre-push checks")
    ap.add_argument("--dry-run", action="store_true", help="train and validate, do not push")
    ap.add_argument("--out", help="also write the model here")
    ap.add_argument("--augur", default=train.DEFAULT_AUGUR)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--min-evidence", type=float, default=MIN_EVIDENCE,
                    help="evidence (ln of the always-valid mixture ratio, python/augur_tools/augur_stats.py) an effect needs "
                         "(default ln 1000: a false effect per test with probability <= 0.1%%)")
    ap.add_argument("--min-n", type=int, default=20, help="minimum randomised requests per arm and cell")
    ap.add_argument("--max-off-share", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for Envoy's verdict")
    ap.add_argument("--targets", choices=("cells", "uplift"), default=None,
                    help="training targets: cells (the chosen cells' uplifts; one-shot default) or uplift (the "
                         "T-learner with per-feature thresholds from the trade-off; service default)")
    ap.add_argument("--harm-cost", default="",
                    help="what one harm costs in engagements, e.g. error_risk=3,security_risk=10,performance_cost=1 "
                         "(the defaults)")
    svc = ap.add_argument_group("service mode")
    svc.add_argument("--every", type=float, help="run as a service: a round every SECONDS")
    svc.add_argument("--max-rounds", type=int, default=0, help="stop after this many rounds (0: until SIGTERM)")
    svc.add_argument("--journal", help="also append the JSON action lines to this file")
    svc.add_argument("--margin", type=float, default=0.01,
                     help="push only a candidate whose held-out policy value gains at least this many "
                          "engagements per request over the serving one")
    svc.add_argument("--min-z", type=float, default=2.0, help="... and whose gain is at least this many SEs")
    svc.add_argument("--min-new", type=int, default=200, help="retrain only after this many new records")
    svc.add_argument("--window", type=int, default=50000, help="train on the last N records (0: all)")
    svc.add_argument("--watch-records", type=int, default=500,
                     help="after a push, keep it once this many new-stack requests were decided with it")
    svc.add_argument("--watch-alpha", type=float, default=0.01,
                     help="false-restore probability of the always-valid KPI watch after a push")
    return ap


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with the mode's defaults filled in (``--targets``:
    uplift in service mode, cells in one-shot mode)."""
    args = parser().parse_args(argv)
    if args.every is not None and (args.every < 0 or args.max_rounds < 0):
        raise JobError("--every and --max-rounds must be >= 0")
    args.targets = args.targets or ("uplift" if args.every is not None else "cells")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.every is not None:
        return serve(args)
    t0 = time.monotonic()
    _, plugin = read_ecds(args.ecds)
    thresholds = parse_thresholds(args.thresholds)
    serving = (plugin.get("model") or {}).get("version", "(embedded default)")
    print(f"retrain: serving model {serving}; candidate {args.version}")
    if args.model not in (*train.FAMILIES, "auto"):
        onnx_bytes = Path(args.model).read_bytes()
        new_plugin, check = file_candidate(onnx_bytes, plugin, args.version, thresholds, args.augur,
                                           validate=not args.no_validate)
        print(f"  {args.model}: {check}")
    else:
        records, _ = read_log(args.log)
        names = cell_names(args.augur)
        cand = build(records, plugin, args.version, thresholds, args.augur, names, args.seed, args.min_evidence,
                     args.min_n, args.max_off_share, family=args.model, gbm=args.gbm, target_kind=args.targets,
                     costs=uplift.parse_costs(args.harm_cost))
        print_candidate(cand)
        onnx_bytes, new_plugin = cand.onnx, cand.plugin
    if args.out:
        Path(args.out).write_bytes(onnx_bytes)
    if args.dry_run:
        print(f"retrain: dry run, validated in {time.monotonic() - t0:.1f}s, not pushed")
        return 0
    if not args.admin:
        raise JobError("--admin is required to push")
    pushed_at = time.time()
    res = push(new_plugin, args.ecds, args.admin, args.envoy_log, version_info=args.version, timeout=args.timeout)
    total = time.monotonic() - t0
    if res.status == "applied":
        print(f"retrain: pushed {args.version}: applied by Envoy in {1000 * res.seconds:.0f} ms "
              f"(serving {res.serving}; pushed at {pushed_at:.3f}); job took {total:.1f}s")
        return 0
    if res.status == "refused":
        print(f"retrain: push of {args.version} REFUSED by Envoy ({res.message}); the last good configuration "
              f"(model {serving}, serving version {res.serving}) keeps serving; the ECDS file was restored to it")
        return 3
    print(f"retrain: push of {args.version}: {res.message}; Envoy serves version {res.serving}")
    return 4


if __name__ == "__main__":
    cli.run(main, [(ValidationError, "retrain: candidate NOT pushed, validation failed: ", 2),
                   ((JobError, TrainError, ValueError), "retrain: error: ", 1)])
