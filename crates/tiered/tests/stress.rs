//! Many tasks on several threads hammering one small cache with every operation
//! at once. Asserts what must hold whatever the interleaving: no panic, no value
//! served for the wrong key, the byte budget never exceeded, no load left in
//! flight (no wedged key), and counters that add up.

#![allow(clippy::unwrap_used)] // in tests an unwrap is an assertion

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use tiered::ManualClock;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_mixed_operations_keep_the_invariants() {
    let clock = ManualClock::new();
    let budget = 32 * 1024;
    let cache = builder(&clock)
        .l1_max_bytes(budget)
        .ttl(secs(5))
        .grace(secs(5))
        .eager_refresh(0.5)
        .negative_ttl(secs(1))
        .build()
        .unwrap();
    let loads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let (cache, clock, loads) = (cache.clone(), clock.clone(), Arc::clone(&loads));
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t);
            for _ in 0..2_000 {
                let k = rng.u32(0..300);
                let key = format!("k{k}");
                // A value always names its key, so a mix-up is detectable.
                let value = format!("{key}:{}", "x".repeat(rng.usize(0..200)));
                match rng.u8(0..100) {
                    0..=59 => {
                        let (loads, v) = (Arc::clone(&loads), value.clone());
                        let fail = rng.u8(0..10) == 0;
                        let absent = k.is_multiple_of(17);
                        let opts = cache.options().tag(format!("group{}", k % 5));
                        let got = cache
                            .get_or_load_with(&key, &opts, move || async move {
                                loads.fetch_add(1, Ordering::Relaxed);
                                tokio::task::yield_now().await;
                                if fail {
                                    Err(tiered_testkit::LoadError("injected".into()))
                                } else if absent {
                                    Ok(None)
                                } else {
                                    Ok(Some(v))
                                }
                            })
                            .await;
                        if let Ok(Some(v)) = got {
                            assert!(v.starts_with(&format!("{key}:")), "{key} got {v}");
                        }
                    }
                    60..=74 => {
                        if let Some(v) = cache.get(&key).await.unwrap() {
                            assert!(v.starts_with(&format!("{key}:")), "{key} got {v}");
                        }
                    }
                    75..=84 => cache.set(&key, value).await.unwrap(),
                    85..=91 => {
                        cache.remove(&key).await.unwrap();
                    }
                    92..=95 => cache.invalidate_tag(&format!("group{}", k % 5)).unwrap(),
                    96 => clock.advance(std::time::Duration::from_millis(700)),
                    97 if t == 0 => cache.clear(),
                    _ => {
                        let keys: Vec<String> =
                            (0..5).map(|i| format!("k{}", (k + i) % 300)).collect();
                        let got = cache
                            .get_many_or_load(&keys, |missing| async move {
                                Ok::<_, tiered_testkit::LoadError>(
                                    missing
                                        .into_iter()
                                        .map(|m| (m.clone(), format!("{m}:batch")))
                                        .collect(),
                                )
                            })
                            .await;
                        if let Ok(map) = got {
                            for (key, v) in map {
                                assert!(v.starts_with(&format!("{key}:")), "{key} got {v}");
                            }
                        }
                    }
                }
                assert!(cache.stats().l1.weighted_bytes <= budget);
            }
        }));
    }
    for t in tasks {
        t.await.expect("no task panicked");
    }
    // Background refreshes may still be finishing.
    tiered_testkit::eventually("loads to finish", || cache.loads_in_flight() == 0).await;
    let st = cache.stats();
    assert!(st.l1.weighted_bytes <= budget);
    assert!(st.loads > 0 && st.l1.hits > 0, "{st:?}");
    // Single-key loader calls are counted by the loader; batch calls are not, so
    // the cache may count more loads, never fewer.
    assert!(st.loads >= loads.load(Ordering::Relaxed), "{st:?}");
    // Every key is loadable afterwards: nothing is wedged.
    for k in 0..300 {
        let key = format!("k{k}");
        let v =
            cache
                .get_or_load(&key, {
                    let key = key.clone();
                    move || async move {
                        Ok::<_, tiered_testkit::LoadError>(Some(format!("{key}:final")))
                    }
                })
                .await
                .unwrap();
        if k % 17 != 0 {
            assert!(v.is_some(), "{key}");
        }
    }
}
