//! Redis outages: killed and paused servers. Callers see no errors, the breaker
//! opens and closes, and removals made during the outage are replayed.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{s, secs, val};
use tiered::l2::BreakerState;
use tiered::Cache;
use tiered_testkit::redis::{RedisConfig, RedisServer};
use tiered_testkit::{eventually, Loader};

fn cache(redis: &RedisServer) -> Cache<String> {
    Cache::<String>::builder("outage")
        .redis(redis.url())
        .l2_timeout(Duration::from_millis(300))
        .l2_breaker(2, Duration::from_millis(200))
        .ttl(secs(600))
        // The subscriber would replay the kept removals on its own as soon
        // as Redis is back, racing the checks of what Redis restarted with.
        .backplane(false)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_then_restarted() {
    let mut redis = RedisServer::start_with(RedisConfig::persistent());
    let a = cache(&redis);
    for i in 0..20 {
        a.set(&format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    let entries = redis.cli(&["--scan", "--pattern", "tiered:outage:*"]);
    assert_eq!(entries.lines().filter(|l| !l.is_empty()).count(), 20);

    redis.kill();
    // Zero errors to callers: L1 hits, loads for misses, sets and removes.
    let loader = Loader::returning(s("loaded while Redis was down"));
    for i in 0..20 {
        assert_eq!(val(a.get(&format!("k{i}")).await), Some(format!("v{i}")));
        let key = format!("new{i}");
        let got = a.get_or_load(&key, loader.load()).await;
        assert_eq!(val(got), Some(s("loaded while Redis was down")));
    }
    assert_eq!(a.stats().l2.unwrap().breaker, BreakerState::Open);
    // Removals during the outage are kept, not lost.
    for i in 0..5 {
        a.remove(&format!("k{i}")).await.unwrap();
    }
    a.set("k5", s("changed during the outage")).await.unwrap();
    assert!(a.stats().l2.unwrap().pending >= 6);

    // Redis comes back with its data (append-only file): k0..k4 still there.
    redis.restart();
    assert_eq!(redis.cli(&["EXISTS", "k0"]).trim(), "0"); // sanity: prefixed keys
    assert_eq!(redis.cli(&["EXISTS", "tiered:outage:k0"]).trim(), "1");

    // A key removed during the outage is not read back from Redis, even
    // before the removal is replayed there.
    for i in 0..5 {
        assert_eq!(val(a.get(&format!("k{i}")).await), None, "k{i}");
    }
    // The next calls find the breaker half-open, succeed, close it and replay.
    eventually("the breaker closes and pending writes are replayed", || {
        let stats = a.stats().l2.unwrap();
        if stats.breaker != BreakerState::Closed || stats.pending > 0 {
            // Nudge: any L2 call lets the probe through.
            let a = a.clone();
            tokio::spawn(async move { a.get("probe").await });
            return false;
        }
        true
    })
    .await;
    for i in 0..5 {
        let key = format!("tiered:outage:k{i}");
        assert_eq!(
            redis.cli(&["EXISTS", &key]).trim(),
            "0",
            "{key} was removed"
        );
    }
    // Another instance sees the state after the outage, not before it.
    let b = cache(&redis);
    assert_eq!(val(b.get("k0").await), None);
    assert_eq!(val(b.get("k5").await), Some(s("changed during the outage")));
    assert_eq!(val(b.get("k6").await), Some(s("v6")));
    assert!(a.stats().l2.unwrap().replayed >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_is_cut_off_by_timeouts_then_not_called_at_all() {
    let redis = RedisServer::start();
    let a = Cache::<String>::builder("outage")
        .redis(redis.url())
        .l2_timeout(Duration::from_millis(300))
        // A cooldown longer than the test: once open, the breaker stays open.
        .l2_breaker(2, secs(3600))
        .build()
        .unwrap();
    a.set("k", s("v")).await.unwrap();
    redis.pause();
    let loader = Loader::returning(s("loaded"));
    for i in 0..20 {
        let got = a.get_or_load(&format!("miss{i}"), loader.load()).await;
        assert_eq!(val(got), Some(s("loaded")), "call {i} answered");
    }
    let stats = a.stats().l2.unwrap();
    assert_eq!(stats.breaker, BreakerState::Open);
    // Two calls timed out and opened the breaker; the other 38 L2 calls (a
    // read and a write per miss) were never made.
    assert_eq!(stats.errors, 2);
    assert_eq!(loader.calls(), 20);
    redis.resume();
}
