//! Flags: which features are on for one request.
//!
//! Rules, first match wins, evaluated in dependency order so a prerequisite is
//! always decided before the features that need it:
//! 1. global override `off`                      → off (`global_off`)
//! 2. per-feature override `off` (kill switch)   → off (`kill_switch`)
//! 3. request in one of `deny_segments`          → off (`denied_segment`)
//! 4. `allow_segments` set and request in none   → off (`not_in_allowed_segment`)
//! 5. a prerequisite in `requires` is off        → off (`prerequisite_off`)
//! 6. per-feature override `on`                  → on  (`forced_on`)
//! 7. no prediction (model failed on this request) → the feature's `fallback`
//!    (`fallback_on` / `fallback_off`)
//! 8. any impact beyond its threshold ("high risk / low benefit") → off
//!    (`performance_cost`, `error_risk`, `security_risk`, `low_engagement`)
//! 9. score below `min_score`                   → off (`low_score`)
//! 10. otherwise                                 → on  (`enabled`)
//!
//! A feature that came out on (rules 6, 7 or 10) is then turned off, in this
//! order, with reason `rolled_back` when automated rollback blocked it for one
//! of the request's cells (`auto` features only), `exploring` when it was drawn
//! for exploration in a suspect cell (`auto` only), or `holdout` when the user is
//! in the feature's sticky A/B holdout. A blocked feature its block's probe
//! kept on stays on with reason `probing` (unless held out). Features that need
//! it follow (`prerequisite_off`).
//!
//! Flags are decided for every request; on the old stack the engine then turns
//! every feature off with reason `old_stack` (scores are kept for the record).

use crate::model::{Impact, ScoreWeights};

pub mod config;

/// Per-feature or global override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Override {
    /// Decide from the model and the rules.
    #[default]
    Auto,
    /// Force on (still subject to kill switches, segments and prerequisites).
    On,
    /// Kill switch: always off.
    Off,
}

/// Why a feature ended up on or off. Recorded per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Enabled,
    ForcedOn,
    FallbackOn,
    FallbackOff,
    GlobalOff,
    KillSwitch,
    DeniedSegment,
    NotInAllowedSegment,
    PrerequisiteOff,
    PerformanceCost,
    ErrorRisk,
    SecurityRisk,
    LowEngagement,
    LowScore,
    /// The request went to the old stack: no feature is emitted.
    OldStack,
    /// Would be on, but the user is in the feature's A/B holdout.
    Holdout,
    /// Automated rollback: significantly worse than control in one of the
    /// request's cells (or everywhere).
    RolledBack,
    /// Would be on, turned off at random in a suspect cell to find the culprit.
    Exploring,
    /// Blocked by automated rollback in one of the request's cells, but kept on
    /// at random (`rollback.probe_share`) to test whether the harm is still there.
    Probing,
}

impl Reason {
    pub const ALL: [Reason; 19] = [
        Reason::Enabled,
        Reason::ForcedOn,
        Reason::FallbackOn,
        Reason::FallbackOff,
        Reason::GlobalOff,
        Reason::KillSwitch,
        Reason::DeniedSegment,
        Reason::NotInAllowedSegment,
        Reason::PrerequisiteOff,
        Reason::PerformanceCost,
        Reason::ErrorRisk,
        Reason::SecurityRisk,
        Reason::LowEngagement,
        Reason::LowScore,
        Reason::OldStack,
        Reason::Holdout,
        Reason::RolledBack,
        Reason::Exploring,
        Reason::Probing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Enabled => "enabled",
            Reason::ForcedOn => "forced_on",
            Reason::FallbackOn => "fallback_on",
            Reason::FallbackOff => "fallback_off",
            Reason::GlobalOff => "global_off",
            Reason::KillSwitch => "kill_switch",
            Reason::DeniedSegment => "denied_segment",
            Reason::NotInAllowedSegment => "not_in_allowed_segment",
            Reason::PrerequisiteOff => "prerequisite_off",
            Reason::PerformanceCost => "performance_cost",
            Reason::ErrorRisk => "error_risk",
            Reason::SecurityRisk => "security_risk",
            Reason::LowEngagement => "low_engagement",
            Reason::LowScore => "low_score",
            Reason::OldStack => "old_stack",
            Reason::Holdout => "holdout",
            Reason::RolledBack => "rolled_back",
            Reason::Exploring => "exploring",
            Reason::Probing => "probing",
        }
    }

    pub fn is_on(self) -> bool {
        matches!(self, Reason::Enabled | Reason::ForcedOn | Reason::FallbackOn | Reason::Probing)
    }

    /// The rules put the feature on, and a randomised or automated step may have
    /// turned it off: the request belongs to the feature's on/off comparison.
    pub fn is_eligible(self) -> bool {
        matches!(
            self,
            Reason::Enabled | Reason::FallbackOn | Reason::Holdout | Reason::Exploring | Reason::Probing
        )
    }
}

