//! The basic read path over L1: get, set, remove, contains, clear, get_or_load,
//! negative caching, the existence filter, and bad input changing nothing.

#![allow(clippy::unwrap_used)] // in tests an unwrap is an assertion

mod common;

use std::sync::Arc;

use common::*;
use tiered::{BloomFilter, Cache, Error, ManualClock, Options, MAX_KEY_LEN, MAX_TTL};
use tiered_testkit::{Loader, Step};

#[tokio::test]
async fn get_or_load_loads_once_then_hits() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("v1"));
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("v1"))
    );
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("v1"))
    );
    assert_eq!(val(cache.get("k").await), Some(s("v1")));
    assert_eq!(loader.calls(), 1);
    let stats = cache.stats();
    assert_eq!(stats.l1.hits, 2);
    assert_eq!(stats.l1.misses, 1);
    assert_eq!(stats.loads, 1);
    assert!((stats.hit_ratio() - 2.0 / 3.0).abs() < 1e-9);
}

#[tokio::test]
async fn l1_hit_returns_the_same_arc_without_copying() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    cache.set("k", s("shared")).await.unwrap();
    let a = cache.get("k").await.unwrap().unwrap();
    let b = cache.get("k").await.unwrap().unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "an L1 hit must hand out the stored Arc"
    );
}

#[tokio::test]
async fn set_get_remove_contains_clear() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    assert_eq!(val(cache.get("a").await), None);
    cache.set("a", s("1")).await.unwrap();
    cache.set("b", s("2")).await.unwrap();
    assert!(cache.contains("a").unwrap());
    assert_eq!(val(cache.get("a").await), Some(s("1")));
    cache.set("a", s("1b")).await.unwrap();
    assert_eq!(val(cache.get("a").await), Some(s("1b")));
    assert!(cache.remove("a").await.unwrap());
    assert!(!cache.remove("a").await.unwrap());
    assert!(!cache.contains("a").unwrap());
    assert_eq!(val(cache.get("a").await), None);
    cache.clear();
    assert!(!cache.contains("b").unwrap());
    assert_eq!(cache.stats().l1.entries, 0);
    assert_eq!(cache.stats().l1.weighted_bytes, 0);
}

#[tokio::test]
async fn entries_expire_at_their_ttl() {
    let clock = ManualClock::new();
    let cache = builder(&clock).ttl(secs(10)).build().unwrap();
    cache.set("short", s("x")).await.unwrap();
    cache
        .set_with("long", s("y"), &cache.options().ttl(secs(100)))
        .await
        .unwrap();
    clock.advance(secs(9));
    assert!(cache.contains("short").unwrap());
    clock.advance(SEC);
    assert!(
        !cache.contains("short").unwrap(),
        "expires exactly at its TTL"
    );
    assert_eq!(val(cache.get("short").await), None);
    assert!(cache.contains("long").unwrap());
    let loader = Loader::returning(s("reloaded"));
    assert_eq!(
        val(cache.get_or_load("short", loader.load()).await),
        Some(s("reloaded"))
    );
    assert_eq!(loader.calls(), 1);
}

#[tokio::test]
async fn negative_results_are_cached_for_negative_ttl() {
    let clock = ManualClock::new();
    let cache = builder(&clock).negative_ttl(secs(5)).build().unwrap();
    let loader: Loader<String> = Loader::new(Step::Absent);
    for _ in 0..10 {
        assert_eq!(val(cache.get_or_load("missing", loader.load()).await), None);
    }
    assert_eq!(loader.calls(), 1, "absence is cached");
    assert!(
        !cache.contains("missing").unwrap(),
        "absent is not 'contained'"
    );
    assert_eq!(cache.stats().negative_hits, 9);
    clock.advance(secs(5));
    assert_eq!(val(cache.get_or_load("missing", loader.load()).await), None);
    assert_eq!(loader.calls(), 2, "negative entry expires at negative_ttl");
}

#[tokio::test]
async fn absence_is_not_cached_without_negative_ttl() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader: Loader<String> = Loader::new(Step::Absent);
    for _ in 0..3 {
        assert_eq!(val(cache.get_or_load("missing", loader.load()).await), None);
    }
    assert_eq!(loader.calls(), 3);
}

