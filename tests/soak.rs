//! The soak's short run (`make soak` is the 30-minute one, docs/BENCHMARKS.md "Soak"): the
//! whole bundle under steady mixed traffic with two spikes. Every answer is an intended one,
//! and the filters' and Envoy's counters equal what the client got back. The memory slope of
//! so short a run means nothing and is not checked here.

use sg_integration::soak::{self, SoakConfig};

#[test]
fn smoke_run_counts_everything_and_answers_only_as_intended() {
    let r = soak::run(&SoakConfig::smoke(), |l| eprintln!("{l}"))
        .unwrap_or_else(|e| panic!("soak: {e}"));
    eprintln!("{}", soak::markdown(&r, "tests/soak.rs"));
    assert!(r.answers.completed > 0, "nothing answered");
    // The spikes reached the filters: ratelimit refused some of the hot blogs' pages.
    assert!(
        r.answers.rate_limited > 0,
        "no 429 in the spikes: {:?}",
        r.answers
    );
    assert!(r.answers.app > 0 && r.drifts.len() >= 4, "{:?}", r.drifts);
    let problems = r.problems();
    assert!(problems.is_empty(), "{problems:#?}");
}
