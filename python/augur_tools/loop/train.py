"""Train augur's default impact model on seeded synthetic traffic.

    python -m augur_tools.loop.train --augur target/release/augur --config envoy/augur-demo.json \\
        --out models/default.onnx --seed 7 --rows 20000 --version default-v1

Pipeline:

1. draw users and requests from ``python/augur_tools/sim/synthetic.py`` (seeded, deterministic);
2. encode every request with ``augur encode`` — the encoding lives only in Rust
   (src/profile/mod.rs), this script never re-implements it;
3. targets = planted ``true_impacts`` + small gaussian noise, clipped to [0, 1];
4. fit a model of the family ``--model`` picks: ``mlp`` (scikit-learn
   MLPRegressor, ReLU hidden layers; the default), ``gbm`` (gradient-boosted
   trees, one booster per output: LightGBM, or scikit-learn's
   GradientBoostingRegressor with ``--gbm sklearn``), ``linear`` (ridge
   regression), or ``auto`` (all three, the one with the lowest held-out error
   wins); report held-out MAE against the noise-free truth (held-out *users*);
5. export with the standard converters — skl2onnx, and onnxmltools for
   LightGBM — (input ``x`` f32[N, 20]; the filter clamps the output to
   [0, 1]), add the ``augur.*`` metadata_props, check the ONNX graph with
   onnxruntime against the fitted model, save;
6. load the result with ``augur inspect-model`` (exactly as the filter does:
   it says which kernel runs it) and fail unless schema, features and version
   match.

Reusable pieces (e.g. for a retraining job fed with the ``x`` vectors of real
decision records): :func:`train`, :func:`fit`, :func:`export`,
:func:`fit_family`, :func:`export_model`, :func:`pick_family`,
:func:`ort_predict`, :func:`augur_schema`, :func:`augur_encode`,
:func:`inspect_model`, :func:`augur_predict`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from augur_tools import cli, paths

IMPACTS = ("performance_cost", "error_risk", "engagement", "security_risk")
DEFAULT_AUGUR = os.environ.get("AUGUR", str(paths.ROOT / "target" / "release" / "augur"))
DEFAULT_HIDDEN = (32, 32)
DEFAULT_OPSET = 17
DEFAULT_ML_OPSET = 3
FAMILIES = ("mlp", "gbm", "linear")


class TrainError(RuntimeError):
    """Anything that must stop the trainer with a clear message."""


# --------------------------------------------------------------------------
# The augur CLI: the only source of the encoding and of the model loader
# --------------------------------------------------------------------------


def _run(cmd: Sequence[str], stdin: str | None = None) -> str:
    try:
        p = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, check=False)
    except OSError as e:
        raise TrainError(f"cannot run {cmd[0]}: {e} (build it with `cargo build --release --bin augur`)") from e
    if p.returncode != 0:
        raise TrainError(f"`{' '.join(cmd[:3])}` exited {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def augur_schema(augur: str = DEFAULT_AUGUR) -> dict:
    """``augur schema`` as a dict: {"schema", "dim", "slots", "impacts"}."""
    schema = json.loads(_run([augur, "schema"]))
    if tuple(schema.get("impacts", ())) != IMPACTS:
        raise TrainError(f"augur reports impacts {schema.get('impacts')}, this trainer writes {IMPACTS}")
    return schema


def augur_encode(augur: str, config: str, requests: Iterable[Mapping[str, str]], dim: int | None = None) -> np.ndarray:
    """Encodes request header dicts with ``augur encode`` (one batch on stdin).

    Returns float32 [N, dim]. Raises if augur fails or returns the wrong count.
    """
    lines = [json.dumps(dict(r), separators=(",", ":")) for r in requests]
    out = _run([augur, "encode", "--config", config], stdin="\n".join(lines) + "\n").splitlines()
    if len(out) != len(lines):
        raise TrainError(f"augur encode returned {len(out)} vectors for {len(lines)} requests")
    x = np.asarray([json.loads(v) for v in out], dtype=np.float32)
    if dim is not None and x.shape[1:] != (dim,):
        raise TrainError(f"augur encode returned vectors of shape {x.shape[1:]}, schema says ({dim},)")
    return x


def inspect_model(augur: str, path: str | os.PathLike) -> dict:
    """``augur inspect-model``: loads the model exactly as the filter does
    (``engine`` says which kernel runs it and why)."""
    return json.loads(_run([augur, "inspect-model", str(path)]))


def augur_predict(augur: str, path: str | os.PathLike, vectors: np.ndarray) -> np.ndarray:
    """``augur predict``: the filter's raw model outputs (not clamped) on ``vectors``."""
    lines = [json.dumps([float(v) for v in row]) for row in np.asarray(vectors, dtype=np.float32)]
    out = _run([augur, "predict", str(path)], stdin="\n".join(lines) + "\n").splitlines()
    if len(out) != len(lines):
        raise TrainError(f"augur predict returned {len(out)} rows for {len(lines)} vectors")
    return np.asarray([json.loads(r) for r in out], dtype=np.float32)


