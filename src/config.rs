//! Config: the plugin configuration, parsed strictly and compiled once.
//!
//! The JSON (Envoy's `StringValue` plugin configuration) is parsed with serde
//! (`deny_unknown_fields`) and compiled into [`Config`] in `on_configure`. Each
//! stage owns its section — wire type, validation, compiled type — next to its
//! code (`profile::config`, `segments`, `flags::config`, `model::config`,
//! `routing`, `rollback::config`, `control`, `metrics`); this module only
//! assembles them and owns the error type. Any error refuses the whole
//! configuration — Envoy then keeps serving with the last good one. Every
//! field is documented in README ("Configuration reference").

use serde::Deserialize;

mod error;
pub use error::ConfigError;
pub(crate) use error::Field;

use crate::control::{self, ControlHeaders};
use crate::flags::config::RawFeature;
use crate::flags::FlagRules;
use crate::metrics::RawStats;
use crate::model::config::{RawModel, RawScoring};
use crate::model::{Model, DEFAULT_MODEL};
use crate::profile::config::RawProfile;
use crate::profile::ProfileSpec;
use crate::rollback::config::RawRollback;
use crate::rollback::Policy;
use crate::routing::{RawRollout, RawStacks, Rollout};
use crate::segments::{RawSegment, Segment};
use crate::{flags, metrics, model, profile, rollback, routing, segments};

/// Largest accepted plugin configuration, in bytes (JSON, inline model included).
pub const MAX_CONFIG_BYTES: usize = 4 << 20;

/// Largest `revision`: 2^53 - 1, the largest integer every JSON reader (and
/// Prometheus's float samples) holds exactly.
pub const MAX_REVISION: u64 = (1 << 53) - 1;

/// Header names and values the filter emits must be plain lowercase tokens.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.')
}

/// Global switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlobalOverride {
    /// Normal operation.
    #[default]
    Auto,
    /// Everything to the old stack, no features: the rollout's big red button.
    Off,
}

/// The whole document; each section's type belongs to its stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_name")]
    name: String,
    /// Set by whoever versions the configuration (the fleet controller: its
    /// action number); exported as a gauge so a proxy shows which one it serves
    /// whatever the config plane calls it.
    #[serde(default)]
    revision: u64,
    #[serde(rename = "override", default)]
    global_override: GlobalOverride,
    rollout: RawRollout,
    #[serde(default)]
    stacks: RawStacks,
    #[serde(default = "control::default_prefix")]
    control_header_prefix: String,
    /// Earlier prefixes during a prefix migration: still stripped from
    /// clients, and the stack header is also written under them.
    #[serde(default)]
    previous_control_header_prefixes: Vec<String>,
    /// The new-stack headers written for the app (the stack header always is).
    #[serde(default = "control::default_upstream")]
    upstream_headers: Vec<String>,
    #[serde(default)]
    profile: RawProfile,
    #[serde(default)]
    segments: Vec<RawSegment>,
    features: Vec<RawFeature>,
    #[serde(default)]
    model: RawModel,
    #[serde(default)]
    scoring: RawScoring,
    #[serde(default)]
    rollback: RawRollback,
    #[serde(default)]
    stats: RawStats,
}

fn default_name() -> String {
    "default".into()
}

/// The compiled configuration: everything the request path needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The rollout's name: the `rollout` label of every stat and record.
    pub name: String,
    /// The configuration's revision (`augur_config_revision`), 0 when unset.
    pub revision: u64,
    pub global_off: bool,
    pub rollout: Rollout,
    pub percentage: f64,
    /// Routing-header values for the old and new stack.
    pub old_stack: String,
    pub new_stack: String,
    pub headers: ControlHeaders,
    pub profile: ProfileSpec,
    /// Static and predicted segments, evaluated once per request after inference.
    pub segments: Vec<Segment>,
    /// Indices of the segments with `monitor: true` (per-segment outcome stats).
    pub monitored_segments: Vec<usize>,
    /// Per-segment deployment thresholds, first match wins (segment index, buckets).
    pub rollout_by_segment: Vec<(usize, u32)>,
    pub rules: FlagRules,
    pub model: Model,
    pub model_version: String,
    pub rollback: Policy,
    /// How often workers merge outcomes into shared data and re-evaluate.
    pub rollback_sync_ms: u64,
    /// How often batched counters are handed to the proxy; 0 = at once.
    pub stats_flush_ms: u64,
}

impl Config {
    /// Feature names in configuration order.
    pub fn feature_names(&self) -> impl Iterator<Item = &str> {
        self.rules.features.iter().map(|f| f.name.as_str())
    }
}

fn parse(json: &[u8]) -> Result<RawConfig, ConfigError> {
    if json.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::new(
            "",
            format!(
                "the configuration is {} bytes, at most {MAX_CONFIG_BYTES} bytes (MAX_CONFIG_BYTES); list large groups of users by a header segment (`header` + `values`) instead of inline user ids",
                json.len()
            ),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            // Not valid JSON (truncated, a stray character): the path is only
            // where the parser stopped, so name the position instead.
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                let at = format!(" at line {} column {}", inner.line(), inner.column());
                let text = inner.to_string();
                let what = text.strip_suffix(&at).unwrap_or(&text);
                ConfigError::new(
                    "",
                    format!(
                        "invalid JSON{at}: {what}; the configuration is truncated or malformed (check it with `augur check-config`)"
                    ),
                )
            }
            _ => ConfigError::new(path, inner.to_string()),
        }
    })
}

