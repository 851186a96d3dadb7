//! The SLI series (docs/SLI.md): names in Istio's tag grammar, and the per-worker tallies
//! that requests add to in VM memory and the tick flushes into Envoy counters.
//!
//! A stat name is `<tag>=.=<value>;.;` per tag, then the metric name; Envoy stores it under
//! `wasmcustom.`, the bundle's `stats_tags` (one `(<tag>=\.=(.+?);\.;)` regex per tag, as
//! Istio's bootstrap writes for `extraStatTags`) take the tags out, and Prometheus sees
//! `spikeguard_requests_total{page="PostView",...}`.
//!
//! Per page type the duration, upstream-time, latency-SLO and byte series are defined at
//! configure time (a bounded, configured set, present from the start so an absent-metric alert
//! means a dead filter). `spikeguard_requests_total` has each page's `code="200"`,
//! `action="none"` series from the start and one more per (page, code, action) that occurred,
//! defined on the first flush that needs it; at most pages x (codes + 10) x 7.

use crate::classify::{label_value, Action, Code};
use sg_core::host::Host;
use sg_core::metrics::Counter;
use std::collections::HashMap;

pub const REQUESTS: &str = "spikeguard_requests_total";
pub const DURATION: &str = "spikeguard_request_duration_ms";
pub const UPSTREAM: &str = "spikeguard_upstream_duration_ms";
pub const LATENCY_GOOD: &str = "spikeguard_latency_good_total";
pub const LATENCY_TOTAL: &str = "spikeguard_latency_total";
pub const BYTES: &str = "spikeguard_response_bytes_total";
/// Every tag the series use, for `stats_tags` (envoy.yaml, Istio `extraStatTags`).
pub const TAGS: [&str; 7] = ["page", "direction", "code", "class", "action", "le", "slo"];

/// `tag=.=value;.;` for every tag, then `metric` (values made safe by `label_value`).
pub fn name(tags: &[(&str, &str)], metric: &str) -> String {
    let mut s = String::with_capacity(64 + metric.len());
    for (t, v) in tags {
        s.push_str(t);
        s.push_str("=.=");
        s.push_str(&label_value(v));
        s.push_str(";.;");
    }
    s.push_str(metric);
    s
}

/// The Envoy `stats_tags` regex of `tag` (what Istio generates for an `extraStatTags` entry).
pub fn tag_regex(tag: &str) -> String {
    format!(r"({tag}=\.=(.+?);\.;)")
}

/// One finished request, as the tallies count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub page: usize,
    pub code: Code,
    pub action: Action,
    pub total_ms: u64,
    /// Time to the upstream's response headers, when the upstream answered.
    pub upstream_ms: Option<u64>,
    pub bytes: u64,
}

/// Non-cumulative bucket hits (the last is `+Inf`), a sum and a count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hist {
    pub hits: Vec<u64>,
    pub sum: u64,
    pub count: u64,
}

impl Hist {
    fn new(edges: usize) -> Hist {
        Hist {
            hits: vec![0; edges + 1],
            sum: 0,
            count: 0,
        }
    }
    fn add(&mut self, ms: u64, edges: &[u64]) {
        let i = crate::classify::bucket(ms, edges);
        if let Some(h) = self.hits.get_mut(i) {
            *h = h.saturating_add(1);
        }
        self.sum = self.sum.saturating_add(ms);
        self.count = self.count.saturating_add(1);
    }
    fn take(&mut self) -> Hist {
        let empty = Hist::new(self.hits.len().saturating_sub(1));
        std::mem::replace(self, empty)
    }
}

/// A histogram's Envoy counters: one per `le` (cumulative), `_sum`, `_count`.
#[derive(Debug, Default)]
struct HistSeries {
    buckets: Vec<Counter>,
    sum: Counter,
    count: Counter,
}

