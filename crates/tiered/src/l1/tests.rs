use std::sync::Arc;
use std::time::Duration;

use super::shard::Shard;
use super::*;
use crate::clock::Timestamp;
use crate::entry::Entry;

const NOW: Timestamp = Timestamp::from_nanos(1_000_000_000_000);

fn entry(weight: u64, lives: Duration) -> Arc<Entry<u32>> {
    entry_of(0, weight, lives)
}

fn entry_of(value: u32, weight: u64, lives: Duration) -> Arc<Entry<u32>> {
    let until = NOW.saturating_add(lives);
    Arc::new(Entry {
        value: Some(Arc::new(value)),
        born: 0,
        version: 0,
        created: NOW,
        refresh_at: Timestamp::MAX,
        fresh_until: until,
        stale_until: until,
        ttl: lives,
        load_duration: Duration::ZERO,
        xfetch_beta: None,
        tags: Box::new([]),
        weight,
        adaptive: None,
        hits: Default::default(),
        retry_after: Default::default(),
        validated_through: Default::default(),
        revoked: Default::default(),
    })
}

const HOUR: Duration = Duration::from_secs(3600);

fn key(i: u64) -> Arc<str> {
    Arc::from(format!("key-{i}"))
}

#[test]
fn never_exceeds_the_budget_under_random_operations() {
    let mut rng = fastrand::Rng::with_seed(7);
    let budget = 10_000;
    let mut shard: Shard<u32> = Shard::new(budget, None);
    for step in 0..50_000 {
        let k = rng.u64(0..500);
        match rng.u8(0..10) {
            0..=6 => {
                let w = rng.u64(1..=400);
                let inserted = shard.insert(key(k), k, entry(w, HOUR), w, NOW);
                assert!(inserted.stored);
            }
            7 => {
                shard.remove(k, &key(k));
            }
            _ => {
                shard.get(k, &key(k));
            }
        }
        assert!(
            shard.bytes() <= budget,
            "step {step}: {} > {budget}",
            shard.bytes()
        );
        shard.check_invariants();
    }
}

#[test]
fn a_value_heavier_than_the_budget_is_not_stored_and_replaces_nothing_stale() {
    let mut shard: Shard<u32> = Shard::new(100, None);
    assert!(shard.insert(key(1), 1, entry(50, HOUR), 50, NOW).stored);
    let out = shard.insert(key(1), 1, entry(101, HOUR), 101, NOW);
    assert!(!out.stored);
    // The old value is gone too: keeping it would serve outdated data.
    assert!(shard.get(1, &key(1)).is_none());
    assert_eq!(shard.bytes(), 0);
}

#[test]
fn replacing_an_entry_updates_its_weight() {
    let mut shard: Shard<u32> = Shard::new(1000, None);
    shard.insert(key(1), 1, entry(100, HOUR), 100, NOW);
    shard.insert(key(1), 1, entry(300, HOUR), 300, NOW);
    assert_eq!(shard.bytes(), 300);
    assert_eq!(shard.len(), 1);
    shard.insert(key(1), 1, entry(10, HOUR), 10, NOW);
    assert_eq!(shard.bytes(), 10);
    shard.check_invariants();
}

#[test]
fn frequently_hit_keys_survive_a_scan() {
    // TinyLFU's point: a burst of one-hit wonders must not flush the hot set.
    let mut shard: Shard<u32> = Shard::new(100 * 10, None);
    for k in 0..50 {
        shard.insert(key(k), k, entry(10, HOUR), 10, NOW);
    }
    for _ in 0..3 {
        for k in 0..50 {
            assert!(shard.get(k, &key(k)).is_some());
        }
    }
    for k in 1000..3000 {
        shard.insert(key(k), k, entry(10, HOUR), 10, NOW);
    }
    let survivors = (0..50).filter(|&k| shard.get(k, &key(k)).is_some()).count();
    assert!(
        survivors >= 45,
        "only {survivors} of 50 hot keys survived the scan"
    );
}

#[test]
fn expired_entries_are_reclaimed_before_live_ones_are_evicted() {
    let mut shard: Shard<u32> = Shard::new(100, None);
    // Five expired entries (hit, so they would otherwise be promoted) ...
    for k in 0..5 {
        shard.insert(key(k), k, entry(10, Duration::from_secs(1)), 10, NOW);
        shard.get(k, &key(k));
    }
    for k in 5..10 {
        shard.insert(key(k), k, entry(10, HOUR), 10, NOW);
    }
    let later = NOW.saturating_add(Duration::from_secs(2));
    let out = shard.insert(key(10), 10, entry(40, HOUR), 40, later);
    assert!(out.stored);
    assert_eq!(
        out.evicted, 0,
        "expired entries made the room; no live eviction"
    );
    for k in 5..=10 {
        assert!(shard.get(k, &key(k)).is_some(), "live key {k} kept");
    }
}

