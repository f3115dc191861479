//! The stream runtime without a proxy: an in-memory host, shared-data store and
//! stat sink, and a [`Simulation`] that drives one worker's [`Runtime`] through
//! timed requests, responses and configuration pushes (`augur simulate`).
//!
//! Everything a request goes through in Envoy — control-header stripping,
//! decide, the decision record, outcome counting, the rollback sync on ticks,
//! a push adopting the blocks in force — is the filter's own code here; only
//! the clock is the caller's. That makes a closed-loop run reproducible to the
//! request and fast (a 20,000-request run takes a second, not two minutes), so
//! rollback policies can be compared over many seeds before Envoy runs them.
//! Tests use the same host, store and sink.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use crate::config::{compile, Config, ConfigError};
use crate::headers::{HeaderMap, Headers};
use crate::metrics::{MetricKind, MetricSink};
use crate::rollback::SharedStore;
use crate::stream::{Host, Runtime, StreamState};

/// A proxy stand-in: the request's headers plus what the filter did to them.
#[derive(Debug, Default, Clone)]
pub struct MemoryHost {
    pub headers: Vec<(String, String)>,
    pub response: Vec<(String, String)>,
    pub record: Option<String>,
    pub signals: Option<String>,
    pub now: u64,
}

fn serialized(pairs: &[(String, String)]) -> Vec<u8> {
    HeaderMap::serialize(pairs.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
}

fn set_pair(pairs: &mut Vec<(String, String)>, name: &str, value: Option<&str>) {
    pairs.retain(|(k, _)| k != name);
    if let Some(v) = value {
        pairs.push((name.to_string(), v.to_string()));
    }
}

impl Host for MemoryHost {
    fn request_headers(&self, into: &mut HeaderMap) {
        // Through the proxy's serialisation, so every run exercises the parser;
        // a map this side serialised always parses (an empty one otherwise).
        let _ = into.load(serialized(&self.headers));
    }
    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        set_pair(&mut self.headers, name, value);
    }
    fn set_decision_record(&mut self, record: &str) {
        self.record = Some(record.to_string());
    }
    fn response_headers(&self, into: &mut HeaderMap) {
        let _ = into.load(serialized(&self.response));
    }
    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        set_pair(&mut self.response, name, value);
    }
    fn set_outcome_record(&mut self, signals: &str) {
        self.signals = Some(signals.to_string());
    }
    fn now_nanos(&self) -> u64 {
        self.now
    }
}

impl MemoryHost {
    pub fn with(pairs: &[(&str, &str)]) -> MemoryHost {
        MemoryHost {
            headers: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..MemoryHost::default()
        }
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.as_slice().header(name)
    }
}

/// proxy-wasm shared data stand-in: the CAS token counts writes.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub data: HashMap<String, (Vec<u8>, u32)>,
    /// Writes that lose a race: another worker writes the key between this
    /// one's read and its write, so the write is a CAS mismatch (for tests).
    pub races: usize,
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.data.get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        if self.races > 0 {
            self.races -= 1;
            let (_, token) = self.data.entry(key.to_string()).or_default();
            *token += 1;
        }
        let current = self.data.get(key).map(|(_, c)| *c);
        if cas.is_some() && cas != current {
            return false;
        }
        self.data.insert(key.to_string(), (value.to_vec(), current.unwrap_or(0) + 1));
        true
    }
}

/// Records stats by name, like Envoy's store would.
#[derive(Debug)]
pub struct MemorySink {
    pub names: Vec<(MetricKind, String)>,
    pub counters: BTreeMap<String, i64>,
    pub histograms: BTreeMap<String, Vec<u64>>,
    /// Calls to `increment` (host calls, in the filter).
    pub increments: usize,
    /// Keep histogram samples (tests); a long simulation does not.
    pub keep_samples: bool,
}

impl Default for MemorySink {
    fn default() -> Self {
        MemorySink {
            names: Vec::new(),
            counters: BTreeMap::new(),
            histograms: BTreeMap::new(),
            increments: 0,
            keep_samples: true,
        }
    }
}

