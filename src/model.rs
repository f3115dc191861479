//! Model: the embedded ONNX impact predictor, behind a small API.
//!
//! A model is parsed, checked and optimised by tract once per plugin
//! configuration ([`Model::from_onnx`]); each worker keeps one [`Session`] and
//! reuses it for every request, so no plan is ever rebuilt on the request path.
//!
//! Engine: a plain MLP (the shape `augur_tools.loop.train` exports) is lowered to the
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

use crate::hash::stable_hash;
use crate::profile::{Vector, INPUT_DIM, SCHEMA_ID};

pub mod config;
pub mod dense;
pub mod graph;
pub mod onnx_ops;
pub mod trees;

use dense::{Dense, Scratch};
use graph::Program;

/// Impact categories per feature, in output order.
pub const IMPACTS: usize = 4;
/// The default model, trained by `augur_tools.loop.train` on seeded synthetic data.
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
    /// A size limit is exceeded; the message names the limit.
    Limit(String),
    /// The lowered kernel disagreed with the reference evaluation at load.
    Verify(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Parse(m) => write!(f, "not a loadable ONNX model: {m}"),
            ModelError::Metadata(m) => write!(f, "metadata: {m}"),
            ModelError::Shape(m) => write!(f, "shape: {m}"),
            ModelError::Run(m) => write!(f, "inference failed: {m}"),
            ModelError::Limit(m) => write!(f, "over a limit: {m}"),
            ModelError::Verify(m) => write!(f, "kernel check failed: {m}"),
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

/// Largest ONNX model the filter loads (bytes, after base64 decoding).
pub const MAX_MODEL_BYTES: usize = 32 << 20;

/// What runs a model per request.
#[derive(Clone)]
enum Kernel {
    /// tract's plan, or the dense kernel lowered from it.
    Tract { plan: Arc<TypedSimplePlan>, dense: Option<Arc<Dense>> },
    /// augur's ONNX-ML program: tree ensembles, linear models (no tract).
    Graph(Arc<Program>),
}

/// A loaded, optimised model. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Model {
    kernel: Kernel,
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

fn metadata(proto: &tract_onnx::pb::ModelProto, key: &str) -> Option<String> {
    proto.metadata_props.iter().find(|p| p.key == key).map(|p| p.value.clone())
}

/// A tract error as the model's parse error (its whole context chain).
fn parse(e: TractError) -> ModelError {
    ModelError::Parse(format!("{e:#}"))
}

/// The graph output the model contract reads: the only one, or a classifier's
/// `probabilities` (its `label` output is not used).
fn chosen_output(graph: &tract_onnx::pb::GraphProto) -> Result<String, ModelError> {
    match graph.output.as_slice() {
        [one] => Ok(one.name.clone()),
        many => many.iter().find(|o| o.name == "probabilities").map(|o| o.name.clone()).ok_or_else(|| {
            ModelError::Shape(format!(
                "expected 1 output (or a classifier's \"probabilities\"), found {}: {}",
                many.len(),
                many.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        }),
    }
}

/// Refuses a graph whose chosen output no node, input or initializer makes
/// (tract indexes its name table with it and would panic).
fn check_output_defined(graph: &tract_onnx::pb::GraphProto, output: &str) -> Result<(), ModelError> {
    let defined = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .chain(graph.initializer.iter().map(|t| t.name.as_str()))
        .chain(graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)))
        .any(|name| !name.is_empty() && name == output);
    if defined {
        return Ok(());
    }
    Err(ModelError::Shape(format!(
        "graph output \"{output}\" is made by no node, input or initializer; the model file is malformed, \
         export it again"
    )))
}

/// Keeps only the nodes `output` depends on, and only that output (a
/// classifier's label branch — ArgMax, ZipMap, Binarizer, ... — goes).
fn prune(graph: &mut tract_onnx::pb::GraphProto, output: &str) {
    let mut needed: std::collections::HashSet<String> = [output.to_string()].into();
    let mut keep = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(node.input.iter().filter(|n| !n.is_empty()).cloned());
        }
    }
    let mut k = keep.iter();
    graph.node.retain(|_| k.next().copied().unwrap_or(false));
    graph.output.retain(|o| o.name == output);
}

