//! The I/O floor for `make bench-e2e`: a proxy-wasm HTTP filter that makes the
//! host calls augur makes on a new-stack request and nothing else — read the
//! clock and the request header map, write the stack, decision, features and
//! flags headers and the decision record (filter state), then read the clock
//! and the response header map. What it writes comes from its plugin
//! configuration: the bench fills it with what augur writes for a typical
//! new-stack and old-stack request of its traffic (an old-stack request gets
//! only the stack header and the record) and the share of new-stack requests,
//! so Envoy copies the same bytes as often. Built with the filter's own
//! profile, target and SIMD flags, as the empty filter.
//!
//! Not repeated: augur's periodic calls (the stats flush and the rollback sync,
//! on its tick: a few per second, not per request) and the response-side
//! writes the bench never triggers (no control or signal headers come back).
//!
//! Why: "augur over empty filter" mixes what Envoy's V8 host spends on the
//! calls any such filter must make (a decision has to reach the route table and
//! the app as headers, the record the access log) with augur's own work in the
//! VM; `host calls over empty filter us:` is the first, `augur over host calls
//! us:` the second.
//!
//! Configuration: `{"new": {"headers": [["x-augur-stack", "new"], …], "record": "…"},
//! "old": {…}, "new_share": 0.5}`.
//!
//! `cargo build --profile wasm --target wasm32-wasip1 --example host_calls_filter`

#[cfg(target_arch = "wasm32")]
mod filter {
    use std::cell::Cell;
    use std::rc::Rc;

    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};

    /// What the filter writes on one request.
    #[derive(Default, serde::Deserialize)]
    struct Writes {
        #[serde(default)]
        headers: Vec<(String, String)>,
        #[serde(default)]
        record: String,
    }

    #[derive(Default, serde::Deserialize)]
    struct Config {
        #[serde(default)]
        new: Writes,
        #[serde(default)]
        old: Writes,
        #[serde(default)]
        new_share: f64,
    }

    /// The configuration and a running share: request i takes the new-stack
    /// writes when ⌊(i + 1)·share⌋ > ⌊i·share⌋ (evenly spread, no draw).
    struct Shared {
        config: Config,
        owed: Cell<f64>,
    }

    impl Shared {
        fn next(&self) -> &Writes {
            let owed = self.owed.get() + self.config.new_share;
            if owed >= 1.0 {
                self.owed.set(owed - 1.0);
                &self.config.new
            } else {
                self.owed.set(owed);
                &self.config.old
            }
        }
    }

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
            Box::new(FloorRoot { shared: Rc::new(Shared { config: Config::default(), owed: Cell::new(0.0) }) })
        });
    }}

    // The ABI calls themselves, as `src/abi.rs` declares them (the SDK's
    // wrappers allocate and copy on their own, which augur does not pay).
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: u32,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    }

    const REQUEST_HEADERS: u32 = 0;
    const RESPONSE_HEADERS: u32 = 2;

    /// Reads a header map and frees the host's buffer, as augur does before
    /// parsing it.
    fn read_map(map_type: u32) {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: out-pointers to locals.
        let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
        if status == 0 && !data.is_null() && size > 0 {
            // SAFETY: the host allocated `size` bytes through the SDK's allocator (src/abi.rs).
            drop(unsafe { Vec::from_raw_parts(data, size, size) });
        }
    }

    fn now() -> u64 {
        let mut t = 0u64;
        // SAFETY: out-pointer to a local.
        unsafe { proxy_get_current_time_nanoseconds(&mut t) };
        t
    }

    struct FloorRoot {
        shared: Rc<Shared>,
    }

    impl Context for FloorRoot {}

    impl RootContext for FloorRoot {
        fn on_configure(&mut self, _size: usize) -> bool {
            let bytes = self.get_plugin_configuration().unwrap_or_default();
            match serde_json::from_slice::<Config>(&bytes) {
                Ok(config) => {
                    self.shared = Rc::new(Shared { config, owed: Cell::new(0.0) });
                    true
                }
                Err(e) => {
                    log::error!("host_calls_filter: configuration refused: {e}");
                    false
                }
            }
        }
        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(FloorStream { shared: self.shared.clone(), started: 0 }))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct FloorStream {
        shared: Rc<Shared>,
        started: u64,
    }

    impl Context for FloorStream {}

    impl HttpContext for FloorStream {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            self.started = now();
            read_map(REQUEST_HEADERS);
            let writes = self.shared.next();
            for (k, v) in &writes.headers {
                // SAFETY: pointers and lengths of live strings; the host copies them.
                unsafe {
                    proxy_replace_header_map_value(REQUEST_HEADERS, k.as_ptr(), k.len(), v.as_ptr(), v.len())
                };
            }
            let (name, record) = ("augur_decision", &writes.record);
            // SAFETY: as above.
            unsafe { proxy_set_property(name.as_ptr(), name.len(), record.as_ptr(), record.len()) };
            Action::Continue
        }
        fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            read_map(RESPONSE_HEADERS);
            let _latency = now().saturating_sub(self.started);
            Action::Continue
        }
    }
}
