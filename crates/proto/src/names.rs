//! Validation of the names that appear in URLs: uids, collections, BSO ids (S15-002, S15-010).

/// The standard Firefox collections and their fixed numeric ids (S15-004).
/// Custom collections are numbered from [`FIRST_CUSTOM_COLLECTION_ID`].
pub const STANDARD_COLLECTIONS: &[(i64, &str)] = &[
    (1, "clients"),
    (2, "crypto"),
    (3, "forms"),
    (4, "history"),
    (5, "keys"),
    (6, "meta"),
    (7, "bookmarks"),
    (8, "prefs"),
    (9, "tabs"),
    (10, "passwords"),
    (11, "addons"),
    (12, "addresses"),
    (13, "creditcards"),
];
pub const FIRST_CUSTOM_COLLECTION_ID: i64 = 101;

/// `^[0-9]{1,10}$` (S15-010).
pub fn parse_uid(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `^[a-zA-Z0-9._-]{1,32}$` (S15-002).
pub fn is_valid_collection(s: &str) -> bool {
    is_short_token(s)
}

/// `^[a-zA-Z0-9._-]{1,32}$`: the syntax of collection names and of `X-Client-State`.
pub fn is_short_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// `^[ -~]{1,64}$`: 1–64 printable ASCII characters (§1.3).
pub fn is_valid_bso_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// A `%` not followed by two hex digits. Such a path names nothing: it is refused rather
/// than decoded literally, so `a%` and `a%25` are never the same record by accident.
pub fn has_malformed_escape(path: &str) -> bool {
    let b = path.as_bytes();
    b.iter()
        .enumerate()
        .any(|(i, &c)| c == b'%' && !(i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()))
}

/// The `info/` documents a user reads with credentials (S15-061…S15-064, S11-030…S11-033);
/// `info/configuration` (1.5) needs none.
pub const INFO_DOCUMENTS: [&str; 4] = ["collections", "collection_counts", "collection_usage", "quota"];

pub fn is_info_document(s: &str) -> bool {
    INFO_DOCUMENTS.contains(&s)
}

/// `^[a-zA-Z0-9._-]{1,100}$`: a Weave 1.1 username as the User API accepts it (U10-001).
pub fn is_valid_username(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_escapes() {
        for bad in ["/a%", "/%%", "/a%2", "/a%zz", "/%2"] {
            assert!(has_malformed_escape(bad), "{bad}");
        }
        for good in ["/a", "/a%20b", "/%7B%7d", "/x%2F"] {
            assert!(!has_malformed_escape(good), "{good}");
        }
    }

    #[test]
    fn s15_010_uid_syntax() {
        assert_eq!(parse_uid("0"), Some(0));
        assert_eq!(parse_uid("9999999999"), Some(9_999_999_999));
        assert_eq!(parse_uid("12345678901"), None);
        assert_eq!(parse_uid(""), None);
        assert_eq!(parse_uid("-1"), None);
        assert_eq!(parse_uid("1a"), None);
    }

    #[test]
    fn s15_002_collection_names() {
        assert!(is_valid_collection("bookmarks"));
        assert!(is_valid_collection("a.b_c-D9"));
        assert!(is_valid_collection(&"x".repeat(32)));
        assert!(!is_valid_collection(&"x".repeat(33)));
        assert!(!is_valid_collection(""));
        assert!(!is_valid_collection("a b"));
        assert!(!is_valid_collection("é"));
    }

    #[test]
    fn bso_ids_are_printable_ascii() {
        assert!(is_valid_bso_id("-F_Szdjg3GzX"));
        assert!(is_valid_bso_id("a b~"));
        assert!(is_valid_bso_id(&"X".repeat(64)));
        for bad in ["", "A\nB", "A\n", "\nN", "A\tB", "é"] {
            assert!(!is_valid_bso_id(bad), "{bad:?}");
        }
        assert!(!is_valid_bso_id(&"X".repeat(65)));
    }
}
