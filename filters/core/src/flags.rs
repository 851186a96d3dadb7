//! Envoy's response flags as the `response.flags` property shows them: bit `i` is
//! `RESPONSE_FLAGS[i]` (`StreamInfo::CoreResponseFlag` order, Envoy 1.40). One table for every
//! filter that reads them.

pub const RESPONSE_FLAGS: [&str; 29] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
];
/// `DC`: the downstream went away (the client's doing, not the upstream's).
pub const FLAG_DC: u64 = 1 << 14;
/// `DR`: the downstream reset the stream.
pub const FLAG_DR: u64 = 1 << 28;

/// The bit of flag `name` (`UF`), None for an unknown name.
pub fn bit(name: &str) -> Option<u64> {
    RESPONSE_FLAGS
        .iter()
        .position(|n| *n == name)
        .map(|i| 1u64 << i)
}

/// The mask of `names` (unknown names are ignored: callers validate config names with `bit`).
pub fn mask(names: &[&str]) -> u64 {
    names.iter().filter_map(|n| bit(n)).fold(0, |m, b| m | b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_follow_envoys_order() {
        assert_eq!(bit("UF"), Some(1 << 5));
        assert_eq!(bit("DC"), Some(FLAG_DC));
        assert_eq!(bit("DR"), Some(FLAG_DR));
        assert_eq!(bit("nope"), None);
        assert_eq!(mask(&["UH", "UF"]), (1 << 1) | (1 << 5));
    }
}
