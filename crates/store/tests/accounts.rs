//! Weave 1.1 accounts on the test backend (SQLite, or PostgreSQL in its run).
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use common::open;
use syncstead_proto::BsoInput;
use syncstead_store::{AccountError, Precondition, WriteLimits};

#[tokio::test]
async fn accounts_live_in_their_own_bucket_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let a = store
        .create_account("alice", "a@example.com", "hash1", None)
        .await
        .unwrap();
    assert!(a.bucket() < 0, "1.1 buckets never collide with 1.5 uids");
    assert!(matches!(
        store.create_account("alice", "x@example.com", "h", None).await,
        Err(AccountError::Exists)
    ));
    assert!(matches!(
        store.create_account("bob", "b@example.com", "h", Some(1)).await,
        Err(AccountError::Full)
    ));

    let bso = BsoInput {
        id: "x".into(),
        payload: Some("p".into()),
        sortindex: None,
        ttl: None,
    };
    store
        .put_bso(
            a.bucket(),
            "tabs",
            bso.clone(),
            Precondition::None,
            WriteLimits::default(),
        )
        .await
        .unwrap();
    store
        .put_bso(-a.bucket(), "tabs", bso, Precondition::None, WriteLimits::default())
        .await
        .unwrap();

    assert!(store
        .set_reset_code("alice", Some(("codehash".into(), 123)))
        .await
        .unwrap());
    assert_eq!(
        store.account("alice").await.unwrap().unwrap().reset,
        Some(("codehash".into(), 123))
    );
    assert!(store.set_password("alice", "hash2").await.unwrap());
    let acct = store.account("alice").await.unwrap().unwrap();
    assert_eq!(
        (acct.password_hash.as_str(), acct.reset),
        ("hash2", None),
        "a new password clears the reset code"
    );
    assert!(store.set_email("alice", "new@example.com").await.unwrap());
    assert!(store.set_disabled("alice", true).await.unwrap());
    assert!(store.account("alice").await.unwrap().unwrap().disabled);

    assert!(store.delete_account("alice").await.unwrap());
    assert!(store.account("alice").await.unwrap().is_none());
    let (_, colls) = store
        .collection_timestamps(a.bucket(), Precondition::None)
        .await
        .unwrap();
    assert!(colls.is_empty(), "the account's data went with it");
    let (_, other) = store
        .collection_timestamps(-a.bucket(), Precondition::None)
        .await
        .unwrap();
    assert_eq!(other.len(), 1, "a 1.5 user with the same number is untouched");
    assert!(!store.delete_account("alice").await.unwrap());
}
