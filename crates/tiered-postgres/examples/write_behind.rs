//! Write-through and write-behind over PostgreSQL.
//!
//! Uses the database at `DATABASE_URL`; without it, starts a private
//! PostgreSQL (tiered-testkit) for the run. Shows:
//!
//! 1. write-through: the database first, then the cache;
//! 2. a write-through the database refuses: the cache is left as it was;
//! 3. write-behind: 1,000 writes acknowledged from the local write-ahead log,
//!    visible at once, flushed in batches and coalesced;
//! 4. a record the database keeps refusing, dead-lettered, fixed and replayed.
//!
//! Run: `cargo run -p tiered-postgres --example write_behind`

use std::time::{Duration, Instant};

use tiered::write::{Fsync, WalOptions, WriteError, Writer};
use tiered::Cache;
use tiered_postgres::PgStore;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keep a private server alive for the whole run, if we started one.
    let (_private, url) = match std::env::var("DATABASE_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = tiered_testkit::postgres::PostgresServer::start();
            let url = server.url();
            (Some(server), url)
        }
    };
    let table = format!("example_items_{}", std::process::id());
    let store: PgStore<String> = PgStore::connect(&url, &table).await?;
    store.create_table().await?;
    let cache: Cache<String> = Cache::builder("example").build()?;
    let wal = std::env::temp_dir().join(format!("tiered-example-wal-{}", std::process::id()));
    let writer = Writer::builder(cache.clone(), store.clone())
        // The default, `Fsync::Batched`, acknowledges once an fdatasync
        // covers the write; `Periodic` acknowledges after write(2) and syncs
        // within 10 ms: a killed process loses nothing, a power cut at most
        // those 10 ms (see `tiered::write::wal`).
        .wal_options(WalOptions {
            fsync: Fsync::periodic(),
            ..WalOptions::new(&wal)
        })
        // Back-pressure: at most this much queued in memory (and 100,000
        // records) before write-behind calls wait, then fail with QueueFull.
        .max_queued_bytes(64 << 20)
        .max_attempts(2)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(50))
        .start()
        .await?;

    // 1. Write-through.
    writer.set_through("user:1", "Ada".into()).await?;
    println!(
        "write-through: database has {:?}, cache has {:?}",
        store.load("user:1").await?,
        cache.get("user:1").await?
    );

    // 2. A write the database refuses changes nothing.
    sqlx::query(&format!(
        "ALTER TABLE {table} ADD CONSTRAINT short_names CHECK (length(value #>> '{{}}') < 20)"
    ))
    .execute(store.pool())
    .await?;
    match writer
        .set_through("user:1", "a name far too long for the column".into())
        .await
    {
        Err(WriteError::Store(e)) => println!("refused: {e}"),
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }
    println!(
        "after the refusal the cache still has {:?}",
        cache.get("user:1").await?
    );

    // 3. Write-behind: acknowledged once durable in the local log.
    let started = Instant::now();
    for i in 0..1_000 {
        writer
            .set_behind(&format!("counter:{}", i % 10), format!("n{i}"))
            .await?;
    }
    println!(
        "write-behind: 1000 writes acknowledged in {:.1?}; cache has {:?} at once, database has {:?}",
        started.elapsed(),
        cache.get("counter:9").await?,
        store.load("counter:9").await?
    );
    writer.flush(Duration::from_secs(30)).await;
    let stats = writer.stats();
    println!(
        "after the flush the database has {:?}: {} rows written, {} writes coalesced",
        store.load("counter:9").await?,
        stats.flushed,
        stats.coalesced
    );

    // 4. A record the database keeps refusing goes to the dead letters.
    writer
        .set_behind("user:2", "another name much too long".into())
        .await?;
    writer.flush(Duration::from_secs(30)).await;
    let dead = writer.dead_letters().await?;
    for letter in &dead {
        println!(
            "dead letter {}: {} = {:?} ({})",
            letter.id, letter.key, letter.value, letter.reason
        );
    }
    sqlx::query(&format!("ALTER TABLE {table} DROP CONSTRAINT short_names"))
        .execute(store.pool())
        .await?;
    for letter in dead {
        writer.replay_dead_letter(&letter.id).await?;
    }
    writer.flush(Duration::from_secs(30)).await;
    println!(
        "replayed after the fix: database has {:?}",
        store.load("user:2").await?
    );

    let report = writer.shutdown(Duration::from_secs(10)).await;
    println!(
        "shutdown: drained = {}, left = {}",
        report.drained, report.left
    );
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(store.pool())
        .await?;
    let _ = std::fs::remove_dir_all(wal);
    Ok(())
}
