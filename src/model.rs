//! Model: the embedded ONNX impact predictor, behind a small API.
//!
//! A model is parsed and optimised once per plugin configuration ([`Model::from_onnx`]);
//! each worker keeps one [`Session`] (tract run state) and reuses it for every
//! request, so no plan is ever rebuilt on the request path.
//!
//! Contract a model must meet (checked at load, refused otherwise):
//! - one input, `f32[1, INPUT_DIM]` (see [`crate::profile::SLOTS`]);
//! - one output with `4 × F` elements: for each scored feature, in order,
//!   `[performance_cost, error_risk, engagement, security_risk]`, each meant to be in
//!   `[0, 1]` (values are clamped; a non-finite value fails that request);
//! - ONNX `metadata_props`: `augur.schema` = [`SCHEMA_ID`], `augur.features` = the F
//!   feature names, comma-separated; optional `augur.version`.

use std::fmt;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::profile::{Vector, INPUT_DIM, SCHEMA_ID};

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

/// A loaded, optimised model. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Model {
    plan: Arc<TypedSimplePlan>,
    features: Vec<String>,
    version: String,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model").field("features", &self.features).field("version", &self.version).finish()
    }
}

fn metadata(model: &InferenceModel, key: &str) -> Option<String> {
    let t = model.properties.get(&format!("onnx.metadata_props.{key}"))?;
    let plain = t.try_as_plain_ram().ok()?;
    plain.to_scalar::<String>().ok().cloned()
}

impl Model {
    /// Parses, checks and optimises an ONNX model. Done once per configuration.
    pub fn from_onnx(bytes: &[u8]) -> Result<Model, ModelError> {
        let parse = |e: TractError| ModelError::Parse(format!("{e:#}"));
        let model = tract_onnx::onnx().model_for_read(&mut &bytes[..]).map_err(parse)?;

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
        Ok(Model { plan, features, version })
    }

    /// The features this model scores, in output order.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// The version label from the model's metadata.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// A run state for one worker. Keep it; creating one per request costs ~20%.
    pub fn session(&self) -> Result<Session, ModelError> {
        let state = self.plan.spawn().map_err(|e| ModelError::Run(format!("{e:#}")))?;
        Ok(Session { state, features: self.features.len() })
    }
}

/// One worker's reusable inference state.
pub struct Session {
    state: TypedSimpleState,
    features: usize,
}

impl Session {
    /// Predicts the impact of every model feature on the request `x`, into `out`
    /// (resized to the model's feature count).
    pub fn predict(&mut self, x: &Vector, out: &mut Vec<Impact>) -> Result<(), ModelError> {
        let run = |e: TractError| ModelError::Run(format!("{e:#}"));
        let input = Tensor::from_shape(&[1, INPUT_DIM], x).map_err(run)?;
        let outputs = self.state.run(tvec!(input.into_tvalue())).map_err(run)?;
        let first = outputs.first().ok_or_else(|| ModelError::Run("no output".into()))?;
        let plain = first.try_as_plain_ram().map_err(run)?;
        let values = plain.as_slice::<f32>().map_err(run)?;
        if values.len() != self.features * IMPACTS {
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

    #[test]
    fn garbage_bytes_are_refused_not_panicking() {
        for bytes in [&b""[..], b"not onnx at all", &[0xff; 64]] {
            assert!(Model::from_onnx(bytes).is_err());
        }
    }
}
