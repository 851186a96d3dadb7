//! The proxy-wasm adapter: forwards each callback to `filter::Filter` with the real host.

use crate::filter::{Filter, Stream};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use sg_core::host::Flow;
use sg_core::wasm::WasmHost;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

fn action(f: Flow) -> Action {
    match f {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

#[derive(Default)]
struct Root {
    filter: Option<Rc<Filter>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(f) = Filter::configure(&WasmHost) else {
            return false;
        };
        if let Some(old) = &self.filter {
            old.m.flush(&WasmHost);
        }
        self.filter = Some(Rc::new(f));
        true
    }

    fn on_tick(&mut self) {
        if let Some(f) = &self.filter {
            f.on_tick(&WasmHost);
        }
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            filter: self.filter.clone(),
            s: Stream::new(id),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    filter: Option<Rc<Filter>>,
    s: Stream,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        match &self.filter {
            Some(f) => action(f.on_request(&WasmHost, &mut self.s)),
            None => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if let Some(f) = &self.filter {
            f.on_response(&WasmHost, &mut self.s);
        }
        Action::Continue
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Some(f) = &self.filter {
            f.on_done(&self.s);
        }
    }
}
