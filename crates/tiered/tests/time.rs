//! Everything that depends on time, on a manual clock (and tokio's paused clock
//! for loader timeouts): eager refresh, XFetch, grace and fail-safe, back-off,
//! soft and hard timeouts, jitter, adaptive TTL. Nothing here sleeps.

#![allow(clippy::unwrap_used)] // in tests an unwrap is an assertion

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tiered::{AdaptiveTtl, Error, ManualClock};
use tiered_testkit::{Loader, Step};

/// Loads "good" at "k", then makes the loader fail ("db down") from now on.
async fn load_then_fail(cache: &tiered::Cache<String>) -> Loader<String> {
    let loader = Loader::returning(s("good"));
    cache.get_or_load("k", loader.load()).await.unwrap();
    loader.set_fallback(Step::Fail("db down".into()));
    loader
}

/// Waits until no load is in flight (background refreshes included).
async fn settle(cache: &tiered::Cache<String>) {
    tiered_testkit::eventually("loads to finish", || cache.loads_in_flight() == 0).await;
}

#[tokio::test]
async fn eager_refresh_starts_one_background_refresh_and_never_blocks() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .ttl(secs(100))
        .eager_refresh(0.8)
        .build()
        .unwrap();
    let loader = Loader::returning(s("v1"));
    loader.then(Step::Value(s("v1")));
    loader.set_fallback(Step::Value(s("v2")));
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("v1"))
    );

    clock.advance(secs(79));
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("v1"))
    );
    settle(&cache).await;
    assert_eq!(loader.calls(), 1, "before 80% of the TTL: no refresh");

    clock.advance(secs(1));
    loader.hold();
    // Many hits past the refresh point: all served at once, one refresh started.
    for _ in 0..20 {
        assert_eq!(
            val(cache.get_or_load("k", loader.load()).await),
            Some(s("v1"))
        );
    }
    loader.wait_for_calls(2).await;
    loader.release();
    settle(&cache).await;
    assert_eq!(loader.calls(), 2, "exactly one background refresh");
    assert_eq!(cache.stats().refreshes, 1);
    assert_eq!(
        val(cache.get("k").await),
        Some(s("v2")),
        "refresh replaced the value"
    );

    // The refreshed entry has a new TTL from the refresh time.
    clock.advance(secs(99));
    assert!(cache.contains("k").unwrap());
}

#[tokio::test]
async fn a_failed_background_refresh_keeps_the_value_and_backs_off() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .ttl(secs(100))
        .eager_refresh(0.5)
        .failsafe_backoff(secs(10))
        .build()
        .unwrap();
    let loader = Loader::returning(s("v1"));
    cache.get_or_load("k", loader.load()).await.unwrap();
    loader.set_fallback(Step::Fail("db down".into()));
    clock.advance(secs(60));
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("v1"))
    );
    settle(&cache).await;
    assert_eq!(loader.calls(), 2);
    // Backing off: hits do not retry the refresh for 10 s.
    for _ in 0..5 {
        assert_eq!(
            val(cache.get_or_load("k", loader.load()).await),
            Some(s("v1"))
        );
    }
    settle(&cache).await;
    assert_eq!(loader.calls(), 2);
    clock.advance(secs(10));
    cache.get_or_load("k", loader.load()).await.unwrap();
    settle(&cache).await;
    assert_eq!(loader.calls(), 3, "retried after the back-off");
}

