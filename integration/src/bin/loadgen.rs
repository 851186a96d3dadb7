//! Open-loop load generator; prints the report as JSON.
//!
//! ```text
//! loadgen --target http://127.0.0.1:10000 --rate 200 --duration-ms 5000 \
//!     --path "/PostView?blogId={key}&logNo=1" --zipf-n 1000 --zipf-s 1.0 \
//!     [--hot key=share]... [--unique] [--header "k: v"]... [--key-prefix k] \
//!     [--max-in-flight N] [--timeout-ms N] [--seed N]
//! ```

use std::process::ExitCode;

use sg_integration::loadgen::{run, LoadConfig};

const USAGE: &str = "usage: loadgen --target URL [--rate N] [--duration-ms N] [--path TEMPLATE] \
[--zipf-n N] [--zipf-s S] [--hot key=share]... [--unique] [--header \"k: v\"]... \
[--key-prefix P] [--max-in-flight N] [--timeout-ms N] [--seed N]";

fn parse() -> Result<LoadConfig, String> {
    let mut cfg = LoadConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "-h" | "--help" => return Err(USAGE.to_string()),
            "--unique" => {
                cfg.keys.unique = true;
                continue;
            }
            _ => {}
        }
        let value = args
            .next()
            .ok_or_else(|| format!("missing value for {flag}\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("bad value for {flag}: {value}: {e}");
        match flag.as_str() {
            "--target" => cfg.target = value.clone(),
            "--rate" => cfg.rate_rps = value.parse().map_err(|e| bad(&e))?,
            "--duration-ms" => cfg.duration_ms = value.parse().map_err(|e| bad(&e))?,
            "--path" => cfg.path_template = value.clone(),
            "--zipf-n" => cfg.keys.zipf_n = value.parse().map_err(|e| bad(&e))?,
            "--zipf-s" => cfg.keys.zipf_s = value.parse().map_err(|e| bad(&e))?,
            "--key-prefix" => cfg.keys.key_prefix = value.clone(),
            "--seed" => cfg.keys.seed = value.parse().map_err(|e| bad(&e))?,
            "--max-in-flight" => cfg.max_in_flight = value.parse().map_err(|e| bad(&e))?,
            "--timeout-ms" => cfg.timeout_ms = value.parse().map_err(|e| bad(&e))?,
            "--hot" => {
                let (k, s) = value
                    .rsplit_once('=')
                    .ok_or_else(|| bad(&"expected key=share"))?;
                let share: f64 = s.parse().map_err(|e| bad(&e))?;
                cfg.keys.hot.push((k.to_string(), share));
            }
            "--header" => {
                let (k, v) = value
                    .split_once(':')
                    .ok_or_else(|| bad(&"expected \"name: value\""))?;
                cfg.headers
                    .push((k.trim().to_string(), v.trim().to_string()));
            }
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let cfg = match parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&cfg) {
        Ok(report) => match serde_json::to_string_pretty(&report) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadgen: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
