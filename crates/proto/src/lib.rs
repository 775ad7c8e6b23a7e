//! Wire types and rules shared by the Syncstead server and client. No I/O lives here.
//!
//! Requirement ids (S15-…, T10-…) refer to `shared/spec/`.

pub mod bso;
pub mod json;
pub mod limits;
pub mod names;
pub mod query;
pub mod respcode;
pub mod timestamp;
pub mod token;
pub mod tokenserver;
pub mod username;
pub mod wbo;

pub use bso::{Bso, BsoInput, BsoRef, ListingFormat};
pub use limits::Limits;
pub use timestamp::SyncTimestamp;

/// Every way a client-supplied value can be rejected by the parsers in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("invalid timestamp")]
    Timestamp,
    #[error("invalid query parameter {0}")]
    Query(&'static str),
    #[error("invalid bso: {0}")]
    Bso(String),
    #[error("invalid token: {0}")]
    Token(&'static str),
}
