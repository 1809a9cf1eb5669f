//! Stampede protection in one process: single-flight loads, and keys that are
//! never wedged by a loader that panics, hangs or whose callers go away.

#![allow(clippy::unwrap_used)] // in tests an unwrap is an assertion

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use tiered::{Error, ManualClock};
use tiered_testkit::{LoadError, Loader, Step};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_callers_share_one_load() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("hot"));
    loader.hold();
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let cache = cache.clone();
        let loader = loader.clone();
        tasks.push(tokio::spawn(async move {
            cache.get_or_load("hot-key", loader.load()).await
        }));
    }
    loader.wait_for_calls(1).await;
    // Let every task reach the cache while the one load is held.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    loader.release();
    for t in tasks {
        assert_eq!(val(t.await.expect("task")), Some(s("hot")));
    }
    assert_eq!(loader.calls(), 1, "one loader call for 1000 callers");
    let stats = cache.stats();
    assert_eq!(stats.loads, 1);
    // Every caller was counted once: a hit, or a miss that led the load, waited
    // on it, or found its result in the re-check just as it landed.
    assert_eq!(stats.l1.hits + stats.l1.misses, 1000, "{stats:?}");
}

#[tokio::test]
async fn a_panicking_loader_does_not_wedge_the_key() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("recovered"));
    loader.then(Step::Panic);
    let err = cache.get_or_load("k", loader.load()).await.unwrap_err();
    assert!(matches!(err, Error::LoaderPanicked), "{err:?}");
    assert_eq!(cache.loads_in_flight(), 0);
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("recovered"))
    );
    assert_eq!(loader.calls(), 2);
}

#[tokio::test]
async fn a_loader_that_panics_before_returning_its_future_is_caught() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let err = cache
        .get_or_load(
            "k",
            || -> std::future::Ready<Result<Option<String>, LoadError>> {
                panic!("synchronous panic")
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LoaderPanicked), "{err:?}");
    let loader = Loader::returning(s("fine"));
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("fine"))
    );
}

#[tokio::test]
async fn waiters_of_a_panicking_load_all_get_the_error_then_the_next_call_loads() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("second"));
    loader.then(Step::Panic);
    loader.hold();
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let (cache, loader) = (cache.clone(), loader.clone());
            tokio::spawn(async move { cache.get_or_load("k", loader.load()).await })
        })
        .collect();
    loader.wait_for_calls(1).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    loader.release();
    for w in waiters {
        assert!(matches!(w.await.unwrap(), Err(Error::LoaderPanicked)));
    }
    assert_eq!(loader.calls(), 1);
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("second"))
    );
    assert_eq!(loader.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hung_loader_is_cancelled_at_the_hard_timeout_and_the_key_is_free() {
    let clock = ManualClock::new();
    let cache = builder(&clock).hard_timeout(secs(2)).build().unwrap();
    let loader = Loader::returning(s("after"));
    loader.then(Step::Hang);
    // Tokio's paused clock jumps to the timeout: nothing sleeps for real.
    let err = cache.get_or_load("k", loader.load()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(d) if d == secs(2)), "{err:?}");
    assert_eq!(cache.loads_in_flight(), 0);
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("after"))
    );
    assert_eq!(loader.calls(), 2);
}

#[tokio::test]
async fn a_cancelled_caller_does_not_cancel_the_load() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("v"));
    let caller = held_load(&cache, &loader, "k", cache.options()).await;
    caller.abort(); // the request went away
    assert!(caller.await.unwrap_err().is_cancelled());
    loader.release();
    tiered_testkit::eventually("loads to finish", || cache.loads_in_flight() == 0).await;
    // The load finished and stored its value: the next caller hits.
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("v"))
    );
    assert_eq!(loader.calls(), 1);
    assert_eq!(loader.finished(), 1);
}

#[tokio::test]
async fn different_keys_load_in_parallel() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("v"));
    loader.hold();
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let (cache, loader) = (cache.clone(), loader.clone());
            tokio::spawn(async move { cache.get_or_load(&format!("k{i}"), loader.load()).await })
        })
        .collect();
    loader.wait_for_calls(5).await; // all five started while held: not serialized
    loader.release();
    for t in tasks {
        assert_eq!(val(t.await.unwrap()), Some(s("v")));
    }
}

