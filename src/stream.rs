//! Stream: the runtime of one configuration on one worker — what augur does
//! with each HTTP stream and on each tick — written against small host traits
//! ([`Host`], [`MetricSink`], [`SharedStore`]) so it is tested natively with fakes.
//! `filter` implements the traits with proxy-wasm host calls and does nothing else.
//!
//! Per request: strip client-sent control headers → decide → write the routing
//! header (and, on the new stack, the feature and decision headers) → store the
//! decision record → count. Per response: status class and latency per stack.
//!
//! No explicit route-cache clear: Envoy clears it whenever a wasm filter changes
//! a request header, so its route table sees the stack header augur wrote (an
//! explicit `clear_route_cache` call cost ~10 µs per request). The integration
//! test with forged `x-augur-stack` headers guards this: Envoy computes the
//! route before the filter runs, with the forged value.

use crate::config::Config;
use crate::control::ControlHeaders;
use crate::engine::{decide, Decision, Worker};
use crate::headers::{HeaderMap, Headers};
use crate::metrics::{MetricSink, Metrics};
use crate::outcome::{signal, Outcome};
use crate::record;
pub use crate::rollback::SharedStore;
use crate::rollback::{self, Blocks, Event, Pool};
use crate::routing::Stack;

/// The proxy operations a stream needs.
pub trait Host {
    /// Loads all request headers into `into`: lowercase names, pseudo-headers
    /// (`:path`, …) included.
    fn request_headers(&self, into: &mut HeaderMap);
    /// Sets (`Some`) or removes (`None`) a request header.
    fn set_request_header(&mut self, name: &str, value: Option<&str>);
    /// Stores the decision record where the access log reads it.
    fn set_decision_record(&mut self, record: &str);
    /// Loads all response headers (`:status` included) into `into`.
    fn response_headers(&self, into: &mut HeaderMap);
    /// Sets (`Some`) or removes (`None`) a response header.
    fn set_response_header(&mut self, name: &str, value: Option<&str>);
    /// Stores the app signals of the response where the access log reads them
    /// (only called when the app reported one).
    fn set_outcome_record(&mut self, signals: &str);
    /// Monotonic-enough wall clock, nanoseconds.
    fn now_nanos(&self) -> u64;
}

/// What is remembered between a stream's request and response.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamState {
    /// `None` until a decision was made.
    pub stack: Option<Stack>,
    pub started_nanos: u64,
    /// Features on / held out for this request (bitmasks).
    pub enabled: u64,
    pub holdout: u64,
    /// The segments the request was in (bitmask).
    pub segments: u64,
    /// What automated rollback needs to know of the request.
    pub exposure: rollback::Exposure,
}

/// Clients never pick their own stack or features: removes every request
/// header that is a control header ([`ControlHeaders::is_control`]: the
/// prefix, an earlier prefix of a migration, or a `_` look-alike), from the
/// proxy and from `headers`. True when there was one (a spoofing attempt).
pub fn strip_control_headers(
    host: &mut impl Host,
    headers: &mut HeaderMap,
    control: &ControlHeaders,
) -> bool {
    let mut found = false;
    for name in headers.names() {
        if control.is_control(name) {
            host.set_request_header(name, None);
            found = true;
        }
    }
    if found {
        headers.retain_names(|name| !control.is_control(name));
    }
    found
}

/// One worker's augur: compiled configuration, model state, stat ids and the
/// reusable per-request buffers.
pub struct Runtime {
    config: Config,
    worker: Worker,
    metrics: Metrics,
    decision: Decision,
    record: String,
    features: String,
    flags: String,
    /// The current stream's headers (reused: no allocation per request).
    request: HeaderMap,
    response: HeaderMap,
    /// The decision id of the current request (see `Decision::id`).
    decision_id: String,
    /// This worker's side of the rollout's shared rollback state.
    pool: Pool,
}

impl Runtime {
    /// Builds the runtime for a compiled configuration and defines its stats.
    pub fn new(config: Config, sink: &mut impl MetricSink) -> Runtime {
        let worker = Worker::new(&config);
        Runtime::with_worker(config, worker, sink)
    }

    /// [`Runtime::new`] with reproducible draws (the worker's seed fixed).
    pub fn with_seed(config: Config, seed: u64, sink: &mut impl MetricSink) -> Runtime {
        let worker = Worker::with_seed(&config, seed);
        Runtime::with_worker(config, worker, sink)
    }

