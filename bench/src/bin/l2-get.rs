//! `get` served from L2 (Redis), next to what a user would write by hand and
//! next to Redis's own ceiling, in one run against one private `redis-server`.
//!
//! * **tiered**: `Cache::get` with L1 disabled, so every call goes to Redis
//!   (breaker, timeout, envelope decode included). 64 concurrent tasks.
//! * **hand-written**: the cache-aside read a user writes without us: `GET` on a
//!   shared multiplexed `redis` connection, then `postcard` decode. 64 tasks.
//! * **redis-benchmark** `-t get -c 64 -P 16`: 64 connections, 16 pipelined
//!   requests each — the server's ceiling for GETs, no client work at all; and
//!   `-P 1`, the same with one request in flight per connection, which is
//!   what 64 tasks each awaiting one `get` can have in flight at most.
//!
//! The three alternate for `--rounds` rounds (the machine is shared and noisy);
//! medians and ratios are printed.
//!
//! Run: `cargo run --release -p tiered-bench --bin l2-get -- [--ops N] [--rounds N] [--tasks N]`

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiered_bench::median;

use serde::{Deserialize, Serialize};
use tiered_testkit::redis::RedisServer;

const KEYS: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Profile {
    id: u64,
    name: String,
    email: String,
    score: f64,
}

fn profile(i: usize) -> Profile {
    Profile {
        id: i as u64,
        name: format!("user number {i}"),
        email: format!("user{i}@example.com"),
        score: i as f64 / 7.0,
    }
}

struct Args {
    ops: usize,
    rounds: usize,
    tasks: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        ops: 200_000,
        rounds: 3,
        tasks: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or(format!("{flag} needs a value"))?
                .parse::<usize>()
                .map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--ops" => args.ops = value()?,
            "--rounds" => args.rounds = value()?,
            "--tasks" => args.tasks = value()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.ops == 0 || args.rounds == 0 || args.tasks == 0 {
        return Err("--ops, --rounds and --tasks must be at least 1".into());
    }
    Ok(args)
}

/// Runs `tasks` tasks sharing `ops` calls of `f`, returns calls per second.
async fn drive<F, Fut>(tasks: usize, ops: usize, f: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let per_task = ops / tasks;
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let f = Arc::clone(&f);
            tokio::spawn(async move {
                let mut x = (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..per_task {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    f((x % KEYS as u64) as usize).await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("task");
    }
    (per_task * tasks) as f64 / started.elapsed().as_secs_f64()
}

fn redis_benchmark(port: u16, requests: usize, pipeline: usize) -> Result<f64, String> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "get", "-c", "64", "-q"])
        .args(["-P", &pipeline.to_string()])
        .args(["-n", &requests.to_string()])
        .output()
        .map_err(|e| format!("redis-benchmark: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "GET: 123456.78 requests per second, p50=0.263 msec"
    text.split(['\r', '\n'])
        .filter_map(|line| line.trim().strip_prefix("GET: "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
        .ok_or(format!("unexpected redis-benchmark output: {text}"))
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("l2-get: {e}");
            std::process::exit(2);
        }
    };
    let redis = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let cache: tiered::Cache<Profile> = tiered::Cache::builder("bench")
            .redis(redis.url())
            .l1_enabled(false)
            .ttl(Duration::from_secs(3600))
            .build()
            .expect("config");
        let client = redis::Client::open(redis.url()).expect("url");
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        for i in 0..KEYS {
            let key = format!("user:{i}");
            cache.set(&key, profile(i)).await.expect("set");
            let bytes = postcard::to_allocvec(&profile(i)).expect("encode");
            redis::cmd("SET")
                .arg(format!("plain:{key}"))
                .arg(bytes)
                .exec_async(&mut conn.clone())
                .await
                .expect("plain set");
        }
        let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("user:{i}")).collect());
        let plain: Arc<Vec<String>> = Arc::new(keys.iter().map(|k| format!("plain:{k}")).collect());

        let (mut ours, mut hand) = (Vec::new(), Vec::new());
        let (mut ceiling, mut unpipelined) = (Vec::new(), Vec::new());
        println!(
            "{} GETs per run, {} tasks, {} keys, {} rounds",
            args.ops, args.tasks, KEYS, args.rounds
        );
        for round in 1..=args.rounds {
            let c = cache.clone();
            let k = Arc::clone(&keys);
            let t = drive(args.tasks, args.ops, move |i| {
                let (c, k) = (c.clone(), Arc::clone(&k));
                async move {
                    let v = c.get(&k[i]).await.expect("get");
                    assert!(v.is_some(), "every key is in L2");
                }
            })
            .await;
            if std::env::var_os("L2_GET_ONLY_TIERED").is_some() {
                println!("round {round}: tiered {t:.0}/s (profiling: peers skipped)");
                continue;
            }
            let p = Arc::clone(&plain);
            let conn2 = conn.clone();
            let h = drive(args.tasks, args.ops, move |i| {
                let (p, mut conn) = (Arc::clone(&p), conn2.clone());
                async move {
                    let bytes: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(&p[i])
                        .query_async(&mut conn)
                        .await
                        .expect("get");
                    let v: Profile = postcard::from_bytes(&bytes.expect("present")).expect("decode");
                    std::hint::black_box(v);
                }
            })
            .await;
            let bench = |pipeline| match redis_benchmark(redis.port(), args.ops, pipeline) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("l2-get: {e}");
                    std::process::exit(1);
                }
            };
            let (r, r1) = (bench(16), bench(1));
            println!(
                "round {round}: tiered {t:>9.0}/s  hand-written {h:>9.0}/s  redis-benchmark -P 16 {r:>9.0}/s  -P 1 {r1:>9.0}/s"
            );
            ours.push(t);
            hand.push(h);
            ceiling.push(r);
            unpipelined.push(r1);
        }
        if hand.is_empty() {
            return; // profiling run
        }
        let (t, h, r, r1) = (
            median(ours),
            median(hand),
            median(ceiling),
            median(unpipelined),
        );
        let stats = cache.stats().l2.expect("l2");
        println!(
            "\nmedian GETs/s: tiered {t:.0}, hand-written {h:.0}, redis-benchmark -P 16 {r:.0}, -P 1 {r1:.0}"
        );
        println!(
            "tiered / hand-written = {:.2}x (target >= 1.0)   tiered / redis-benchmark = {:.0}% (target >= 50%)",
            t / h,
            100.0 * t / r
        );
        println!(
            "tiered / redis-benchmark -P 1 (64 requests in flight, as for the 64 tasks) = {:.0}%",
            100.0 * t / r1
        );
        println!("tiered L2 errors during the run: {}", stats.errors);
    });
}
