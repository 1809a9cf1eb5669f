//! Invalidation propagation time: instance A removes a key that instances B, C
//! and D hold in L1; how long until each of them has dropped it?
//!
//! Four `Cache` instances in one process, each with its own Redis connections
//! and backplane subscriber, against a private `redis-server` on loopback. One
//! watcher thread sweeps B, C and D (`contains`, which reads L1 only) and
//! records when each first reports the key gone; time runs from the start of
//! A's `remove` call. Prints p50/p99/max per observation and for "all three".
//!
//! Run: `cargo run --release -p tiered-bench --bin backplane-latency -- [--n 1000]`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tiered::Cache;
use tiered_testkit::redis::RedisServer;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn parse_n() -> Result<usize, String> {
    let mut n = 1000;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--n" => {
                n = it
                    .next()
                    .ok_or("--n needs a value")?
                    .parse()
                    .map_err(|e| format!("--n: {e}"))?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if n == 0 {
        return Err("--n must be at least 1".into());
    }
    Ok(n)
}

fn main() {
    let n = match parse_n() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("backplane-latency: {e}");
            std::process::exit(2);
        }
    };
    let redis = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let make = || -> Cache<u64> {
        Cache::builder("latency")
            .redis(redis.url())
            .ttl(Duration::from_secs(3600))
            .build()
            .expect("config")
    };
    let (a, peers) = runtime.block_on(async { (make(), [make(), make(), make()]) });
    let peers = Arc::new(peers);
    let mut each = Vec::with_capacity(3 * n);
    let mut all = Vec::with_capacity(n);
    runtime.block_on(async {
        // Let every subscriber come up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 0..n {
            let key = format!("k{i}");
            for p in peers.iter() {
                p.get_or_load(&key, move || async move {
                    Ok::<_, std::io::Error>(Some(i as u64))
                })
                .await
                .expect("load");
            }
            let gone: Arc<Mutex<[Option<Duration>; 3]>> = Arc::new(Mutex::new([None; 3]));
            let started = Arc::new(AtomicBool::new(false));
            let t0 = Instant::now();
            let watcher = {
                let (peers, gone, started, key) = (
                    Arc::clone(&peers),
                    Arc::clone(&gone),
                    Arc::clone(&started),
                    key.clone(),
                );
                std::thread::spawn(move || {
                    while !started.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    let deadline = Instant::now() + Duration::from_secs(10);
                    loop {
                        let mut g = gone.lock().expect("lock");
                        for (j, p) in peers.iter().enumerate() {
                            if g[j].is_none() && !p.contains(&key).expect("key") {
                                g[j] = Some(t0.elapsed());
                            }
                        }
                        if g.iter().all(Option::is_some) || Instant::now() > deadline {
                            return;
                        }
                        drop(g);
                        std::thread::yield_now();
                    }
                })
            };
            started.store(true, Ordering::Release);
            a.remove(&key).await.expect("remove");
            tokio::task::spawn_blocking(move || watcher.join().expect("watcher"))
                .await
                .expect("join");
            let g = *gone.lock().expect("lock");
            let Some(slowest) = g.iter().copied().collect::<Option<Vec<_>>>() else {
                eprintln!("backplane-latency: invalidation {i} not seen within 10 s");
                std::process::exit(1);
            };
            each.extend(slowest.iter().copied());
            all.push(slowest.into_iter().max().unwrap_or_default());
        }
    });
    each.sort();
    all.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("{n} invalidations, instance A -> B, C, D (loopback, 2-worker runtime)");
    println!(
        "per instance: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        ms(percentile(&each, 0.5)),
        ms(percentile(&each, 0.99)),
        ms(percentile(&each, 1.0))
    );
    println!(
        "all three:    p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms   (target p99 < 5 ms)",
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(percentile(&all, 1.0))
    );
    let s = a.stats().backplane.expect("backplane");
    println!(
        "A published {} messages, {} backplane errors",
        s.published, s.errors
    );
}
