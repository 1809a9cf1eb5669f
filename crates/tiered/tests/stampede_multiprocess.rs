//! One load per key across OS processes (`Options::distributed`): 4 peer
//! processes, 250 concurrent `get_or_load` calls each, on one cold key whose
//! loader takes 200 ms and counts its calls in Redis. Then the same with the
//! lease holder SIGKILLed halfway through its load.
//!
//! A custom harness (`harness = false`): `main` is the parent unless
//! `TIERED_PEER` is set; it prints libtest-style lines.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tiered::Cache;
use tiered_testkit::redis::RedisServer;

const PEERS: usize = 4;
const CALLS: usize = 250;
const LOAD: Duration = Duration::from_millis(200);

/// A peer: READY, wait for GO, 250 concurrent calls, then DONE <max ms>.
async fn peer(url: String, kill_mode: bool) {
    let cache: Cache<String> = Cache::builder("stampede")
        .redis(&url)
        .l2_timeout(Duration::from_secs(2))
        .distributed(true)
        .build()
        .unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let counter = client.get_multiplexed_async_connection().await.unwrap();
    println!("READY");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let mut calls = Vec::new();
    for _ in 0..CALLS {
        let (cache, counter) = (cache.clone(), counter.clone());
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let got = cache
                .get_or_load("hot", move || async move {
                    let mut counter = counter;
                    let n = redis::cmd("INCR")
                        .arg("loads")
                        .query_async::<i64>(&mut counter)
                        .await
                        .map_err(std::io::Error::other)?;
                    println!("LOADING");
                    std::io::stdout().flush()?;
                    // In the kill run the first load never finishes by itself:
                    // the parent kills its process mid-load, whatever the
                    // machine's speed.
                    let took = if kill_mode && n == 1 {
                        Duration::from_secs(30)
                    } else {
                        LOAD
                    };
                    tokio::time::sleep(took).await;
                    Ok::<_, std::io::Error>(Some("the value".to_string()))
                })
                .await;
            (got, started.elapsed())
        }));
    }
    let mut slowest = Duration::ZERO;
    for call in calls {
        let (got, took) = call.await.unwrap();
        assert_eq!(
            got.unwrap().as_deref().map(String::as_str),
            Some("the value")
        );
        slowest = slowest.max(took);
    }
    println!("DONE {}", slowest.as_millis());
}

struct Peer {
    child: Child,
    stdin: ChildStdin,
}

/// Starts the peers; returns them and a channel of (peer, line).
fn spawn(url: &str, kill_mode: bool) -> (Vec<Peer>, mpsc::Receiver<(usize, String)>) {
    let me = std::env::current_exe().unwrap();
    let (tx, rx) = mpsc::channel();
    let peers = (0..PEERS)
        .map(|i| {
            let mut child = Command::new(&me)
                .env("TIERED_PEER", url)
                .env("TIERED_KILL_MODE", if kill_mode { "1" } else { "0" })
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = BufReader::new(child.stdout.take().unwrap());
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in stdout.lines().map_while(Result::ok) {
                    let _ = tx.send((i, line));
                }
            });
            let stdin = child.stdin.take().unwrap();
            Peer { child, stdin }
        })
        .collect();
    (peers, rx)
}

fn next(rx: &mpsc::Receiver<(usize, String)>) -> Result<(usize, String), String> {
    rx.recv_timeout(Duration::from_secs(30))
        .map_err(|_| "a peer went silent".to_string())
}

fn loads(redis: &RedisServer) -> i64 {
    redis.cli(&["GET", "loads"]).trim().parse().unwrap_or(0)
}

/// 4 × 250 calls on a cold key: the loader runs exactly once.
fn one_load_for_all(kill_holder: bool) -> Result<(), String> {
    let redis = RedisServer::start();
    let (mut peers, rx) = spawn(&redis.url(), kill_holder);
    for _ in 0..PEERS {
        let (_, line) = next(&rx)?;
        if line != "READY" {
            return Err(format!("expected READY, got {line}"));
        }
    }
    for p in &mut peers {
        writeln!(p.stdin, "GO").map_err(|e| e.to_string())?;
    }
    let mut killed = None;
    let mut done = Vec::new();
    while done.len() + usize::from(killed.is_some()) < PEERS {
        let (i, line) = next(&rx)?;
        if line == "LOADING" && kill_holder && killed.is_none() {
            // The holder is mid-load (its load would take 30 s).
            std::thread::sleep(LOAD / 2);
            peers[i].child.kill().map_err(|e| e.to_string())?;
            killed = Some(i);
        } else if let Some(ms) = line.strip_prefix("DONE ") {
            done.push(ms.parse::<u64>().map_err(|e| e.to_string())?);
        }
    }
    for (i, p) in peers.iter_mut().enumerate() {
        let status = p.child.wait().map_err(|e| e.to_string())?;
        if Some(i) != killed && !status.success() {
            return Err(format!("peer {i} failed: {status}"));
        }
    }
    let expected = if kill_holder { 2 } else { 1 };
    let ran = loads(&redis);
    if ran != expected {
        return Err(format!("the loader ran {ran} times, expected {expected}"));
    }
    // No call waits for the killed holder's 30 s load: at most what its
    // lease had left (renewed every third of LEASE_TTL until the kill, which
    // a slow machine delivers late) plus two loads, and slack.
    let bound = 2 * tiered::load::lease::LEASE_TTL + 2 * LOAD + Duration::from_millis(1500);
    let slowest = Duration::from_millis(done.iter().copied().max().unwrap_or(0));
    if slowest > bound {
        return Err(format!("a call waited {slowest:?} (bound {bound:?})"));
    }
    println!("    ({} calls, slowest {slowest:?})", done.len() * CALLS);
    Ok(())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(url) = std::env::var("TIERED_PEER") {
        let kill_mode = std::env::var("TIERED_KILL_MODE").is_ok_and(|v| v == "1");
        runtime.block_on(peer(url, kill_mode));
        return;
    }
    let tests: [(&str, bool); 2] = [
        ("one_load_across_four_processes", false),
        (
            "the_holder_killed_mid_load_costs_exactly_one_more_load",
            true,
        ),
    ];
    println!("running {} tests", tests.len());
    let mut failed = 0;
    for (name, kill) in tests {
        match one_load_for_all(kill) {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n    {e}");
            }
        }
    }
    let passed = tests.len() - failed;
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out"
    );
    if failed > 0 {
        std::process::exit(101);
    }
}