impl HistSeries {
    fn define<H: Host + ?Sized>(
        host: &H,
        metric: &str,
        tags: &[(&str, &str)],
        edges: &[u64],
    ) -> Self {
        let les = edges
            .iter()
            .map(|e| e.to_string())
            .chain(std::iter::once("+Inf".to_string()));
        HistSeries {
            buckets: les
                .map(|le| {
                    let mut t = tags.to_vec();
                    t.push(("le", &le));
                    Counter::define(host, &name(&t, &format!("{metric}_bucket")))
                })
                .collect(),
            sum: Counter::define(host, &name(tags, &format!("{metric}_sum"))),
            count: Counter::define(host, &name(tags, &format!("{metric}_count"))),
        }
    }
    fn add(&self, h: &Hist) {
        let mut cumulative = 0u64;
        for (c, n) in self.buckets.iter().zip(&h.hits) {
            cumulative = cumulative.saturating_add(*n);
            c.add(cumulative);
        }
        self.sum.add(h.sum);
        self.count.add(h.count);
    }
    fn flush<H: Host + ?Sized>(&self, host: &H) {
        self.buckets.iter().for_each(|c| c.flush(host));
        self.sum.flush(host);
        self.count.flush(host);
    }
}

/// One page type's series defined at configure time.
#[derive(Debug, Default)]
struct PageSeries {
    duration: HistSeries,
    upstream: HistSeries,
    good: Vec<Counter>,
    total: Counter,
    bytes: Counter,
}

/// What one page type counted since the last flush.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageTally {
    pub duration: Hist,
    pub upstream: Hist,
    /// Per SLO threshold: requests within it.
    pub good: Vec<u64>,
    pub total: u64,
    pub bytes: u64,
    /// (code, action) -> requests.
    pub requests: HashMap<(Code, Action), u64>,
}

/// The worker's series and tallies.
#[derive(Debug, Default)]
pub struct Series {
    direction: &'static str,
    pages: Vec<String>,
    edges: Vec<u64>,
    slos: Vec<u64>,
    defined: Vec<PageSeries>,
    tallies: Vec<PageTally>,
    requests: HashMap<(usize, Code, Action), Counter>,
}

