//! The proxy-wasm adapter: the only module that talks to Envoy. It implements
//! [`Host`] and [`MetricSink`] with host calls and forwards callbacks to
//! [`Runtime`]; all decisions live in the pure modules. Host calls go through
//! [`abi`] (errors, not panics; no allocation of their own).
//!
//! Log lines carry no "augur:" of their own: Envoy prefixes every wasm log
//! line with the plugin name, root id and VM id (`wasm log augur augur augur: `).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::abi;
use crate::config;
use crate::control::{self, ControlHeaders};
use crate::headers::HeaderMap;
use crate::metrics::{MetricKind, MetricSink};
use crate::stream::{strip_control_headers, Host, Runtime, SharedStore, StreamState};

/// Filter-state key of the decision record; the access log reads it as
/// `%FILTER_STATE(wasm.augur_decision:PLAIN)%`.
const RECORD_PROPERTY: &str = "augur_decision";
/// Filter-state key of the app signals seen on the response
/// (`%FILTER_STATE(wasm.augur_outcome:PLAIN)%`).
const OUTCOME_PROPERTY: &str = "augur_outcome";
/// Prefix stripped when no configuration was ever accepted (defence in depth:
/// Envoy does not start a filter whose configuration was refused).
const DEFAULT_CONTROL_PREFIX: &str = "x-augur-";

/// The control-header prefix last accepted for rollout `name`, kept in
/// proxy-wide shared data (one store per vm_id): Envoy configures a pushed
/// plugin first in a base VM that has seen no earlier configuration, so a
/// VM-local memory would let the push through there and refuse it only on
/// the workers. A push that changes it needs an explicit migration
/// (`control::check_prefix_change`); a fresh Envoy starts empty, and `augur
/// check-config --envoy` is the static check against the route table.
fn prefix_key(name: &str) -> String {
    format!("augur.control_header_prefix.{name}")
}

fn accepted_prefix(name: &str) -> Option<String> {
    match abi::get_shared_data(&prefix_key(name)) {
        Ok((Some(v), _)) => String::from_utf8(v).ok().filter(|p| !p.is_empty()),
        _ => None,
    }
}

fn remember_prefix(name: &str, prefix: &str) {
    if let Err(e) = abi::set_shared_data(&prefix_key(name), prefix.as_bytes(), None) {
        log::warn!("cannot record the accepted control_header_prefix: {e:?}");
    }
}

proxy_wasm::main! {{
    // Also installs a panic hook that writes the panic message to Envoy's log.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AugurRoot { runtime: None }) });
}}

/// Host calls for the current stream.
struct ProxyHost;

impl Host for ProxyHost {
    fn request_headers(&self, into: &mut HeaderMap) {
        if let Err(e) = abi::load_header_map(abi::REQUEST_HEADERS, into) {
            log::warn!("cannot read request headers: {e:?}");
        }
    }

    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        if let Err(e) = abi::set_header(abi::REQUEST_HEADERS, name, value) {
            log::warn!("cannot set request header {name}: {e:?}");
        }
    }

    fn set_decision_record(&mut self, record: &str) {
        if let Err(e) = abi::set_property(RECORD_PROPERTY, record.as_bytes()) {
            log::warn!("cannot store decision record: {e:?}");
        }
    }

    fn response_headers(&self, into: &mut HeaderMap) {
        if let Err(e) = abi::load_header_map(abi::RESPONSE_HEADERS, into) {
            log::warn!("cannot read response headers: {e:?}");
        }
    }

    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        if let Err(e) = abi::set_header(abi::RESPONSE_HEADERS, name, value) {
            log::warn!("cannot set response header {name}: {e:?}");
        }
    }

    fn set_outcome_record(&mut self, signals: &str) {
        if let Err(e) = abi::set_property(OUTCOME_PROPERTY, signals.as_bytes()) {
            log::warn!("cannot store outcome: {e:?}");
        }
    }

    fn now_nanos(&self) -> u64 {
        abi::now_nanos().unwrap_or(0)
    }
}

/// proxy-wasm shared data: one store per VM id, shared by every worker.
struct ProxyShared;