def ort_predict(onnx_bytes: bytes, vectors: np.ndarray) -> np.ndarray:
    """The model's raw output as onnxruntime computes it (the reference runtime);
    a classifier's ``probabilities`` output if it has several."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in sess.get_outputs()]
    name = outputs[0] if len(outputs) == 1 else "probabilities"
    x = np.asarray(vectors, dtype=np.float32)
    return np.asarray(sess.run([name], {sess.get_inputs()[0].name: x})[0], dtype=np.float32).reshape(len(x), -1)


# --------------------------------------------------------------------------
# Training and export (no dependency on synthetic data)
# --------------------------------------------------------------------------


def fit(vectors: np.ndarray, targets: np.ndarray, seed: int, hidden: Sequence[int] = DEFAULT_HIDDEN):
    """Fits an MLPRegressor (ReLU, Adam, early stopping) mapping vectors → targets."""
    from sklearn.neural_network import MLPRegressor

    x = np.asarray(vectors, dtype=np.float32)
    y = np.asarray(targets, dtype=np.float32)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise TrainError(f"vectors {x.shape} and targets {y.shape} must be [N, dim] and [N, 4F]")
    if y.shape[1] % len(IMPACTS):
        raise TrainError(f"targets have {y.shape[1]} columns, not a multiple of {len(IMPACTS)}")
    mlp = MLPRegressor(
        hidden_layer_sizes=tuple(hidden),
        activation="relu",
        solver="adam",
        alpha=1e-4,
        batch_size=128,
        learning_rate_init=2e-3,
        max_iter=300,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=20,
        tol=1e-6,
        random_state=seed,
    )
    mlp.fit(x, y)
    return mlp


def predict(mlp, vectors: np.ndarray) -> np.ndarray:
    """Model predictions as the filter sees them (clamped to [0, 1])."""
    return np.clip(mlp.predict(np.asarray(vectors, dtype=np.float32)), 0.0, 1.0)


def export(
    mlp,
    features: Sequence[str],
    version: str,
    schema: str,
    opset: int = DEFAULT_OPSET,
    extra_metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Converts a fitted MLPRegressor to augur's ONNX contract and returns the bytes.

    Input ``x`` f32[N, dim]; output ``impacts`` f32[N, 4·F] (unclamped: the
    filter clamps to [0, 1]); metadata ``augur.schema``,
    ``augur.features``, ``augur.version`` (+ ``extra_metadata``).
    """
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    features = list(features)
    if not features or any("," in f or not f.strip() for f in features):
        raise TrainError(f"bad feature names {features}")
    n_out = len(features) * len(IMPACTS)
    if getattr(mlp, "n_outputs_", None) != n_out:
        raise TrainError(f"model has {getattr(mlp, 'n_outputs_', '?')} outputs, {len(features)} features need {n_out}")

    dim = mlp.n_features_in_
    model = convert_sklearn(
        mlp,
        initial_types=[("x", FloatTensorType([None, dim]))],
        target_opset={"": opset},
    )
    graph = model.graph
    if len(graph.output) != 1:
        raise TrainError(f"skl2onnx produced {len(graph.output)} outputs")

    # skl2onnx ends an MLPRegressor with Reshape(y, [-1, 1]), which flattens a
    # multi-output model to [N·4F, 1]. Drop that Reshape: y is already [N, 4F].
    raw = graph.output[0].name
    last = [n for n in graph.node if raw in n.output]
    if len(last) == 1 and last[0].op_type == "Reshape":
        raw = last[0].input[0]
        shape_input = last[0].input[1]
        graph.node.remove(last[0])
        if not any(shape_input in n.input for n in graph.node):
            keep_init = [i for i in graph.initializer if i.name != shape_input]
            del graph.initializer[:]
            graph.initializer.extend(keep_init)

    # No clamp in the graph: the filter clamps every impact to [0, 1] itself, and
    # four extra elementwise nodes cost ~30% of the inference time in tract.
    for node in graph.node:
        node.output[:] = ["impacts" if o == raw else o for o in node.output]
        node.input[:] = ["impacts" if i == raw else i for i in node.input]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("impacts", TensorProto.FLOAT, [None, n_out]))
    graph.name = "augur_impacts"
    # Drop opset imports of domains no node uses (e.g. ai.onnx.ml).
    used = {n.domain for n in graph.node}
    keep = [o for o in model.opset_import if o.domain in used or o.domain == ""]
    del model.opset_import[:]
    model.opset_import.extend(keep)

    add_metadata(model, features, version, schema, extra_metadata)
    model.doc_string = "augur impact model: see python/augur_tools/loop/train.py"

    onnx.checker.check_model(model, full_check=True)
    bad_ops = {n.op_type for n in graph.node} - {"MatMul", "Gemm", "Add", "Sub", "Relu", "Sigmoid", "Identity", "Cast"}
    if bad_ops:
        raise TrainError(f"exported graph uses ops outside the simple set: {sorted(bad_ops)}")
    return model.SerializeToString()