impl Series {
    /// Defines every per-page series (`pages` includes `other`, last).
    pub fn define<H: Host + ?Sized>(
        host: &H,
        direction: &'static str,
        pages: Vec<String>,
        edges: &[u64],
        slos: &[u64],
    ) -> Series {
        let defined = pages
            .iter()
            .map(|p| {
                let tags = [("page", p.as_str()), ("direction", direction)];
                PageSeries {
                    duration: HistSeries::define(host, DURATION, &tags, edges),
                    upstream: HistSeries::define(host, UPSTREAM, &tags, edges),
                    good: slos
                        .iter()
                        .map(|s| {
                            let s = s.to_string();
                            let mut t = tags.to_vec();
                            t.push(("slo", &s));
                            Counter::define(host, &name(&t, LATENCY_GOOD))
                        })
                        .collect(),
                    total: Counter::define(host, &name(&tags, LATENCY_TOTAL)),
                    bytes: Counter::define(host, &name(&tags, BYTES)),
                }
            })
            .collect();
        let tallies = pages
            .iter()
            .map(|_| PageTally {
                duration: Hist::new(edges.len()),
                upstream: Hist::new(edges.len()),
                good: vec![0; slos.len()],
                ..PageTally::default()
            })
            .collect();
        // Each page's ordinary series (200, no action) exists from the start, at 0, so an
        // absent-series alert means a dead filter, not a quiet page.
        let requests = pages
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (code, action) = (Code::Exact(200), Action::None);
                let tags = [
                    ("page", p.as_str()),
                    ("direction", direction),
                    ("code", "200"),
                    ("class", code.class()),
                    ("action", action.as_str()),
                ];
                (
                    (i, code, action),
                    Counter::define(host, &name(&tags, REQUESTS)),
                )
            })
            .collect();
        Series {
            direction,
            pages,
            edges: edges.to_vec(),
            slos: slos.to_vec(),
            defined,
            tallies,
            requests,
        }
    }

    /// Counts one request in VM memory (no host call).
    pub fn record(&mut self, r: &Record) {
        let Some(t) = self.tallies.get_mut(r.page) else {
            return;
        };
        t.duration.add(r.total_ms, &self.edges);
        if let Some(u) = r.upstream_ms {
            t.upstream.add(u, &self.edges);
        }
        for (g, s) in t.good.iter_mut().zip(&self.slos) {
            if r.total_ms <= *s {
                *g = g.saturating_add(1);
            }
        }
        t.total = t.total.saturating_add(1);
        t.bytes = t.bytes.saturating_add(r.bytes);
        let n = t.requests.entry((r.code, r.action)).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// Moves the tallies into the Envoy counters (defining a requests series the first time
    /// it is needed) and returns what was flushed, per page (for the shared summary).
    pub fn flush<H: Host + ?Sized>(&mut self, host: &H) -> Vec<PageTally> {
        let mut out = Vec::with_capacity(self.tallies.len());
        for (i, t) in self.tallies.iter_mut().enumerate() {
            let taken = PageTally {
                duration: t.duration.take(),
                upstream: t.upstream.take(),
                good: std::mem::replace(&mut t.good, vec![0; self.slos.len()]),
                total: std::mem::take(&mut t.total),
                bytes: std::mem::take(&mut t.bytes),
                requests: std::mem::take(&mut t.requests),
            };
            if let Some(d) = self.defined.get(i) {
                d.duration.add(&taken.duration);
                d.upstream.add(&taken.upstream);
                for (c, n) in d.good.iter().zip(&taken.good) {
                    c.add(*n);
                }
                d.total.add(taken.total);
                d.bytes.add(taken.bytes);
                d.duration.flush(host);
                d.upstream.flush(host);
                d.good.iter().for_each(|c| c.flush(host));
                d.total.flush(host);
                d.bytes.flush(host);
            }
            let page = self.pages.get(i).map_or("other", String::as_str);
            for (&(code, action), &n) in &taken.requests {
                let c = self.requests.entry((i, code, action)).or_insert_with(|| {
                    let label = code.label();
                    let tags = [
                        ("page", page),
                        ("direction", self.direction),
                        ("code", label.as_str()),
                        ("class", code.class()),
                        ("action", action.as_str()),
                    ];
                    Counter::define(host, &name(&tags, REQUESTS))
                });
                c.add(n);
                c.flush(host);
            }
            out.push(taken);
        }
        out
    }

    /// Series of `spikeguard_requests_total` defined so far (bounded by configuration).
    pub fn request_series(&self) -> usize {
        self.requests.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use sg_core::testing::MemHost;

    #[test]
    fn names_follow_istios_grammar() {
        assert_eq!(
            name(&[("page", "Post-View.v2"), ("code", "503")], REQUESTS),
            "page=.=Post-View.v2;.;code=.=503;.;spikeguard_requests_total"
        );
        assert_eq!(tag_regex("page"), r"(page=\.=(.+?);\.;)");
    }

    #[test]
    fn flush_sends_cumulative_buckets_and_each_series_once() {
        let h = MemHost::new();
        let mut s = Series::define(
            &h,
            "inbound",
            vec!["A".into(), "other".into()],
            &[100, 1000],
            &[200],
        );
        let rec = |ms, code| Record {
            page: 0,
            code,
            action: Action::None,
            total_ms: ms,
            upstream_ms: Some(ms / 2),
            bytes: 10,
        };
        s.record(&rec(50, Code::Exact(200)));
        s.record(&rec(500, Code::Exact(200)));
        s.record(&rec(5000, Code::Exact(503)));
        let flushed = s.flush(&h);
        assert_eq!(flushed[0].total, 3);
        let m = |n: &str| h.metric(n).unwrap_or(-1);
        let b = |le: &str| {
            m(&format!(
                "page=.=A;.;direction=.=inbound;.;le=.={le};.;spikeguard_request_duration_ms_bucket"
            ))
        };
        assert_eq!((b("100"), b("1000"), b("+Inf")), (1, 2, 3));
        assert_eq!(
            m("page=.=A;.;direction=.=inbound;.;spikeguard_request_duration_ms_sum"),
            5550
        );
        assert_eq!(
            m("page=.=A;.;direction=.=inbound;.;slo=.=200;.;spikeguard_latency_good_total"),
            1
        );
        assert_eq!(
            m("page=.=A;.;direction=.=inbound;.;spikeguard_response_bytes_total"),
            30
        );
        assert_eq!(
            m("page=.=A;.;direction=.=inbound;.;code=.=200;.;class=.=2xx;.;action=.=none;.;spikeguard_requests_total"),
            2
        );
        assert_eq!(
            m("page=.=other;.;direction=.=inbound;.;spikeguard_latency_total"),
            0,
            "defined from the start"
        );
        // A second flush adds only what came since.
        s.record(&rec(50, Code::Exact(200)));
        s.flush(&h);
        assert_eq!(b("100"), 2);
        assert_eq!(b("+Inf"), 4);
        assert_eq!(
            s.request_series(),
            3,
            "A/200 and other/200 from the start, A/503"
        );
    }
}
