//! Acknowledged writes per second: write-behind (local write-ahead log, and a
//! Redis Stream) against write-through, on one private PostgreSQL; and the
//! rows per second the flusher writes.
//!
//! * **write-through**: `Writer::set_through` — one PostgreSQL upsert per call.
//! * **write-behind (log)**: `Writer::set_behind` on the local write-ahead log.
//!   `--fsync batched` (the default): acknowledged after `fdatasync`, batched
//!   across concurrent calls; `--fsync periodic`: acknowledged after
//!   `write(2)`, synced within 10 ms; `--fsync never`: never synced.
//! * **write-behind (stream)**: `Writer::set_behind` on a Redis Stream, in a
//!   private `redis-server` with `appendonly yes` and the matching promise:
//!   `appendfsync always` with `--fsync batched` (on disk when acknowledged),
//!   `appendfsync everysec` otherwise.
//!
//! All three run `--tasks` concurrent tasks writing `--ops` operations over
//! 1,000 keys, on an L1-only cache, alternating for `--rounds` rounds (the
//! machine is shared and noisy); medians and ratios are printed. PostgreSQL
//! runs with its default durability (`fsync=on`). The flusher figure: a
//! backlog of `--rows` records to distinct keys is left in a write-ahead log
//! (by a writer whose store has no table), then a new writer on that log is
//! timed from its start until the backlog is in the database (every record
//! becomes one row).
//!
//! Run: `cargo run --release -p tiered-bench --bin write-paths -- [--ops N] [--rows N] [--rounds N] [--tasks N] [--fsync batched|periodic|never]`

use std::time::{Duration, Instant};

use tiered::write::{Fsync, StreamOptions, WalOptions, Writer};
use tiered::{Cache, RedisL2};
use tiered_bench::median;
use tiered_postgres::PgStore;
use tiered_testkit::postgres::PostgresServer;
use tiered_testkit::redis::{RedisConfig, RedisServer};

const KEYS: usize = 1_000;

struct Args {
    /// Log durability: `batched` (the default), `periodic` or `never`.
    fsync: Fsync,
    ops: usize,
    rows: usize,
    rounds: usize,
    tasks: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        fsync: Fsync::default(),
        ops: 20_000,
        rows: 50_000,
        rounds: 3,
        tasks: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--fsync" {
            args.fsync = match it.next().as_deref() {
                Some("batched") => Fsync::default(),
                Some("periodic") => Fsync::periodic(),
                Some("never") => Fsync::Never,
                other => return Err(format!("--fsync batched|periodic|never, not {other:?}")),
            };
            continue;
        }
        let value: usize = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--ops" => args.ops = value.max(1),
            "--rows" => args.rows = value.max(1),
            "--rounds" => args.rounds = value.max(1),
            "--tasks" => args.tasks = value.max(1),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Through,
    Behind,
}

/// Acknowledged operations per second of `tasks` tasks doing `ops` writes.
async fn acked_per_second(writer: &Writer<String>, path: Path, ops: usize, tasks: usize) -> f64 {
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let writer = writer.clone();
        handles.push(tokio::spawn(async move {
            for i in (t..ops).step_by(tasks) {
                let key = format!("k{}", i % KEYS);
                let value = format!("value {i} {}", "x".repeat(80));
                let result = match path {
                    Path::Through => writer.set_through(&key, value).await,
                    Path::Behind => writer.set_behind(&key, value).await,
                };
                if let Err(e) = result {
                    panic!("write failed: {e}");
                }
            }
        }));
    }
    for h in handles {
        if let Err(e) = h.await {
            panic!("task failed: {e}");
        }
    }
    ops as f64 / started.elapsed().as_secs_f64()
}