def fit_family(family: str, vectors: np.ndarray, targets: np.ndarray, seed: int, *, gbm: str = "lightgbm",
               trees: int = 100, depth: int = 6, hidden: Sequence[int] = DEFAULT_HIDDEN):
    """Fits one model family on (vectors → targets [N, 4F]).

    ``mlp``: :func:`fit`. ``gbm``: one gradient-boosted regressor per output
    (``trees`` boosting rounds of depth ≤ ``depth`` each), LightGBM or, with
    ``gbm="sklearn"``, scikit-learn's GradientBoostingRegressor, wrapped in a
    MultiOutputRegressor (both export to ONNX ``TreeEnsembleRegressor`` nodes).
    ``linear``: ridge regression (exports to ``LinearRegressor``).
    """
    from sklearn.multioutput import MultiOutputRegressor

    x = np.asarray(vectors, dtype=np.float32)
    y = np.asarray(targets, dtype=np.float32)
    if family == "mlp":
        return fit(x, y, seed, hidden)
    if family == "linear":
        from sklearn.linear_model import Ridge

        return Ridge(alpha=1e-3).fit(x, y)
    if family != "gbm":
        raise TrainError(f"unknown model family {family!r} (expected one of {', '.join(FAMILIES)})")
    if gbm == "lightgbm":
        import lightgbm as lgb

        base = lgb.LGBMRegressor(n_estimators=trees, max_depth=depth, num_leaves=min(2 ** depth, 131072),
                                 learning_rate=0.1, min_child_samples=10, subsample=1.0, random_state=seed,
                                 verbose=-1, n_jobs=1)
    elif gbm == "sklearn":
        from sklearn.ensemble import GradientBoostingRegressor

        base = GradientBoostingRegressor(n_estimators=trees, max_depth=depth, learning_rate=0.1, random_state=seed)
    else:
        raise TrainError(f"unknown --gbm {gbm!r} (expected lightgbm or sklearn)")
    return MultiOutputRegressor(base).fit(x, y)


