"""The controller's two ways into the config plane (`delivery`): ECDS files and
the mesh's own object (Istio `WasmPlugin`, Envoy Gateway
`EnvoyExtensionPolicy`) rendered and applied.

There is no Kubernetes here: the manifest test applies the rendered object with
`mesh_stand_in.py`, which does what istiod does with it (its configuration to
the proxy as ECDS, versioned in the mesh's own words) for one real Envoy 1.40.
The controller must then verify the proxy by the filter's own
`augur_config_revision` gauge, since the ECDS version is no longer its own.
"""

import io
import json
import sys
from pathlib import Path

import pytest
import yaml

from augur_tools.envoy import admin, envoyconf, harness
from augur_tools.loop import controller, delivery

ROOT = harness.ROOT
ROLLOUT = ROOT / "deploy" / "fleet" / "rollout.json"
ISTIO = ROOT / "deploy" / "istio" / "wasmplugin.yaml"
GATEWAY = ROOT / "deploy" / "envoy-gateway" / "augur.yaml"
STAND_IN = Path(__file__).with_name("mesh_stand_in.py")


def test_the_shipped_manifests_render_with_the_configuration():
    plugin = {"name": "fleet", "revision": 3, "features": [{"name": "a"}]}
    istio = yaml.safe_load(delivery.render(ISTIO.read_text(), plugin))
    assert istio["kind"] == "WasmPlugin" and istio["spec"]["pluginConfig"] == plugin
    assert istio["spec"]["url"].startswith("oci://"), "the rest of the object is the template's"
    gateway = yaml.safe_load(delivery.render(GATEWAY.read_text(), plugin))
    assert gateway["kind"] == "EnvoyExtensionPolicy" and gateway["spec"]["wasm"][0]["config"] == plugin
    assert gateway["spec"]["wasm"][0]["rootID"] == "augur"
    assert "VirtualService" not in delivery.render(ISTIO.read_text(), plugin), "routes are not the controller's"


def settings(tmp_path, **kw):
    s = {"rollout": str(ROLLOUT), "proxies": [{"name": "p", "admin": "127.0.0.1:1"}],
         "prometheus": "http://127.0.0.1:1", "state": "state.json", "audit": "audit.jsonl", "ramp": None,
         "delivery": {"kind": "manifest", "manifest": str(ISTIO), "out": "out/augur.yaml",
                      "apply": ["kubectl", "apply", "-f", "{file}"]}}
    s.update(kw)
    (tmp_path / "c.json").write_text(json.dumps(s))
    return tmp_path / "c.json"


def test_delivery_errors_name_the_field(tmp_path):
    def error(**kw):
        with pytest.raises(controller.ConfigError) as e:
            controller.load_settings(settings(tmp_path, **kw))
        return str(e.value)

    cfg = controller.load_settings(settings(tmp_path))
    assert cfg["delivery"]["out"] == str(tmp_path / "out" / "augur.yaml") and cfg["wasm"] is None, \
        "a mesh pulls the module itself: no wasm path, no ECDS file per proxy"
    assert error(delivery={"kind": "xds"}).startswith("delivery.kind: must be one of ecds, manifest")
    manifest = {"kind": "manifest", "manifest": str(ISTIO), "out": "o.yaml"}
    assert error(delivery=dict(manifest, apply=["kubectl", "apply"])).startswith('delivery.apply: a command')
    assert error(delivery={"kind": "manifest", "out": "o.yaml", "apply": ["x", "{file}"]}).startswith(
        "delivery.manifest: required")
    routes = tmp_path / "routes.yaml"
    routes.write_text("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: shop}\n")
    e = error(delivery=dict(manifest, manifest=str(routes), apply=["x", "{file}"]))
    assert e.startswith("delivery.manifest: needs exactly one WasmPlugin or EnvoyExtensionPolicy object, found 0"), e
    assert error(delivery={"kind": "ecds", "out": "o"}).startswith("delivery.out: unknown for kind ecds")
    assert error(delivery={"kind": "ecds"}).startswith("wasm: required"), "ECDS files name the module"
    e = error(delivery={"kind": "ecds"}, wasm="augur.wasm")
    assert e.startswith("proxies[0]: needs admin (host:port) and ecds (the proxy's watched ECDS file)"), e


@pytest.fixture(scope="module")
def proxy(work, watched, upstreams, start_envoy):
    """One Envoy whose augur configuration comes from ECDS, first an unversioned one."""
    port = harness.free_port()
    base = json.loads(ROLLOUT.read_text())
    listener = envoyconf.ecds_listener("meshed", port, watched, base, harness.WASM.resolve(), work / "access.log")
    admin_port = harness.free_port()
    start_envoy(envoyconf.bootstrap(admin_port, [listener], upstreams.ports["old"], upstreams.ports["new"]), work)
    address = f"127.0.0.1:{admin_port}"
    harness.wait_until(lambda: admin.serving_revision(address, "fleet") is not None, 30, "augur loaded")
    return {"admin": address, "watched": watched}


def test_a_manifest_delivery_is_verified_by_the_proxys_revision(proxy, tmp_path):
    apply = [sys.executable, str(STAND_IN), "{file}", str(proxy["watched"]), str(harness.WASM.resolve())]
    path = settings(tmp_path, proxies=[{"name": "p", "admin": proxy["admin"]}], verify_timeout_s=10,
                    delivery={"kind": "manifest", "manifest": str(ISTIO), "out": "out/augur.yaml", "apply": apply})
    assert admin.serving_revision(proxy["admin"], "fleet") == 0, "a configuration nobody versioned"
    log = io.StringIO()
    ctl = controller.Controller(controller.load_settings(path), out=log)
    ctl.finish_pending()  # the start action
    ctl.state.update(pending={"kind": "block", "feature": "new_checkout", "segment": "tablets", "why": "test",
                              "evidence": {}}, seq=1, blocks=[["new_checkout", "tablets"]])
    ctl.finish_pending()
    audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(a["kind"], a["proxies_applied"]) for a in audit] == [("start", ["p"]), ("block", ["p"])], log.getvalue()
    assert admin.serving_revision(proxy["admin"], "fleet") == 2
    assert admin.serving_version(proxy["admin"]).startswith("mesh-"), "versioned by the mesh, not the controller"
    applied = yaml.safe_load((tmp_path / "out" / "augur.yaml").read_text())
    assert applied["kind"] == "WasmPlugin" and applied["spec"]["pluginConfig"]["revision"] == 2
    served = json.loads(proxy["watched"].read_text())
    assert "tablets" in json.dumps(served), "the block reached the proxy through the mesh's object"

    # The mesh refuses the apply: nothing is applied, each attempt logged, the proxy stays on revision 2.
    ctl.s["delivery"]["apply"] = [*apply, "--fail"]
    ctl.s["push_attempts"] = 2
    ctl.state.update(pending={"kind": "kill", "feature": "search_v2", "why": "test", "evidence": {}}, seq=2,
                     kills=["search_v2"])
    ctl.finish_pending()
    last = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert (last["kind"], last["proxies_applied"]) == ("kill", []), last
    failures = [json.loads(x) for x in log.getvalue().splitlines() if '"delivery_failed"' in x]
    assert len(failures) == 2 and "exited 1" in failures[0]["why"] and ctl.metrics.retries == 1
    assert admin.serving_revision(proxy["admin"], "fleet") == 2