async fn store(pg: &PostgresServer, table: &str) -> PgStore<String> {
    let store = match PgStore::connect(&pg.url(), table).await {
        Ok(s) => s,
        Err(e) => panic!("connect: {e}"),
    };
    if let Err(e) = store.create_table().await {
        panic!("create table: {e}");
    }
    store
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tiered-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("write-paths: {e}");
            std::process::exit(2);
        }
    };
    // Production durability: a commit is on disk when it returns.
    let pg = PostgresServer::start_durable();
    let redis = RedisServer::start_with(
        RedisConfig::persistent().fsync_every_second(args.fsync != Fsync::default()),
    );
    let cache = || -> Cache<String> {
        match Cache::builder("bench").build() {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    };
    let stream = |consumer: &str| {
        let l2 = match RedisL2::builder(redis.url()).build() {
            Ok(l2) => l2,
            Err(e) => panic!("{e}"),
        };
        StreamOptions::new(l2).consumer(consumer)
    };
    let through = Writer::builder(cache(), store(&pg, "through").await)
        .start()
        .await;
    let wal_dir = temp_dir("wal");
    let wal = Writer::builder(cache(), store(&pg, "behind_wal").await)
        .wal_options(WalOptions {
            fsync: args.fsync,
            ..WalOptions::new(&wal_dir)
        })
        .start()
        .await;
    let streamed = Writer::builder(cache(), store(&pg, "behind_stream").await)
        .redis_stream(stream("bench"))
        .start()
        .await;
    let (Ok(through), Ok(wal), Ok(streamed)) = (through, wal, streamed) else {
        panic!("cannot start the writers");
    };
    println!(
        "write-paths: {} ops over {KEYS} keys, {} tasks, {} rounds; PostgreSQL and redis-server private; log {:?}, redis appendfsync {}",
        args.ops,
        args.tasks,
        args.rounds,
        args.fsync,
        if args.fsync == Fsync::default() { "always" } else { "everysec" }
    );
    let (mut t, mut w, mut s) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let rt = acked_per_second(&through, Path::Through, args.ops, args.tasks).await;
        let rw = acked_per_second(&wal, Path::Behind, args.ops, args.tasks).await;
        let rs = acked_per_second(&streamed, Path::Behind, args.ops, args.tasks).await;
        // Drain between rounds so each round starts from an empty queue.
        if !(wal.flush(Duration::from_secs(300)).await
            && streamed.flush(Duration::from_secs(300)).await)
        {
            panic!("the queues did not drain");
        }
        println!(
            "round {round}: write-through {rt:>9.0}/s   write-behind log {rw:>9.0}/s ({:.1}x)   write-behind stream {rs:>9.0}/s ({:.1}x)",
            rw / rt,
            rs / rt
        );
        t.push(rt);
        w.push(rw);
        s.push(rs);
    }
    let (mt, mw, ms) = (median(t), median(w), median(s));
    println!(
        "median: write-through {mt:.0}/s, write-behind log {mw:.0}/s ({:.1}x), write-behind stream {ms:.0}/s ({:.1}x)",
        mw / mt,
        ms / mt
    );

    // The flusher: a backlog of distinct keys, left in a log by a writer
    // whose store has no table (unavailable: retried, never dead-lettered).
    let rows_dir = temp_dir("rows");
    let rows_store = store(&pg, "flusher_rows").await;
    {
        let Ok(missing) = PgStore::<String>::connect(&pg.url(), "no_such_table").await else {
            panic!("connect");
        };
        let Ok(filler) = Writer::builder(cache(), missing)
            .wal(&rows_dir)
            .max_queued(args.rows as u64 + 1)
            .start()
            .await
        else {
            panic!("cannot start the backlog writer");
        };
        let mut handles = Vec::new();
        for t in 0..args.tasks {
            let (writer, rows, tasks) = (filler.clone(), args.rows, args.tasks);
            handles.push(tokio::spawn(async move {
                for i in (t..rows).step_by(tasks) {
                    if let Err(e) = writer
                        .set_behind(&format!("row{i}"), format!("value {i}"))
                        .await
                    {
                        panic!("{e}");
                    }
                }
            }));
        }
        for h in handles {
            if h.await.is_err() {
                panic!("task failed");
            }
        }
        filler.shutdown(Duration::ZERO).await;
    }
    let started = Instant::now();
    let Ok(drainer) = Writer::builder(cache(), rows_store)
        .wal(&rows_dir)
        .batch_size(1_000)
        .start()
        .await
    else {
        panic!("cannot start the draining writer");
    };
    if !drainer.flush(Duration::from_secs(600)).await {
        panic!("the backlog did not drain");
    }
    let took = started.elapsed();
    let stats = drainer.stats();
    println!(
        "flusher: {} rows replayed and written in {:.2?} = {:.0} rows/s (batches of up to 1000; store call p50 {:.1?}, p99 {:.1?})",
        stats.flushed,
        took,
        stats.flushed as f64 / took.as_secs_f64(),
        stats.flush_p50,
        stats.flush_p99
    );
    let _ = std::fs::remove_dir_all(&wal_dir);
    let _ = std::fs::remove_dir_all(&rows_dir);
}
