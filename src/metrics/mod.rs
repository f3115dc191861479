//! Metrics: the Envoy stats augur keeps for every decision.
//!
//! A name is a base name followed by `.label.value` pairs, e.g.
//! `augur_requests_total.rollout.checkout.stack.new` or
//! `augur_feature_decisions_total.rollout.checkout.feature.search_v2.state.off.reason.security_risk`.
//! Envoy prefixes wasm stats with `wasmcustom.`; the `stats_tags` in
//! `envoy/envoy.yaml` cut each pair out of the name into a label, so
//! `/stats/prometheus` shows `augur_requests_total{stack="new"}` (a custom stat
//! namespace: no `envoy_` prefix). Names follow Prometheus conventions: counters
//! end in `_total`, durations are in seconds (`le` bounds in seconds). The full
//! list is in README ("Reading the stats").
//!
//! Host access is behind [`MetricSink`] so this module is tested natively.

use crate::config::ConfigError;

mod batch;
mod catalogue;

pub use catalogue::{decision_stat, Metrics};

/// Kind of an Envoy stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Where stats go: Envoy's stats store in the filter, a map in tests.
pub trait MetricSink {
    /// Defines (or looks up) a stat; `None` if the host refused it.
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment(&mut self, id: u32, by: i64);
    fn record(&mut self, id: u32, value: u64);
}

/// `stats` in the plugin configuration.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStats {
    flush_ms: u64,
}

impl Default for RawStats {
    fn default() -> Self {
        RawStats { flush_ms: 1000 }
    }
}

/// Compiles `stats`: the flush period in ms (0 = every counter at once).
pub(crate) fn compile_stats(raw: &RawStats) -> Result<u64, ConfigError> {
    if raw.flush_ms != 0 && !(100..=60_000).contains(&raw.flush_ms) {
        return Err(ConfigError::new(
            "stats.flush_ms",
            format!("{} is outside 100-60000 (or 0 to count at once)", raw.flush_ms),
        ));
    }
    Ok(raw.flush_ms)
}

#[cfg(test)]
pub(crate) mod test_sink {
    pub use crate::offline::MemorySink as MapSink;
}
