//! Stats, metrics through the `metrics` facade, top keys, and the byte budget
//! as seen through the public API.

#![allow(clippy::unwrap_used)] // in tests an unwrap is an assertion

mod common;

use std::sync::Arc;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use tiered::{Cache, ManualClock};
use tiered_testkit::{Loader, Step};

#[tokio::test]
async fn stats_count_every_outcome() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .ttl(secs(10))
        .grace(secs(60))
        .negative_ttl(secs(10))
        .eager_refresh(0.5)
        .build()
        .unwrap();
    let loader = Loader::returning(s("v"));
    cache.get_or_load("a", loader.load()).await.unwrap(); // miss + load
    cache.get_or_load("a", loader.load()).await.unwrap(); // hit
    let absent: Loader<String> = Loader::new(Step::Absent);
    cache.get_or_load("none", absent.load()).await.unwrap(); // miss + load
    cache.get_or_load("none", absent.load()).await.unwrap(); // negative hit
    clock.advance(secs(6));
    cache.get_or_load("a", loader.load()).await.unwrap(); // hit + refresh
    tiered_testkit::eventually("loads to finish", || cache.loads_in_flight() == 0).await;
    clock.advance(secs(11));
    loader.set_fallback(Step::Fail("down".into()));
    cache.get_or_load("a", loader.load()).await.unwrap(); // miss, error, stale

    let st = cache.stats();
    assert_eq!(st.l1.hits, 3);
    assert_eq!(st.l1.misses, 3);
    assert_eq!(st.negative_hits, 1);
    assert_eq!(st.loads, 4);
    assert_eq!(st.refreshes, 1);
    assert_eq!(st.load_errors, 1);
    assert_eq!(st.stale_hits, 1);
    assert_eq!(st.l1.entries, 2);
    assert!(st.l1.weighted_bytes > 0);
    assert!((st.hit_ratio() - 4.0 / 6.0).abs() < 1e-9);
    assert!((st.l1.hit_ratio() - 0.5).abs() < 1e-9);
}

#[tokio::test]
async fn metrics_go_out_through_the_facade_with_the_documented_names() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let clock = ManualClock::new();
    // Handles are registered at build time, against the recorder installed then.
    let cache = metrics::with_local_recorder(&recorder, || {
        Cache::<String>::builder("orders")
            .clock(clock.clone())
            .l1_max_bytes(4096)
            .build()
            .unwrap()
    });
    let loader = Loader::returning(s("v"));
    cache.get_or_load("k", loader.load()).await.unwrap();
    cache.get_or_load("k", loader.load()).await.unwrap();
    // One of each remaining outcome: coalesced wait, refresh, error, stale,
    // negative, fenced load, eviction.
    loader.hold();
    let (c1, l1) = (cache.clone(), loader.clone());
    let a = tokio::spawn(async move { c1.get_or_load("w", l1.load()).await });
    loader.wait_for_calls(2).await;
    let (c2, l2) = (cache.clone(), loader.clone());
    let b = tokio::spawn(async move { c2.get_or_load("w", l2.load()).await });
    tiered_testkit::eventually("a coalesced wait", || cache.stats().coalesced == 1).await;
    cache.remove("w").await.unwrap(); // the running load is fenced
    loader.release();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    let opts = cache
        .options()
        .eager_refresh(0.5)
        .grace(secs(600))
        .negative_ttl(secs(60));
    cache
        .get_or_load_with("r", &opts, loader.load())
        .await
        .unwrap();
    clock.advance(secs(31));
    cache
        .get_or_load_with("r", &opts, loader.load())
        .await
        .unwrap(); // refresh
    tiered_testkit::eventually("the refresh", || cache.loads_in_flight() == 0).await;
    clock.advance(secs(61));
    loader.set_fallback(Step::Fail("down".into()));
    cache
        .get_or_load_with("r", &opts, loader.load())
        .await
        .unwrap(); // error → stale
    let absent: Loader<String> = Loader::new(Step::Absent);
    cache
        .get_or_load_with("n", &opts, absent.load())
        .await
        .unwrap();
    cache
        .get_or_load_with("n", &opts, absent.load())
        .await
        .unwrap(); // negative hit
    for i in 0..100 {
        cache.set(&format!("e{i}"), "x".repeat(100)).await.unwrap(); // evictions
    }
    cache.stats(); // refreshes the gauges

    let snapshot = snapshotter.snapshot().into_vec();
    let find = |name: &str, labels: &[(&str, &str)]| {
        snapshot.iter().find_map(|(ck, _, _, value)| {
            let key = ck.key();
            let matches = key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v));
            matches.then(|| (ck.kind(), value))
        })
    };
    let counter = |name: &str, labels: &[(&str, &str)]| match find(name, labels) {
        Some((MetricKind::Counter, DebugValue::Counter(n))) => *n,
        other => panic!("{name} {labels:?}: {other:?}"),
    };
    let ns = ("cache", "orders");
    let st = cache.stats();
    let req = |outcome| {
        counter(
            tiered::metrics::REQUESTS,
            &[ns, ("tier", "l1"), ("outcome", outcome)],
        )
    };
    let loads = |outcome| counter(tiered::metrics::LOADS, &[ns, ("outcome", outcome)]);
    // The facade saw exactly what stats() counted.
    assert_eq!(req("hit"), st.l1.hits);
    assert_eq!(req("miss"), st.l1.misses);
    assert_eq!(req("stale"), st.stale_hits);
    assert_eq!(req("negative"), st.negative_hits);
    assert_eq!(loads("error"), st.load_errors);
    assert_eq!(loads("coalesced"), st.coalesced);
    assert_eq!(loads("refresh"), st.refreshes);
    assert_eq!(loads("fenced"), st.fenced);
    assert_eq!(loads("ok") + loads("error"), st.loads);
    let evictions = counter(tiered::metrics::EVICTIONS, &[ns, ("tier", "l1")]);
    assert_eq!(evictions, st.l1.evictions);
    for (name, n) in [
        ("stale", st.stale_hits),
        ("negative", st.negative_hits),
        ("error", st.load_errors),
        ("coalesced", st.coalesced),
        ("refresh", st.refreshes),
        ("fenced", st.fenced),
        ("evictions", st.l1.evictions),
    ] {
        assert!(n >= 1, "{name} was exercised");
    }
    match find(tiered::metrics::LOAD_DURATION, &[ns]) {
        Some((MetricKind::Histogram, DebugValue::Histogram(samples))) => {
            assert_eq!(samples.len() as u64, st.loads)
        }
        other => panic!("load duration: {other:?}"),
    }
    match find(tiered::metrics::ENTRIES, &[ns, ("tier", "l1")]) {
        Some((MetricKind::Gauge, DebugValue::Gauge(v))) => {
            assert_eq!(v.into_inner(), st.l1.entries as f64)
        }
        other => panic!("entries gauge: {other:?}"),
    }
    match find(tiered::metrics::BYTES, &[ns, ("tier", "l1")]) {
        Some((MetricKind::Gauge, DebugValue::Gauge(v))) => {
            assert_eq!(v.into_inner(), st.l1.weighted_bytes as f64)
        }
        other => panic!("bytes gauge: {other:?}"),
    }
}

