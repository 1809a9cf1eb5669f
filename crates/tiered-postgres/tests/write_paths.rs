#![allow(clippy::unwrap_used)]
//! The cache's write paths (`tiered::write::Writer`) over a real PostgreSQL:
//! write-through, write-behind through the local log and through a Redis
//! Stream, store failures, dead letters, back-pressure, restarts and the
//! invalidation of dependants. Each test starts its own servers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use tiered::write::{
    Fsync, Store, StoreErrorKind, StoreFuture, StoreWrite, StreamOptions, WalOptions, WriteError,
    WriteOptions, Writer,
};
use tiered::{Cache, Options, RedisL2};
use tiered_postgres::{PgStore, Stored};
use tiered_testkit::postgres::PostgresServer;
use tiered_testkit::redis::{RedisCluster, RedisServer};

const WAIT: Duration = Duration::from_secs(20);

/// A server and a store on a fresh `items` table; the pool gives up on a
/// connection after 1 s so "database down" turns into errors quickly.
async fn database() -> (PostgresServer, PgStore<String>) {
    let server = PostgresServer::start();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(1))
        .connect(&server.url())
        .await
        .unwrap();
    let store = PgStore::new(pool, "items").unwrap();
    store.create_table().await.unwrap();
    (server, store)
}

fn cache() -> Cache<String> {
    Cache::builder("items").build().unwrap()
}

