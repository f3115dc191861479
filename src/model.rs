//! Model: the embedded ONNX impact predictor, behind a small API.
//!
//! A model is parsed, checked and optimised by tract once per plugin
//! configuration ([`Model::from_onnx`]); each worker keeps one [`Session`] and
//! reuses it for every request, so no plan is ever rebuilt on the request path.
//!
//! Engine: a plain MLP (the shape `models/train.py` exports) is lowered to the
//! [`dense`] kernel, used only after it agreed with tract's plan on
//! [`PROBES`] probe inputs; every other graph, or `model.engine: "tract"`, runs
//! on tract's optimised plan.
//!
//! Contract a model must meet (checked at load, refused otherwise):
//! - one input, `f32[1, INPUT_DIM]` (see [`crate::profile::SLOTS`]);
//! - one output with `4 × F` elements: for each scored feature, in order,
//!   `[performance_cost, error_risk, engagement, security_risk]`, each meant to be in
//!   `[0, 1]` (values are clamped; a non-finite value fails that request);
//! - only the operators [`onnx_ops`] registers (MLP building blocks: MatMul, Gemm,
//!   Add, Relu, Sigmoid, Tanh, Cast, …); any other is refused, named, at load;
//! - ONNX `metadata_props`: `augur.schema` = [`SCHEMA_ID`], `augur.features` = the F
//!   feature names, comma-separated; optional `augur.version`.

use std::fmt;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::profile::{stable_hash, Vector, INPUT_DIM, SCHEMA_ID};

pub mod dense;
pub mod onnx_ops;

use dense::{Dense, Scratch};

/// Impact categories per feature, in output order.
pub const IMPACTS: usize = 4;
/// The default model, trained by `models/train.py` on seeded synthetic data.
pub const DEFAULT_MODEL: &[u8] = include_bytes!("../models/default.onnx");

/// Predicted impact of one feature on one request. All in `[0, 1]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Impact {
    /// Latency / resource cost (0 = free, 1 = very costly).
    pub performance_cost: f32,
    /// Probability-like risk of an error.
    pub error_risk: f32,
    /// Expected engagement benefit (0 = none, 1 = large).
    pub engagement: f32,
    /// Security risk (0 = none, 1 = high).
    pub security_risk: f32,
}

/// Relative weights of the four impacts in the 0-100 score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreWeights {
    pub performance: f32,
    pub error_rate: f32,
    pub engagement: f32,
    pub security: f32,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        ScoreWeights { performance: 1.0, error_rate: 1.0, engagement: 1.0, security: 1.0 }
    }
}

impl Impact {
    /// The feature enablement score, 0-100: the weighted mean of the four
    /// "goodness" values `1-cost`, `1-error`, `engagement`, `1-security`.
    /// 100 = free, safe and engaging; 0 = costly, failing, useless and risky.
    pub fn score(&self, w: &ScoreWeights) -> u8 {
        let total = w.performance + w.error_rate + w.engagement + w.security;
        if total <= 0.0 {
            return 0;
        }
        let good = w.performance * (1.0 - self.performance_cost)
            + w.error_rate * (1.0 - self.error_risk)
            + w.engagement * self.engagement
            + w.security * (1.0 - self.security_risk);
        (100.0 * good / total).round().clamp(0.0, 100.0) as u8
    }
}

/// Why a model was refused or a run failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelError {
    /// The bytes are not a loadable ONNX model.
    Parse(String),
    /// `metadata_props` entry missing or wrong.
    Metadata(String),
    /// Input/output shapes do not follow the contract.
    Shape(String),
    /// A run failed or produced non-finite values.
    Run(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Parse(m) => write!(f, "not a loadable ONNX model: {m}"),
            ModelError::Metadata(m) => write!(f, "metadata: {m}"),
            ModelError::Shape(m) => write!(f, "shape: {m}"),
            ModelError::Run(m) => write!(f, "inference failed: {m}"),
        }
    }
}

impl std::error::Error for ModelError {}

/// Which engine runs the model per request (`model.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// The dense kernel when the graph is a plain MLP that agrees with tract,
    /// else tract.
    #[default]
    Auto,
    /// Always tract's plan.
    Tract,
}

