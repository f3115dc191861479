//! The stat catalogue: every stat augur keeps — its name, labels and when it
//! moves. Names are part of the operator contract (dashboards, alerts,
//! README "Reading the stats"): change them only on purpose.

use super::batch::{Batch, Buckets, Counter};
use super::{MetricKind, MetricSink};
use crate::config::Config;
use crate::engine::Decision;
use crate::flags::Reason;
use crate::outcome::{Outcome, CLASSES};
use crate::rollback::Event;
use crate::routing::Stack;

const STACKS: [Stack; 2] = [Stack::Old, Stack::New];

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
    /// Gauge: the configuration's `revision`.
    revision: Option<u32>,
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
    /// Per stack: responses slower than the rollback's slow cut in force.
    slow: [Option<Counter>; 2],
    /// Per feature × arm (on, off, holdout) × outcome (requests, errors,
    /// engagements, security, slow), new stack only.
    feature_outcomes: Vec<[[Option<Counter>; OUTCOMES.len()]; 3]>,
    /// Per monitored segment (its bit in `Profile::segments`) × feature × arm
    /// (on, off) × outcome, randomised new-stack requests only.
    segment_outcomes: Vec<(u64, Vec<ArmOutcomes>)>,
    /// Per feature × arm: latency histogram (ms) as counters, new stack only.
    feature_latency: Vec<[Buckets; 3]>,
    /// Per rollback event kind: incremented at once (rare, and worth seeing).
    rollback_events: [Option<u32>; ROLLBACK_EVENTS.len()],
    /// Gauge: single cells this proxy explores in (suspect), set at every sync,
    /// so an exploration that does not end is seen.
    exploring_cells: Option<u32>,
}

const ROLLBACK_EVENTS: [&str; 8] =
    ["suspect", "cleared", "blocked", "killed", "reverted", "recovered", "srm", "lifted"];

const ARMS: [&str; 3] = ["on", "off", "holdout"];
/// One feature's on/off arms × outcomes in one monitored segment.
type ArmOutcomes = [[Option<Counter>; OUTCOMES.len()]; 2];
/// `slow`: latency above the rollback's slow cut in force on this proxy
/// ([`Outcome::is_slow`]): the third KPI, counted as the filter judges it.
const OUTCOMES: [&str; 5] = ["requests", "errors", "engagements", "security", "slow"];