#[tokio::test]
async fn xfetch_refreshes_early_when_the_load_was_slow_and_expiry_is_near() {
    let clock = ManualClock::new();
    let cache = builder(&clock).ttl(secs(60)).xfetch(1.0).build().unwrap();
    let loader = Loader::returning(s("v"));
    // The first load of each key "takes" 10 s of clock time: the XFetch delta.
    // Refreshes take no time, so they cannot move the clock under the test.
    let slow = Arc::new(AtomicBool::new(true));
    let (c, flag) = (clock.clone(), Arc::clone(&slow));
    loader.on_call(move || {
        if flag.swap(false, Ordering::SeqCst) {
            c.advance(secs(10));
        }
    });
    cache.get_or_load("far", loader.load()).await.unwrap();
    // 60 s from expiry, P(refresh) per hit = e^(-60/10) ≈ 0.25%: 20 hits
    // refresh at most a couple of times (P(≥ 3) < 1e-5).
    for _ in 0..20 {
        cache.get_or_load("far", loader.load()).await.unwrap();
    }
    settle(&cache).await;
    assert!(
        loader.calls() - 1 <= 2,
        "far from expiry: {} refreshes",
        loader.calls() - 1
    );

    slow.store(true, Ordering::SeqCst);
    cache.get_or_load("near", loader.load()).await.unwrap();
    let before = loader.calls();
    clock.advance(secs(59));
    // 1 s from expiry, P(refresh) per hit = e^(-1/10) ≈ 90%: 30 hits without
    // one has probability 1e-30.
    for _ in 0..30 {
        assert_eq!(
            val(cache.get_or_load("near", loader.load()).await),
            Some(s("v"))
        );
    }
    settle(&cache).await;
    assert!(
        loader.calls() > before,
        "near expiry with a slow loader: must refresh"
    );
    assert!(cache.stats().refreshes >= 1);
}

#[tokio::test]
async fn xfetch_never_refreshes_after_an_instant_load() {
    let clock = ManualClock::new();
    let cache = builder(&clock).ttl(secs(60)).xfetch(1.0).build().unwrap();
    let loader = Loader::returning(s("v"));
    cache.get_or_load("k", loader.load()).await.unwrap();
    clock.advance(secs(59));
    for _ in 0..100 {
        cache.get_or_load("k", loader.load()).await.unwrap();
    }
    settle(&cache).await;
    assert_eq!(loader.calls(), 1, "delta 0: no early refresh");
}

#[tokio::test]
async fn stale_value_is_served_when_the_loader_fails_within_grace() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .ttl(secs(10))
        .grace(secs(100))
        .failsafe_backoff(secs(5))
        .build()
        .unwrap();
    let loader = load_then_fail(&cache).await;

    clock.advance(secs(11)); // expired, within grace
    assert_eq!(val(cache.get("k").await), None, "get never returns stale");
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("good"))
    );
    assert_eq!(loader.calls(), 2);
    let stats = cache.stats();
    assert_eq!(stats.stale_hits, 1);
    assert_eq!(stats.load_errors, 1);

    // Back-off: the stale value is served without calling the loader.
    clock.advance(secs(4));
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("good"))
    );
    assert_eq!(loader.calls(), 2, "backing off");
    assert_eq!(cache.stats().stale_hits, 2);

    // After the back-off the loader is tried again; it recovers.
    clock.advance(secs(1));
    loader.set_fallback(Step::Value(s("fresh")));
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("fresh"))
    );
    assert_eq!(loader.calls(), 3);
    assert!(cache.contains("k").unwrap(), "the error was never cached");
}

#[tokio::test]
async fn nothing_is_served_past_the_grace_window() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .ttl(secs(10))
        .grace(secs(20))
        .build()
        .unwrap();
    let loader = load_then_fail(&cache).await;
    clock.advance(secs(30));
    let err = cache.get_or_load("k", loader.load()).await.unwrap_err();
    assert!(matches!(err, Error::Loader(_)));
}

