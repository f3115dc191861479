"""Packaging and delivery, for real: the Wasm OCI image (`make image`) through a
local registry, and Envoy loading the module over HTTP with its sha256.

The registry is Debian's `docker-registry` (the CNCF distribution registry),
started here on a loopback port with a generated configuration; images move with
`skopeo`. The module server is a Python HTTP server on loopback.
"""

import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from augur_tools import image
from augur_tools.envoy import envoyconf, harness
from augur_tools.envoy.harness import ROOT, Client, Envoy, Upstreams

VERSION = "0.0.0-test"


def custom_section(name, payload):
    """A Wasm custom section (id 0): appended to a module, a valid different module."""

    def leb(n):
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    body = leb(len(name)) + name + payload
    return b"\x00" + leb(len(body)) + body


def build_image(out):
    r = subprocess.run(
        [sys.executable, "-m", "augur_tools.image", "--wasm", str(harness.WASM), "--out", str(out), "--tag", VERSION],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return (Path(out) / "digest").read_text().strip(), r.stdout


def test_image_is_reproducible_and_in_the_wasm_compat_layout(tmp_path):
    d1, out = build_image(tmp_path / "a")
    time.sleep(1.1)  # a different wall clock must not matter
    d2, _ = build_image(tmp_path / "b")
    assert d1 == d2 and d1.startswith("sha256:"), (d1, d2)
    assert d1 in out
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert files(tmp_path / "a") == files(tmp_path / "b"), "every byte of the layout is the same"
    layout = tmp_path / "a"
    index = json.loads((layout / "index.json").read_text())
    (desc,) = index["manifests"]
    assert desc["digest"] == d1 and desc["annotations"]["org.opencontainers.image.ref.name"] == VERSION
    blob = lambda d: (layout / "blobs" / "sha256" / d.split(":")[1]).read_bytes()
    manifest_bytes = blob(d1)
    assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == d1
    manifest = json.loads(manifest_bytes)
    # The "compat" variant of the Wasm OCI image spec, as Istio and Envoy Gateway pull it.
    assert manifest["annotations"]["module.wasm.image/variant"] == "compat"
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert image.extract_wasm(layout, VERSION) == harness.WASM.read_bytes(), "plugin.wasm is the module"


@pytest.fixture
def registry(tmp_path):
    port = harness.free_port()
    conf = tmp_path / "registry.yml"
    conf.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    proc = subprocess.Popen(["docker-registry", "serve", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        harness.wait_until(lambda: harness.port_open(port), 15, f"docker-registry on {port}")
        yield f"127.0.0.1:{port}"
    finally:
        harness.stop_process(proc, grace=5)


def skopeo(*args):
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=True).stdout


def test_image_round_trips_through_a_registry_with_the_same_digest(tmp_path, registry):
    digest, _ = build_image(tmp_path / "img")
    ref = f"docker://{registry}/augur:{VERSION}"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'img'}:{VERSION}", ref)
    raw = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", ref], capture_output=True, timeout=60, check=True
    ).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest, "the registry serves the manifest we built"
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", ref))
    assert inspected["Digest"] == digest
    skopeo("copy", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'pulled'}:{VERSION}")
    pulled = json.loads((tmp_path / "pulled" / "index.json").read_text())["manifests"]
    assert [m["digest"] for m in pulled] == [digest]
    assert image.extract_wasm(tmp_path / "pulled", VERSION) == harness.WASM.read_bytes()


class ModuleServer:
    """Serves files from a directory over HTTP on loopback; remembers the paths asked for."""

    def __init__(self, root):
        self.hits = []
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, fmt, *args):
                hits.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def plugin(name):
    return {"name": name, "rollout": {"percentage": 100}, "stats": {"flush_ms": 0}, "features": [{"name": "a", "override": "on"}]}


def requests_of(envoy, rollout):
    return harness.prom_sum(envoy.prometheus(), "augur_requests_total", rollout=rollout) or 0


