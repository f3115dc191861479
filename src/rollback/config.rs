//! The `rollback` section: the automated-rollback policy and how often
//! workers pool their outcomes.

use serde::Deserialize;

use super::{Policy, Recovery};
use crate::config::ConfigError;

/// `rollback` in the plugin configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRollback {
    enabled: bool,
    slow_ms: u64,
    slow_floor_ms: u64,
    alpha: f64,
    min_samples: u32,
    kill_after_cells: u32,
    explore_share: f64,
    explore_budget: f64,
    probation_s: Option<u64>,
    probe_share: f64,
    probe_after_s: u64,
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
            probe_share: p.probe_share,
            probe_after_s: p.probe_after_s,
            sync_ms: 1000,
            epoch: p.epoch,
            z: None,
            z_suspect: None,
        }
    }
}

/// Compiles `rollback` into the policy and the sync period (ms).
pub(crate) fn compile(raw: &RawRollback) -> Result<(Policy, u64), ConfigError> {
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
    if !(0.0..=0.5).contains(&raw.probe_share) {
        return Err(ConfigError::new(
            "rollback.probe_share",
            format!(
                "{} is outside 0-0.5 (the share of a blocked feature's requests kept on to test the block; 0 turns the probe off)",
                raw.probe_share
            ),
        ));
    }
    if raw.probe_after_s > 30 * 86_400 {
        return Err(ConfigError::new(
            "rollback.probe_after_s",
            format!(
                "{} is above 30 days (2592000); set rollback.probe_share to 0 to turn the probe off",
                raw.probe_after_s
            ),
        ));
    }
    if !(100..=60_000).contains(&raw.sync_ms) {
        return Err(ConfigError::new("rollback.sync_ms", format!("{} is outside 100-60000", raw.sync_ms)));
    }
    if raw.kill_after_cells == 0 {
        return Err(ConfigError::new("rollback.kill_after_cells", "must be at least 1"));
    }
    let policy = Policy {
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
        probe_share: raw.probe_share,
        probe_after_s: raw.probe_after_s,
        epoch: raw.epoch,
    };
    Ok((policy, raw.sync_ms))
}

#[cfg(test)]
mod tests {
    use crate::testing::TestConfig;

    fn err(path: &str, v: impl Into<serde_json::Value>) -> String {
        TestConfig::rollout(5.0).on("a").set(path, v).compile().unwrap_err().to_string()
    }

    #[test]
    fn rollback_section_names_the_field_and_the_fix() {
        assert!(err("rollback.z", 3).starts_with("rollback.z: was replaced by rollback.alpha"));
        assert!(err("rollback.alpha", 0.5).starts_with("rollback.alpha: 0.5 is outside (0, 0.2]"));
        assert_eq!(err("rollback.sync_ms", 10), "rollback.sync_ms: 10 is outside 100-60000");
        let c = TestConfig::rollout(5.0).on("a").set("rollback.probation_s", 60).compile().unwrap();
        assert_eq!(c.rollback.recovery, super::Recovery::Probation { seconds: 60 });
        assert_eq!(c.rollback_sync_ms, 1000);
        assert!(err("rollback.probe_share", 0.6).starts_with("rollback.probe_share: 0.6 is outside 0-0.5"));
        assert!(err("rollback.probe_after_s", 3_000_000)
            .starts_with("rollback.probe_after_s: 3000000 is above 30 days"));
        assert_eq!((c.rollback.probe_share, c.rollback.probe_after_s), (0.05, 300));
    }
}