fn batch_loader(
    calls: &Arc<AtomicUsize>,
    seen: &Arc<parking_lot::Mutex<Vec<Vec<String>>>>,
) -> impl FnOnce(Vec<String>) -> std::future::Ready<Result<HashMap<String, String>, LoadError>> {
    let (calls, seen) = (Arc::clone(calls), Arc::clone(seen));
    move |keys: Vec<String>| {
        calls.fetch_add(1, Ordering::SeqCst);
        seen.lock().push(keys.clone());
        // Every key exists except those starting with "missing".
        let found = keys
            .into_iter()
            .filter(|k| !k.starts_with("missing"))
            .map(|k| (k.clone(), format!("v-{k}")))
            .collect();
        std::future::ready(Ok(found))
    }
}

#[tokio::test]
async fn get_many_or_load_makes_one_loader_call_for_all_misses() {
    let clock = ManualClock::new();
    let cache = builder(&clock).negative_ttl(secs(30)).build().unwrap();
    cache.set("a", s("cached-a")).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let keys = ["a", "b", "c", "missing-d", "b"];
    let got = cache
        .get_many_or_load(&keys, batch_loader(&calls, &seen))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let mut requested = seen.lock()[0].clone();
    requested.sort();
    assert_eq!(
        requested,
        vec!["b", "c", "missing-d"],
        "only misses, once each"
    );
    assert_eq!(got.len(), 3);
    assert_eq!(*got["a"], "cached-a");
    assert_eq!(*got["b"], "v-b");
    assert!(!got.contains_key("missing-d"));

    // Second round: everything is cached, including the absence.
    let got = cache
        .get_many_or_load(&keys, batch_loader(&calls, &seen))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(got.len(), 3);
    assert_eq!(cache.stats().negative_hits, 1);
}

#[tokio::test]
async fn get_many_or_load_waits_on_single_loads_already_running() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let single = Loader::returning(s("from-single"));
    let running = held_load(&cache, &single, "x", cache.options()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let batch = {
        let (cache, calls, seen) = (cache.clone(), calls.clone(), seen.clone());
        tokio::spawn(async move {
            cache
                .get_many_or_load(&["x", "y"], batch_loader(&calls, &seen))
                .await
        })
    };
    tiered_testkit::eventually("the batch loader", || calls.load(Ordering::SeqCst) > 0).await;
    assert_eq!(seen.lock()[0], vec!["y"], "x is already in flight");
    single.release();
    let got = batch.await.unwrap().unwrap();
    assert_eq!(*got["x"], "from-single");
    assert_eq!(*got["y"], "v-y");
    assert_eq!(val(running.await.unwrap()), Some(s("from-single")));
    assert_eq!(single.calls(), 1);
}

#[tokio::test]
async fn get_many_or_load_reports_loader_errors() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let err = cache
        .get_many_or_load(&["a", "b"], |_keys| async {
            Err::<HashMap<String, String>, _>(LoadError("batch failed".into()))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Loader(_)));
    assert_eq!(cache.loads_in_flight(), 0);
    assert_eq!(cache.stats().load_errors, 1);
}

#[tokio::test(start_paused = true)]
async fn a_hung_loader_cannot_hold_a_key_even_with_default_options() {
    let clock = ManualClock::new();
    let cache = cache(&clock); // no timeout configured: the default applies
    let loader = Loader::returning(s("after"));
    loader.then(Step::Hang);
    let err = cache.get_or_load("k", loader.load()).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout(d) if d == tiered::DEFAULT_HARD_TIMEOUT),
        "{err:?}"
    );
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("after"))
    );
}