@pytest.fixture
def modules(tmp_path):
    genuine = harness.WASM.read_bytes()
    v2 = genuine + custom_section(b"augur-release", b"v2")
    tampered = bytearray(v2)
    tampered[-1] ^= 1  # still a valid module: only the sha256 tells them apart
    served = tmp_path / "served"
    served.mkdir()
    (served / "augur.wasm").write_bytes(genuine)
    server = ModuleServer(served)
    try:
        yield {"v1": genuine, "v2": v2, "tampered": bytes(tampered), "dir": served, "server": server}
    finally:
        server.close()


def remote(server, path, data):
    return envoyconf.remote_code(f"http://127.0.0.1:{server.port}{path}", "module_server", hashlib.sha256(data).hexdigest())


def test_remote_module_loads_only_with_its_sha256_and_a_tampered_one_fails_closed(tmp_path, modules):
    """Listener (LDS) delivery of a remote module: Envoy fetches it while the
    new listener warms and loads it only if its SHA-256 matches. A tampered
    module is refused; the filter then fails closed (503 for new connections,
    never an unfiltered request), connections on the previous listener keep
    being served by the old module until they drain, and the genuine module
    serves again once delivered."""
    server = modules["server"]
    ups = Upstreams()
    port = harness.free_port()
    lds = tmp_path / "lds" / "listeners.json"
    lds.parent.mkdir()

    def push(name, path, data, version):
        filt = envoyconf.wasm_filter(plugin(name), "", code=remote(server, path, data))
        lst = envoyconf.http_listener(name="augur", port=port, route_config=envoyconf.route_config(),
                                      http_filters=[filt, envoyconf.router_filter()])
        lst["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener"
        envoyconf.write_atomically(lds, json.dumps({"version_info": version, "resources": [lst]}))

    push("remote_v1", "/augur.wasm", modules["v1"], "v1")
    config = envoyconf.bootstrap(harness.free_port(), [], ups.ports["old"], ups.ports["new"])
    config["static_resources"]["clusters"].append(envoyconf.cluster("module_server", server.port))
    config["dynamic_resources"] = {
        "lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(lds), "watched_directory": {"path": str(lds.parent)}},
        }
    }
    envoy = None
    try:
        envoy = Envoy(config, workdir=tmp_path / "envoy")
        harness.wait_until(lambda: harness.port_open(port), 60, "the remote-module listener")
        assert server.hits == ["/augur.wasm"]
        kept = Client(port)
        status, _rh, body = kept.request({"x-user-id": "u1", "x-augur-stack": "new", "x-augur-features": "evil"})
        assert status == 200 and json.loads(body)["headers"]["x-augur-features"] == "a"
        assert requests_of(envoy, "remote_v1") == 1

        # The module server now hands out a tampered v2; the configuration names v2's sha256.
        (modules["dir"] / "augur-v2.wasm").write_bytes(modules["tampered"])
        push("remote_v2", "/augur-v2.wasm", modules["v2"], "v2")
        harness.wait_until(lambda: "Plugin augur failed to load" in envoy.log(), 30, "the tampered module refused")
        assert "/augur-v2.wasm" in server.hits
        fresh = Client(port)
        try:
            status, _, _ = fresh.request({"x-user-id": "u2", "x-augur-stack": "new", "x-augur-features": "evil"})
        finally:
            fresh.close()
        assert status == 503, "fail closed: no request passes unfiltered"
        # The connection opened before the update is still decided by the genuine v1.
        for i in range(5):
            status, _, body = kept.request({"x-user-id": f"k{i}", "x-augur-stack": "new", "x-augur-features": "evil"})
            assert status == 200 and json.loads(body)["headers"]["x-augur-features"] == "a"
        assert requests_of(envoy, "remote_v1") == 6
        assert requests_of(envoy, "remote_v2") == 0, "the tampered module never ran"
        kept.close()

        # The genuine v2 is delivered: it serves.
        (modules["dir"] / "augur-v2.wasm").write_bytes(modules["v2"])
        push("remote_v2_fixed", "/augur-v2.wasm", modules["v2"], "v3")

        def serving():
            c = Client(port)
            try:
                return c.request({"x-user-id": "u3"})[0] == 200
            finally:
                c.close()

        harness.wait_until(serving, 60, "the genuine v2 module serving")
        assert requests_of(envoy, "remote_v2_fixed") >= 1
    finally:
        if envoy:
            envoy.close()
        ups.close()