def family_of(model) -> str:
    from sklearn.neural_network import MLPRegressor

    if isinstance(model, MLPRegressor):
        return "mlp"
    return "linear" if hasattr(model, "coef_") else "gbm"


def model_predict(model, vectors: np.ndarray) -> np.ndarray:
    """Predictions of any fitted family as the filter sees them (clamped to [0, 1])."""
    return np.clip(np.asarray(model.predict(np.asarray(vectors, dtype=np.float32)), dtype=np.float32), 0.0, 1.0)


def _register_lightgbm():
    import lightgbm as lgb
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import (
        convert_lightgbm,
    )
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_regressor_output_shapes,
    )

    update_registered_converter(lgb.LGBMRegressor, "LightGbmLGBMRegressor",
                                calculate_linear_regressor_output_shapes, convert_lightgbm)


def add_metadata(model, features: Sequence[str], version: str, schema: str,
                 extra_metadata: Mapping[str, str] | None = None) -> None:
    meta = {
        "augur.schema": schema,
        "augur.features": ",".join(features),
        "augur.version": version,
        "augur.impacts": ",".join(IMPACTS),
        **(extra_metadata or {}),
    }
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=str(v))


def export_model(model, features: Sequence[str], version: str, schema: str, opset: int = DEFAULT_OPSET,
                 extra_metadata: Mapping[str, str] | None = None) -> bytes:
    """Exports any fitted family to augur's ONNX contract.

    An MLP goes through :func:`export`. A GBM or linear model is converted by
    skl2onnx (LightGBM boosters by onnxmltools' converter) and kept exactly as
    the converter wrote it — one ``TreeEnsembleRegressor`` (or a
    ``LinearRegressor``), ``Reshape`` and ``Concat`` nodes — plus the
    ``augur.*`` metadata.
    """
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    family = family_of(model)
    if family == "mlp":
        return export(model, features, version, schema, opset, extra_metadata)
    features = list(features)
    n_out = len(features) * len(IMPACTS)
    got = len(model.estimators_) if hasattr(model, "estimators_") else np.atleast_2d(model.coef_).shape[0]
    if got != n_out:
        raise TrainError(f"model has {got} outputs, {len(features)} features need {n_out}")
    if family == "gbm":
        _register_lightgbm()
    onx = convert_sklearn(model, initial_types=[("x", FloatTensorType([None, model.n_features_in_]))],
                          target_opset={"": opset, "ai.onnx.ml": DEFAULT_ML_OPSET})
    add_metadata(onx, features, version, schema, extra_metadata)
    onx.doc_string = f"augur impact model ({family}): see python/augur_tools/loop/train.py"
    onnx.checker.check_model(onx, full_check=True)
    return onx.SerializeToString()


def check_ort_matches(onnx_bytes: bytes, model, vectors: np.ndarray, atol: float = 1e-4) -> float:
    """onnxruntime on the exported graph vs the fitted model (both clamped as the
    filter clamps); returns the max difference, raises above ``atol``."""
    x = np.asarray(vectors, dtype=np.float32)
    got = np.clip(ort_predict(onnx_bytes, x), 0.0, 1.0)
    d = np.abs(got - model_predict(model, x))
    diff = float(np.max(d))
    if family_of(model) == "gbm":
        # The converters store split thresholds as float32 while LightGBM and
        # scikit-learn compare in float64: an input between the two values takes
        # the other branch. Allow a few such rows, never a systematic difference.
        off = float(np.mean(d > atol))
        if off > 0.005 or diff > 0.1:
            raise TrainError(f"exported ONNX (gbm) disagrees with the fitted model on {100 * off:.2f}% of the "
                             f"values (max {diff:.2e})")
        return diff
    if diff > atol:
        raise TrainError(f"exported ONNX ({family_of(model)}) disagrees with the fitted model by {diff:.2e}")
    return diff


