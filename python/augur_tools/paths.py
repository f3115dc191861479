"""Where things are in the checkout (the package is installed editable by `make venv`).

AUGUR_WASM / AUGUR_CLI: run the tests and demos against another build (e.g. a
release candidate, or the previous one to see a new test fail there).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENVOY = ROOT / ".venv" / "bin" / "envoy"
WASM = Path(os.environ.get("AUGUR_WASM") or ROOT / "target" / "augur.wasm")
AUGUR_CLI = Path(os.environ.get("AUGUR_CLI") or ROOT / "target" / "release" / "augur")
DEFAULT_MODEL = ROOT / "models" / "default.onnx"
DEMO_PLUGIN = ROOT / "envoy" / "augur-demo.json"


def module_cmd(module, *args):
    """The command line that runs `module` (e.g. "augur_tools.loop.retrain") as a
    script with this interpreter: how tools start each other as processes."""
    return [sys.executable, "-m", module, *map(str, args)]
