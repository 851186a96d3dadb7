//! `make demo` runs: the demo binary, non-interactively (no terminal, `--no-hold`) and
//! shortened, exits by itself with status 0 after printing the live table, the hot key it
//! detected with the alert payload, and the summary of both runs. Asserts what the demo
//! prints, never how fast anything was: the figures are the demo's to show.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `target/release/demo`, next to this test's `deps/` directory (`make test-e2e` builds it
/// first, with `make build`), or `SG_DEMO_BIN`.
fn demo_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SG_DEMO_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join(format!("demo{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} missing: build it with `cargo build --release -p sg-integration` (make build)",
        bin.display()
    );
    bin
}

#[test]
fn demo_runs_non_interactively() {
    let out = Command::new(demo_bin())
        .args(["--seconds", "12", "--no-hold"])
        .env_remove("DEMO_HOLD")
        .env_remove("DEMO_SECONDS")
        .env_remove("DEMO_BREAKER")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n--- stderr ---\n{stderr}");
    assert!(out.status.success(), "demo exited with {}", out.status);

    // The live table of the protected run: its header, then a row a second. The run lasts
    // 12 s; rows are counted loosely (a row is printed once a second of wall time, so at
    // least 12 - 2 whatever the machine's speed, counting from the header on).
    let (_, protected) = stdout
        .split_once("2. spikeguard")
        .expect("the protected run's section");
    let table = protected
        .split_once("t s  offered")
        .map(|(_, t)| t)
        .expect("the live table's header");
    let rows = table
        .lines()
        .take_while(|l| !l.starts_with("hotkey named") && !l.starts_with("no hot-key"))
        .filter(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.len() >= 10 && cells[0].parse::<u64>().is_ok() && l.contains('|')
        })
        .count();
    assert!(rows >= 10, "{rows} live table rows in the protected run");

    // The hot key named, and the alert payload hotkey sent (Slack-compatible JSON).
    assert!(
        protected.contains("hot key detected") && protected.contains("\"emergency\""),
        "the hot key was not named"
    );
    let line = protected
        .lines()
        .find(|l| l.starts_with("hotkey named \"emergency\""))
        .expect("the detection line");
    let payload = line.split_once("alert payload: ").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(payload).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(
        text.contains("spikeguard hotkey") && text.contains("`emergency`"),
        "{text}"
    );

    // The summary, both runs side by side.
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("the same spike, side by side"))
        .expect("the summary header");
    assert!(summary.contains("no protection") && summary.contains("spikeguard"));
    for label in [
        "normal users answered 200",
        "normal users' p99 during the spike",
        "answered from the micro-cache",
        "hot key named after",
    ] {
        let row = stdout
            .lines()
            .map(str::trim_start)
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no summary row {label:?}"));
        // A value for each run.
        assert!(row[label.len()..].split_whitespace().count() >= 2, "{row}");
    }
    // The URLs left for the user, and the non-interactive exit.
    for url in ["Envoy admin", "status page", "demo app"] {
        assert!(stdout.contains(url), "no {url} URL");
    }
    assert!(stdout.contains("non-interactive: exiting"));
}