def pick_family(x_tr, y_tr, x_te, y_te, seed: int, families: Sequence[str] = FAMILIES, log=print, **kw):
    """Fits every family on the training rows; returns (best model, its family,
    {family: held-out MAE}) — the lowest mean absolute error on the held-out
    rows (clamped predictions, as the filter sees them) wins."""
    scores, models = {}, {}
    for fam in families:
        t0 = time.monotonic()
        models[fam] = fit_family(fam, x_tr, y_tr, seed, **kw)
        scores[fam] = float(np.abs(model_predict(models[fam], x_te) - y_te).mean())
        log(f"  candidate {fam:<7} held-out MAE {scores[fam]:.4f} (fit {time.monotonic() - t0:.1f}s)")
    best = min(scores, key=scores.get)
    log(f"  picked {best}: lowest held-out MAE ({scores[best]:.4f})")
    return models[best], best, scores


def train(
    vectors: np.ndarray,
    targets: np.ndarray,
    features: Sequence[str],
    version: str,
    seed: int,
    *,
    schema: str | None = None,
    augur: str = DEFAULT_AUGUR,
    hidden: Sequence[int] = DEFAULT_HIDDEN,
) -> bytes:
    """Fits on (vectors, targets) and returns the ONNX model bytes.

    ``vectors`` come from ``augur encode`` or the ``x`` field of decision
    records; ``targets`` are [N, 4·len(features)] in [0, 1], impacts ordered as
    IMPACTS per feature. ``schema`` defaults to what ``augur schema`` reports.
    """
    if schema is None:
        schema = augur_schema(augur)["schema"]
    return export(fit(vectors, targets, seed, hidden), features, version, schema)


def check_onnx_matches(onnx_bytes: bytes, mlp, vectors: np.ndarray, atol: float = 1e-4) -> float:
    """Runs the ONNX graph with onnx's reference evaluator; returns the max
    difference to the clamped scikit-learn predictions (raises above atol)."""
    from onnx.reference import ReferenceEvaluator

    x = np.asarray(vectors, dtype=np.float32)
    got = np.clip(ReferenceEvaluator(onnx_bytes).run(None, {"x": x})[0], 0.0, 1.0)  # as the filter clamps
    diff = float(np.max(np.abs(got - predict(mlp, x))))
    if diff > atol:
        raise TrainError(f"exported ONNX disagrees with scikit-learn by {diff:.2e}")
    return diff


# --------------------------------------------------------------------------
# Synthetic dataset
# --------------------------------------------------------------------------


def _synthetic():
    from augur_tools.sim import synthetic  # only the dataset needs it

    return synthetic