#[tokio::test]
async fn without_grace_a_failure_is_an_error() {
    let clock = ManualClock::new();
    let cache = builder(&clock).ttl(secs(10)).build().unwrap();
    let loader = load_then_fail(&cache).await;
    clock.advance(secs(10));
    assert!(cache.get_or_load("k", loader.load()).await.is_err());
    // No back-off without a stale value: the next call tries again.
    assert!(cache.get_or_load("k", loader.load()).await.is_err());
    assert_eq!(loader.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn soft_timeout_serves_stale_and_the_load_completes_in_background() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .ttl(secs(10))
        .grace(secs(100))
        .soft_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let loader = Loader::returning(s("old"));
    cache.get_or_load("k", loader.load()).await.unwrap();
    clock.advance(secs(11));
    loader.set_fallback(Step::Value(s("new")));
    loader.hold(); // the database is slow
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("old"))
    );
    assert_eq!(cache.stats().stale_hits, 1);
    assert_eq!(cache.loads_in_flight(), 1, "the load goes on");
    loader.release();
    settle(&cache).await;
    assert_eq!(
        val(cache.get("k").await),
        Some(s("new")),
        "stored when it arrived"
    );
    assert_eq!(loader.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn soft_timeout_without_stale_waits_for_the_load() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .soft_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let loader = Loader::returning(s("v"));
    loader.hold();
    let call = spawn_get(&cache, &loader, "k", cache.options());
    tokio::time::sleep(secs(1)).await; // paused clock: instant
    assert!(!call.is_finished(), "nothing stale to serve: keep waiting");
    loader.release();
    assert_eq!(val(call.await.unwrap()), Some(s("v")));
}

#[tokio::test(start_paused = true)]
async fn hard_timeout_with_stale_serves_stale() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .ttl(secs(10))
        .grace(secs(100))
        .hard_timeout(secs(1))
        .build()
        .unwrap();
    let loader = Loader::returning(s("old"));
    cache.get_or_load("k", loader.load()).await.unwrap();
    clock.advance(secs(11));
    loader.set_fallback(Step::Hang);
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("old"))
    );
    assert_eq!(cache.loads_in_flight(), 0, "the hung load was abandoned");
    assert_eq!(cache.stats().load_errors, 1);
}

#[tokio::test]
async fn ttl_jitter_spreads_expiries_within_bounds() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .ttl(secs(100))
        .ttl_jitter(secs(50))
        .build()
        .unwrap();
    for i in 0..200 {
        cache.set(&format!("k{i}"), s("v")).await.unwrap();
    }
    let alive = |cache: &tiered::Cache<String>| {
        (0..200)
            .filter(|i| cache.contains(&format!("k{i}")).unwrap())
            .count()
    };
    clock.advance(secs(99));
    assert_eq!(alive(&cache), 200, "no entry expires before its TTL");
    clock.advance(secs(26)); // t = 125: about half expired
    let mid = alive(&cache);
    assert!(
        (40..=160).contains(&mid),
        "jitter spreads expiries: {mid} of 200 alive"
    );
    clock.advance(secs(25)); // t = 150 = ttl + jitter
    assert_eq!(alive(&cache), 0, "no entry outlives ttl + jitter");
}

#[tokio::test]
async fn adaptive_ttl_doubles_for_hot_keys_within_bounds_and_falls_back() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .ttl(secs(10))
        .adaptive_ttl(AdaptiveTtl {
            min_hits: 3,
            max_ttl: secs(40),
        })
        .build()
        .unwrap();
    let loader = Loader::returning(s("v"));
    let load = |cache: &tiered::Cache<String>, loader: &Loader<String>| {
        let (cache, loader) = (cache.clone(), loader.clone());
        async move { cache.get_or_load("k", loader.load()).await.unwrap() }
    };
    let lifetime = |cache: tiered::Cache<String>, clock: ManualClock| async move {
        // Measures the current entry's remaining fresh life in whole seconds.
        let mut n = 0;
        while cache.contains("k").unwrap() {
            clock.advance(SEC);
            n += 1;
        }
        n
    };
    load(&cache, &loader).await; // ttl 10
    for _ in 0..3 {
        load(&cache, &loader).await; // 3 hits
    }
    assert_eq!(lifetime(cache.clone(), clock.clone()).await, 10);
    load(&cache, &loader).await; // reload: hot → 20
    for _ in 0..3 {
        load(&cache, &loader).await;
    }
    assert_eq!(lifetime(cache.clone(), clock.clone()).await, 20);
    load(&cache, &loader).await; // → 40
    for _ in 0..5 {
        load(&cache, &loader).await;
    }
    assert_eq!(lifetime(cache.clone(), clock.clone()).await, 40);
    load(&cache, &loader).await; // hot again, but capped at 40
    for _ in 0..3 {
        load(&cache, &loader).await;
    }
    assert_eq!(lifetime(cache.clone(), clock.clone()).await, 40);
    load(&cache, &loader).await; // reload: the capped entry had 3 hits → 40 again
    load(&cache, &loader).await; // only 1 hit this time
    assert_eq!(lifetime(cache.clone(), clock.clone()).await, 40);
    load(&cache, &loader).await; // cold: back to the base TTL
    assert_eq!(lifetime(cache.clone(), clock.clone()).await, 10);
}

