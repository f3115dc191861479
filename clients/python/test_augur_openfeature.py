"""Unit tests of the Python OpenFeature provider (no Envoy: see
python/tests/test_openfeature.py for the provider behind the real Envoy)."""

from pathlib import Path

from openfeature import api
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from augur_openfeature import REASONS, AugurProvider, augur_context, parse_flags

ROOT = Path(__file__).resolve().parents[2]
NEW = {
    "X-Augur-Stack": "new",
    "x-augur-flags": "@model=default-v1,a=on;enabled;72,b=off;kill_switch,c=off;holdout;12",
    "x-augur-decision": "req-1",
    "x-other": "ignored",
}


def client():
    api.set_provider(AugurProvider())
    return api.get_client()


def test_on_off_and_holdout_resolve_with_variant_reason_and_metadata():
    c = client()
    a = c.get_boolean_details("a", False, augur_context(NEW))
    assert (a.value, a.variant, a.reason) == (True, "on", Reason.TARGETING_MATCH)
    assert dict(a.flag_metadata) == {
        "stack": "new", "reason": "enabled", "model_ok": True, "model_version": "default-v1", "score": 72,
        "decision_id": "req-1",
    }
    b = c.get_boolean_details("b", True, augur_context(NEW))
    assert (b.value, b.variant, b.reason) == (False, "off", Reason.DISABLED)
    assert "score" not in b.flag_metadata
    h = c.get_boolean_details("c", True, augur_context(NEW))
    assert h.reason == Reason.SPLIT and h.flag_metadata["score"] == 12


def test_old_stack_turns_every_flag_off_by_the_split():
    d = client().get_boolean_details("a", True, augur_context({"x-augur-stack": "old"}))
    assert (d.value, d.reason, d.flag_metadata["reason"]) == (False, Reason.SPLIT, "old_stack")


def test_errors_give_the_default_and_say_what_to_fix():
    c = client()
    missing = c.get_boolean_details("zz", True, augur_context(NEW))
    assert missing.value is True and missing.error_code == ErrorCode.FLAG_NOT_FOUND
    assert "add it to the augur configuration" in missing.error_message
    assert c.get_boolean_details("a", True, augur_context({})).error_code == ErrorCode.INVALID_CONTEXT
    bad = c.get_boolean_details("a", True, augur_context({"x-augur-stack": "new", "x-augur-flags": "a=maybe"}))
    assert bad.error_code == ErrorCode.PARSE_ERROR
    s = c.get_string_details("a", "x", augur_context(NEW))
    assert s.error_code == ErrorCode.TYPE_MISMATCH and s.value == "x"


def test_model_failure_and_every_reason_is_mapped():
    model, ok, flags = parse_flags("@model=m.2;error,a=on;fallback_on")
    assert (model, ok, flags["a"]) == ("m.2", False, (True, "fallback_on", None))
    # Every reason augur can give (src/flags/mod.rs) has an OpenFeature reason.
    src = (ROOT / "src" / "flags" / "mod.rs").read_text()
    block = src[src.index("pub fn as_str(self)"):src.index("pub fn is_on(self)")]
    reasons = {line.split('=> "')[1].split('"')[0] for line in block.splitlines() if '=> "' in line}
    assert reasons == set(REASONS), reasons ^ set(REASONS)