impl SharedStore for ProxyShared {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        abi::get_shared_data(key).unwrap_or_else(|e| {
            log::warn!("cannot read shared data {key}: {e:?}");
            (None, None)
        })
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        abi::set_shared_data(key, value, cas).unwrap_or_else(|e| {
            log::warn!("cannot write shared data {key}: {e:?}");
            false
        })
    }
}

/// Envoy's stats store.
struct ProxyMetrics;

impl MetricSink for ProxyMetrics {
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        let t = match kind {
            MetricKind::Counter => abi::COUNTER,
            MetricKind::Gauge => abi::GAUGE,
            MetricKind::Histogram => abi::HISTOGRAM,
        };
        abi::define_metric(t, name).map_err(|e| log::warn!("cannot define stat {name}: {e:?}")).ok()
    }

    fn increment(&mut self, id: u32, by: i64) {
        let _ = abi::increment_metric(id, by);
    }

    fn record(&mut self, id: u32, value: u64) {
        let _ = abi::record_metric(id, value);
    }
}

/// One configuration's runtime on one worker, shared by the root context and
/// the streams in flight; the last one to let go hands over the batched counts
/// and the rollback outcomes counted since its last sync.
struct Live(RefCell<Runtime>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.get_mut().retire(&mut ProxyShared, &mut ProxyMetrics);
    }
}

/// One per plugin configuration per worker.
struct AugurRoot {
    runtime: Option<Rc<Live>>,
}

impl Context for AugurRoot {}

impl RootContext for AugurRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            log::error!(
                "configuration refused: no plugin configuration; set `configuration` to the augur JSON"
            );
            return false;
        };
        let compiled = config::compile(&bytes).and_then(|cfg| match accepted_prefix(&cfg.name) {
            Some(p) => control::check_prefix_change(&p, &cfg.headers).map(|()| cfg),
            None => Ok(cfg),
        });
        match compiled {
            Ok(cfg) => {
                remember_prefix(&cfg.name, &cfg.headers.prefix);
                log::info!(
                    "configuration accepted: {} features, model {} on {}, rollout {}% to \"{}\"",
                    cfg.rules.features.len(),
                    cfg.model_version,
                    cfg.model.engine(),
                    cfg.percentage,
                    cfg.new_stack
                );
                let mut runtime = Runtime::new(cfg, &mut ProxyMetrics);
                runtime.loaded(ProxyHost.now_nanos() / 1_000_000_000, &mut ProxyMetrics);
                // Before the first request: the rollout's blocks stay in force.
                runtime.adopt_shared(&ProxyShared);
                self.set_tick_period(Duration::from_millis(runtime.tick_period_ms().unwrap_or(0)));
                // The replaced runtime flushes its counts when its last stream ends.
                self.runtime = Some(Rc::new(Live(RefCell::new(runtime))));
                true
            }
            Err(e) => {
                log::error!("configuration refused: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let now_ms = ProxyHost.now_nanos() / 1_000_000;
        if let Some(Ok(mut rt)) = self.runtime.as_ref().map(|rt| rt.0.try_borrow_mut()) {
            rt.on_tick(&mut ProxyShared, now_ms, &mut ProxyMetrics);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AugurStream { runtime: self.runtime.clone(), state: StreamState::default() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One per HTTP stream.
struct AugurStream {
    runtime: Option<Rc<Live>>,
    state: StreamState,
}

impl Context for AugurStream {}

impl HttpContext for AugurStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.runtime.as_ref().map(|rt| rt.0.try_borrow_mut()) {
            Some(Ok(mut rt)) => self.state = rt.on_request_headers(&mut ProxyHost, &mut ProxyMetrics),
            _ => {
                let mut headers = HeaderMap::default();
                ProxyHost.request_headers(&mut headers);
                let control = ControlHeaders::new(DEFAULT_CONTROL_PREFIX, Vec::new());
                strip_control_headers(&mut ProxyHost, &mut headers, &control);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(Ok(mut rt)) = self.runtime.as_ref().map(|rt| rt.0.try_borrow_mut()) {
            rt.on_response_headers(&self.state, &mut ProxyHost, &mut ProxyMetrics);
        }
        Action::Continue
    }
}
