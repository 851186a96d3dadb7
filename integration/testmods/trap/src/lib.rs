//! TEST ONLY, never shipped (not in `make wasm`, the OCI images, envoy.yaml or deploy/): a
//! hostile neighbour for tests/neighbour.rs. Loaded as its own HTTP filter beside the bundle,
//! with the bundle's `vm_id` so that it shares the bundle's shared-data namespace (Envoy keys
//! shared data by `vm_id`; a different module is a different VM with the same namespace).
//!
//! Its JSON config (all optional):
//! - `trap_header`: a request carrying this header traps the VM (`panic` as the header's value
//!   panics, anything else executes `unreachable`).
//! - `tick_ms` with `on_tick`: actions run on every tick (`trap`, `garbage`, `cas`).
//! - `keys`: the shared-data keys `garbage` and `cas` work on (the bundle's `sg:` keys).
//! - `huge_bytes`: size of the "huge" garbage value (default 1 MiB).
//! - `fill`: `{"keys": N, "bytes": M, "prefix": P}`: N keys of M bytes under prefix P
//!   (`fill:N:M` overrides N and M).
//! - `cas_rounds`: rounds over `keys` of one `cas` action (default 10).
//! - `control_header` (default `x-neighbour`): a request with `<control_header>: <action>`
//!   (`ping`, `garbage[:variant]`, `fill`, `cas`, `trap[:panic]`) runs the action once and is
//!   answered by this filter itself, 200 with a JSON report
//!   (`{"action", "written", "failed", "cas_mismatch"}`), so a test knows what was done.

use serde::Deserialize;

/// The garbage variants, in the order `garbage` without a variant cycles through them.
pub const VARIANTS: [&str; 9] = [
    "random",
    "truncated",
    "version",
    "huge",
    "empty",
    "trailing",
    "ones",
    "zeros",
    "maxed",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub trap_header: Option<String>,
    #[serde(default)]
    pub tick_ms: u64,
    #[serde(default)]
    pub on_tick: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub huge_bytes: Option<usize>,
    #[serde(default)]
    pub fill: Option<Fill>,
    #[serde(default)]
    pub control_header: Option<String>,
    /// Rounds over `keys` of one `cas` action (default 10).
    #[serde(default)]
    pub cas_rounds: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fill {
    pub keys: u32,
    pub bytes: usize,
    #[serde(default = "fill_prefix")]
    pub prefix: String,
}

fn fill_prefix() -> String {
    "neighbour:fill:".into()
}

/// xorshift64*: the garbage needs no quality, only variety.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() >> 56) as u8).collect()
    }
}