/// The one graph input that is not an initializer; checked to accept
/// `f32[1, INPUT_DIM]` (a fixed or dynamic batch, `INPUT_DIM` columns).
fn graph_input(graph: &tract_onnx::pb::GraphProto) -> Result<String, ModelError> {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;
    use tract_onnx::pb::type_proto::Value as Type;
    let inits: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<_> = graph.input.iter().filter(|i| !inits.contains(i.name.as_str())).collect();
    let [input] = inputs.as_slice() else {
        return Err(ModelError::Shape(format!("expected 1 input, found {}", inputs.len())));
    };
    if let Some(Type::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        if t.elem_type != 1 {
            return Err(ModelError::Shape(format!(
                "input \"{}\" has ONNX element type {}; it must be float (f32[N,{INPUT_DIM}])",
                input.name, t.elem_type
            )));
        }
        let dims: Vec<Option<i64>> = t
            .shape
            .iter()
            .flat_map(|s| s.dim.iter())
            .map(|d| match d.value {
                Some(Dim::DimValue(v)) => Some(v),
                _ => None,
            })
            .collect();
        let ok = match dims.as_slice() {
            [] => true,
            [b, c] => matches!(b, None | Some(1)) && (c.is_none() || *c == Some(INPUT_DIM as i64)),
            _ => false,
        };
        if !ok {
            return Err(ModelError::Shape(format!(
                "input \"{}\" has shape {dims:?}; it must accept f32[1,{INPUT_DIM}] (e.g. [N,{INPUT_DIM}])",
                input.name
            )));
        }
    }
    Ok(input.name.clone())
}

/// Agreement of a lowered program with its reference evaluation on every probe.
fn verified_program(program: &Program, outputs: usize) -> Result<f32, ModelError> {
    if program.input_dim() != INPUT_DIM || program.output_dim() != outputs {
        return Err(ModelError::Shape(format!("{} ({outputs} outputs expected)", program.describe())));
    }
    let mut scratch = program.scratch();
    let mut worst = 0.0f32;
    for i in 0..PROBES {
        let x = probe(i);
        let want = program.reference(&x);
        let got = program.run(&x, &mut scratch);
        for (g, w) in got.iter().zip(&want) {
            let d = (g - w).abs();
            if !w.is_finite() || !g.is_finite() || d > PROBE_TOLERANCE * w.abs().max(1.0) {
                return Err(ModelError::Verify(format!(
                    "the kernel gives {g} where the reference evaluation gives {w} on probe {i}"
                )));
            }
            worst = worst.max(d);
        }
    }
    Ok(worst)
}

impl Model {
    /// Parses, checks and optimises an ONNX model with the default engine choice.
    pub fn from_onnx(bytes: &[u8]) -> Result<Model, ModelError> {
        Model::from_onnx_with(bytes, EngineChoice::Auto)
    }

    /// Parses, checks and optimises an ONNX model. Done once per configuration.
    pub fn from_onnx_with(bytes: &[u8], choice: EngineChoice) -> Result<Model, ModelError> {
        if bytes.len() > MAX_MODEL_BYTES {
            return Err(ModelError::Limit(format!(
                "the model is {} bytes, over the limit of {MAX_MODEL_BYTES} (limit max_model_bytes); use fewer or \
                 shallower trees or a smaller network",
                bytes.len()
            )));
        }
        let onnx = onnx_ops::framework();
        let proto = onnx.proto_model_for_read(&mut &bytes[..]).map_err(parse)?;
        Model::from_proto(&onnx, proto, choice)
    }

