//! Token Server 1.0 rules that need no I/O: the `X-KeyID` header, client states, the
//! oldsync scope, and the checks and updates of a user's generation, keys-changed-at and
//! client state (tokenserver.md §2, §3, §5.2, §5.3).

use data_encoding::{BASE64URL_NOPAD, HEXLOWER};

/// The OAuth scope that grants access to Sync.
pub const OLDSYNC_SCOPE: &str = "https://identity.mozilla.com/apps/oldsync";

/// Generation that marks a retired (deleted) account (T10-032).
pub const MAX_GENERATION: i64 = i64::MAX;

/// What the `X-KeyID` header says: `<keys_changed_at>-<base64url client state>` (T10-013/014).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyId {
    /// `None` when 0 (T10-026).
    pub keys_changed_at: Option<i64>,
    /// Lowercase hex of the decoded bytes (T10-016).
    pub client_state: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyIdError {
    /// Not visible ASCII: `invalid-key-id`.
    Invalid,
    /// Malformed parts: `invalid-credentials`.
    Malformed,
}

impl KeyId {
    pub fn parse(header: &[u8]) -> Result<KeyId, KeyIdError> {
        if header.is_empty() || !header.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(KeyIdError::Invalid);
        }
        let text = std::str::from_utf8(header).map_err(|_| KeyIdError::Invalid)?;
        let (kca, state) = text.split_once('-').ok_or(KeyIdError::Malformed)?;
        if kca.is_empty() || !kca.bytes().all(|b| b.is_ascii_digit()) {
            return Err(KeyIdError::Malformed);
        }
        let kca: i64 = kca.parse().map_err(|_| KeyIdError::Malformed)?;
        let bytes = BASE64URL_NOPAD
            .decode(state.as_bytes())
            .map_err(|_| KeyIdError::Malformed)?;
        Ok(KeyId {
            keys_changed_at: (kca != 0).then_some(kca),
            client_state: HEXLOWER.encode(&bytes),
        })
    }

    /// The `fxa_kid` a token carries: 13-digit zero-padded keys-changed-at (or generation)
    /// and the client state in unpadded base64url (T10-095).
    pub fn fxa_kid(kca_or_generation: i64, client_state_hex: &str) -> String {
        let bytes = HEXLOWER.decode(client_state_hex.as_bytes()).unwrap_or_default();
        format!("{:013}-{}", kca_or_generation, BASE64URL_NOPAD.encode(&bytes))
    }
}

/// `X-Client-State` syntax (T10-015).
pub fn is_valid_client_state_header(s: &str) -> bool {
    crate::names::is_short_token(s)
}

/// Whether an OAuth `scope` claim grants Sync: split on whitespace and commas (spec README §5).
pub fn grants_oldsync(scope: &str) -> bool {
    scope
        .split(|c: char| c.is_whitespace() || c == ',')
        .any(|s| s == OLDSYNC_SCOPE)
}

/// The stored values of a user's current record that the checks compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    pub generation: i64,
    pub keys_changed_at: Option<i64>,
    pub client_state: String,
}

/// What a token request claims; absent values are `None` (T10-023, T10-026).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub generation: Option<i64>,
    pub keys_changed_at: Option<i64>,
    pub client_state: String,
}

/// Why a token request was refused (T10-050, all 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    InvalidKeysChangedAt,
    InvalidGeneration,
    /// `invalid-client-state`, with the description clients see.
    InvalidClientState(&'static str),
}

impl Rejection {
    pub fn status(&self) -> &'static str {
        match self {
            Rejection::InvalidKeysChangedAt => "invalid-keysChangedAt",
            Rejection::InvalidGeneration => "invalid-generation",
            Rejection::InvalidClientState(_) => "invalid-client-state",
        }
    }
}

/// The checks of T10-050, in order; the first failure wins.
pub fn validate(u: &StoredUser, r: &Claims, old_client_states: &[String]) -> Result<(), Rejection> {
    use Rejection::*;
    let both = |a: Option<i64>, b: Option<i64>| a.zip(b);
    if let (Some((rk, uk)), Some(rg)) = (both(r.keys_changed_at, u.keys_changed_at), r.generation) {
        if rk > uk && rg < rk {
            return Err(InvalidKeysChangedAt);
        }
    }
    if !u.client_state.is_empty() && r.client_state.is_empty() {
        return Err(InvalidClientState("Unacceptable client-state value empty string"));
    }
    if old_client_states.contains(&r.client_state) {
        return Err(InvalidClientState("Unacceptable client-state value stale value"));
    }
    if r.client_state != u.client_state {
        if r.generation.is_some_and(|g| g <= u.generation) {
            return Err(InvalidClientState(
                "Unacceptable client-state value new value with no generation change",
            ));
        }
        if let Some((rk, uk)) = both(r.keys_changed_at, u.keys_changed_at) {
            if rk <= uk {
                return Err(InvalidClientState(
                    "Unacceptable client-state value new value with no keys_changed_at change",
                ));
            }
        }
    }
    if r.generation.is_some_and(|g| u.generation > g) {
        return Err(InvalidGeneration);
    }
    if let Some((rk, uk)) = both(r.keys_changed_at, u.keys_changed_at) {
        if uk > rk {
            return Err(InvalidKeysChangedAt);
        }
    }
    if r.keys_changed_at.is_none() && u.keys_changed_at.is_some_and(|k| k != 0) {
        return Err(InvalidKeysChangedAt);
    }
    Ok(())
}

