//! Config: the plugin configuration, parsed strictly and compiled once.
//!
//! The JSON (Envoy's `StringValue` plugin configuration) is parsed with serde
//! (`deny_unknown_fields`), validated, and compiled into [`Config`] in
//! `on_configure`. Any error refuses the whole configuration — Envoy then keeps
//! serving with the last good one. Every field is documented in README
//! ("Configuration reference").

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use serde::Deserialize;

use crate::flags::{FeatureRule, FlagRules, Override, Thresholds};
use crate::model::{EngineChoice, Impact, Model, ModelError, ScoreWeights, DEFAULT_MODEL};
use crate::profile::{
    Device, HistorySignal, ProfileSpec, Segment, MAX_HISTORY, MAX_LOCATIONS, MAX_PATH_CLASSES, MAX_SEGMENTS,
};
use crate::rollback::{Policy, Recovery};
use crate::routing::{self, Rollout, WhenAbsent, BUCKETS};

/// Largest accepted feature count (flag decisions are kept per request).
pub const MAX_FEATURES: usize = 64;
/// Largest accepted plugin configuration, in bytes (JSON, inline model included).
pub const MAX_CONFIG_BYTES: usize = 4 << 20;
/// Most user ids one segment may list (looked up in a hash set).
pub const MAX_USERS_PER_SEGMENT: usize = 10_000;
/// Most earlier control-header prefixes a migration may keep stripping.
pub const MAX_PREVIOUS_PREFIXES: usize = 4;
/// Segments with `monitor: true`: each adds features × 8 counters per proxy.
pub const MAX_MONITORED_SEGMENTS: usize = 8;

/// A refused configuration: which field, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path of the offending field, e.g. `features[2].requires`.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() || self.field == "." {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

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

/// Fallback value of a feature when the model cannot score a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    On,
    #[default]
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_name")]
    name: String,
    #[serde(rename = "override", default)]
    global_override: GlobalOverride,
    rollout: RawRollout,
    #[serde(default)]
    stacks: RawStacks,
    #[serde(default = "default_prefix")]
    control_header_prefix: String,
    /// Earlier prefixes during a prefix migration: still stripped from
    /// clients, and the stack header is also written under them.
    #[serde(default)]
    previous_control_header_prefixes: Vec<String>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStats {
    flush_ms: u64,
}

