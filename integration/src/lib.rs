//! spikeguard test harness: Envoy launcher, demo upstream, load generator, HTTP client, waits.

pub mod alertmanager;
pub mod compose;
pub mod control;
pub mod drill;
pub mod envoy;
pub mod fleet;
pub mod fleetsim;
pub mod http;
pub mod loadgen;
pub mod memory;
pub mod nginx;
pub mod oci;
pub mod prometheus;
pub mod redis;
pub mod registry;
pub mod server;
pub mod slo;
pub mod soak;
pub mod upstream;
pub mod wait;

/// The first non-empty line a command prints (stdout, then stderr), after its last
/// `version: ` if any (`envoy --version` prints "\n<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL");
/// "?" when it cannot run. For the machine lines of the benchmark reports.
pub fn first_line(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().map(|o| [o.stdout, o.stderr].concat());
    let out = String::from_utf8_lossy(&out.unwrap_or_default()).into_owned();
    let line = out.lines().map(str::trim).find(|l| !l.is_empty());
    line.and_then(|l| l.rsplit("version: ").next())
        .unwrap_or("?")
        .to_string()
}
