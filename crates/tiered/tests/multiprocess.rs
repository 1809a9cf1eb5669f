//! Invalidation across OS processes: this test re-runs its own binary as peer
//! instances (`TIERED_PEER=1`), each a separate process with its own cache and
//! connections, and checks that a removal made here reaches all of them.
//!
//! A custom harness (`harness = false` in Cargo.toml): `main` is the parent
//! unless `TIERED_PEER` is set, and prints a libtest-style summary line.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tiered::Cache;
use tiered_testkit::redis::RedisServer;

const PEERS: usize = 3;

fn cache(url: &str) -> Cache<String> {
    Cache::<String>::builder("multi")
        .redis(url)
        .l2_timeout(Duration::from_secs(5))
        .ttl(Duration::from_secs(600))
        .build()
        .unwrap()
}

/// A peer: hold "k" in L1, say READY, wait until the parent's removal has
/// dropped it, say GONE. Exit 1 if that takes more than 10 s.
async fn peer(url: String) {
    let cache = cache(&url);
    let got = cache
        .get_or_load("k", || async {
            Ok::<_, std::io::Error>(Some("old".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("old"));
    println!("READY");
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.contains("k").unwrap() {
        if Instant::now() > deadline {
            println!("STILL-HOLDING");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Not served from L2 either.
    assert_eq!(cache.get("k").await.unwrap(), None);
    println!("GONE");
}

async fn parent() -> Result<(), String> {
    let redis = RedisServer::start();
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    for _ in 0..PEERS {
        let mut child = Command::new(&me)
            .env("TIERED_PEER", redis.url())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        children.push((child, out.lines()));
    }
    for (_, lines) in &mut children {
        match lines.next() {
            Some(Ok(line)) if line == "READY" => {}
            other => return Err(format!("peer did not get ready: {other:?}")),
        }
    }
    let a = cache(&redis.url());
    a.remove("k").await.map_err(|e| e.to_string())?;
    for (mut child, mut lines) in children {
        let line = lines.next();
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() || !matches!(&line, Some(Ok(l)) if l == "GONE") {
            return Err(format!("peer ended with {status}, said {line:?}"));
        }
    }
    Ok(())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(url) = std::env::var("TIERED_PEER") {
        runtime.block_on(peer(url));
        return;
    }
    println!("running 1 test");
    let name = "a_removal_reaches_peer_processes";
    match runtime.block_on(parent()) {
        Ok(()) => {
            println!("test {name} ... ok\n");
            println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
        }
        Err(e) => {
            println!("test {name} ... FAILED\n{e}\n");
            println!(
                "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out"
            );
            std::process::exit(101);
        }
    }
}