/// A cache on `redis`. The L2 timeout is generous: a first call (which
/// connects) on a loaded CI machine must not time out and turn into a miss.
fn shared_cache(redis: &RedisServer) -> Cache<String> {
    Cache::builder("items")
        .redis(redis.url())
        .l2_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn wal_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tiered-write-{name}-{}-{}",
        std::process::id(),
        fastrand_seed()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn fastrand_seed() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn value(store: &PgStore<String>, key: &str) -> Option<String> {
    store.get(key).await.unwrap().map(|(v, _)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_writes_the_store_then_every_tier() {
    let (_pg, store) = database().await;
    let cache = cache();
    let writer = Writer::builder(cache.clone(), store.clone())
        .start()
        .await
        .unwrap();
    writer.set_through("a", "one".into()).await.unwrap();
    assert_eq!(value(&store, "a").await.as_deref(), Some("one"));
    assert_eq!(
        cache.get("a").await.unwrap().as_deref().map(String::as_str),
        Some("one")
    );
    writer.set_through("a", "two".into()).await.unwrap();
    let (v, version) = store.get("a").await.unwrap().unwrap();
    assert_eq!(v, "two");
    assert!(version > 0);
    writer.remove_through("a").await.unwrap();
    assert_eq!(value(&store, "a").await, None);
    assert!(matches!(
        store.stored("a").await.unwrap(),
        Some(Stored { value: None, .. })
    ));
    assert_eq!(cache.get("a").await.unwrap(), None);
    // Writes without a queue are refused, with a clear error.
    assert!(matches!(
        writer.set_behind("b", "x".into()).await,
        Err(WriteError::NoQueue)
    ));
    let stats = cache.stats().write.unwrap();
    assert_eq!(stats.through_ok, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_write_changes_no_tier() {
    let redis = RedisServer::start();
    let (mut pg, store) = database().await;
    let cache: Cache<String> = shared_cache(&redis);
    let writer = Writer::builder(cache.clone(), store.clone())
        .start()
        .await
        .unwrap();
    writer.set_through("a", "old".into()).await.unwrap();

    // Refused by the database: a constraint.
    pg.psql("ALTER TABLE items ADD CONSTRAINT no_poison CHECK (value IS NULL OR value #>> '{}' <> 'poison')");
    let err = writer.set_through("a", "poison".into()).await.unwrap_err();
    assert!(
        matches!(&err, WriteError::Store(e) if e.kind() == StoreErrorKind::Rejected),
        "{err}"
    );
    // Down.
    pg.stop();
    let err = writer.set_through("a", "new".into()).await.unwrap_err();
    assert!(
        matches!(&err, WriteError::Store(e) if e.kind() == StoreErrorKind::Unavailable),
        "{err}"
    );
    let err = writer.remove_through("a").await.unwrap_err();
    assert!(matches!(err, WriteError::Store(_)));

    // Every tier still holds the old value: L1, and L2 as a fresh instance sees it.
    assert_eq!(
        cache.get("a").await.unwrap().as_deref().map(String::as_str),
        Some("old")
    );
    let other: Cache<String> = shared_cache(&redis);
    assert_eq!(
        other.get("a").await.unwrap().as_deref().map(String::as_str),
        Some("old")
    );
    pg.start_again();
    assert_eq!(value(&store, "a").await.as_deref(), Some("old"));
    assert_eq!(writer.stats().through_errors, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_reaches_other_instances() {
    let redis = RedisServer::start();
    let (_pg, store) = database().await;
    let a: Cache<String> = shared_cache(&redis);
    let b: Cache<String> = shared_cache(&redis);
    let writer = Writer::builder(a.clone(), store.clone())
        .start()
        .await
        .unwrap();
    b.set("k", "stale".into()).await.unwrap();
    assert!(b.sync_backplane(Duration::from_secs(5)).await);
    writer.set_through("k", "fresh".into()).await.unwrap();
    assert!(a.sync_backplane(Duration::from_secs(5)).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = b.get("k").await.unwrap();
        if got.as_deref().map(String::as_str) == Some("fresh") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "b still sees {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_is_visible_at_once_and_lands_coalesced() {
    let (_pg, store) = database().await;
    let cache = cache();
    let dir = wal_dir("lands");
    let writer = Writer::builder(cache.clone(), store.clone())
        .wal(&dir)
        .flush_interval(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    for i in 0..100 {
        writer
            .set_behind(&format!("k{i}"), format!("v{i}"))
            .await
            .unwrap();
    }
    for round in 0..10 {
        writer
            .set_behind("hot", format!("hot{round}"))
            .await
            .unwrap();
    }
    writer.remove_behind("k0").await.unwrap();
    // Visible at once.
    assert_eq!(
        cache
            .get("k5")
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("v5")
    );
    assert_eq!(
        cache
            .get("hot")
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("hot9")
    );
    assert_eq!(cache.get("k0").await.unwrap(), None);
    assert!(writer.flush(WAIT).await);
    let rows = store.dump().await.unwrap();
    assert_eq!(rows.len(), 100, "k1..k99 and hot");
    assert_eq!(value(&store, "hot").await.as_deref(), Some("hot9"));
    assert_eq!(value(&store, "k99").await.as_deref(), Some("v99"));
    assert!(matches!(
        store.stored("k0").await.unwrap(),
        Some(Stored { value: None, .. })
    ));
    let stats = writer.stats();
    assert_eq!(stats.acknowledged, 111);
    assert_eq!(stats.queue_depth, 0);
    assert!(stats.coalesced >= 1, "{stats:?}");
    assert_eq!(stats.flushed + stats.coalesced, 111, "{stats:?}");
    assert!(stats.flush_p99 > Duration::ZERO);
    let report = writer.shutdown(WAIT).await;
    assert!(report.drained && report.left == 0);
    assert!(matches!(
        writer.set_behind("x", "y".into()).await,
        Err(WriteError::ShuttingDown)
    ));
    let _ = std::fs::remove_dir_all(dir);
}

/// The flusher's policy (`tiered::write::flusher`): a key's writes wait out
/// `flush_interval` and reach the store once, however many there were, and
/// a flusher holding its fill of keys (four batches) sends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_written_within_its_window_lands_once_and_a_full_flusher_sends_at_once() {
    let (_pg, store) = database().await;
    let dir = wal_dir("window");
    // Batches of 2 keys: the old policy sent "hot" and "cold" as soon as
    // both were held, then "hot" again for each later write. The writes are
    // not synced one by one, so all 21 are made well within the window even
    // on a slow disk.
    let writer = Writer::builder(cache(), store.clone())
        .wal_options(WalOptions {
            fsync: Fsync::Never,
            ..WalOptions::new(&dir)
        })
        .batch_size(2)
        .flush_interval(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    writer.set_behind("cold", "c".into()).await.unwrap();
    for round in 0..20 {
        writer
            .set_behind("hot", format!("hot{round}"))
            .await
            .unwrap();
    }
    until("the window ends", || writer.stats().queue_depth == 0).await;
    assert_eq!(value(&store, "hot").await.as_deref(), Some("hot19"));
    assert_eq!(value(&store, "cold").await.as_deref(), Some("c"));
    let stats = writer.stats();
    assert_eq!((stats.flushed, stats.coalesced), (2, 19), "{stats:?}");
    writer.shutdown(WAIT).await;
    let _ = std::fs::remove_dir_all(dir);

    // Batches of one: the flusher holds at most 4 keys. Of 10 distinct keys
    // with an hour's window, those beyond its fill go at once; the rest wait.
    let dir = wal_dir("full");
    let writer = Writer::builder(cache(), store.clone())
        .wal(&dir)
        .batch_size(1)
        .flush_interval(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    for i in 0..10 {
        writer
            .set_behind(&format!("d{i}"), "v".into())
            .await
            .unwrap();
    }
    // (`flushed` counts a batch before its records are confirmed, so wait
    // for the depth.)
    until("a full flusher sends", || writer.stats().queue_depth <= 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = writer.stats();
    assert_eq!((stats.flushed, stats.queue_depth), (7, 3), "{stats:?}");
    assert_eq!(
        value(&store, "d0").await.as_deref(),
        Some("v"),
        "oldest first"
    );
    assert_eq!(
        value(&store, "d9").await,
        None,
        "the newest wait out their window"
    );
    assert!(writer.flush(WAIT).await);
    assert_eq!(value(&store, "d9").await.as_deref(), Some("v"));
    writer.shutdown(WAIT).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_without_blocking_other_keys() {
    let (pg, store) = database().await;
    pg.psql("ALTER TABLE items ADD CONSTRAINT no_poison CHECK (value IS NULL OR value #>> '{}' <> 'poison')");
    let cache = cache();
    let dir = wal_dir("poison");
    let writer = Writer::builder(cache.clone(), store.clone())
        .wal(&dir)
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    writer.set_behind("bad", "poison".into()).await.unwrap();
    for i in 0..50 {
        writer
            .set_behind(&format!("k{i}"), format!("v{i}"))
            .await
            .unwrap();
    }
    assert!(writer.flush(WAIT).await);
    assert_eq!(
        store.dump().await.unwrap().len(),
        50,
        "every good key landed"
    );
    let dead = writer.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key, "bad");
    assert_eq!(dead[0].value.as_deref(), Some("poison"));
    assert_eq!(
        cache.get("bad").await.unwrap(),
        None,
        "a dead letter is not served"
    );
    assert!(dead[0].reason.contains("no_poison"), "{}", dead[0].reason);
    let stats = writer.stats();
    assert_eq!((stats.dead_letters, stats.dead_lettered), (1, 1));
    assert!(stats.retries >= 2, "{stats:?}");

    // Fixed at the source, the dead letter replays; a second poison is dropped.
    pg.psql("ALTER TABLE items DROP CONSTRAINT no_poison");
    assert!(writer.replay_dead_letter(&dead[0].id).await.unwrap());
    assert!(!writer.replay_dead_letter(&dead[0].id).await.unwrap());
    assert!(!writer.replay_dead_letter("../../etc/passwd").await.unwrap());
    assert!(writer.flush(WAIT).await);
    assert_eq!(value(&store, "bad").await.as_deref(), Some("poison"));
    assert_eq!(writer.stats().dead_letters, 0);

    pg.psql("ALTER TABLE items ADD CONSTRAINT no_poison CHECK (value IS NULL OR value #>> '{}' <> 'poison2')");
    writer.set_behind("bad2", "poison2".into()).await.unwrap();
    assert!(writer.flush(WAIT).await);
    let dead = writer.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(writer.drop_dead_letter(&dead[0].id).await.unwrap());
    assert!(writer.dead_letters().await.unwrap().is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

/// The real store, except that a batch holding the value "panic" panics
/// while building its future, and one holding "panic-later" while running
/// it (bugs in a user's `Store`).
struct PanicsOnOne(PgStore<String>);

impl Store<String> for PanicsOnOne {
    fn apply<'a>(&'a self, batch: &'a [StoreWrite<String>]) -> StoreFuture<'a> {
        let has = |v: &str| {
            batch
                .iter()
                .any(|w| w.value.as_deref().map(String::as_str) == Some(v))
        };
        if has("panic") {
            panic!("a bug in the store");
        }
        if has("panic-later") {
            return Box::pin(async { panic!("a bug in the store, later") });
        }
        self.0.apply(batch)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_panics_dead_letters_that_write_and_the_flusher_goes_on() {
    let (_pg, store) = database().await;
    let dir = wal_dir("panic");
    let writer = Writer::builder(cache(), PanicsOnOne(store.clone()))
        .wal(&dir)
        .max_attempts(2)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    writer.set_behind("boom", "panic".into()).await.unwrap();
    writer
        .set_behind("boom2", "panic-later".into())
        .await
        .unwrap();
    for i in 0..20 {
        writer
            .set_behind(&format!("k{i}"), format!("v{i}"))
            .await
            .unwrap();
    }
    assert!(writer.flush(WAIT).await, "the flusher is still running");
    assert_eq!(
        store.dump().await.unwrap().len(),
        20,
        "every good key landed"
    );
    let mut dead = writer.dead_letters().await.unwrap();
    dead.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(
        (dead[0].key.as_str(), dead[1].key.as_str()),
        ("boom", "boom2")
    );
    assert!(
        dead[0].reason.contains("a bug in the store"),
        "{}",
        dead[0].reason
    );
    assert!(
        dead[1].reason.contains("a bug in the store, later"),
        "{}",
        dead[1].reason
    );
    // And it keeps flushing afterwards.
    writer.set_behind("later", "fine".into()).await.unwrap();
    assert!(writer.flush(WAIT).await);
    assert_eq!(value(&store, "later").await.as_deref(), Some("fine"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_the_queue_grows_then_drains() {
    let (mut pg, store) = database().await;
    let cache = cache();
    let dir = wal_dir("down");
    let writer = Writer::builder(cache.clone(), store.clone())
        .wal(&dir)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    pg.stop();
    for i in 0..200 {
        writer
            .set_behind(&format!("k{i}"), format!("v{i}"))
            .await
            .unwrap();
    }
    // (Each attempt waits up to the pool's 1 s acquire timeout.)
    assert!(!writer.flush(Duration::from_millis(2500)).await);
    let stats = writer.stats();
    assert_eq!(stats.queue_depth, 200);
    assert!(stats.oldest_age > Duration::ZERO, "{stats:?}");
    assert!(stats.retries > 0);
    assert_eq!(stats.dead_lettered, 0, "an outage never dead-letters");
    pg.start_again();
    assert!(writer.flush(WAIT).await);
    assert_eq!(store.dump().await.unwrap().len(), 200);
    let _ = std::fs::remove_dir_all(dir);
}

/// A writer on the log in `dir` whose queue holds `records` records and
/// `bytes` bytes, waiting 100 ms for room.
async fn bounded_writer(
    cache: &Cache<String>,
    store: &PgStore<String>,
    dir: &std::path::Path,
    records: u64,
    bytes: u64,
) -> Writer<String> {
    Writer::builder(cache.clone(), store.clone())
        .wal(dir)
        .max_queued(records)
        .max_queued_bytes(bytes)
        .enqueue_timeout(Duration::from_millis(100))
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_pushes_back_and_changes_nothing() {
    let (mut pg, store) = database().await;
    let cache = cache();
    let dir = wal_dir("full");
    let writer = bounded_writer(&cache, &store, &dir, 10, 256 << 20).await;
    pg.stop();
    for i in 0..10 {
        writer
            .set_behind(&format!("k{i}"), "v".into())
            .await
            .unwrap();
    }
    let err = writer.set_behind("k10", "v".into()).await.unwrap_err();
    assert!(
        matches!(err, WriteError::QueueFull { depth: 10, .. }),
        "{err}"
    );
    assert_eq!(
        cache.get("k10").await.unwrap(),
        None,
        "a refused write is not visible"
    );
    assert_eq!(writer.stats().refused_full, 1);
    // Room again once the store is back.
    pg.start_again();
    assert!(writer.flush(WAIT).await);
    writer.set_behind("k10", "v".into()).await.unwrap();
    assert!(writer.flush(WAIT).await);
    assert_eq!(store.dump().await.unwrap().len(), 11);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_waiting_for_room_do_not_wait_out_the_flush_window() {
    let (_pg, store) = database().await;
    let dir = wal_dir("pressed");
    // A queue of 5 records and an hour's window: without the push from the
    // waiting writes, the 6th would wait until its enqueue timeout and fail.
    let writer = Writer::builder(cache(), store.clone())
        .wal(&dir)
        .max_queued(5)
        .flush_interval(Duration::from_secs(3600))
        .enqueue_timeout(WAIT)
        .start()
        .await
        .unwrap();
    for i in 0..12 {
        writer
            .set_behind(&format!("k{i}"), "v".into())
            .await
            .unwrap();
    }
    let stats = writer.stats();
    assert!(stats.flushed >= 7, "{stats:?}");
    assert_eq!(stats.refused_full, 0, "{stats:?}");
    assert!(writer.flush(WAIT).await);
    assert_eq!(store.dump().await.unwrap().len(), 12);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_fill_the_queue_by_bytes_before_its_record_count() {
    let (mut pg, store) = database().await;
    let cache = cache();
    let dir = wal_dir("full-bytes");
    let writer = bounded_writer(&cache, &store, &dir, 1_000, 10_000).await;
    pg.stop();
    let big = "x".repeat(4_000);
    // Let in while under 10,000 bytes: three records of ~4 KB.
    for i in 0..3 {
        writer
            .set_behind(&format!("k{i}"), big.clone())
            .await
            .unwrap();
    }
    let queued = writer.stats().queue_bytes;
    assert!((12_000..13_000).contains(&queued), "{queued}");
    let err = writer.set_behind("k3", big.clone()).await.unwrap_err();
    assert!(
        matches!(err, WriteError::QueueFull { depth: 3, bytes, .. } if bytes == queued),
        "{err}"
    );
    assert_eq!(cache.get("k3").await.unwrap(), None);
    pg.start_again();
    assert!(writer.flush(WAIT).await);
    assert_eq!(writer.stats().queue_bytes, 0);
    writer.set_behind("k3", big).await.unwrap();
    assert!(writer.flush(WAIT).await);
    assert_eq!(store.dump().await.unwrap().len(), 4);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replays_what_was_acknowledged() {
    let (mut pg, store) = database().await;
    let dir = wal_dir("restart");
    pg.stop();
    {
        let writer = Writer::builder(cache(), store.clone())
            .wal(&dir)
            .start()
            .await
            .unwrap();
        for i in 0..50 {
            writer
                .set_behind(&format!("k{i}"), format!("v{i}"))
                .await
                .unwrap();
        }
        let report = writer.shutdown(Duration::from_millis(200)).await;
        assert!(!report.drained);
        assert_eq!(report.left, 50);
    }
    pg.start_again();
    let writer = Writer::builder(cache(), store.clone())
        .wal(&dir)
        .start()
        .await
        .unwrap();
    assert_eq!(writer.stats().recovered, 50);
    // A write after the restart is newer than every replayed one.
    writer.set_behind("k0", "after".into()).await.unwrap();
    assert!(writer.flush(WAIT).await);
    assert_eq!(store.dump().await.unwrap().len(), 50);
    assert_eq!(value(&store, "k0").await.as_deref(), Some("after"));
    assert_eq!(value(&store, "k49").await.as_deref(), Some("v49"));
    let _ = std::fs::remove_dir_all(dir);
}

/// A record written under a clock centuries ahead (a broken host clock, or a
/// damaged record) must not set the version every later write continues
/// from: past 2^63 the store refuses them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_version_far_ahead_of_the_clock_does_not_poison_later_writes() {
    let (mut pg, store) = database().await;
    let dir = wal_dir("far-ahead");
    pg.stop();
    {
        let year_2300 = tiered::Timestamp::from_nanos(10_500_000_000 * 1_000_000_000);
        let broken = Cache::builder("items")
            .clock(tiered::ManualClock::starting_at(year_2300))
            .build()
            .unwrap();
        let writer = Writer::builder(broken, store.clone())
            .wal(&dir)
            .start()
            .await
            .unwrap();
        writer
            .set_behind("from-the-future", "x".into())
            .await
            .unwrap();
        assert_eq!(writer.shutdown(Duration::from_millis(200)).await.left, 1);
    }
    pg.start_again();
    let writer = Writer::builder(cache(), store.clone())
        .wal(&dir)
        .max_attempts(2)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    assert_eq!(writer.stats().recovered, 1);
    for i in 0..5 {
        writer
            .set_behind(&format!("k{i}"), format!("v{i}"))
            .await
            .unwrap();
    }
    writer.set_through("t", "through".into()).await.unwrap();
    assert!(writer.flush(WAIT).await);
    for i in 0..5 {
        assert_eq!(
            value(&store, &format!("k{i}")).await,
            Some(format!("v{i}")),
            "a later write landed"
        );
    }
    assert_eq!(value(&store, "t").await.as_deref(), Some("through"));
    // The record that carried the bad version is the only one refused.
    let dead = writer.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key, "from-the-future");
    assert!(dead[0].reason.contains("BIGINT"), "{}", dead[0].reason);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependants_and_named_tags_are_invalidated_when_the_write_lands() {
    let (_pg, store) = database().await;
    let cache = cache();
    let dir = wal_dir("dependants");
    let writer = Writer::builder(cache.clone(), store.clone())
        .wal(&dir)
        .flush_interval(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    writer.set_behind("user:1", "Ada".into()).await.unwrap();

    // Two entries derived from the database, loaded while the write is still
    // queued: they see the old data.
    let loads = Arc::new(AtomicUsize::new(0));
    let derived = |key: &'static str, opts: Options| {
        let (cache, store, loads) = (cache.clone(), store.clone(), Arc::clone(&loads));
        async move {
            cache
                .get_or_load_with(key, &opts, move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    let n = store.dump().await.map_err(std::io::Error::other)?.len();
                    Ok::<_, std::io::Error>(Some(format!("{n} users")))
                })
                .await
                .unwrap()
                .unwrap()
        }
    };
    let depends = Options::default().depends_on("user:1");
    let tagged = Options::default().tags(["user-lists"]);
    assert_eq!(*derived("count", depends.clone()).await, "0 users");
    assert_eq!(*derived("list", tagged.clone()).await, "0 users");
    writer
        .set_behind_with(
            "user:2",
            "Grace".into(),
            &WriteOptions::new().invalidate_tag("user-lists"),
        )
        .await
        .unwrap();
    assert_eq!(
        *derived("count", depends.clone()).await,
        "0 users",
        "cached"
    );
    assert_eq!(loads.load(Ordering::SeqCst), 2);

    assert!(writer.flush(WAIT).await);
    // Landed: both derived entries were dropped, and reload the new data.
    assert_eq!(*derived("count", depends).await, "2 users");
    assert_eq!(*derived("list", tagged).await, "2 users");
    assert_eq!(loads.load(Ordering::SeqCst), 4);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stream_queue_is_drained_by_any_instance() {
    let redis = RedisServer::start();
    let (mut pg, store) = database().await;
    let stream = |consumer: &str| {
        StreamOptions::new(RedisL2::builder(redis.url()).build().unwrap())
            .consumer(consumer)
            .claim_idle(Duration::from_millis(300))
    };
    pg.stop();
    {
        // Instance a acknowledges writes, takes them from the stream and dies
        // before the database comes back.
        let a = Writer::builder(cache(), store.clone())
            .redis_stream(stream("a"))
            .retry_backoff(Duration::from_millis(20), Duration::from_millis(50))
            .start()
            .await
            .unwrap();
        for i in 0..30 {
            a.set_behind(&format!("k{i}"), format!("v{i}"))
                .await
                .unwrap();
        }
        a.remove_behind("k0").await.unwrap();
        // Its flusher has read them all (two more failed tries, each after a
        // read, so they are pending under a) and is stopped mid-retry:
        // nothing of a's goes on to write them.
        let tries = a.stats().retries;
        tiered_testkit::eventually("a's flusher read everything", || {
            a.stats().retries >= tries + 2
        })
        .await;
        let report = a.shutdown(Duration::from_millis(100)).await;
        assert!(!report.drained);
        assert_eq!(report.left, 31);
    }
    pg.start_again();
    // Instance b claims a's pending records once they have been idle long
    // enough (1 s). Its flusher has room for 4 records at a time (batches of
    // one), so it claims a's 31 entries in 8 reads: all in one sweep, not one
    // read per `claim_idle`, which would take 8 s.
    let b = Writer::builder(cache(), store.clone())
        .redis_stream(stream("b").claim_idle(Duration::from_secs(1)))
        .batch_size(1)
        .start()
        .await
        .unwrap();
    assert!(
        b.flush(Duration::from_secs(5)).await,
        "a's backlog is claimed in one sweep"
    );
    assert_eq!(store.dump().await.unwrap().len(), 29);
    assert!(matches!(
        store.stored("k0").await.unwrap(),
        Some(Stored { value: None, .. })
    ));
    assert_eq!(redis.cli(&["XLEN", "{tiered-wb:items}"]).trim(), "0");
    assert_eq!(redis.cli(&["GET", "{tiered-wb:items}:n"]).trim(), "0");

    b.shutdown(WAIT).await;
    // Dead letters work the same way on the stream.
    pg.psql("ALTER TABLE items ADD CONSTRAINT no_poison CHECK (value IS NULL OR value #>> '{}' <> 'poison')");
    let c = Writer::builder(cache(), store.clone())
        .redis_stream(stream("c"))
        .max_attempts(2)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(20))
        .start()
        .await
        .unwrap();
    c.set_behind("bad", "poison".into()).await.unwrap();
    assert!(c.flush(WAIT).await);
    let dead = c.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    pg.psql("ALTER TABLE items DROP CONSTRAINT no_poison");
    assert!(c.replay_dead_letter(&dead[0].id).await.unwrap());
    assert!(c.flush(WAIT).await);
    assert_eq!(value(&store, "bad").await.as_deref(), Some("poison"));
}

/// 64 tasks at once, each writing `v{t}-{i}` for i in 0..20 behind, to
/// `key(t, i)`; returns once every write is acknowledged.
async fn from_64_tasks(writer: &Writer<String>, key: fn(usize, usize) -> String) {
    let mut tasks = Vec::new();
    for t in 0..64 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                writer
                    .set_behind(&key(t, i), format!("v{t}-{i}"))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn concurrent_appends_to_a_stream_on_a_cluster_all_land() {
    // 64 tasks at once: their records are grouped into stream entries, whose
    // script (XADD and the count) a Cluster connection must route to the
    // stream's one slot.
    let cluster = RedisCluster::start();
    let (_pg, store) = database().await;
    let writer = Writer::builder(cache(), store.clone())
        .redis_stream(StreamOptions::new(
            RedisL2::cluster(cluster.urls()).build().unwrap(),
        ))
        .start()
        .await
        .unwrap();
    from_64_tasks(&writer, |t, _| format!("k{t}")).await;
    assert_eq!(writer.stats().acknowledged, 64 * 20);
    assert!(writer.flush(WAIT).await);
    let rows = store.dump().await.unwrap();
    assert_eq!(rows.len(), 64);
    for t in 0..64 {
        assert_eq!(
            value(&store, &format!("k{t}")).await.as_deref(),
            Some(format!("v{t}-19").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_stream_entries_and_all_land() {
    let redis = RedisServer::start();
    let (_pg, store) = database().await;
    // The flusher takes records but holds them (a batch never fills, the
    // interval never ends) until `flush`: the entries stay in the stream.
    let writer = Writer::builder(cache(), store.clone())
        .redis_stream(StreamOptions::new(
            RedisL2::builder(redis.url()).build().unwrap(),
        ))
        .batch_size(100_000)
        .flush_interval(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    from_64_tasks(&writer, |t, i| format!("k{t}-{i}")).await;
    let entries: usize = redis
        .cli(&["XLEN", "{tiered-wb:items}"])
        .trim()
        .parse()
        .unwrap();
    // Appends made while an XADD was in flight went out together.
    assert!(
        entries < 64 * 20,
        "{entries} entries for {} records",
        64 * 20
    );
    assert!(entries >= 64 * 20 / 256, "{entries} entries");
    assert_eq!(redis.cli(&["GET", "{tiered-wb:items}:n"]).trim(), "1280");
    assert!(writer.flush(WAIT).await);
    assert_eq!(store.dump().await.unwrap().len(), 64 * 20);
    assert_eq!(value(&store, "k63-19").await.as_deref(), Some("v63-19"));
    // Every entry acknowledged and deleted, the count back to zero.
    assert_eq!(redis.cli(&["XLEN", "{tiered-wb:items}"]).trim(), "0");
    assert_eq!(redis.cli(&["GET", "{tiered-wb:items}:n"]).trim(), "0");
}

#[tokio::test]
async fn an_append_redis_refuses_is_an_error_and_changes_nothing() {
    let redis = RedisServer::start();
    let (_pg, store) = database().await;
    let cache = cache();
    let writer = Writer::builder(cache.clone(), store.clone())
        .redis_stream(StreamOptions::new(
            RedisL2::builder(redis.url()).build().unwrap(),
        ))
        .start()
        .await
        .unwrap();
    writer.set_behind("a", "old".into()).await.unwrap();
    assert!(writer.flush(WAIT).await);
    // The stream's key now holds a string: every XADD is refused (WRONGTYPE).
    redis.cli(&["DEL", "{tiered-wb:items}"]);
    redis.cli(&["SET", "{tiered-wb:items}", "not a stream"]);
    let err = writer.set_behind("a", "new".into()).await.unwrap_err();
    assert!(
        matches!(&err, WriteError::Queue(m) if m.contains("WRONGTYPE")),
        "{err}"
    );
    // Nothing counted either.
    assert_eq!(redis.cli(&["GET", "{tiered-wb:items}:n"]).trim(), "0");
    assert_eq!(
        cache.get("a").await.unwrap().as_deref().map(String::as_str),
        Some("old")
    );
    assert_eq!(value(&store, "a").await.as_deref(), Some("old"));
}

/// A store whose calls wait until the test opens its gate (counting them).
struct Gated {
    store: PgStore<String>,
    calls: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Store<String> for Gated {
    fn apply<'a>(&'a self, batch: &'a [StoreWrite<String>]) -> StoreFuture<'a> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let _permit = self.gate.acquire().await;
            self.store.apply(batch).await
        })
    }
}

/// Polls `check` every 50 ms, for 20 s at most.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_instances_confirming_the_same_entries_keep_the_count_exact() {
    let redis = RedisServer::start();
    let (_pg, store) = database().await;
    let stream = |consumer: &str| {
        StreamOptions::new(RedisL2::builder(redis.url()).build().unwrap()).consumer(consumer)
    };
    // Instance a takes the records and hangs in its store call…
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let slow = Gated {
        store: store.clone(),
        calls: Arc::clone(&calls),
        gate: Arc::clone(&gate),
    };
    let a = Writer::builder(cache(), slow)
        .redis_stream(stream("a"))
        .start()
        .await
        .unwrap();
    from_64_tasks(&a, |t, _| format!("k{t}")).await;
    until("a's store call", || calls.load(Ordering::SeqCst) >= 1).await;
    // …so b claims them as idle, writes and confirms them: every entry
    // acknowledged and deleted, the count at zero.
    let b = Writer::builder(cache(), store.clone())
        .redis_stream(stream("b").claim_idle(Duration::from_millis(300)))
        .start()
        .await
        .unwrap();
    until("b confirmed a's entries", || {
        redis.cli(&["XLEN", "{tiered-wb:items}"]).trim() == "0"
    })
    .await;
    assert_eq!(redis.cli(&["GET", "{tiered-wb:items}:n"]).trim(), "0");
    assert_eq!(store.dump().await.unwrap().len(), 64);
    b.shutdown(WAIT).await;
    // A third instance's records wait in the stream, read by its flusher and
    // held there, so the stream is not empty when a confirms (an empty
    // stream resets the count to zero, which would hide a wrong count).
    let c = Writer::builder(cache(), store.clone())
        .redis_stream(stream("c"))
        .batch_size(100_000)
        .flush_interval(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    for i in 0..5 {
        c.set_behind(&format!("c{i}"), "c".into()).await.unwrap();
    }
    until("c's flusher took its records", || {
        redis
            .cli(&["XPENDING", "{tiered-wb:items}", "tiered"])
            .lines()
            .next()
            == Some("5")
    })
    .await;
    assert_eq!(redis.cli(&["GET", "{tiered-wb:items}:n"]).trim(), "5");
    // Now a's store call returns and a confirms the entries b already
    // confirmed: its acknowledgements find them gone and must not lower the
    // count. (Its shutdown lets its flusher finish the batch in progress,
    // confirmation included; it does not drain, as the stream it shares
    // still holds c's records, and its depth says so.)
    gate.add_permits(1_000_000);
    until("a's store call returned", || a.stats().flushed > 0).await;
    let report = a.shutdown(Duration::from_secs(2)).await;
    assert!(!report.drained);
    assert_eq!(report.left, 5);
    assert_eq!(redis.cli(&["GET", "{tiered-wb:items}:n"]).trim(), "5");
    assert!(c.flush(WAIT).await);
    assert_eq!(redis.cli(&["GET", "{tiered-wb:items}:n"]).trim(), "0");
    assert_eq!(redis.cli(&["XLEN", "{tiered-wb:items}"]).trim(), "0");
    for t in 0..64 {
        assert_eq!(
            value(&store, &format!("k{t}")).await.as_deref(),
            Some(format!("v{t}-19").as_str())
        );
    }
    assert_eq!(store.dump().await.unwrap().len(), 64 + 5);
}