#[test]
fn a_load_task_dropped_before_it_ever_ran_does_not_wedge_the_key() {
    use std::future::Future;
    use std::task::{Context, Waker};
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("v"));
    {
        // A runtime that never gets to run the load task it is handed...
        let doomed = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _enter = doomed.enter();
        let mut call = std::pin::pin!(cache.get_or_load("k", loader.load()));
        let polled = call.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        assert!(polled.is_pending(), "the load was spawned, not run");
        assert_eq!(cache.loads_in_flight(), 1);
        // ...and is shut down with the task still queued.
    }
    assert_eq!(loader.calls(), 0, "the loader never ran");
    assert_eq!(
        cache.loads_in_flight(),
        0,
        "the dropped task unregistered its flight"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = runtime.block_on(cache.get_or_load("k", loader.load()));
    assert_eq!(val(got), Some(s("v")));
}

#[tokio::test]
async fn waiters_of_a_load_dropped_mid_flight_see_load_aborted() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("v"));
    loader.hold();
    let other = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The load task runs on `other`; a waiter on this runtime joins it.
    let leader = {
        let (cache, loader) = (cache.clone(), loader.clone());
        other.spawn(async move { cache.get_or_load("k", loader.load()).await })
    };
    loader.wait_for_calls(1).await;
    let waiter = spawn_get(&cache, &loader, "k", cache.options());
    tiered_testkit::eventually("the waiter to join", || cache.stats().coalesced == 1).await;
    other.shutdown_background(); // the load task is dropped mid-load
    assert!(matches!(waiter.await.unwrap(), Err(Error::LoadAborted)));
    drop(leader);
    loader.release();
    assert_eq!(
        val(cache.get_or_load("k", loader.load()).await),
        Some(s("v"))
    );
}

#[tokio::test]
async fn get_many_or_load_serves_stale_when_the_batch_fails() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .ttl(secs(10))
        .grace(secs(60))
        .build()
        .unwrap();
    cache.set("a", s("old-a")).await.unwrap();
    clock.advance(secs(11));
    let got = cache
        .get_many_or_load(&["a"], |_keys| async {
            Err::<HashMap<String, String>, _>(LoadError("down".into()))
        })
        .await
        .unwrap();
    assert_eq!(*got["a"], "old-a");
    assert_eq!(cache.stats().stale_hits, 1);
    // A key with nothing stale makes the call fail.
    let err = cache
        .get_many_or_load(&["b"], |_keys| async {
            Err::<HashMap<String, String>, _>(LoadError("down".into()))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Loader(_)));
}

#[tokio::test]
async fn get_many_or_load_refreshes_keys_past_their_refresh_point() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .ttl(secs(100))
        .eager_refresh(0.5)
        .build()
        .unwrap();
    cache.set("a", s("v1")).await.unwrap();
    clock.advance(secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let got = cache
        .get_many_or_load(&["a"], batch_loader(&calls, &seen))
        .await
        .unwrap();
    assert_eq!(*got["a"], "v1", "served at once");
    tiered_testkit::eventually("the refresh", || cache.loads_in_flight() == 0).await;
    assert_eq!(seen.lock()[0], vec!["a"]);
    assert_eq!(val(cache.get("a").await), Some(s("v-a")));
    assert_eq!(cache.stats().refreshes, 1);

    // Riding along with a missing key, a due key is refreshed in the same call
    // and counted as a refresh.
    clock.advance(secs(60));
    let got = cache
        .get_many_or_load(&["a", "b"], batch_loader(&calls, &seen))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    tiered_testkit::eventually("the load", || cache.loads_in_flight() == 0).await;
    let mut requested = seen.lock()[1].clone();
    requested.sort();
    assert_eq!(requested, vec!["a", "b"]);
    assert_eq!(cache.stats().refreshes, 2);
}

#[tokio::test]
async fn get_many_or_load_refuses_bad_input_and_changes_nothing() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let long = "k".repeat(tiered::MAX_KEY_LEN + 1);
    let err = cache
        .get_many_or_load(&["ok", long.as_str()], batch_loader(&calls, &seen))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }));
    let too_many: Vec<String> = (0..=tiered::MAX_BATCH_KEYS)
        .map(|i| i.to_string())
        .collect();
    let err = cache
        .get_many_or_load(&too_many, batch_loader(&calls, &seen))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOption { .. }));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(!cache.contains("ok").unwrap());
}