/// The generation and keys-changed-at to store after a valid request (T10-060).
pub fn updated_values(u: &StoredUser, r: &Claims) -> (i64, Option<i64>) {
    let kca = r.keys_changed_at.or(u.keys_changed_at);
    let generation = match (r.generation, r.keys_changed_at) {
        (Some(g), _) => g,
        (None, Some(rk)) if u.keys_changed_at.is_none_or(|uk| rk > uk) && rk > u.generation => rk,
        _ => u.generation,
    };
    (generation, kca)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(g: i64, k: Option<i64>, cs: &str) -> StoredUser {
        StoredUser {
            generation: g,
            keys_changed_at: k,
            client_state: cs.into(),
        }
    }
    fn req(g: Option<i64>, k: Option<i64>, cs: &str) -> Claims {
        Claims {
            generation: g,
            keys_changed_at: k,
            client_state: cs.into(),
        }
    }

    #[test]
    fn t10_013_t10_014_key_id_parsing() {
        let k = KeyId::parse(b"1510726317123-BAik7hEOdpGnPZnPBSdaTg").unwrap();
        assert_eq!(k.keys_changed_at, Some(1_510_726_317_123));
        assert_eq!(k.client_state, "0408a4ee110e7691a73d99cf05275a4e");
        assert_eq!(KeyId::parse(b"0000000000000-qqo").unwrap().keys_changed_at, None);
        assert_eq!(KeyId::parse(b"1234-state!"), Err(KeyIdError::Malformed));
        assert_eq!(KeyId::parse(b"1234"), Err(KeyIdError::Malformed));
        assert_eq!(KeyId::parse(b"abc-qqo"), Err(KeyIdError::Malformed));
        assert_eq!(KeyId::parse("1234-é".as_bytes()), Err(KeyIdError::Invalid));
        assert_eq!(KeyId::parse(b""), Err(KeyIdError::Invalid));
    }

    #[test]
    fn t10_095_fxa_kid() {
        assert_eq!(
            KeyId::fxa_kid(1_510_726_317_123, "0408a4ee110e7691a73d99cf05275a4e"),
            "1510726317123-BAik7hEOdpGnPZnPBSdaTg"
        );
        assert_eq!(KeyId::fxa_kid(1234, "aaaa"), "0000000001234-qqo");
    }

    #[test]
    fn t10_022_scope_splitting() {
        assert!(grants_oldsync("profile https://identity.mozilla.com/apps/oldsync"));
        assert!(grants_oldsync("profile,https://identity.mozilla.com/apps/oldsync"));
        assert!(!grants_oldsync(
            "https://identity.mozilla.com/apps/oldsync/extra profile"
        ));
        assert!(!grants_oldsync(""));
    }

    #[test]
    fn t10_050_checks_in_order() {
        let u = user(10, Some(10), "aa");
        assert_eq!(
            validate(&u, &req(Some(11), Some(12), "aa"), &[]),
            Err(Rejection::InvalidKeysChangedAt)
        );
        assert!(
            matches!(validate(&u, &req(Some(10), Some(10), ""), &[]), Err(Rejection::InvalidClientState(d)) if d.contains("empty"))
        );
        assert!(
            matches!(validate(&u, &req(Some(20), Some(20), "bb"), &["bb".into()]), Err(Rejection::InvalidClientState(d)) if d.contains("stale"))
        );
        assert!(
            matches!(validate(&u, &req(Some(10), None, "bb"), &[]), Err(Rejection::InvalidClientState(d)) if d.contains("generation"))
        );
        assert!(
            matches!(validate(&u, &req(Some(20), Some(10), "bb"), &[]), Err(Rejection::InvalidClientState(d)) if d.contains("keys_changed_at"))
        );
        assert_eq!(
            validate(&u, &req(Some(9), Some(10), "aa"), &[]),
            Err(Rejection::InvalidGeneration)
        );
        assert_eq!(
            validate(&u, &req(Some(10), Some(9), "aa"), &[]),
            Err(Rejection::InvalidKeysChangedAt)
        );
        assert_eq!(
            validate(&u, &req(Some(10), None, "aa"), &[]),
            Err(Rejection::InvalidKeysChangedAt)
        );
        assert_eq!(validate(&u, &req(Some(20), Some(20), "bb"), &[]), Ok(()));
        assert_eq!(validate(&u, &req(None, Some(10), "aa"), &[]), Ok(()));
        // T10-052: an unchanged kca above the generation is fine.
        assert_eq!(
            validate(&user(5, Some(10), "aa"), &req(Some(6), Some(10), "aa"), &[]),
            Ok(())
        );
    }

    #[test]
    fn t10_060_updates() {
        assert_eq!(
            updated_values(&user(10, Some(10), "aa"), &req(Some(12), Some(11), "aa")),
            (12, Some(11))
        );
        assert_eq!(
            updated_values(&user(10, None, "aa"), &req(None, Some(20), "aa")),
            (20, Some(20))
        );
        assert_eq!(
            updated_values(&user(30, None, "aa"), &req(None, Some(20), "aa")),
            (30, Some(20))
        );
        assert_eq!(
            updated_values(&user(10, Some(0), "aa"), &req(None, None, "aa")),
            (10, Some(0))
        );
    }
}
