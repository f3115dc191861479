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

use crate::config::{Config, ConfigError};
use crate::engine::Decision;
use crate::flags::Reason;
use crate::rollback::Event;
use crate::routing::Stack;

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

const STACKS: [Stack; 2] = [Stack::Old, Stack::New];
/// Response status classes: 1xx..5xx, then "other" for anything unparsable.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Name of the counter for `feature` of rollout `rollout` decided with `reason`.
pub fn decision_stat(rollout: &str, feature: &str, reason: Reason) -> String {
    let state = if reason.is_on() { "on" } else { "off" };
    format!(
        "augur_feature_decisions_total.rollout.{rollout}.feature.{feature}.state.{state}.reason.{}",
        reason.as_str()
    )
}

fn stack_ix(s: Stack) -> usize {
    match s {
        Stack::Old => 0,
        Stack::New => 1,
    }
}

/// A counter: its slot in the worker's [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counter(u16);

/// Counter increments of one worker, handed to the proxy on the next tick.
///
/// Why: every stat update is a call out of the VM (~0.5 µs in Envoy's V8), and a
/// request moves up to `2 + 2 × features` counters. Batched, a tick makes one
/// call per counter that moved, whatever the traffic. Histograms are recorded
/// at once (the host has no "record N samples" call). With `stats.flush_ms: 0`
/// counters are incremented immediately.
#[derive(Debug, Clone, Default)]
struct Batch {
    /// Host stat id per slot.
    ids: Vec<u32>,
    /// Increments not yet handed over, per slot.
    deltas: Vec<u64>,
    immediate: bool,
}

impl Batch {
    fn define(&mut self, sink: &mut impl MetricSink, name: &str) -> Option<Counter> {
        let id = sink.define(MetricKind::Counter, name)?;
        let slot = u16::try_from(self.ids.len()).ok()?;
        self.ids.push(id);
        self.deltas.push(0);
        Some(Counter(slot))
    }

    fn add(&mut self, c: Option<Counter>, sink: &mut impl MetricSink) {
        self.add_n(c, 1, sink);
    }

    fn add_n(&mut self, c: Option<Counter>, n: u64, sink: &mut impl MetricSink) {
        let Some(Counter(slot)) = c else { return };
        let slot = usize::from(slot);
        if self.immediate {
            if let Some(id) = self.ids.get(slot) {
                sink.increment(*id, i64::try_from(n).unwrap_or(i64::MAX));
            }
        } else if let Some(d) = self.deltas.get_mut(slot) {
            *d = d.saturating_add(n);
        }
    }

    fn flush(&mut self, sink: &mut impl MetricSink) {
        for (id, d) in self.ids.iter().zip(self.deltas.iter_mut()) {
            if *d > 0 {
                sink.increment(*id, i64::try_from(*d).unwrap_or(i64::MAX));
                *d = 0;
            }
        }
    }
}

/// Upper bounds of the score buckets (scores are 0-100): the bound, its `le` label.
const SCORE_BOUNDS: &[(u64, &str)] = &[
    (10, "10"),
    (20, "20"),
    (30, "30"),
    (40, "40"),
    (50, "50"),
    (60, "60"),
    (70, "70"),
    (80, "80"),
    (90, "90"),
    (100, "100"),
];
/// Upper bounds of the latency buckets: measured in ms, labelled in seconds.
const LATENCY_BOUNDS: &[(u64, &str)] = &[
    (1, "0.001"),
    (2, "0.002"),
    (5, "0.005"),
    (10, "0.01"),
    (25, "0.025"),
    (50, "0.05"),
    (100, "0.1"),
    (250, "0.25"),
    (500, "0.5"),
    (1000, "1"),
    (2500, "2.5"),
    (5000, "5"),
];

