//! Segments: named groups of requests that flag rules (`allow_segments`,
//! `deny_segments`) and per-segment rollout percentages refer to.
//!
//! A *static* segment is matched from the request (users, devices, locations,
//! a header); a *predicted* one also needs the model's prediction for a feature
//! in a range. Membership is evaluated once per request, after the model has
//! run ([`evaluate`]). Owns the `segments` section of the configuration.

use std::collections::HashSet;

use serde::Deserialize;

use crate::config::{is_token, ConfigError, Field};
use crate::control::ControlHeaders;
use crate::headers::Headers;
use crate::model::{Impact, Model, ScoreWeights};
use crate::profile::{Device, Profile, ProfileSpec};

/// Maximum number of segments (membership is a 64-bit mask).
pub const MAX_SEGMENTS: usize = 64;
/// Most user ids one segment may list (looked up in a hash set).
pub const MAX_USERS_PER_SEGMENT: usize = 10_000;
/// Segments with `monitor: true`: each adds features × 10 counters per proxy (2 arms × 5 outcomes).
pub const MAX_MONITORED_SEGMENTS: usize = 8;

/// A named group of requests: every criterion that is set must match
/// (criteria are ANDed, values inside one criterion are ORed).
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub name: String,
    /// User ids (a hash set: membership is O(1) whatever the list's length,
    /// up to [`MAX_USERS_PER_SEGMENT`]).
    pub users: HashSet<String>,
    pub devices: Vec<Device>,
    pub locations: Vec<String>,
    pub header: Option<(String, Vec<String>)>,
    /// A prediction that must be in range too (compiled against the model).
    pub predicted: Option<Predicted>,
}

impl Segment {
    /// Whether the request matches every static criterion of the segment.
    fn matches_request(
        &self,
        user: Option<&[u8]>,
        device: Device,
        location: Option<&str>,
        req: &(impl Headers + ?Sized),
    ) -> bool {
        let users_ok = self.users.is_empty()
            || user.and_then(|u| std::str::from_utf8(u).ok()).is_some_and(|u| self.users.contains(u));
        let devices_ok = self.devices.is_empty() || self.devices.contains(&device);
        let locations_ok = self.locations.is_empty()
            || location.is_some_and(|l| self.locations.iter().any(|s| s.eq_ignore_ascii_case(l)));
        let header_ok = match &self.header {
            None => true,
            Some((name, values)) => {
                req.header(name).is_some_and(|got| values.iter().any(|v| v.eq_ignore_ascii_case(got.trim())))
            }
        };
        users_ok && devices_ok && locations_ok && header_ok
    }
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

/// A prediction a segment's members must have in range.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicted {
    /// The model output slot of the feature.
    pub slot: usize,
    pub value: PredictedValue,
    pub min: f32,
    pub max: f32,
}

