//! A shortened run of the spike drill (`make drill`, docs/DRILL.md): every configuration
//! with 2 s phases at a modest rate. Checks the report's shape and the facts that cannot
//! depend on the machine's speed; the figures themselves come from `make drill`.

use sg_integration::drill::{self, DrillConfig, PHASES};

#[test]
fn drill_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DrillConfig {
        seconds_per_phase: 2.0,
        baseline_rps: 40.0,
        // The app serves 3x the baseline: 3 workers x 25 ms = 120 pages/s.
        workers: 3,
        spike: 28.0,
        hot_keys: 3,
        ..DrillConfig::default()
    };
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