/// A histogram kept as batched counters in Prometheus' layout: cumulative
/// `<name>_bucket` counters labelled `le` (the bounds, then `+Inf`), plus
/// `<name>_count` and a sum counter, so `histogram_quantile()` works on it.
///
/// Why not an Envoy histogram: each sample would be one more call out of the VM
/// per request (per feature, for the feature histograms); these are counted in
/// the worker and flushed with the other counters. Counters are integers, so a
/// sum of seconds cannot be kept exactly: the sum of a latency histogram is
/// `<unit-less base>_milliseconds_total` (see [`Buckets::define`]).
#[derive(Debug, Clone)]
struct Buckets {
    bounds: &'static [(u64, &'static str)],
    /// One per bound, then `+Inf`.
    buckets: Vec<Option<Counter>>,
    count: Option<Counter>,
    sum: Option<Counter>,
}

impl Buckets {
    /// `name` is the base name (`_bucket` and `_count` are appended), `sum`
    /// the full name of the sum counter; `labels` the `.label.value` pairs.
    fn define(
        batch: &mut Batch,
        sink: &mut impl MetricSink,
        name: &str,
        sum: &str,
        labels: &str,
        bounds: &'static [(u64, &'static str)],
    ) -> Buckets {
        let les = bounds.iter().map(|(_, le)| *le).chain(std::iter::once("+Inf"));
        let buckets = les.map(|le| batch.define(sink, &format!("{name}_bucket{labels}.le.{le}"))).collect();
        Buckets {
            bounds,
            buckets,
            count: batch.define(sink, &format!("{name}_count{labels}")),
            sum: batch.define(sink, &format!("{sum}{labels}")),
        }
    }

    fn observe(&self, batch: &mut Batch, value: u64, sink: &mut impl MetricSink) {
        let first = self.bounds.iter().position(|(b, _)| value <= *b).unwrap_or(self.bounds.len());
        for c in self.buckets.iter().skip(first) {
            batch.add(*c, sink);
        }
        batch.add(self.count, sink);
        batch.add_n(self.sum, value, sink);
    }
}

/// Stat ids for one configuration. All stats are defined up front in
/// `on_configure`, so the request path only counts.
#[derive(Debug, Clone)]
pub struct Metrics {
    batch: Batch,
    requests: [Option<Counter>; 2],
    /// Per stack: requests with no user id (not sticky).
    unkeyed: [Option<Counter>; 2],
    /// Gauge: when this configuration's model was loaded (Unix seconds).
    model_loaded: Option<u32>,
    model_errors: Option<Counter>,
    spoofed: Option<Counter>,
    /// Per feature × reason (the reason implies the on/off state).
    feature_decisions: Vec<[Option<Counter>; Reason::ALL.len()]>,
    /// Per feature: score histogram (0-100), as counters.
    feature_score: Vec<Buckets>,
    /// Per stack × status class.
    responses: [[Option<Counter>; CLASSES.len()]; 2],
    /// Per stack: time from request headers to response headers (seconds
    /// buckets, sum in ms).
    latency: [Buckets; 2],
    /// Per stack: app-reported engagements and security events.
    engagements: [Option<Counter>; 2],
    security: [Option<Counter>; 2],
    /// Per feature × arm (on, off, holdout) × outcome (requests, errors,
    /// engagements, security), new stack only.
    feature_outcomes: Vec<[[Option<Counter>; 4]; 3]>,
    /// Per feature × arm: latency histogram (ms) as counters, new stack only.
    feature_latency: Vec<[Buckets; 3]>,
    /// Per rollback event kind: incremented at once (rare, and worth seeing).
    rollback_events: [Option<u32>; ROLLBACK_EVENTS.len()],
}

const ROLLBACK_EVENTS: [&str; 7] =
    ["suspect", "cleared", "blocked", "killed", "reverted", "recovered", "srm"];

const ARMS: [&str; 3] = ["on", "off", "holdout"];
const OUTCOMES: [&str; 4] = ["requests", "errors", "engagements", "security"];