    fn with_worker(config: Config, worker: Worker, sink: &mut impl MetricSink) -> Runtime {
        let metrics = Metrics::define(&config, sink);
        let names: Vec<&str> = config.feature_names().collect();
        let pool = Pool::new(&config.name, &config.rollout.salt, config.rollback.epoch, &names);
        Runtime {
            config,
            worker,
            metrics,
            decision: Decision::default(),
            record: String::with_capacity(512),
            features: String::with_capacity(128),
            flags: String::with_capacity(256),
            request: HeaderMap::default(),
            response: HeaderMap::default(),
            decision_id: String::with_capacity(16),
            pool,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The last decision made (for tests and the CLI).
    pub fn last_decision(&self) -> &Decision {
        &self.decision
    }

    /// Handles request headers. Never fails: every path ends with a stack.
    pub fn on_request_headers(&mut self, host: &mut impl Host, sink: &mut impl MetricSink) -> StreamState {
        let started_nanos = host.now_nanos();
        host.request_headers(&mut self.request);
        let spoofed = strip_control_headers(host, &mut self.request, &self.config.headers);
        let headers = &self.request;

        decide(&self.config, &mut self.worker, headers, &mut self.decision);
        let d = &self.decision;
        let h = &self.config.headers;

        let stack_name = match d.stack {
            Stack::Old => &self.config.old_stack,
            Stack::New => &self.config.new_stack,
        };
        host.set_request_header(&h.stack, Some(stack_name));
        // A prefix migration: the route table may still match the old name.
        for name in &h.previous_stack {
            host.set_request_header(name, Some(stack_name));
        }

        record::write(&self.config, d, headers.header("x-request-id"), &mut self.record);
        if d.stack == Stack::New {
            if h.send.decision {
                self.decision_id.clear();
                d.write_id(&mut self.decision_id);
                host.set_request_header(&h.decision, Some(&self.decision_id));
            }
            if h.send.features {
                self.features.clear();
                for (i, name) in d.enabled(&self.config).enumerate() {
                    if i > 0 {
                        self.features.push(',');
                    }
                    self.features.push_str(name);
                }
                host.set_request_header(&h.features, Some(&self.features));
            }
            if h.send.flags {
                record::write_flags(&self.config, d, &mut self.flags);
                host.set_request_header(&h.flags, Some(&self.flags));
            }
        }
        host.set_decision_record(&self.record);
        let keyed = headers.header(&self.config.profile.user_header).is_some_and(|u| !u.is_empty());
        self.metrics.on_decision(d, spoofed, keyed, sink);
        let enabled = d.enabled_mask();
        if self.config.rollback.enabled {
            self.pool.record_draws(d.explored, d.probed, d.drawn_off);
        }
        StreamState {
            stack: Some(d.stack),
            started_nanos,
            enabled,
            holdout: d.holdout,
            segments: d.profile.segments,
            exposure: rollback::Exposure {
                stack: Some(d.stack),
                cells: d.cells,
                enabled,
                // The sequential tests need each request's arm drawn for that
                // request: exploration's draw. A holdout is drawn once per user
                // (all of a user's requests in one arm: a few users who fail on
                // their own make a feature with no effect look harmful), so its
                // requests, and those of users in the holdout, are left to the
                // A/B report (the record has them, with `p_on`). The probe's
                // arms are a design of their own, tallied apart.
                randomised: d.explored & !d.holdout,
                explored: d.explored,
                drawn_off: d.drawn_off,
                probed: d.probed,
            },
        }
    }

    /// Handles response headers: reads the status and the app's signal headers,
    /// strips every control header before the response leaves Envoy, and counts
    /// the outcome per stack and per feature arm.
    pub fn on_response_headers(
        &mut self,
        state: &StreamState,
        host: &mut impl Host,
        sink: &mut impl MetricSink,
    ) {
        let Some(stack) = state.stack else { return };
        host.response_headers(&mut self.response);
        let headers = &self.response;
        let h = &self.config.headers;
        let outcome = Outcome {
            stack,
            status: headers.header(":status").and_then(|s| s.parse().ok()),
            latency_ms: host.now_nanos().saturating_sub(state.started_nanos) / 1_000_000,
            engaged: signal(headers.header(&h.engagement)),
            security: signal(headers.header(&h.security)),
            enabled: state.enabled,
            holdout: state.holdout,
            randomised: state.exposure.randomised,
            segments: state.segments,
        };
        for name in headers.names() {
            if h.is_control(name) {
                host.set_response_header(name, None);
            }
        }
        if let Some(signals) = outcome.signals() {
            host.set_outcome_record(signals);
        }
        let slow_cut_ms = self.worker.blocks.slow_ms(&self.config.rollback);
        self.metrics.on_response(&outcome, slow_cut_ms, sink);
        if self.config.rollback.enabled {
            self.pool.record(&state.exposure, &self.worker.blocks, outcome.kpis(), &self.config.rollback);
        }
    }

    /// How often the proxy should call [`Runtime::on_tick`]: the shorter of the
    /// stats flush and the rollback sync periods; `None` when neither applies.
    pub fn tick_period_ms(&self) -> Option<u64> {
        let flush = Some(self.config.stats_flush_ms).filter(|ms| *ms > 0);
        let sync = Some(self.config.rollback_sync_ms).filter(|_| self.config.rollback.enabled);
        match (flush, sync) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Records that this configuration is loaded, at `now_secs` (Unix time):
    /// the `augur_model_loaded_timestamp_seconds` and `augur_config_revision`
    /// gauges.
    pub fn loaded(&self, now_secs: u64, sink: &mut impl MetricSink) {
        self.metrics.loaded(self.config.revision, now_secs, sink);
    }

    /// Hands the batched counter increments to the proxy.
    pub fn flush_stats(&mut self, sink: &mut impl MetricSink) {
        self.metrics.flush(sink);
    }

    /// Every tick: flushes the batched counters and, once per
    /// `rollback.sync_ms`, merges this worker's outcomes into shared data
    /// (compare-and-swap, retried), runs the rollback tests on the pooled
    /// counts, and adopts the resulting blocks. Returns what changed.
    pub fn on_tick(
        &mut self,
        store: &mut impl SharedStore,
        now_ms: u64,
        sink: &mut impl MetricSink,
    ) -> Vec<Event> {
        self.metrics.flush(sink);
        if !self.config.rollback.enabled {
            return Vec::new();
        }
        // Ticks may come faster than the sync period (a shorter stats flush);
        // half a tick of slack so a sync is never pushed one tick late.
        let slack = self.tick_period_ms().unwrap_or(0) / 2;
        let (sync_ms, policy) = (self.config.rollback_sync_ms, &self.config.rollback);
        match self.pool.tick(store, now_ms, sync_ms, slack, policy) {
            None => Vec::new(),
            Some(Ok((blocks, events))) => {
                self.metrics.exploring(blocks.suspect, sink);
                self.worker.blocks = blocks;
                let rules = &self.config.rules.features;
                let name = |f: usize| rules.get(f).map_or("?", |r| r.name.as_str());
                for e in &events {
                    log::warn!("rollback: {}", e.describe(name));
                    self.metrics.on_rollback(e, sink);
                }
                events
            }
            Some(Err(rollback::shared::Contended)) => {
                log::warn!("rollback: shared data stayed contended; will retry on the next tick");
                Vec::new()
            }
        }
    }

    /// Before a configuration serves its first request: applies the blocks
    /// already in force for its rollout (set under an earlier configuration or
    /// by another worker), so a push never re-exposes a rolled-back harm.
    pub fn adopt_shared(&mut self, store: &impl SharedStore) {
        if !self.config.rollback.enabled {
            return;
        }
        if let Some(blocks) = self.pool.adopt(store) {
            self.worker.blocks = blocks;
        }
    }

    /// When a configuration goes away: hands the outcomes it counted since its
    /// last sync over to the shared state, so the next configuration's tests see them.
    pub fn hand_over(&mut self, store: &mut impl SharedStore) {
        if self.config.rollback.enabled {
            self.pool.hand_over(store);
        }
    }

    /// When the configuration goes away (its last stream ended): hands the
    /// batched counters to the proxy and the rollback outcomes to shared data.
    pub fn retire(&mut self, store: &mut impl SharedStore, sink: &mut impl MetricSink) {
        self.flush_stats(sink);
        self.hand_over(store);
    }

    /// The rollback state this worker applies.
    pub fn blocks(&self) -> &Blocks {
        &self.worker.blocks
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::offline::{MemorySink as MapSink, MemoryStore as FakeStore};
    use crate::testing::TestConfig;
    use serde_json::json;

    pub use crate::offline::MemoryHost as FakeHost;

    fn runtime(pct: f64) -> (Runtime, MapSink) {
        let c = TestConfig::rollout(pct)
            .on("a")
            .off("b")
            .feature("c", json!({"override": "on", "requires": ["a"]}))
            .compile()
            .unwrap();
        let mut sink = MapSink::default();
        (Runtime::new(c, &mut sink), sink)
    }

    #[test]
    fn new_stack_request_gets_routing_feature_and_decision_headers() {
        let (mut rt, mut sink) = runtime(100.0);
        let mut host = FakeHost::with(&[("x-user-id", "u1"), ("x-request-id", "req-1")]);
        let st = rt.on_request_headers(&mut host, &mut sink);
        assert_eq!(st.stack, Some(Stack::New));
        assert_eq!(host.header("x-augur-stack"), Some("new"));
        assert_eq!(host.header("x-augur-features"), Some("a,c"));
        assert_eq!(
            host.header("x-augur-flags"),
            Some("@model=default-v1,a=on;forced_on,b=off;kill_switch,c=on;forced_on")
        );
        let rec: serde_json::Value = serde_json::from_str(host.record.as_deref().unwrap()).unwrap();
        assert_eq!(host.header("x-augur-decision"), rec["id"].as_str());
        assert_eq!(rec["request_id"], "req-1");
        assert_eq!(rec["stack"], "new");
    }

    /// `upstream_headers` drops the headers an app does not read; forged
    /// ones are stripped all the same.
    #[test]
    fn upstream_headers_writes_only_the_listed_headers() {
        let c =
            TestConfig::rollout(100.0).on("a").set("upstream_headers", json!(["flags"])).compile().unwrap();
        let mut sink = MapSink::default();
        let mut rt = Runtime::new(c, &mut sink);
        let mut host = FakeHost::with(&[("x-user-id", "u1"), ("x-augur-features", "forged")]);
        rt.on_request_headers(&mut host, &mut sink);
        assert_eq!(host.header("x-augur-stack"), Some("new"));
        assert_eq!(host.header("x-augur-flags"), Some("@model=default-v1,a=on;forced_on"));
        assert_eq!((host.header("x-augur-features"), host.header("x-augur-decision")), (None, None));
        let e =
            TestConfig::rollout(100.0).on("a").set("upstream_headers", json!(["features", "flag"])).compile();
        assert_eq!(
            e.unwrap_err().to_string(),
            "upstream_headers[1]: \"flag\" is not a header augur writes for the app; use \"features\", \"flags\" or \"decision\" (the stack header is always written)"
        );
    }

    #[test]
    fn old_stack_request_gets_no_feature_headers() {
        let (mut rt, mut sink) = runtime(0.0);
        let mut host = FakeHost::with(&[("x-user-id", "u1")]);
        rt.on_request_headers(&mut host, &mut sink);
        assert_eq!(host.header("x-augur-stack"), Some("old"));
        assert_eq!(host.header("x-augur-features"), None);
        assert_eq!(host.header("x-augur-decision"), None);
        assert_eq!(host.header("x-augur-flags"), None);
        let rec: serde_json::Value = serde_json::from_str(host.record.as_deref().unwrap()).unwrap();
        assert_eq!(rec["id"].as_str().map(str::len), Some(16), "every request gets augur's own id");
        assert_eq!(rec["request_id"], serde_json::Value::Null);
    }

    #[test]
    fn spoofed_control_headers_are_stripped_and_counted() {
        let (mut rt, mut sink) = runtime(0.0);
        let mut host = FakeHost::with(&[
            ("x-user-id", "u1"),
            ("x-augur-stack", "new"),
            ("x-augur-features", "b,admin"),
            ("x-augur-decision", "forged"),
            ("x-augur-flags", "@model=evil,b=on;forced_on"),
            ("x-augur-anything", "1"),
        ]);
        let st = rt.on_request_headers(&mut host, &mut sink);
        assert_eq!(st.stack, Some(Stack::Old));
        assert_eq!(host.header("x-augur-stack"), Some("old"));
        assert_eq!(host.header("x-augur-features"), None);
        assert_eq!(host.header("x-augur-decision"), None);
        assert_eq!(host.header("x-augur-anything"), None);
        assert_eq!(host.header("x-augur-flags"), None);
        rt.flush_stats(&mut sink);
        assert_eq!(sink.counter("augur_spoofed_requests_total.rollout.default"), 1);

        // On the new stack the forged list is replaced by the real one.
        let (mut rt, mut sink) = runtime(100.0);
        let mut host = FakeHost::with(&[
            ("x-user-id", "u1"),
            ("x-augur-features", "b,admin"),
            ("x-augur-flags", "@model=evil,b=on;forced_on"),
        ]);
        rt.on_request_headers(&mut host, &mut sink);
        assert_eq!(host.header("x-augur-features"), Some("a,c"));
        assert!(host.header("x-augur-flags").is_some_and(|f| f.contains("b=off;kill_switch")));
    }

    #[test]
    fn ticks_flush_stats_every_time_and_sync_rollback_once_per_sync_period() {
        let checkout = |pct| TestConfig::rollout(pct).feature("new_checkout", json!({}));
        let c = checkout(100.0).set("rollback.sync_ms", 1000).set("stats.flush_ms", 250).compile().unwrap();
        let mut sink = MapSink::default();
        let mut rt = Runtime::new(c, &mut sink);
        assert_eq!(rt.tick_period_ms(), Some(250));
        let mut store = FakeStore::default();
        // The store's CAS token counts its writes: one per rollback sync.
        let writes = |s: &FakeStore| s.data.values().map(|(_, cas)| *cas).sum::<u32>();
        let mut syncs = 0;
        for tick in 0..12u64 {
            let mut host = FakeHost::with(&[("x-user-id", "u1")]);
            rt.on_request_headers(&mut host, &mut sink);
            let before = writes(&store);
            rt.on_tick(&mut store, 10_000 + tick * 250, &mut sink);
            syncs += writes(&store) - before;
            assert_eq!(sink.counter("augur_requests_total.rollout.default.stack.new"), tick as i64 + 1);
        }
        assert_eq!(syncs, 3, "12 ticks of 250 ms: a sync every fourth");
        let no_rollback = checkout(1.0).compile().unwrap();
        assert_eq!(Runtime::new(no_rollback, &mut sink).tick_period_ms(), Some(1000));
        let nothing =
            checkout(1.0).set("rollback.enabled", false).set("stats.flush_ms", 0).compile().unwrap();
        assert_eq!(Runtime::new(nothing, &mut sink).tick_period_ms(), None);
    }

    #[test]
    fn the_exploring_cells_gauge_follows_the_suspect_cells() {
        let c = TestConfig::rollout(50.0).feature("new_checkout", json!({})).compile().unwrap();
        let mut sink = MapSink::default();
        let mut rt = Runtime::new(c, &mut sink);
        let mut store = FakeStore::default();
        let gauge = "augur_exploring_cells.rollout.default";
        rt.on_tick(&mut store, 10_000, &mut sink);
        assert_eq!(sink.histograms[gauge], vec![0], "set at the first sync: nothing suspect");
        // Tablets fail on the new stack only: the screen makes device=tablet suspect.
        for i in 0..3000 {
            let mut host =
                FakeHost::with(&[("x-user-id", &format!("u{i}")), ("user-agent", "Mozilla/5.0 (iPad)")]);
            let st = rt.on_request_headers(&mut host, &mut sink);
            let status = if st.stack == Some(Stack::New) && i % 2 == 0 { "503" } else { "200" };
            host.response = vec![(":status".to_string(), status.to_string())];
            rt.on_response_headers(&st, &mut host, &mut sink);
        }
        rt.on_tick(&mut store, 20_000, &mut sink);
        assert!(rt.blocks().suspect != 0, "device=tablet suspect");
        assert_eq!(sink.histograms[gauge].last(), Some(&u64::from(rt.blocks().suspect.count_ones())));
        assert!(sink.histograms[gauge].last() >= Some(&1));
    }

    #[test]
    fn response_is_counted_per_stack_with_latency() {
        let (mut rt, mut sink) = runtime(100.0);
        let mut host = FakeHost::with(&[("x-user-id", "u1")]);
        host.now = 1_000_000_000;
        let st = rt.on_request_headers(&mut host, &mut sink);
        host.now += 7_500_000;
        host.response =
            [(":status", "502"), ("x-augur-engagement", "1"), ("x-augur-security", "0"), ("x-other", "k")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        rt.on_response_headers(&st, &mut host, &mut sink);
        rt.flush_stats(&mut sink);
        assert_eq!(sink.counter("augur_responses_total.rollout.default.stack.new.class.5xx"), 1);
        assert_eq!(sink.counter("augur_latency_seconds_count.rollout.default.stack.new"), 1);
        assert_eq!(sink.counter("augur_latency_seconds_bucket.rollout.default.stack.new.le.0.005"), 0);
        assert_eq!(sink.counter("augur_latency_seconds_bucket.rollout.default.stack.new.le.0.01"), 1);
        assert_eq!(sink.counter("augur_latency_milliseconds_total.rollout.default.stack.new"), 7);
        assert_eq!(sink.counter("augur_engagements_total.rollout.default.stack.new"), 1);
        assert_eq!(sink.counter("augur_security_events_total.rollout.default.stack.new"), 0);
        assert_eq!(host.signals.as_deref(), Some("engaged"));
        assert_eq!(
            host.response.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            [":status", "x-other"],
            "control headers never reach the client"
        );
        // A response with no signal makes no filter-state object at all.
        let mut quiet = FakeHost::with(&[("x-user-id", "u1")]);
        let st2 = rt.on_request_headers(&mut quiet, &mut sink);
        quiet.response = vec![(":status".to_string(), "200".to_string())];
        rt.on_response_headers(&st2, &mut quiet, &mut sink);
        assert_eq!(quiet.signals, None);
        let errors = |f: &str, arm: &str| {
            sink.counter(&format!(
                "augur_feature_outcomes_total.rollout.default.feature.{f}.arm.{arm}.outcome.errors"
            ))
        };
        assert_eq!((errors("a", "on"), errors("b", "off"), errors("c", "on")), (1, 1, 1));
    }

    /// Two workers share one store; `new_checkout` fails half the time for
    /// tablets when `harm` is set. Returns the workers' final rollback state and
    /// the harmed exposures.
    fn two_workers(harm: bool, requests: usize) -> (Blocks, Blocks, usize, MapSink, FakeStore) {
        let config = TestConfig::rollout(100.0).permissive("new_checkout").permissive("search_v2");
        let mut sink = MapSink::default();
        let mut workers = [
            Runtime::new(config.compile().unwrap(), &mut sink),
            Runtime::new(config.compile().unwrap(), &mut sink),
        ];
        let mut store = FakeStore::default();
        let mut harmed = 0;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for i in 0..requests {
            let ua = ["iPhone Mobile", "iPad", "Windows NT", "Macintosh"][i % 4];
            let mut host = FakeHost::with(&[
                ("x-user-id", &format!("u{}", i % 997)),
                ("x-request-id", &format!("r{i}")),
                ("user-agent", ua),
            ]);
            let w = &mut workers[i % 2];
            let st = w.on_request_headers(&mut host, &mut sink);
            let exposed = harm && st.enabled & 1 != 0 && ua == "iPad";
            harmed += usize::from(exposed);
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let fail = if exposed { rng % 2 == 0 } else { rng % 50 == 0 };
            host.response = vec![(":status".into(), if fail { "503" } else { "200" }.into())];
            w.on_response_headers(&st, &mut host, &mut sink);
            if i % 100 == 99 {
                for w in workers.iter_mut() {
                    w.on_tick(&mut store, i as u64 * 1000, &mut sink);
                }
            }
        }
        let [a, b] = workers;
        (a.blocks().clone(), b.blocks().clone(), harmed, sink, store)
    }

    #[test]
    fn workers_pool_outcomes_and_roll_back_the_harmful_feature_in_its_cell() {
        let (a, b, harmed, sink, _) = two_workers(true, 8000);
        assert_eq!(a, b, "every worker applies the same blocks");
        assert_eq!(a.single_blocks(0), 1 << 1, "new_checkout rolled back for tablets only: {a:?}");
        assert_eq!(a.cells[0][1..], [0; 4], "no pair blocks");
        assert!(a.cells[1].iter().all(|w| *w == 0), "search_v2 untouched");
        assert!(harmed < 200, "harmed {harmed} of ~2000 tablet requests");
        assert!(sink.counter("augur_rollback_events_total.rollout.default.kind.blocked") >= 1);
        assert!(
            sink.counter(
                "augur_feature_decisions_total.rollout.default.feature.new_checkout.state.off.reason.rolled_back"
            ) > 0
        );
        assert!(
            sink.counter(
                "augur_feature_decisions_total.rollout.default.feature.search_v2.state.off.reason.exploring"
            ) > 0
        );
    }

    #[test]
    fn no_rollback_without_harm() {
        let (a, _, _, sink, _) = two_workers(false, 8000);
        assert!(a.cells.iter().flatten().all(|w| *w == 0));
        assert_eq!((a.killed, a.reverted), (0, false));
        assert_eq!(sink.counter("augur_rollback_events_total.rollout.default.kind.blocked"), 0);
    }

    #[test]
    fn a_pushed_configuration_applies_the_blocks_in_force_before_its_first_request() {
        let (blocks, _, _, _, mut store) = two_workers(true, 8000);
        assert_eq!(blocks.single_blocks(0), 1 << 1, "new_checkout blocked for tablets");
        // The push: same rollout, one feature more, a threshold changed.
        let pushed = TestConfig::rollout(100.0)
            .set("model.version", "v2")
            .permissive("recommendations")
            .permissive("new_checkout")
            .feature(
                "search_v2",
                json!({"min_score": 1, "max_performance_cost": 1, "max_error_risk": 1, "max_security_risk": 1}),
            );
        let tablet = || FakeHost::with(&[("x-user-id", "u1"), ("x-request-id", "r"), ("user-agent", "iPad")]);
        let mut sink = MapSink::default();
        let checkout_on = |rt: &Runtime| rt.last_decision().flags[1].on;

        let mut unadopted = Runtime::new(pushed.compile().unwrap(), &mut sink);
        unadopted.on_request_headers(&mut tablet(), &mut sink);
        assert!(checkout_on(&unadopted), "without adoption the harm is back (the bug this guards)");

        let mut rt = Runtime::new(pushed.compile().unwrap(), &mut sink);
        rt.adopt_shared(&store);
        rt.on_request_headers(&mut tablet(), &mut sink);
        assert!(!checkout_on(&rt));
        assert_eq!(rt.last_decision().flags[1].reason, crate::flags::Reason::RolledBack);
        assert!(rt.last_decision().flags[0].on, "the new feature starts clean");

        // What the replaced configuration counted after its last sync is handed over.
        let mut host = tablet();
        let st = rt.on_request_headers(&mut host, &mut sink);
        host.response = vec![(":status".into(), "503".into())];
        rt.on_response_headers(&st, &mut host, &mut sink);
        let key = rt.pool.key().to_string();
        let before = store.data[&key].1;
        rt.hand_over(&mut store);
        assert_eq!(store.data[&key].1, before + 1, "one write");
        rt.hand_over(&mut store);
        assert_eq!(store.data[&key].1, before + 1, "nothing left to hand over");

        let epoch = TestConfig::rollout(100.0).set("rollback.epoch", 1).permissive("new_checkout");
        let mut fresh = Runtime::new(epoch.compile().unwrap(), &mut sink);
        fresh.adopt_shared(&store);
        fresh.on_request_headers(&mut tablet(), &mut sink);
        assert!(fresh.last_decision().flags[0].on, "a new rollback.epoch starts clean");
    }

    #[test]
    fn slow_is_counted_with_the_rollbacks_cut_in_force() {
        let c = TestConfig::rollout(100.0)
            .set("rollback.slow_ms", 500)
            .set("rollback.slow_floor_ms", 10)
            .on("a")
            .compile()
            .unwrap();
        let mut sink = MapSink::default();
        let mut rt = Runtime::new(c, &mut sink);
        let answer = |rt: &mut Runtime, sink: &mut MapSink, ms: u64| {
            let mut host = FakeHost::with(&[("x-user-id", "u1")]);
            host.now = 1_000_000_000;
            let st = rt.on_request_headers(&mut host, sink);
            host.now += ms * 1_000_000;
            host.response = vec![(":status".into(), "200".into())];
            rt.on_response_headers(&st, &mut host, sink);
        };
        let slow = |sink: &mut MapSink, rt: &mut Runtime| {
            rt.flush_stats(sink);
            (
                sink.counter("augur_slow_responses_total.rollout.default.stack.new"),
                sink.counter("augur_feature_outcomes_total.rollout.default.feature.a.arm.on.outcome.slow"),
            )
        };
        // Nothing learned yet: the cut is rollback.slow_ms.
        answer(&mut rt, &mut sink, 500);
        answer(&mut rt, &mut sink, 501);
        assert_eq!(slow(&mut sink, &mut rt), (1, 1));
        // A learned cut (the control p90) within slow_floor_ms..slow_ms, as the rollback judges.
        rt.worker.blocks.slow_ms = 30;
        assert_eq!(rt.blocks().slow_ms(&rt.config().rollback), 30);
        answer(&mut rt, &mut sink, 30);
        answer(&mut rt, &mut sink, 31);
        assert_eq!(slow(&mut sink, &mut rt), (2, 2));
        rt.worker.blocks.slow_ms = 5;
        answer(&mut rt, &mut sink, 9);
        assert_eq!(slow(&mut sink, &mut rt), (2, 2), "never below slow_floor_ms");
    }

    /// Serves one request for user `u1` whose response has `status`.
    fn serve(rt: &mut Runtime, sink: &mut MapSink, status: Option<&str>) {
        let mut host = FakeHost::with(&[("x-user-id", "u1")]);
        let st = rt.on_request_headers(&mut host, sink);
        host.response = status.map(|s| (":status".to_string(), s.to_string())).into_iter().collect();
        rt.on_response_headers(&st, &mut host, sink);
    }

    /// New-stack requests and errors in the rollout's shared counts (the
    /// device group: every request is in exactly one of its cells).
    fn shared_new_stack(rt: &Runtime, store: &FakeStore) -> (u32, u32) {
        let names: Vec<String> = rt.config().feature_names().map(String::from).collect();
        let Some((bytes, _)) = store.data.get(rt.pool.key()) else { return (0, 0) };
        let (_, counts) = rollback::shared::decode(bytes, &names).unwrap();
        let device = counts.stack.iter().flat_map(|window| &window[1][..rollback::cells::GROUP_START[1]]);
        device.fold((0, 0), |(n, e), t| (n + t.n, e + t.bad[0]))
    }

    #[test]
    fn a_lost_cas_race_is_retried_and_a_contended_sync_keeps_its_counts() {
        let (mut rt, mut sink) = runtime(100.0);
        let mut store = FakeStore::default();
        for _ in 0..10 {
            serve(&mut rt, &mut sink, Some("200"));
        }
        rt.on_tick(&mut store, 10_000, &mut sink);
        assert_eq!(shared_new_stack(&rt, &store), (10, 0));

        serve(&mut rt, &mut sink, Some("200"));
        store.races = 3;
        rt.on_tick(&mut store, 11_000, &mut sink);
        assert_eq!((store.races, shared_new_stack(&rt, &store)), (0, (11, 0)), "won on the fourth attempt");

        serve(&mut rt, &mut sink, Some("200"));
        store.races = usize::MAX;
        assert!(rt.on_tick(&mut store, 12_000, &mut sink).is_empty());
        assert_eq!(shared_new_stack(&rt, &store), (11, 0), "every attempt lost: nothing written");
        store.races = 0;
        rt.on_tick(&mut store, 12_400, &mut sink);
        assert_eq!(
            shared_new_stack(&rt, &store),
            (11, 0),
            "not due yet (half a tick of slack): one sync per sync_ms"
        );
        rt.on_tick(&mut store, 13_000, &mut sink);
        assert_eq!(shared_new_stack(&rt, &store), (12, 0), "the contended sync's counts were kept");
    }

    #[test]
    fn a_response_without_a_valid_status_is_an_error_of_class_other() {
        let (mut rt, mut sink) = runtime(100.0);
        for status in [None, Some("abc"), Some("999"), Some("503"), Some("404")] {
            serve(&mut rt, &mut sink, status);
        }
        let mut store = FakeStore::default();
        rt.on_tick(&mut store, 10_000, &mut sink);
        let class =
            |c: &str| sink.counter(&format!("augur_responses_total.rollout.default.stack.new.class.{c}"));
        assert_eq!((class("other"), class("5xx"), class("4xx")), (3, 1, 1));
        assert_eq!(shared_new_stack(&rt, &store), (5, 4), "4xx is the client's, not an error");
    }

    #[test]
    fn retiring_flushes_the_batched_counters_and_hands_over_the_outcomes() {
        let (mut rt, mut sink) = runtime(100.0);
        serve(&mut rt, &mut sink, Some("503"));
        assert_eq!(sink.increments, 0, "batched until a tick");
        let mut store = FakeStore::default();
        rt.retire(&mut store, &mut sink);
        assert_eq!(sink.counter("augur_requests_total.rollout.default.stack.new"), 1);
        assert_eq!(shared_new_stack(&rt, &store), (1, 1));
        let writes = store.data[rt.pool.key()].1;
        rt.retire(&mut store, &mut sink);
        assert_eq!(store.data[rt.pool.key()].1, writes, "nothing left to hand over: no write");
    }
}
