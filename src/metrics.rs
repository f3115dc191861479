//! Metrics: the Envoy stats augur keeps for every decision.
//!
//! A name is a base name followed by `.label.value` pairs, e.g.
//! `augur_requests.rollout.checkout.stack.new` or
//! `augur_feature_decisions.rollout.checkout.feature.search_v2.state.off.reason.security_risk`.
//! Envoy prefixes wasm stats with `wasmcustom.`; the `stats_tags` in
//! `envoy/envoy.yaml` cut each pair out of the name into a label, so
//! `/stats/prometheus` shows `augur_requests{stack="new"}`. The full list is in
//! README ("Reading the stats").
//!
//! Host access is behind [`MetricSink`] so this module is tested natively.

use crate::config::Config;
use crate::engine::Decision;
use crate::flags::Reason;
use crate::rollback::Event;
use crate::routing::Stack;

/// Kind of an Envoy stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Histogram,
}

/// Where stats go: Envoy's stats store in the filter, a map in tests.
pub trait MetricSink {
    /// Defines (or looks up) a stat; `None` if the host refused it.
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment(&mut self, id: u32, by: i64);
    fn record(&mut self, id: u32, value: u64);
}

const STACKS: [Stack; 2] = [Stack::Old, Stack::New];
/// Response status classes: 1xx..5xx, then "other" for anything unparsable.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Name of the counter for `feature` of rollout `rollout` decided with `reason`.
pub fn decision_stat(rollout: &str, feature: &str, reason: Reason) -> String {
    let state = if reason.is_on() { "on" } else { "off" };
    format!(
        "augur_feature_decisions.rollout.{rollout}.feature.{feature}.state.{state}.reason.{}",
        reason.as_str()
    )
}

fn stack_ix(s: Stack) -> usize {
    match s {
        Stack::Old => 0,
        Stack::New => 1,
    }
}

/// Stat ids for one configuration. All stats are defined up front in
/// `on_configure`, so the request path only increments.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: [Option<u32>; 2],
    model_errors: Option<u32>,
    spoofed: Option<u32>,
    /// Per feature × reason (the reason implies the on/off state).
    feature_decisions: Vec<[Option<u32>; Reason::ALL.len()]>,
    /// Per feature: score histogram (0-100).
    feature_score: Vec<Option<u32>>,
    /// Per stack × status class.
    responses: [[Option<u32>; CLASSES.len()]; 2],
    /// Per stack: time from request headers to response headers, in ms.
    latency_ms: [Option<u32>; 2],
    /// Per stack: app-reported engagements and security events.
    engagements: [Option<u32>; 2],
    security: [Option<u32>; 2],
    /// Per feature × arm (on, off, holdout) × outcome (requests, errors,
    /// engagements, security), new stack only.
    feature_outcomes: Vec<[[Option<u32>; 4]; 3]>,
    /// Per feature × arm: latency histogram, new stack only.
    feature_latency: Vec<[Option<u32>; 3]>,
    /// Per rollback event kind.
    rollback_events: [Option<u32>; ROLLBACK_EVENTS.len()],
}

const ROLLBACK_EVENTS: [&str; 6] = ["suspect", "cleared", "blocked", "killed", "reverted", "recovered"];

const ARMS: [&str; 3] = ["on", "off", "holdout"];
const OUTCOMES: [&str; 4] = ["requests", "errors", "engagements", "security"];

impl Metrics {
    /// Defines every stat for `config`.
    pub fn define(config: &Config, sink: &mut impl MetricSink) -> Metrics {
        let r = config.name.as_str();
        let mut c = |name: String| sink.define(MetricKind::Counter, &name);
        let requests = STACKS.map(|s| c(format!("augur_requests.rollout.{r}.stack.{}", s.as_str())));
        let model_errors = c(format!("augur_model_errors.rollout.{r}"));
        let spoofed = c(format!("augur_spoofed_requests.rollout.{r}"));
        let responses = STACKS.map(|s| {
            CLASSES.map(|k| c(format!("augur_responses.rollout.{r}.stack.{}.class.{k}", s.as_str())))
        });
        let feature_decisions = config
            .feature_names()
            .map(|f| Reason::ALL.map(|reason| c(decision_stat(r, f, reason))))
            .collect();
        let engagements = STACKS.map(|s| c(format!("augur_engagements.rollout.{r}.stack.{}", s.as_str())));
        let security = STACKS.map(|s| c(format!("augur_security_events.rollout.{r}.stack.{}", s.as_str())));
        let feature_outcomes = config
            .feature_names()
            .map(|f| {
                ARMS.map(|a| {
                    OUTCOMES.map(|o| {
                        c(format!("augur_feature_outcomes.rollout.{r}.feature.{f}.arm.{a}.outcome.{o}"))
                    })
                })
            })
            .collect();
        let rollback_events =
            ROLLBACK_EVENTS.map(|k| c(format!("augur_rollback_events.rollout.{r}.kind.{k}")));
        let mut h = |name: String| sink.define(MetricKind::Histogram, &name);
        let feature_score = config
            .feature_names()
            .map(|f| h(format!("augur_feature_score.rollout.{r}.feature.{f}")))
            .collect();
        let latency_ms = STACKS.map(|s| h(format!("augur_latency_ms.rollout.{r}.stack.{}", s.as_str())));
        let feature_latency = config
            .feature_names()
            .map(|f| ARMS.map(|a| h(format!("augur_feature_latency_ms.rollout.{r}.feature.{f}.arm.{a}"))))
            .collect();
        Metrics {
            requests,
            model_errors,
            spoofed,
            feature_decisions,
            feature_score,
            responses,
            latency_ms,
            engagements,
            security,
            feature_outcomes,
            feature_latency,
            rollback_events,
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
        };
        if let Some(id) = self.rollback_events[kind] {
            sink.increment(id, 1);
        }
    }