impl Metrics {
    /// Defines every stat for `config`.
    pub fn define(config: &Config, sink: &mut impl MetricSink) -> Metrics {
        let r = config.name.as_str();
        let mut batch = Batch { immediate: config.stats_flush_ms == 0, ..Batch::default() };
        let mut c = |name: String| batch.define(sink, &name);
        let requests = STACKS.map(|s| c(format!("augur_requests_total.rollout.{r}.stack.{}", s.as_str())));
        let unkeyed =
            STACKS.map(|s| c(format!("augur_unkeyed_requests_total.rollout.{r}.stack.{}", s.as_str())));
        let model_errors = c(format!("augur_model_errors_total.rollout.{r}"));
        let spoofed = c(format!("augur_spoofed_requests_total.rollout.{r}"));
        let responses = STACKS.map(|s| {
            CLASSES.map(|k| c(format!("augur_responses_total.rollout.{r}.stack.{}.class.{k}", s.as_str())))
        });
        let feature_decisions = config
            .feature_names()
            .map(|f| Reason::ALL.map(|reason| c(decision_stat(r, f, reason))))
            .collect();
        let engagements =
            STACKS.map(|s| c(format!("augur_engagements_total.rollout.{r}.stack.{}", s.as_str())));
        let security =
            STACKS.map(|s| c(format!("augur_security_events_total.rollout.{r}.stack.{}", s.as_str())));
        let feature_outcomes = config
            .feature_names()
            .map(|f| {
                ARMS.map(|a| {
                    OUTCOMES.map(|o| {
                        c(format!("augur_feature_outcomes_total.rollout.{r}.feature.{f}.arm.{a}.outcome.{o}"))
                    })
                })
            })
            .collect();
        // model_version is the last pair: its value may hold dots.
        let model_loaded = sink.define(
            MetricKind::Gauge,
            &format!(
                "augur_model_loaded_timestamp_seconds.rollout.{r}.model_version.{}",
                config.model_version
            ),
        );
        let rollback_events = ROLLBACK_EVENTS.map(|k| {
            sink.define(MetricKind::Counter, &format!("augur_rollback_events_total.rollout.{r}.kind.{k}"))
        });
        let feature_score = config
            .feature_names()
            .map(|f| {
                let labels = format!(".rollout.{r}.feature.{f}");
                Buckets::define(
                    &mut batch,
                    sink,
                    "augur_feature_score",
                    "augur_feature_score_sum",
                    &labels,
                    SCORE_BOUNDS,
                )
            })
            .collect();
        let latency = STACKS.map(|s| {
            let labels = format!(".rollout.{r}.stack.{}", s.as_str());
            Buckets::define(
                &mut batch,
                sink,
                "augur_latency_seconds",
                "augur_latency_milliseconds_total",
                &labels,
                LATENCY_BOUNDS,
            )
        });
        let feature_latency = config
            .feature_names()
            .map(|f| {
                ARMS.map(|a| {
                    let labels = format!(".rollout.{r}.feature.{f}.arm.{a}");
                    Buckets::define(
                        &mut batch,
                        sink,
                        "augur_feature_latency_seconds",
                        "augur_feature_latency_milliseconds_total",
                        &labels,
                        LATENCY_BOUNDS,
                    )
                })
            })
            .collect();
        Metrics {
            batch,
            requests,
            unkeyed,
            model_loaded,
            model_errors,
            spoofed,
            feature_decisions,
            feature_score,
            responses,
            latency,
            engagements,
            security,
            feature_outcomes,
            feature_latency,
            rollback_events,
        }
    }

    /// Sets the model-loaded gauge to `now_secs` (Unix time).
    pub fn model_loaded(&self, now_secs: u64, sink: &mut impl MetricSink) {
        if let Some(id) = self.model_loaded {
            sink.record(id, now_secs);
        }
    }

    /// Counts one automated-rollback event.
    pub fn on_rollback(&self, e: &Event, sink: &mut impl MetricSink) {
        let kind = match e {
            Event::Suspect { .. } => 0,
            Event::Cleared { .. } => 1,
            Event::Blocked { .. } => 2,
            Event::Killed { .. } => 3,
            Event::Reverted { .. } => 4,
            Event::Recovered { .. } => 5,
            Event::SampleRatioMismatch { .. } => 6,
        };
        if let Some(id) = self.rollback_events[kind] {
            sink.increment(id, 1);
        }
    }

    /// Hands the batched counter increments to the proxy (every tick).
    pub fn flush(&mut self, sink: &mut impl MetricSink) {
        self.batch.flush(sink);
    }