/// Probe inputs a lowered model must agree with tract on before it is used.
pub const PROBES: usize = 64;
/// Largest difference allowed between the dense kernel and tract on a probe
/// (outputs are impacts in `[0, 1]`; summation order differs, so not exact).
const PROBE_TOLERANCE: f32 = 1e-4;

/// A loaded, optimised model. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Model {
    plan: Arc<TypedSimplePlan>,
    dense: Option<Arc<Dense>>,
    engine: String,
    features: Vec<String>,
    version: String,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("features", &self.features)
            .field("version", &self.version)
            .field("engine", &self.engine)
            .finish()
    }
}

/// Probe input `i`: all zeros, all ones, each one-hot slot, then seeded
/// pseudo-random vectors in `[0, 1)` (stable across runs and platforms).
fn probe(i: usize) -> Vector {
    let mut x = [0.0f32; INPUT_DIM];
    match i {
        0 => {}
        1 => x = [1.0; INPUT_DIM],
        _ if i < 2 + INPUT_DIM => x[i - 2] = 1.0,
        _ => {
            for (j, v) in x.iter_mut().enumerate() {
                let h = stable_hash(&[b"augur-probe", &(i as u64).to_le_bytes(), &(j as u64).to_le_bytes()]);
                *v = (h >> 40) as f32 / (1u64 << 24) as f32;
            }
        }
    }
    x
}

/// Runs tract's plan on `x` and hands the output values to `then` (a borrowed
/// slice: no copy on the request path).
fn run_plan<R>(
    state: &mut TypedSimpleState,
    x: &Vector,
    then: impl FnOnce(&[f32]) -> Result<R, ModelError>,
) -> Result<R, ModelError> {
    let run = |e: TractError| ModelError::Run(format!("{e:#}"));
    let input = Tensor::from_shape(&[1, INPUT_DIM], x).map_err(run)?;
    let outputs = state.run(tvec!(input.into_tvalue())).map_err(run)?;
    let first = outputs.first().ok_or_else(|| ModelError::Run("no output".into()))?;
    let plain = first.try_as_plain_ram().map_err(run)?;
    then(plain.as_slice::<f32>().map_err(run)?)
}

/// The dense kernel for `proto` if it lowers and agrees with tract on every
/// probe; otherwise why not (logged, and shown by `augur inspect-model`).
fn verified_dense(
    proto: &tract_onnx::pb::ModelProto,
    plan: &Arc<TypedSimplePlan>,
    outputs: usize,
) -> Result<(Dense, f32), String> {
    let net = dense::lower(proto, INPUT_DIM)?;
    if net.input_dim() != INPUT_DIM || net.output_dim() != outputs {
        return Err(format!(
            "lowered to {} (expected {INPUT_DIM} inputs, {outputs} outputs)",
            net.describe()
        ));
    }
    let mut state = plan.spawn().map_err(|e| format!("{e:#}"))?;
    let mut scratch = net.scratch();
    let mut worst = 0.0f32;
    for i in 0..PROBES {
        let x = probe(i);
        let want = run_plan(&mut state, &x, |v| Ok(v.to_vec())).map_err(|e| e.to_string())?;
        let got = net.run(&x, &mut scratch);
        for (g, w) in got.iter().zip(&want) {
            let d = (g - w).abs();
            if !w.is_finite() || !g.is_finite() || d > PROBE_TOLERANCE {
                return Err(format!("the dense kernel differs from tract by {d} on probe {i}"));
            }
            worst = worst.max(d);
        }
    }
    Ok((net, worst))
}

fn metadata(model: &InferenceModel, key: &str) -> Option<String> {
    let t = model.properties.get(&format!("onnx.metadata_props.{key}"))?;
    let plain = t.try_as_plain_ram().ok()?;
    plain.to_scalar::<String>().ok().cloned()
}

impl Model {
    /// Parses, checks and optimises an ONNX model with the default engine choice.
    pub fn from_onnx(bytes: &[u8]) -> Result<Model, ModelError> {
        Model::from_onnx_with(bytes, EngineChoice::Auto)
    }