/// Acceptable impact, per category. A prediction beyond any bound disables the feature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub max_performance_cost: f32,
    pub max_error_risk: f32,
    pub min_engagement: f32,
    pub max_security_risk: f32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_performance_cost: 0.7,
            max_error_risk: 0.3,
            min_engagement: 0.0,
            max_security_risk: 0.5,
        }
    }
}

/// One feature's compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRule {
    pub name: String,
    /// Indices of prerequisite features.
    pub requires: Vec<usize>,
    pub override_: Override,
    pub thresholds: Thresholds,
    pub min_score: u8,
    /// Segment bitmasks (see [`crate::profile::Profile::segments`]).
    pub allow_segments: u64,
    pub deny_segments: u64,
    /// Value used when the model could not score this request.
    pub fallback: bool,
    /// Index of this feature's prediction in the model output, if the model scores it.
    pub model_slot: Option<usize>,
    /// Holdout share in buckets (`0..=routing::BUCKETS`); 0 = no holdout.
    pub holdout: u32,
}

/// All feature rules plus the order to evaluate them in.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagRules {
    pub features: Vec<FeatureRule>,
    /// Topological order: every feature comes after its prerequisites.
    pub order: Vec<usize>,
    pub weights: ScoreWeights,
}

/// The outcome for one feature on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagDecision {
    pub on: bool,
    pub reason: Reason,
    /// 0-100, when the model scored the feature on this request.
    pub score: Option<u8>,
}

impl Default for FlagDecision {
    fn default() -> Self {
        FlagDecision { on: false, reason: Reason::GlobalOff, score: None }
    }
}

fn threshold_reason(t: &Thresholds, i: &Impact) -> Option<Reason> {
    if i.security_risk > t.max_security_risk {
        Some(Reason::SecurityRisk)
    } else if i.error_risk > t.max_error_risk {
        Some(Reason::ErrorRisk)
    } else if i.performance_cost > t.max_performance_cost {
        Some(Reason::PerformanceCost)
    } else if i.engagement < t.min_engagement {
        Some(Reason::LowEngagement)
    } else {
        None
    }
}

/// What the flag rules need to know about one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlagInputs<'a> {
    pub global_off: bool,
    /// The model output (indexed by `model_slot`); `None` when the model failed.
    pub impacts: Option<&'a [Impact]>,
    /// Segment membership bitmask.
    pub segments: u64,
    /// Bit `i` set when the user is in feature `i`'s holdout.
    pub holdout: u64,
    /// Bit `i` set when automated rollback blocks feature `i` for this request.
    pub rolled_back: u64,
    /// Bit `i` set when feature `i` was drawn off for exploration.
    pub explore_off: u64,
    /// Bit `i` set when blocked feature `i` was kept on by the block's probe
    /// (not in `rolled_back`).
    pub probe_on: u64,
}

