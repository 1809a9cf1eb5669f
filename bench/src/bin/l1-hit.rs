//! L1 hit-path harness: what a cache hit costs.
//!
//! Measures, in one run and on the same key set:
//! * `tiered get`         — `Cache::get` of a present key;
//! * `tiered get_or_load` — `Cache::get_or_load` of a present key (the loader is
//!   never called);
//! * `moka::sync get`     — the peer, `moka::sync::Cache::get`;
//! * `RwLock<HashMap>`    — what one would write by hand.
//!
//! Each cache holds 10,000 `String` keys with `Arc<String>`-sized values; each
//! thread reads keys in a pre-shuffled order (no RNG in the timed loop). A round
//! is `--ops` reads per thread; the figure is the median of `--rounds` rounds.
//!
//! Run: `cargo run --release -p tiered-bench --bin l1-hit -- [--threads 1,2] [--ops N] [--rounds N]`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};
use tiered_bench::median;

const KEYS: usize = 10_000;

struct Args {
    threads: Vec<usize>,
    ops: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        threads: vec![1, 2],
        ops: 2_000_000,
        rounds: 7,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--threads" => {
                args.threads = value
                    .split(',')
                    .map(|t| t.parse().map_err(|e| format!("--threads {t}: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--ops" => args.ops = value.parse().map_err(|e| format!("--ops: {e}"))?,
            "--rounds" => args.rounds = value.parse().map_err(|e| format!("--rounds: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.threads.contains(&0) || args.ops == 0 || args.rounds == 0 {
        return Err("threads, ops and rounds must be positive".into());
    }
    Ok(args)
}

/// Runs `read(key)` `ops` times on each of `threads` threads; returns ns per op
/// (wall time × threads / total ops).
fn round<F>(threads: usize, ops: usize, keys: &Arc<Vec<String>>, read: Arc<F>) -> f64
where
    F: Fn(&str) + Send + Sync + 'static,
{
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (keys, read, barrier) = (Arc::clone(keys), Arc::clone(&read), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut order: Vec<usize> = (0..keys.len()).collect();
                fastrand_shuffle(&mut order, t as u64 + 1);
                barrier.wait();
                let start = Instant::now();
                for i in 0..ops {
                    read(&keys[order[i % order.len()]]);
                }
                start.elapsed()
            })
        })
        .collect();
    barrier.wait();
    let elapsed: Duration = handles
        .into_iter()
        .map(|h| h.join().expect("bench thread"))
        .max()
        .unwrap_or_default();
    elapsed.as_nanos() as f64 * threads as f64 / (threads * ops) as f64
}

/// A small xorshift shuffle so the bench needs no RNG crate.
fn fastrand_shuffle(v: &mut [usize], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("l1-hit: {e}");
            std::process::exit(2);
        }
    };
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("user:{i:08}")).collect());
    let value = |i: usize| format!("value-{i:032}");

    let tiered_cache: tiered::Cache<String> = tiered::Cache::builder("bench")
        .ttl(Duration::from_secs(3600))
        .build()
        .expect("valid config");
    // get_or_load needs a runtime handle (loads are tasks); enter one per thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for (i, k) in keys.iter().enumerate() {
            tiered_cache.set(k, value(i)).await.expect("set");
        }
    });
    let moka_cache: moka::sync::Cache<String, Arc<String>> =
        moka::sync::Cache::new(KEYS as u64 * 2);
    let mut map = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        moka_cache.insert(k.clone(), Arc::new(value(i)));
        map.insert(k.clone(), Arc::new(value(i)));
    }
    let locked = Arc::new(RwLock::new(map));

    // The async calls are driven by a no-op waker: an L1 hit completes on first
    // poll, and this keeps executor overhead out of the figure.
    fn ready<F: std::future::Future>(fut: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut fut = std::pin::pin!(fut);
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("an L1 hit must not suspend"),
        }
    }
    let handle = runtime.handle().clone();

    let c1 = tiered_cache.clone();
    let c2 = tiered_cache.clone();
    let m = moka_cache.clone();
    let l = Arc::clone(&locked);
    // Each contender is its own closure type, so `round` is monomorphized per
    // contender and the timed loop has no dynamic dispatch.
    let tiered_get = Arc::new(move |k: &str| {
        black_box(ready(c1.get(k)).expect("get"));
    });
    let tiered_gol = Arc::new(move |k: &str| {
        let _guard = handle.enter();
        let v = ready(c2.get_or_load(k, || async {
            Err::<Option<String>, std::io::Error>(std::io::Error::other("must hit"))
        }));
        black_box(v.expect("hit"));
    });
    let moka_get = Arc::new(move |k: &str| {
        black_box(m.get(k));
    });
    let rwlock_get = Arc::new(move |k: &str| {
        black_box(l.read().expect("lock").get(k).cloned());
    });
    let names = [
        "tiered get",
        "tiered get_or_load",
        "moka::sync get",
        "RwLock<HashMap> get",
    ];

    println!(
        "# l1-hit: {KEYS} keys, {} ops/thread/round, median of {} rounds",
        args.ops, args.rounds
    );
    println!(
        "{:<22} {:>7} {:>10} {:>14} {:>9}",
        "cache", "threads", "ns/op", "Mops/s total", "vs moka"
    );
    for &threads in &args.threads {
        // Interleave contenders round by round so machine noise hits all alike.
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        for _ in 0..args.rounds {
            samples[0].push(round(threads, args.ops, &keys, Arc::clone(&tiered_get)));
            samples[1].push(round(threads, args.ops, &keys, Arc::clone(&tiered_gol)));
            samples[2].push(round(threads, args.ops, &keys, Arc::clone(&moka_get)));
            samples[3].push(round(threads, args.ops, &keys, Arc::clone(&rwlock_get)));
        }
        let medians: Vec<f64> = samples.into_iter().map(median).collect();
        let moka_ns = medians[2];
        for (name, ns) in names.iter().zip(medians) {
            let mops = threads as f64 * 1e3 / ns;
            println!(
                "{name:<22} {threads:>7} {ns:>10.1} {mops:>14.2} {:>8.2}x",
                moka_ns / ns
            );
        }
    }
    // Keep the cache's counters honest: every timed read above was a hit.
    let stats = tiered_cache.stats();
    assert_eq!(stats.l1.misses, 0, "the bench must measure hits only");
}