impl Default for RawStats {
    fn default() -> Self {
        RawStats { flush_ms: 1000 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRollback {
    enabled: bool,
    slow_ms: u64,
    slow_floor_ms: u64,
    alpha: f64,
    min_samples: u32,
    kill_after_cells: u32,
    explore_share: f64,
    explore_budget: f64,
    probation_s: Option<u64>,
    sync_ms: u64,
    epoch: u64,
    /// Replaced by `alpha`: refused with a message that says so.
    z: Option<serde_json::Value>,
    z_suspect: Option<serde_json::Value>,
}

impl Default for RawRollback {
    fn default() -> Self {
        let p = Policy::default();
        RawRollback {
            enabled: p.enabled,
            slow_ms: p.slow_ms,
            slow_floor_ms: p.slow_floor_ms,
            alpha: p.alpha,
            min_samples: p.min_samples,
            kill_after_cells: p.kill_after_cells,
            explore_share: p.explore_share,
            explore_budget: p.explore_budget,
            probation_s: None,
            sync_ms: 1000,
            epoch: p.epoch,
            z: None,
            z_suspect: None,
        }
    }
}

fn default_name() -> String {
    "default".into()
}

fn default_prefix() -> String {
    "x-augur-".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    percentage: f64,
    #[serde(default)]
    by_segment: Vec<RawSegmentRollout>,
    #[serde(default = "default_salt")]
    salt: String,
    #[serde(default)]
    when_absent: WhenAbsent,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSegmentRollout {
    segment: String,
    percentage: f64,
}

fn default_salt() -> String {
    "augur".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStacks {
    old: String,
    new: String,
}

impl Default for RawStacks {
    fn default() -> Self {
        RawStacks { old: "old".into(), new: "new".into() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProfile {
    user_header: String,
    location_header: String,
    locations: Vec<String>,
    path_classes: Vec<String>,
    history: Vec<RawHistory>,
}

impl Default for RawProfile {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        RawProfile {
            user_header: "x-user-id".into(),
            location_header: "x-geo-region".into(),
            locations: s(&["us", "eu", "apac", "latam"]),
            path_classes: s(&["/api/checkout", "/api/search", "/api", "/static"]),
            history: [
                ("x-user-sessions-30d", 50.0),
                ("x-user-purchases-90d", 20.0),
                ("x-user-tenure-days", 365.0),
                ("x-user-errors-7d", 10.0),
            ]
            .iter()
            .map(|(h, m)| RawHistory { header: h.to_string(), max: *m })
            .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHistory {
    header: String,
    max: f32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSegment {
    name: String,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    devices: Vec<Device>,
    #[serde(default)]
    locations: Vec<String>,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    predicted: Option<RawPredicted>,
    /// Count randomised on/off outcomes in this segment
    /// (`augur_segment_outcomes_total`), for a fleet controller.
    #[serde(default)]
    monitor: bool,
}

/// Segment by predicted behaviour: the model's prediction for `feature` within
/// `[min, max]` (an impact in 0-1, or `score` in 0-100).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPredicted {
    feature: String,
    impact: PredictedValue,
    #[serde(default)]
    min: Option<f32>,
    #[serde(default)]
    max: Option<f32>,
}

/// Which prediction a predicted segment reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictedValue {
    PerformanceCost,
    ErrorRisk,
    Engagement,
    SecurityRisk,
    Score,
}

/// A segment whose membership also needs a prediction in range.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictedSegment {
    /// Index into `Config::segments`.
    pub segment: usize,
    /// The model output slot of the feature.
    pub slot: usize,
    pub value: PredictedValue,
    pub min: f32,
    pub max: f32,
}

impl PredictedSegment {
    /// Whether the prediction for this request is in range.
    pub fn matches(&self, impacts: &[Impact], weights: &ScoreWeights) -> bool {
        let Some(i) = impacts.get(self.slot) else { return false };
        let v = match self.value {
            PredictedValue::PerformanceCost => i.performance_cost,
            PredictedValue::ErrorRisk => i.error_risk,
            PredictedValue::Engagement => i.engagement,
            PredictedValue::SecurityRisk => i.security_risk,
            PredictedValue::Score => f32::from(i.score(weights)),
        };
        (self.min..=self.max).contains(&v)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    name: String,
    #[serde(default)]
    requires: Vec<String>,
    #[serde(rename = "override", default)]
    override_: Override,
    #[serde(default = "default_min_score")]
    min_score: u8,
    #[serde(default = "default_max_performance_cost")]
    max_performance_cost: f32,
    #[serde(default = "default_max_error_risk")]
    max_error_risk: f32,
    #[serde(default)]
    min_engagement: f32,
    #[serde(default = "default_max_security_risk")]
    max_security_risk: f32,
    #[serde(default)]
    allow_segments: Vec<String>,
    #[serde(default)]
    deny_segments: Vec<String>,
    #[serde(default)]
    fallback: Fallback,
    #[serde(default)]
    holdout: f64,
}

fn default_min_score() -> u8 {
    50
}
fn default_max_performance_cost() -> f32 {
    Thresholds::default().max_performance_cost
}
fn default_max_error_risk() -> f32 {
    Thresholds::default().max_error_risk
}
fn default_max_security_risk() -> f32 {
    Thresholds::default().max_security_risk
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScoring {
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

/// Names of the headers the filter writes (and strips from clients).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlHeaders {
    /// Every incoming header starting with this prefix is removed, and so is
    /// every look-alike with `_` for `-` (`x_augur_stack`).
    pub prefix: String,
    /// Earlier prefixes of a migration (`previous_control_header_prefixes`):
    /// stripped like `prefix`.
    pub previous: Vec<String>,
    /// `<previous>stack` for each earlier prefix: written with the same value
    /// as `stack`, so a route table still matching the old name keeps working.
    pub previous_stack: Vec<String>,
    /// `<prefix>stack`: the stack name, matched by Envoy's route table.
    pub stack: String,
    /// `<prefix>features`: enabled features, comma-separated (new stack only).
    pub features: String,
    /// `<prefix>decision`: the decision id (new stack only).
    pub decision: String,
    /// `<prefix>flags`: every feature's state, reason and score, and the model
    /// version (new stack only; see [`crate::record::write_flags`]).
    pub flags: String,
    /// `<prefix>engagement`: response header the app sets on an engagement.
    pub engagement: String,
    /// `<prefix>security`: response header the app sets on a security event.
    pub security: String,
}

impl ControlHeaders {
    /// The header names for `prefix` (lowercase, ending in '-'), plus the
    /// earlier prefixes of a migration.
    pub fn new(prefix: &str, previous: Vec<String>) -> ControlHeaders {
        ControlHeaders {
            stack: format!("{prefix}stack"),
            features: format!("{prefix}features"),
            decision: format!("{prefix}decision"),
            flags: format!("{prefix}flags"),
            engagement: format!("{prefix}engagement"),
            security: format!("{prefix}security"),
            previous_stack: previous.iter().map(|p| format!("{p}stack")).collect(),
            previous,
            prefix: prefix.to_string(),
        }
    }

    /// Whether `name` (lowercase) is a control header a client must not send:
    /// it starts with the prefix or an earlier one, where any `-` of the
    /// prefix may also be `_` (frameworks that fold `_` into `-` — CGI,
    /// Django, Rails — would read `x_augur_stack` as `x-augur-stack`).
    pub fn is_control(&self, name: &str) -> bool {
        starts_with_folded(name, &self.prefix) || self.previous.iter().any(|p| starts_with_folded(name, p))
    }
}

fn starts_with_folded(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.bytes().zip(prefix.bytes()).all(|(n, p)| n == p || (p == b'-' && n == b'_'))
}

/// Refuses a pushed configuration that changes `control_header_prefix` from
/// `previous` (the one last accepted for the same rollout) without a
/// migration: the route table would still match `<previous>stack`, which
/// augur would no longer strip, so clients could choose their stack again.
pub fn check_prefix_change(previous: &str, next: &ControlHeaders) -> Result<(), ConfigError> {
    if previous == next.prefix || next.previous.iter().any(|p| p == previous) {
        return Ok(());
    }
    Err(ConfigError::new(
        "control_header_prefix",
        format!(
            "changes from \"{previous}\" to \"{new}\" without a migration: the route table still matches \"{previous}stack\", which clients could then send to choose their stack; add \"previous_control_header_prefixes\": [\"{previous}\"] (both prefixes are stripped and the stack header is written under both) and move the route table to \"{new}stack\" (check with `augur check-config --envoy`), or keep \"{previous}\"",
            new = next.prefix
        ),
    ))
}

/// The compiled configuration: everything the request path needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The rollout's name: the `rollout` label of every stat and record.
    pub name: String,
    pub global_off: bool,
    pub rollout: Rollout,
    pub percentage: f64,
    /// Routing-header values for the old and new stack.
    pub old_stack: String,
    pub new_stack: String,
    pub headers: ControlHeaders,
    pub profile: ProfileSpec,
    pub segments: Vec<Segment>,
    /// Segments that also need a prediction (completed after inference).
    pub predicted_segments: Vec<PredictedSegment>,
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

/// Header names and values the filter emits must be plain lowercase tokens.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.')
}

fn header_name(field: &str, raw: &str, control: &ControlHeaders) -> Result<String, ConfigError> {
    let h = raw.trim().to_ascii_lowercase();
    if !is_token(&h) {
        return Err(ConfigError::new(field, format!("\"{raw}\" is not a valid header name")));
    }
    if control.is_control(&h) {
        return Err(ConfigError::new(
            field,
            format!(
                "\"{h}\" starts with control_header_prefix \"{}\" (or an earlier or '_' form of it) and would be stripped; pick another header",
                control.prefix
            ),
        ));
    }
    Ok(h)
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

/// The control headers of a raw configuration, validated.
fn compile_control_headers(raw: &RawConfig) -> Result<ControlHeaders, ConfigError> {
    let norm = |p: &str| p.trim().to_ascii_lowercase();
    let valid = |p: &str| is_token(p) && p.ends_with('-');
    let prefix = norm(&raw.control_header_prefix);
    if !valid(&prefix) {
        return Err(ConfigError::new(
            "control_header_prefix",
            format!(
                "\"{}\" must be a lowercase header-name prefix ending in '-', e.g. \"x-augur-\"",
                raw.control_header_prefix
            ),
        ));
    }
    if raw.previous_control_header_prefixes.len() > MAX_PREVIOUS_PREFIXES {
        return Err(ConfigError::new(
            "previous_control_header_prefixes",
            format!("at most {MAX_PREVIOUS_PREFIXES} earlier prefixes; drop those no route table matches any more"),
        ));
    }
    let mut previous = Vec::with_capacity(raw.previous_control_header_prefixes.len());
    for (i, p) in raw.previous_control_header_prefixes.iter().enumerate() {
        let field = format!("previous_control_header_prefixes[{i}]");
        let p = norm(p);
        if !valid(&p) {
            return Err(ConfigError::new(
                field,
                format!("\"{p}\" must be a lowercase header-name prefix ending in '-', e.g. \"x-augur-\""),
            ));
        }
        if p == prefix {
            return Err(ConfigError::new(
                field,
                format!("\"{p}\" is control_header_prefix itself; list only earlier prefixes"),
            ));
        }
        previous.push(p);
    }
    Ok(ControlHeaders::new(&prefix, previous))
}

/// Compiles only what the profile needs (encoding and segments), without loading
/// a model: used by `augur encode` so the trainer can encode data before any
/// model exists.
pub fn compile_profile_only(json: &[u8]) -> Result<(ProfileSpec, Vec<Segment>), ConfigError> {
    let raw = parse(json)?;
    let control = compile_control_headers(&raw)?;
    Ok((compile_profile(&raw.profile, &control)?, compile_segments(&raw.segments, &control)?))
}

/// Parses and compiles a plugin configuration. `default_model` is used when the
/// configuration carries no inline model.
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
    let headers = compile_control_headers(&raw)?;

    let pct = raw.rollout.percentage;
    if !(0.0..=100.0).contains(&pct) {
        return Err(ConfigError::new("rollout.percentage", format!("{pct} is outside 0-100")));
    }
    if raw.rollout.salt.is_empty() {
        return Err(ConfigError::new("rollout.salt", "must not be empty (use a new salt per rollout)"));
    }
    let rollout = Rollout::new(pct, &raw.rollout.salt, raw.rollout.when_absent);

    for (field, v) in [("stacks.old", &raw.stacks.old), ("stacks.new", &raw.stacks.new)] {
        if !is_token(v) {
            return Err(ConfigError::new(field, format!("\"{v}\" must be a non-empty lowercase token (it is a header value the route table matches)")));
        }
    }
    if raw.stacks.old == raw.stacks.new {
        return Err(ConfigError::new("stacks.new", "must differ from stacks.old"));
    }

    let profile = compile_profile(&raw.profile, &headers)?;
    let segments = compile_segments(&raw.segments, &headers)?;

    let weights = match &raw.scoring.weights {
        None => ScoreWeights::default(),
        Some(w) => {
            let all = [w.performance, w.error_rate, w.engagement, w.security];
            if all.iter().any(|x| !x.is_finite() || *x < 0.0) || all.iter().sum::<f32>() <= 0.0 {
                return Err(ConfigError::new("scoring.weights", "weights must be ≥ 0 with a positive sum"));
            }
            ScoreWeights {
                performance: w.performance,
                error_rate: w.error_rate,
                engagement: w.engagement,
                security: w.security,
            }
        }
    };

    let engine = match raw.model.engine {
        RawEngine::Auto => EngineChoice::Auto,
        RawEngine::Tract => EngineChoice::Tract,
    };
    let model = match &raw.model.onnx_base64 {
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
                .map_err(|e: ModelError| ConfigError::new("model.onnx_base64", e.to_string()))?
        }
    };
    let model_version = raw.model.version.clone().unwrap_or_else(|| model.version().to_string());
    if !is_token(&model_version.to_ascii_lowercase()) {
        return Err(ConfigError::new(
            "model.version",
            format!("\"{model_version}\" must be a token of letters, digits, '-', '_' or '.'"),
        ));
    }

    let rules = compile_features(&raw.features, &segments, &model, weights)?;
    let rollback = compile_rollback(&raw.rollback)?;
    let predicted_segments = compile_predicted(&raw.segments, &model)?;
    let mut rollout_by_segment = Vec::with_capacity(raw.rollout.by_segment.len());
    for (i, r) in raw.rollout.by_segment.iter().enumerate() {
        let field = format!("rollout.by_segment[{i}]");
        let Some(ix) = segments.iter().position(|s| s.name == r.segment) else {
            return Err(ConfigError::new(
                format!("{field}.segment"),
                format!("unknown segment \"{}\"; define it under \"segments\"", r.segment),
            ));
        };
        if !(0.0..=100.0).contains(&r.percentage) {
            return Err(ConfigError::new(
                format!("{field}.percentage"),
                format!("{} is outside 0-100", r.percentage),
            ));
        }
        rollout_by_segment.push((ix, routing::threshold(r.percentage)));
    }

    Ok(Config {
        name: raw.name,
        global_off: raw.global_override == GlobalOverride::Off,
        rollout,
        percentage: pct,
        old_stack: raw.stacks.old,
        new_stack: raw.stacks.new,
        headers,
        profile,
        segments,
        predicted_segments,
        monitored_segments: compile_monitored(&raw.segments)?,
        rollout_by_segment,
        rules,
        model,
        model_version,
        rollback,
        rollback_sync_ms: raw.rollback.sync_ms,
        stats_flush_ms: compile_stats(&raw.stats)?,
    })
}

fn compile_stats(raw: &RawStats) -> Result<u64, ConfigError> {
    if raw.flush_ms != 0 && !(100..=60_000).contains(&raw.flush_ms) {
        return Err(ConfigError::new(
            "stats.flush_ms",
            format!("{} is outside 100-60000 (or 0 to count at once)", raw.flush_ms),
        ));
    }
    Ok(raw.flush_ms)
}

fn compile_rollback(raw: &RawRollback) -> Result<Policy, ConfigError> {
    for (field, v) in [("rollback.z", &raw.z), ("rollback.z_suspect", &raw.z_suspect)] {
        if v.is_some() {
            return Err(ConfigError::new(
                field,
                "was replaced by rollback.alpha (always-valid sequential tests; default 0.01): remove it",
            ));
        }
    }
    if raw.slow_floor_ms > raw.slow_ms {
        return Err(ConfigError::new(
            "rollback.slow_floor_ms",
            format!("{} is above rollback.slow_ms ({})", raw.slow_floor_ms, raw.slow_ms),
        ));
    }
    if !(raw.alpha.is_finite() && raw.alpha > 0.0 && raw.alpha <= 0.2) {
        return Err(ConfigError::new(
            "rollback.alpha",
            format!("{} is outside (0, 0.2]: it is the chance of any false rollback over the rollout (default 0.01)", raw.alpha),
        ));
    }
    if raw.min_samples < 5 {
        return Err(ConfigError::new(
            "rollback.min_samples",
            format!("{} is below 5: the arms' shares are unstable on fewer requests", raw.min_samples),
        ));
    }
    if !(0.0..=0.9).contains(&raw.explore_share) {
        return Err(ConfigError::new(
            "rollback.explore_share",
            format!("{} is outside 0-0.9", raw.explore_share),
        ));
    }
    if !(0.0..=1.0).contains(&raw.explore_budget) {
        return Err(ConfigError::new(
            "rollback.explore_budget",
            format!("{} is outside 0-1 (a share of the new stack's traffic)", raw.explore_budget),
        ));
    }
    if !(100..=60_000).contains(&raw.sync_ms) {
        return Err(ConfigError::new("rollback.sync_ms", format!("{} is outside 100-60000", raw.sync_ms)));
    }
    if raw.kill_after_cells == 0 {
        return Err(ConfigError::new("rollback.kill_after_cells", "must be at least 1"));
    }
    Ok(Policy {
        enabled: raw.enabled,
        slow_ms: raw.slow_ms,
        slow_floor_ms: raw.slow_floor_ms,
        alpha: raw.alpha,
        min_samples: raw.min_samples,
        kill_after_cells: raw.kill_after_cells,
        explore_share: raw.explore_share,
        explore_budget: raw.explore_budget,
        recovery: match raw.probation_s {
            None => Recovery::Manual,
            Some(seconds) => Recovery::Probation { seconds },
        },
        epoch: raw.epoch,
    })
}

fn compile_profile(raw: &RawProfile, prefix: &ControlHeaders) -> Result<ProfileSpec, ConfigError> {
    let user_header = header_name("profile.user_header", &raw.user_header, prefix)?;
    let location_header = header_name("profile.location_header", &raw.location_header, prefix)?;
    if raw.locations.len() > MAX_LOCATIONS {
        return Err(ConfigError::new(
            "profile.locations",
            format!("at most {MAX_LOCATIONS} locations (one model input slot each)"),
        ));
    }
    if raw.path_classes.len() > MAX_PATH_CLASSES {
        return Err(ConfigError::new(
            "profile.path_classes",
            format!("at most {MAX_PATH_CLASSES} path classes (one model input slot each)"),
        ));
    }
    for (i, p) in raw.path_classes.iter().enumerate() {
        if !p.starts_with('/') {
            return Err(ConfigError::new(
                format!("profile.path_classes[{i}]"),
                format!("\"{p}\" must be a path prefix starting with '/'"),
            ));
        }
    }
    if raw.history.len() > MAX_HISTORY {
        return Err(ConfigError::new(
            "profile.history",
            format!("at most {MAX_HISTORY} history signals (one model input slot each)"),
        ));
    }
    let mut history = Vec::with_capacity(raw.history.len());
    for (i, h) in raw.history.iter().enumerate() {
        let header = header_name(&format!("profile.history[{i}].header"), &h.header, prefix)?;
        if !(h.max.is_finite() && h.max > 0.0) {
            return Err(ConfigError::new(
                format!("profile.history[{i}].max"),
                "must be a positive number (the value that encodes as 1.0)",
            ));
        }
        history.push(HistorySignal { header, max: h.max });
    }
    Ok(ProfileSpec {
        user_header,
        location_header,
        locations: raw.locations.iter().map(|l| l.trim().to_ascii_lowercase()).collect(),
        path_classes: raw.path_classes.clone(),
        history,
    })
}

fn compile_segments(raw: &[RawSegment], prefix: &ControlHeaders) -> Result<Vec<Segment>, ConfigError> {
    if raw.len() > MAX_SEGMENTS {
        return Err(ConfigError::new("segments", format!("at most {MAX_SEGMENTS} segments")));
    }
    let mut out: Vec<Segment> = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let field = format!("segments[{i}]");
        if !is_token(&s.name) {
            return Err(ConfigError::new(
                format!("{field}.name"),
                format!("\"{}\" must be a lowercase token", s.name),
            ));
        }
        if out.iter().any(|o| o.name == s.name) {
            return Err(ConfigError::new(
                format!("{field}.name"),
                format!("duplicate segment \"{}\"", s.name),
            ));
        }
        let header = match (&s.header, s.values.is_empty()) {
            (None, true) => None,
            (Some(h), false) => Some((header_name(&format!("{field}.header"), h, prefix)?, s.values.clone())),
            (Some(_), true) => {
                return Err(ConfigError::new(
                    format!("{field}.values"),
                    "a header criterion needs at least one value",
                ))
            }
            (None, false) => {
                return Err(ConfigError::new(
                    format!("{field}.header"),
                    "values are given but no header to match them against",
                ))
            }
        };
        if s.users.len() > MAX_USERS_PER_SEGMENT {
            return Err(ConfigError::new(
                format!("{field}.users"),
                format!(
                    "{} user ids, at most {MAX_USERS_PER_SEGMENT} per segment (MAX_USERS_PER_SEGMENT); for larger groups match a header your auth layer sets (`header` + `values`)",
                    s.users.len()
                ),
            ));
        }
        let static_criteria = !(s.users.is_empty() && s.devices.is_empty() && s.locations.is_empty());
        if !static_criteria && header.is_none() && s.predicted.is_none() {
            return Err(ConfigError::new(
                &field,
                "a segment needs at least one of users, devices, locations, header, predicted",
            ));
        }
        out.push(Segment {
            name: s.name.clone(),
            users: s.users.iter().cloned().collect(),
            devices: s.devices.clone(),
            locations: s.locations.iter().map(|l| l.trim().to_ascii_lowercase()).collect(),
            header,
        });
    }
    Ok(out)
}

fn compile_monitored(raw: &[RawSegment]) -> Result<Vec<usize>, ConfigError> {
    let out: Vec<usize> = raw.iter().enumerate().filter(|(_, s)| s.monitor).map(|(i, _)| i).collect();
    if let Some(&i) = out.get(MAX_MONITORED_SEGMENTS) {
        return Err(ConfigError::new(
            format!("segments[{i}].monitor"),
            format!(
                "{} monitored segments, at most {MAX_MONITORED_SEGMENTS} (MAX_MONITORED_SEGMENTS): each adds features × 8 series on every proxy; monitor the cells you act on",
                out.len()
            ),
        ));
    }
    Ok(out)
}

fn compile_predicted(raw: &[RawSegment], model: &Model) -> Result<Vec<PredictedSegment>, ConfigError> {
    let mut out = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let Some(p) = &s.predicted else { continue };
        let field = format!("segments[{i}].predicted");
        let Some(slot) = model.features().iter().position(|f| f == &p.feature) else {
            return Err(ConfigError::new(
                format!("{field}.feature"),
                format!(
                    "the model does not score \"{}\" (it scores: {})",
                    p.feature,
                    model.features().join(", ")
                ),
            ));
        };
        let top = if p.impact == PredictedValue::Score { 100.0 } else { 1.0 };
        let (min, max) = (p.min.unwrap_or(0.0), p.max.unwrap_or(top));
        if !(0.0 <= min && min <= max && max <= top) {
            return Err(ConfigError::new(
                field,
                format!("need 0 ≤ min ≤ max ≤ {top}, got min {min}, max {max}"),
            ));
        }
        out.push(PredictedSegment { segment: i, slot, value: p.impact, min, max });
    }
    Ok(out)
}

fn segment_mask(field: &str, names: &[String], segments: &[Segment]) -> Result<u64, ConfigError> {
    let mut mask = 0u64;
    for (j, n) in names.iter().enumerate() {
        let Some(ix) = segments.iter().position(|s| &s.name == n) else {
            return Err(ConfigError::new(
                format!("{field}[{j}]"),
                format!("unknown segment \"{n}\"; define it under \"segments\""),
            ));
        };
        mask |= 1 << ix;
    }
    Ok(mask)
}

/// Holdout share (percent, 0-50) as a bucket threshold.
fn holdout_buckets(field: &str, pct: f64) -> Result<u32, ConfigError> {
    if !(0.0..=50.0).contains(&pct) {
        return Err(ConfigError::new(
            format!("{field}.holdout"),
            format!("{pct} is outside 0-50 (percent of eligible users held out)"),
        ));
    }
    Ok((pct * f64::from(BUCKETS) / 100.0).round() as u32)
}

fn unit(field: String, v: f32) -> Result<f32, ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::new(field, format!("{v} is outside 0-1")))
    }
}

fn compile_features(
    raw: &[RawFeature],
    segments: &[Segment],
    model: &Model,
    weights: ScoreWeights,
) -> Result<FlagRules, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::new("features", "at least one feature is required"));
    }
    if raw.len() > MAX_FEATURES {
        return Err(ConfigError::new("features", format!("at most {MAX_FEATURES} features")));
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, f) in raw.iter().enumerate() {
        if !is_token(&f.name) || f.name.contains('.') {
            return Err(ConfigError::new(
                format!("features[{i}].name"),
                format!("\"{}\" must be lowercase letters, digits, '-' or '_' (it is sent in a header and used in stat names)", f.name),
            ));
        }
        if index.insert(f.name.as_str(), i).is_some() {
            return Err(ConfigError::new(
                format!("features[{i}].name"),
                format!("duplicate feature \"{}\"", f.name),
            ));
        }
    }
    let mut features = Vec::with_capacity(raw.len());
    for (i, f) in raw.iter().enumerate() {
        let field = format!("features[{i}]");
        let mut requires = Vec::with_capacity(f.requires.len());
        for (j, r) in f.requires.iter().enumerate() {
            match index.get(r.as_str()) {
                Some(&ix) if ix == i => {
                    return Err(ConfigError::new(
                        format!("{field}.requires[{j}]"),
                        format!("\"{r}\" cannot require itself"),
                    ))
                }
                Some(&ix) => requires.push(ix),
                None => {
                    return Err(ConfigError::new(
                        format!("{field}.requires"),
                        format!("unknown feature \"{r}\"; declare it under \"features\""),
                    ))
                }
            }
        }
        if f.min_score > 100 {
            return Err(ConfigError::new(
                format!("{field}.min_score"),
                format!("{} is outside 0-100", f.min_score),
            ));
        }
        let thresholds = Thresholds {
            max_performance_cost: unit(format!("{field}.max_performance_cost"), f.max_performance_cost)?,
            max_error_risk: unit(format!("{field}.max_error_risk"), f.max_error_risk)?,
            min_engagement: unit(format!("{field}.min_engagement"), f.min_engagement)?,
            max_security_risk: unit(format!("{field}.max_security_risk"), f.max_security_risk)?,
        };
        let model_slot = model.features().iter().position(|m| m == &f.name);
        if model_slot.is_none() && f.override_ == Override::Auto {
            return Err(ConfigError::new(
                format!("{field}.override"),
                format!(
                    "\"{}\" is \"auto\" but the model (version {}) does not score it (it scores: {}); set override to \"on\" or \"off\", or push a model trained for it",
                    f.name,
                    model.version(),
                    model.features().join(", ")
                ),
            ));
        }
        features.push(FeatureRule {
            name: f.name.clone(),
            requires,
            override_: f.override_,
            thresholds,
            min_score: f.min_score,
            allow_segments: segment_mask(&format!("{field}.allow_segments"), &f.allow_segments, segments)?,
            deny_segments: segment_mask(&format!("{field}.deny_segments"), &f.deny_segments, segments)?,
            fallback: f.fallback == Fallback::On,
            model_slot,
            holdout: holdout_buckets(&field, f.holdout)?,
        });
    }
    let order = dependency_order(&features)?;
    Ok(FlagRules { features, order, weights })
}