    /// Parses, checks and optimises an ONNX model. Done once per configuration.
    pub fn from_onnx_with(bytes: &[u8], choice: EngineChoice) -> Result<Model, ModelError> {
        let parse = |e: TractError| ModelError::Parse(format!("{e:#}"));
        let onnx = onnx_ops::framework();
        let proto = onnx.proto_model_for_read(&mut &bytes[..]).map_err(parse)?;
        onnx_ops::check_supported(&onnx, &proto).map_err(ModelError::Parse)?;
        let model = onnx.model_for_proto_model(&proto).map_err(parse)?;

        let schema = metadata(&model, "augur.schema").ok_or_else(|| {
            ModelError::Metadata("missing augur.schema; train the model with models/train.py".into())
        })?;
        if schema != SCHEMA_ID {
            return Err(ModelError::Metadata(format!(
                "augur.schema is \"{schema}\" but this filter encodes \"{SCHEMA_ID}\"; retrain the model"
            )));
        }
        let features: Vec<String> = metadata(&model, "augur.features")
            .ok_or_else(|| ModelError::Metadata("missing augur.features".into()))?
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if features.is_empty() {
            return Err(ModelError::Metadata("augur.features lists no feature".into()));
        }
        let version = metadata(&model, "augur.version").unwrap_or_else(|| "unversioned".into());

        if model.inputs.len() != 1 || model.outputs.len() != 1 {
            return Err(ModelError::Shape(format!(
                "expected 1 input and 1 output, found {} and {}",
                model.inputs.len(),
                model.outputs.len()
            )));
        }
        let model = model
            .with_input_fact(0, f32::fact([1, INPUT_DIM]).into())
            .map_err(|e| ModelError::Shape(format!("input must accept f32[1,{INPUT_DIM}]: {e:#}")))?;
        let typed = model
            .into_optimized()
            .map_err(|e| ModelError::Shape(format!("input must accept f32[1,{INPUT_DIM}]: {e:#}")))?;
        let out = typed.output_fact(0).map_err(parse)?;
        let want = features.len() * IMPACTS;
        let got: Option<usize> = out.shape.as_concrete().map(|s| s.iter().product());
        if got != Some(want) {
            return Err(ModelError::Shape(format!(
                "output has shape {:?} but {} features × {IMPACTS} impacts need {want} values",
                out.shape,
                features.len()
            )));
        }
        let plan = typed.into_runnable().map_err(parse)?;
        let (dense, engine) = match choice {
            EngineChoice::Tract => (None, "tract (model.engine)".to_string()),
            EngineChoice::Auto => match verified_dense(&proto, &plan, want) {
                Ok((net, worst)) => {
                    let engine = format!("dense {} (max diff vs tract {worst:.1e})", net.describe());
                    (Some(Arc::new(net)), engine)
                }
                Err(why) => (None, format!("tract ({why})")),
            },
        };
        Ok(Model { plan, dense, engine, features, version })
    }

    /// Which engine runs this model, and why (for logs and the CLI).
    pub fn engine(&self) -> &str {
        &self.engine
    }

    /// The features this model scores, in output order.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// The version label from the model's metadata.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// A run state for one worker. Keep it: a tract state created per request
    /// costs ~20% more.
    pub fn session(&self) -> Result<Session, ModelError> {
        let runner = match &self.dense {
            Some(net) => Runner::Dense { scratch: net.scratch(), net: Arc::clone(net) },
            None => Runner::Tract(self.plan.spawn().map_err(|e| ModelError::Run(format!("{e:#}")))?),
        };
        Ok(Session { runner, features: self.features.len() })
    }
}

enum Runner {
    Dense { net: Arc<Dense>, scratch: Scratch },
    Tract(TypedSimpleState),
}

/// One worker's reusable inference state.
pub struct Session {
    runner: Runner,
    features: usize,
}

impl Session {
    /// Predicts the impact of every model feature on the request `x`, into `out`
    /// (resized to the model's feature count).
    pub fn predict(&mut self, x: &Vector, out: &mut Vec<Impact>) -> Result<(), ModelError> {
        match &mut self.runner {
            Runner::Dense { net, scratch } => impacts(net.run(x, scratch), self.features, out),
            Runner::Tract(state) => run_plan(state, x, |v| impacts(v, self.features, out)),
        }
    }
}

