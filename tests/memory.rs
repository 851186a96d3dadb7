//! A short run of `make memory` (the `memory` benchmark, `sg_integration::memory`): a few
//! thousand distinct keys through bare Envoy, one no-op Wasm filter and the whole bundle,
//! and one micro-cache slot configuration. Asserts what the run must show (every key sent
//! once and answered, the samples taken, the bundle's Wasm memories found, every filter's
//! key space reached, the slots filled), never how fast it went or how much memory anything
//! took: the figures are `make memory`'s.

use sg_integration::memory::{self, CacheVariant, Front, MemoryConfig};

#[test]
fn memory_run_answers_every_key_and_samples() {
    let cfg = MemoryConfig {
        keys: 3_000,
        checkpoints: vec![1_000],
        settle_s: 1,
        connections: 16,
        stage_timeout_s: 40,
        cache: vec![CacheVariant::new("bundle", 64, 65_536)],
        cache_keys: 1_000,
        ..MemoryConfig::default()
    };
    let r = memory::run(&cfg, |l| eprintln!("{l}")).unwrap_or_else(|e| panic!("memory run: {e}"));
    let md = memory::markdown(&r, "memory (test)");
    eprintln!("{md}");

    let fronts: Vec<Front> = r.runs.iter().map(|x| x.front).collect();
    assert_eq!(fronts, Front::ALL.to_vec());
    for run in &r.runs {
        let name = run.front.name();
        let t = &run.traffic;
        assert!(run.alive, "{name}: Envoy died");
        assert_eq!(t.planned, cfg.keys, "{name}: {t:?}");
        assert_eq!(t.answered, cfg.keys, "{name}: every key answered: {t:?}");
        assert_eq!(t.s2xx, cfg.keys, "{name}: every key answered 2xx: {t:?}");
        assert_eq!(t.stalled_threads, 0, "{name}: {t:?}");
        // start, 1,000 keys, 3,000 keys, settled
        let at: Vec<&str> = run.samples.iter().map(|s| s.at.as_str()).collect();
        assert_eq!(
            at,
            ["start", "1,000 keys", "3,000 keys", "settled 1 s"],
            "{name}"
        );
        for s in &run.samples {
            assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{name}: {s:?}");
            assert!(s.heap_allocated > 0 && s.heap_size > 0, "{name}: {s:?}");
        }
        assert_eq!(run.samples.last().map(|s| s.keys), Some(cfg.keys));
        let wasm = run.samples.iter().map(|s| s.wasm_memories).max();
        match run.front {
            Front::Bare => assert_eq!(wasm, Some(0), "{name}: no Wasm, no Wasm memory"),
            _ => {
                for s in &run.samples {
                    assert!(s.wasm_memories > 0 && s.wasm_size_kib > 0, "{name}: {s:?}");
                }
            }
        }
    }
    let bundle = r.runs.iter().find(|x| x.front == Front::Bundle).unwrap();
    let noop = r.runs.iter().find(|x| x.front == Front::Noop).unwrap();
    assert!(
        bundle.samples[0].wasm_memories > noop.samples[0].wasm_memories,
        "the bundle has more Wasm VMs than one filter"
    );
    for k in [
        "hotkey.post_view.seen",
        "ratelimit.per_blog.allowed",
        "ratelimit.global.allowed",
        "simplepage.post_list_cached.diverted_always",
        "simplepage.cache_fill",
        "sli.inbound requests (latency_total)",
    ] {
        assert!(
            bundle.filters.get(k).copied().unwrap_or(0) > 0,
            "{k}: {:?}",
            bundle.filters
        );
    }
    assert_eq!(bundle.filters.get("ratelimit.per_blog.rejected"), Some(&0));

    assert_eq!(r.cache.len(), 1);
    let c = &r.cache[0];
    assert!(c.alive);
    assert_eq!(c.traffic.answered, cfg.cache_keys, "{:?}", c.traffic);
    assert_eq!(c.samples.len(), 3);
    assert!(c.cache_fill > 0 && c.cache_bytes > 0, "{c:?}");
    assert!(c.cache_bytes as u64 <= c.cap_bytes, "{c:?}");
    assert!(c.backend_requests > 0);

    assert!(md.contains("## Memory: 3,000 distinct keys"));
    assert!(md.contains("| bundle | settled 1 s |"));
    assert!(md.contains("### Micro-cache slot configurations"));
}
