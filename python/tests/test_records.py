"""Reading decision records (augur_tools.records), without Envoy: what the
A/B report, the retraining job and the tests read from an access-log line."""

import json
import math

from augur_tools import records


def line(**kw):
    r = {"decision": {"features": {}, "cells": [0, 2]}, "status": 200, "duration_ms": 12, "signals": ""}
    r.update(kw)
    return r


def test_read_log_keeps_decided_lines_and_counts_the_rest(tmp_path):
    log = tmp_path / "access.log"
    log.write_text("\n".join([json.dumps(line()), "not json", json.dumps({"decision": "-"}), "", json.dumps(line())]))
    got, skipped = records.read_log(log)
    assert len(got) == 2 and skipped == 2
    assert len(records.read_records(log)) == 3, "read_records keeps every JSON line"
    assert records.read_records(tmp_path / "absent.log") == []


def test_kpis_of_a_record():
    k = records.kpi_values(line(status=503, duration_ms=40, signals="engaged,security"))
    assert k == {"error": 1.0, "latency_ms": 40.0, "engagement": 1.0, "security": 1.0}
    k = records.kpi_values(line(status=None, duration_ms="-"))
    assert k["error"] == 1.0, "no status is an error"
    assert math.isnan(k["latency_ms"]), "no duration is no latency"
    assert records.kpi_values(line())["error"] == 0.0


def test_arms_are_what_the_record_marks():
    r = line(decision={"features": {"a": {"on": True, "randomised": True}, "b": {"on": False, "randomised": True},
                                    "c": {"on": True, "reason": "model"}}, "cells": []})
    assert [records.arm(r, f) for f in ("a", "b", "c", "absent")] == ["treatment", "control", None, None]
    assert [records.p_on(r, f) for f in ("a", "b", "c")] == [None, None, None], "records without p_on"
    r["decision"]["features"]["a"]["p_on"] = 0.45
    r["decision"]["features"]["c"]["p_on"] = 0.5
    assert [records.p_on(r, f) for f in ("a", "b", "c")] == [0.45, None, None], "only randomised features have one"
    r["decision"]["features"]["a"]["p_on"] = 1
    assert records.p_on(r, "a") == 1.0, "a holdout rounded away at 4 decimals is still its own design"
    assert records.features_of([r]) == ["a", "b", "c"]


def test_cells_are_named_by_the_schema_or_by_number():
    r = line()
    assert records.cells(r, ["device=mobile", "device=tablet", "device=desktop"]) == ["device=mobile", "device=desktop"]
    assert records.cells(r) == ["cell_0", "cell_2"]
