//! The values one filter publishes in shared data for others to read: their types and codecs,
//! one implementation. A filter crate cannot depend on another (each is a cdylib with its own
//! proxy-wasm exports), so the writer and every reader use these. Layouts:
//! docs/ARCHITECTURE.md, "Shared data layout".
//!
//! - [`keys::HK_SHED`](crate::keys::HK_SHED): hotkey's hot set ([`encode_shed`],
//!   [`decode_shed`]).
//! - [`keys::SP_STATE`](crate::keys::SP_STATE): simplepage's overload state
//!   ([`encode_state`], [`decode_state`]).
//!
//! Decoders return `None` for anything they did not write (other version, truncated, trailing
//! bytes, out-of-bound counts); readers treat that as "nothing published" and keep their last
//! good copy.

use crate::codec::{Reader, Writer};
use crate::sketch::MAX_KEY_BYTES;

// ---- sg:hk:shed -----------------------------------------------------------------------------

/// Layout version of `sg:hk:shed` (first byte).
pub const SHED_VERSION: u8 = 1;
/// Entries published at most (rules x max_hot is far below this).
pub const SHED_MAX_ENTRIES: usize = 4096;

/// One hot key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hot {
    pub fp: u64,
    pub key: Vec<u8>,
    /// When it entered.
    pub since_ms: u64,
    /// Its rate at the last update.
    pub milli_rps: u64,
    /// Since when it has been continuously below the exit level (None = not below).
    pub below_since_ms: Option<u64>,
}

/// A hot key of a hotkey rule (the rule's index in hotkey's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShedEntry {
    pub rule: u16,
    pub hot: Hot,
}

/// Encodes (publish sequence, entries): at most [`SHED_MAX_ENTRIES`] entries, keys cut to
/// [`MAX_KEY_BYTES`].
pub fn encode_shed(seq: u64, entries: &[ShedEntry]) -> Vec<u8> {
    let mut w = Writer::with_capacity(16 + entries.len() * 64);
    let n = entries.len().min(SHED_MAX_ENTRIES);
    w.u8(SHED_VERSION).u64(seq).u32(n as u32);
    for e in entries.iter().take(n) {
        let key = e
            .hot
            .key
            .get(..e.hot.key.len().min(MAX_KEY_BYTES))
            .unwrap_or(&[]);
        w.u32(u32::from(e.rule))
            .u64(e.hot.fp)
            .u64(e.hot.milli_rps)
            .u64(e.hot.since_ms)
            .u64(e.hot.below_since_ms.map_or(0, |t| t.saturating_add(1)))
            .u32(key.len() as u32)
            .bytes(key);
    }
    w.finish()
}

/// (publish sequence, entries), or `None` if `b` is not a value [`encode_shed`] writes.
pub fn decode_shed(b: &[u8]) -> Option<(u64, Vec<ShedEntry>)> {
    let mut r = Reader::new(b);
    if r.u8()? != SHED_VERSION {
        return None;
    }
    let seq = r.u64()?;
    let n = r.u32()? as usize;
    if n > SHED_MAX_ENTRIES {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let rule = u16::try_from(r.u32()?).ok()?;
        let fp = r.u64()?;
        let milli_rps = r.u64()?;
        let since_ms = r.u64()?;
        let below = r.u64()?;
        let len = r.u32()? as usize;
        if len > MAX_KEY_BYTES {
            return None;
        }
        let key = r.take(len)?.to_vec();
        out.push(ShedEntry {
            rule,
            hot: Hot {
                fp,
                key,
                since_ms,
                milli_rps,
                below_since_ms: below.checked_sub(1),
            },
        });
    }
    (r.remaining() == 0).then_some((seq, out))
}

// ---- sg:sp:state ----------------------------------------------------------------------------

/// Layout version of `sg:sp:state` (first byte).
pub const STATE_VERSION: u8 = 1;
/// Overloaded rules decoded at most.
pub const STATE_MAX_RULES: usize = 4096;

/// Which overload condition fired, for the response header, logs and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Rate,
    Errors,
    Latency,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Rate => "rate",
            Reason::Errors => "errors",
            Reason::Latency => "latency",
        }
    }
}

/// Encodes (rule name, reason, since ms) per rule in overload.
pub fn encode_state(s: &[(String, Reason, u64)]) -> Vec<u8> {
    let mut w = Writer::with_capacity(8 + s.len() * 48);
    w.u8(STATE_VERSION).u32(s.len() as u32);
    for (name, r, since) in s {
        let code = match r {
            Reason::Rate => 1,
            Reason::Errors => 2,
            Reason::Latency => 3,
        };
        w.u32(name.len() as u32)
            .bytes(name.as_bytes())
            .u8(code)
            .u64(*since);
    }
    w.finish()
}

/// (rule name, reason, since ms) per rule in overload, or `None` if `b` is not a value
/// [`encode_state`] writes.
pub fn decode_state(b: &[u8]) -> Option<Vec<(String, Reason, u64)>> {
    let mut r = Reader::new(b);
    if r.u8()? != STATE_VERSION {
        return None;
    }
    let n = r.u32()? as usize;
    if n > STATE_MAX_RULES {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.u32()? as usize;
        let name = String::from_utf8(r.take(len)?.to_vec()).ok()?;
        let reason = match r.u8()? {
            1 => Reason::Rate,
            2 => Reason::Errors,
            3 => Reason::Latency,
            _ => return None,
        };
        out.push((name, reason, r.u64()?));
    }
    (r.remaining() == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_round_trips_and_truncated_is_none() {
        let e = ShedEntry {
            rule: 2,
            hot: Hot {
                fp: 9,
                key: b"blog7".to_vec(),
                since_ms: 100,
                milli_rps: 5000,
                below_since_ms: Some(0),
            },
        };
        let b = encode_shed(7, std::slice::from_ref(&e));
        assert_eq!(decode_shed(&b), Some((7, vec![e])));
        for cut in 0..b.len() {
            assert_eq!(decode_shed(&b[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_shed(&encode_shed(1, &[])), Some((1, vec![])));
    }

    #[test]
    fn state_round_trips_and_truncated_is_none() {
        let st = vec![
            ("post_view".to_string(), Reason::Latency, 17),
            ("list".to_string(), Reason::Rate, 0),
            ("feed".to_string(), Reason::Errors, u64::MAX),
        ];
        let b = encode_state(&st);
        assert_eq!(decode_state(&b), Some(st));
        for cut in 0..b.len() {
            assert_eq!(decode_state(&b[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_state(&encode_state(&[])), Some(vec![]));
    }
}
