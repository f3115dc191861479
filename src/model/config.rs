//! The `model` and `scoring` sections: which model scores the features (the
//! embedded default or an inline one), on which engine, and how an impact
//! becomes a 0-100 score.

use base64::Engine as _;
use serde::Deserialize;

use super::{EngineChoice, Model, ScoreWeights};
use crate::config::{is_token, ConfigError};

/// `model` in the plugin configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    onnx_base64: Option<String>,
    #[serde(default)]
    engine: RawEngine,
}

/// `model.engine`: `auto` lowers a plain MLP to the dense kernel (after it
/// agrees with tract on probe inputs); `tract` always runs tract's plan.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawEngine {
    #[default]
    Auto,
    Tract,
}

/// `scoring` in the plugin configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScoring {
    #[serde(default)]
    weights: Option<RawWeights>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeights {
    performance: f32,
    error_rate: f32,
    engagement: f32,
    security: f32,
}

/// Loads the model (`default_model` when none is inline) and its version label.
pub(crate) fn compile(raw: &RawModel, default_model: &[u8]) -> Result<(Model, String), ConfigError> {
    let engine = match raw.engine {
        RawEngine::Auto => EngineChoice::Auto,
        RawEngine::Tract => EngineChoice::Tract,
    };
    let model = match &raw.onnx_base64 {
        None => Model::from_onnx_with(default_model, engine)
            .map_err(|e| ConfigError::new("model", format!("embedded default model: {e}")))?,
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|e| {
                ConfigError::new(
                    "model.onnx_base64",
                    format!("not valid base64 ({e}); encode the .onnx file with `base64 -w0`"),
                )
            })?;
            Model::from_onnx_with(&bytes, engine)
                .map_err(|e| ConfigError::new("model.onnx_base64", e.to_string()))?
        }
    };
    let version = raw.version.clone().unwrap_or_else(|| model.version().to_string());
    if !is_token(&version.to_ascii_lowercase()) {
        return Err(ConfigError::new(
            "model.version",
            format!("\"{version}\" must be a token of letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok((model, version))
}

/// The score weights of `scoring` (the defaults when unset).
pub(crate) fn compile_weights(raw: &RawScoring) -> Result<ScoreWeights, ConfigError> {
    let Some(w) = &raw.weights else { return Ok(ScoreWeights::default()) };
    let all = [w.performance, w.error_rate, w.engagement, w.security];
    if all.iter().any(|x| !x.is_finite() || *x < 0.0) || all.iter().sum::<f32>() <= 0.0 {
        return Err(ConfigError::new("scoring.weights", "weights must be ≥ 0 with a positive sum"));
    }
    Ok(ScoreWeights {
        performance: w.performance,
        error_rate: w.error_rate,
        engagement: w.engagement,
        security: w.security,
    })
}

#[cfg(test)]
mod tests {
    use crate::testing::TestConfig;

    fn base() -> TestConfig {
        TestConfig::rollout(5.0).on("a")
    }

    #[test]
    fn bad_inline_model_is_refused() {
        let e = base().set("model.onnx_base64", "@@@").compile().unwrap_err().to_string();
        assert!(e.starts_with("model.onnx_base64: not valid base64"), "{e}");
        let e = base().set("model.onnx_base64", "aGVsbG8=").compile().unwrap_err().to_string();
        assert!(e.starts_with("model.onnx_base64: not a loadable ONNX model"), "{e}");
    }

    #[test]
    fn model_engine_is_auto_by_default_and_can_force_tract() {
        let auto = base().compile().unwrap();
        assert!(auto.model.engine().starts_with("dense "), "{}", auto.model.engine());
        let tract = base().set("model.engine", "tract").compile().unwrap();
        assert!(tract.model.engine().starts_with("tract"), "{}", tract.model.engine());
        let e = base().set("model.engine", "onnxruntime").compile().unwrap_err().to_string();
        assert!(
            e.starts_with("model.engine: unknown variant `onnxruntime`, expected `auto` or `tract`"),
            "{e}"
        );
    }

    #[test]
    fn score_weights_must_have_a_positive_sum() {
        let zero = serde_json::json!({"performance": 0, "error_rate": 0, "engagement": 0, "security": 0});
        let e = base().set("scoring.weights", zero).compile().unwrap_err().to_string();
        assert_eq!(e, "scoring.weights: weights must be ≥ 0 with a positive sum");
    }
}
