//! Who a request is. Storage 1.5 requests carry Hawk credentials derived from a token the
//! token server issued ([`HawkUser`]); the Weave 1.1 surfaces use HTTP Basic with the
//! account's password ([`WeaveUser`]). Both are axum extractors: a handler gets a user's
//! bucket only by taking one, and each checks the path before the credentials, so a
//! malformed path is a 404 whoever asks. [`throttle`] slows down guessing.

pub mod basic;
pub mod hawk;
pub mod throttle;

pub use basic::{authenticate, basic_credentials, WeaveAuth, WeaveUser, ADDRESS_CEILING};
pub use hawk::{parse_hawk_header, HawkIdentity, HawkUser, HawkVerifier, NonceCache};
pub use throttle::{pair_key, Throttle};
