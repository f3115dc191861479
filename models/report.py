#!/usr/bin/env python3
"""A/B report: the effect of each feature on each KPI, from the real Envoy's records.

    python models/report.py .run/loop/access.log [--config plugin.json] [--by device|cell] [--json]

Input: Envoy access-log lines, each ``{"decision": {...augur record...}, "status",
"duration_ms", "signals", ...}`` (integration/envoyconf.py ACCESS_LOG_FORMAT).
Lines that are not JSON, or whose ``decision`` is not an object (requests the
filter never saw), are skipped and counted.

Which records count, per feature F: those whose record marks F as
``randomised`` (its on/off state was random on that request: an A/B holdout or
an exploration draw), in the arm its ``on`` says — treatment when on, control
when off. The filter decides which requests are randomised and writes it in the
record; this report does not re-derive it. Everything else (model / rule
decisions, rolled_back, old stack) is left out: comparing it would measure who
gets the feature, not what the feature does.

Cells (``--by cell``) are the record's ``cells``, named by ``augur schema``.

KPIs per record: error = status >= 500 or no status (0); latency = duration_ms
(Envoy's request duration); engagement = the app reported one (``signals``
contains ``engaged``); security = the app flagged the request (``signals``
contains ``security``). Effect = treatment − control, with a 95% confidence
interval (normal approximation: unpooled standard error for proportions,
Welch for the latency mean) and a two-sided p-value (pooled two-proportion z
test; Welch z for latency).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Iterable, Sequence

KPIS = ("error", "latency_ms", "engagement", "security")
Z95 = 1.959963984540054

# --------------------------------------------------------------------------
# Reading records
# --------------------------------------------------------------------------


def read_log(path: str | Path) -> tuple[list[dict], int]:
    """(access-log lines with a decision object, lines skipped)."""
    out, skipped = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if not isinstance(r, dict) or not isinstance(r.get("decision"), dict):
                skipped += 1
                continue
            out.append(r)
    return out, skipped


def is_error(r: dict) -> bool:
    s = r.get("status")
    return not isinstance(s, int) or s == 0 or s >= 500


def signals(r: dict) -> str:
    s = r.get("signals")
    return s if isinstance(s, str) else ""


def kpi_values(r: dict) -> dict:
    d = r.get("duration_ms")
    return {
        "error": 1.0 if is_error(r) else 0.0,
        "latency_ms": float(d) if isinstance(d, (int, float)) else float("nan"),
        "engagement": 1.0 if "engaged" in signals(r) else 0.0,
        "security": 1.0 if "security" in signals(r) else 0.0,
    }


def cell_names(augur: str | None = None) -> list[str]:
    """Rollback cell names by index, from `augur schema` (the filter's own list)."""
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import train  # noqa: WPS433

        return list(train.augur_schema(augur or train.DEFAULT_AUGUR).get("cells", []))
    except Exception:  # the report works from the log alone: cells by number
        return []


def cells(r: dict, names: Sequence[str] = ()) -> list[str]:
    """A record's rollback cells (one per attribute group), by name."""
    out = []
    for c in r["decision"].get("cells") or ():
        out.append(names[c] if isinstance(c, int) and 0 <= c < len(names) else f"cell_{c}")
    return out


# --------------------------------------------------------------------------
# Arms
# --------------------------------------------------------------------------


def holdout_features(records: Iterable[dict], config: dict | None) -> set[str]:
    if config is not None:
        return {f["name"] for f in config.get("features", []) if float(f.get("holdout", 0) or 0) > 0}
    out = set()
    for r in records:
        for name, f in r["decision"].get("features", {}).items():
            if f.get("reason") == "holdout":
                out.add(name)
    return out


def arm(r: dict, feature: str) -> str | None:
    """'treatment', 'control' or None (not randomised) for one record and feature,
    as the record says."""
    f = r["decision"].get("features", {}).get(feature)
    if not isinstance(f, dict) or f.get("randomised") is not True:
        return None
    return "treatment" if f.get("on") else "control"


def features_of(records: Iterable[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        for name in r["decision"].get("features", {}):
            seen.setdefault(name, None)
    return list(seen)


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------


def p_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def proportion_effect(k_t: int, n_t: int, k_c: int, n_c: int) -> dict:
    out = {"n_treatment": n_t, "n_control": n_c, "events_treatment": k_t, "events_control": k_c}
    if n_t == 0 or n_c == 0:
        return dict(out, treatment=None, control=None, effect=None, ci95=None, p=None)
    pt, pc = k_t / n_t, k_c / n_c
    se = math.sqrt(pt * (1 - pt) / n_t + pc * (1 - pc) / n_c)
    pool = (k_t + k_c) / (n_t + n_c)
    se0 = math.sqrt(pool * (1 - pool) * (1 / n_t + 1 / n_c))
    p = 1.0 if se0 == 0 else p_two_sided((pt - pc) / se0)
    diff = pt - pc
    return dict(out, treatment=pt, control=pc, effect=diff, ci95=[diff - Z95 * se, diff + Z95 * se], p=p)


def mean_effect(xs_t: Sequence[float], xs_c: Sequence[float]) -> dict:
    xs_t = [x for x in xs_t if not math.isnan(x)]
    xs_c = [x for x in xs_c if not math.isnan(x)]
    n_t, n_c = len(xs_t), len(xs_c)
    out = {"n_treatment": n_t, "n_control": n_c}
    if n_t < 2 or n_c < 2:
        return dict(out, treatment=None, control=None, effect=None, ci95=None, p=None)
    mt, mc = sum(xs_t) / n_t, sum(xs_c) / n_c
    vt = sum((x - mt) ** 2 for x in xs_t) / (n_t - 1)
    vc = sum((x - mc) ** 2 for x in xs_c) / (n_c - 1)
    se = math.sqrt(vt / n_t + vc / n_c)
    diff = mt - mc
    p = (1.0 if diff == 0 else 0.0) if se == 0 else p_two_sided(diff / se)
    return dict(out, treatment=mt, control=mc, effect=diff, ci95=[diff - Z95 * se, diff + Z95 * se], p=p)


def compare(treat: list[dict], ctrl: list[dict]) -> dict:
    kt = [kpi_values(r) for r in treat]
    kc = [kpi_values(r) for r in ctrl]
    out = {}
    for k in KPIS:
        if k == "latency_ms":
            out[k] = mean_effect([v[k] for v in kt], [v[k] for v in kc])
        else:
            out[k] = proportion_effect(
                int(sum(v[k] for v in kt)), len(kt), int(sum(v[k] for v in kc)), len(kc)
            )
    return out


def report(records: list[dict], config: dict | None = None, by: str | None = None, names: Sequence[str] | None = None,
           min_n: int = 1) -> dict:
    """The whole report as a dict (what --json prints)."""
    names_of_cells = cell_names() if names is None and by == "cell" else (names or [])
    holdouts = holdout_features(records, config)
    names = [f["name"] for f in config["features"]] if config else features_of(records)
    out = {
        "records": len(records),
        "new_stack": sum(1 for r in records if r["decision"].get("stack") == "new"),
        "holdout_features": sorted(holdouts),
        "features": {},
    }
    for name in names:
        treat, ctrl = [], []
        for r in records:
            a = arm(r, name)
            if a == "treatment":
                treat.append(r)
            elif a == "control":
                ctrl.append(r)
        entry = {"overall": compare(treat, ctrl)}
        if by:
            groups: dict[str, tuple[list, list]] = {}
            for arm_list, ix in ((treat, 0), (ctrl, 1)):
                for r in arm_list:
                    keys = segment_keys(r, by, names_of_cells)
                    for key in keys:
                        groups.setdefault(key, ([], []))[ix].append(r)
            entry["by_" + by] = {
                key: compare(t, c) for key, (t, c) in sorted(groups.items()) if len(t) >= min_n and len(c) >= min_n
            }
        out["features"][name] = entry
    return out


def segment_keys(r: dict, by: str, names: Sequence[str]) -> list[str]:
    if by == "device":
        return [r["decision"].get("device", "unknown")]
    if by == "cell":
        return cells(r, names)
    raise ValueError(f"unknown --by {by!r} (device or cell)")


# --------------------------------------------------------------------------
# Text output
# --------------------------------------------------------------------------


def _fmt(k: str, v: float | None, signed=False) -> str:
    if v is None:
        return "-"
    if k == "latency_ms":
        return f"{v:+.1f}" if signed else f"{v:.1f}"
    return f"{100 * v:+.2f}%" if signed else f"{100 * v:.2f}%"


def _fmt_p(p):
    if p is None:
        return "-"
    return "<1e-6" if p < 1e-6 else f"{p:.2g}"


def print_block(label: str, res: dict, out=sys.stdout) -> None:
    for k in KPIS:
        e = res[k]
        ci = "-" if e["ci95"] is None else f"[{_fmt(k, e['ci95'][0], True)}, {_fmt(k, e['ci95'][1], True)}]"
        print(
            f"  {label:<34}{k:<11}{e['n_treatment']:>7}{e['n_control']:>7}{_fmt(k, e['treatment']):>10}"
            f"{_fmt(k, e['control']):>10}{_fmt(k, e['effect'], True):>10}  {ci:<22}{_fmt_p(e['p']):>7}",
            file=out,
        )


def print_report(rep: dict, by: str | None, out=sys.stdout) -> None:
    print(
        f"A/B report: {rep['records']} records, {rep['new_stack']} on the new stack; "
        f"features with a holdout: {', '.join(rep['holdout_features']) or 'none'}",
        file=out,
    )
    print(
        "  treatment / control = the feature on / off on requests whose record marks it randomised\n"
        "  (A/B holdout or exploration draw). Effect = treatment - control, 95% CI, two-sided p.",
        file=out,
    )
    head = f"  {'feature':<34}{'kpi':<11}{'n_on':>7}{'n_ctl':>7}{'on':>10}{'control':>10}{'effect':>10}  {'95% CI':<22}{'p':>7}"
    for name, entry in rep["features"].items():
        print(head, file=out)
        print_block(name, entry["overall"], out)
        for key, res in entry.get("by_" + by, {}).items() if by else ():
            print_block(f"{name} | {key}", res, out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", help="Envoy access log with augur decision records")
    ap.add_argument("--config", help="the plugin configuration (JSON) the records were decided with")
    ap.add_argument("--by", choices=("device", "cell"), help="also break each feature down by segment")
    ap.add_argument("--min-n", type=int, default=30, help="with --by: minimum records per arm to show a segment")
    ap.add_argument("--rollout", help="only records of this rollout name")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    records, skipped = read_log(args.log)
    if args.rollout:
        records = [r for r in records if r["decision"].get("rollout") == args.rollout]
    config = json.loads(Path(args.config).read_text()) if args.config else None
    rep = report(records, config, args.by, min_n=args.min_n)
    rep["skipped_lines"] = skipped
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print_report(rep, args.by)
        if skipped:
            print(f"  ({skipped} log lines were not decision records and were skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