#[test]
fn queues_stay_bounded_under_insert_remove_churn() {
    let mut shard: Shard<u32> = Shard::new(1 << 20, None);
    for round in 0..100_000u64 {
        let k = round % 7;
        shard.insert(key(k), k, entry(10, HOUR), 10, NOW);
        assert!(shard.remove(k, &key(k)).is_some());
    }
    assert!(shard.queued() < 200, "{} dead queue nodes", shard.queued());
}

#[test]
fn tier_splits_the_budget_and_never_exceeds_it() {
    let budget = 8 * MIN_SHARD_BUDGET;
    let l1: L1<u32> = L1::new(budget);
    assert!(l1.max_entry_weight() >= MIN_SHARD_BUDGET);
    let mut rng = fastrand::Rng::with_seed(3);
    for i in 0..200_000u64 {
        let w = rng.u64(16..4096);
        l1.insert(key(i), entry(w, HOUR), NOW);
    }
    assert!(l1.weighted_size() <= budget);
    assert!(
        l1.weighted_size() > budget / 2,
        "the budget is actually used"
    );
    assert!(l1.len() > 0);
}

#[test]
fn small_budgets_use_one_shard() {
    let l1: L1<u32> = L1::new(10_000);
    assert_eq!(l1.max_entry_weight(), 10_000);
}

#[test]
fn zero_weight_entries_are_still_bounded() {
    let cache: L1Cache<u32> = L1Cache::new(100);
    for i in 0..1000 {
        cache.insert(&format!("k{i}"), i, 0);
    }
    assert!(cache.len() <= 100, "{} entries held", cache.len());
    assert!(cache.weighted_size() <= 100);
}

#[test]
fn an_unbounded_budget_does_not_overflow() {
    let cache: L1Cache<u32> = L1Cache::new(u64::MAX);
    for i in 0..1000 {
        assert!(cache.insert(&format!("k{i}"), i, u64::from(i) << 40));
    }
    assert_eq!(cache.len(), 1000);
    assert_eq!(cache.get("k7").as_deref(), Some(&7));
}

#[test]
fn keys_are_told_apart_by_their_bytes_even_when_their_hashes_collide() {
    // Every key gets the same hash, so only the key comparison separates
    // them: around the inline length (24 bytes), sharing a 24-byte prefix,
    // and a prefix of each other.
    let base = "k".repeat(24);
    let keys = [
        String::new(),
        "k".into(),
        "k".repeat(23),
        base.clone(),
        format!("{base}x"),
        format!("{base}y"),
        format!("{base}xx"),
        "j".repeat(24),
    ];
    let mut shard: Shard<u32> = Shard::new(1000, None);
    for (i, k) in keys.iter().enumerate() {
        let e = entry_of(i as u32, 1, HOUR);
        assert!(shard.insert(Arc::from(k.as_str()), 7, e, 1, NOW).stored);
    }
    for (i, k) in keys.iter().enumerate() {
        let got = shard.get(7, k).and_then(|e| e.value.clone());
        assert_eq!(got.as_deref(), Some(&(i as u32)), "key {k:?}");
    }
    assert!(shard.get(7, "kk").is_none());
    assert!(shard.get(7, &format!("{base}z")).is_none());
    assert!(shard.remove(7, &format!("{base}x")).is_some());
    assert_eq!(
        shard
            .get(7, &format!("{base}y"))
            .and_then(|e| e.value.clone())
            .as_deref(),
        Some(&5)
    );
    shard.check_invariants();
}

#[test]
fn concurrent_readers_and_writers_keep_every_shard_consistent() {
    // Readers replay the read buffer under the policy's own lock while other
    // readers record into it and writers wait; every value read must be its
    // key's, and every shard must end consistent and within budget.
    let l1: Arc<L1Cache<u64>> = Arc::new(L1Cache::new(4000));
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let l1 = Arc::clone(&l1);
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t);
                for _ in 0..100_000 {
                    // Skewed keys, so threads meet on the same hot entries.
                    let k = rng.u64(0..64) * rng.u64(0..128);
                    let key = format!("key-{k}");
                    match rng.u8(0..20) {
                        0..=2 => {
                            l1.insert(&key, k, rng.u64(1..20));
                        }
                        3 => {
                            l1.tier.remove(&key);
                        }
                        _ => {
                            if let Some(v) = l1.get(&key) {
                                assert_eq!(*v, k, "{key} read another key's value");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a worker panicked");
    }
    for shard in l1.tier.shards.iter() {
        shard.0.read().check_invariants();
    }
    assert!(l1.weighted_size() <= 4000);
    assert!(!l1.is_empty());
}

#[test]
fn an_absurd_expected_entry_count_is_clamped_not_a_panic() {
    // The sketch is sized for at most MAX_SKETCH_ENTRIES (128 MiB), whatever
    // the caller expects; before the clamp this overflowed.
    let cache: L1Cache<u32> = L1Cache::with_expected_entries(10, u64::MAX);
    assert!(cache.insert("k", 1, 1));
    assert_eq!(cache.get("k").as_deref(), Some(&1));
}
