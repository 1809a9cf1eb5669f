use std::sync::Arc;
use std::time::Duration;

use super::shard::Shard;
use super::*;
use crate::clock::Timestamp;
use crate::entry::Entry;

const NOW: Timestamp = Timestamp::from_nanos(1_000_000_000_000);

fn entry(weight: u64, lives: Duration) -> Arc<Entry<u32>> {
    let until = NOW.saturating_add(lives);
    Arc::new(Entry {
        value: Some(Arc::new(0)),
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
                shard.remove(&key(k));
            }
            _ => {
                shard.get(&key(k));
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
    assert!(shard.get(&key(1)).is_none());
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
            assert!(shard.get(&key(k)).is_some());
        }
    }
    for k in 1000..3000 {
        shard.insert(key(k), k, entry(10, HOUR), 10, NOW);
    }
    let survivors = (0..50).filter(|&k| shard.get(&key(k)).is_some()).count();
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
        shard.get(&key(k));
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
        assert!(shard.get(&key(k)).is_some(), "live key {k} kept");
    }
}

#[test]
fn queues_stay_bounded_under_insert_remove_churn() {
    let mut shard: Shard<u32> = Shard::new(1 << 20, None);
    for round in 0..100_000u64 {
        shard.insert(key(round % 7), round, entry(10, HOUR), 10, NOW);
        shard.remove(&key(round % 7));
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
