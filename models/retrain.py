#!/usr/bin/env python3
"""The external retraining job: records in, a validated model pushed into the running Envoy.

    python models/retrain.py --log .run/loop/access.log --ecds .run/loop/ecds/augur.json \\
        --admin 127.0.0.1:9901 --envoy-log .run/loop/envoy.log --version loop-v2 \\
        [--thresholds performance_cost=0.25,error_risk=0.2,security_risk=0.2] [--dry-run]

1. **Read** the real Envoy's outputs: access-log lines ``{"decision": {...}, "status",
   "duration_ms", "signals", ...}`` — the decision record joined with its outcome.
2. **Estimate** each feature's effect from the *randomised* records only (the
   record marks them, see models/report.py), per rollback cell (device,
   location, path class, method, history low/high — the record's ``cells``,
   named through ``augur schema``), for
   each impact: performance_cost = P(latency >= rollback.slow_ms), error_risk =
   P(5xx or no status), engagement = P(app engagement), security_risk = P(app
   security event). The effect of a feature in a cell is the uplift on − off;
   cells are chosen greedily, most specific first (largest significant uplift,
   then the rest re-estimated without the rows already explained), and only
   uplifts whose evidence (models/augur_stats.py, the filter's own statistic)
   reaches --min-evidence on >= --min-n requests per arm count. A request's
   target impact is the uplift of the chosen cell it is in (0 elsewhere).
3. **Train** a model on (record ``x``, target) with models/train.py's
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
   any feature off for more than --max-off-share of requests.
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

Reusable: :func:`push` (also used by the tests and integration/loop_demo.py),
:func:`estimate_effects`, :func:`targets`, :func:`build`.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "integration"))

import augur_stats  # noqa: E402
import report  # noqa: E402
import train  # noqa: E402
from train import IMPACTS, TrainError  # noqa: E402

import envoyconf  # noqa: E402

THRESHOLD_FIELDS = {
    "performance_cost": "max_performance_cost",
    "error_risk": "max_error_risk",
    "security_risk": "max_security_risk",
    "engagement": "min_engagement",
    "score": "min_score",
}


class JobError(RuntimeError):
    """Stops the job with a message (exit 1)."""


class ValidationError(JobError):
    """The candidate model failed a pre-push check (exit 2): nothing was pushed."""


# --------------------------------------------------------------------------
# Effects from randomised records
# --------------------------------------------------------------------------


def outcome_bits(r: dict, slow_ms: float) -> dict:
    """The four impacts' observable events on one record (1.0 / 0.0)."""
    d = r.get("duration_ms")
    return {
        "performance_cost": 1.0 if isinstance(d, (int, float)) and d >= slow_ms else 0.0,
        "error_risk": 1.0 if report.is_error(r) else 0.0,
        "engagement": 1.0 if "engaged" in report.signals(r) else 0.0,
        "security_risk": 1.0 if "security" in report.signals(r) else 0.0,
    }


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
    `names`: cell names by index (`report.cell_names`)."""
    effects = []
    prepared = [(r, report.cells(r, names), outcome_bits(r, slow_ms)) for r in records]
    for f in features:
        arms = []
        for r, cs, bits in prepared:
            a = report.arm(r, f)
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
    (`cell_lists`: each row's cell names, `report.cells`)."""
    index = {(e.feature, e.impact): [] for e in effects}
    for e in effects:
        index[(e.feature, e.impact)].append(e)
    y = np.zeros((len(cell_lists), len(features) * len(IMPACTS)), dtype=np.float32)
    for i, cells in enumerate(cell_lists):
        cs = set(cells)
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
    doc = json.loads(Path(path).read_text())
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
    out = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        k, _, v = part.partition("=")
        k = k.strip()
        if k not in THRESHOLD_FIELDS:
            raise JobError(f"--thresholds: unknown {k!r} (one of {', '.join(THRESHOLD_FIELDS)})")
        out[THRESHOLD_FIELDS[k]] = float(v)
    return out


def candidate_plugin(plugin: dict, onnx_bytes: bytes, version: str, thresholds: dict) -> dict:
    new = json.loads(json.dumps(plugin))
    new["model"] = dict(new.get("model") or {}, onnx_base64=base64.b64encode(onnx_bytes).decode(), version=version)
    for f in new.get("features", []):
        if f.get("override", "auto") == "auto":
            f.update(thresholds)
    return new


