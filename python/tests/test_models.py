"""Models users actually train, pushed into the running Envoy 1.40 through ECDS.

A LightGBM and a scikit-learn GradientBoosting model (one booster per output,
exported by onnxmltools / skl2onnx exactly as those converters write them), a
ridge regression and an MLPRegressor as skl2onnx exports it are each pushed with
python/augur_tools/loop/retrain.py's `push` (the retraining job's own code path) into one Envoy
serving augur through ECDS. For every request the filter decided, the scores in
its decision record must be the scores onnxruntime's outputs give for the
record's own `x`, and `augur predict` (the same kernels, natively) must match
onnxruntime within 1e-4.
"""

import json

import numpy as np
import pytest

from augur_tools.envoy import envoyconf, harness
from augur_tools.envoy.harness import ROOT, Client
from augur_tools.loop import retrain, train

FEATURES = ["new_checkout", "one_click_pay", "search_v2", "recommendations", "hd_images"]
DEMO = json.loads((ROOT / "envoy" / "augur-demo.json").read_text())
PLUGIN = {
    "name": "models",
    "rollout": {"percentage": 100, "salt": "model-tests"},
    "profile": DEMO["profile"],
    "features": [{"name": f} for f in FEATURES],
    "rollback": {"enabled": False},
}


@pytest.fixture(scope="module")
def data():
    """Encoded synthetic requests (augur encode) and noisy planted targets."""
    _, reqs, truth, features = train.make_dataset(3000, 5)
    assert features == FEATURES
    x = train.augur_encode(train.DEFAULT_AUGUR, str(ROOT / "envoy" / "augur-demo.json"), (h for _, h in reqs))
    rng = np.random.default_rng(5)
    y = np.clip(truth + rng.normal(0.0, 0.02, truth.shape), 0.0, 1.0).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def env(work, watched, upstreams, start_envoy):
    port, log = harness.free_port(), work / "access.log"
    listeners = [envoyconf.ecds_listener("models", port, watched, PLUGIN, harness.WASM.resolve(), log)]
    admin = harness.free_port()
    envoy = start_envoy(envoyconf.bootstrap(admin, listeners, upstreams.ports["old"], upstreams.ports["new"]), work)
    return {"envoy": envoy, "port": port, "log": log, "watched": watched, "admin": f"127.0.0.1:{admin}",
            "work": work}


def scores(impacts):
    """The filter's 0-100 score per feature from raw outputs [4F] (default weights)."""
    c = np.clip(np.asarray(impacts, dtype=np.float64).reshape(-1, 4), 0.0, 1.0)
    good = (1 - c[:, 0]) + (1 - c[:, 1]) + c[:, 2] + (1 - c[:, 3])
    return 100.0 * good / 4.0


def decide_through_envoy(env, version, n=60):
    """Sends synthetic requests until `version` serves them all; returns their records."""
    reqs = harness.synthetic_requests(n, seed=17, prefix=f"m-{version}")
    c = Client(env["port"])
    try:
        for h in reqs:
            status, _, _ = c.request(h)
            assert status == 200
    finally:
        c.close()
    want = {h["x-request-id"] for h in reqs}

    def got():
        return {r["decision"].get("request_id"): r["decision"] for r in harness.read_records(env["log"])
                if isinstance(r.get("decision"), dict) and r["decision"].get("request_id") in want}

    harness.wait_until(lambda: want <= got().keys(), 15, f"{n} records")
    return list(got().values())


def push_and_compare(env, onnx_bytes, version, kernel):
    path = env["work"] / f"{version}.onnx"
    path.write_bytes(onnx_bytes)
    info = train.inspect_model(train.DEFAULT_AUGUR, path)
    assert info["engine"].startswith(kernel), info
    plugin = retrain.candidate_plugin(PLUGIN, onnx_bytes, version, {})
    res = retrain.push(plugin, env["watched"], env["admin"], env["envoy"].log_path, version_info=version, timeout=20)
    assert res.status == "applied", (res, env["envoy"].log()[-2000:])
    # Each worker swaps on its own: keep only requests decided by the new model,
    # and require most of a second batch to be.
    records = [d for d in decide_through_envoy(env, version) if d["model"] == version]
    if len(records) < 30:
        records += [d for d in decide_through_envoy(env, version + "-b") if d["model"] == version]
    assert len(records) >= 30, f"only {len(records)} requests decided by {version}"
    xs = np.asarray([d["x"] for d in records], dtype=np.float32)
    ort = train.ort_predict(onnx_bytes, xs)
    # 1. The filter's kernels (natively, same code) vs onnxruntime: within 1e-4.
    ours = train.augur_predict(train.DEFAULT_AUGUR, path, xs)
    assert ours.shape == ort.shape
    diff = float(np.max(np.abs(ours - ort)))
    assert diff <= 1e-4, f"{version}: augur predict differs from onnxruntime by {diff:.2e}"
    # 2. What Envoy decided: every score in every record is onnxruntime's
    #    (unless onnxruntime's own value sits within 1e-4·100 of a rounding edge).
    checked = 0
    for d, row in zip(records, ort):
        want = scores(row)
        for i, f in enumerate(FEATURES):
            got = d["features"][f]["score"]
            edge = abs((want[i] % 1.0) - 0.5) < 0.01
            assert got == round(want[i]) or edge, f"{version} {d['id']} {f}: record {got}, onnxruntime {want[i]:.4f}"
            checked += 1
    return {"records": len(records), "scores": checked, "max_diff": diff, "engine": info["engine"]}


