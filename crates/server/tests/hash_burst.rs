//! A burst of wrong-password requests with the real Argon2 cost: memory stays bounded by
//! the hashing slots, not by the burst, and other users are served meanwhile. Alone in
//! its test binary, so nothing else moves this process's RSS.
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use common::*;

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u10_012_a_login_burst_costs_the_slots_memory_not_the_bursts() {
    let s = TestServer::start_with(|c| {
        // The default cost (19 MiB per hash), one pass to keep the test short.
        c.argon2_memory_kib = Some(19_456);
        c.argon2_iterations = Some(1);
        c.password_hash_concurrency = Some(2);
        c.max_connections_per_address = Some(200);
    })
    .await;
    let user = weave_account(&s, "burst@example.com", "correct horse battery").await;
    let baseline = rss_bytes();
    let sampler = PeakRss::start();
    // 90 different accounts (below the address ceiling, so every one is really hashed).
    let attacker = client_from("127.0.0.2");
    let burst: Vec<_> = (0..90)
        .map(|i| {
            let (client, base) = (attacker.clone(), s.base.clone());
            tokio::spawn(async move {
                let name = syncstead_proto::username::username_for_account(&format!("n{i}@example.com"));
                client
                    .get(format!("{base}/1.1/{name}/info/collections"))
                    .header("authorization", basic_auth(&name, "wrong password"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    // Meanwhile a 1.5 user and the Weave owner are served.
    let other = s.client(7);
    assert_eq!(other.get("/info/collections").await.status, 200);
    let owner = client_from("127.0.0.3");
    let r = send(
        owner
            .get(format!("{}/1.1/{user}/info/collections", s.base))
            .header("authorization", basic_auth(&user, "correct horse battery")),
    )
    .await;
    assert!(matches!(r.status.as_u16(), 200 | 503), "{}", r.status);
    for b in burst {
        let status = b.await.unwrap();
        assert!(matches!(status, 401 | 503), "{status}");
    }
    let peak = sampler.stop();
    let after = rss_bytes();
    eprintln!(
        "RSS baseline {} MiB, peak {} MiB, after {} MiB",
        baseline / MIB,
        peak / MIB,
        after / MIB
    );
    // Two slots of 19 MiB, and room for the allocator; unbounded, 90 hashes held 1.7 GiB.
    assert!(
        peak < baseline + 120 * MIB,
        "peak {} MiB over baseline",
        (peak - baseline) / MIB
    );
    assert!(
        after < baseline + 80 * MIB,
        "after {} MiB over baseline",
        (after.saturating_sub(baseline)) / MIB
    );
}
