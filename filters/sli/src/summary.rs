//! The SLI summary per page type for the status page: requests, errors (5xx, 499), total
//! duration and its bucket hits since Envoy started, summed over workers. Each worker merges
//! what it flushed into `sg:sli:<direction>:sum` on its tick (CAS), so the page shows the
//! whole Envoy, not one worker.
//!
//! Value layout (little endian), version 1: `u8 VERSION, u32 n_pages (<= MAX_PAGES)`, then per
//! page `u32 name_len (<= 64), name, u64 requests, u64 errors_5xx, u64 code_499, u64 sum_ms,
//! u32 n_buckets (<= 33), u64 hits...`.

use crate::classify::{Code, MAX_LABEL};
use crate::series::PageTally;
use sg_core::codec::{Reader, Writer};

pub const VERSION: u8 = 1;
/// Pages kept (config pages + `other`; pages of an older config beyond this are dropped).
pub const MAX_PAGES: usize = crate::config::MAX_PAGES + 1;
pub const MAX_HITS: usize = crate::config::MAX_BUCKETS + 1;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageSum {
    pub name: String,
    pub requests: u64,
    pub errors_5xx: u64,
    pub code_499: u64,
    pub sum_ms: u64,
    /// Non-cumulative hits per bucket edge, then `+Inf`.
    pub hits: Vec<u64>,
}

impl PageSum {
    pub fn avg_ms(&self) -> Option<u64> {
        self.sum_ms.checked_div(self.requests)
    }

    /// The smallest edge at or under which `q` (per mille) of the requests fell: an upper
    /// bound of that quantile (None: no requests, or it is in `+Inf`).
    /// Summed in u128: the hits may come from shared data, which any plugin of the VM can
    /// write (a u64 sum overflowed; the same fault `make fuzz` found in breaker and
    /// simplepage).
    pub fn quantile_le(&self, per_mille: u64, edges: &[u64]) -> Option<u64> {
        let total: u128 = self.hits.iter().map(|h| u128::from(*h)).sum();
        if total == 0 {
            return None;
        }
        let want = total.saturating_mul(u128::from(per_mille)).div_ceil(1000);
        let mut seen = 0u128;
        for (i, h) in self.hits.iter().enumerate() {
            seen += u128::from(*h);
            if seen >= want {
                return edges.get(i).copied();
            }
        }
        None
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub pages: Vec<PageSum>,
}

impl Summary {
    /// Adds one worker's flushed tallies (`names[i]` is tally `i`'s page).
    pub fn merge(&mut self, names: &[String], tallies: &[PageTally]) {
        for (name, t) in names.iter().zip(tallies) {
            if t.total == 0 {
                continue;
            }
            let at = match self.pages.iter().position(|p| p.name == *name) {
                Some(i) => i,
                None if self.pages.len() < MAX_PAGES => {
                    self.pages.push(PageSum {
                        name: name.clone(),
                        ..PageSum::default()
                    });
                    self.pages.len() - 1
                }
                None => continue,
            };
            let Some(p) = self.pages.get_mut(at) else {
                continue;
            };
            let (mut e5, mut e499) = (0u64, 0u64);
            for (&(code, _), &n) in &t.requests {
                if code == Code::Exact(499) {
                    e499 = e499.saturating_add(n);
                } else if code.is_error() {
                    e5 = e5.saturating_add(n);
                }
            }
            p.requests = p.requests.saturating_add(t.total);
            p.errors_5xx = p.errors_5xx.saturating_add(e5);
            p.code_499 = p.code_499.saturating_add(e499);
            p.sum_ms = p.sum_ms.saturating_add(t.duration.sum);
            if p.hits.len() != t.duration.hits.len() {
                // New bucket edges (a new config): the distribution starts again.
                p.hits = vec![0; t.duration.hits.len().min(MAX_HITS)];
            }
            for (a, b) in p.hits.iter_mut().zip(&t.duration.hits) {
                *a = a.saturating_add(*b);
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(8 + self.pages.len() * 200);
        let pages: Vec<&PageSum> = self.pages.iter().take(MAX_PAGES).collect();
        w.u8(VERSION).u32(pages.len() as u32);
        for p in pages {
            let name = p.name.as_bytes();
            let name = name.get(..name.len().min(MAX_LABEL)).unwrap_or(&[]);
            let hits: Vec<u64> = p.hits.iter().take(MAX_HITS).copied().collect();
            w.u32(name.len() as u32)
                .bytes(name)
                .u64(p.requests)
                .u64(p.errors_5xx)
                .u64(p.code_499)
                .u64(p.sum_ms)
                .u32(hits.len() as u32);
            for h in hits {
                w.u64(h);
            }
        }
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Option<Summary> {
        let mut r = Reader::new(b);
        if r.u8()? != VERSION {
            return None;
        }
        let n = r.u32()? as usize;
        if n > MAX_PAGES {
            return None;
        }
        let mut pages = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.u32()? as usize;
            if len > MAX_LABEL {
                return None;
            }
            let name = String::from_utf8(r.take(len)?.to_vec()).ok()?;
            let (requests, errors_5xx, code_499, sum_ms) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
            let nh = r.u32()? as usize;
            if nh > MAX_HITS {
                return None;
            }
            let hits = (0..nh).map(|_| r.u64()).collect::<Option<Vec<u64>>>()?;
            pages.push(PageSum {
                name,
                requests,
                errors_5xx,
                code_499,
                sum_ms,
                hits,
            });
        }
        if r.remaining() != 0 {
            return None;
        }
        Some(Summary { pages })
    }
}

impl sg_core::store::Decode for Summary {
    fn decode(b: &[u8]) -> Option<Self> {
        Summary::decode(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (filters/fuzz/regressions/codecs/): a summary read from shared data with
    /// hit counts near u64::MAX; the quantile is defined, and exact.
    #[test]
    fn quantile_of_hits_near_u64_max_does_not_overflow() {
        let p = PageSum {
            name: "page".into(),
            hits: vec![u64::MAX, u64::MAX, u64::MAX],
            ..PageSum::default()
        };
        let s = Summary { pages: vec![p] };
        let p = &Summary::decode(&s.encode()).expect("decodes").pages[0];
        let edges = [10, 100];
        assert_eq!(p.quantile_le(500, &edges), Some(100));
        assert_eq!(p.quantile_le(300, &edges), Some(10));
        assert_eq!(p.quantile_le(1000, &edges), None, "in +Inf");
    }
}
