"""Decision records, as Envoy's access log carries them: one JSON line per
request, ``{"decision": {...augur record...}, "status", "duration_ms",
"signals", ...}`` (augur_tools.envoy.envoyconf ACCESS_LOG_FORMAT).

What every tool reads from a record is defined here once: its KPIs (error,
latency, engagement, security), its rollback cells (the record's ``cells``,
named by ``augur schema``) and its arms — the record marks the features that
were ``randomised`` on that request (an A/B holdout or an exploration draw)
and, as ``p_on``, the chance by design that each was on; nothing here
re-derives them. The A/B report, the retraining job and the tests
read records through this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

KPIS = ("error", "latency_ms", "engagement", "security")


def read_records(path) -> list[dict]:
    """Every JSON line of an access log (other lines skipped; [] if there is no file yet)."""
    out = []
    if not Path(path).exists():
        return out
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# --------------------------------------------------------------------------
# Reading
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
        from augur_tools.loop import train

        return list(train.augur_schema(augur or train.DEFAULT_AUGUR).get("cells", []))
    except (ImportError, OSError, RuntimeError, ValueError):  # the report works from the log alone: cells by number
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


def p_on(r: dict, feature: str) -> float | None:
    """The chance, by design, that a randomised feature was on for this record
    (the record's ``p_on``: holdout and exploration designs differ across
    requests, so pooled comparisons must weigh or stratify by it); None when the
    feature was not randomised or the record predates the field."""
    f = r["decision"].get("features", {}).get(feature)
    if not isinstance(f, dict) or f.get("randomised") is not True:
        return None
    p = f.get("p_on")
    # 1.0: a holdout so small that 4 decimals round it away (still a design of its own).
    return float(p) if isinstance(p, (int, float)) and 0.0 < p <= 1.0 else None


def features_of(records: Iterable[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        for name in r["decision"].get("features", {}):
            seen.setdefault(name, None)
    return list(seen)
