//! Token-server records on the test backend (SQLite, or PostgreSQL in its run;
//! tokenserver.md §5).
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use common::open;
use syncstead_proto::tokenserver::{Claims, Rejection};
use syncstead_proto::BsoInput;
use syncstead_store::{Login, LoginError, NewUserPolicy, NodeUpdate, Precondition, WriteLimits};

const OPEN: NewUserPolicy = NewUserPolicy {
    open: true,
    allow_list_only: false,
    max_users: None,
    release_rate: 0.1,
};

fn login(fxa: &str, generation: Option<i64>, kca: Option<i64>, state: &str) -> Login {
    Login {
        email: format!("{fxa}@example.com"),
        fxa_uid: fxa.into(),
        claims: Claims {
            generation,
            keys_changed_at: kca,
            client_state: state.into(),
        },
    }
}

#[tokio::test]
async fn t10_070_no_node_means_no_user_and_capacity_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    assert!(matches!(
        store.login(login("a", None, None, "aa"), OPEN).await,
        Err(LoginError::NoNode)
    ));
    store.add_node("https://n1", 10).await.unwrap();
    store
        .update_node(
            "https://n1",
            NodeUpdate {
                available: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Available is 0 but capacity has room: a release round frees 10% (at least one slot).
    let a = store.login(login("a", None, None, "aa"), OPEN).await.unwrap();
    assert_eq!(a.node, "https://n1");
    let n = &store.nodes().await.unwrap()[0];
    assert_eq!((n.current_load, n.available), (1, 0));
}

#[tokio::test]
async fn t10_041_t10_061_key_change_and_purge_of_the_old_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.add_node("https://n1/", 100).await.unwrap();
    let first = store.login(login("a", Some(10), Some(10), "aa"), OPEN).await.unwrap();
    assert_eq!(first.node, "https://n1");
    let same = store.login(login("a", Some(11), Some(10), "aa"), OPEN).await.unwrap();
    assert_eq!((same.uid, same.generation), (first.uid, 11));
    let bso = BsoInput {
        id: "x".into(),
        payload: Some("p".into()),
        sortindex: None,
        ttl: None,
    };
    store
        .put_bso(first.uid, "tabs", bso, Precondition::None, WriteLimits::default())
        .await
        .unwrap();

    let second = store.login(login("a", Some(20), Some(20), "bb"), OPEN).await.unwrap();
    assert_ne!(second.uid, first.uid);
    assert_eq!(second.node, first.node);
    let refused = store.login(login("a", Some(30), Some(30), "aa"), OPEN).await;
    assert!(matches!(
        refused,
        Err(LoginError::Rejected(Rejection::InvalidClientState(_)))
    ));

    // Not yet past the grace time: nothing purged.
    assert_eq!(store.purge_replaced("https://n1", 0).await.unwrap(), 0);
    let later = i64::MAX;
    assert_eq!(store.purge_replaced("https://n1", later).await.unwrap(), 1);
    assert_eq!(
        store.purge_replaced("https://n1", later).await.unwrap(),
        0,
        "purged once"
    );
    let (_, colls) = store
        .collection_timestamps(first.uid, Precondition::None)
        .await
        .unwrap();
    assert!(colls.is_empty());
}

#[tokio::test]
async fn t10_042_removed_or_downed_nodes_move_users() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.add_node("https://n1", 100).await.unwrap();
    let first = store.login(login("a", None, None, "aa"), OPEN).await.unwrap();
    store.add_node("https://n2", 100).await.unwrap();
    store.remove_node("https://n1").await.unwrap();
    let moved = store.login(login("a", None, None, "aa"), OPEN).await.unwrap();
    assert_eq!(moved.node, "https://n2");
    assert_ne!(moved.uid, first.uid);
    store.add_node("https://n3", 100).await.unwrap();
    store
        .update_node(
            "https://n2",
            NodeUpdate {
                downed: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let again = store.login(login("a", None, None, "aa"), OPEN).await.unwrap();
    assert_eq!(again.node, "https://n3");
}

#[tokio::test]
async fn new_user_policies() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.add_node("https://n1", 100).await.unwrap();
    let closed = NewUserPolicy {
        allow_list_only: true,
        ..OPEN
    };
    assert!(matches!(
        store.login(login("a", None, None, "aa"), closed).await,
        Err(LoginError::NewUsersDisabled)
    ));
    store.allow_account("a", true).await.unwrap();
    assert!(store.login(login("a", None, None, "aa"), closed).await.is_ok());
    let capped = NewUserPolicy {
        max_users: Some(1),
        ..OPEN
    };
    assert!(matches!(
        store.login(login("b", None, None, "aa"), capped).await,
        Err(LoginError::NewUsersDisabled)
    ));
    let nobody = NewUserPolicy { open: false, ..OPEN };
    assert!(
        store.login(login("a", None, None, "aa"), nobody).await.is_ok(),
        "existing users keep working"
    );
}
