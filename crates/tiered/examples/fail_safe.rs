//! Fail-safe: when the database fails, serve the last good value (within its
//! grace window) instead of an error, and stop hammering the database for a
//! while. The error is never cached.
//!
//! Run: `cargo run -p tiered --example fail_safe`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tiered::Cache;

#[tokio::main]
async fn main() -> Result<(), tiered::Error> {
    let prices: Cache<u32> = Cache::builder("prices")
        .ttl(Duration::from_millis(200))
        .grace(Duration::from_secs(60))
        .failsafe_backoff(Duration::from_millis(300))
        .build()?;
    let db_up = Arc::new(AtomicBool::new(true));
    let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = || {
        let (db_up, queries) = (db_up.clone(), queries.clone());
        move || async move {
            queries.fetch_add(1, Ordering::SeqCst);
            if db_up.load(Ordering::SeqCst) {
                Ok(Some(42))
            } else {
                Err(std::io::Error::other("connection refused"))
            }
        }
    };

    println!(
        "price: {:?} (database up)",
        prices.get_or_load("sku-1", load()).await?
    );
    db_up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    println!("-- the entry expired and the database went down --");
    for i in 0..5 {
        let price = prices.get_or_load("sku-1", load()).await?;
        println!("read {i}: {price:?} (stale value served, no error)");
    }
    println!(
        "database queries while down: {} (one failure, then back-off)",
        queries.load(Ordering::SeqCst) - 1
    );
    db_up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    println!("-- the database is back and the back-off has passed --");
    println!(
        "price: {:?} (reloaded)",
        prices.get_or_load("sku-1", load()).await?
    );
    let stats = prices.stats();
    println!(
        "stale hits: {} | load errors: {} | loads: {}",
        stats.stale_hits, stats.load_errors, stats.loads
    );

    let no_grace: Cache<u32> = Cache::builder("no-grace").build()?;
    db_up.store(false, Ordering::SeqCst);
    match no_grace.get_or_load("sku-1", load()).await {
        Ok(v) => println!("unexpected: {v:?}"),
        Err(e) => println!("without a stale value the caller sees the error: {e}"),
    }
    Ok(())
}
