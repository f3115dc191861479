"""Special ONNX models for tests, built with the `onnx` package.

    python -m augur_tools.fixtures tests/fixtures     # (re)writes the committed fixtures

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
- `tests/fixtures/ml_*.onnx` + `ml_expected.json`: real models of every
  supported family, fitted on seeded synthetic traffic (python/augur_tools/sim/synthetic.py,
  encoded by `augur encode`) and exported by the standard converters exactly
  as users get them — LightGBM (onnxmltools), scikit-learn GradientBoosting,
  RandomForest and its classifier, Ridge, multinomial LogisticRegression, an
  MLPRegressor with its trailing Reshape, a multi-label MLPClassifier, and the
  LightGBM model rewritten with the opset-5 `TreeEnsemble` op — with
  onnxruntime's outputs on 48 input vectors, which the filter's kernels must
  reproduce within 1e-4 (src/model.rs tests).
- `benches/models/{gbm_t100_d6,gbm_t500_d8,linear,mlp_skl}.onnx`: the
  benchmark models per kind (trees counted over all 20 outputs).
"""

import base64
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from augur_tools.paths import ROOT

DEMO_FEATURES = ["new_checkout", "one_click_pay", "search_v2", "recommendations", "hd_images"]
INPUT_DIM = 20


def schema_id():
    out = subprocess.run([_train().DEFAULT_AUGUR, "schema"], capture_output=True, text=True, check=True).stdout
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
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
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


def _train():
    from augur_tools.loop import train

    return train


def synthetic_xy(rows=4000, seed=3):
    """Encoded synthetic requests (augur encode, demo config) and noisy targets [N, 20]."""
    train = _train()
    _, reqs, truth, features = train.make_dataset(rows, seed)
    x = train.augur_encode(train.DEFAULT_AUGUR, str(ROOT / "envoy" / "augur-demo.json"), (h for _, h in reqs))
    rng = np.random.default_rng(seed)
    y = np.clip(truth + rng.normal(0.0, 0.02, truth.shape), 0.0, 1.0).astype(np.float32)
    return x, y, features


def _with_meta(onx, features, version, schema):
    train = _train()
    train.add_metadata(onx, features, version, schema)
    return onx.SerializeToString()


def _convert(model, opset_ml=3, options=None):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    return convert_sklearn(model, initial_types=[("x", FloatTensorType([None, INPUT_DIM]))],
                           target_opset={"": 17, "ai.onnx.ml": opset_ml}, options=options)


def to_tree_ensemble_v5(onx):
    """Rewrites every TreeEnsembleRegressor (SUM, NONE, one target, BRANCH_LEQ)
    as the opset-5 `TreeEnsemble` op, leaves apart from interior nodes."""
    out = onnx.ModelProto()
    out.CopyFrom(onx)
    g = out.graph
    for i, n in enumerate(list(g.node)):
        if n.op_type != "TreeEnsembleRegressor":
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        tid, nid, modes = a["nodes_treeids"], a["nodes_nodeids"], [m.decode() for m in a["nodes_modes"]]
        leaf_w = {(t, k): w for t, k, w in zip(a["target_treeids"], a["target_nodeids"], a["target_weights"])}
        interior, leaves = {}, {}
        for t, k, m in zip(tid, nid, modes):
            (leaves if m == "LEAF" else interior)[(t, k)] = len(leaves if m == "LEAF" else interior)
        feats, splits, yes, yes_leaf, no, no_leaf, miss = [], [], [], [], [], [], []
        for j, (t, k, m) in enumerate(zip(tid, nid, modes)):
            if m == "LEAF":
                continue
            feats.append(a["nodes_featureids"][j])
            splits.append(a["nodes_values"][j])
            miss.append(a["nodes_missing_value_tracks_true"][j])
            sides = ((a["nodes_truenodeids"][j], yes, yes_leaf), (a["nodes_falsenodeids"][j], no, no_leaf))
            for child, ids, flags in sides:
                is_leaf = (t, child) in leaves
                ids.append(leaves[(t, child)] if is_leaf else interior[(t, child)])
                flags.append(int(is_leaf))
        roots = []
        for t in sorted(set(tid)):
            roots.append(interior.get((t, 0), None))
        if any(r is None for r in roots):
            raise ValueError("a single-leaf tree cannot be written as TreeEnsemble")
        leaf_items = sorted(leaves.items(), key=lambda kv: kv[1])
        base = a.get("base_values", [0.0])[0] if a.get("base_values") else 0.0
        v5 = helper.make_node(
            "TreeEnsemble", list(n.input), [n.output[0] + "_trees"], domain="ai.onnx.ml",
            n_targets=1, aggregate_function=1, post_transform=0, tree_roots=roots,
            nodes_featureids=feats, nodes_splits=numpy_helper.from_array(np.asarray(splits, np.float32)),
            nodes_modes=numpy_helper.from_array(np.zeros(len(feats), np.uint8)),
            nodes_truenodeids=yes, nodes_trueleafs=yes_leaf, nodes_falsenodeids=no, nodes_falseleafs=no_leaf,
            nodes_missing_value_tracks_true=miss,
            leaf_targetids=[0] * len(leaf_items),
            leaf_weights=numpy_helper.from_array(np.asarray([leaf_w.get(k, 0.0) for k, _ in leaf_items], np.float32)),
        )
        bias = numpy_helper.from_array(np.asarray([base], np.float32), n.output[0] + "_base")
        g.initializer.append(bias)
        add = helper.make_node("Add", [v5.output[0], bias.name], [n.output[0]])
        g.node.remove(n)
        g.node.insert(i, add)
        g.node.insert(i, v5)
    for o in out.opset_import:
        if o.domain == "ai.onnx.ml":
            o.version = 5
    return out