    /// Checks and optimises a decoded model (the part after the bytes are parsed).
    fn from_proto(
        onnx: &tract_onnx::Onnx,
        mut proto: tract_onnx::pb::ModelProto,
        choice: EngineChoice,
    ) -> Result<Model, ModelError> {
        let schema = metadata(&proto, "augur.schema").ok_or_else(|| {
            ModelError::Metadata(
                "missing augur.schema; train the model with python -m augur_tools.loop.train".into(),
            )
        })?;
        if schema != SCHEMA_ID {
            return Err(ModelError::Metadata(format!(
                "augur.schema is \"{schema}\" but this filter encodes \"{SCHEMA_ID}\"; retrain the model"
            )));
        }
        let features: Vec<String> = metadata(&proto, "augur.features")
            .ok_or_else(|| ModelError::Metadata("missing augur.features".into()))?
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if features.is_empty() {
            return Err(ModelError::Metadata("augur.features lists no feature".into()));
        }
        let version = metadata(&proto, "augur.version").unwrap_or_else(|| "unversioned".into());
        let want = features.len() * IMPACTS;

        let graph = proto.graph.as_mut().ok_or_else(|| ModelError::Parse("no graph".into()))?;
        let output = chosen_output(graph)?;
        check_output_defined(graph, &output)?;
        prune(graph, &output);
        let input = graph_input(graph)?;
        let ml: Vec<&str> =
            graph.node.iter().map(|n| n.op_type.as_str()).filter(|op| graph::ML_OPS.contains(op)).collect();
        if let Some(op) = ml.first() {
            if choice == EngineChoice::Tract {
                return Err(ModelError::Parse(format!(
                    "model.engine \"tract\" cannot run {op} (the filter's tract has no ai.onnx.ml operators); \
                     set model.engine to \"auto\""
                )));
            }
            let (program, _) = graph::lower(graph, &input, &output, INPUT_DIM).map_err(|e| match e {
                graph::GraphError::Limit(m) => ModelError::Limit(m),
                graph::GraphError::Unsupported(m) => ModelError::Parse(m),
            })?;
            let worst = verified_program(&program, want)?;
            let engine = format!(
                "{} {} (max diff vs reference {worst:.1e})",
                if ml.iter().any(|op| op.starts_with("Tree")) { "trees" } else { "linear" },
                program.describe()
            );
            return Ok(Model { kernel: Kernel::Graph(Arc::new(program)), engine, features, version });
        }

        onnx_ops::check_supported(onnx, &proto).map_err(ModelError::Parse)?;
        let model = onnx.model_for_proto_model(&proto).map_err(parse)?;
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
        Ok(Model { kernel: Kernel::Tract { plan, dense }, engine, features, version })
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
        let runner = match &self.kernel {
            Kernel::Tract { dense: Some(net), .. } => {
                Runner::Dense { scratch: net.scratch(), net: Arc::clone(net) }
            }
            Kernel::Tract { plan, dense: None } => {
                Runner::Tract(plan.spawn().map_err(|e| ModelError::Run(format!("{e:#}")))?)
            }
            Kernel::Graph(p) => Runner::Graph { scratch: p.scratch(), program: Arc::clone(p) },
        };
        Ok(Session { runner, features: self.features.len() })
    }
}

enum Runner {
    Dense { net: Arc<Dense>, scratch: Scratch },
    Graph { program: Arc<Program>, scratch: graph::Scratch },
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
            Runner::Graph { program, scratch } => impacts(program.run(x, scratch), self.features, out),
        }
    }
}