    /// Counts one request's decision; `keyed`: the request had a user id.
    pub fn on_decision(&mut self, d: &Decision, spoofed: bool, keyed: bool, sink: &mut impl MetricSink) {
        let b = &mut self.batch;
        b.add(self.requests[stack_ix(d.stack)], sink);
        if !keyed {
            b.add(self.unkeyed[stack_ix(d.stack)], sink);
        }
        if !d.model_ok {
            b.add(self.model_errors, sink);
        }
        if spoofed {
            b.add(self.spoofed, sink);
        }
        for (i, flag) in d.flags.iter().enumerate() {
            let r = Reason::ALL.iter().position(|r| *r == flag.reason);
            b.add(self.feature_decisions.get(i).and_then(|rs| r.and_then(|r| rs[r])), sink);
        }
        for (i, flag) in d.flags.iter().enumerate() {
            if let (Some(score), Some(buckets)) = (flag.score, self.feature_score.get(i)) {
                buckets.observe(b, u64::from(score), sink);
            }
        }
    }

    /// Counts a response: status class, latency and app signals per stack, and
    /// per feature by arm (on / off / holdout) on the new stack.
    pub fn on_response(&mut self, o: &Outcome, sink: &mut impl MetricSink) {
        let b = &mut self.batch;
        let s = stack_ix(o.stack);
        b.add(self.responses[s][o.class()], sink);
        if o.engaged {
            b.add(self.engagements[s], sink);
        }
        if o.security {
            b.add(self.security[s], sink);
        }
        if o.stack == Stack::New {
            let error = o.is_error();
            for (i, cells) in self.feature_outcomes.iter().enumerate() {
                let arm = if o.enabled & (1 << i) != 0 {
                    0
                } else if o.holdout & (1 << i) != 0 {
                    2
                } else {
                    1
                };
                let c = &cells[arm];
                b.add(c[0], sink);
                if error {
                    b.add(c[1], sink);
                }
                if o.engaged {
                    b.add(c[2], sink);
                }
                if o.security {
                    b.add(c[3], sink);
                }
                if let Some(arms) = self.feature_latency.get(i) {
                    arms[arm].observe(b, o.latency_ms, sink);
                }
            }
        }
        self.latency[s].observe(b, o.latency_ms, sink);
    }
}

/// What augur learns about a request from its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub stack: Stack,
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// The app reported an engagement (`<prefix>engagement` response header).
    pub engaged: bool,
    /// The app reported a security event (`<prefix>security` response header).
    pub security: bool,
    /// Features on for this request / held out for this request (bitmasks).
    pub enabled: u64,
    pub holdout: u64,
}

impl Outcome {
    /// Index into [`CLASSES`].
    fn class(&self) -> usize {
        match self.status {
            Some(s @ 100..=599) => usize::from(s / 100 - 1),
            _ => CLASSES.len() - 1,
        }
    }

    /// 5xx, or no valid status at all (reset, timeout).
    pub fn is_error(&self) -> bool {
        !matches!(self.status, Some(100..=499))
    }

    /// The app signals as one token for the access log.
    pub fn signals(&self) -> &'static str {
        match (self.engaged, self.security) {
            (false, false) => "none",
            (true, false) => "engaged",
            (false, true) => "security",
            (true, true) => "engaged+security",
        }
    }
}

#[cfg(test)]
pub(crate) mod test_sink {
    use super::*;
    use std::collections::BTreeMap;

    /// Records stats by name, like Envoy's store would.
    #[derive(Default, Debug)]
    pub struct MapSink {
        pub names: Vec<(MetricKind, String)>,
        pub counters: BTreeMap<String, i64>,
        pub histograms: BTreeMap<String, Vec<u64>>,
        /// Calls to `increment` (host calls, in the filter).
        pub increments: usize,
    }