def make_dataset(rows: int, seed: int, users: int | None = None):
    """Seeded synthetic requests: (users, [(user, headers)], truth [N, 4F], features)."""
    syn = _synthetic()
    population = syn.make_users(users or max(100, rows // 4), seed)
    rng = random.Random(seed + 1)
    reqs = list(syn.traffic(population, rows, rng))
    features = list(syn.DEMO_FEATURES)
    truth = np.asarray(
        [[v for f in features for v in syn.true_impacts(u, h)[f]] for u, h in reqs], dtype=np.float32
    )
    return population, reqs, truth, features


def check_devices(x: np.ndarray, reqs, slots: list[dict]) -> None:
    """Fails unless augur classified every synthetic User-Agent as intended."""
    index = {s["name"]: s["index"] for s in slots}
    bad = {}
    for row, (user, headers) in zip(x, reqs):
        slot = index.get(f"device_{user.device}")
        if slot is None or row[slot] != 1.0:
            bad.setdefault(headers["user-agent"], user.device)
    if bad:
        lines = "\n".join(f"  want {d}: {ua}" for ua, d in bad.items())
        raise TrainError(f"augur classifies these synthetic User-Agents differently:\n{lines}")


def mae_table(pred: np.ndarray, truth: np.ndarray, features: Sequence[str]) -> np.ndarray:
    """[F, 4] mean absolute error per feature and impact."""
    err = np.abs(pred - truth).reshape(len(pred), len(features), len(IMPACTS))
    return err.mean(axis=0)


#: Planted patterns to check on held-out rows: (label, feature, impact, predicate(user, headers)).
PLANTED = (
    ("tablet write", "new_checkout", "error_risk", lambda u, h: u.device == "tablet" and h[":method"] == "POST"),
    ("other", "new_checkout", "error_risk", lambda u, h: not (u.device == "tablet" and h[":method"] == "POST")),
    ("purchases>=5", "new_checkout", "engagement", lambda u, h: u.purchases_90d >= 5),
    ("tenure<30d", "one_click_pay", "security_risk", lambda u, h: u.tenure_days < 30),
    ("tenure 25-29d", "one_click_pay", "security_risk", lambda u, h: 25 <= u.tenure_days < 30),
    ("tenure 30-34d", "one_click_pay", "security_risk", lambda u, h: 30 <= u.tenure_days < 35),
    ("bot", "search_v2", "security_risk", lambda u, h: u.device == "bot"),
    ("sessions<10", "recommendations", "engagement", lambda u, h: u.sessions_30d < 10),
    ("sessions>=30", "recommendations", "engagement", lambda u, h: u.sessions_30d >= 30),
    ("mobile/tablet", "hd_images", "performance_cost", lambda u, h: u.device in ("mobile", "tablet")),
    ("desktop apac/latam", "hd_images", "performance_cost", lambda u, h: u.device == "desktop" and u.region in ("apac", "latam")),
    ("desktop us/eu/other", "hd_images", "performance_cost", lambda u, h: u.device == "desktop" and u.region not in ("apac", "latam")),
)


def print_planted(pred: np.ndarray, truth: np.ndarray, reqs, features: Sequence[str]) -> None:
    """Mean prediction vs mean truth inside each planted group (held-out rows)."""
    print(f"  {'planted pattern (held-out)':<52}{'n':>6}{'truth':>8}{'pred':>8}")
    for label, feature, impact, pred_fn in PLANTED:
        col = features.index(feature) * len(IMPACTS) + IMPACTS.index(impact)
        rows = np.array([bool(pred_fn(u, h)) for u, h in reqs])
        if rows.any():
            name = f"{feature}.{impact} | {label}"
            print(f"  {name:<52}{rows.sum():>6}{truth[rows, col].mean():>8.3f}{pred[rows, col].mean():>8.3f}")


def print_mae(table: np.ndarray, features: Sequence[str]) -> None:
    w = max(len(f) for f in features) + 2
    head = "".join(f"{i[:11]:>12}" for i in IMPACTS)
    print(f"  {'held-out MAE':<{w}}{head}{'mean':>8}")
    for f, row in zip(features, table):
        print(f"  {f:<{w}}" + "".join(f"{v:>12.4f}" for v in row) + f"{row.mean():>8.4f}")
    print(f"  {'all':<{w}}" + "".join(f"{v:>12.4f}" for v in table.mean(axis=0)) + f"{table.mean():>8.4f}")


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--augur", default=DEFAULT_AUGUR, help="path to the native augur CLI")
    ap.add_argument("--config", required=True, help="plugin config whose profile defines the encoding")
    ap.add_argument("--out", required=True, help="where to write the .onnx model")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rows", type=int, default=20000, help="synthetic requests")
    ap.add_argument("--users", type=int, default=None, help="synthetic users (default rows/4)")
    ap.add_argument("--version", default="default-v1", help="augur.version metadata")
    ap.add_argument("--hidden", default="32,32", help="hidden layer sizes, e.g. 32 or 32,32")
    ap.add_argument("--noise", type=float, default=0.02, help="gaussian noise sd added to targets")
    ap.add_argument("--holdout", type=float, default=0.2, help="share of users held out for evaluation")
    ap.add_argument("--model", default="mlp", choices=(*FAMILIES, "auto"),
                    help="model family; auto = fit all and keep the lowest held-out error")
    ap.add_argument("--gbm", default="lightgbm", choices=("lightgbm", "sklearn"), help="gbm implementation")
    ap.add_argument("--trees", type=int, default=100, help="gbm: boosting rounds per output")
    ap.add_argument("--depth", type=int, default=6, help="gbm: maximum tree depth")
    args = ap.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(",") if h)
    t0 = time.monotonic()

    schema = augur_schema(args.augur)
    _, reqs, truth, features = make_dataset(args.rows, args.seed, args.users)
    x = augur_encode(args.augur, args.config, (h for _, h in reqs), dim=schema["dim"])
    check_devices(x, reqs, schema["slots"])
    t_enc = time.monotonic() - t0

    noise_rng = np.random.default_rng(args.seed)
    y = np.clip(truth + noise_rng.normal(0.0, args.noise, truth.shape), 0.0, 1.0).astype(np.float32)

    # Hold out whole users (a stable split by user id), so evaluation is on unseen users.
    held = np.array([int(u.id[1:]) * 2654435761 % 1000 < args.holdout * 1000 for u, _ in reqs])
    x_tr, y_tr = x[~held], y[~held]
    x_te, t_te = x[held], truth[held]

    t1 = time.monotonic()
    kw = {"gbm": args.gbm, "trees": args.trees, "depth": args.depth, "hidden": hidden}
    if args.model == "auto":
        model, family, _ = pick_family(x_tr, y_tr, x_te, t_te, args.seed, **kw)
    else:
        model, family = fit_family(args.model, x_tr, y_tr, args.seed, **kw), args.model
    t_fit = time.monotonic() - t1
    p_te = model_predict(model, x_te)
    table = mae_table(p_te, t_te, features)

    trainer = f"python/augur_tools/loop/train.py seed={args.seed} rows={args.rows} model={family}"
    if family == "mlp":
        trainer += f" hidden={args.hidden}"
    elif family == "gbm":
        trainer += f" gbm={args.gbm} trees={args.trees} depth={args.depth}"
    onnx_bytes = export_model(model, features, args.version, schema["schema"],
                              extra_metadata={"augur.trainer": trainer})
    diff = check_ort_matches(onnx_bytes, model, x_te[:2000])

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(onnx_bytes)
    try:
        info = inspect_model(args.augur, tmp)
    except TrainError as e:
        raise TrainError(f"augur cannot load the exported model (left at {tmp}): {e}") from e
    want = {"features": features, "version": args.version, "schema": schema["schema"]}
    got = {k: info.get(k) for k in want}
    if got != want:
        raise TrainError(f"augur inspect-model reports {got}, expected {want} (left at {tmp})")
    tmp.replace(out)

    print(f"augur model {args.version}: {len(features)} features x {len(IMPACTS)} impacts, schema {schema['schema']}")
    print(
        f"  data: {len(reqs)} requests ({held.sum()} held out, by user), encoded by {args.augur} "
        f"in {t_enc:.1f}s; target noise sd {args.noise}"
    )
    if family == "mlp":
        print(f"  mlp: hidden {hidden}, {model.n_iter_} epochs (early stopping) in {t_fit:.1f}s, "
              f"{sum(c.size for c in model.coefs_) + sum(b.size for b in model.intercepts_)} parameters")
    else:
        print(f"  {family}: fitted in {t_fit:.1f}s")
    print_mae(table, features)
    print_planted(p_te, t_te, [r for r, h in zip(reqs, held) if h], features)
    print(f"  onnx (onnxruntime) vs the fitted model max |diff| {diff:.1e}")
    print(
        f"  wrote {out} ({len(onnx_bytes)} bytes, sha256 {hashlib.sha256(onnx_bytes).hexdigest()[:16]}), "
        f"loaded by augur: {json.dumps(info)}"
    )
    print(f"  total {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    cli.run(main, [(TrainError, "train.py: error: ", 1)])
