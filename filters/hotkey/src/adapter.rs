//! The proxy-wasm adapter for `hotkey`: forwards each callback to `filter::Filter` with the
//! real host.

use crate::filter::{Filter, Periodic};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use sg_core::host::Flow;
use sg_core::wasm::WasmHost;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    filter: Option<(Rc<Filter>, Periodic)>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _h: usize, body_size: usize, _t: usize) {
        if let Some((f, p)) = self.filter.as_mut() {
            f.on_call_response(&WasmHost, p, token, body_size);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some((f, p)) = Filter::configure(&WasmHost) else {
            return false;
        };
        if let Some((old, _)) = &self.filter {
            old.m.flush(&WasmHost);
        }
        self.filter = Some((Rc::new(f), p));
        true
    }

    fn on_tick(&mut self) {
        if let Some((f, p)) = self.filter.as_mut() {
            f.on_tick(&WasmHost, p);
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            filter: self.filter.as_ref().map(|(f, _)| f.clone()),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    filter: Option<Rc<Filter>>,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        match self.filter.as_ref().map(|f| f.on_request(&WasmHost)) {
            Some(Flow::Pause) => Action::Pause,
            _ => Action::Continue,
        }
    }
}
