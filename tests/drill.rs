//! A shortened run of the spike drill (`make drill`, docs/DRILL.md): every configuration
//! with 2 s phases at a modest rate. Checks the report's shape and the facts that cannot
//! depend on the machine's speed; the figures themselves come from `make drill`.

use sg_integration::drill::{self, ApiFailure, DrillConfig, Protection, PHASES};

/// The smoke runs' drill: 2 s phases, a 40 req/s baseline, 28x on 3 hot keys; the app
/// serves 3x the baseline (3 workers x 25 ms = 120 pages/s).
fn smoke() -> DrillConfig {
    DrillConfig {
        seconds_per_phase: 2.0,
        baseline_rps: 40.0,
        workers: 3,
        spike: 28.0,
        hot_keys: 3,
        ..DrillConfig::default()
    }
}

#[test]
fn drill_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = smoke();
    let report = drill::run(&cfg, |m| eprintln!("{m}")).unwrap();
    let table = drill::table(&report);
    eprintln!("{table}");
    let json_path = dir.path().join("drill.json");
    let svg_path = dir.path().join("drill.svg");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    std::fs::write(&svg_path, drill::svg(&report)).unwrap();

    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let configs = v["configs"].as_array().unwrap();
    let ids: Vec<&str> = configs.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["A", "B", "N", "C"]);
    for c in configs {
        let id = c["id"].as_str().unwrap();
        let phases = c["phases"].as_array().unwrap();
        let names: Vec<&str> = phases
            .iter()
            .map(|p| p["phase"].as_str().unwrap())
            .collect();
        assert_eq!(names, PHASES, "{id}");
        for p in phases {
            let name = p["phase"].as_str().unwrap();
            assert!(p["normal"]["requests"].as_u64().unwrap() > 0, "{id} {name}");
            assert!(p["normal"]["attempts"].as_u64().unwrap() > 0, "{id} {name}");
        }
        assert!(phases[1]["hot"]["requests"].as_u64().unwrap() > 0, "{id}");
        assert!(!c["targets"].as_array().unwrap().is_empty(), "{id}");
        assert!(!c["timeline"].as_array().unwrap().is_empty(), "{id}");
    }
    // (A): the spike (28x the baseline at an app that serves 3x) fails requests, and the
    // clients retry them.
    assert!(
        configs[0]["retries"].as_u64().unwrap() > 0,
        "no retries in (A)"
    );
    // (C): the app's workers are its capacity; what the bundle lets through never needs more.
    for p in configs[3]["phases"].as_array().unwrap() {
        let u = &p["upstream"];
        assert!(
            u["max_in_flight"].as_u64().unwrap() <= u["capacity_workers"].as_u64().unwrap(),
            "{u}"
        );
        assert_eq!(u["capacity_workers"].as_u64(), Some(3));
    }
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<?xml"), "{}", &svg[..svg.len().min(80)]);
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), 1);
    for id in ["(A)", "(B)", "(N)", "(C)"] {
        assert!(svg.contains(id), "{id} missing from the plot");
    }
    assert!(svg.contains("<polyline"));
}

/// `--api-fails`: the outbound API the pages call answers 503 to everything during the spike
/// phase. (A) has no breaker: the calls fail and so do the pages that made them. (C): the
/// breaker opens and answers the calls with its fallback, the pages render with it (a 200
/// marked `x-api: fallback`), and the breaker closes again once the API answers. The phases
/// are 2 s, the bundle's breaker waits 2 s once open: its first half-open comes after the
/// spike's end (the API healthy again) and before the drill's, whatever the machine's speed,
/// as long as the breaker opened in the spike's first 1.9 s (10 failed calls of ~30/s).
#[test]
fn drill_api_fails_smoke() {
    let cfg = DrillConfig {
        configs: vec![Protection::A, Protection::C],
        api_fails: Some(ApiFailure::Errors),
        ..smoke()
    };
    let report = drill::run(&cfg, |m| eprintln!("{m}")).unwrap();
    let table = drill::table(&report);
    eprintln!("{table}");
    assert!(table.contains("outbound API"), "{table}");
    let text = serde_json::to_string(&report).unwrap();
    let back: drill::DrillReport = serde_json::from_str(&text).unwrap();
    assert_eq!(back.configs.len(), 2);
    assert_eq!(back.settings.api_fails, Some(ApiFailure::Errors));
    let [a, c] = report.configs.as_slice() else {
        panic!("two configurations expected: {table}");
    };
    assert_eq!((a.id.as_str(), c.id.as_str()), ("A", "C"));
    for r in [a, c] {
        let failing: Vec<bool> = r.phases.iter().map(|p| p.api.failing).collect();
        assert_eq!(failing, [false, true, false], "{}", r.id);
        // Before the spike the API answers every call (PostView renders call it).
        let before = &r.phases[0].api;
        assert!(before.ok() > 0, "{} before: {before:?}", r.id);
        assert_eq!(before.errors(), 0, "{} before: {before:?}", r.id);
        assert!(before.api_received > 0, "{} before: {before:?}", r.id);
        assert!(
            r.phases[0]
                .normal
                .pages_by_api
                .get("ok")
                .copied()
                .unwrap_or(0)
                > 0
        );
    }
    // (A): no breaker; the calls reach the failing API and fail, and so do their pages.
    let sa = &a.phases[1];
    assert!(sa.api.errors() > 0, "A spike: {:?}", sa.api);
    assert_eq!(sa.api.fallback(), 0, "A spike: {:?}", sa.api);
    assert!(sa.api.breaker.is_empty(), "A spike: {:?}", sa.api);
    assert_eq!(
        sa.normal.pages_by_api.get("fallback"),
        None,
        "{:?}",
        sa.normal
    );
    // (C): the breaker opened, answered calls with its fallback without reaching the API,
    // and normal users' pages rendered with it.
    let sc = &c.phases[1];
    assert!(
        sc.api.breaker.get("opened").copied().unwrap_or(0) >= 1,
        "C spike: {:?}",
        sc.api
    );
    assert!(
        sc.api.breaker.get("not_permitted").copied().unwrap_or(0) > 0,
        "C spike: {:?}",
        sc.api
    );
    assert!(
        sc.api.outcomes.get("fallback_open").copied().unwrap_or(0) > 0,
        "C spike: {:?}",
        sc.api
    );
    assert!(sc.api.api_received < sc.api.calls, "C spike: {:?}", sc.api);
    assert!(
        sc.normal.pages_by_api.get("fallback").copied().unwrap_or(0) > 0,
        "C spike: {:?}",
        sc.normal
    );
    assert!(c.breaker_open_ms.is_some(), "C: breaker never seen open");
    // ... and closed again after the spike, letting calls through to the API.
    assert!(c.breaker_close_ms.is_some(), "C: breaker not closed again");
    let after = &c.phases[2].api;
    assert!(after.ok() > 0, "C after: {after:?}");
    assert!(c
        .targets
        .iter()
        .any(|t| t.name.contains("breaker") && t.met));
}