impl FlagRules {
    /// Decides every feature into `out`, resized to the number of features
    /// (reusing its allocation).
    pub fn decide(&self, input: FlagInputs<'_>, out: &mut Vec<FlagDecision>) {
        let FlagInputs { global_off, impacts, segments, holdout, rolled_back, explore_off, probe_on } = input;
        out.clear();
        out.resize(self.features.len(), FlagDecision::default());
        for &ix in &self.order {
            let Some(rule) = self.features.get(ix) else { continue };
            let impact = rule.model_slot.and_then(|slot| impacts.and_then(|all| all.get(slot))).copied();
            let score = impact.map(|i| i.score(&self.weights));
            let reason = if global_off {
                Reason::GlobalOff
            } else if rule.override_ == Override::Off {
                Reason::KillSwitch
            } else if rule.deny_segments & segments != 0 {
                Reason::DeniedSegment
            } else if rule.allow_segments != 0 && rule.allow_segments & segments == 0 {
                Reason::NotInAllowedSegment
            } else if rule.requires.iter().any(|&r| !out.get(r).is_some_and(|d| d.on)) {
                Reason::PrerequisiteOff
            } else if rule.override_ == Override::On {
                Reason::ForcedOn
            } else if let Some(i) = impact {
                match threshold_reason(&rule.thresholds, &i) {
                    Some(r) => r,
                    None if score.unwrap_or(0) < rule.min_score => Reason::LowScore,
                    None => Reason::Enabled,
                }
            } else if rule.fallback {
                Reason::FallbackOn
            } else {
                Reason::FallbackOff
            };
            let bit = 1u64 << ix;
            let automatic = rule.override_ == Override::Auto;
            let reason = match reason {
                r if !r.is_on() => r,
                _ if automatic && rolled_back & bit != 0 => Reason::RolledBack,
                _ if automatic && explore_off & bit != 0 => Reason::Exploring,
                _ if holdout & bit != 0 => Reason::Holdout,
                _ if automatic && probe_on & bit != 0 => Reason::Probing,
                r => r,
            };
            if let Some(slot) = out.get_mut(ix) {
                *slot = FlagDecision { on: reason.is_on(), reason, score };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, slot: usize) -> FeatureRule {
        FeatureRule {
            name: name.into(),
            requires: vec![],
            override_: Override::Auto,
            thresholds: Thresholds::default(),
            min_score: 50,
            allow_segments: 0,
            deny_segments: 0,
            fallback: false,
            model_slot: Some(slot),
            holdout: 0,
        }
    }

    const GOOD: Impact =
        Impact { performance_cost: 0.1, error_risk: 0.05, engagement: 0.8, security_risk: 0.1 };

    fn rules(features: Vec<FeatureRule>, order: Vec<usize>) -> FlagRules {
        FlagRules { features, order, weights: ScoreWeights::default() }
    }

    fn decide(r: &FlagRules, impacts: Option<&[Impact]>, seg: u64) -> Vec<FlagDecision> {
        let mut out = Vec::new();
        r.decide(FlagInputs { impacts, segments: seg, ..FlagInputs::default() }, &mut out);
        out
    }

    #[test]
    fn good_prediction_enables_with_score() {
        let r = rules(vec![rule("a", 0)], vec![0]);
        let d = decide(&r, Some(&[GOOD]), 0);
        assert_eq!(d[0].reason, Reason::Enabled);
        assert!(d[0].on);
        assert_eq!(d[0].score, Some(GOOD.score(&ScoreWeights::default())));
    }

    #[test]
    fn each_threshold_disables() {
        let r = rules(vec![rule("a", 0)], vec![0]);
        let cases = [
            (Impact { security_risk: 0.9, ..GOOD }, Reason::SecurityRisk),
            (Impact { error_risk: 0.31, ..GOOD }, Reason::ErrorRisk),
            (Impact { performance_cost: 0.71, ..GOOD }, Reason::PerformanceCost),
        ];
        for (impact, want) in cases {
            assert_eq!(decide(&r, Some(&[impact]), 0)[0].reason, want);
        }
        let mut low = rule("a", 0);
        low.thresholds.min_engagement = 0.9;
        let r = rules(vec![low], vec![0]);
        assert_eq!(decide(&r, Some(&[GOOD]), 0)[0].reason, Reason::LowEngagement);
    }

    #[test]
    fn low_score_disables() {
        let mut strict = rule("a", 0);
        strict.min_score = 95;
        let r = rules(vec![strict], vec![0]);
        assert_eq!(decide(&r, Some(&[GOOD]), 0)[0].reason, Reason::LowScore);
    }

    #[test]
    fn prerequisite_off_propagates_in_dependency_order() {
        // Listed as [c, b, a] (indices 0, 1, 2); c requires b, b requires a, so
        // the order is a(2), b(1), c(0). Model slots: a 0, b 1, c 2.
        let mut c = rule("c", 2);
        c.requires = vec![1];
        let mut b = rule("b", 1);
        b.requires = vec![2];
        let a = rule("a", 0);
        let r = rules(vec![c, b, a], vec![2, 1, 0]);
        let bad = Impact { error_risk: 0.9, ..GOOD };
        let d = decide(&r, Some(&[bad, GOOD, GOOD]), 0);
        assert_eq!(d[2].reason, Reason::ErrorRisk);
        assert_eq!(d[1].reason, Reason::PrerequisiteOff);
        assert_eq!(d[0].reason, Reason::PrerequisiteOff);
        let d = decide(&r, Some(&[GOOD, GOOD, GOOD]), 0);
        assert!(d.iter().all(|f| f.on));
    }

    #[test]
    fn overrides_and_segments_take_precedence() {
        let mut forced = rule("forced", 0);
        forced.override_ = Override::On;
        let mut killed = rule("killed", 0);
        killed.override_ = Override::Off;
        let mut beta = rule("beta_only", 0);
        beta.allow_segments = 0b01;
        let mut denied = rule("denied", 0);
        denied.deny_segments = 0b10;
        denied.override_ = Override::On;
        let r = rules(vec![forced, killed, beta, denied], vec![0, 1, 2, 3]);
        let bad = Impact { security_risk: 1.0, ..GOOD };
        let d = decide(&r, Some(&[bad]), 0b10);
        assert_eq!(d[0].reason, Reason::ForcedOn, "forced on ignores the model");
        assert_eq!(d[1].reason, Reason::KillSwitch);
        assert_eq!(d[2].reason, Reason::NotInAllowedSegment);
        assert_eq!(d[3].reason, Reason::DeniedSegment, "deny beats forced on");
        let d = decide(&r, Some(&[GOOD]), 0b01);
        assert_eq!(d[2].reason, Reason::Enabled, "allowed segment member is scored");

        let mut out = Vec::new();
        let input =
            FlagInputs { global_off: true, impacts: Some(&[GOOD]), segments: 0b01, ..FlagInputs::default() };
        r.decide(input, &mut out);
        assert!(out.iter().all(|f| f.reason == Reason::GlobalOff && !f.on));
    }

    #[test]
    fn model_failure_uses_fallback() {
        let mut on = rule("on", 0);
        on.fallback = true;
        let off = rule("off", 0);
        let r = rules(vec![on, off], vec![0, 1]);
        let d = decide(&r, None, 0);
        assert_eq!((d[0].on, d[0].reason), (true, Reason::FallbackOn));
        assert_eq!((d[1].on, d[1].reason), (false, Reason::FallbackOff));
        assert_eq!(d[0].score, None);
    }

    #[test]
    fn holdout_turns_on_features_off_and_their_dependents_follow() {
        let a = rule("a", 0);
        let mut b = rule("b", 0);
        b.requires = vec![0];
        let mut killed = rule("killed", 0);
        killed.override_ = Override::Off;
        let r = rules(vec![a, b, killed], vec![0, 1, 2]);
        let mut out = Vec::new();
        r.decide(FlagInputs { impacts: Some(&[GOOD]), holdout: 0b101, ..FlagInputs::default() }, &mut out);
        assert_eq!(out[0].reason, Reason::Holdout);
        assert!(!out[0].on && out[0].score.is_some(), "held-out requests keep their score");
        assert_eq!(out[1].reason, Reason::PrerequisiteOff);
        assert_eq!(out[2].reason, Reason::KillSwitch, "holdout never turns anything on");
    }

    #[test]
    fn rollback_and_exploration_apply_to_auto_features_only() {
        let a = rule("a", 0);
        let mut b = rule("b", 0);
        b.requires = vec![0];
        let mut forced = rule("forced", 0);
        forced.override_ = Override::On;
        let r = rules(vec![a, b, forced], vec![0, 1, 2]);
        let mut out = Vec::new();
        let all = 0b111;
        r.decide(FlagInputs { impacts: Some(&[GOOD]), rolled_back: all, ..FlagInputs::default() }, &mut out);
        let reasons: Vec<Reason> = out.iter().map(|d| d.reason).collect();
        assert_eq!(reasons, [Reason::RolledBack, Reason::PrerequisiteOff, Reason::ForcedOn]);
        r.decide(
            FlagInputs { impacts: Some(&[GOOD]), explore_off: 0b010, ..FlagInputs::default() },
            &mut out,
        );
        let reasons: Vec<Reason> = out.iter().map(|d| d.reason).collect();
        assert_eq!(reasons, [Reason::Enabled, Reason::Exploring, Reason::ForcedOn]);
        assert!(Reason::Exploring.is_eligible() && !Reason::RolledBack.is_eligible());
    }
}
