//! Property tests of sli's shared-data summary codec (`sg:sli:<direction>:sum`) with the codec
//! laws of `sg_core::testing::laws`, and of its merge: every request flushed by any worker is
//! counted once, in any merge order.
#![allow(clippy::indexing_slicing)] // test code: fail loudly

use proptest::prelude::*;
use sg_core::testing::laws::{self, bytes, config, edgy_u64};
use sg_sli::classify::{Action, Code};
use sg_sli::series::{Hist, PageTally};
use sg_sli::summary::{PageSum, Summary, MAX_HITS, MAX_PAGES};
use std::collections::HashMap;

fn page_sum() -> impl Strategy<Value = PageSum> {
    (
        "[A-Za-z0-9_.-]{1,64}",
        edgy_u64(),
        edgy_u64(),
        edgy_u64(),
        edgy_u64(),
        proptest::collection::vec(edgy_u64(), 0..=MAX_HITS),
    )
        .prop_map(
            |(name, requests, errors_5xx, code_499, sum_ms, hits)| PageSum {
                name,
                requests,
                errors_5xx,
                code_499,
                sum_ms,
                hits,
            },
        )
}

fn summary() -> impl Strategy<Value = Summary> {
    proptest::collection::vec(page_sum(), 0..8).prop_map(|pages| Summary { pages })
}

/// A worker's flush: per page (of 3), requests of a few codes and their durations.
fn tallies() -> impl Strategy<Value = Vec<PageTally>> {
    proptest::collection::vec(proptest::collection::vec((0u16..3, 0u64..5000), 0..20), 3).prop_map(
        |pages| {
            pages
                .into_iter()
                .map(|reqs| {
                    let mut t = PageTally {
                        duration: Hist {
                            hits: vec![0; 4],
                            sum: 0,
                            count: 0,
                        },
                        ..PageTally::default()
                    };
                    let mut by: HashMap<(Code, Action), u64> = HashMap::new();
                    for (c, ms) in reqs {
                        let code =
                            [Code::Exact(200), Code::Exact(503), Code::Exact(499)][usize::from(c)];
                        *by.entry((code, Action::None)).or_insert(0) += 1;
                        t.total += 1;
                        t.duration.sum += ms;
                        t.duration.count += 1;
                        t.duration.hits[sg_sli::classify::bucket(ms, &[100, 1000, 3000])] += 1;
                    }
                    t.requests = by;
                    t
                })
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn summary_round_trips(s in summary()) {
        laws::round_trip(&s, Summary::encode, Summary::decode)?;
    }

    #[test]
    fn summary_decodes_canonically_or_not_at_all(b in bytes(0..200)) {
        laws::canonical_or_none(&b, Summary::encode, Summary::decode)?;
    }

    #[test]
    fn a_cut_off_summary_is_none(s in summary()) {
        laws::truncated_is_none(&s, Summary::encode, Summary::decode)?;
    }

    #[test]
    fn merging_workers_in_any_order_counts_every_request_once(
        flushes in proptest::collection::vec(tallies(), 1..5),
        flip in any::<bool>(),
    ) {
        let names: Vec<String> = ["A", "B", "other"].iter().map(|s| s.to_string()).collect();
        let mut order: Vec<&Vec<PageTally>> = flushes.iter().collect();
        if flip {
            order.reverse();
        }
        let mut s = Summary::default();
        for f in order {
            // Through the codec, as the shared value is.
            s = Summary::decode(&s.encode()).unwrap_or_default();
            s.merge(&names, f);
        }
        for (i, name) in names.iter().enumerate() {
            let want: u64 = flushes.iter().map(|f| f[i].total).sum();
            let got = s.pages.iter().find(|p| &p.name == name).map_or(0, |p| p.requests);
            prop_assert_eq!(got, want);
            let hits: u64 = s.pages.iter().find(|p| &p.name == name).map_or(0, |p| p.hits.iter().sum());
            prop_assert_eq!(hits, want);
        }
        prop_assert!(s.pages.len() <= MAX_PAGES);
    }
}
