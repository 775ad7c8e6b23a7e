//! A download of a whole large collection without `limit`, as Firefox for Android and iOS
//! make it (S15-081): every record comes back, and the server's memory stays bounded by
//! its chunk size, not by the collection. Alone in its test binary, so nothing else moves
//! this process's RSS.
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::Value;

const MIB: u64 = 1024 * 1024;
const RECORDS: usize = 25_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_081_a_full_download_of_25000_records_is_whole_and_streamed() {
    let s = TestServer::start().await;
    let u = s.client(1);
    fill_history(&u, RECORDS).await;
    let baseline = rss_bytes();
    let sampler = PeakRss::start();
    // Read as the body arrives, keeping only the ids, so the client side holds little.
    let mut r = u
        .req(reqwest::Method::GET, "/storage/history?full=1&newer=0")
        .header("accept", "application/newlines")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-weave-records"], RECORDS.to_string().as_str());
    assert!(r.headers().get("x-weave-next-offset").is_none());
    let mut ids = HashSet::new();
    let mut line = Vec::new();
    while let Some(bytes) = r.chunk().await.unwrap() {
        for b in bytes {
            if b == b'\n' {
                let v: Value = serde_json::from_slice(&line).unwrap();
                assert_eq!(v["payload"].as_str().unwrap().len(), 2000);
                ids.insert(v["id"].as_str().unwrap().to_string());
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    let peak = sampler.stop();
    assert_eq!(ids.len(), RECORDS, "every record, once");
    eprintln!(
        "RSS baseline {} MiB, peak {} MiB during a {} MiB download",
        baseline / MIB,
        peak / MIB,
        (RECORDS * 2000) as u64 / MIB
    );
    // Held whole, the 48 MiB of payloads were in memory twice (records and body).
    assert!(
        peak < baseline + 30 * MIB,
        "peak {} MiB over baseline",
        (peak - baseline) / MIB
    );
}