impl Predicted {
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

/// The request's segments (bit `i`: `segments[i]`), evaluated once the model
/// has run: every static criterion matches and the prediction, if the segment
/// has one, is in range (`impacts` is `None` when the model failed: a
/// predicted segment then has no members).
pub fn evaluate(
    segments: &[Segment],
    spec: &ProfileSpec,
    profile: &Profile,
    req: &(impl Headers + ?Sized),
    impacts: Option<&[Impact]>,
    weights: &ScoreWeights,
) -> u64 {
    if segments.is_empty() {
        return 0;
    }
    let user = req.header_bytes(&spec.user_header).filter(|u| !u.is_empty());
    let location = req.header(&spec.location_header).map(str::trim);
    let mut mask = 0;
    for (i, seg) in segments.iter().enumerate().take(MAX_SEGMENTS) {
        let predicted_ok =
            seg.predicted.as_ref().is_none_or(|p| impacts.is_some_and(|all| p.matches(all, weights)));
        if predicted_ok && seg.matches_request(user, profile.device, location, req) {
            mask |= 1 << i;
        }
    }
    mask
}

/// One entry of `segments` in the plugin configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSegment {
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

/// Indices of the segments with `monitor: true` (per-segment outcome stats).
pub(crate) fn compile_monitored(raw: &[RawSegment]) -> Result<Vec<usize>, ConfigError> {
    let out: Vec<usize> = raw.iter().enumerate().filter(|(_, s)| s.monitor).map(|(i, _)| i).collect();
    if let Some(&i) = out.get(MAX_MONITORED_SEGMENTS) {
        return Err(ConfigError::new(
            Field::item("segments", i).child("monitor"),
            format!(
                "{} monitored segments, at most {MAX_MONITORED_SEGMENTS} (MAX_MONITORED_SEGMENTS): each adds features × 10 series on every proxy; monitor the cells you act on",
                out.len()
            ),
        ));
    }
    Ok(out)
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

/// Compiles the static criteria of `segments` (no model needed: `augur encode`).
pub(crate) fn compile(raw: &[RawSegment], control: &ControlHeaders) -> Result<Vec<Segment>, ConfigError> {
    if raw.len() > MAX_SEGMENTS {
        return Err(ConfigError::new("segments", format!("at most {MAX_SEGMENTS} segments")));
    }
    let mut out: Vec<Segment> = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let field = Field::item("segments", i);
        if !is_token(&s.name) {
            return Err(ConfigError::new(
                field.child("name"),
                format!("\"{}\" must be a lowercase token", s.name),
            ));
        }
        if out.iter().any(|o| o.name == s.name) {
            return Err(ConfigError::new(field.child("name"), format!("duplicate segment \"{}\"", s.name)));
        }
        let header = match (&s.header, s.values.is_empty()) {
            (None, true) => None,
            (Some(h), false) => Some((control.input_header(&field.child("header"), h)?, s.values.clone())),
            (Some(_), true) => {
                return Err(ConfigError::new(
                    field.child("values"),
                    "a header criterion needs at least one value",
                ))
            }
            (None, false) => {
                return Err(ConfigError::new(
                    field.child("header"),
                    "values are given but no header to match them against",
                ))
            }
        };
        if s.users.len() > MAX_USERS_PER_SEGMENT {
            return Err(ConfigError::new(
                field.child("users"),
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
            predicted: None,
        });
    }
    Ok(out)
}

/// Compiles the predicted criteria of `segments` against the model's features.
pub(crate) fn compile_predicted(
    raw: &[RawSegment],
    segments: &mut [Segment],
    model: &Model,
) -> Result<(), ConfigError> {
    for (i, (s, out)) in raw.iter().zip(segments.iter_mut()).enumerate() {
        let Some(p) = &s.predicted else { continue };
        let field = Field::item("segments", i).child("predicted");
        let Some(slot) = model.features().iter().position(|f| f == &p.feature) else {
            return Err(ConfigError::new(
                field.child("feature"),
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
        out.predicted = Some(Predicted { slot, value: p.impact, min, max });
    }
    Ok(())
}

/// The index of segment `name`, or the error for `field` that names the fix.
pub(crate) fn resolve(field: Field, name: &str, segments: &[Segment]) -> Result<usize, ConfigError> {
    segments.iter().position(|s| s.name == name).ok_or_else(|| {
        ConfigError::new(field, format!("unknown segment \"{name}\"; define it under \"segments\""))
    })
}

/// The membership mask of the segments `names` (a rule's `allow_segments`, …).
pub(crate) fn mask(field: &Field, names: &[String], segments: &[Segment]) -> Result<u64, ConfigError> {
    let mut mask = 0u64;
    for (j, n) in names.iter().enumerate() {
        mask |= 1 << resolve(field.at(j), n, segments)?;
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::MAX_MONITORED_SEGMENTS;
    use crate::testing::TestConfig;
    use serde_json::json;

    #[test]
    fn monitored_segments_are_opt_in_and_bounded() {
        let with = |monitors: &[bool]| {
            monitors
                .iter()
                .enumerate()
                .fold(TestConfig::rollout(5.0), |c, (i, m)| {
                    c.segment(&format!("s{i}"), json!({"devices": ["tablet"], "monitor": m}))
                })
                .on("a")
                .compile()
        };
        assert_eq!(with(&[false, true, true]).unwrap().monitored_segments, vec![1, 2]);
        assert!(with(&[false]).unwrap().monitored_segments.is_empty());
        let e = with(&[true; MAX_MONITORED_SEGMENTS + 1]).unwrap_err().to_string();
        assert!(
            e.starts_with("segments[8].monitor: 9 monitored segments, at most 8 (MAX_MONITORED_SEGMENTS)"),
            "{e}"
        );
        let e = TestConfig::rollout(5.0)
            .segment("s", json!({"devices": ["tablet"], "monitor": "yes"}))
            .on("a")
            .compile()
            .unwrap_err()
            .to_string();
        assert!(e.contains("segments") && e.contains("expected a boolean"), "{e}");
    }

    #[test]
    fn segments_are_validated_and_resolved() {
        let c = TestConfig::rollout(5.0)
            .segment("beta", json!({"header": "x-tier", "values": ["beta"]}))
            .segment("eu", json!({"locations": ["EU"]}))
            .feature("a", json!({"override": "on", "allow_segments": ["eu"], "deny_segments": ["beta"]}))
            .compile()
            .unwrap();
        assert_eq!(c.rules.features[0].allow_segments, 0b10);
        assert_eq!(c.rules.features[0].deny_segments, 0b01);
        assert_eq!(c.segments[1].locations, vec!["eu".to_string()]);

        let e = TestConfig::rollout(5.0)
            .feature("a", json!({"override": "on", "allow_segments": ["vip"]}))
            .compile()
            .unwrap_err()
            .to_string();
        assert_eq!(e, r#"features[0].allow_segments[0]: unknown segment "vip"; define it under "segments""#);
        let e =
            TestConfig::rollout(5.0).segment("empty", json!({})).on("a").compile().unwrap_err().to_string();
        assert!(e.starts_with("segments[0]: a segment needs"), "{e}");
    }

    #[test]
    fn predicted_segment_needs_a_scored_feature() {
        let e = TestConfig::rollout(0.0)
            .segment("x", json!({"predicted": {"feature": "nope", "impact": "score", "min": 50}}))
            .on("a")
            .compile()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("segments[0].predicted.feature: the model does not score \"nope\""), "{e}");
    }

    #[test]
    fn segments_and_criteria_and_together_and_predicted_ones_need_the_model() {
        let c = TestConfig::rollout(5.0)
            .segment("beta", json!({"header": "x-tier", "values": ["beta"]}))
            .segment("eu_mobile", json!({"devices": ["mobile"], "locations": ["eu"]}))
            .segment("staff", json!({"users": ["alice"]}))
            .segment(
                "engaged",
                json!({"predicted": {"feature": "recommendations", "impact": "score", "min": 0}}),
            )
            .on("a")
            .compile()
            .unwrap();
        let impacts = [crate::model::Impact::default(); 8];
        let of = |pairs: &[(&str, &str)], impacts: Option<&[crate::model::Impact]>| {
            let req: Vec<(String, String)> =
                pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let mut p = crate::profile::Profile::default();
            crate::profile::encode(&c.profile, &req, &mut p);
            super::evaluate(&c.segments, &c.profile, &p, &req, impacts, &c.rules.weights)
        };
        assert_eq!(of(&[("x-tier", "Beta"), ("x-user-id", "alice")], Some(&impacts)), 0b1101);
        assert_eq!(of(&[("x-geo-region", "eu"), ("user-agent", "Android Mobile")], None), 0b0010);
        assert_eq!(of(&[("x-geo-region", "eu"), ("user-agent", "Windows")], None), 0);
    }
}