#[tokio::test(start_paused = true)]
async fn a_batch_waits_one_soft_timeout_not_one_per_key() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .ttl(secs(10))
        .grace(secs(100))
        .soft_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
    for k in &keys {
        cache.set(k, format!("old-{k}")).await.unwrap();
    }
    clock.advance(secs(11));
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = Arc::clone(&gate);
    let started = tokio::time::Instant::now();
    let got = cache
        .get_many_or_load(&keys, move |_missing| async move {
            g.notified().await; // a slow database
            Ok::<_, tiered_testkit::LoadError>(std::collections::HashMap::new())
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 5);
    assert_eq!(*got["k3"], "old-k3");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(200),
        "waited {waited:?} for 5 stale keys"
    );
    gate.notify_one();
}

#[tokio::test]
async fn fail_safe_still_works_when_the_stale_entry_was_evicted_meanwhile() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .l1_max_bytes(4096)
        .ttl(secs(10))
        .grace(secs(100))
        .build()
        .unwrap();
    cache.set("k", s("last good")).await.unwrap();
    clock.advance(secs(11));
    let loader: Loader<String> = Loader::new(Step::Fail("down".into()));
    let call = held_load(&cache, &loader, "k", cache.options()).await;
    for i in 0..200 {
        cache
            .set(&format!("filler-{i}"), "x".repeat(100))
            .await
            .unwrap(); // evicts "k"
    }
    assert!(cache.stats().l1.evictions > 0);
    loader.release();
    assert_eq!(val(call.await.unwrap()), Some(s("last good")));
}

#[tokio::test]
async fn a_row_found_absent_is_not_served_later_as_stale() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .ttl(secs(10))
        .grace(secs(100))
        .build()
        .unwrap();
    cache.set("k", s("deleted row")).await.unwrap();
    clock.advance(secs(11));
    // The reload finds the row gone (absence is not cached)...
    let absent: Loader<String> = Loader::new(Step::Absent);
    assert_eq!(val(cache.get_or_load("k", absent.load()).await), None);
    // ...so when the database then fails, the deleted row does not come back.
    let failing: Loader<String> = Loader::new(Step::Fail("down".into()));
    assert!(cache.get_or_load("k", failing.load()).await.is_err());
    assert_eq!(cache.stats().stale_hits, 0);
}

#[test]
fn a_runtime_without_timers_gets_a_clear_error_not_a_hang() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap(); // no enable_time
    let clock = ManualClock::new();
    let cache = cache(&clock); // default options have a hard timeout
    let loader = Loader::returning(s("v"));
    for _ in 0..2 {
        let got = runtime.block_on(cache.get_or_load("k", loader.load()));
        assert!(matches!(got, Err(tiered::Error::TimersDisabled)), "{got:?}");
    }
    assert_eq!(cache.loads_in_flight(), 0);
}
