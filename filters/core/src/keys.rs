//! Every shared-data key spikeguard uses, in one place (layouts: docs/ARCHITECTURE.md,
//! "Shared data layout"). All start with `sg:` (Istio gives all plugins of a sidecar one
//! namespace); each filter owns a prefix. A key that two filters share (a contract) is
//! named here once and both use this name.

/// Prefix of every key.
pub const PREFIX: &str = "sg:";

// ---- core -----------------------------------------------------------------------------------
/// Per-VM id counter (`core::lease::unique_id`).
pub const LEAD_IDS: &str = "sg:lead:ids";
/// The tick lease of a task (`core::lease`).
pub fn lease(task: &str) -> String {
    format!("sg:lead:{task}")
}

// ---- ratelimit ------------------------------------------------------------------------------
/// A rule's slot of 4 keys.
pub fn rl_slot(rule: &str, slot: u32) -> String {
    format!("sg:rl:{rule}:{slot}")
}

/// A fleet-scoped rule's slot of 4 keys (`fleetslot::Slot`).
pub fn fl_slot(rule: &str, slot: u32) -> String {
    format!("sg:fl:{rule}:{slot}")
}
/// A fleet-scoped rule's sync state (`fleetslot::Meta`; the sync's lease holder writes).
pub fn fl_meta(rule: &str) -> String {
    format!("sg:fl:{rule}:m")
}
/// A fleet-scoped rule's requests seen that no sync carried yet (every worker adds).
pub fn fl_seen(rule: &str) -> String {
    format!("sg:fl:{rule}:n")
}
/// This Envoy's name in the fleet (chosen once by the first sync holder).
pub const FL_ENVOY: &str = "sg:fl:envoy";
/// The lease task of ratelimit's fleet sync (`sg:lead:ratelimit-fleet`).
pub const RL_FLEET_TASK: &str = "ratelimit-fleet";

// ---- hotkey ---------------------------------------------------------------------------------
/// A rule's windowed view (every worker merges into it).
pub fn hk_view(rule: &str) -> String {
    format!("sg:hk:{rule}:view")
}
/// The published hot set (lease holder writes).
pub const HK_SHED: &str = "sg:hk:shed";
/// The operator block list (lease holder's poller writes).
pub const HK_BLOCKLIST: &str = "sg:hk:blocklist";
/// Contract hotkey -> simplepage: the hot keys of `divert` rules, an `oplist` list of
/// (hotkey rule name, key). Written by hotkey's lease holder when it changes; read by
/// simplepage's workers.
pub const HK_DIVERT: &str = "sg:hk:divert";

// ---- simplepage -----------------------------------------------------------------------------
/// A rule's load tally window (every worker merges).
pub fn sp_load(rule: &str) -> String {
    format!("sg:sp:{rule}:load")
}
/// The published overload state.
pub const SP_STATE: &str = "sg:sp:state";
/// The operator list (lease holder's poller writes).
pub const SP_OPLIST: &str = "sg:sp:oplist";
/// Diverted requests of the current alert period: count and top URLs.
pub const SP_INBOUND: &str = "sg:sp:inbound";
/// Bytes held in cache slots.
pub const SP_CACHE_BYTES: &str = "sg:sp:cbytes";
/// A micro-cache slot.
pub fn sp_cache(slot: u32) -> String {
    format!("sg:sp:c:{slot}")
}
/// A micro-cache slot's fill/refresh lock.
pub fn sp_lock(slot: u32) -> String {
    format!("sg:sp:l:{slot}")
}

// ---- breaker --------------------------------------------------------------------------------
/// An API's breaker state (`machine::Breaker`, CAS on every change).
pub fn br_state(api: &str) -> String {
    format!("sg:br:s:{api}")
}
/// An API's CLOSED window, per-tick buckets every worker merges into.
pub fn br_window(api: &str) -> String {
    format!("sg:br:w:{api}")
}
/// An API's bulkhead: calls in flight across all workers (CAS per acquire and release).
pub fn br_slots(api: &str) -> String {
    format!("sg:br:b:{api}")
}
/// The operator flag list (lease holder's poller writes).
pub const BR_FLAGS: &str = "sg:br:flags";
/// Contract breaker -> simplepage: the APIs whose breaker rejects calls now (OPEN,
/// FORCED_OPEN, HALF_OPEN), an `oplist` list of (API name, state). Written by breaker's lease
/// holder when it changes.
pub const BR_OPEN: &str = "sg:br:open";

// ---- sli ------------------------------------------------------------------------------------
/// A direction's top URLs: a `topview::View` of 1 s buckets every worker merges into.
pub fn sli_top(direction: &str) -> String {
    format!("sg:sli:{direction}:top")
}
/// A direction's SLI summary per page type (counts since start), every worker merges into it.
pub fn sli_sum(direction: &str) -> String {
    format!("sg:sli:{direction}:sum")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_under_the_prefix_and_distinct() {
        let keys = [
            LEAD_IDS.to_string(),
            lease("hotkey"),
            rl_slot("r", 0),
            fl_slot("r", 0),
            fl_meta("r"),
            fl_seen("r"),
            lease(RL_FLEET_TASK),
            FL_ENVOY.into(),
            hk_view("r"),
            HK_SHED.into(),
            HK_BLOCKLIST.into(),
            HK_DIVERT.into(),
            sp_load("r"),
            SP_STATE.into(),
            SP_OPLIST.into(),
            SP_INBOUND.into(),
            SP_CACHE_BYTES.into(),
            sp_cache(0),
            sp_lock(0),
            br_state("api"),
            br_window("api"),
            br_slots("api"),
            BR_FLAGS.into(),
            BR_OPEN.into(),
            sli_top("inbound"),
            sli_sum("inbound"),
        ];
        for k in &keys {
            assert!(k.starts_with(PREFIX), "{k}");
        }
        let mut d = keys.to_vec();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), keys.len());
    }
}
