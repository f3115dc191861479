"""Envoy's admin API: the one client the harness, the benchmark, the retraining
job and the controller read Envoy's stats through.

`address` is an admin port (loopback) or "host:port".
"""

import http.client
import json
import re


def get(address, path, method="GET", timeout=5):
    """(status, body) of one admin request."""
    host, _, port = str(address).rpartition(":")
    conn = http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=timeout)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def stats(address, query="") -> dict:
    """{full stat name: value} from /stats?format=json (plus `query`, e.g. "&type=Counters");
    text readouts (e.g. ECDS's version_text) are strings."""
    _, body = get(address, "/stats?format=json" + query)
    return {s["name"]: s["value"] for s in json.loads(body).get("stats", []) if "value" in s}


def stat(address, name):
    """One stat's value, None when Envoy has no such stat."""
    return stats(address, f"&filter=^{re.escape(name)}$").get(name)


def ecds_counters(address, name="augur") -> dict:
    """The ECDS stats of filter `name` (update_success, update_rejected, config_fail,
    config_reload, version_text, ...) by their short name."""
    prefix = f"extension_config_discovery.http_filter.{name}."
    got = stats(address, "&filter=" + re.escape(prefix).replace("\\", "%5C"))
    return {k[len(prefix):]: v for k, v in got.items() if k.startswith(prefix)}


def serving_version(address, name="augur") -> str | None:
    """version_info of the last ECDS configuration Envoy accepted: the text
    readout ``extension_config_discovery.http_filter.<name>.version_text``
    (/config_dump's ecds_filters shows the last one *received*, even if refused)."""
    try:
        v = ecds_counters(address, name).get("version_text")
    except (OSError, ValueError):
        return None
    return v if isinstance(v, str) else None


def serving_revision(address, rollout) -> int | None:
    """The `revision` of the augur configuration Envoy last accepted for
    `rollout` (its `augur_config_revision` gauge); None when unreachable or
    no augur configuration of that rollout was loaded."""
    try:
        v = stat(address, f"wasmcustom.augur_config_revision.rollout.{rollout}")
    except (OSError, ValueError):
        return None
    return int(v) if isinstance(v, (int, float)) else None
