"""How the controller's configurations reach the proxies: Envoy's config plane,
never a channel of our own.

    ecds      every proxy's watched ECDS file rewritten in one rename (plain
              Envoy; `proxies[].ecds`)
    manifest  the mesh's own object rendered with the configuration and handed
              to the mesh: Istio's `WasmPlugin` (`spec.pluginConfig`) or Envoy
              Gateway's `EnvoyExtensionPolicy` (`spec.wasm[].config`), written
              to `out` and applied by the `apply` command (e.g. `["kubectl",
              "apply", "--server-side", "--field-manager=augur-controller",
              "--force-conflicts", "-f", "{file}"]`); istiod / Envoy Gateway
              then distribute it to every proxy over xDS. The rendered object
              carries only what the controller owns (identity and the
              configuration; for Envoy Gateway the whole wasm entry, a list
              item), so a server-side apply leaves the image, selector and
              routes to whoever manages them.

Either way the controller verifies the same fact afterwards: each proxy's
`augur_config_revision` gauge (the filter exports the configuration's
`revision`), since a mesh versions its xDS resources in its own words.
"""

from __future__ import annotations

import copy
import subprocess
import time
from pathlib import Path

from augur_tools.envoy import envoyconf

KINDS = ("ecds", "manifest")
# The mesh objects a manifest may carry the filter in (its configuration goes
# to `spec.pluginConfig` and to the augur `spec.wasm[]` entry's `config`).
PLUGIN_KINDS = ("WasmPlugin", "EnvoyExtensionPolicy")
APPLY_TIMEOUT_S = 60
# Kubernetes stores an object in etcd (≤ 1.5 MiB per object): a configuration
# with a big inline model must not be half-delivered.
MAX_OBJECT_BYTES = 1 << 20
# An object applied unchanged is applied again only after this long.
REAPPLY_AFTER_S = 60


class DeliveryError(ValueError):
    """A bad `delivery` setting: names the field and the fix."""


def load(raw, base: Path) -> dict:
    """The validated `delivery` setting, paths resolved against `base`."""
    if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
        raise DeliveryError(f"delivery.kind: must be one of {', '.join(KINDS)} (got {raw!r})")
    fields = {"ecds": {"kind"}, "manifest": {"kind", "manifest", "out", "apply"}}[raw["kind"]]
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise DeliveryError(f"delivery.{unknown[0]}: unknown for kind {raw['kind']}; it has {', '.join(sorted(fields))}")
    d = dict(raw)
    if d["kind"] == "ecds":
        return d
    for k in ("manifest", "out"):
        if not isinstance(d.get(k), str) or not d[k]:
            raise DeliveryError(f"delivery.{k}: required for kind manifest (a file path)")
        d[k] = str(Path(d[k]) if Path(d[k]).is_absolute() else (base / d[k]).resolve())
    if d["out"] == d["manifest"]:
        raise DeliveryError("delivery.out: must not be the manifest itself (the template would lose its other "
                            "objects); name a file of its own")
    apply = d.get("apply")
    if not isinstance(apply, list) or not apply or not all(isinstance(a, str) for a in apply) \
            or not any("{file}" in a for a in apply):
        raise DeliveryError('delivery.apply: a command as a list of strings naming "{file}", '
                            'e.g. ["kubectl", "apply", "-f", "{file}"]')
    try:
        template = Path(d["manifest"]).read_text()
    except OSError as e:
        raise DeliveryError(f"delivery.manifest: {e}") from None
    render(template, {})  # refuses a manifest without exactly one plugin object, now rather than at the first action
    return d


def render(template: str, plugin: dict) -> str:
    """The one plugin object of the YAML manifest `template` (a `WasmPlugin` or
    an `EnvoyExtensionPolicy` with one wasm entry rooted `augur`) with `plugin`
    as its configuration, as YAML. The manifest's other objects (routes,
    services) are not the controller's to apply."""
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(template) if isinstance(d, dict)]
    except yaml.YAMLError as e:
        raise DeliveryError(f"delivery.manifest: not YAML: {e}") from None
    found = [d for d in docs if d.get("kind") in PLUGIN_KINDS]
    if len(found) != 1:
        raise DeliveryError(f"delivery.manifest: needs exactly one {' or '.join(PLUGIN_KINDS)} object, "
                            f"found {len(found)} (deploy/istio/wasmplugin.yaml, deploy/envoy-gateway/augur.yaml)")
    src = found[0]
    meta = src.get("metadata") or {}
    doc = {"apiVersion": src.get("apiVersion"), "kind": src["kind"],
           "metadata": {k: meta[k] for k in ("name", "namespace") if k in meta}}
    if src["kind"] == "WasmPlugin":
        doc["spec"] = {"pluginConfig": plugin}
    else:
        entries = [w for w in (src.get("spec") or {}).get("wasm") or [] if isinstance(w, dict)]
        ours = [w for w in entries if w.get("rootID") == "augur"]
        if not ours and len(entries) == 1 and "rootID" not in entries[0]:
            ours = entries
        if len(ours) != 1:
            raise DeliveryError("delivery.manifest: the EnvoyExtensionPolicy needs one spec.wasm entry with "
                                "rootID augur (the filter's root_id)")
        doc["spec"] = {"wasm": [dict(copy.deepcopy(ours[0]), config=plugin)]}
    return yaml.safe_dump(doc, sort_keys=False)


def push(delivery: dict, plugin: dict, wasm: str | None, version: str, proxies: list) -> str | None:
    """Hands `plugin` to the config plane for `proxies` (ecds: their files;
    manifest: the mesh, for all of them). Returns why it failed, or None."""
    if delivery["kind"] == "ecds":
        try:
            for p in proxies:
                envoyconf.push_ecds(p["ecds"], plugin, wasm, version)
        except OSError as e:
            return f"writing {p['ecds']}: {e}"[:400]
        return None
    out = Path(delivery["out"])
    try:
        text = render(Path(delivery["manifest"]).read_text(), plugin)
    except (OSError, DeliveryError) as e:
        return str(e)[:400]
    if len(text.encode()) > MAX_OBJECT_BYTES:
        return (f"the rendered {out.name} is {len(text.encode())} bytes, above {MAX_OBJECT_BYTES} "
                "(MAX_OBJECT_BYTES: etcd keeps objects under 1.5 MiB); use a smaller model")
    # The mesh has this object already: applying it again makes no new push, so
    # only verify — but apply it again now and then, in case it was deleted.
    last = delivery.get("applied")
    if last and last[0] == text and time.monotonic() - last[1] < REAPPLY_AFTER_S:
        return None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        envoyconf.write_atomically(out, text)
    except OSError as e:
        return f"writing {out}: {e}"[:400]
    argv = [a.replace("{file}", str(out)) for a in delivery["apply"]]
    try:
        r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=APPLY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{argv[0]}: {e}"[:400]
    if r.returncode != 0:
        return f"{' '.join(argv)} exited {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}"
    delivery["applied"] = (text, time.monotonic())  # in memory only: a restarted controller applies once
    return None
