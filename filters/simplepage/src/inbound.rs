//! The "simple page inbound" tally (`sg:sp:inbound`): diverted requests of the current alert
//! period and their top URLs. Every worker adds its tick's counts (CAS); the lease holder
//! takes and resets it once per period and sends the alert.

use sg_core::codec::{Reader, Writer};
use std::collections::HashMap;

/// URLs kept per worker per tick and in the shared tally.
pub const MAX_URLS: usize = 32;
/// A URL is named by at most this many bytes (cut at a character boundary).
pub const MAX_URL_BYTES: usize = 256;

/// One worker's diverted requests of the current tick and their URLs (at most `MAX_URLS`
/// distinct ones; later new URLs are counted in the total only), merged on the tick.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UrlTally {
    pub count: u64,
    pub urls: HashMap<String, u64>,
}

impl UrlTally {
    /// Counts one diverted request of `path`. A known URL costs no allocation.
    pub fn add(&mut self, path: &str) {
        self.count = self.count.saturating_add(1);
        let mut cut = path.len().min(MAX_URL_BYTES);
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        let url = path.get(..cut).unwrap_or("");
        if let Some(n) = self.urls.get_mut(url) {
            *n = n.saturating_add(1);
        } else if self.urls.len() < MAX_URLS {
            self.urls.insert(url.to_string(), 1);
        }
    }
}

/// `sg:sp:inbound`: (period start, count, top URLs with counts).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inbound {
    pub period: u64,
    pub count: u64,
    pub urls: Vec<(String, u64)>,
}

impl Inbound {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(32 + self.urls.len() * 64);
        w.u8(1)
            .u64(self.period)
            .u64(self.count)
            .u32(self.urls.len() as u32);
        for (u, c) in &self.urls {
            w.u32(u.len() as u32).bytes(u.as_bytes()).u64(*c);
        }
        w.finish()
    }
    pub fn decode(b: &[u8]) -> Option<Inbound> {
        let mut r = Reader::new(b);
        if r.u8()? != 1 {
            return None;
        }
        let period = r.u64()?;
        let count = r.u64()?;
        let n = r.u32()? as usize;
        if n > MAX_URLS {
            return None;
        }
        let mut urls = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.u32()? as usize;
            let u = String::from_utf8(r.take(len)?.to_vec()).ok()?;
            urls.push((u, r.u64()?));
        }
        (r.remaining() == 0).then_some(Inbound {
            period,
            count,
            urls,
        })
    }
    pub fn add(&mut self, count: u64, urls: &HashMap<String, u64>) {
        self.count = self.count.saturating_add(count);
        for (u, c) in urls {
            match self.urls.iter_mut().find(|(x, _)| x == u) {
                Some((_, n)) => *n = n.saturating_add(*c),
                None => self.urls.push((u.clone(), *c)),
            }
        }
        self.urls.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        self.urls.truncate(MAX_URLS);
    }
}

impl sg_core::store::Decode for Inbound {
    fn decode(b: &[u8]) -> Option<Inbound> {
        Inbound::decode(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_tally_counts_every_request_bounds_urls_and_cuts_at_a_char_boundary() {
        let mut t = UrlTally::default();
        t.add("/a");
        t.add("/a");
        for i in 0..100 {
            t.add(&format!("/u{i}"));
        }
        assert_eq!(t.count, 102);
        assert_eq!(t.urls.len(), MAX_URLS);
        assert_eq!(t.urls.get("/a"), Some(&2));
        let mut t = UrlTally::default();
        let long = format!("/{}", "é".repeat(200));
        t.add(&long);
        let (u, n) = t.urls.iter().next().unwrap();
        assert!(u.len() <= MAX_URL_BYTES && long.starts_with(u.as_str()));
        assert_eq!(*n, 1);
    }

    #[test]
    fn adds_workers_keeps_the_top_urls_and_round_trips() {
        let mut v = Inbound::default();
        let w1: HashMap<String, u64> = [("/a".to_string(), 5), ("/b".to_string(), 1)].into();
        let w2: HashMap<String, u64> = [("/b".to_string(), 9)].into();
        v.add(6, &w1);
        v.add(9, &w2);
        assert_eq!(v.count, 15);
        assert_eq!(v.urls, vec![("/b".to_string(), 10), ("/a".to_string(), 5)]);
        let many: HashMap<String, u64> = (0..100).map(|i| (format!("/u{i}"), i)).collect();
        v.add(100, &many);
        assert_eq!(v.urls.len(), MAX_URLS);
        assert_eq!(v.urls.first(), Some(&("/u99".to_string(), 99)));
        let b = v.encode();
        assert_eq!(Inbound::decode(&b), Some(v));
        assert_eq!(Inbound::decode(&b[..b.len() - 1]), None);
        assert_eq!(Inbound::decode(b"junk"), None);
    }
}