def test_lightgbm_through_ecds_decides_like_onnxruntime(env, data):
    x, y = data
    model = train.fit_family("gbm", x, y, 5, gbm="lightgbm", trees=20, depth=5)
    onnx_bytes = train.export_model(model, FEATURES, "lgbm-v1", train.augur_schema()["schema"])
    out = push_and_compare(env, onnx_bytes, "lgbm-v1", "trees")
    assert "TreeEnsembleRegressor" in out["engine"]


def test_sklearn_gbm_through_ecds_decides_like_onnxruntime(env, data):
    x, y = data
    model = train.fit_family("gbm", x[:2000], y[:2000], 5, gbm="sklearn", trees=10, depth=3)
    onnx_bytes = train.export_model(model, FEATURES, "skl-gbm-v1", train.augur_schema()["schema"])
    push_and_compare(env, onnx_bytes, "skl-gbm-v1", "trees")


def test_linear_and_skl2onnx_mlp_as_exported_through_ecds(env, data):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPRegressor

    x, y = data
    schema = train.augur_schema()["schema"]
    linear = train.export_model(train.fit_family("linear", x, y, 5), FEATURES, "linear-v1", schema)
    push_and_compare(env, linear, "linear-v1", "linear")
    # The MLP exactly as skl2onnx writes it (Cast, MatMul, Add, Relu, ..., Reshape):
    # it must run on the dense kernel, not tract's plan.
    mlp = MLPRegressor(hidden_layer_sizes=(16,), max_iter=50, random_state=5).fit(x, y)
    onx = convert_sklearn(mlp, initial_types=[("x", FloatTensorType([None, 20]))], target_opset={"": 17})
    assert onx.graph.node[-1].op_type == "Reshape"
    train.add_metadata(onx, FEATURES, "mlp-raw-v1", schema)
    push_and_compare(env, onx.SerializeToString(), "mlp-raw-v1", "dense")


def test_pick_family_reports_the_lowest_held_out_error(data):
    x, y = data
    lines = []
    model, family, table = train.pick_family(x[:2000], y[:2000], x[2000:], y[2000:], 5, log=lines.append,
                                             trees=20, depth=4)
    assert set(table) == {"mlp", "gbm", "linear"}
    assert family == min(table, key=table.get)
    assert train.family_of(model) == family
    assert lines[-1].startswith(f"  picked {family}"), lines


def chain_model(depth, schema):
    """One TreeEnsembleRegressor tree that is a chain `depth` branches deep."""
    import onnx
    from onnx import TensorProto, helper

    ids, feats, vals, modes, yes, no = [], [], [], [], [], []
    for d in range(depth):  # branch 2d: true → leaf 2d+1, false → branch 2d+2
        ids += [2 * d, 2 * d + 1]
        feats += [d % 20, 0]
        vals += [0.5, 0.0]
        modes += ["BRANCH_LEQ", "LEAF"]
        yes += [2 * d + 1, 0]
        no += [2 * d + 2, 0]
    ids.append(2 * depth)
    feats.append(0)
    vals.append(0.0)
    modes.append("LEAF")
    yes.append(0)
    no.append(0)
    leaves = [i for i, m in zip(ids, modes) if m == "LEAF"]
    node = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=4,
        nodes_treeids=[0] * len(ids), nodes_nodeids=ids, nodes_featureids=feats, nodes_values=vals,
        nodes_modes=modes, nodes_truenodeids=yes, nodes_falsenodeids=no,
        target_treeids=[0] * len(leaves), target_nodeids=leaves, target_ids=[0] * len(leaves),
        target_weights=[0.1] * len(leaves))
    graph = helper.make_graph([node], "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    train.add_metadata(model, FEATURES[:1], f"chain-{depth}", schema)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_a_model_over_the_limits_is_refused_naming_the_limit(env, tmp_path):
    """A 40-deep tree: check-config refuses it naming the limit and the field, Envoy
    refuses the push, and the model serving before keeps serving."""
    import subprocess

    schema = train.augur_schema()["schema"]
    plugin = dict(PLUGIN, features=[{"name": FEATURES[0]}])
    ok = retrain.candidate_plugin(plugin, chain_model(8, schema), "chain-8", {})
    res = retrain.push(ok, env["watched"], env["admin"], env["envoy"].log_path, version_info="chain-8", timeout=20)
    assert res.status == "applied", res
    bad = retrain.candidate_plugin(plugin, chain_model(40, schema), "chain-40", {})
    path = tmp_path / "plugin.json"
    path.write_text(json.dumps(bad))
    p = subprocess.run([train.DEFAULT_AUGUR, "check-config", str(path)], capture_output=True, text=True, check=False)
    assert p.returncode != 0
    assert "model.onnx_base64" in p.stderr and "max_tree_depth" in p.stderr, p.stderr
    res = retrain.push(bad, env["watched"], env["admin"], env["envoy"].log_path, version_info="chain-40", timeout=20)
    assert res.status == "refused", res
    assert "max_tree_depth" in env["envoy"].log(), env["envoy"].log()[-2000:]
    assert all(d["model"] == "chain-8" for d in decide_through_envoy(env, "after-refusal", n=10))
