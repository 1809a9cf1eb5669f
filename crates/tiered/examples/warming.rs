//! Warming: load many keys before traffic arrives, with bounded concurrency and
//! progress reports.
//!
//! Run: `cargo run -p tiered --example warming`

use std::time::{Duration, Instant};

use tiered::Cache;

#[tokio::main]
async fn main() -> Result<(), tiered::Error> {
    let products: Cache<String> = Cache::builder("products")
        .ttl(Duration::from_secs(600))
        // Keys warmed together would otherwise all expire together.
        .ttl_jitter(Duration::from_secs(60))
        .build()?;
    products.set("product:0", "already cached".into()).await?;

    let keys: Vec<String> = (0..1000).map(|i| format!("product:{i}")).collect();
    let t = Instant::now();
    let report = products
        .warm(
            keys,
            32,
            |key: String| async move {
                tokio::time::sleep(Duration::from_millis(5)).await; // a query
                if key == "product:666" {
                    return Err(std::io::Error::other("row is corrupt"));
                }
                Ok(Some(format!("details of {key}")))
            },
            |p| {
                if p.done % 250 == 0 {
                    println!(
                        "warming: {}/{} done, {} loaded, {} skipped, {} failed",
                        p.done, p.total, p.loaded, p.skipped, p.failed
                    );
                }
            },
        )
        .await?;
    println!(
        "warmed {} keys in {:?} with 32 at a time (1000 × 5 ms one by one would take 5 s)",
        report.progress.loaded,
        t.elapsed()
    );
    for (key, error) in &report.errors {
        println!("failed: {key}: {error}");
    }
    println!("entries in L1: {}", products.stats().l1.entries);
    Ok(())
}