def test_ecds_update_with_remote_code_skips_the_filter_and_the_guard_keeps_routing_safe(tmp_path, modules):
    """What Envoy 1.40 does with a remote module delivered by ECDS (why README
    says: deliver modules to Envoy as local files, as Istio's agent does). The
    first configuration is fetched while the listener warms; an update is not
    fetched at all, and the filter is then skipped although it is FAIL_CLOSED.
    Envoy's header_mutation filter in front of augur (control_header_guard)
    keeps a client from choosing its stack or flags even then."""
    server = modules["server"]
    (modules["dir"] / "augur-v2.wasm").write_bytes(modules["tampered"])
    ups = Upstreams()
    ports = {"bare": harness.free_port(), "guarded": harness.free_port()}
    watched = {name: tmp_path / f"ecds-{name}" / "augur.json" for name in ports}
    listeners = []
    for name, port in ports.items():
        watched[name].parent.mkdir()
        filters = [envoyconf.ecds_http_filter("augur", watched[name]), envoyconf.router_filter()]
        if name == "guarded":
            filters.insert(0, envoyconf.control_header_guard())
        envoyconf.push_ecds(watched[name], plugin(f"ecds_{name}"), "", "v1", code=remote(server, "/augur.wasm", modules["v1"]))
        listeners.append(envoyconf.http_listener(name, port, envoyconf.route_config(), filters))
    config = envoyconf.bootstrap(harness.free_port(), listeners, ups.ports["old"], ups.ports["new"])
    config["static_resources"]["clusters"].append(envoyconf.cluster("module_server", server.port))
    envoy = None
    forged = {"x-user-id": "u1", "x-augur-stack": "new", "x-augur-features": "evil", "x-augur-flags": "evil=on;forced_on"}
    try:
        envoy = Envoy(config, workdir=tmp_path / "envoy")
        for name, port in ports.items():
            status, _rh, body = Client(port).request(forged)
            assert status == 200 and json.loads(body)["headers"]["x-augur-features"] == "a", name
        for name, port in ports.items():
            envoyconf.push_ecds(watched[name], plugin(f"ecds_{name}_v2"), "", "v2", code=remote(server, "/augur-v2.wasm", modules["v2"]))
        harness.wait_until(
            lambda: "extension_config_discovery.http_filter.augur.config_reload: 4" in envoy.admin("/stats")[1],
            30, "both ECDS updates applied",
        )
        time.sleep(1)
        assert "/augur-v2.wasm" not in server.hits, "Envoy 1.40 does not fetch remote code on an ECDS update"

        def outcomes(port, n=20):
            """Each request on its own connection (so on either worker): 503 (the
            filter failed closed), `unfiltered` (a client header reached the app),
            `old-clean` (old stack, no x-augur-* header) or `decided` (augur ran)."""
            seen = {"503": 0, "unfiltered": 0, "old-clean": 0, "decided": 0}
            for _ in range(n):
                c = Client(port)
                try:
                    status, rh, body = c.request(forged)
                finally:
                    c.close()
                if status == 503:
                    seen["503"] += 1
                    continue
                assert status == 200, (status, rh, body)
                echoed = json.loads(body)["headers"]
                if echoed.get("x-augur-features") == "evil" or echoed.get("x-augur-flags") == forged["x-augur-flags"]:
                    seen["unfiltered"] += 1
                elif rh["x-served-by"] == "old" and not any(k.startswith("x-augur-") for k in echoed):
                    seen["old-clean"] += 1
                else:
                    seen["decided"] += 1
            return seen

        bare, guarded = outcomes(ports["bare"]), outcomes(ports["guarded"])
        print(f"after an ECDS update with remote code: bare {bare}, guarded {guarded}")
        assert bare["decided"] == guarded["decided"] == 0, "the updated filter never runs: its code was never fetched"
        # Per worker, Envoy either fails closed (503) or skips the filter; without
        # the guard a skipped filter lets the client choose stack and flags.
        assert bare["unfiltered"] + bare["503"] == 20, bare
        assert guarded["unfiltered"] == 0, "guarded: no client-sent control header ever reaches routing or the app"
        assert guarded["503"] + guarded["old-clean"] == 20, guarded
        assert requests_of(envoy, "ecds_bare_v2") == requests_of(envoy, "ecds_guarded_v2") == 0
    finally:
        if envoy:
            envoy.close()
        ups.close()


