//! Scale-out by node assignment (issue: multi-node): one token server without storage and
//! two storage nodes, each with its own database, sharing the master secret. Users are
//! spread over the nodes and each user's data lives on its node only.
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn token_server_spreads_users_over_two_storage_nodes() {
    let ts = Server::start_with(|c| c.storage_node = Some(false)).await;
    let n1 = Server::start_with(|c| c.token_server = Some(false)).await;
    let n2 = Server::start_with(|c| c.token_server = Some(false)).await;
    let tokens = ts.running.as_ref().unwrap().state.token_store.clone();
    assert!(
        tokens.nodes().await.unwrap().is_empty(),
        "a token server alone is no node"
    );
    for n in [&n1, &n2] {
        assert!(tokens.add_node(&n.base, 100).await.unwrap());
    }

    let mut placed = Vec::new();
    for i in 0..6 {
        let account = new_account(&ts, Protocol::Sync15, &format!("spread{i}")).await;
        let mut c = client(&account).await;
        c.push("history", history(3, &format!("u{i}x")), &|_| {}).await.unwrap();
        let endpoint = c.transport.endpoint().await.unwrap();
        let (node, uid) = endpoint.rsplit_once("/1.5/").unwrap();
        placed.push((node.to_string(), uid.parse::<i64>().unwrap(), account));
    }
    let on = |n: &Server| placed.iter().filter(|(node, ..)| *node == n.base).count();
    assert_eq!(
        (on(&n1), on(&n2)),
        (3, 3),
        "least-loaded assignment alternates: {placed:?}"
    );
    let loads: Vec<i64> = tokens.nodes().await.unwrap().iter().map(|n| n.current_load).collect();
    assert_eq!(loads, [3, 3]);

    // Each user's records are in its node's database and nowhere else.
    for (node, uid, account) in &placed {
        for n in [&n1, &n2] {
            let store = &n.running.as_ref().unwrap().state.store;
            let (_, cols) = store
                .collection_timestamps(*uid, syncstead_store::Precondition::None)
                .await
                .unwrap();
            assert_eq!(
                cols.iter().any(|(c, _)| c == "history"),
                *node == n.base,
                "uid {uid} on {node}, looking at {}",
                n.base
            );
        }
        // A second device of the user is sent to the same node and reads the records.
        let mut b = client(&second_device(account, "B")).await;
        assert!(b.transport.endpoint().await.unwrap().starts_with(node.as_str()));
        let (h, _) = b.pull("history", &|_| {}).await.unwrap();
        assert_eq!(h.len(), 3);
    }
    // The token server itself serves no storage.
    let r = reqwest::get(format!("{}/1.5/1/info/collections", ts.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "{}", json!(r.status().as_u16()));
    for s in [ts, n1, n2] {
        s.stop().await;
    }
}
