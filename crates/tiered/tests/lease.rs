//! The distributed lease within one process's tests: refresh-ahead across
//! instances (one load per period, not per instance), and degrading to
//! in-process single-flight when Redis is down.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{s, secs, val};
use tiered::{Cache, ManualClock};
use tiered_testkit::redis::RedisServer;

fn instance(redis: &RedisServer, clock: &ManualClock) -> Cache<String> {
    Cache::<String>::builder("lease")
        .clock(clock.clone())
        .redis(redis.url())
        .l2_timeout(secs(5))
        .ttl(secs(10))
        .eager_refresh(0.5)
        .distributed(true)
        .build()
        .unwrap()
}

/// Waits until no instance has a load (or refresh) in flight.
async fn settle(instances: &[Cache<String>]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while instances.iter().any(|c| c.loads_in_flight() > 0) {
        assert!(Instant::now() < deadline, "loads did not settle");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_runs_once_per_period_across_instances() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let instances: Vec<Cache<String>> = (0..4).map(|_| instance(&redis, &clock)).collect();
    let loads = Arc::new(AtomicUsize::new(0));
    let read = |cache: Cache<String>| {
        let loads = Arc::clone(&loads);
        async move {
            cache
                .get_or_load("hot", move || async move {
                    let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
                    Ok::<_, std::io::Error>(Some(format!("load {n}")))
                })
                .await
        }
    };
    for cache in &instances {
        assert!(val(read(cache.clone()).await).is_some());
    }
    settle(&instances).await;
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "one cold load for four instances"
    );
    const PERIODS: usize = 5;
    for period in 1..=PERIODS {
        // Past the refresh point (5 s) of the newest value.
        clock.advance(secs(6));
        for _ in 0..3 {
            for cache in &instances {
                assert!(val(read(cache.clone()).await).is_some());
            }
            settle(&instances).await;
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1 + period,
            "period {period}: one refresh for all instances"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_lease_degrades_to_single_flight() {
    for paused in [false, true] {
        degrades(paused).await;
    }
}

/// Redis killed, or paused (SIGSTOP: calls hang until their timeout).
async fn degrades(paused: bool) {
    let mut redis = RedisServer::start();
    let clock = ManualClock::new();
    let cache = Cache::<String>::builder("lease")
        .clock(clock.clone())
        .redis(redis.url())
        .l2_timeout(Duration::from_millis(200))
        .distributed(true)
        .build()
        .unwrap();
    if paused {
        redis.pause();
    } else {
        redis.kill();
    }
    let loads = Arc::new(AtomicUsize::new(0));
    let mut calls = Vec::new();
    for _ in 0..50 {
        let (cache, loads) = (cache.clone(), Arc::clone(&loads));
        calls.push(tokio::spawn(async move {
            cache
                .get_or_load("k", move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, std::io::Error>(Some(s("v")))
                })
                .await
        }));
    }
    let started = Instant::now();
    for call in calls {
        assert_eq!(val(call.await.unwrap()), Some(s("v")));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load in this process");
    // Never blocked on the unreachable lock: a few L2 timeouts (200 ms) and
    // the 100 ms load, not the lease's 32 s give-up.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    if paused {
        redis.resume();
    }
}