impl Session {
    /// The model's raw output on `x` (`4 × features` values, not clamped), into
    /// `out`: what `augur predict` prints, to compare with other runtimes.
    pub fn predict_raw(&mut self, x: &Vector, out: &mut Vec<f32>) -> Result<(), ModelError> {
        out.clear();
        match &mut self.runner {
            Runner::Dense { net, scratch } => out.extend_from_slice(net.run(x, scratch)),
            Runner::Tract(state) => run_plan(state, x, |v| {
                out.extend_from_slice(v);
                Ok(())
            })?,
            Runner::Graph { program, scratch } => out.extend_from_slice(program.run(x, scratch)),
        }
        Ok(())
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
    fn an_output_nothing_makes_is_refused_not_panicking() {
        // Found by fuzz_model_bytes: tract-onnx indexes its name table with the output's name.
        let onnx = onnx_ops::framework();
        let mut proto = onnx.proto_model_for_read(&mut &DEFAULT_MODEL[..]).unwrap();
        proto.graph.as_mut().unwrap().output[0].name = "nowhere".into();
        for choice in [EngineChoice::Auto, EngineChoice::Tract] {
            let err = Model::from_proto(&onnx, proto.clone(), choice).err().unwrap();
            assert!(
                matches!(&err, ModelError::Shape(m) if m.contains("\"nowhere\" is made by no node")),
                "{err}"
            );
        }
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

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// Real models of every supported family, exported by the standard
    /// converters (augur_tools.fixtures), and the kernel that must run each.
    const ML_FIXTURES: [(&str, &str); 9] = [
        (
            "ml_lgbm",
            "trees 20 inputs → 20× TreeEnsembleRegressor[1 target, sum] → concat → 20 outputs; 160 trees",
        ),
        ("ml_skl_gbm", "trees "),
        ("ml_forest", "trees "),
        ("ml_forest_classifier", "trees "),
        ("ml_tree_ensemble_v5", "trees 20 inputs → 20× TreeEnsemble[1 target, sum] → 20× add → concat"),
        ("ml_linear", "linear 20 inputs → LinearRegressor[20→20]"),
        ("ml_logreg", "linear 20 inputs → LinearClassifier[20→4, softmax]"),
        ("ml_mlp_skl", "dense 20→16(relu)→20(linear)"),
        ("ml_mlp_classifier", "dense 20→16(relu)→20(sigmoid)"),
    ];

    #[test]
    fn standard_converter_exports_run_on_augurs_kernels_and_agree_with_onnxruntime() {
        let expected: serde_json::Value = serde_json::from_slice(&fixture("ml_expected.json")).unwrap();
        for (name, kernel) in ML_FIXTURES {
            let m = Model::from_onnx(&fixture(&format!("{name}.onnx")))
                .unwrap_or_else(|e| panic!("{name} refused: {e}"));
            assert!(m.engine().starts_with(kernel), "{name}: {}", m.engine());
            let case = &expected[name];
            let xs = case["x"].as_array().unwrap();
            let ys = case["y"].as_array().unwrap();
            assert!(xs.len() >= 40 && xs.len() == ys.len(), "{name}");
            let mut s = m.session().unwrap();
            let mut out = Vec::new();
            let mut worst = 0.0f32;
            for (x, y) in xs.iter().zip(ys) {
                let x: Vec<f32> = serde_json::from_value(x.clone()).unwrap();
                let y: Vec<f32> = serde_json::from_value(y.clone()).unwrap();
                s.predict_raw(&x.as_slice().try_into().unwrap(), &mut out).unwrap();
                assert_eq!(out.len(), y.len(), "{name}");
                for (a, b) in out.iter().zip(&y) {
                    worst = worst.max((a - b).abs());
                }
            }
            assert!(worst <= 1e-4, "{name}: differs from onnxruntime by {worst}");
        }
    }

    #[test]
    fn tree_models_cannot_be_forced_onto_tract() {
        match Model::from_onnx_with(&fixture("ml_lgbm.onnx"), EngineChoice::Tract) {
            Err(ModelError::Parse(m)) => {
                assert!(m.contains("cannot run TreeEnsembleRegressor") && m.contains("\"auto\""), "{m}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn oversized_models_are_refused_naming_the_limit() {
        let big = vec![0u8; MAX_MODEL_BYTES + 1];
        match Model::from_onnx(&big) {
            Err(ModelError::Limit(m)) => assert!(m.contains("max_model_bytes"), "{m}"),
            other => panic!("expected the byte limit, got {other:?}"),
        }
    }

    #[test]
    fn corrupted_tree_models_are_refused_or_run_never_panic() {
        // Flip bytes all over a real LightGBM export: every outcome is a load
        // error or a model that runs (verified against its reference), no panic.
        let good = fixture("ml_lgbm.onnx");
        let mut loaded = 0;
        for i in 0..120usize {
            let mut bytes = good.clone();
            let at = (i * 7919 + 13) % bytes.len();
            bytes[at] ^= 1 << (i % 8);
            if let Ok(m) = Model::from_onnx(&bytes) {
                loaded += 1;
                let mut s = m.session().unwrap();
                let mut out = Vec::new();
                let _ = s.predict(&probe(PROBES + i), &mut out);
            }
        }
        assert!(loaded > 0, "some flips (in weights) must still load");
    }

    #[test]
    fn shipped_benchmark_models_of_every_kind_load_on_their_kernel() {
        for (file, kernel) in [
            ("gbm_t100_d6", "trees "),
            ("gbm_t500_d8", "trees "),
            ("linear", "linear "),
            ("mlp_skl", "dense 20→32(relu)→32(relu)→20(linear)"),
        ] {
            let bytes =
                std::fs::read(format!("{}/benches/models/{file}.onnx", env!("CARGO_MANIFEST_DIR"))).unwrap();
            let m = Model::from_onnx(&bytes).unwrap();
            assert!(m.engine().starts_with(kernel), "{file}: {}", m.engine());
        }
    }
}
