//! The observability artefacts (docs/OBSERVABILITY.md): generated rules and dashboards match
//! config/slo.yaml; promtool checks and unit tests (every alert firing and not firing); the
//! Alertmanager config delivers a Slack-shaped message through a real Alertmanager; every
//! dashboard expression runs on a real Prometheus scraping an exposition of the metric
//! contract (docs/SLI.md) with the generated rules loaded; the HPA and its adapter rule.
//!
//! Needs Debian's `prometheus` (prometheus, promtool) and `prometheus-alertmanager`
//! (prometheus-alertmanager, amtool): `make apt`. No Envoy: the exposition is built here.

use serde_json::{json, Value};
use sg_integration::alertmanager::{amtool_check_config, Alertmanager, WebhookReceiver};
use sg_integration::prometheus::{promtool, Exporter, Prometheus};
use sg_integration::slo;
use sg_integration::wait;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Generous bound for anything a real process has to do (start, scrape, evaluate, notify).
const PATIENCE: Duration = Duration::from_secs(90);

fn root() -> PathBuf {
    slo::repo_root()
}

fn files_in(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no *.{ext} in {dir}");
    v
}

fn rule_files() -> Vec<PathBuf> {
    files_in(slo::RULES_DIR, "yml")
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    files_in(slo::DASHBOARDS_DIR, "json")
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, v)
        })
        .collect()
}

