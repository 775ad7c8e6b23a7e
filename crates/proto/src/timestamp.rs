//! Sync timestamps: integer milliseconds, always a multiple of 10, shown as seconds with
//! exactly two decimals (S15-040, S15-041).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, Serializer};

use crate::ProtoError;

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyncTimestamp(i64);

impl SyncTimestamp {
    pub const ZERO: SyncTimestamp = SyncTimestamp(0);
    /// Used as the expiry of records written without a ttl.
    pub const NEVER: SyncTimestamp = SyncTimestamp(i64::MAX - i64::MAX % 10);

    /// Truncates to centiseconds.
    pub fn from_millis(ms: i64) -> Self {
        let ms = ms.max(0);
        SyncTimestamp(ms - ms % 10)
    }

    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self::from_millis(ms)
    }

    pub fn as_millis(self) -> i64 {
        self.0
    }

    pub fn as_seconds_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// Adds whole seconds, saturating at [`SyncTimestamp::NEVER`].
    pub fn plus_seconds(self, secs: u64) -> Self {
        let ms = (secs.min(i64::MAX as u64) as i64).saturating_mul(1000);
        Self::from_millis(self.0.saturating_add(ms)).min(Self::NEVER)
    }

    /// The next centisecond tick after this one.
    pub fn next_tick(self) -> Self {
        SyncTimestamp(self.0 + 10)
    }

    /// Parses a client-supplied decimal seconds value (headers, `newer`, `older`):
    /// as an IEEE double, rejecting NaN, infinities, negatives and values above
    /// u64::MAX/1000, then floored to milliseconds and truncated to centiseconds (S15-040).
    pub fn parse_seconds(s: &str) -> Result<Self, ProtoError> {
        let v: f64 = s.trim().parse().map_err(|_| ProtoError::Timestamp)?;
        Self::from_seconds_f64(v)
    }

    /// Seconds as a JSON number carries them (`modified` of a record, info/collections).
    pub fn from_seconds_f64(v: f64) -> Result<Self, ProtoError> {
        if !v.is_finite() || !(0.0..=18_446_744_073_709_551.0).contains(&v) {
            return Err(ProtoError::Timestamp);
        }
        let ms = (v * 1000.0).floor();
        // Values past i64 milliseconds are far beyond any real timestamp; they compare as "later than everything".
        let ms = if ms >= i64::MAX as f64 { i64::MAX } else { ms as i64 };
        Ok(Self::from_millis(ms))
    }
}

impl fmt::Display for SyncTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 1000, (self.0 % 1000) / 10)
    }
}

/// Serialises as a JSON number with exactly two decimals (`1700000000.10`, `0.00`).
/// Reads the JSON number servers send (S15-041), so clients hold times as servers do.
impl<'de> Deserialize<'de> for SyncTimestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(deserializer)?;
        SyncTimestamp::from_seconds_f64(v).map_err(serde::de::Error::custom)
    }
}

impl Serialize for SyncTimestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = serde_json::value::RawValue::from_string(self.to_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s15_040_parse_truncates_to_centiseconds() {
        assert_eq!(SyncTimestamp::parse_seconds("1234.567").unwrap().as_millis(), 1_234_560);
        assert_eq!(SyncTimestamp::parse_seconds("0").unwrap(), SyncTimestamp::ZERO);
        assert_eq!(SyncTimestamp::parse_seconds("12").unwrap().as_millis(), 12_000);
        assert_eq!(SyncTimestamp::parse_seconds("1e3").unwrap().as_millis(), 1_000_000);
        for bad in ["-3", "abc", "", "NaN", "inf", "-0.5", "1.9e16"] {
            assert!(SyncTimestamp::parse_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn s15_041_json_numbers_round_trip() {
        let t = SyncTimestamp::from_millis(1_700_000_000_100);
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(text, "1700000000.10");
        assert_eq!(serde_json::from_str::<SyncTimestamp>(&text).unwrap(), t);
        assert_eq!(serde_json::from_str::<SyncTimestamp>("12").unwrap().as_millis(), 12_000);
        assert!(serde_json::from_str::<SyncTimestamp>("-1").is_err());
    }

    #[test]
    fn s15_041_two_decimals_on_the_wire() {
        assert_eq!(
            SyncTimestamp::from_millis(1_700_000_000_100).to_string(),
            "1700000000.10"
        );
        assert_eq!(SyncTimestamp::ZERO.to_string(), "0.00");
        assert_eq!(SyncTimestamp::from_millis(5).to_string(), "0.00");
        let direct = serde_json::to_string(&SyncTimestamp::from_millis(1_000)).unwrap();
        assert_eq!(direct, "1.00");
    }

    #[test]
    fn plus_seconds_saturates() {
        assert_eq!(SyncTimestamp::from_millis(1000).plus_seconds(2).as_millis(), 3000);
        assert_eq!(
            SyncTimestamp::from_millis(1000).plus_seconds(u64::MAX),
            SyncTimestamp::NEVER
        );
    }
}
