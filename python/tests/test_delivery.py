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
    assert istio == {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                     "metadata": {"name": "augur", "namespace": "istio-system"}, "spec": {"pluginConfig": plugin}}, \
        "only what the controller owns: a server-side apply leaves the image, selector and routes alone"
    gateway = yaml.safe_load(delivery.render(GATEWAY.read_text(), plugin))
    assert gateway["kind"] == "EnvoyExtensionPolicy" and gateway["metadata"] == {"name": "augur", "namespace": "shop"}
    (entry,) = gateway["spec"]["wasm"]
    assert entry["config"] == plugin and entry["rootID"] == "augur" and entry["code"]["type"] == "Image", \
        "the wasm entry whole (a list item is applied whole)"
    assert set(gateway["spec"]) == {"wasm"}, "targetRefs are the operator's"
    other = GATEWAY.read_text().replace("rootID: augur", "rootID: ratelimit")
    with pytest.raises(delivery.DeliveryError, match="one spec.wasm entry with rootID augur"):
        delivery.render(other, plugin)


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
    assert error(delivery=dict(manifest, out=str(ISTIO), apply=["x", "{file}"])).startswith(
        "delivery.out: must not be the manifest itself")
    assert error(proxies=[{"name": "p", "admin": "127.0.0.1:1", "ecds": "e.json"}]).startswith(
        "proxies[0]: needs admin (host:port) or instance"), "no ECDS file when the mesh delivers"
    assert error(push_attempts=0).startswith("push_attempts: 0 must be a whole number ≥ 1")
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


def test_a_proxy_without_a_reachable_admin_is_verified_through_prometheus(proxy, work, tmp_path):
    """A mesh binds each proxy's admin to the pod's loopback (Istio 15000,
    Envoy Gateway 19000): such a proxy is named by its Prometheus `instance`
    and verified by its scraped `augur_config_revision`. An unchanged object
    is not applied again (the mesh would push nothing new)."""
    prom = harness.Prometheus(work / "prometheus", {"augur": [proxy["admin"]]}, scrape_s=1)
    try:
        prom.wait_scraped(1)
        apply = [sys.executable, str(STAND_IN), "{file}", str(proxy["watched"]), str(harness.WASM.resolve())]
        path = settings(tmp_path, proxies=[{"name": "p", "instance": proxy["admin"]}], prometheus=prom.url,
                        verify_timeout_s=15,
                        delivery={"kind": "manifest", "manifest": str(GATEWAY), "out": "out/eep.yaml", "apply": apply})
        cfg = controller.load_settings(path)
        assert "admin" not in cfg["proxies"][0] and cfg["proxies"][0]["instance"] == proxy["admin"]
        log = io.StringIO()
        ctl = controller.Controller(cfg, out=log)
        assert ctl.check_scrape_interval() is None, "15 s of verification for a 1 s scrape"
        ctl.state.update(seq=6)  # a revision no earlier test delivered
        ctl.finish_pending()
        audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert [(a["revision"], a["proxies_applied"]) for a in audit] == [(7, ["p"])], log.getvalue()
        assert admin.serving_revision(proxy["admin"], "fleet") == 7
        applies = Path(f"{proxy['watched']}.applied")
        before = len(applies.read_text().splitlines())
        assert ctl.deliver("fleet.6") == ["p"], "verified again"
        assert len(applies.read_text().splitlines()) == before, "the same object is not applied twice"
        ctl.s["verify_timeout_s"] = 0.5
        warning = ctl.check_scrape_interval()
        assert warning.startswith("verify_timeout_s 0.5 is not above the scrape interval of the proxies verified "
                                  "through Prometheus (1 s)"), warning
        assert '"event": "warning"' in log.getvalue()
    finally:
        prom.close()