def check_config(augur: str, plugin: dict) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(plugin, f)
        path = f.name
    try:
        p = subprocess.run([augur, "check-config", path], capture_output=True, text=True, timeout=120)
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


def _admin_get(admin, path, timeout=5):
    host, _, port = str(admin).rpartition(":")
    conn = http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def ecds_counters(admin, name="augur") -> dict:
    prefix = f"extension_config_discovery.http_filter.{name}."
    _, body = _admin_get(admin, "/stats?format=json&filter=" + re.escape(prefix).replace("\\", "%5C"))
    out = {}
    for s in json.loads(body).get("stats", []):
        if "value" in s and s["name"].startswith(prefix):
            out[s["name"][len(prefix):]] = s["value"]
    return out


def serving_version(admin, name="augur") -> str | None:
    """version_info of the last ECDS configuration Envoy accepted: the text
    readout ``extension_config_discovery.http_filter.<name>.version_text``
    (/config_dump's ecds_filters shows the last one *received*, even if refused)."""
    try:
        v = ecds_counters(admin, name).get("version_text")
    except (OSError, ValueError):
        return None
    return v if isinstance(v, str) else None


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
    return base64.b64decode(b64) if b64 else (HERE / "default.onnx").read_bytes()


def model_features(onnx_bytes: bytes) -> list[str]:
    import onnx

    meta = {p.key: p.value for p in onnx.load_from_string(onnx_bytes).metadata_props}
    return [f for f in meta.get("augur.features", "").split(",") if f]


def onnx_predict(onnx_bytes: bytes, xs: np.ndarray) -> np.ndarray:
    """The model's raw output (onnxruntime); the filter clamps it to [0, 1]."""
    return train.ort_predict(onnx_bytes, xs)


def off_share(pred: np.ndarray, plugin: dict, model_features: list[str]) -> dict:
    """Per auto feature: share of rows the thresholds would turn off (model reasons only)."""
    out = {}
    for f in plugin.get("features", []):
        if f.get("override", "auto") != "auto" or f["name"] not in model_features:
            continue
        i = model_features.index(f["name"]) * len(IMPACTS)
        perf, err, eng, sec = (pred[:, i + k] for k in range(4))
        off = (
            (sec > f.get("max_security_risk", 0.5))
            | (err > f.get("max_error_risk", 0.3))
            | (perf > f.get("max_performance_cost", 0.7))
            | (eng < f.get("min_engagement", 0.0))
        )
        out[f["name"]] = float(off.mean()) if len(off) else 0.0
    return out


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


