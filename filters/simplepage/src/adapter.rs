//! The proxy-wasm adapter for `simplepage`: forwards each callback to `filter::Filter`
//! (root side) and `stream` (request and response side) with the real host.

use crate::filter::{Filter, Periodic};
use crate::stream::Stream;
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

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            filter: self.filter.as_ref().map(|(f, _)| f.clone()),
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

    fn on_http_response_headers(&mut self, _n: usize, eos: bool) -> Action {
        match &self.filter {
            Some(f) => action(f.on_response_headers(&WasmHost, &mut self.s, eos)),
            None => Action::Continue,
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, eos: bool) -> Action {
        match &self.filter {
            Some(f) => action(f.on_response_body(&WasmHost, &mut self.s, body_size, eos)),
            None => Action::Continue,
        }
    }

    fn on_log(&mut self) {
        if let Some(f) = &self.filter {
            f.on_log(&WasmHost, &mut self.s);
        }
    }
}