#[tokio::test]
async fn existence_filter_answers_absent_without_loading() {
    let clock = ManualClock::new();
    let filter = Arc::new(BloomFilter::new(1000, 0.001).unwrap());
    filter.insert("user:1");
    let cache = builder(&clock)
        .existence_filter(Arc::clone(&filter))
        .build()
        .unwrap();
    let loader = Loader::returning(s("row"));
    assert_eq!(
        val(cache.get_or_load("user:1", loader.load()).await),
        Some(s("row"))
    );
    assert_eq!(
        val(cache.get_or_load("user:999", loader.load()).await),
        None
    );
    assert_eq!(
        loader.calls(),
        1,
        "the filtered key never reached the loader"
    );
    assert_eq!(cache.stats().filtered, 1);
    // `set` teaches the filter the key exists.
    cache.set("user:2", s("new")).await.unwrap();
    assert!(filter.might_contain("user:2"));
}

#[tokio::test]
async fn loader_errors_reach_the_caller_and_are_not_cached() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("ok"));
    loader.then(Step::Fail("db down".into()));
    let err = cache.get_or_load("k", loader.load()).await.unwrap_err();
    assert!(matches!(err, Error::Loader(_)), "{err:?}");
    assert!(err.to_string().contains("db down"));
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("ok"))
    );
    assert_eq!(loader.calls(), 2, "the error was not cached");
    assert_eq!(cache.stats().load_errors, 1);
}

#[tokio::test]
async fn bad_keys_are_refused_and_change_nothing() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let long = "k".repeat(MAX_KEY_LEN + 1);
    let loader = Loader::returning(s("v"));
    for key in ["", long.as_str()] {
        assert!(matches!(
            cache.get(key).await,
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            cache.set(key, s("v")).await,
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            cache.remove(key).await,
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(cache.contains(key), Err(Error::InvalidKey { .. })));
        assert!(matches!(
            cache.get_or_load(key, loader.load()).await,
            Err(Error::InvalidKey { .. })
        ));
    }
    // The longest valid key works.
    let max = "k".repeat(MAX_KEY_LEN);
    cache.set(&max, s("v")).await.unwrap();
    assert!(cache.contains(&max).unwrap());
    assert_eq!(loader.calls(), 0);
    assert_eq!(cache.stats().l1.entries, 1);
}

#[tokio::test]
async fn bad_options_are_refused_and_change_nothing() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    cache.set("k", s("original")).await.unwrap();
    let loader = Loader::returning(s("v"));
    let bad = [
        cache.options().ttl(std::time::Duration::ZERO),
        cache.options().ttl(MAX_TTL * 2),
        cache.options().eager_refresh(f64::NAN),
        cache.options().eager_refresh(-1.0),
        cache.options().xfetch(-1.0),
        cache.options().tag(""),
        cache.options().depends_on("k"), // an entry cannot depend on itself
    ];
    for opts in &bad {
        let e = cache.set_with("k", s("changed"), opts).await.unwrap_err();
        assert!(matches!(e, Error::InvalidOption { .. }), "{e:?}");
        let e = cache
            .get_or_load_with("k", opts, loader.load())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidOption { .. }), "{e:?}");
    }
    assert_eq!(val(cache.get("k").await), Some(s("original")));
    assert!(!cache.contains("new").unwrap());
    assert_eq!(loader.calls(), 0);
    assert!(cache.invalidate_tag("").is_err());
}

#[test]
fn bad_configuration_is_refused() {
    let too_long = "n".repeat(tiered::MAX_NAMESPACE_LEN + 1);
    for ns in ["", too_long.as_str(), "bad\nname"] {
        let e = Cache::<String>::builder(ns).build().unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{ns:?}: {e:?}");
    }
    assert!(Cache::<String>::builder("ok")
        .l1_max_bytes(0)
        .build()
        .is_err());
    assert!(Cache::<String>::builder("ok")
        .ttl(std::time::Duration::ZERO)
        .build()
        .is_err());
    assert!(Cache::<String>::builder("ok")
        .default_options(Options::default().eager_refresh(2.0))
        .build()
        .is_err());
    assert!(Cache::<String>::builder("ok")
        .top_keys(8, 0)
        .build()
        .is_err());
}

#[test]
fn loading_outside_a_runtime_is_an_error_not_a_panic() {
    let cache = Cache::<String>::builder("ns").build().unwrap();
    let loader = Loader::returning(s("v"));
    let fut = cache.get_or_load("k", loader.load());
    let result = futures_lite_block_on(fut);
    assert!(matches!(result, Err(Error::NoRuntime)));
}

/// Polls a future to completion on this thread without a tokio runtime.
fn futures_lite_block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
