//! The `features` section: one rule per feature, validated against the model
//! and the segments, and the order to evaluate them in (prerequisites first).

use std::collections::HashMap;

use serde::Deserialize;

use super::{FeatureRule, FlagRules, Override, Thresholds};
use crate::config::{is_token, ConfigError, Field};
use crate::model::{Model, ScoreWeights};
use crate::routing::BUCKETS;
use crate::segments::{self, Segment};

/// Largest accepted feature count (flag decisions are kept per request).
pub const MAX_FEATURES: usize = 64;

/// Fallback value of a feature when the model cannot score a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    On,
    #[default]
    Off,
}

/// One entry of `features` in the plugin configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFeature {
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

/// Holdout share (percent, 0-50) as a bucket threshold.
fn holdout_buckets(field: &Field, pct: f64) -> Result<u32, ConfigError> {
    if !(0.0..=50.0).contains(&pct) {
        return Err(ConfigError::new(
            field.child("holdout"),
            format!("{pct} is outside 0-50 (percent of eligible users held out)"),
        ));
    }
    Ok((pct * f64::from(BUCKETS) / 100.0).round() as u32)
}

fn unit(field: Field, v: f32) -> Result<f32, ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::new(field, format!("{v} is outside 0-1")))
    }
}

/// Compiles `features` into the rules and their evaluation order.
pub(crate) fn compile(
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
                Field::item("features", i).child("name"),
                format!("\"{}\" must be lowercase letters, digits, '-' or '_' (it is sent in a header and used in stat names)", f.name),
            ));
        }
        if index.insert(f.name.as_str(), i).is_some() {
            return Err(ConfigError::new(
                Field::item("features", i).child("name"),
                format!("duplicate feature \"{}\"", f.name),
            ));
        }
    }
    let mut features = Vec::with_capacity(raw.len());
    for (i, f) in raw.iter().enumerate() {
        let field = Field::item("features", i);
        let mut requires = Vec::with_capacity(f.requires.len());
        for (j, r) in f.requires.iter().enumerate() {
            match index.get(r.as_str()) {
                Some(&ix) if ix == i => {
                    return Err(ConfigError::new(
                        field.child("requires").at(j),
                        format!("\"{r}\" cannot require itself"),
                    ))
                }
                Some(&ix) => requires.push(ix),
                None => {
                    return Err(ConfigError::new(
                        field.child("requires"),
                        format!("unknown feature \"{r}\"; declare it under \"features\""),
                    ))
                }
            }
        }
        if f.min_score > 100 {
            return Err(ConfigError::new(
                field.child("min_score"),
                format!("{} is outside 0-100", f.min_score),
            ));
        }
        let thresholds = Thresholds {
            max_performance_cost: unit(field.child("max_performance_cost"), f.max_performance_cost)?,
            max_error_risk: unit(field.child("max_error_risk"), f.max_error_risk)?,
            min_engagement: unit(field.child("min_engagement"), f.min_engagement)?,
            max_security_risk: unit(field.child("max_security_risk"), f.max_security_risk)?,
        };
        let model_slot = model.features().iter().position(|m| m == &f.name);
        if model_slot.is_none() && f.override_ == Override::Auto {
            return Err(ConfigError::new(
                field.child("override"),
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
            allow_segments: segments::mask(&field.child("allow_segments"), &f.allow_segments, segments)?,
            deny_segments: segments::mask(&field.child("deny_segments"), &f.deny_segments, segments)?,
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
                            Field::item("features", dep).child("requires"),
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
    use crate::testing::TestConfig;
    use serde_json::json;

    fn err(c: TestConfig) -> String {
        c.compile().unwrap_err().to_string()
    }

    fn with(name: &str, fields: serde_json::Value) -> TestConfig {
        TestConfig::rollout(25.0).feature(name, fields)
    }

    #[test]
    fn unknown_requirement_names_field_and_fix() {
        let e = err(with("a", json!({"override": "on", "requires": ["checkout_v2"]})));
        assert_eq!(e, r#"features[0].requires: unknown feature "checkout_v2"; declare it under "features""#);
    }

    #[test]
    fn dependency_cycle_is_refused_and_named() {
        let e = err(with("a", json!({"override": "on", "requires": ["b"]}))
            .feature("b", json!({"override": "on", "requires": ["c"]}))
            .feature("c", json!({"override": "on", "requires": ["a"]})));
        assert!(e.contains("dependency cycle a → b → c → a"), "{e}");
    }

    #[test]
    fn order_puts_prerequisites_first() {
        let c = with("z", json!({"override": "on", "requires": ["y"]}))
            .feature("y", json!({"override": "on", "requires": ["x"]}))
            .on("x")
            .compile()
            .unwrap();
        assert_eq!(c.rules.order, vec![2, 1, 0]);
    }

    #[test]
    fn unscored_auto_feature_is_refused() {
        let e = err(with("brand_new", json!({})));
        assert!(e.starts_with("features[0].override: \"brand_new\" is \"auto\" but the model"), "{e}");
        // The same feature under a manual override is fine.
        assert!(TestConfig::rollout(25.0).off("brand_new").compile().is_ok());
    }

    #[test]
    fn value_ranges_are_checked() {
        let e = err(with("a", json!({"override": "on", "max_error_risk": 2})));
        assert_eq!(e, "features[0].max_error_risk: 2 is outside 0-1");
        let e = err(with("a", json!({"override": "on", "min_score": 101})));
        assert_eq!(e, "features[0].min_score: 101 is outside 0-100");
        let e = err(TestConfig::rollout(25.0).on("A b"));
        assert!(e.starts_with("features[0].name:"), "{e}");
        let e = err(with("a", json!({"override": "on", "holdout": 60})));
        assert_eq!(e, "features[0].holdout: 60 is outside 0-50 (percent of eligible users held out)");
        let e = err(TestConfig::rollout(25.0));
        assert_eq!(e, "features: at least one feature is required");
    }
}