/// The garbage of `variant` for a key whose current value is `cur`.
pub fn garbage(variant: &str, cur: Option<&[u8]>, huge: usize, rng: &mut Rng) -> Vec<u8> {
    let cur = cur.unwrap_or(&[]);
    match variant {
        "truncated" if cur.len() > 1 => cur.iter().take(cur.len() / 2).copied().collect(),
        "truncated" => rng.bytes(3),
        "version" => {
            let mut v = if cur.is_empty() {
                rng.bytes(32)
            } else {
                cur.to_vec()
            };
            if let Some(b) = v.first_mut() {
                *b = b.wrapping_add(1);
            }
            v
        }
        "huge" => {
            // Starts as the current value (a plausible header, version byte included).
            let mut v: Vec<u8> = cur.iter().take(16).copied().collect();
            let more = huge.saturating_sub(v.len());
            v.extend(rng.bytes(more));
            v
        }
        "empty" => Vec::new(),
        "trailing" => {
            let mut v = cur.to_vec();
            v.extend(rng.bytes(1000));
            v
        }
        "ones" => vec![0xFF; cur.len().max(64)],
        // The version byte kept, every count, length and number after it at its maximum.
        "maxed" => {
            let mut v = vec![0xFF; cur.len().max(64)];
            if let (Some(b), Some(c)) = (v.first_mut(), cur.first()) {
                *b = *c;
            }
            v
        }
        "zeros" => vec![0; cur.len().max(64)],
        _ => {
            let n = 1 + (rng.next_u64() % 64) as usize;
            rng.bytes(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_differs_from_the_current_value() {
        let cur = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let mut rng = Rng::new(7);
        for v in VARIANTS {
            let g = garbage(v, Some(&cur), 4096, &mut rng);
            assert_ne!(g, cur, "{v}");
        }
        assert_eq!(garbage("huge", Some(&cur), 4096, &mut rng).len(), 4096);
        assert_eq!(garbage("truncated", Some(&cur), 0, &mut rng), [1, 2, 3, 4]);
        assert_eq!(garbage("version", Some(&cur), 0, &mut rng)[0], 2);
    }

    #[test]
    fn config_parses() {
        let c: Config = serde_json::from_str(
            r#"{"trap_header":"x-trap","tick_ms":100,"on_tick":["cas"],"keys":["sg:a"],
                "fill":{"keys":2,"bytes":8}}"#,
        )
        .unwrap_or_default();
        assert_eq!(c.keys, ["sg:a"]);
        assert_eq!(c.fill.map(|f| f.prefix), Some(fill_prefix()));
    }
}

#[cfg(target_arch = "wasm32")]
mod adapter {
    use super::{garbage, Config, Rng, VARIANTS};
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel, Status};
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
            Box::new(Root { cfg: Rc::new(Config::default()), state: Rc::default() })
        });
    }}

    #[derive(Default)]
    struct State {
        round: usize,
        rng: Option<Rng>,
    }

    struct Root {
        cfg: Rc<Config>,
        state: Rc<RefCell<State>>,
    }

    #[derive(Default)]
    struct Report {
        written: u64,
        failed: u64,
        cas_mismatch: u64,
    }

    impl Report {
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) {
            match hostcalls::set_shared_data(key, Some(value), cas) {
                Ok(()) => self.written += 1,
                Err(Status::CasMismatch) => self.cas_mismatch += 1,
                Err(_) => self.failed += 1,
            }
        }
    }

    fn trap(how: &str) -> ! {
        proxy_wasm::hostcalls::log(LogLevel::Warn, &format!("neighbour: trapping ({how})")).ok();
        if how == "panic" {
            #[allow(clippy::panic)]
            {
                panic!("neighbour: deliberate panic")
            }
        }
        core::arch::wasm32::unreachable()
    }

    fn now_ns() -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    }

    fn act(cfg: &Config, state: &RefCell<State>, action: &str) -> Report {
        let mut r = Report::default();
        let mut st = state.borrow_mut();
        let round = st.round;
        st.round += 1;
        let rng = st.rng.get_or_insert_with(|| Rng::new(now_ns()));
        let (name, variant) = action.split_once(':').unwrap_or((action, ""));
        match name {
            "garbage" => {
                for (i, key) in cfg.keys.iter().enumerate() {
                    let v = if variant.is_empty() {
                        VARIANTS
                            .get((round + i) % VARIANTS.len())
                            .copied()
                            .unwrap_or("random")
                    } else {
                        variant
                    };
                    let cur = hostcalls::get_shared_data(key).ok().and_then(|(b, _)| b);
                    let g = garbage(v, cur.as_deref(), cfg.huge_bytes.unwrap_or(1 << 20), rng);
                    r.set(key, &g, None);
                }
            }
            "cas" => {
                // Rewrites each key's own bytes (no change of meaning) with a fresh CAS: every
                // writer that read before this loses its compare-and-swap.
                for _ in 0..cfg.cas_rounds.unwrap_or(10) {
                    for key in &cfg.keys {
                        if let Ok((Some(b), cas)) = hostcalls::get_shared_data(key) {
                            r.set(key, &b, cas);
                        }
                    }
                }
            }
            "fill" => {
                if let Some(f) = &cfg.fill {
                    let mut over = variant.split(':').map(|x| x.parse::<usize>().ok());
                    let keys = over.next().flatten().unwrap_or(f.keys as usize);
                    let bytes = over.next().flatten().unwrap_or(f.bytes);
                    let value = rng.bytes(bytes);
                    for i in 0..keys {
                        r.set(&format!("{}{bytes}:{i}", f.prefix), &value, None);
                    }
                }
            }
            "ping" => {}
            "trap" => trap(variant),
            _ => r.failed += 1,
        }
        r
    }

    impl Context for Root {}
    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let Some(b) = self.get_plugin_configuration() else {
                return true;
            };
            match serde_json::from_slice::<Config>(&b) {
                Ok(c) => {
                    if c.tick_ms > 0 {
                        self.set_tick_period(Duration::from_millis(c.tick_ms));
                    }
                    self.cfg = Rc::new(c);
                    true
                }
                Err(e) => {
                    hostcalls::log(LogLevel::Error, &format!("neighbour: config: {e}")).ok();
                    false
                }
            }
        }
        fn on_tick(&mut self) {
            for a in &self.cfg.on_tick {
                act(&self.cfg, &self.state, a);
            }
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Http {
                cfg: self.cfg.clone(),
                state: self.state.clone(),
            }))
        }
    }

    struct Http {
        cfg: Rc<Config>,
        state: Rc<RefCell<State>>,
    }

    impl Context for Http {}
    impl HttpContext for Http {
        fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
            if let Some(h) = &self.cfg.trap_header {
                if let Some(v) = self.get_http_request_header(h) {
                    trap(&v);
                }
            }
            let control = self.cfg.control_header.as_deref().unwrap_or("x-neighbour");
            let Some(action) = self.get_http_request_header(control) else {
                return Action::Continue;
            };
            let r = act(&self.cfg, &self.state, &action);
            let body = format!(
                "{{\"action\":\"{}\",\"written\":{},\"failed\":{},\"cas_mismatch\":{}}}",
                action.replace(['"', '\\'], ""),
                r.written,
                r.failed,
                r.cas_mismatch
            );
            self.send_http_response(200, vec![(control, "done")], Some(body.as_bytes()));
            Action::Pause
        }
    }
}