def build(records, plugin, version, thresholds, augur, names, seed=7, min_evidence=MIN_EVIDENCE, min_n=20,
          max_off_share=0.5, max_mae=0.05, log=print, family="mlp", gbm="lightgbm") -> Candidate:
    """Effects → targets → model (``family``: mlp, gbm, linear or auto) → ONNX →
    every pre-push check. Raises ValidationError."""
    rollout = plugin.get("name", "default")
    records = [r for r in records if r["decision"].get("rollout") == rollout and r["decision"].get("x")]
    if len(records) < 200:
        raise ValidationError(f"only {len(records)} records of rollout {rollout!r}: not enough to retrain")
    features = [f["name"] for f in plugin["features"]]
    slow_ms = float((plugin.get("rollback") or {}).get("slow_ms", 1000))
    randomised = {f: sum(1 for r in records if report.arm(r, f) is not None) for f in features}
    effects = estimate_effects(records, features, names, slow_ms, min_evidence, min_n)
    log(f"  data: {len(records)} records; randomised per feature: "
        + ", ".join(f"{f} {n}" for f, n in randomised.items()))
    if not effects:
        log("  effects: none significant (every target impact is 0)")
    for e in effects:
        log(f"  effect: {e.feature:<16}{e.impact:<17}{e.cell:<20} on {100 * e.rate_on:5.1f}% "
            f"(n={e.n_on}) vs off {100 * e.rate_off:5.1f}% (n={e.n_off}): uplift {e.uplift:+.2f}, evidence {e.evidence:.1f}")
    xs = np.asarray([r["decision"]["x"] for r in records], dtype=np.float32)
    cell_lists = [report.cells(r, names) for r in records]
    y = targets(cell_lists, features, effects)
    # 20% of users, sticky: the record's rollout bucket.
    held = np.array([isinstance(r["decision"].get("bucket"), int) and r["decision"]["bucket"] % 5 == 0
                     for r in records])
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
        extra_metadata={"augur.trainer": f"models/retrain.py model={family} records={len(records)} "
                                         f"effects={len(effects)}"},
    )
    # 1. the ONNX graph computes what was fitted (onnxruntime)
    train.check_ort_matches(onnx_bytes, model, xs[:2000])
    # 2. the filter's loader takes it (and says which kernel runs it)
    with tempfile.NamedTemporaryFile(suffix=".onnx", delete=False) as f:
        f.write(onnx_bytes)
        model_path = f.name
    try:
        info = train.inspect_model(augur, model_path)
    except TrainError as e:
        raise ValidationError(f"augur inspect-model cannot load the candidate: {e}") from e
    finally:
        os.unlink(model_path)
    want = {"features": features, "version": version, "schema": schema["schema"]}
    if {k: info.get(k) for k in want} != want:
        raise ValidationError(f"augur inspect-model reports {info}, expected {want}")
    # 3. the configuration with the inline model compiles (shapes match the features)
    new_plugin = candidate_plugin(plugin, onnx_bytes, version, thresholds)
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
    wiped = {f: s for f, s in off_after.items() if s > max_off_share}
    if wiped:
        raise ValidationError(
            "the pushed policy would turn off "
            + ", ".join(f"{f} for {100 * s:.0f}%" for f, s in wiped.items())
            + f" of held-out requests (> --max-off-share {max_off_share:.0%})"
        )
    return Candidate(onnx_bytes, new_plugin, effects, len(records), randomised, int(held.sum()), mae,
                     off_before, off_after, fit_s, info, check, family)


def print_candidate(c: Candidate, out=sys.stdout):
    print(f"  model {c.family} fit {c.fit_s:.1f}s; held-out {c.held_out} records, MAE vs targets {c.mae:.4f}; "
          f"filter: {json.dumps(c.inspect)}; check-config: {c.check}", file=out)
    print("  share of held-out new-stack requests the pushed thresholds turn off: "
          + ", ".join(f"{f} {100 * c.off_before.get(f, 0):.0f}% -> {100 * s:.0f}%" for f, s in c.off_after.items()),
          file=out)


def main(argv: Sequence[str] | None = None) -> int:
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
                    help="evidence (ln of the always-valid mixture ratio, models/augur_stats.py) an effect needs "
                         "(default ln 1000: a false effect per test with probability <= 0.1%%)")
    ap.add_argument("--min-n", type=int, default=20, help="minimum randomised requests per arm and cell")
    ap.add_argument("--max-off-share", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for Envoy's verdict")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    doc, plugin = read_ecds(args.ecds)
    thresholds = parse_thresholds(args.thresholds)
    serving = (plugin.get("model") or {}).get("version", "(embedded default)")
    print(f"retrain: serving model {serving}; candidate {args.version}")
    if args.model not in (*train.FAMILIES, "auto"):
        onnx_bytes = Path(args.model).read_bytes()
        new_plugin = candidate_plugin(plugin, onnx_bytes, args.version, thresholds)
        if not args.no_validate:
            with tempfile.NamedTemporaryFile(suffix=".onnx", delete=False) as f:
                f.write(onnx_bytes)
            try:
                info = train.inspect_model(args.augur, f.name)
            except TrainError as e:
                raise ValidationError(f"augur inspect-model (tract) cannot load {args.model}: {e}") from e
            finally:
                os.unlink(f.name)
            print(f"  tract: {json.dumps(info)}; check-config: {check_config(args.augur, new_plugin)}")
    else:
        records, skipped = report.read_log(args.log)
        names = report.cell_names(args.augur)
        cand = build(records, plugin, args.version, thresholds, args.augur, names, args.seed, args.min_evidence,
                     args.min_n, args.max_off_share, family=args.model, gbm=args.gbm)
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
    try:
        sys.exit(main())
    except ValidationError as e:
        print(f"retrain: candidate NOT pushed, validation failed: {e}", file=sys.stderr)
        sys.exit(2)
    except (JobError, TrainError) as e:
        print(f"retrain: error: {e}", file=sys.stderr)
        sys.exit(1)