impl Metrics {
    /// Defines every stat for `config`.
    pub fn define(config: &Config, sink: &mut impl MetricSink) -> Metrics {
        let r = config.name.as_str();
        let mut batch = Batch::new(config.stats_flush_ms == 0);
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
        let slow = STACKS.map(|s| c(format!("augur_slow_responses_total.rollout.{r}.stack.{}", s.as_str())));
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
        let segment_outcomes = config
            .monitored_segments
            .iter()
            .filter_map(|&s| Some((1u64 << s, config.segments.get(s)?.name.as_str())))
            .map(|(bit, seg)| {
                let per_feature = config
                    .feature_names()
                    .map(|f| {
                        [ARMS[0], ARMS[1]].map(|a| {
                            OUTCOMES.map(|o| {
                                c(format!(
                                    "augur_segment_outcomes_total.rollout.{r}.feature.{f}.segment.{seg}.arm.{a}.outcome.{o}"
                                ))
                            })
                        })
                    })
                    .collect();
                (bit, per_feature)
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
        let revision = sink.define(MetricKind::Gauge, &format!("augur_config_revision.rollout.{r}"));
        let exploring_cells = sink.define(MetricKind::Gauge, &format!("augur_exploring_cells.rollout.{r}"));
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
            revision,
            model_errors,
            spoofed,
            feature_decisions,
            feature_score,
            responses,
            latency,
            engagements,
            security,
            slow,
            feature_outcomes,
            segment_outcomes,
            feature_latency,
            rollback_events,
            exploring_cells,
        }
    }

    /// Sets the gauges of a configuration just accepted: when its model was
    /// loaded (`now_secs`, Unix time) and its revision.
    pub fn loaded(&self, revision: u64, now_secs: u64, sink: &mut impl MetricSink) {
        if let Some(id) = self.model_loaded {
            sink.record(id, now_secs);
        }
        if let Some(id) = self.revision {
            sink.record(id, revision);
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
            Event::Lifted { .. } => 7,
        };
        if let Some(id) = self.rollback_events[kind] {
            sink.increment(id, 1);
        }
    }

    /// Sets the exploring-cells gauge to the suspect cells of the blocks in force.
    pub fn exploring(&self, suspect: u32, sink: &mut impl MetricSink) {
        if let Some(id) = self.exploring_cells {
            sink.record(id, u64::from(suspect.count_ones()));
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
    /// per feature by arm (on / off / holdout) on the new stack. `slow_cut_ms`:
    /// the rollback's slow cut in force (`Blocks::slow_ms`), so `slow` counts
    /// what the in-proxy tests count as slow.
    pub fn on_response(&mut self, o: &Outcome, slow_cut_ms: u64, sink: &mut impl MetricSink) {
        let b = &mut self.batch;
        let s = stack_ix(o.stack);
        let slow = o.is_slow(slow_cut_ms);
        b.add(self.responses[s][o.class()], sink);
        if o.engaged {
            b.add(self.engagements[s], sink);
        }
        if o.security {
            b.add(self.security[s], sink);
        }
        if slow {
            b.add(self.slow[s], sink);
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
                if slow {
                    b.add(c[4], sink);
                }
                if let Some(arms) = self.feature_latency.get(i) {
                    arms[arm].observe(b, o.latency_ms, sink);
                }
            }
            for (bit, features) in &self.segment_outcomes {
                if o.segments & bit == 0 {
                    continue;
                }
                for (i, arms) in features.iter().enumerate().filter(|(i, _)| o.randomised & (1 << i) != 0) {
                    let c = &arms[usize::from(o.enabled & (1 << i) == 0)];
                    let counted = [true, error, o.engaged, o.security, slow];
                    for (counter, yes) in c.iter().zip(counted) {
                        if yes {
                            b.add(*counter, sink);
                        }
                    }
                }
            }
        }
        self.latency[s].observe(b, o.latency_ms, sink);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_sink::MapSink;
    use super::*;
    use crate::config::compile;
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
                randomised: d.randomised,
                segments: d.profile.segments,
            };
            m.on_response(&o, 1000, &mut sink);
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
        m.loaded(7, 1_700_000_000, &mut sink);
        let gauge = "augur_model_loaded_timestamp_seconds.rollout.default.model_version.default-v1";
        assert_eq!(sink.histograms[gauge], vec![1_700_000_000], "the gauge is set (record) once");
        assert!(sink.names.iter().any(|(k, n)| *k == MetricKind::Gauge && n == gauge));
        let gauge = "augur_config_revision.rollout.default";
        assert_eq!(sink.histograms[gauge], vec![7], "the revision gauge is set once");
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
    fn monitored_segments_count_randomised_new_stack_outcomes_only() {
        let c = compile(
            br#"{"rollout": {"percentage": 50},
                 "segments": [{"name": "mobile", "devices": ["mobile"]},
                              {"name": "tablets", "devices": ["tablet"], "monitor": true}],
                 "features": [{"name": "a", "override": "on"}, {"name": "b", "override": "on"}]}"#,
        )
        .unwrap();
        let mut sink = MapSink::default();
        let mut m = Metrics::define(&c, &mut sink);
        let seg = |f: &str, arm: &str, o: &str| {
            format!("augur_segment_outcomes_total.rollout.default.feature.{f}.segment.tablets.arm.{arm}.outcome.{o}")
        };
        assert!(sink.names.iter().any(|(_, n)| *n == seg("b", "off", "security")));
        assert!(!sink.names.iter().any(|(_, n)| n.contains("segment.mobile")), "not monitored: no series");
        let outcome = |stack, status, enabled, randomised, segments| Outcome {
            stack,
            status: Some(status),
            latency_ms: 1,
            engaged: false,
            security: false,
            enabled,
            holdout: 0,
            randomised,
            segments,
        };
        let slow = |o: Outcome| Outcome { latency_ms: 101, ..o };
        // a randomised on (three times, one error, one at exactly the cut) and off
        // (twice, an error, a slow 200); b not randomised. The slow cut in force:
        // 100 ms (101 is slow, 100 is not).
        m.on_response(&outcome(Stack::New, 200, 0b11, 0b01, 0b10), 100, &mut sink);
        m.on_response(&outcome(Stack::New, 503, 0b11, 0b01, 0b11), 100, &mut sink);
        m.on_response(&outcome(Stack::New, 503, 0b10, 0b01, 0b10), 100, &mut sink);
        m.on_response(&slow(outcome(Stack::New, 200, 0b10, 0b01, 0b10)), 100, &mut sink);
        m.on_response(
            &Outcome { latency_ms: 100, ..outcome(Stack::New, 200, 0b11, 0b01, 0b10) },
            100,
            &mut sink,
        );
        // Not counted: not in the monitored segment, old stack, not randomised.
        m.on_response(&slow(outcome(Stack::New, 503, 0b01, 0b01, 0b01)), 100, &mut sink);
        m.on_response(&slow(outcome(Stack::Old, 503, 0, 0b01, 0b10)), 100, &mut sink);
        m.on_response(&slow(outcome(Stack::New, 503, 0b01, 0, 0b10)), 100, &mut sink);
        m.flush(&mut sink);
        assert_eq!(sink.counter(&seg("a", "on", "requests")), 3);
        assert_eq!(sink.counter(&seg("a", "on", "errors")), 1);
        assert_eq!(sink.counter(&seg("a", "on", "slow")), 0, "100 ms is not above the 100 ms cut");
        assert_eq!(sink.counter(&seg("a", "off", "requests")), 2);
        assert_eq!(sink.counter(&seg("a", "off", "errors")), 1);
        assert_eq!(sink.counter(&seg("a", "off", "slow")), 1);
        // Per stack, every slow response counts (three new, one old).
        assert_eq!(sink.counter("augur_slow_responses_total.rollout.default.stack.new"), 3);
        assert_eq!(sink.counter("augur_slow_responses_total.rollout.default.stack.old"), 1);
        let feat = |arm: &str, o: &str| {
            sink.counter(&format!(
                "augur_feature_outcomes_total.rollout.default.feature.a.arm.{arm}.outcome.{o}"
            ))
        };
        assert_eq!(
            (feat("on", "slow"), feat("off", "slow")),
            (2, 1),
            "feature arms: every new-stack request"
        );
        for arm in ["on", "off"] {
            assert_eq!(sink.counter(&seg("b", arm, "requests")), 0, "b was never randomised");
        }
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
                randomised: 0,
                segments: 0,
            };
            m.on_response(&o, 1000, &mut sink);
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
                randomised: 0,
                segments: 0,
            };
            assert!(o.is_error());
            m.on_response(&o, 1000, &mut sink);
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