impl MetricSink for MemorySink {
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        if let Some(i) = self.names.iter().position(|(_, n)| n == name) {
            return u32::try_from(i).ok();
        }
        self.names.push((kind, name.to_string()));
        u32::try_from(self.names.len() - 1).ok()
    }
    fn increment(&mut self, id: u32, by: i64) {
        self.increments += 1;
        if let Some((_, name)) = self.names.get(id as usize) {
            *self.counters.entry(name.clone()).or_default() += by;
        }
    }
    fn record(&mut self, id: u32, value: u64) {
        if let Some((_, name)) = self.names.get(id as usize) {
            let samples = self.histograms.entry(name.clone()).or_default();
            if self.keep_samples {
                samples.push(value);
            }
        }
    }
}

impl MemorySink {
    /// Counts only (histogram samples are dropped): for long runs.
    pub fn counting_only() -> MemorySink {
        MemorySink { keep_samples: false, ..MemorySink::default() }
    }
    pub fn counter(&self, name: &str) -> i64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

/// A `simulate` input line that cannot be applied; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimError(pub String);

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ConfigError> for SimError {
    fn from(e: ConfigError) -> Self {
        SimError(format!("config: {e}"))
    }
}

/// One worker's runtime on a simulated clock (see the module docs).
pub struct Simulation {
    runtime: Runtime,
    store: MemoryStore,
    sink: MemorySink,
    host: MemoryHost,
    streams: HashMap<u64, StreamState>,
    next_seq: u64,
    now_ms: u64,
    next_tick_ms: Option<u64>,
    /// The worker's draws: fixed, so a run is reproducible; each push moves on.
    seed: u64,
}

impl Simulation {
    /// A simulation whose random draws (exploration) follow `seed`.
    pub fn new(config: Config, seed: u64) -> Simulation {
        let mut sink = MemorySink::counting_only();
        let runtime = Runtime::with_seed(config, seed, &mut sink);
        let next_tick_ms = runtime.tick_period_ms();
        Simulation {
            runtime,
            store: MemoryStore::default(),
            sink,
            host: MemoryHost::default(),
            streams: HashMap::new(),
            next_seq: 0,
            now_ms: 0,
            next_tick_ms,
            seed,
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn sink(&self) -> &MemorySink {
        &self.sink
    }

    /// Moves the clock to `t_ms` (never back), running every tick due by then;
    /// returns the rollback events, as the filter logs them.
    pub fn advance(&mut self, t_ms: u64) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        while let Some(tick) = self.next_tick_ms.filter(|&t| t <= t_ms) {
            self.now_ms = self.now_ms.max(tick);
            let events = self.runtime.on_tick(&mut self.store, tick, &mut self.sink);
            let rules = &self.runtime.config().rules.features;
            let name = |f: usize| rules.get(f).map_or("?", |r| r.name.as_str());
            out.extend(events.iter().map(|e| (tick, e.describe(name))));
            let period = self.runtime.tick_period_ms().unwrap_or(u64::MAX);
            self.next_tick_ms = tick.checked_add(period.max(1));
        }
        self.now_ms = self.now_ms.max(t_ms);
        out
    }

    /// A request at the current time: returns its sequence number (for its
    /// response) and the host after the filter ran (headers set, record).
    pub fn request(&mut self, headers: Vec<(String, String)>) -> (u64, &MemoryHost) {
        self.host =
            MemoryHost { headers, now: self.now_ms.saturating_mul(1_000_000), ..MemoryHost::default() };
        let state = self.runtime.on_request_headers(&mut self.host, &mut self.sink);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.streams.insert(seq, state);
        (seq, &self.host)
    }

    /// The response of request `seq` at the current time (its latency is the
    /// time since the request).
    pub fn respond(&mut self, seq: u64, headers: Vec<(String, String)>) -> Result<&MemoryHost, SimError> {
        let state = self.streams.remove(&seq).ok_or_else(|| {
            SimError(format!("response: no request {seq} in flight (each request is answered once)"))
        })?;
        self.host = MemoryHost {
            response: headers,
            now: self.now_ms.saturating_mul(1_000_000),
            ..MemoryHost::default()
        };
        self.runtime.on_response_headers(&state, &mut self.host, &mut self.sink);
        Ok(&self.host)
    }

    /// A configuration push: the old configuration hands its outcomes over,
    /// the new one adopts the blocks in force before its first request.
    pub fn push(&mut self, config: Config) {
        self.runtime.retire(&mut self.store, &mut self.sink);
        self.seed = self.seed.wrapping_add(1);
        self.runtime = Runtime::with_seed(config, self.seed, &mut self.sink);
        self.runtime.adopt_shared(&self.store);
        let period = self.runtime.tick_period_ms();
        self.next_tick_ms = period.map(|p| self.now_ms.saturating_add(p));
    }

    /// Applies one JSONL input line and returns its output line:
    ///
    /// ```text
    /// {"t_ms": T, "request": {headers}}        → {"seq": n, "set": {headers augur set}, "record": {…}}
    /// {"t_ms": T, "response": n, "headers": {}} → {"seq": n}
    /// {"t_ms": T, "config": {plugin config}}    → {"config": "ok", "model": version}
    /// ```
    ///
    /// Every output carries `"rollback": [[t_ms, event], …]` when ticks up to
    /// `t_ms` changed anything.
    pub fn apply(&mut self, line: &Value) -> Result<Value, SimError> {
        let t_ms = line.get("t_ms").and_then(Value::as_u64).ok_or_else(|| {
            SimError("t_ms: every line needs \"t_ms\", the simulated time in ms (never decreasing)".into())
        })?;
        let events = self.advance(t_ms);
        let mut out = if let Some(h) = line.get("request") {
            let prefix = self.runtime.config().headers.prefix.clone();
            let (seq, host) = self.request(header_pairs(h, "request")?);
            let set: serde_json::Map<String, Value> = host
                .headers
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            let record = host.record.as_deref().map_or(Ok(Value::Null), serde_json::from_str);
            let record = record.map_err(|e| SimError(format!("record: not JSON ({e})")))?;
            json!({"seq": seq, "set": set, "record": record})
        } else if let Some(seq) = line.get("response") {
            let seq = seq.as_u64().ok_or_else(|| SimError("response: must be a request's \"seq\"".into()))?;
            let headers = match line.get("headers") {
                Some(h) => header_pairs(h, "headers")?,
                None => Vec::new(),
            };
            self.respond(seq, headers)?;
            json!({"seq": seq})
        } else if let Some(c) = line.get("config") {
            let bytes = serde_json::to_vec(c).map_err(|e| SimError(format!("config: {e}")))?;
            self.push(compile(&bytes)?);
            json!({"config": "ok", "model": self.runtime.config().model_version})
        } else {
            return Err(SimError("each line needs \"request\", \"response\" or \"config\"".into()));
        };
        if !events.is_empty() {
            out["rollback"] = json!(events);
        }
        Ok(out)
    }
}

/// A JSON object of header name → value (names lowercased, values as text).
pub fn header_pairs(v: &Value, field: &str) -> Result<Vec<(String, String)>, SimError> {
    let obj = v.as_object().ok_or_else(|| SimError(format!("{field}: must be an object of headers")))?;
    Ok(obj
        .iter()
        .map(|(k, v)| {
            let val = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.to_ascii_lowercase(), val)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestConfig;

    #[test]
    fn a_simulated_request_is_decided_answered_and_ticked_by_the_filter_code() {
        let c = TestConfig::rollout(100.0).on("a").compile().unwrap();
        let mut sim = Simulation::new(c, 1);
        let out =
            sim.apply(&json!({"t_ms": 5, "request": {"x-user-id": "u1", "x-augur-stack": "new"}})).unwrap();
        assert_eq!(out["seq"], 0);
        assert_eq!(out["set"]["x-augur-features"], "a");
        assert_eq!(out["record"]["stack"], "new");
        let spoofed = |sim: &Simulation| {
            sim.sink()
                .counters
                .iter()
                .filter(|(k, _)| k.starts_with("augur_spoofed_requests_total"))
                .map(|(_, n)| *n)
                .sum::<i64>()
        };
        assert_eq!(spoofed(&sim), 0, "stats batch until a tick");
        let out = sim.apply(&json!({"t_ms": 40, "response": 0, "headers": {":status": "503"}})).unwrap();
        assert_eq!(out, json!({"seq": 0}));
        assert!(sim.apply(&json!({"t_ms": 41, "response": 0})).unwrap_err().0.contains("no request 0"));
        sim.apply(&json!({"t_ms": 5000, "request": {"x-user-id": "u2"}})).unwrap();
        assert_eq!(spoofed(&sim), 1, "the tick flushed the stats: one forged x-augur-stack");
        let err = sim.apply(&json!({"t_ms": 6000, "config": {"features": 3}})).unwrap_err();
        assert!(err.0.starts_with("config: features"), "{err}");
        assert!(sim.apply(&json!({"request": {}})).unwrap_err().0.starts_with("t_ms:"));
    }
}
