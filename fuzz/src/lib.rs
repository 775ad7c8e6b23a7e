//! The bodies of the fuzz targets: each feeds arbitrary bytes to one parser that faces the
//! network, as the server calls it. A target fails only by panicking (or by the
//! sanitizer's findings); every parser must answer bad input with an error.
//!
//! `cargo +nightly fuzz run <target>` runs one under libFuzzer; the workspace's test
//! crates/server/tests/fuzz_smoke.rs runs each on its seeds and on random and mutated
//! inputs (the CI smoke run).

use std::sync::OnceLock;

use syncstead_proto::query::{parse_ids, CollectionQuery, Offset, PostQuery};
use syncstead_proto::token::TokenSigner;
use syncstead_proto::tokenserver::KeyId;
use syncstead_proto::wbo::{parse_wbo, WboQuery};
use syncstead_proto::SyncTimestamp;

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Query strings of storage 1.5 and 1.1, paging offsets, id lists, timestamps, names.
pub fn query(data: &[u8]) {
    let s = text(data);
    let _ = CollectionQuery::parse(&s);
    let _ = PostQuery::parse(&s);
    let _ = WboQuery::parse(&s);
    let _ = Offset::parse(&s);
    let _ = parse_ids(&s);
    let _ = SyncTimestamp::parse_seconds(&s);
    let _ = syncstead_proto::names::parse_uid(&s);
    let _ = syncstead_proto::names::is_valid_collection(&s);
    let _ = syncstead_proto::names::is_valid_bso_id(&s);
    // Batch ids arrive in the query and are parsed by the store like this.
    let _ = s.parse::<i64>();
}

/// BSO bodies (PUT, POST as JSON and as newlines) and WBO objects.
pub fn bodies(data: &[u8]) {
    let _ = syncstead_proto::bso::parse_put_body(data);
    let _ = syncstead_proto::bso::parse_post_body(data, false);
    let _ = syncstead_proto::bso::parse_post_body(data, true);
    if let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = parse_wbo(&obj);
    }
}

fn signer() -> &'static TokenSigner {
    static S: OnceLock<TokenSigner> = OnceLock::new();
    S.get_or_init(|| TokenSigner::new("fuzz-master-secret"))
}

/// The `Authorization: Hawk …` header and the token id inside it.
pub fn hawk_header(data: &[u8]) {
    let s = text(data);
    if let Some(h) = syncstead_server::auth::parse_hawk_header(&s) {
        if let Some(id) = h.id.as_deref() {
            let _ = signer().verify(id);
        }
    }
}

/// Token ids (tokenlib format) as the storage node verifies them.
pub fn token_id(data: &[u8]) {
    let _ = signer().verify(&text(data));
}

/// `Authorization: Basic …` of the Weave 1.1 surfaces.
pub fn basic_auth(data: &[u8]) {
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        headers.insert(http::header::AUTHORIZATION, v);
        let _ = syncstead_server::auth::basic_credentials(&headers);
    }
}

/// `X-KeyID` of token requests.
pub fn key_id(data: &[u8]) {
    let _ = KeyId::parse(data);
}

fn verifier() -> &'static (tokio::runtime::Runtime, syncstead_server::oauth::Verifier) {
    static V: OnceLock<(tokio::runtime::Runtime, syncstead_server::oauth::Verifier)> = OnceLock::new();
    V.get_or_init(|| {
        // Any modulus will do: signatures never verify, everything before them is parsed.
        let n = format!("{}A", "u".repeat(341));
        let jwk = format!(r#"{{"kty":"RSA","alg":"RS256","kid":"k1","n":"{n}","e":"AQAB"}}"#);
        let keys = syncstead_server::oauth::load_keys(&jwk).expect("a JWK");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let v = syncstead_server::oauth::Verifier::local(keys, None, None, std::time::Duration::from_secs(1));
        (rt, v)
    })
}

/// OAuth access tokens (JWTs) as the token server verifies them locally.
pub fn jwt(data: &[u8]) {
    let (rt, v) = verifier();
    let _ = rt.block_on(v.verify(&text(data)));
}

#[cfg(test)]
mod tests {
    use rand::{Rng, RngCore, SeedableRng};

    /// Valid-looking inputs the mutations start from.
    const SEEDS: &[&str] = &[
        "full=1&newer=1700000000.00&limit=10&offset=MTcwMDAwMDAwMDAwMDphYmM&sort=index&ids=a,b,c",
        "batch=true&commit=true",
        "parentid=p&index_above=3&index_below=9&older=1.5&sort=oldest&limit=5&offset=2",
        r#"{"id":"abc","payload":"x","sortindex":3,"ttl":60}"#,
        r#"[{"id":"a","payload":"p"},{"id":"b","payload":"q","ttl":0}]"#,
        "{\"id\":\"a\",\"payload\":\"p\"}\n{\"id\":\"b\"}\n",
        r#"Hawk id="eyJ1aWQiOjF9abc", ts="1700000000", nonce="abc=", mac="bWFj""#,
        r#"id="eyJ1aWQiOjF9abc", ts="1700000000", nonce="abc=", mac="bWFj""#,
        // Once crashed the hawk crate (a ts beyond SystemTime).
        r#"     ts     ="000010000000006021490421""#,
        "Basic am9objpzZWNyZXQ=",
        "1510726317123-BAik7hEOdpGnPZnPBSdaTg",
        "eyJhbGciOiJSUzI1NiIsInR5cCI6ImF0K0pXVCIsImtpZCI6ImsxIn0.eyJzdWIiOiJhYmMiLCJleHAiOjk5OTk5OTk5OTl9.c2ln",
    ];

    type Target = fn(&[u8]);
    const TARGETS: &[(&str, Target)] = &[
        ("query", super::query),
        ("bodies", super::bodies),
        ("hawk_header", super::hawk_header),
        ("token_id", super::token_id),
        ("basic_auth", super::basic_auth),
        ("key_id", super::key_id),
        ("jwt", super::jwt),
    ];

    fn mutate(rng: &mut impl Rng, input: &[u8]) -> Vec<u8> {
        let mut v = input.to_vec();
        for _ in 0..rng.gen_range(1..6) {
            match rng.gen_range(0..4) {
                0 if !v.is_empty() => {
                    let i = rng.gen_range(0..v.len());
                    v[i] = rng.gen();
                }
                1 if !v.is_empty() => {
                    let i = rng.gen_range(0..v.len());
                    v.remove(i);
                }
                2 => {
                    let i = rng.gen_range(0..=v.len());
                    let b = *b"=&,\"{}[]:.-_%\n\\\x00\xff9"
                        .get(rng.gen_range(0..21))
                        .unwrap_or(&b'x');
                    v.insert(i, b);
                }
                _ => {
                    let i = rng.gen_range(0..=v.len());
                    let j = rng.gen_range(i..=v.len());
                    let chunk = v[i..j].to_vec();
                    v.splice(j..j, chunk);
                }
            }
        }
        v
    }

    /// The CI smoke run: every target on every seed, on random bytes and on mutations.
    #[test]
    fn smoke_every_target() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
        for (name, target) in TARGETS {
            for seed in SEEDS {
                target(seed.as_bytes());
            }
            for _ in 0..3000 {
                let mut random = vec![0u8; rng.gen_range(0..200)];
                rng.fill_bytes(&mut random);
                target(&random);
                let seed = SEEDS[rng.gen_range(0..SEEDS.len())].as_bytes();
                target(&mutate(&mut rng, seed));
            }
            eprintln!("{name}: ok");
        }
    }
}