def ml_models(schema=None, seed=3):
    """{name: onnx bytes}: one real model per supported family (see the module doc)."""
    import warnings

    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    train = _train()
    schema = schema or schema_id()
    x, y, features = synthetic_xy(seed=seed)
    out = {}
    lgbm = train.fit_family("gbm", x, y, seed, gbm="lightgbm", trees=8, depth=4)
    out["ml_lgbm"] = train.export_model(lgbm, features, "lgbm-fixture", schema)
    skl = train.fit_family("gbm", x[:1500], y[:1500], seed, gbm="sklearn", trees=6, depth=3)
    out["ml_skl_gbm"] = train.export_model(skl, features, "skl-gbm-fixture", schema)
    out["ml_linear"] = train.export_model(train.fit_family("linear", x, y, seed), features, "linear-fixture", schema)
    rf = RandomForestRegressor(n_estimators=4, max_depth=5, random_state=seed).fit(x, y)
    out["ml_forest"] = _with_meta(_convert(rf, 1), features, "forest-fixture", schema)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPRegressor(hidden_layer_sizes=(16,), max_iter=30, random_state=seed).fit(x, y)
        out["ml_mlp_skl"] = _with_meta(_convert(mlp), features, "mlp-skl-fixture", schema)
        labels = (y > 0.5).astype(int)
        labels[0], labels[1] = 0, 1  # every label has both classes
        mlc = MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, random_state=seed).fit(x, labels)
        out["ml_mlp_classifier"] = _with_meta(_convert(mlc, options={"zipmap": False}), features, "mlp-clf-fixture",
                                              schema)
    # One feature's four impacts as four classes: the classifiers' probability output.
    score = y.sum(axis=1)
    cls = np.digitize(score, np.quantile(score, [0.25, 0.5, 0.75]))
    one = features[:1]
    rfc = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=seed).fit(x, cls)
    out["ml_forest_classifier"] = _with_meta(_convert(rfc, 1, {"zipmap": False}), one, "rfc-fixture", schema)
    lr = LogisticRegression(max_iter=500).fit(x, cls)
    out["ml_logreg"] = _with_meta(_convert(lr, 1, {"zipmap": False}), one, "logreg-fixture", schema)
    out["ml_tree_ensemble_v5"] = to_tree_ensemble_v5(onnx.load_from_string(out["ml_lgbm"])).SerializeToString()
    return out


def ml_expected(models, n=48, seed=9):
    """onnxruntime's raw outputs of each model on n input vectors: the probes
    (zeros, ones, one-hots) the filter also uses, and encoded synthetic requests."""
    train = _train()
    x, _, _ = synthetic_xy(rows=400, seed=seed)
    base = [np.zeros(INPUT_DIM), np.ones(INPUT_DIM)] + [np.eye(INPUT_DIM)[i] for i in range(0, INPUT_DIM, 3)]
    xs = np.vstack([np.asarray(base, np.float32), x[: n - len(base)]]).astype(np.float32)
    return {name: {"x": xs.tolist(), "y": train.ort_predict(b, xs).tolist()} for name, b in models.items()}


def bench_ml_models(schema=None, seed=11):
    """{file name: bytes}: the benchmark model per kind (trees over all 20 outputs)."""
    train = _train()
    schema = schema or schema_id()
    x, y, features = synthetic_xy(rows=20000, seed=seed)
    out = {}
    for trees, depth in ((100, 6), (500, 8)):
        m = train.fit_family("gbm", x, y, seed, gbm="lightgbm", trees=trees // y.shape[1], depth=depth)
        out[f"gbm_t{trees}_d{depth}.onnx"] = train.export_model(m, features, f"bench-gbm-t{trees}-d{depth}", schema)
    out["linear.onnx"] = train.export_model(train.fit_family("linear", x, y, seed), features, "bench-linear", schema)
    import warnings

    from sklearn.neural_network import MLPRegressor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPRegressor(hidden_layer_sizes=(32, 32), max_iter=40, random_state=seed).fit(x, y)
    out["mlp_skl.onnx"] = _with_meta(_convert(mlp), features, "bench-mlp-skl", schema)
    return out


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
    import json

    models = ml_models(schema)
    for name, data in models.items():
        (out / f"{name}.onnx").write_bytes(data)
    (out / "ml_expected.json").write_text(json.dumps(ml_expected(models)))
    for name, data in bench_ml_models(schema).items():
        (bench / name).write_bytes(data)
    print(f"wrote fixtures to {out} and benchmark models to {bench}")