/// Compiles only what the encoding needs, without loading a model: used by
/// `augur encode` so the trainer can encode data before any model exists. The
/// static segments are validated too (a config `augur encode` accepts is one
/// the filter accepts as far as the profile goes).
pub fn compile_profile_only(json: &[u8]) -> Result<ProfileSpec, ConfigError> {
    let raw = parse(json)?;
    let control = ControlHeaders::compile(&raw.control_header_prefix, &raw.previous_control_header_prefixes)?;
    let spec = profile::config::compile(&raw.profile, &control)?;
    segments::compile(&raw.segments, &control)?;
    Ok(spec)
}

/// Parses and compiles a plugin configuration with the embedded default model
/// (used when the configuration carries no inline model).
pub fn compile(json: &[u8]) -> Result<Config, ConfigError> {
    compile_with_model(json, DEFAULT_MODEL)
}

/// [`compile`] with an explicit default model (tests, the CLI).
pub fn compile_with_model(json: &[u8], default_model: &[u8]) -> Result<Config, ConfigError> {
    let raw = parse(json)?;
    if !is_token(&raw.name) || raw.name.contains('.') {
        return Err(ConfigError::new(
            "name",
            format!("\"{}\" must be lowercase letters, digits, '-' or '_' (it labels every stat)", raw.name),
        ));
    }
    if raw.revision > MAX_REVISION {
        return Err(ConfigError::new(
            "revision",
            format!("{} is above {MAX_REVISION} (2^53 - 1, exact in every JSON reader and gauge); count revisions from 1", raw.revision),
        ));
    }
    let mut headers =
        ControlHeaders::compile(&raw.control_header_prefix, &raw.previous_control_header_prefixes)?;
    headers.send = control::compile_upstream(&raw.upstream_headers)?;
    let rollout = routing::compile(&raw.rollout)?;
    routing::check_stacks(&raw.stacks)?;
    let profile = profile::config::compile(&raw.profile, &headers)?;
    let mut segments = segments::compile(&raw.segments, &headers)?;
    let weights = model::config::compile_weights(&raw.scoring)?;
    let (model, model_version) = model::config::compile(&raw.model, default_model)?;
    let rules = flags::config::compile(&raw.features, &segments, &model, weights)?;
    let (rollback, rollback_sync_ms) = rollback::config::compile(&raw.rollback)?;
    segments::compile_predicted(&raw.segments, &mut segments, &model)?;
    let rollout_by_segment = routing::compile_by_segment(&raw.rollout, &segments)?;
    Ok(Config {
        name: raw.name,
        revision: raw.revision,
        global_off: raw.global_override == GlobalOverride::Off,
        rollout,
        percentage: raw.rollout.percentage,
        old_stack: raw.stacks.old,
        new_stack: raw.stacks.new,
        headers,
        profile,
        segments,
        monitored_segments: segments::compile_monitored(&raw.segments)?,
        rollout_by_segment,
        rules,
        model,
        model_version,
        rollback,
        rollback_sync_ms,
        stats_flush_ms: metrics::compile_stats(&raw.stats)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestConfig;

    #[test]
    fn minimal_config_compiles_with_defaults() {
        let m = Model::from_onnx(DEFAULT_MODEL).unwrap();
        let c =
            m.features().iter().fold(TestConfig::rollout(25.0), |c, f| c.feature(f, serde_json::json!({})));
        let c = c.compile().unwrap();
        assert_eq!(c.percentage, 25.0);
        assert_eq!(c.headers.stack, "x-augur-stack");
        assert_eq!(c.profile.user_header, "x-user-id");
        assert_eq!(c.old_stack, "old");
        assert_eq!(c.name, "default");
        assert!(!c.global_off);
        assert!(c.rules.features.iter().all(|f| f.model_slot.is_some()));
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let err = |c: TestConfig| c.compile().unwrap_err().to_string();
        let e = err(TestConfig::rollout(5.0).set("rollout.pct", 1));
        assert!(e.starts_with("rollout.pct: unknown field `pct`, expected one of `percentage`"), "{e}");
        let e = err(TestConfig::rollout(25.0).feature("a", serde_json::json!({"min_scor": 3})));
        assert!(e.starts_with("features[0].min_scor: unknown field `min_scor`"), "{e}");
        let e = err(TestConfig::rollout(25.0).feature("a", serde_json::json!({"min_score": "high"})));
        assert!(e.starts_with("features[0].min_score: invalid type"), "{e}");
    }

    #[test]
    fn the_revision_is_optional_and_bounded() {
        let base = || TestConfig::rollout(5.0).on("a");
        assert_eq!(base().compile().unwrap().revision, 0);
        assert_eq!(base().set("revision", 41).compile().unwrap().revision, 41);
        assert_eq!(base().set("revision", MAX_REVISION).compile().unwrap().revision, MAX_REVISION);
        let e = base().set("revision", MAX_REVISION + 1).compile().unwrap_err().to_string();
        assert!(e.starts_with("revision: 9007199254740992 is above 9007199254740991"), "{e}");
        let e = base().set("revision", -1).compile().unwrap_err().to_string();
        assert!(e.starts_with("revision: invalid value: integer `-1`"), "{e}");
    }

    #[test]
    fn stats_flush_interval_is_checked() {
        let base = || TestConfig::rollout(5.0).on("a");
        assert_eq!(base().compile().unwrap().stats_flush_ms, 1000);
        assert_eq!(base().set("stats.flush_ms", 0).compile().unwrap().stats_flush_ms, 0);
        let e = base().set("stats.flush_ms", 5).compile().unwrap_err().to_string();
        assert!(e.starts_with("stats.flush_ms: 5 is outside 100-60000"), "{e}");
    }

    #[test]
    fn invalid_json_is_refused_not_panicking() {
        for bad in ["", "{", "null", "[]", "{\"rollout\": 5}", "\u{0}"] {
            assert!(compile(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
