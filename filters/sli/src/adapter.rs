//! The proxy-wasm adapter for `sli`: `filter::Filter` is a `sg_core::host::Plugin`, and
//! `sg_core::wasm::install` forwards every callback to it with the real host.

proxy_wasm::main! {{
    sg_core::wasm::install::<crate::filter::Filter>(proxy_wasm::types::LogLevel::Info);
}}