/// Checks a raw output (`4 × features` finite values) and clamps it into impacts.
fn impacts(values: &[f32], features: usize, out: &mut Vec<Impact>) -> Result<(), ModelError> {
    if values.len() != features * IMPACTS {
        return Err(ModelError::Run(format!("output has {} values", values.len())));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::Run("non-finite output".into()));
    }
    out.clear();
    out.extend(values.chunks_exact(IMPACTS).map(|c| Impact {
        performance_cost: c[0].clamp(0.0, 1.0),
        error_risk: c[1].clamp(0.0, 1.0),
        engagement: c[2].clamp(0.0, 1.0),
        security_risk: c[3].clamp(0.0, 1.0),
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_bounds_and_weights() {
        let w = ScoreWeights::default();
        let best = Impact { performance_cost: 0.0, error_risk: 0.0, engagement: 1.0, security_risk: 0.0 };
        let worst = Impact { performance_cost: 1.0, error_risk: 1.0, engagement: 0.0, security_risk: 1.0 };
        assert_eq!(best.score(&w), 100);
        assert_eq!(worst.score(&w), 0);
        let mid = Impact { performance_cost: 0.5, error_risk: 0.5, engagement: 0.5, security_risk: 0.5 };
        assert_eq!(mid.score(&w), 50);
        let only_engagement =
            ScoreWeights { performance: 0.0, error_rate: 0.0, engagement: 1.0, security: 0.0 };
        let e = Impact { engagement: 0.73, ..worst };
        assert_eq!(e.score(&only_engagement), 73);
        let zero = ScoreWeights { performance: 0.0, error_rate: 0.0, engagement: 0.0, security: 0.0 };
        assert_eq!(best.score(&zero), 0);
    }

    #[test]
    fn default_model_loads_and_predicts_in_range() {
        let m = Model::from_onnx(DEFAULT_MODEL).unwrap();
        assert!(!m.features().is_empty());
        let mut s = m.session().unwrap();
        let mut out = Vec::new();
        let mut x = [0.0f32; INPUT_DIM];
        s.predict(&x, &mut out).unwrap();
        assert_eq!(out.len(), m.features().len());
        x[2] = 1.0;
        x[16] = 0.9;
        s.predict(&x, &mut out).unwrap();
        for i in &out {
            for v in [i.performance_cost, i.error_risk, i.engagement, i.security_risk] {
                assert!((0.0..=1.0).contains(&v));
            }
        }
    }

    /// Predictions of `a` and `b` on seeded random inputs: the largest difference.
    fn max_difference(a: &Model, b: &Model, n: usize) -> f32 {
        let (mut sa, mut sb) = (a.session().unwrap(), b.session().unwrap());
        let (mut oa, mut ob) = (Vec::new(), Vec::new());
        let mut worst = 0.0f32;
        for i in 0..n {
            // Mix sparse (one-hot-like) and dense inputs, like real profiles.
            let mut x = probe(PROBES + i);
            if i % 2 == 0 {
                x.iter_mut().enumerate().for_each(|(j, v)| {
                    if (i + j) % 3 != 0 {
                        *v = 0.0
                    }
                });
            }
            sa.predict(&x, &mut oa).unwrap();
            sb.predict(&x, &mut ob).unwrap();
            assert_eq!(oa.len(), ob.len());
            for (p, q) in oa.iter().zip(&ob) {
                for (u, v) in [
                    (p.performance_cost, q.performance_cost),
                    (p.error_risk, q.error_risk),
                    (p.engagement, q.engagement),
                    (p.security_risk, q.security_risk),
                ] {
                    worst = worst.max((u - v).abs());
                }
            }
        }
        worst
    }

    #[test]
    fn plain_mlps_run_on_the_dense_kernel_and_agree_with_tract() {
        let gemm =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gemm_mlp.onnx")).unwrap();
        for (name, bytes) in [("default", DEFAULT_MODEL), ("gemm fixture", gemm.as_slice())] {
            let auto = Model::from_onnx(bytes).unwrap();
            let tract = Model::from_onnx_with(bytes, EngineChoice::Tract).unwrap();
            assert!(auto.engine().starts_with("dense "), "{name}: {}", auto.engine());
            assert!(tract.engine().starts_with("tract"), "{name}: {}", tract.engine());
            let d = max_difference(&auto, &tract, 500);
            assert!(d < 1e-5, "{name}: dense and tract differ by {d}");
        }
    }

    #[test]
    fn other_graphs_fall_back_to_tract_and_say_why() {
        let nan =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nan_model.onnx")).unwrap();
        let m = Model::from_onnx(&nan).unwrap();
        assert!(m.engine().starts_with("tract (") && m.engine().contains("Sub"), "{}", m.engine());
        // And tract still runs it: NaN outputs are a run error, not a panic.
        let mut s = m.session().unwrap();
        let mut out = Vec::new();
        let mut x = [0.0f32; INPUT_DIM];
        assert!(s.predict(&x, &mut out).is_ok());
        x[16] = 0.9;
        assert!(matches!(s.predict(&x, &mut out), Err(ModelError::Run(_))));
    }

    #[test]
    fn probes_cover_zero_ones_one_hots_and_random_inputs() {
        assert_eq!(probe(0), [0.0; INPUT_DIM]);
        assert_eq!(probe(1), [1.0; INPUT_DIM]);
        assert_eq!(probe(2 + 7).iter().filter(|v| **v == 1.0).count(), 1);
        let r = probe(PROBES - 1);
        assert!(r.iter().all(|v| (0.0..1.0).contains(v)));
        assert!(r.iter().filter(|v| **v > 0.0).count() > INPUT_DIM / 2);
        assert_ne!(probe(PROBES - 1), probe(PROBES - 2));
    }

    #[test]
    fn garbage_bytes_are_refused_not_panicking() {
        for bytes in [&b""[..], b"not onnx at all", &[0xff; 64]] {
            assert!(Model::from_onnx(bytes).is_err());
        }
    }

    /// The models this repository ships, all of which the trimmed operator set must load.
    const SHIPPED: [&[u8]; 7] = [
        DEFAULT_MODEL,
        include_bytes!("../benches/models/mlp_f1_h32.onnx"),
        include_bytes!("../benches/models/mlp_f10_h16.onnx"),
        include_bytes!("../benches/models/mlp_f10_h32.onnx"),
        include_bytes!("../benches/models/mlp_f10_h64.onnx"),
        include_bytes!("../benches/models/mlp_f10_h256.onnx"),
        include_bytes!("../benches/models/mlp_f50_h32.onnx"),
    ];

    fn plan(onnx: &tract_onnx::Onnx, bytes: &[u8]) -> Arc<TypedSimplePlan> {
        let model = onnx.model_for_read(&mut &bytes[..]).unwrap();
        let model = model.with_input_fact(0, f32::fact([1, INPUT_DIM]).into()).unwrap();
        model.into_optimized().unwrap().into_runnable().unwrap()
    }

    #[test]
    fn trimmed_operator_set_matches_full_tract_onnx() {
        let full = tract_onnx::onnx();
        let trimmed = onnx_ops::framework();
        for (m, bytes) in SHIPPED.iter().enumerate() {
            assert!(Model::from_onnx(bytes).is_ok(), "model {m} refused");
            let (a, b) = (plan(&full, bytes), plan(&trimmed, bytes));
            for seed in 0..16u32 {
                let x: Vec<f32> =
                    (0..INPUT_DIM).map(|i| ((i as u32 * 7 + seed * 13) % 17) as f32 / 8.0 - 1.0).collect();
                let x = Tensor::from_shape(&[1, INPUT_DIM], &x).unwrap();
                let ya = a.run(tvec!(x.clone().into_tvalue())).unwrap();
                let yb = b.run(tvec!(x.into_tvalue())).unwrap();
                let ya = ya[0].try_as_plain_ram().unwrap();
                let yb = yb[0].try_as_plain_ram().unwrap();
                let (ya, yb) = (ya.as_slice::<f32>().unwrap(), yb.as_slice::<f32>().unwrap());
                assert_eq!(
                    ya.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    yb.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "model {m}, seed {seed}"
                );
            }
        }
    }

    #[test]
    fn unsupported_operator_is_named() {
        // Same model with every Relu turned into Selu (same length, so the protobuf stays valid).
        let mut bytes = DEFAULT_MODEL.to_vec();
        for i in 0..bytes.len().saturating_sub(3) {
            if &bytes[i..i + 4] == b"Relu" {
                bytes[i] = b'S';
                bytes[i + 1] = b'e';
            }
        }
        match Model::from_onnx(&bytes) {
            Err(ModelError::Parse(m)) => {
                assert!(
                    m.starts_with(
                        "unsupported ONNX operator(s): Selu; this filter supports only Abs, Add, Cast"
                    ),
                    "{m}"
                )
            }
            other => panic!("expected a Parse error, got {other:?}"),
        }
    }
}