/// Topological order of the features (prerequisites first), or the cycle.
fn dependency_order(features: &[FeatureRule]) -> Result<Vec<usize>, ConfigError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks = vec![Mark::New; features.len()];
    let mut order = Vec::with_capacity(features.len());
    // Iterative DFS; `stack` holds (node, next requirement to visit).
    for start in 0..features.len() {
        if marks[start] != Mark::New {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        marks[start] = Mark::Active;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let reqs = &features[node].requires;
            if *next < reqs.len() {
                let dep = reqs[*next];
                *next += 1;
                match marks[dep] {
                    Mark::New => {
                        marks[dep] = Mark::Active;
                        stack.push((dep, 0));
                    }
                    Mark::Active => {
                        let from = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                        let mut names: Vec<&str> =
                            stack[from..].iter().map(|(n, _)| features[*n].name.as_str()).collect();
                        names.push(features[dep].name.as_str());
                        return Err(ConfigError::new(
                            format!("features[{dep}].requires"),
                            format!(
                                "dependency cycle {}; remove one of these requirements",
                                names.join(" → ")
                            ),
                        ));
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                order.push(node);
                stack.pop();
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(features: &str) -> String {
        format!(r#"{{"rollout": {{"percentage": 25}}, "features": {features}}}"#)
    }

    fn err(json: &str) -> String {
        compile(json.as_bytes()).unwrap_err().to_string()
    }

    fn default_features() -> String {
        let m = Model::from_onnx(DEFAULT_MODEL).unwrap();
        let list: Vec<String> = m.features().iter().map(|f| format!(r#"{{"name": "{f}"}}"#)).collect();
        format!("[{}]", list.join(","))
    }

    #[test]
    fn minimal_config_compiles_with_defaults() {
        let c = compile(base(&default_features()).as_bytes()).unwrap();
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
        let e = err(r#"{"rollout": {"percentage": 5, "pct": 1}, "features": []}"#);
        assert!(e.starts_with("rollout.pct: unknown field `pct`, expected one of `percentage`"), "{e}");
        let e = err(&base(r#"[{"name": "a", "min_scor": 3}]"#));
        assert!(e.starts_with("features[0].min_scor: unknown field `min_scor`"), "{e}");
        let e = err(&base(r#"[{"name": "a", "min_score": "high"}]"#));
        assert!(e.starts_with("features[0].min_score: invalid type"), "{e}");
    }

    #[test]
    fn unknown_requirement_names_field_and_fix() {
        let e = err(&base(r#"[{"name": "a", "override": "on", "requires": ["checkout_v2"]}]"#));
        assert_eq!(e, r#"features[0].requires: unknown feature "checkout_v2"; declare it under "features""#);
    }

    #[test]
    fn dependency_cycle_is_refused_and_named() {
        let e = err(&base(
            r#"[{"name": "a", "override": "on", "requires": ["b"]},
                {"name": "b", "override": "on", "requires": ["c"]},
                {"name": "c", "override": "on", "requires": ["a"]}]"#,
        ));
        assert!(e.contains("dependency cycle a → b → c → a"), "{e}");
    }

    #[test]
    fn order_puts_prerequisites_first() {
        let c = compile(
            base(
                r#"[{"name": "z", "override": "on", "requires": ["y"]},
                    {"name": "y", "override": "on", "requires": ["x"]},
                    {"name": "x", "override": "on"}]"#,
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.rules.order, vec![2, 1, 0]);
    }

    #[test]
    fn unscored_auto_feature_is_refused() {
        let e = err(&base(r#"[{"name": "brand_new"}]"#));
        assert!(e.starts_with("features[0].override: \"brand_new\" is \"auto\" but the model"), "{e}");
        // The same feature under a manual override is fine.
        assert!(compile(base(r#"[{"name": "brand_new", "override": "off"}]"#).as_bytes()).is_ok());
    }

    #[test]
    fn value_ranges_are_checked() {
        let e = err(r#"{"rollout": {"percentage": 101}, "features": [{"name":"a","override":"on"}]}"#);
        assert_eq!(e, "rollout.percentage: 101 is outside 0-100");
        let e = err(&base(r#"[{"name": "a", "override": "on", "max_error_risk": 2}]"#));
        assert_eq!(e, "features[0].max_error_risk: 2 is outside 0-1");
        let e = err(&base(r#"[{"name": "a", "override": "on", "min_score": 101}]"#));
        assert_eq!(e, "features[0].min_score: 101 is outside 0-100");
        let e = err(&base(r#"[{"name": "A b", "override": "on"}]"#));
        assert!(e.starts_with("features[0].name:"), "{e}");
        let e = err(&base(r#"[{"name": "a", "override": "on", "holdout": 60}]"#));
        assert_eq!(e, "features[0].holdout: 60 is outside 0-50 (percent of eligible users held out)");
        let e = err(&base("[]"));
        assert_eq!(e, "features: at least one feature is required");
    }

    #[test]
    fn monitored_segments_are_opt_in_and_bounded() {
        let seg = |i: usize, monitor: bool| {
            format!(r#"{{"name": "s{i}", "devices": ["tablet"], "monitor": {monitor}}}"#)
        };
        let cfg = |segs: Vec<String>| {
            format!(
                r#"{{"rollout": {{"percentage": 5}}, "segments": [{}], "features": [{{"name": "a", "override": "on"}}]}}"#,
                segs.join(",")
            )
        };
        let c = compile(cfg(vec![seg(0, false), seg(1, true), seg(2, true)]).as_bytes()).unwrap();
        assert_eq!(c.monitored_segments, vec![1, 2]);
        let c = compile(cfg(vec![seg(0, false)]).as_bytes()).unwrap();
        assert!(c.monitored_segments.is_empty());
        let e = err(&cfg((0..=MAX_MONITORED_SEGMENTS).map(|i| seg(i, true)).collect()));
        assert!(
            e.starts_with("segments[8].monitor: 9 monitored segments, at most 8 (MAX_MONITORED_SEGMENTS)"),
            "{e}"
        );
        let e = err(&cfg(vec![r#"{"name": "s", "devices": ["tablet"], "monitor": "yes"}"#.into()]));
        assert!(e.contains("segments") && e.contains("monitor") || e.contains("expected a boolean"), "{e}");
    }

    #[test]
    fn segments_are_validated_and_resolved() {
        let json = r#"{"rollout": {"percentage": 5},
            "segments": [{"name": "beta", "header": "x-tier", "values": ["beta"]},
                         {"name": "eu", "locations": ["EU"]}],
            "features": [{"name": "a", "override": "on", "allow_segments": ["eu"], "deny_segments": ["beta"]}]}"#;
        let c = compile(json.as_bytes()).unwrap();
        assert_eq!(c.rules.features[0].allow_segments, 0b10);
        assert_eq!(c.rules.features[0].deny_segments, 0b01);
        assert_eq!(c.segments[1].locations, vec!["eu".to_string()]);

        let e = err(&base(r#"[{"name": "a", "override": "on", "allow_segments": ["vip"]}]"#));
        assert_eq!(e, r#"features[0].allow_segments[0]: unknown segment "vip"; define it under "segments""#);
        let e = err(
            r#"{"rollout": {"percentage": 5}, "segments": [{"name": "empty"}], "features": [{"name":"a","override":"on"}]}"#,
        );
        assert!(e.starts_with("segments[0]: a segment needs"), "{e}");
    }

    #[test]
    fn control_prefix_headers_cannot_be_inputs() {
        let e = err(
            r#"{"rollout": {"percentage": 5}, "profile": {"user_header": "x-augur-user"}, "features": [{"name":"a","override":"on"}]}"#,
        );
        assert!(
            e.starts_with("profile.user_header: \"x-augur-user\" starts with control_header_prefix"),
            "{e}"
        );
    }

    #[test]
    fn bad_inline_model_is_refused() {
        let e = err(
            r#"{"rollout": {"percentage": 5}, "model": {"onnx_base64": "@@@"}, "features": [{"name":"a","override":"on"}]}"#,
        );
        assert!(e.starts_with("model.onnx_base64: not valid base64"), "{e}");
        let e = err(
            r#"{"rollout": {"percentage": 5}, "model": {"onnx_base64": "aGVsbG8="}, "features": [{"name":"a","override":"on"}]}"#,
        );
        assert!(e.starts_with("model.onnx_base64: not a loadable ONNX model"), "{e}");
    }

    #[test]
    fn model_engine_is_auto_by_default_and_can_force_tract() {
        let base = r#"{"rollout": {"percentage": 5}, "features": [{"name":"a","override":"on"}]"#;
        let auto = compile(format!("{base}}}").as_bytes()).unwrap();
        assert!(auto.model.engine().starts_with("dense "), "{}", auto.model.engine());
        let tract = compile(format!(r#"{base}, "model": {{"engine": "tract"}}}}"#).as_bytes()).unwrap();
        assert!(tract.model.engine().starts_with("tract"), "{}", tract.model.engine());
        let e = err(&format!(r#"{base}, "model": {{"engine": "onnxruntime"}}}}"#));
        assert!(
            e.starts_with("model.engine: unknown variant `onnxruntime`, expected `auto` or `tract`"),
            "{e}"
        );
    }

    #[test]
    fn stats_flush_interval_is_checked() {
        let base = r#"{"rollout": {"percentage": 5}, "features": [{"name":"a","override":"on"}]"#;
        assert_eq!(compile(format!("{base}}}").as_bytes()).unwrap().stats_flush_ms, 1000);
        let zero = compile(format!(r#"{base}, "stats": {{"flush_ms": 0}}}}"#).as_bytes()).unwrap();
        assert_eq!(zero.stats_flush_ms, 0);
        let e = err(&format!(r#"{base}, "stats": {{"flush_ms": 5}}}}"#));
        assert!(e.starts_with("stats.flush_ms: 5 is outside 100-60000"), "{e}");
    }

    #[test]
    fn control_headers_cover_underscore_look_alikes_and_earlier_prefixes() {
        let h = ControlHeaders::new("x-ctl-", vec!["x-augur-".into()]);
        for name in ["x-ctl-stack", "x_ctl_stack", "x-ctl_x", "x_ctl-", "x-augur-stack", "x_augur_features"] {
            assert!(h.is_control(name), "{name}");
        }
        for name in ["x-ctl", "x-ct-stack", "x-user-id", "x_user_id", "", "y-ctl-stack"] {
            assert!(!h.is_control(name), "{name}");
        }
        assert_eq!(h.previous_stack, ["x-augur-stack"]);
    }

    #[test]
    fn a_prefix_change_needs_the_old_prefix_listed() {
        let base = r#""rollout": {"percentage": 5}, "features": [{"name":"a","override":"on"}]"#;
        let moved = compile(format!(r#"{{{base}, "control_header_prefix": "x-ctl-"}}"#).as_bytes()).unwrap();
        let e = check_prefix_change("x-augur-", &moved.headers).unwrap_err().to_string();
        assert!(
            e.starts_with(
                r#"control_header_prefix: changes from "x-augur-" to "x-ctl-" without a migration"#
            ),
            "{e}"
        );
        assert!(e.contains(r#""previous_control_header_prefixes": ["x-augur-"]"#), "{e}");
        assert!(check_prefix_change("x-ctl-", &moved.headers).is_ok());
        let migrating = compile(
            format!(r#"{{{base}, "control_header_prefix": "x-ctl-", "previous_control_header_prefixes": ["X-Augur-"]}}"#)
                .as_bytes(),
        )
        .unwrap();
        assert!(check_prefix_change("x-augur-", &migrating.headers).is_ok());
        assert!(check_prefix_change("x-other-", &migrating.headers).is_err());
        let e = err(&format!(r#"{{{base}, "previous_control_header_prefixes": ["x-augur-"]}}"#));
        assert!(
            e.starts_with(
                "previous_control_header_prefixes[0]: \"x-augur-\" is control_header_prefix itself"
            ),
            "{e}"
        );
        let e = err(&format!(r#"{{{base}, "previous_control_header_prefixes": ["nodash"]}}"#));
        assert!(e.starts_with("previous_control_header_prefixes[0]: \"nodash\" must be"), "{e}");
        let e = err(&format!(
            r#"{{{base}, "control_header_prefix": "x-ctl-", "previous_control_header_prefixes": ["x-augur-"], "profile": {{"user_header": "x_augur_user"}}}}"#
        ));
        assert!(
            e.starts_with("profile.user_header: \"x_augur_user\" starts with control_header_prefix"),
            "{e}"
        );
    }

    #[test]
    fn invalid_json_is_refused_not_panicking() {
        for bad in ["", "{", "null", "[]", "{\"rollout\": 5}", "\u{0}"] {
            assert!(compile(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
