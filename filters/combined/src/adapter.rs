//! The proxy-wasm adapter: `filter::Combined` is a `sg_core::host::Plugin`, and
//! `sg_core::wasm::install` forwards every callback to it with the real host.

proxy_wasm::main! {{
    sg_core::wasm::install::<crate::filter::Combined>(proxy_wasm::types::LogLevel::Info);
}}
