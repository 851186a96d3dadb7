//! "Top 5 keys of the last 3 minutes" for alerts: the leader keeps each evaluation's top 5
//! per rule and an alert names every key's highest rate over the window. Memory: at most one
//! entry of 5 keys per evaluation within the window.

use std::collections::{HashMap, VecDeque};

/// How far back an alert's top keys look.
pub const TOP_WINDOW_MS: u64 = 180_000;
/// Keys named in an alert.
pub const TOP_N: usize = 5;

/// One rule's recent evaluations: (time, top keys as (key, milli-rps)).
#[derive(Debug, Default, Clone)]
pub struct TopHistory {
    recent: VecDeque<(u64, Vec<(String, u64)>)>,
}

impl TopHistory {
    /// Records an evaluation's leaders (already sorted, highest first; only `TOP_N` kept)
    /// and forgets evaluations older than the window.
    pub fn push(&mut self, now: u64, top: impl IntoIterator<Item = (String, u64)>) {
        self.recent
            .push_back((now, top.into_iter().take(TOP_N).collect()));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| t.saturating_add(TOP_WINDOW_MS) < now)
        {
            self.recent.pop_front();
        }
    }

    /// The top keys of the window: each key's highest rate, highest first (ties by key).
    pub fn top(&self) -> Vec<(String, u64)> {
        let mut best: HashMap<&str, u64> = HashMap::new();
        for (_, top) in &self.recent {
            for (k, r) in top {
                let e = best.entry(k.as_str()).or_insert(0);
                *e = (*e).max(*r);
            }
        }
        let mut v: Vec<(String, u64)> = best.into_iter().map(|(k, r)| (k.to_string(), r)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(TOP_N);
        v
    }

    pub fn len(&self) -> usize {
        self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(k: &str, r: u64) -> (String, u64) {
        (k.to_string(), r)
    }

    #[test]
    fn each_keys_best_rate_of_the_window_highest_first() {
        let mut h = TopHistory::default();
        h.push(0, [t("a", 10), t("b", 5)]);
        h.push(1_000, [t("b", 30), t("c", 7)]);
        assert_eq!(h.top(), [t("b", 30), t("a", 10), t("c", 7)]);
    }

    #[test]
    fn evaluations_older_than_three_minutes_are_forgotten() {
        let mut h = TopHistory::default();
        h.push(0, [t("old", 99)]);
        h.push(TOP_WINDOW_MS, [t("new", 1)]);
        assert_eq!(h.len(), 2, "exactly at the edge it still counts");
        h.push(TOP_WINDOW_MS + 1, [t("new", 2)]);
        assert_eq!(h.top(), [t("new", 2)]);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn at_most_five_keys_ties_broken_by_name() {
        let mut h = TopHistory::default();
        h.push(0, (0..9).map(|i| t(&format!("k{i}"), 1)));
        h.push(1, [t("z", 1), t("a", 1)]);
        assert_eq!(
            h.top(),
            [t("a", 1), t("k0", 1), t("k1", 1), t("k2", 1), t("k3", 1)]
        );
    }
}
