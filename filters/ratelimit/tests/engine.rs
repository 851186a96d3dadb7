//! Native tests of a whole request against the rules, on the in-memory store (Envoy's CAS
//! semantics) and a fake clock (`now` passed in).
#![allow(clippy::panic, clippy::indexing_slicing)] // test code: fail loudly

use sg_core::key::SimpleRequest;
use sg_core::shared::{MemStore, SharedStore};
use sg_ratelimit::config::{Compile, Config, Plan};
use sg_ratelimit::engine::{check, slot_key, Action, RuleOutcome, Verdict};

fn plan(json: &str) -> Plan {
    match Config::parse(json.as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("config refused: {e}"),
    }
}

fn get(path: &str) -> SimpleRequest {
    SimpleRequest {
        method: "GET".into(),
        path: path.into(),
        host: "blog".into(),
        source: "10.1.1.1:999".into(),
        headers: vec![],
    }
}

fn run(p: &Plan, s: &MemStore, path: &str, now: u64) -> Verdict {
    check(p, s, &get(path), None, || now)
}

const TWO_RULES: &str = r#"{"rules":[
  {"name":"per_blog","key":{"query":"blogId"},"rate":"1r/s","burst":1,"mode":"nodelay"},
  {"name":"global","key":{"fixed":"all"},"rate":"1r/s","burst":2,"mode":"nodelay"}]}"#;

#[test]
fn a_request_rejected_by_one_rule_charges_none() {
    let p = plan(TWO_RULES);
    let s = MemStore::new();
    // blog a: 2 allowed (burst 1), global now at excess 1000.
    assert_eq!(run(&p, &s, "/?blogId=a", 0).action, Action::Allow);
    assert_eq!(run(&p, &s, "/?blogId=a", 0).action, Action::Allow);
    // 3rd for blog a is rejected by per_blog: global must not be charged...
    let v = run(&p, &s, "/?blogId=a", 0);
    assert!(matches!(v.action, Action::Reject { rule: 0, .. }), "{v:?}");
    // ...so blog b still gets the global's last burst slot (excess 2000 <= 2000).
    assert_eq!(run(&p, &s, "/?blogId=b", 0).action, Action::Allow);
    let v = run(&p, &s, "/?blogId=c", 0);
    assert!(matches!(v.action, Action::Reject { rule: 1, .. }), "{v:?}");
}

