//! Header names of the Sync protocols.

pub const X_LAST_MODIFIED: &str = "x-last-modified";
pub const X_WEAVE_TIMESTAMP: &str = "x-weave-timestamp";
pub const X_WEAVE_RECORDS: &str = "x-weave-records";
pub const X_WEAVE_BYTES: &str = "x-weave-bytes";
pub const X_WEAVE_TOTAL_RECORDS: &str = "x-weave-total-records";
pub const X_WEAVE_TOTAL_BYTES: &str = "x-weave-total-bytes";
pub const X_WEAVE_NEXT_OFFSET: &str = "x-weave-next-offset";
pub const X_WEAVE_BACKOFF: &str = "x-weave-backoff";
pub const X_IF_MODIFIED_SINCE: &str = "x-if-modified-since";
pub const X_IF_UNMODIFIED_SINCE: &str = "x-if-unmodified-since";