    impl MetricSink for MapSink {
        fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
            if let Some(i) = self.names.iter().position(|(_, n)| n == name) {
                return Some(i as u32);
            }
            self.names.push((kind, name.to_string()));
            Some(self.names.len() as u32 - 1)
        }
        fn increment(&mut self, id: u32, by: i64) {
            self.increments += 1;
            let name = self.names[id as usize].1.clone();
            *self.counters.entry(name).or_default() += by;
        }
        fn record(&mut self, id: u32, value: u64) {
            let name = self.names[id as usize].1.clone();
            self.histograms.entry(name).or_default().push(value);
        }
    }

    impl MapSink {
        pub fn counter(&self, name: &str) -> i64 {
            self.counters.get(name).copied().unwrap_or(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_sink::MapSink;
    use super::*;
    use crate::engine::{decide, Worker};
    use crate::testing::TestConfig;

    #[test]
    fn every_decision_is_counted_once_per_stack_and_feature() {
        let c = TestConfig::rollout(50.0).on("a").off("b").compile().unwrap();
        let mut sink = MapSink::default();
        let mut m = Metrics::define(&c, &mut sink);
        let mut w = Worker::new(&c);
        let mut d = Decision::default();
        let n = 400;
        for i in 0..n {
            let req: Vec<(String, String)> = vec![("x-user-id".into(), format!("u{i}"))];
            decide(&c, &mut w, &req, &mut d);
            m.on_decision(&d, i % 10 == 0, i % 8 != 0, &mut sink);
            let o = Outcome {
                stack: d.stack,
                status: Some(if i % 4 == 0 { 503 } else { 200 }),
                latency_ms: 3,
                engaged: i % 5 == 0,
                security: false,
                enabled: d.enabled_mask(),
                holdout: d.holdout,
            };
            m.on_response(&o, &mut sink);
        }
        assert_eq!(
            sink.counter("augur_requests_total.rollout.default.stack.old"),
            0,
            "counters wait for a flush"
        );
        m.flush(&mut sink);
        let old = sink.counter("augur_requests_total.rollout.default.stack.old");
        let new = sink.counter("augur_requests_total.rollout.default.stack.new");
        assert_eq!(old + new, n);
        assert!(new > 150 && old > 150);
        assert_eq!(
            sink.counter("augur_feature_decisions_total.rollout.default.feature.a.state.on.reason.forced_on"),
            new
        );
        assert_eq!(sink.counter(&decision_stat("default", "a", Reason::OldStack)), old);
        assert_eq!(
            sink.counter(&decision_stat("default", "b", Reason::KillSwitch)),
            new,
            "old stack: reason old_stack"
        );
        assert_eq!(sink.counter("augur_spoofed_requests_total.rollout.default"), n / 10);
        let unkeyed = sink.counter("augur_unkeyed_requests_total.rollout.default.stack.old")
            + sink.counter("augur_unkeyed_requests_total.rollout.default.stack.new");
        assert_eq!(unkeyed, n / 8, "requests without a user id");
        m.model_loaded(1_700_000_000, &mut sink);
        let gauge = "augur_model_loaded_timestamp_seconds.rollout.default.model_version.default-v1";
        assert_eq!(sink.histograms[gauge], vec![1_700_000_000], "the gauge is set (record) once");
        assert!(sink.names.iter().any(|(k, n)| *k == MetricKind::Gauge && n == gauge));
        assert_eq!(sink.counter("augur_model_errors_total.rollout.default"), 0);
        let errors = sink.counter("augur_responses_total.rollout.default.stack.old.class.5xx")
            + sink.counter("augur_responses_total.rollout.default.stack.new.class.5xx");
        assert_eq!(errors, n / 4);
        assert_eq!(sink.counter("augur_latency_seconds_count.rollout.default.stack.new"), new);
        assert_eq!(sink.counter("augur_latency_seconds_bucket.rollout.default.stack.new.le.0.002"), 0);
        assert_eq!(sink.counter("augur_latency_seconds_bucket.rollout.default.stack.new.le.0.005"), new);
        assert_eq!(sink.counter("augur_latency_milliseconds_total.rollout.default.stack.new"), 3 * new);
        assert!(
            sink.names.iter().all(|(k, _)| *k != MetricKind::Histogram),
            "no Envoy histogram: no host call per sample"
        );
        let outcome = |arm: &str, o: &str| {
            sink.counter(&format!(
                "augur_feature_outcomes_total.rollout.default.feature.a.arm.{arm}.outcome.{o}"
            ))
        };
        assert_eq!(outcome("on", "requests"), new, "a is on for every new-stack request");
        assert_eq!(outcome("off", "requests") + outcome("holdout", "requests"), 0);
        assert_eq!(
            sink.counter("augur_feature_outcomes_total.rollout.default.feature.b.arm.off.outcome.requests"),
            new,
            "b is killed: every new-stack request is in its off arm"
        );
        let engaged = sink.counter("augur_engagements_total.rollout.default.stack.old")
            + sink.counter("augur_engagements_total.rollout.default.stack.new");
        assert_eq!(engaged, n / 5);
    }

    #[test]
    fn per_feature_histograms_are_cumulative_bucket_counters() {
        let c = TestConfig::rollout(100.0).on("a").compile().unwrap();
        let mut sink = MapSink::default();
        let mut m = Metrics::define(&c, &mut sink);
        for latency_ms in [0, 7, 7, 300, 60_000] {
            let o = Outcome {
                stack: Stack::New,
                status: Some(200),
                latency_ms,
                engaged: false,
                security: false,
                enabled: 1,
                holdout: 0,
            };
            m.on_response(&o, &mut sink);
        }
        m.flush(&mut sink);
        let base = "augur_feature_latency_seconds_bucket.rollout.default.feature.a.arm.on.le";
        let le = |b: &str| sink.counter(&format!("{base}.{b}"));
        assert_eq!(
            [le("0.001"), le("0.005"), le("0.01"), le("0.25"), le("0.5"), le("5"), le("+Inf")],
            [1, 1, 3, 3, 4, 4, 5]
        );
        assert_eq!(sink.counter("augur_feature_latency_seconds_count.rollout.default.feature.a.arm.on"), 5);
        assert_eq!(
            sink.counter("augur_feature_latency_milliseconds_total.rollout.default.feature.a.arm.on"),
            60_314
        );
        assert_eq!(sink.counter("augur_feature_latency_seconds_count.rollout.default.feature.a.arm.off"), 0);
        assert_eq!(sink.counter("augur_latency_seconds_count.rollout.default.stack.new"), 5);
        assert_eq!(sink.counter("augur_latency_seconds_bucket.rollout.default.stack.new.le.0.01"), 3);
        assert!(sink.histograms.is_empty(), "{:?}", sink.histograms.keys());
    }

    #[test]
    fn odd_status_is_other() {
        let c = TestConfig::rollout(50.0).on("a").compile().unwrap();
        let mut sink = MapSink::default();
        let mut m = Metrics::define(&c, &mut sink);
        for status in [None, Some(999), Some(0)] {
            let o = Outcome {
                stack: Stack::Old,
                status,
                latency_ms: 1,
                engaged: false,
                security: false,
                enabled: 0,
                holdout: 0,
            };
            assert!(o.is_error());
            m.on_response(&o, &mut sink);
        }
        m.flush(&mut sink);
        assert_eq!(sink.counter("augur_responses_total.rollout.default.stack.old.class.other"), 3);
    }

    #[test]
    fn batched_counters_flush_once_per_moved_counter_or_go_out_at_once_when_asked() {
        let cfg =
            |flush: u64| TestConfig::rollout(0.0).set("stats.flush_ms", flush).on("a").compile().unwrap();
        let c = cfg(1000);
        let mut sink = MapSink::default();
        let mut m = Metrics::define(&c, &mut sink);
        let mut d = Decision::default();
        decide(&c, &mut Worker::new(&c), &Vec::<(String, String)>::new(), &mut d);
        for _ in 0..7 {
            m.on_decision(&d, false, true, &mut sink);
        }
        assert_eq!(sink.increments, 0);
        m.flush(&mut sink);
        assert_eq!(sink.counter("augur_requests_total.rollout.default.stack.old"), 7);
        assert_eq!(sink.increments, 2, "one call for requests, one for the feature's decision");
        m.flush(&mut sink);
        assert_eq!(sink.increments, 2, "nothing moved, nothing sent");

        let c = cfg(0);
        let mut sink = MapSink::default();
        let mut m = Metrics::define(&c, &mut sink);
        m.on_decision(&d, false, true, &mut sink);
        assert_eq!(sink.counter("augur_requests_total.rollout.default.stack.old"), 1, "immediate");
    }
}
