//! A proxy-wasm filter that does nothing but exist: benchmarks compare every spikeguard
//! filter with it, because it is the floor any Wasm filter pays (VM entry per callback).

#[cfg(target_arch = "wasm32")]
mod adapter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
    }}

    struct NoopRoot;
    impl Context for NoopRoot {}
    impl RootContext for NoopRoot {
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Noop))
        }
    }

    struct Noop;
    impl Context for Noop {}
    impl HttpContext for Noop {
        fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
            Action::Continue
        }
        fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
            Action::Continue
        }
    }
}
