"""The part of istiod / Envoy Gateway a test can run here (no Kubernetes): takes
an applied `WasmPlugin` or `EnvoyExtensionPolicy` manifest and hands its
configuration to one Envoy as ECDS, versioned in the mesh's own words (not the
controller's), as the mesh's control plane does over xDS.

    python mesh_stand_in.py MANIFEST ECDS_FILE WASM [--fail]

`--fail` refuses the apply (exit 1), as `kubectl apply` does when the API
server does.
"""

import hashlib
import sys
from pathlib import Path

import yaml

from augur_tools.envoy import envoyconf


def main(argv):
    manifest, ecds, wasm, *rest = argv
    if "--fail" in rest:
        print("error: the server could not find the requested resource", file=sys.stderr)
        return 1
    text = Path(manifest).read_bytes()
    doc = yaml.safe_load(text)
    config = doc["spec"]["pluginConfig"] if doc["kind"] == "WasmPlugin" else doc["spec"]["wasm"][0]["config"]
    version = "mesh-" + hashlib.sha256(text).hexdigest()[:8]
    envoyconf.push_ecds(ecds, config, wasm, version)
    with open(f"{ecds}.applied", "a") as log:  # one line per apply, for the test to count
        log.write(version + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