#[tokio::test]
async fn top_keys_reports_the_hottest_keys() {
    let clock = ManualClock::new();
    // Space-Saving guarantees every key above N/k requests is tracked: N ≈ 700,
    // k = 16, so both "hot" (300) and "warm" (100) must be there, in order.
    let cache = builder(&clock).top_keys(16, 1).build().unwrap();
    cache.set("hot", s("v")).await.unwrap();
    cache.set("warm", s("v")).await.unwrap();
    for i in 0..300 {
        cache.get("hot").await.unwrap();
        if i % 3 == 0 {
            cache.get("warm").await.unwrap();
        }
        cache.get(&format!("cold-{i}")).await.unwrap();
    }
    let top = cache.top_keys(2);
    assert_eq!(top[0].key, "hot");
    assert!(
        top[0].count >= 300 && top[0].count - top[0].error <= 300,
        "{top:?}"
    );
    assert_eq!(top[1].key, "warm");
}

#[tokio::test]
async fn the_l1_byte_budget_holds_through_the_public_api() {
    let clock = ManualClock::new();
    let budget = 64 * 1024;
    let cache = builder(&clock).l1_max_bytes(budget).build().unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    for i in 0..5_000 {
        let len = rng.usize(1..2_000);
        cache.set(&format!("k{i}"), "x".repeat(len)).await.unwrap();
        let st = cache.stats();
        assert!(
            st.l1.weighted_bytes <= budget,
            "{} > {budget}",
            st.l1.weighted_bytes
        );
    }
    let st = cache.stats();
    assert!(st.l1.evictions > 0);
    assert!(st.l1.weighted_bytes > budget / 2);
}

#[tokio::test]
async fn a_custom_weigher_is_used_and_oversized_values_are_still_returned() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .l1_max_bytes(1000)
        .weigher(|_key, v: &String| v.len() as u64 * 10)
        .build()
        .unwrap();
    cache.set("a", s("0123456789")).await.unwrap(); // 100 + key 1
    assert_eq!(cache.stats().l1.weighted_bytes, 101);
    // Too heavy for L1: not stored, but the loader's value is still returned.
    let loader = Loader::returning("y".repeat(200));
    let got = cache.get_or_load("big", loader.load()).await.unwrap();
    assert_eq!(got.map(|v| v.len()), Some(200));
    assert!(!cache.contains("big").unwrap());
    assert!(cache.stats().l1.weighted_bytes <= 1000);
}

#[tokio::test]
async fn warm_loads_with_bounded_concurrency_and_reports_progress() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    cache.set("k0", s("already")).await.unwrap();
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (r, p) = (Arc::clone(&running), Arc::clone(&peak));
    let mut seen = Vec::new();
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let report = cache
        .warm(
            keys,
            4,
            move |key: String| {
                let (r, p) = (Arc::clone(&r), Arc::clone(&p));
                async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = r.fetch_add(1, SeqCst) + 1;
                    p.fetch_max(now, SeqCst);
                    tokio::task::yield_now().await;
                    r.fetch_sub(1, SeqCst);
                    if key == "k13" {
                        return Err(tiered_testkit::LoadError("bad row".into()));
                    }
                    Ok(Some(format!("v-{key}")))
                }
            },
            |progress| seen.push(progress),
        )
        .await
        .unwrap();
    let p = report.progress;
    assert_eq!(
        (p.total, p.done, p.loaded, p.skipped, p.failed),
        (40, 40, 38, 1, 1)
    );
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].0, "k13");
    assert_eq!(seen.len(), 40);
    assert!(seen.windows(2).all(|w| w[1].done == w[0].done + 1));
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (2..=4).contains(&peak),
        "peak concurrency {peak}: bounded, and used"
    );
    assert_eq!(val(cache.get("k39").await), Some(s("v-k39")));
    assert_eq!(val(cache.get("k0").await), Some(s("already")));
    assert!(cache
        .warm(
            Vec::<String>::new(),
            0,
            |_k: String| async { Ok::<_, tiered_testkit::LoadError>(Some(s("x"))) },
            |_| {}
        )
        .await
        .is_err());
}
