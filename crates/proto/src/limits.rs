//! Upload limits (storage-1.5.md §16, S15-160): what a server advertises in
//! `info/configuration` and enforces, and what a client assumes. One type with named
//! presets, so the server, the client and Weave 1.1 agree on every number.

use serde::{Deserialize, Serialize};

/// The keys of `info/configuration`. Field order is alphabetical, which is the order
/// Mozilla's server sends (S15-066). A document that leaves a key out means the value a
/// client assumes ([`Limits::CLIENT_ASSUMED`], CF-070).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default = "Limits::client_assumed")]
pub struct Limits {
    pub max_post_bytes: u64,
    pub max_post_records: u64,
    pub max_quota_limit: u64,
    pub max_record_payload_bytes: u64,
    pub max_request_bytes: u64,
    pub max_total_bytes: u64,
    pub max_total_records: u64,
}

impl Limits {
    /// What a Syncstead server advertises unless configured otherwise (Mozilla's values).
    pub const SERVER: Limits = Limits {
        max_post_bytes: 2_621_440,
        max_post_records: 100,
        max_quota_limit: 2_097_152_000,
        max_record_payload_bytes: 2_621_440,
        max_request_bytes: 2_625_536,
        max_total_bytes: 262_144_000,
        max_total_records: 10_000,
    };

    /// What clients assume for a key the server leaves out (CF-070).
    pub const CLIENT_ASSUMED: Limits = Limits {
        max_post_bytes: 256 * 1024,
        max_post_records: 100,
        max_quota_limit: u64::MAX,
        max_record_payload_bytes: 256 * 1024,
        max_request_bytes: 260 * 1024,
        max_total_bytes: 100 * 1024 * 1024,
        max_total_records: 10_000,
    };

    /// Weave 1.1 has no configuration document and no batches: a POST holds at most 100
    /// records and 1 MiB (S11-084), a record's payload at most 256 KiB (S11-021).
    pub const WEAVE11: Limits = Limits {
        max_post_bytes: 1024 * 1024,
        max_post_records: 100,
        max_quota_limit: u64::MAX,
        max_record_payload_bytes: 256 * 1024,
        max_request_bytes: 1024 * 1024,
        max_total_bytes: u64::MAX,
        max_total_records: u64::MAX,
    };

    /// The smallest `max_record_payload_bytes` a server may configure: Firefox sends
    /// records up to 256 KiB.
    pub const MIN_RECORD_PAYLOAD_BYTES: u64 = 262_144;

    fn client_assumed() -> Self {
        Limits::CLIENT_ASSUMED
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::SERVER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s15_066_keys_in_alphabetical_order() {
        let text = serde_json::to_string(&Limits::SERVER).unwrap();
        let keys: Vec<&str> = text.split('"').skip(1).step_by(2).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 7);
    }

    #[test]
    fn cf_070_missing_keys_are_what_clients_assume() {
        let l: Limits = serde_json::from_str(r#"{"max_post_records": 7}"#).unwrap();
        assert_eq!(l.max_post_records, 7);
        assert_eq!(l.max_request_bytes, Limits::CLIENT_ASSUMED.max_request_bytes);
        let round: Limits = serde_json::from_str(&serde_json::to_string(&Limits::SERVER).unwrap()).unwrap();
        assert_eq!(round, Limits::SERVER);
    }
}