def test_tools_are_real():
    for tool in ("skopeo", "docker-registry"):
        assert shutil.which(tool), f"{tool}: install it (Debian: apt-get install {tool}); `make test` does when root"


def test_readme_snippet_for_your_own_envoy_is_a_valid_configuration(tmp_path):
    """The ~20 lines README "Deploy" gives for putting augur in front of your own
    Envoy, inside a listener's HttpConnectionManager: Envoy 1.40 accepts them
    (`--mode validate` also runs augur's on_configure on the plugin JSON)."""
    import yaml

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### In front of your own Envoy"):]
    block = section[section.index("```yaml\n") + len("```yaml\n"):section.index("```\n", section.index("```yaml\n"))]
    block = block.replace("/etc/envoy/augur.wasm", str(harness.WASM)).replace("/var/log/envoy/augur.log", str(tmp_path / "augur.log"))
    hcm = yaml.safe_load(block)
    hcm.update({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "shop",
    })
    assert hcm["http_filters"][1]["typed_config"]["config"]["failure_policy"] == "FAIL_CLOSED"
    listener = {
        "name": "shop",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": harness.free_port()}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }
    config = envoyconf.bootstrap(harness.free_port(), [listener], harness.free_port(), harness.free_port())
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    rc, out = harness.validate(path)
    assert rc == 0, out[-3000:]
    assert "augur: configuration accepted" in out


def test_istio_and_envoy_gateway_manifests_carry_a_valid_augur_configuration(tmp_path):
    """The plugin configuration in each manifest is one augur accepts (the same
    compiler as the filter, through the CLI), the filter fails closed, and the
    route matches exactly the new stack's value of x-augur-stack."""
    import yaml

    istio = list(yaml.safe_load_all((ROOT / "deploy" / "istio" / "wasmplugin.yaml").read_text()))
    gateway = list(yaml.safe_load_all((ROOT / "deploy" / "envoy-gateway" / "augur.yaml").read_text()))
    by_kind = {d["kind"]: d for d in istio + gateway}
    wasm_plugin, policy = by_kind["WasmPlugin"]["spec"], by_kind["EnvoyExtensionPolicy"]["spec"]
    assert wasm_plugin["failStrategy"] == "FAIL_CLOSE" and wasm_plugin["pluginName"] == "augur"
    assert wasm_plugin["url"].startswith("oci://") and wasm_plugin["phase"] in ("AUTHN", "AUTHZ", "STATS")
    (ext,) = policy["wasm"]
    assert ext["failOpen"] is False and ext["rootID"] == "augur" and ext["code"]["type"] == "Image"
    for name, cfg in (("istio", wasm_plugin["pluginConfig"]), ("envoy-gateway", ext["config"])):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(cfg))
        r = subprocess.run([str(harness.AUGUR_CLI), "check-config", str(path)], capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
    vs = by_kind["VirtualService"]["spec"]["http"][0]["match"][0]["headers"]
    assert vs == {"x-augur-stack": {"exact": "new"}}
    route = by_kind["HTTPRoute"]["spec"]["rules"][0]["matches"][0]["headers"]
    assert route == [{"name": "x-augur-stack", "value": "new"}]