    /// Counts one request's decision.
    pub fn on_decision(&self, d: &Decision, spoofed: bool, sink: &mut impl MetricSink) {
        let mut inc = |id: Option<u32>| {
            if let Some(id) = id {
                sink.increment(id, 1);
            }
        };
        inc(self.requests[stack_ix(d.stack)]);
        if !d.model_ok {
            inc(self.model_errors);
        }
        if spoofed {
            inc(self.spoofed);
        }
        for (i, flag) in d.flags.iter().enumerate() {
            let r = Reason::ALL.iter().position(|r| *r == flag.reason);
            inc(self.feature_decisions.get(i).and_then(|rs| r.and_then(|r| rs[r])));
        }
        for (i, flag) in d.flags.iter().enumerate() {
            if let (Some(score), Some(Some(id))) = (flag.score, self.feature_score.get(i)) {
                sink.record(*id, u64::from(score));
            }
        }
    }

    /// Counts a response: status class, latency and app signals per stack, and
    /// per feature by arm (on / off / holdout) on the new stack.
    pub fn on_response(&self, o: &Outcome, sink: &mut impl MetricSink) {
        fn inc(sink: &mut impl MetricSink, id: Option<u32>) {
            if let Some(id) = id {
                sink.increment(id, 1);
            }
        }
        let s = stack_ix(o.stack);
        inc(sink, self.responses[s][o.class()]);
        if o.engaged {
            inc(sink, self.engagements[s]);
        }
        if o.security {
            inc(sink, self.security[s]);
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
                inc(sink, c[0]);
                if error {
                    inc(sink, c[1]);
                }
                if o.engaged {
                    inc(sink, c[2]);
                }
                if o.security {
                    inc(sink, c[3]);
                }
                if let Some(Some(id)) = self.feature_latency.get(i).map(|l| l[arm]) {
                    sink.record(id, o.latency_ms);
                }
            }
        }
        if let Some(id) = self.latency_ms[s] {
            sink.record(id, o.latency_ms);
        }
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
    use crate::config::compile;
    use crate::engine::{decide, Worker};

    #[test]
    fn every_decision_is_counted_once_per_stack_and_feature() {
        let c = compile(
            br#"{"rollout": {"percentage": 50},
                 "features": [{"name": "a", "override": "on"}, {"name": "b", "override": "off"}]}"#,
        )
        .unwrap();
        let mut sink = MapSink::default();
        let m = Metrics::define(&c, &mut sink);
        let mut w = Worker::new(&c);
        let mut d = Decision::default();
        let n = 400;
        for i in 0..n {
            let req: Vec<(String, String)> = vec![("x-user-id".into(), format!("u{i}"))];
            decide(&c, &mut w, &req, &mut d);
            m.on_decision(&d, i % 10 == 0, &mut sink);
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
        let old = sink.counter("augur_requests.rollout.default.stack.old");
        let new = sink.counter("augur_requests.rollout.default.stack.new");
        assert_eq!(old + new, n);
        assert!(new > 150 && old > 150);
        assert_eq!(
            sink.counter("augur_feature_decisions.rollout.default.feature.a.state.on.reason.forced_on"),
            new
        );
        assert_eq!(sink.counter(&decision_stat("default", "a", Reason::OldStack)), old);
        assert_eq!(
            sink.counter(&decision_stat("default", "b", Reason::KillSwitch)),
            new,
            "old stack: reason old_stack"
        );
        assert_eq!(sink.counter("augur_spoofed_requests.rollout.default"), n / 10);
        assert_eq!(sink.counter("augur_model_errors.rollout.default"), 0);
        let errors = sink.counter("augur_responses.rollout.default.stack.old.class.5xx")
            + sink.counter("augur_responses.rollout.default.stack.new.class.5xx");
        assert_eq!(errors, n / 4);
        assert_eq!(sink.histograms["augur_latency_ms.rollout.default.stack.new"].len() as i64, new);
        let outcome = |arm: &str, o: &str| {
            sink.counter(&format!("augur_feature_outcomes.rollout.default.feature.a.arm.{arm}.outcome.{o}"))
        };
        assert_eq!(outcome("on", "requests"), new, "a is on for every new-stack request");
        assert_eq!(outcome("off", "requests") + outcome("holdout", "requests"), 0);
        assert_eq!(
            sink.counter("augur_feature_outcomes.rollout.default.feature.b.arm.off.outcome.requests"),
            new,
            "b is killed: every new-stack request is in its off arm"
        );
        let engaged = sink.counter("augur_engagements.rollout.default.stack.old")
            + sink.counter("augur_engagements.rollout.default.stack.new");
        assert_eq!(engaged, n / 5);
    }

    #[test]
    fn odd_status_is_other() {
        let c = compile(br#"{"rollout": {"percentage": 50}, "features": [{"name": "a", "override": "on"}]}"#)
            .unwrap();
        let mut sink = MapSink::default();
        let m = Metrics::define(&c, &mut sink);
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
        assert_eq!(sink.counter("augur_responses.rollout.default.stack.old.class.other"), 3);
    }
}
