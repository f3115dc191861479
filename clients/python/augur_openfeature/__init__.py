"""OpenFeature provider for augur (Python, `openfeature-sdk` 0.10).

augur runs in Envoy in front of the app and decides, per request, which stack
serves it and which features are on. It tells the app in request headers:

    x-augur-stack:     old | new
    x-augur-features:  new_checkout,hd_images             (new stack only)
    x-augur-flags:     @model=default-v1,new_checkout=on;enabled;72,search_v2=off;security_risk;41
    x-augur-decision:  <the decision id: the request id in augur's access log>

This provider resolves a flag from those headers: the app hands the request's
headers to OpenFeature as evaluation context (`augur_context(headers)`, per call
or as the transaction context), and `client.get_boolean_details("search_v2",
False)` returns augur's decision with its variant (`on`/`off`), an OpenFeature
reason and flag metadata (augur's own reason, score, model version, stack,
decision id). augur removes every `x-augur-*` header a client sends before it
decides, so these cannot be forged from outside.

    from openfeature import api
    from augur_openfeature import AugurProvider, augur_context

    api.set_provider(AugurProvider())
    client = api.get_client()
    details = client.get_boolean_details("search_v2", False, augur_context(request.headers))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata

__all__ = ["HEADERS", "REASONS", "AugurProvider", "augur_context", "parse_flags"]

PREFIX = "x-augur-"
HEADERS = tuple(PREFIX + h for h in ("stack", "features", "flags", "decision"))

# augur reason -> OpenFeature reason. Per-request targeting (model scores,
# segment rules, prerequisites) is TARGETING_MATCH; operator overrides are
# STATIC (on) or DISABLED (off, kill switch, automated rollback); the rollout
# split, A/B holdouts and rollback exploration are SPLIT; a failed model's
# fallbacks are DEFAULT.
REASONS = {
    "enabled": Reason.TARGETING_MATCH,
    "forced_on": Reason.STATIC,
    "fallback_on": Reason.DEFAULT,
    "fallback_off": Reason.DEFAULT,
    "global_off": Reason.DISABLED,
    "kill_switch": Reason.DISABLED,
    "denied_segment": Reason.TARGETING_MATCH,
    "not_in_allowed_segment": Reason.TARGETING_MATCH,
    "prerequisite_off": Reason.TARGETING_MATCH,
    "performance_cost": Reason.TARGETING_MATCH,
    "error_risk": Reason.TARGETING_MATCH,
    "security_risk": Reason.TARGETING_MATCH,
    "low_engagement": Reason.TARGETING_MATCH,
    "low_score": Reason.TARGETING_MATCH,
    "old_stack": Reason.SPLIT,
    "holdout": Reason.SPLIT,
    "rolled_back": Reason.DISABLED,
    "exploring": Reason.SPLIT,
    "probing": Reason.SPLIT,
}


def augur_context(headers) -> EvaluationContext:
    """The evaluation context for one request: augur's headers (names are
    matched case-insensitively; any mapping or list of pairs), with the decision
    id as targeting key."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    attrs = {k.lower(): v for k, v in items if k.lower() in HEADERS}
    return EvaluationContext(targeting_key=attrs.get(PREFIX + "decision"), attributes=attrs)


def parse_flags(value: str):
    """`x-augur-flags` -> (model version, model_ok, {feature: (on, reason, score)})."""
    model, model_ok, flags = None, True, {}
    for entry in filter(None, (e.strip() for e in value.split(","))):
        name, sep, rest = entry.partition("=")
        if not sep:
            raise ValueError(f"x-augur-flags: entry {entry!r} has no '='")
        fields = rest.split(";")
        if name == "@model":
            model = fields[0]
            model_ok = "error" not in fields[1:]
            continue
        if fields[0] not in ("on", "off") or len(fields) < 2 or len(fields) > 3:
            raise ValueError(f"x-augur-flags: entry {entry!r} is not <feature>=<on|off>;<reason>[;<score>]")
        score = int(fields[2]) if len(fields) == 3 else None
        flags[name] = (fields[0] == "on", fields[1], score)
    return model, model_ok, flags


class AugurProvider(AbstractProvider):
    """Boolean flags from augur's decision for the request in the evaluation
    context. Other flag types resolve to their default with TYPE_MISMATCH."""

    def get_metadata(self) -> Metadata:
        return Metadata(name="augur")

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        attrs = dict(evaluation_context.attributes) if evaluation_context else {}
        stack = attrs.get(PREFIX + "stack")
        if stack is None:
            return _error(
                default_value,
                ErrorCode.INVALID_CONTEXT,
                "no x-augur-stack in the evaluation context: pass augur_context(request.headers), "
                "and check that the request came through Envoy with the augur filter",
            )
        decision = attrs.get(PREFIX + "decision")
        if stack != "new":
            # The old stack serves the previous release: none of the new features.
            meta = {"stack": stack, "reason": "old_stack"}
            return FlagResolutionDetails(value=False, variant="off", reason=Reason.SPLIT, flag_metadata=meta)
        raw = attrs.get(PREFIX + "flags")
        if raw is None:
            # An augur without the flags header: the feature list still decides.
            on = flag_key in (attrs.get(PREFIX + "features") or "").split(",")
            meta = {"stack": stack}
            if decision:
                meta["decision_id"] = decision
            return FlagResolutionDetails(value=on, variant="on" if on else "off", reason=Reason.UNKNOWN, flag_metadata=meta)
        try:
            model, model_ok, flags = parse_flags(raw)
        except ValueError as e:
            return _error(default_value, ErrorCode.PARSE_ERROR, str(e))
        if flag_key not in flags:
            return _error(
                default_value,
                ErrorCode.FLAG_NOT_FOUND,
                f"augur decided no feature {flag_key!r} (it decided: {', '.join(flags) or 'none'}); "
                "add it to the augur configuration's features",
            )
        on, reason, score = flags[flag_key]
        meta = {"stack": stack, "reason": reason, "model_ok": model_ok}
        if model:
            meta["model_version"] = model
        if score is not None:
            meta["score"] = score
        if decision:
            meta["decision_id"] = decision
        return FlagResolutionDetails(
            value=on, variant="on" if on else "off", reason=REASONS.get(reason, Reason.UNKNOWN), flag_metadata=meta
        )

    def _mismatch(self, flag_key, default_value):
        return _error(default_value, ErrorCode.TYPE_MISMATCH, f"augur flags are boolean; {flag_key!r} was asked as another type")

    def resolve_string_details(self, flag_key, default_value, evaluation_context=None):
        return self._mismatch(flag_key, default_value)

    def resolve_integer_details(self, flag_key, default_value, evaluation_context=None):
        return self._mismatch(flag_key, default_value)

    def resolve_float_details(self, flag_key, default_value, evaluation_context=None):
        return self._mismatch(flag_key, default_value)

    def resolve_object_details(self, flag_key, default_value: Sequence | Mapping, evaluation_context=None):
        return self._mismatch(flag_key, default_value)


def _error(default_value, code, message):
    return FlagResolutionDetails(value=default_value, reason=Reason.ERROR, error_code=code, error_message=message)
