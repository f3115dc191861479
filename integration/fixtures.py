"""Special ONNX models for tests, built with the `onnx` package.

    python integration/fixtures.py tests/fixtures     # (re)writes the committed fixtures

- `nan_model.onnx`: scores the demo features, but every output is
  sqrt(0.5 - x[16]) — NaN once the first history signal exceeds half its max.
  Drives the fail-open path (model error on one request → fallbacks, stat).
- `wrong_shape.onnx`: claims the demo features but outputs 12 values instead
  of 5 × 4 = 20. Must be refused at configure time.
- `gemm_mlp.onnx`: an MLP written the way PyTorch exports `nn.Linear`
  (Cast, Gemm with transB/alpha/beta and a bias from a Constant node, Tanh,
  Gemm without bias + Add, Sigmoid, Identity): the dense kernel must lower it
  and agree with tract.
- `benches/models/mlp_f{F}_h{H}.onnx`: random MLPs scoring F features with
  hidden width H, for the scaling benchmarks.
"""

import base64
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
DEMO_FEATURES = ["new_checkout", "one_click_pay", "search_v2", "recommendations", "hd_images"]
INPUT_DIM = 20


def schema_id():
    out = subprocess.run(
        [str(ROOT / "target" / "release" / "augur"), "schema"], capture_output=True, text=True, check=True
    ).stdout
    import json

    return json.loads(out)["schema"]


def _model(outputs, features, schema, nan_on_history):
    w = np.zeros((INPUT_DIM, outputs), dtype=np.float32)
    w[16, :] = 1.0  # every output reads history_0
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"])]
    inits = [numpy_helper.from_array(w, "w")]
    if nan_on_history:
        inits.append(numpy_helper.from_array(np.array([0.5], dtype=np.float32), "half"))
        nodes += [helper.make_node("Sub", ["half", "h"], ["d"]), helper.make_node("Sqrt", ["d"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", ["h"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "augur_fixture",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", INPUT_DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outputs])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for k, v in {"augur.schema": schema, "augur.features": ",".join(features), "augur.version": "fixture"}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def nan_model(schema=None):
    return _model(4 * len(DEMO_FEATURES), DEMO_FEATURES, schema or schema_id(), nan_on_history=True)


def wrong_shape_model(schema=None):
    return _model(12, DEMO_FEATURES, schema or schema_id(), nan_on_history=False)


def mlp_model(n_features, hidden, seed=0, schema=None):
    """A random two-hidden-layer MLP (20 → hidden → hidden → 4·F, sigmoid) scoring
    features f0..f{F-1}: for benchmarks of how decide() grows with F and model size."""
    rng = np.random.default_rng(seed)
    dims = [INPUT_DIM, hidden, hidden, 4 * n_features]
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        inits += [
            numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"),
            numpy_helper.from_array((rng.standard_normal(b) * 0.1).astype(np.float32), f"b{i}"),
        ]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        last = i == len(dims) - 2
        nodes.append(helper.make_node("Sigmoid" if last else "Relu", [f"a{i}"], ["y" if last else f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "augur_bench_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", INPUT_DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dims[-1]])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    meta = {
        "augur.schema": schema or schema_id(),
        "augur.features": ",".join(f"f{i}" for i in range(n_features)),
        "augur.version": f"bench-f{n_features}-h{hidden}",
    }
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def gemm_model(schema=None, hidden=8, seed=5):
    rng = np.random.default_rng(seed)
    outputs = 4 * len(DEMO_FEATURES)
    w0 = rng.standard_normal((hidden, INPUT_DIM)).astype(np.float32)  # [out, in]: transB = 1
    c0 = rng.standard_normal(hidden).astype(np.float32)
    w1 = (rng.standard_normal((hidden, outputs)) / np.sqrt(hidden)).astype(np.float32)
    b1 = (rng.standard_normal((1, outputs)) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["c0"], value=numpy_helper.from_array(c0, "c0v")),
        helper.make_node("Gemm", ["xf", "w0", "c0"], ["g0"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Tanh", ["g0"], ["h0"]),
        helper.make_node("Gemm", ["h0", "w1"], ["g1"]),
        helper.make_node("Add", ["b1", "g1"], ["a1"]),
        helper.make_node("Sigmoid", ["a1"], ["s1"]),
        helper.make_node("Identity", ["s1"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "augur_gemm_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", INPUT_DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outputs])],
        initializer=[numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1"),
                     numpy_helper.from_array(b1, "b1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    meta = {"augur.schema": schema or schema_id(), "augur.features": ",".join(DEMO_FEATURES),
            "augur.version": "gemm-fixture"}
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(model)
    return model.SerializeToString()


BENCH_MODELS = [(1, 32), (10, 32), (50, 32), (10, 16), (10, 64), (10, 256)]


def b64(data):
    return base64.b64encode(data).decode()


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "tests" / "fixtures")
    out.mkdir(parents=True, exist_ok=True)
    (out / "nan_model.onnx").write_bytes(nan_model())
    (out / "wrong_shape.onnx").write_bytes(wrong_shape_model())
    (out / "gemm_mlp.onnx").write_bytes(gemm_model())
    bench = ROOT / "benches" / "models"
    bench.mkdir(parents=True, exist_ok=True)
    schema = schema_id()
    for f, h in BENCH_MODELS:
        (bench / f"mlp_f{f}_h{h}.onnx").write_bytes(mlp_model(f, h, seed=f * 1000 + h, schema=schema))
    print(f"wrote fixtures to {out} and benchmark models to {bench}")
