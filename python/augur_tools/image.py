"""Builds the augur filter as a Wasm OCI image, without a container daemon.

    python3 -m augur_tools.image --wasm target/augur.wasm --out target/image --tag 0.1.0

The image follows the "compat" variant of the Wasm OCI image specification
(github.com/solo-io/wasm, spec-compat.md), the layout Istio's `WasmPlugin` and
Envoy Gateway's `EnvoyExtensionPolicy` pull: one standard
`application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm`, and the
manifest annotation `module.wasm.image/variant: compat`. Standard media types
mean any registry and any OCI tool (skopeo, crane, oras, docker) can store and
copy it.

The output is an OCI image layout directory (`oci-layout`, `index.json`,
`blobs/sha256/...`) that `skopeo copy oci:<dir>:<tag> docker://<registry>/augur:<tag>`
pushes. It is reproducible: the tar entry has a fixed mtime (0), owner (0:0),
mode (0644) and no user names, gzip writes no name or time, JSON is written with
sorted keys, and the config has no creation time — the same module gives the
same manifest digest on every machine. The digest is printed and written to
`<out>/digest`.
"""

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

VARIANT_ANNOTATION = "module.wasm.image/variant"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
WASM_MAGIC = b"\0asm"


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def layer_tar(wasm):
    """An uncompressed tar with the one entry `plugin.wasm`, byte-for-byte stable."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(wasm)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def gzip_stable(data):
    """gzip with no file name and mtime 0 (level 9: the layer is pulled by every proxy)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def descriptor(media_type, blob, annotations=None):
    d = {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    if annotations:
        d["annotations"] = annotations
    return d


def build(wasm, tag, version, source=None):
    """The blobs of the image and its index: ({digest: bytes}, index bytes, manifest digest)."""
    if wasm[:4] != WASM_MAGIC:
        raise ValueError("--wasm: not a WebAssembly module (no \\0asm magic); build it with `make wasm`")
    tar = layer_tar(wasm)
    layer = gzip_stable(tar)
    config = canonical_json(
        {
            # Not a runnable container: the platform says what the payload is.
            "architecture": "wasm",
            "os": "wasip1",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        }
    )
    annotations = {
        VARIANT_ANNOTATION: "compat",
        "org.opencontainers.image.title": "augur",
        "org.opencontainers.image.description": "augur proxy-wasm filter for Envoy (plugin.wasm)",
        "org.opencontainers.image.version": version,
    }
    if source:
        annotations["org.opencontainers.image.source"] = source
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": descriptor(CONFIG_MEDIA_TYPE, config),
            "layers": [descriptor(LAYER_MEDIA_TYPE, layer, {"org.opencontainers.image.title": "plugin.wasm"})],
            "annotations": annotations,
        }
    )
    manifest_desc = descriptor(MANIFEST_MEDIA_TYPE, manifest, {"org.opencontainers.image.ref.name": tag})
    index = canonical_json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_desc]})
    blobs = {descriptor("", b)["digest"]: b for b in (layer, config, manifest)}
    return blobs, index, manifest_desc["digest"]


def write_layout(out, blobs, index, digest):
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "blobs" / "sha256").mkdir(parents=True)
    (out / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    for d, blob in sorted(blobs.items()):
        (out / "blobs" / "sha256" / d.split(":", 1)[1]).write_bytes(blob)
    (out / "index.json").write_bytes(index)
    (out / "digest").write_text(digest + "\n")


def extract_wasm(layout, tag=None):
    """`plugin.wasm` from an OCI layout directory (as Istio's fetcher finds it)."""
    layout = Path(layout)
    index = json.loads((layout / "index.json").read_text())
    manifests = index["manifests"]
    if tag is not None:
        manifests = [m for m in manifests if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    if len(manifests) != 1:
        raise ValueError(f"{layout}: expected one manifest for tag {tag!r}, found {len(manifests)}")

    def blob(d):
        return (layout / "blobs" / "sha256" / d["digest"].split(":", 1)[1]).read_bytes()

    manifest = json.loads(blob(manifests[0]))
    (layer,) = manifest["layers"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layer)))) as tar:
        f = tar.extractfile("plugin.wasm")
        if f is None:
            raise ValueError(f"{layout}: layer has no regular file plugin.wasm")
        return f.read()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wasm", required=True, help="the filter module (target/augur.wasm)")
    p.add_argument("--out", required=True, help="OCI layout directory to (re)create")
    p.add_argument("--tag", required=True, help="tag (ref name) in the layout, e.g. the crate version")
    p.add_argument("--source", default=None, help="org.opencontainers.image.source annotation (repository URL)")
    a = p.parse_args(argv)
    wasm_path = Path(a.wasm)
    if not wasm_path.is_file():
        p.error(f"--wasm {wasm_path}: no such file; build it with `make wasm`")
    try:
        blobs, index, digest = build(wasm_path.read_bytes(), a.tag, a.tag, a.source)
    except ValueError as e:
        p.error(str(e))
    write_layout(a.out, blobs, index, digest)
    size = sum(len(b) for b in blobs.values())
    print(f"image: oci:{a.out}:{a.tag} {digest} ({size / 1048576:.2f} MB, variant compat, plugin.wasm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