fn yaml(p: &Path) -> Value {
    slo::read_yaml(p).unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// 1. generated == committed
// ---------------------------------------------------------------------------------------------

#[test]
fn generated_rules_and_dashboards_equal_the_committed_files() {
    match slo::check(&root()) {
        Ok(Ok(())) => {}
        Ok(Err(diffs)) => panic!(
            "committed files differ from `make slo` output:\n{}",
            diffs.join("\n")
        ),
        Err(e) => panic!("slo generator: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 2. promtool
// ---------------------------------------------------------------------------------------------

fn must(r: std::io::Result<Result<String, String>>) -> String {
    match r {
        Ok(Ok(out)) => out,
        Ok(Err(out)) => panic!("{out}"),
        Err(e) => panic!("cannot run the tool (make apt installs it): {e}"),
    }
}

#[test]
fn promtool_checks_the_config_and_rules_and_runs_the_unit_tests() {
    let dir = root().join("config/prometheus");
    must(promtool(&["check", "config", "prometheus.yml"], &dir));
    for f in rule_files() {
        let out = must(promtool(
            &["check", "rules", &f.display().to_string()],
            &dir,
        ));
        assert!(out.contains("SUCCESS"), "{out}");
    }
    for t in files_in("config/prometheus/tests", "yml") {
        let out = must(promtool(&["test", "rules", &t.display().to_string()], &dir));
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn every_alert_has_a_promtool_case_firing_and_one_not_firing() {
    let mut alerts = BTreeSet::new();
    for f in rule_files() {
        alerts.extend(slo::rule_names(&yaml(&f)).0);
    }
    assert!(alerts.len() >= 10, "alerts found: {alerts:?}");
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for t in files_in("config/prometheus/tests", "yml") {
        let v = yaml(&t);
        for case in v["tests"].as_array().into_iter().flatten() {
            for a in case["alert_rule_test"].as_array().into_iter().flatten() {
                let name = a["alertname"].as_str().unwrap_or_default().to_string();
                let exp = a["exp_alerts"].as_array().map(Vec::len).unwrap_or(0);
                if exp > 0 {
                    firing.insert(name);
                } else {
                    silent.insert(name);
                }
            }
        }
    }
    let not_firing: Vec<_> = alerts.difference(&firing).collect();
    let not_silent: Vec<_> = alerts.difference(&silent).collect();
    assert!(
        not_firing.is_empty(),
        "alerts with no promtool case where they fire: {not_firing:?}"
    );
    assert!(
        not_silent.is_empty(),
        "alerts with no promtool case where they stay silent (exp_alerts: []): {not_silent:?}"
    );
    let unknown: Vec<_> = firing
        .union(&silent)
        .filter(|a| !alerts.contains(*a))
        .collect();
    assert!(
        unknown.is_empty(),
        "promtool cases for alerts the rules do not have: {unknown:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Alertmanager
// ---------------------------------------------------------------------------------------------

const WEBHOOK_PLACEHOLDER: &str = "https://hooks.slack.com/services/REPLACE/WITH/YOURS";

#[test]
fn alertmanager_routes_protection_and_slo_alerts_to_the_chat_webhook() {
    let committed = root().join("config/alertmanager/alertmanager.yml");
    must(amtool_check_config(&committed));
    let text = std::fs::read_to_string(&committed).unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains(WEBHOOK_PLACEHOLDER), "placeholder URL moved");

    let hook = WebhookReceiver::start().unwrap_or_else(|e| panic!("receiver: {e}"));
    let config = text
        .replace(WEBHOOK_PLACEHOLDER, &hook.url("/slack"))
        .replace("group_wait: 30s", "group_wait: 1s")
        .replace("group_wait: 10s", "group_wait: 1s");
    let am = Alertmanager::start(&config).unwrap_or_else(|e| panic!("alertmanager: {e}"));

    am.post_alerts(&json!([
        {
            "labels": {"alertname": "SpikeguardShedding", "severity": "chat",
                       "category": "protection", "sg_rule": "post_view"},
            "annotations": {"summary": "hotkey is shedding requests of rule post_view"},
        },
        {
            "labels": {"alertname": "SpikeguardSLOBurnRatePage", "severity": "page",
                       "category": "slo", "page": "PostView", "direction": "inbound",
                       "sli": "availability"},
            "annotations": {"summary": "PostView (inbound) burns its availability budget"},
        },
    ]))
    .unwrap_or_else(|e| panic!("{e}: {}", am.log()));

    let body_of = |alertname: &str| -> Value {
        let r = hook
            .wait_for(&format!("a chat message for {alertname}"), PATIENCE, |r| {
                r.body.contains(alertname)
            })
            .unwrap_or_else(|e| panic!("{e}\nalertmanager log:\n{}", am.log()));
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/slack");
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
    };

    let shed = body_of("SpikeguardShedding");
    assert_eq!(shed["channel"], "#spikeguard-protection", "{shed}");
    assert_eq!(shed["username"], "spikeguard", "{shed}");
    let att = &shed["attachments"][0];
    assert_eq!(
        att["title"], "[FIRING] SpikeguardShedding (post_view)",
        "{shed}"
    );
    let t = att["text"].as_str().unwrap_or_default();
    assert!(
        t.contains("*SpikeguardShedding* severity=chat rule=post_view"),
        "{t}"
    );
    assert!(
        t.contains("hotkey is shedding requests of rule post_view"),
        "{t}"
    );
    assert_eq!(att["color"], "warning", "{shed}");

    let burn = body_of("SpikeguardSLOBurnRatePage");
    assert_eq!(burn["channel"], "#spikeguard-slo", "{burn}");
    let att = &burn["attachments"][0];
    assert_eq!(
        att["title"], "[FIRING] SpikeguardSLOBurnRatePage PostView (inbound)",
        "{burn}"
    );
    let t = att["text"].as_str().unwrap_or_default();
    assert!(
        t.contains("page=PostView direction=inbound sli=availability"),
        "{t}"
    );
    assert_eq!(att["color"], "danger", "{burn}");
}

// ---------------------------------------------------------------------------------------------
// 4. Prometheus: the dashboards' expressions and the recording rules on real data
// ---------------------------------------------------------------------------------------------

const PAGES: [(&str, &str); 5] = [
    ("PostView", "inbound"),
    ("PostList", "inbound"),
    ("other", "inbound"),
    ("api", "inbound"),
    ("outbound_api", "outbound"),
];
const LE: [&str; 16] = [
    "5", "10", "25", "50", "100", "200", "300", "500", "750", "1000", "2000", "3000", "5000",
    "10000", "30000", "+Inf",
];
/// Share of requests at or under each `LE` edge (cumulative).
const SHARE: [f64; 16] = [
    0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.8, 0.88, 0.92, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0,
];

/// An Envoy-like /stats/prometheus text for scrape `n`: every series of docs/SLI.md for four
/// page types, several codes, actions and buckets, plus the sg_* and envoy_* stats the rules
/// and dashboards read. Counters grow with `n` (k requests per scrape per page).
fn exposition(n: u64) -> String {
    let n = n as f64 + 1.0;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, lines: Vec<(String, f64)>| {
        out.push_str(&format!("# TYPE {name} {kind}\n"));
        for (labels, v) in lines {
            out.push_str(&format!("{name}{{{labels}}} {v}\n"));
        }
    };
    let codes = [
        ("200", "2xx", "none", 0.86),
        ("200", "2xx", "cache", 0.05),
        ("200", "2xx", "diverted", 0.02),
        ("429", "4xx", "ratelimit", 0.02),
        ("499", "4xx", "none", 0.01),
        ("500", "5xx", "none", 0.01),
        ("503", "5xx", "shed", 0.02),
        ("503", "5xx", "breaker", 0.01),
    ];
    let per_scrape = 100.0;
    let mut requests = Vec::new();
    let mut buckets = Vec::new();
    let mut up_buckets = Vec::new();
    let mut sums = Vec::new();
    let mut counts = Vec::new();
    let mut up_sums = Vec::new();
    let mut up_counts = Vec::new();
    let mut good = Vec::new();
    let mut total = Vec::new();
    let mut bytes = Vec::new();
    for (page, dir) in PAGES {
        let pd = format!("page=\"{page}\",direction=\"{dir}\"");
        let k = per_scrape * n;
        for (code, class, action, share) in codes {
            requests.push((
                format!("{pd},code=\"{code}\",class=\"{class}\",action=\"{action}\""),
                (k * share).round(),
            ));
        }
        for (le, share) in LE.iter().zip(SHARE) {
            buckets.push((format!("{pd},le=\"{le}\""), (k * share).round()));
            up_buckets.push((format!("{pd},le=\"{le}\""), (0.9 * k * share).round()));
        }
        sums.push((pd.clone(), k * 180.0));
        counts.push((pd.clone(), k));
        up_sums.push((pd.clone(), 0.9 * k * 150.0));
        up_counts.push((pd.clone(), (0.9 * k).round()));
        for (slo, share) in [("200", 0.7), ("1000", 0.95), ("3000", 0.98), ("5000", 0.99)] {
            good.push((format!("{pd},slo=\"{slo}\""), (k * share).round()));
        }
        total.push((pd.clone(), k));
        bytes.push((pd, k * 2048.0));
    }
    family("spikeguard_requests_total", "counter", requests);
    family("spikeguard_request_duration_ms_bucket", "counter", buckets);
    family("spikeguard_request_duration_ms_sum", "counter", sums);
    family("spikeguard_request_duration_ms_count", "counter", counts);
    family(
        "spikeguard_upstream_duration_ms_bucket",
        "counter",
        up_buckets,
    );
    family("spikeguard_upstream_duration_ms_sum", "counter", up_sums);
    family(
        "spikeguard_upstream_duration_ms_count",
        "counter",
        up_counts,
    );
    family("spikeguard_latency_good_total", "counter", good);
    family("spikeguard_latency_total", "counter", total);
    family("spikeguard_response_bytes_total", "counter", bytes);

    let rule = |r: &str, v: f64| vec![(format!("sg_rule=\"{r}\""), v)];
    let c = |k: f64| (k * n).round();
    family("sg_hotkey_shed", "counter", rule("post_view", c(3.0)));
    family("sg_hotkey_blocked", "counter", rule("post_view", c(1.0)));
    family("sg_hotkey_hot_keys", "gauge", vec![(String::new(), 1.0)]);
    for reason in ["always", "breaker", "hotkey", "operator", "overload"] {
        family(
            &format!("sg_simplepage_diverted_{reason}"),
            "counter",
            vec![
                ("sg_rule=\"post_view\"".into(), c(2.0)),
                ("sg_rule=\"other_pages\"".into(), c(1.0)),
            ],
        );
    }
    for what in ["hit", "miss", "stale", "stale_if_error"] {
        family(
            &format!("sg_simplepage_cache_{what}"),
            "counter",
            vec![(String::new(), c(5.0))],
        );
    }
    for what in ["rejected", "delayed", "allowed"] {
        family(
            &format!("sg_ratelimit_{what}"),
            "counter",
            vec![
                ("sg_rule=\"per_blog\"".into(), c(2.0)),
                ("sg_rule=\"global\"".into(), c(1.0)),
            ],
        );
    }
    family("sg_breaker_state", "gauge", rule("outbound_api", 1.0));
    family("sg_breaker_open_apis", "gauge", vec![(String::new(), 1.0)]);
    for what in [
        "opened",
        "not_permitted",
        "failure",
        "slow",
        "bulkhead_rejected",
    ] {
        family(
            &format!("sg_breaker_{what}"),
            "counter",
            rule("outbound_api", c(1.0)),
        );
    }
    family(
        "envoy_http_downstream_rq_completed",
        "counter",
        vec![
            (
                "envoy_http_conn_manager_prefix=\"ingress\"".into(),
                c(3.0 * per_scrape),
            ),
            (
                "envoy_http_conn_manager_prefix=\"egress\"".into(),
                c(per_scrape),
            ),
        ],
    );
    for p in [
        "sli",
        "sli_egress",
        "hotkey",
        "simplepage",
        "ratelimit",
        "breaker",
    ] {
        for s in [
            "vm_reload",
            "vm_reload_backoff",
            "vm_reload_failure",
            "vm_reload_success",
        ] {
            family(
                &format!("envoy_wasm_{p}_{s}"),
                "counter",
                vec![(String::new(), 0.0)],
            );
        }
    }
    family(
        "envoy_wasm_envoy_wasm_runtime_v8_active",
        "gauge",
        vec![(String::new(), 12.0)],
    );
    out
}

/// The committed prometheus.yml with 1 s scrapes and evaluations of the exporter, no
/// Alertmanager.
fn test_prometheus_config(exporter_port: u16) -> String {
    let mut c = yaml(&root().join("config/prometheus/prometheus.yml"));
    c["global"]["scrape_interval"] = json!("1s");
    c["global"]["evaluation_interval"] = json!("1s");
    if let Some(m) = c.as_object_mut() {
        m.remove("alerting");
    }
    let jobs = c["scrape_configs"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("prometheus.yml: no scrape_configs"));
    let envoy = jobs
        .iter_mut()
        .find(|j| j["job_name"] == "envoy")
        .unwrap_or_else(|| panic!("prometheus.yml: no job envoy"));
    assert_eq!(envoy["metrics_path"], "/stats/prometheus");
    envoy["scrape_interval"] = json!("1s");
    envoy["scrape_timeout"] = json!("1s");
    envoy["static_configs"] = json!([{"targets": [format!("127.0.0.1:{exporter_port}")]}]);
    slo::to_yaml(&c).unwrap_or_else(|e| panic!("{e}"))
}

/// Replaces Grafana's interval macros and every template variable of the dashboard.
fn concrete(dash: &Value, expr: &str) -> String {
    let mut e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    let mut vars: Vec<String> = dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    vars.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for v in vars {
        e = e
            .replace(&format!("${{{v}}}"), ".*")
            .replace(&format!("${v}"), ".*");
    }
    // `$1` is label_replace's capture reference, not a variable (Grafana leaves a `$name` it
    // has no variable for as it is).
    let unreplaced = e
        .match_indices('$')
        .any(|(i, _)| !e[i + 1..].starts_with(|c: char| c.is_ascii_digit()));
    assert!(!unreplaced, "unreplaced variable in {e}");
    e
}

#[test]
fn dashboards_and_recording_rules_evaluate_on_a_real_prometheus() {
    let exporter = Exporter::start(exposition).unwrap_or_else(|e| panic!("exporter: {e}"));
    let prom = Prometheus::start(&test_prometheus_config(exporter.port()), &rule_files())
        .unwrap_or_else(|e| panic!("prometheus: {e}"));

    wait::until_true("3 scrapes of the exporter", PATIENCE, || {
        exporter.scrapes() >= 3
    });
    wait::eventually("the envoy target is up", PATIENCE, || {
        let t = prom.targets().map_err(|e| e.to_string())?;
        match t.iter().find(|t| t["labels"]["job"] == "envoy") {
            Some(t) if t["health"] == "up" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // Recording rules of both groups, including the one built on other recorded series.
    for series in [
        "spikeguard:requests:rate5m",
        "spikeguard:errors:ratio_rate5m",
        "spikeguard:request_duration_ms:p99_5m",
        "spikeguard:request_duration_ms:avg_5m",
        "spikeguard:slow_requests:rate1m",
        "spikeguard:slo_errors:ratio_rate1h",
        "spikeguard:slo_objective:ratio",
        "spikeguard:slo_error_budget_remaining:ratio",
    ] {
        wait::eventually(
            &format!("recorded series {series}"),
            PATIENCE,
            || match prom.query_result(series) {
                Ok(r) if !r.is_empty() => Ok(()),
                Ok(r) => Err(format!("empty {r:?}")),
                Err(e) => Err(e.to_string()),
            },
        );
    }
    // Every rule evaluated without error (e.g. no clashing label sets) and every alert rule
    // can be read.
    wait::eventually("every rule evaluated healthy", PATIENCE, || {
        let rules = prom.rules().map_err(|e| e.to_string())?;
        let bad: Vec<String> = rules
            .iter()
            .filter(|(_, r)| r["health"] != "ok")
            .map(|(g, r)| format!("{g}/{}: {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        if rules.len() > 40 && bad.is_empty() {
            Ok(())
        } else {
            Err(format!("{} rules, unhealthy: {bad:?}", rules.len()))
        }
    });
    // Values make sense: p99 of the fixed bucket shares is between the 3000 and 5000 edges
    // (histogram_quantile's interpolation can land a rounding error past an edge: 5000.000000000166).
    let p99 = prom
        .query_result("spikeguard:request_duration_ms:p99_5m{page=\"PostView\"}")
        .unwrap_or_else(|e| panic!("{e}"));
    let v: f64 = p99
        .first()
        .and_then(|s| s["value"][1].as_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    assert!((2999.999..=5000.001).contains(&v), "p99 {v}: {p99:?}");
    let ratio = prom
        .query_result("spikeguard:errors:ratio_rate5m{page=\"PostView\"}")
        .unwrap_or_else(|e| panic!("{e}"));
    let r: f64 = ratio
        .first()
        .and_then(|s| s["value"][1].as_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    assert!((r - 0.04).abs() < 0.005, "5xx ratio {r}: {ratio:?}");

    // Every expression of every dashboard: success, and a result (the exposition has every
    // series the dashboards read; only the firing-alerts panel may be empty).
    let mut checked = 0;
    let mut failures = Vec::new();
    for (path, dash) in dashboards() {
        let exprs = slo::dashboard_exprs(&dash);
        assert!(!exprs.is_empty(), "{}: no expressions", path.display());
        for (title, expr) in exprs {
            let e = concrete(&dash, &expr);
            let may_be_empty = e.contains("ALERTS{");
            let got = wait::try_eventually_every(
                &format!("{}: {title}: {e}", path.display()),
                PATIENCE,
                Duration::from_millis(500),
                || {
                    let v = prom.query(&e).map_err(|x| x.to_string())?;
                    if v["status"] != "success" {
                        return Err(v.to_string());
                    }
                    let n = v["data"]["result"].as_array().map(Vec::len).unwrap_or(0);
                    if n == 0 && !may_be_empty {
                        return Err(format!("empty result: {v}"));
                    }
                    Ok(n)
                },
            );
            match got {
                Ok(_) => checked += 1,
                Err(t) => failures.push(t.to_string()),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "dashboard expressions failing:\n{}",
        failures.join("\n")
    );
    assert!(checked >= 30, "only {checked} expressions");
}

#[test]
fn dashboards_have_units_a_datasource_variable_and_provisioning() {
    let ds_var = |d: &Value| {
        d["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| {
                v["type"] == "datasource" && v["query"] == "prometheus" && v["name"] == "datasource"
            })
    };
    let mut titles = BTreeSet::new();
    for (path, d) in dashboards() {
        let p = path.display();
        assert!(ds_var(&d), "{p}: no datasource template variable");
        titles.insert(d["title"].as_str().unwrap_or_default().to_string());
        let mut stack: Vec<&Value> = d["panels"].as_array().into_iter().flatten().collect();
        let mut ids = BTreeSet::new();
        while let Some(panel) = stack.pop() {
            assert!(ids.insert(panel["id"].as_u64()), "{p}: duplicate panel id");
            stack.extend(panel["panels"].as_array().into_iter().flatten());
            if panel["type"] == "row" {
                continue;
            }
            let title = &panel["title"];
            let unit = panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or("");
            assert!(!unit.is_empty(), "{p}: panel {title} has no unit");
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{p}: panel {title} does not use the datasource variable"
            );
            for t in panel["targets"].as_array().into_iter().flatten() {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{p}: {title}");
            }
        }
    }
    for want in [
        "SLI overview",
        "inbound pages",
        "outbound APIs",
        "protection actions",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no dashboard for {want}: {titles:?}"
        );
    }
    let prov = yaml(&root().join("config/grafana/provisioning/dashboards/spikeguard.yaml"));
    assert_eq!(prov["apiVersion"], 1);
    assert_eq!(prov["providers"][0]["type"], "file");
    assert!(prov["providers"][0]["options"]["path"].is_string());
    let ds = yaml(&root().join("config/grafana/provisioning/datasources/prometheus.yaml"));
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    assert!(ds["datasources"][0]["url"].is_string());
}

// ---------------------------------------------------------------------------------------------
// 5. Kubernetes: HPA (autoscaling/v2) and the Prometheus Adapter rule. A hand-written check
// of the fields the API server requires, not the OpenAPI schema (none is available here).
// ---------------------------------------------------------------------------------------------

fn k8s_docs() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for p in files_in("deploy/k8s", "yaml") {
        for d in slo::read_yaml_docs(&p).unwrap_or_else(|e| panic!("{e}")) {
            out.push((p.display().to_string(), d));
        }
    }
    out
}

fn check_object_meta(where_: &str, d: &Value) {
    assert!(d["apiVersion"].is_string(), "{where_}: apiVersion");
    assert!(d["kind"].is_string(), "{where_}: kind");
    let name = d["metadata"]["name"].as_str().unwrap_or_default();
    assert!(
        !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
        "{where_}: metadata.name {name:?} is not a DNS subdomain"
    );
}

/// autoscaling/v2 HorizontalPodAutoscaler: the required fields and the metric source shapes.
fn check_hpa(where_: &str, d: &Value) -> Vec<String> {
    assert_eq!(d["apiVersion"], "autoscaling/v2", "{where_}");
    let spec = &d["spec"];
    let target = &spec["scaleTargetRef"];
    for f in ["kind", "name"] {
        assert!(
            target[f].is_string(),
            "{where_}: spec.scaleTargetRef.{f} is required"
        );
    }
    let max = spec["maxReplicas"]
        .as_u64()
        .unwrap_or_else(|| panic!("{where_}: spec.maxReplicas (integer) is required"));
    let min = spec["minReplicas"].as_u64().unwrap_or(1);
    assert!(
        min >= 1 && min <= max,
        "{where_}: 1 <= minReplicas {min} <= maxReplicas {max}"
    );
    let metrics = spec["metrics"]
        .as_array()
        .unwrap_or_else(|| panic!("{where_}: spec.metrics"));
    assert!(!metrics.is_empty(), "{where_}: spec.metrics is empty");
    let mut custom = Vec::new();
    for m in metrics {
        let ty = m["type"].as_str().unwrap_or_default();
        let (src, key) = match ty {
            "Pods" => (&m["pods"], "pods"),
            "Object" => (&m["object"], "object"),
            "External" => (&m["external"], "external"),
            "Resource" => (&m["resource"], "resource"),
            "ContainerResource" => (&m["containerResource"], "containerResource"),
            other => panic!("{where_}: metric type {other:?}"),
        };
        assert!(src.is_object(), "{where_}: type {ty} needs .{key}");
        let t = &src["target"];
        match t["type"].as_str() {
            Some("Utilization") => assert!(
                t["averageUtilization"].is_u64(),
                "{where_}: Utilization needs averageUtilization"
            ),
            Some("AverageValue") => assert!(
                t["averageValue"].is_string() || t["averageValue"].is_number(),
                "{where_}: AverageValue needs averageValue"
            ),
            Some("Value") => assert!(
                t["value"].is_string() || t["value"].is_number(),
                "{where_}: Value needs value"
            ),
            other => panic!("{where_}: target.type {other:?}"),
        }
        if matches!(ty, "Resource" | "ContainerResource") {
            assert!(src["name"].is_string(), "{where_}: {key}.name");
        } else {
            let name = src["metric"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{where_}: {key}.metric.name is required"));
            custom.push(name.to_string());
        }
        if ty == "Pods" {
            assert_eq!(
                t["type"], "AverageValue",
                "{where_}: Pods metrics take AverageValue"
            );
        }
    }
    for (dir, b) in [
        ("scaleUp", &spec["behavior"]["scaleUp"]),
        ("scaleDown", &spec["behavior"]["scaleDown"]),
    ] {
        for p in b["policies"].as_array().into_iter().flatten() {
            assert!(
                matches!(p["type"].as_str(), Some("Pods" | "Percent")),
                "{where_}: behavior.{dir} policy type"
            );
            assert!(
                p["value"].as_u64().unwrap_or(0) > 0,
                "{where_}: {dir} policy value"
            );
            let period = p["periodSeconds"].as_u64().unwrap_or(0);
            assert!(
                (1..=1800).contains(&period),
                "{where_}: {dir} periodSeconds"
            );
        }
    }
    custom
}

/// Prometheus Adapter rules (`rules:` of its config): the served metric names.
fn check_adapter_rules(where_: &str, config: &Value) -> Vec<String> {
    let rules = config["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("{where_}: adapter config has no rules"));
    let mut served = Vec::new();
    for r in rules {
        let sq = r["seriesQuery"].as_str().unwrap_or_default();
        assert!(!sq.is_empty(), "{where_}: seriesQuery");
        assert!(
            sq.starts_with("spikeguard_requests_total{") && sq.contains("direction=\"inbound\""),
            "{where_}: the rule reads the SLI request counter (docs/SLI.md): {sq}"
        );
        let ov = &r["resources"]["overrides"];
        assert_eq!(
            ov["namespace"]["resource"], "namespace",
            "{where_}: namespace override"
        );
        assert_eq!(ov["pod"]["resource"], "pod", "{where_}: pod override");
        let mq = r["metricsQuery"].as_str().unwrap_or_default();
        for piece in ["<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>", "rate("] {
            assert!(
                mq.contains(piece),
                "{where_}: metricsQuery lacks {piece}: {mq}"
            );
        }
        let matches = r["name"]["matches"].as_str().unwrap_or_default();
        assert!(
            matches.contains("spikeguard_requests_total"),
            "{where_}: name.matches"
        );
        let as_ = r["name"]["as"].as_str().unwrap_or_default();
        assert!(!as_.is_empty(), "{where_}: name.as");
        served.push(as_.to_string());
    }
    served
}

#[test]
fn hpa_and_prometheus_adapter_manifests_are_well_formed_and_agree() {
    let docs = k8s_docs();
    let mut wanted = Vec::new();
    let mut served = Vec::new();
    let mut kinds = BTreeSet::new();
    for (file, d) in &docs {
        check_object_meta(file, d);
        let kind = d["kind"].as_str().unwrap_or_default();
        kinds.insert(kind.to_string());
        match kind {
            "HorizontalPodAutoscaler" => wanted.extend(check_hpa(file, d)),
            "ConfigMap" => {
                assert_eq!(d["apiVersion"], "v1", "{file}");
                let text = d["data"]["config.yaml"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{file}: data.config.yaml"));
                let tmp = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
                std::fs::write(tmp.path(), text).unwrap_or_else(|e| panic!("{e}"));
                served.extend(check_adapter_rules(file, &yaml(tmp.path())));
            }
            other => panic!("{file}: unexpected kind {other}"),
        }
    }
    assert!(
        kinds.contains("HorizontalPodAutoscaler"),
        "no HPA in deploy/k8s"
    );
    assert!(
        kinds.contains("ConfigMap"),
        "no adapter ConfigMap in deploy/k8s"
    );
    assert!(!wanted.is_empty(), "the HPA scales on no custom metric");
    for w in &wanted {
        assert!(
            served.contains(w),
            "the HPA wants {w}, the adapter serves {served:?}"
        );
    }
}
