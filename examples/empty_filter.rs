//! The floor for `make bench-e2e`: a proxy-wasm HTTP filter that does nothing
//! (a root context, one HTTP context per stream, `Continue` on request and
//! response headers), built with the filter's own profile, target and SIMD
//! flags. What Envoy spends on it per request is the cost of running *any*
//! wasm filter in V8; augur's own cost is what it spends above that
//! (`augur over empty filter us:` in the bench report).
//!
//! `cargo build --profile wasm --target wasm32-wasip1 --example empty_filter`

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(EmptyRoot) });
    }}

    struct EmptyRoot;

    impl Context for EmptyRoot {}

    impl RootContext for EmptyRoot {
        fn on_configure(&mut self, _size: usize) -> bool {
            true
        }
        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(EmptyStream))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct EmptyStream;

    impl Context for EmptyStream {}

    impl HttpContext for EmptyStream {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            Action::Continue
        }
        fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            Action::Continue
        }
    }
}
