//! Memory: a full L1 holds at most its byte budget plus a bounded overhead per
//! entry. Measured with a counting global allocator over 1,000,000 inserts of
//! values of random sizes.

#![allow(clippy::unwrap_used)] // in tests an unwrap is an assertion

use std::alloc::System;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tiered::l1::ENTRY_OVERHEAD;
use tiered::Cache;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[tokio::test]
async fn a_full_l1_stays_within_budget_plus_documented_overhead() {
    let budget: u64 = 32 << 20;
    let region = Region::new(GLOBAL);
    let cache: Cache<String> = Cache::builder("memory")
        .l1_max_bytes(budget)
        .build()
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(42);
    for i in 0..1_000_000u32 {
        let len = rng.usize(16..1024);
        cache
            .set(&format!("key:{i}"), "x".repeat(len))
            .await
            .unwrap();
    }
    let change = region.change();
    let live = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
    let stats = cache.stats();
    let entries = stats.l1.entries;
    assert!(
        stats.l1.evictions > 0,
        "the test must fill the cache past its budget"
    );
    assert!(stats.l1.weighted_bytes <= budget);
    let bound = budget as i64 + entries as i64 * ENTRY_OVERHEAD as i64;
    let overhead = (live - stats.l1.weighted_bytes as i64) as f64 / entries as f64;
    println!(
        "{entries} entries, {} weighted bytes, {live} live heap bytes: {overhead:.0} bytes/entry over the weights",
        stats.l1.weighted_bytes
    );
    assert!(
        live <= bound,
        "live heap {live} > budget {budget} + {entries} x {ENTRY_OVERHEAD}"
    );
    drop(cache);
}