#[test]
fn requests_without_the_key_are_not_limited_by_that_rule() {
    let p =
        plan(r#"{"rules":[{"name":"r","key":{"query":"blogId"},"rate":"1r/s","mode":"nodelay"}]}"#);
    let s = MemStore::new();
    for _ in 0..10 {
        let v = run(&p, &s, "/PostList", 0);
        assert_eq!(v.action, Action::Allow);
        assert!(v.rules.is_empty());
    }
    assert!(s.is_empty(), "no state for keyless requests");
}

#[test]
fn the_clock_is_read_only_when_a_rule_applies() {
    let p = plan(
        r#"{"rules":[{"name":"r","match":{"path_prefix":"/PostView"},"key":{"query":"blogId"},"rate":"1r/s"}]}"#,
    );
    let s = MemStore::new();
    let mut reads = 0;
    for path in ["/PostList?blogId=a", "/PostView?logNo=1"] {
        let v = check(&p, &s, &get(path), None, || {
            reads += 1;
            0
        });
        assert_eq!(v.action, Action::Allow);
    }
    assert_eq!(reads, 0);
    check(&p, &s, &get("/PostView?blogId=a"), None, || {
        reads += 1;
        0
    });
    assert_eq!(reads, 1);
}

#[test]
fn keys_are_isolated_and_normalised() {
    let p = plan(
        r#"{"rules":[{"name":"r","key":{"query":"blogId"},"rate":"1r/s","mode":"nodelay","lowercase_key":true}]}"#,
    );
    let s = MemStore::new();
    assert_eq!(run(&p, &s, "/?blogId=Alice", 0).action, Action::Allow);
    // Variants of the same key are the same key.
    for v in [
        "/?blogId=alice",
        "/?%62logId=ALICE",
        "/?blogId=al%69ce&blogId=bob",
    ] {
        assert!(
            matches!(run(&p, &s, v, 0).action, Action::Reject { .. }),
            "{v}"
        );
    }
    assert_eq!(run(&p, &s, "/?blogId=bob", 0).action, Action::Allow);
}

#[test]
fn delay_mode_returns_the_nginx_delay() {
    let p = plan(r#"{"rules":[{"name":"r","key":{"fixed":"x"},"rate":"10r/s","burst":3}]}"#);
    let s = MemStore::new();
    let got: Vec<Action> = (0..5).map(|_| run(&p, &s, "/", 1000).action).collect();
    assert_eq!(got[0], Action::Allow);
    assert_eq!(got[1], Action::Delay(100));
    assert_eq!(got[2], Action::Delay(200));
    assert_eq!(got[3], Action::Delay(300));
    assert!(matches!(got[4], Action::Reject { .. }));
}

#[test]
fn dry_run_counts_but_never_acts() {
    let p = plan(
        r#"{"rules":[{"name":"r","key":{"fixed":"x"},"rate":"1r/s","burst":1,"dry_run":true}]}"#,
    );
    let s = MemStore::new();
    let outs: Vec<RuleOutcome> = (0..4)
        .map(|_| {
            let v = run(&p, &s, "/", 0);
            assert_eq!(v.action, Action::Allow);
            v.rules.first().map(|r| r.1).unwrap_or(RuleOutcome::Allowed)
        })
        .collect();
    assert_eq!(
        outs,
        vec![
            RuleOutcome::Allowed,
            RuleOutcome::DryRunDelayed(1000),
            RuleOutcome::DryRunRejected,
            RuleOutcome::DryRunRejected
        ]
    );
}

#[test]
fn lost_cas_races_are_retried_and_stay_exact() {
    let p = plan(
        r#"{"rules":[{"name":"r","key":{"fixed":"x"},"rate":"1r/s","burst":4,"mode":"nodelay"}]}"#,
    );
    let s = MemStore::new();
    let mut allowed = 0;
    for i in 0..10 {
        s.interfere_next(i % 3);
        if run(&p, &s, "/", 0).action == Action::Allow {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5, "1 + burst 4, whatever the retries");
}

#[test]
fn cas_give_up_fails_open_by_default_and_closed_when_configured() {
    let open = plan(
        r#"{"rules":[{"name":"r","key":{"fixed":"x"},"rate":"1r/s","mode":"nodelay"}],"cas_attempts":2}"#,
    );
    let s = MemStore::new();
    run(&open, &s, "/", 0); // creates the slot
    s.interfere_next(5);
    let v = run(&open, &s, "/", 5000);
    assert_eq!(v.action, Action::Allow);
    assert_eq!(
        v.rules,
        vec![(0, RuleOutcome::StoreTrouble { gave_up: true })]
    );

    let closed = plan(
        r#"{"rules":[{"name":"r","key":{"fixed":"x"},"rate":"1r/s","mode":"nodelay"}],"cas_attempts":2,"on_store_error":"reject"}"#,
    );
    s.interfere_next(5);
    let v = run(&closed, &s, "/", 10_000);
    assert!(matches!(v.action, Action::Reject { .. }));
}

#[test]
fn store_failure_applies_the_configured_policy() {
    let s = MemStore::new();
    s.set_failing(true);
    let open = plan(r#"{"rules":[{"name":"r","key":{"fixed":"x"},"rate":"1r/s"}]}"#);
    assert_eq!(run(&open, &s, "/", 0).action, Action::Allow);
    let closed = plan(
        r#"{"rules":[{"name":"r","key":{"fixed":"x"},"rate":"1r/s"}],"on_store_error":"reject"}"#,
    );
    assert!(matches!(
        run(&closed, &s, "/", 0).action,
        Action::Reject { .. }
    ));
}

#[test]
fn unreadable_slot_values_are_treated_as_empty_and_counted() {
    let p = plan(
        r#"{"rules":[{"name":"r","key":{"fixed":"x"},"rate":"1r/s","max_keys":4,"mode":"nodelay"}]}"#,
    );
    let s = MemStore::new();
    let _ = s.set(&slot_key("r", 0), b"\x07garbage", 0);
    let v = run(&p, &s, "/", 0);
    assert_eq!(v.action, Action::Allow);
    assert_eq!(v.bad_state, 1);
    assert!(matches!(run(&p, &s, "/", 0).action, Action::Reject { .. }));
}

#[test]
fn a_hundred_thousand_keys_use_a_fixed_number_of_slots() {
    let p = plan(
        r#"{"rules":[{"name":"r","key":{"query":"u"},"rate":"1r/s","max_keys":1000,"mode":"nodelay"}]}"#,
    );
    let s = MemStore::new();
    for i in 0..100_000u32 {
        run(&p, &s, &format!("/?u={i}"), u64::from(i / 50));
    }
    assert!(s.len() <= 250, "{} slot keys", s.len());
    assert!(
        s.total_bytes() <= 250 * (114 + 16),
        "{} bytes",
        s.total_bytes()
    );
}

#[test]
fn quota_headers_reflect_the_tightest_rule() {
    let p = plan(TWO_RULES);
    let s = MemStore::new();
    let v = run(&p, &s, "/?blogId=a", 0);
    let q = v.quota.map(|q| (q.rule, q.remaining));
    // per_blog: excess 0 -> 1 left; global: excess 0 -> 2 left.
    assert_eq!(q, Some((0, 1)));
}
