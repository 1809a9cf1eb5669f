#![allow(clippy::unwrap_used)]
//! Write-behind loses nothing across crashes: a child process performs 100,000
//! write-behind operations (sets and removals) over 1,000 keys through the
//! local write-ahead log and is SIGKILLed at a random point three times,
//! restarting each time; the last restart finishes the operations and drains.
//! PostgreSQL must hold, for every key, the last acknowledged write —
//! nothing lost, nothing older — checked after each restart has replayed and
//! drained the log (before the child goes on), and at the end. The second
//! scenario does the same with PostgreSQL stopped for a while during the run;
//! the third with the log on `Fsync::Periodic` (acknowledged before its
//! `fdatasync`, which a killed process must not be able to tell).
//!
//! A custom harness (`harness = false`): `main` is the parent unless
//! `TIERED_CRASH_CHILD` is set. The child prints `I <op>` before it issues an
//! operation and `A <op>` once it is acknowledged, unbuffered, so the parent
//! knows every acknowledged operation, and the few in flight at each kill
//! (which may or may not have become durable: both outcomes are allowed).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tiered::write::{Fsync, WalOptions, Writer};
use tiered::Cache;
use tiered_postgres::{PgStore, Stored};
use tiered_testkit::postgres::PostgresServer;

const OPS: u64 = 100_000;
const KEYS: u64 = 1_000;
/// Workers in the child; keys are split between them, so one key's
/// operations are issued one after another.
const WORKERS: u64 = 40;

fn key(op: u64) -> String {
    format!("k{}", op % KEYS)
}

/// Every tenth operation on a key removes it (so every key sees sets after
/// removes and removes after sets).
fn is_remove(op: u64) -> bool {
    (op / KEYS) % 10 == 9
}

async fn child() {
    let url = std::env::var("TIERED_CRASH_URL").unwrap();
    let dir = std::env::var("TIERED_CRASH_WAL").unwrap();
    let start: u64 = std::env::var("TIERED_CRASH_START")
        .unwrap()
        .parse()
        .unwrap();
    let fsync = match std::env::var("TIERED_CRASH_FSYNC").as_deref() {
        Ok("periodic") => Fsync::periodic(),
        _ => Fsync::default(),
    };
    let store: PgStore<String> = PgStore::connect(&url, "items").await.unwrap();
    let cache: Cache<String> = Cache::builder("crash").build().unwrap();
    let writer = Writer::builder(cache, store)
        .wal_options(WalOptions {
            fsync,
            ..WalOptions::new(&dir)
        })
        // Let a backlog build up, so a kill finds acknowledged records that
        // are not in the database yet.
        .flush_interval(Duration::from_millis(100))
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .max_queued(OPS)
        .start()
        .await
        .unwrap();
    // Replay what the crash left, then let the parent check the database.
    assert!(
        writer.flush(Duration::from_secs(120)).await,
        "replay did not drain"
    );
    println!("R {}", writer.stats().recovered);
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let say = move |line: String| {
        let mut out = out.lock().unwrap();
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    };
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (writer, say) = (writer.clone(), say.clone());
        workers.push(tokio::spawn(async move {
            let first = start + (w + WORKERS - start % WORKERS) % WORKERS;
            for op in (first..OPS).step_by(WORKERS as usize) {
                say(format!("I {op}"));
                if is_remove(op) {
                    writer.remove_behind(&key(op)).await.unwrap();
                } else {
                    writer.set_behind(&key(op), op.to_string()).await.unwrap();
                }
                say(format!("A {op}"));
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let report = writer.shutdown(Duration::from_secs(120)).await;
    say(format!("D {}", report.drained));
}

/// What the parent knows of one key.
#[derive(Default, Clone)]
struct Known {
    /// The last acknowledged operation.
    acked: Option<u64>,
    /// Operations issued after it and never acknowledged (killed in flight).
    in_flight: Vec<u64>,
}

struct Run {
    issued_max: Option<u64>,
    recovered: u64,
    drained: bool,
}

/// What every child of one scenario is started with.
struct Child<'a> {
    url: &'a str,
    wal: &'a str,
    fsync: &'a str,
}

/// Runs the child from `start`: `check`s the database once it has replayed
/// the log, then kills it after `kill_after` acknowledgements (or lets it
/// finish), calling `during` once after `kill_after / 2` of them.
fn run(
    child_env: &Child,
    start: u64,
    kill_after: Option<u64>,
    known: &mut HashMap<u64, Known>,
    check: &dyn Fn(&HashMap<u64, Known>),
    mut during: impl FnMut(),
) -> Run {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("TIERED_CRASH_CHILD", "1")
        .env("TIERED_CRASH_URL", child_env.url)
        .env("TIERED_CRASH_WAL", child_env.wal)
        .env("TIERED_CRASH_FSYNC", child_env.fsync)
        .env("TIERED_CRASH_START", start.to_string())
        .stdout(Stdio::piped())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut acks, mut issued_max, mut recovered, mut drained) = (0u64, None, 0, false);
    let (mut called, mut killed) = (false, false);
    // After the kill, read on to the end of the pipe: what the child wrote
    // before it died counts too.
    for line in stdout.lines() {
        let line = line.unwrap();
        let (tag, n) = line.split_once(' ').unwrap();
        match tag {
            "R" => {
                recovered = n.parse().unwrap();
                check(known);
                writeln!(stdin, "GO").unwrap();
            }
            "D" => drained = n == "true",
            "I" => {
                let op: u64 = n.parse().unwrap();
                known.entry(op % KEYS).or_default().in_flight.push(op);
                issued_max = issued_max.max(Some(op));
            }
            "A" => {
                let op: u64 = n.parse().unwrap();
                let k = known.entry(op % KEYS).or_default();
                k.acked = Some(op);
                k.in_flight.retain(|&o| o > op);
                acks += 1;
                if let (Some(limit), false) = (kill_after, killed) {
                    if !called && acks >= limit / 2 {
                        called = true;
                        during();
                    }
                    if acks >= limit {
                        child.kill().unwrap();
                        killed = true;
                    }
                }
            }
            _ => panic!("unexpected line from the child: {line}"),
        }
    }
    let status = child.wait().unwrap();
    if kill_after.is_none() {
        assert!(status.success(), "the last run failed: {status}");
    }
    Run {
        issued_max,
        recovered,
        drained,
    }
}

/// Every key holds its last acknowledged write, or a write in flight when the
/// child was killed.
async fn verify(store: &PgStore<String>, known: &HashMap<u64, Known>) {
    for k in 0..KEYS {
        let stored = store.stored(&format!("k{k}")).await.unwrap();
        let known = known.get(&k).cloned().unwrap_or_default();
        let mut allowed: Vec<u64> = known.acked.into_iter().collect();
        allowed.extend(known.in_flight.iter().copied());
        let matches = |op: u64| match &stored {
            Some(Stored { value: None, .. }) => is_remove(op),
            Some(Stored { value: Some(v), .. }) => !is_remove(op) && *v == op.to_string(),
            None => false,
        };
        // Never acknowledged: absent, or an in-flight write.
        let ok =
            (known.acked.is_none() && stored.is_none()) || allowed.iter().any(|&op| matches(op));
        assert!(
            ok,
            "key k{k}: the database holds {stored:?}, but the last acknowledged operation was {:?} (in flight: {:?})",
            known.acked, known.in_flight
        );
    }
}

fn scenario(name: &str, outage: bool, fsync: &str) {
    let started = Instant::now();
    let mut pg = PostgresServer::start();
    let url = pg.url();
    let wal = std::env::temp_dir().join(format!("tiered-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&wal);
    let child_env = Child {
        url: &url,
        wal: wal.to_str().unwrap(),
        fsync,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store: PgStore<String> = runtime.block_on(async {
        let store = PgStore::connect(&url, "items").await.unwrap();
        store.create_table().await.unwrap();
        store
    });
    let checks = std::cell::Cell::new(0);
    let check = |known: &HashMap<u64, Known>| {
        runtime.block_on(verify(&store, known));
        checks.set(checks.get() + 1);
    };
    let mut known: HashMap<u64, Known> = HashMap::new();
    let (mut start, mut recovered) = (0u64, Vec::new());
    // Three kills at random points spread over the run, then a last run.
    for kill in 0..3u64 {
        let left = OPS - start;
        let kill_after = left / (4 - kill) / 2 + fastrand::u64(..left / (4 - kill));
        let stopped = std::cell::Cell::new(false);
        let r = run(
            &child_env,
            start,
            Some(kill_after.max(1)),
            &mut known,
            &check,
            || {
                if outage && kill == 1 {
                    pg.stop();
                    stopped.set(true);
                }
            },
        );
        if stopped.get() {
            // Down across the kill and the restart: the queue grows and is
            // replayed later.
            std::thread::sleep(Duration::from_secs(1));
            pg.start_again();
        }
        recovered.push(r.recovered);
        start = r.issued_max.map_or(start, |m| m + 1);
    }
    let last = run(&child_env, start, None, &mut known, &check, || {});
    recovered.push(last.recovered);
    assert!(last.drained, "the last run did not drain");
    assert!(
        recovered.iter().skip(1).any(|&n| n > 0),
        "no restart replayed anything ({recovered:?}): the test did not exercise recovery"
    );

    check(&known);
    let _ = std::fs::remove_dir_all(&wal);
    println!(
        "test {name} ... ok ({} checks of {KEYS} keys, replayed at restarts: {recovered:?}, {:.1?})",
        checks.get(),
        started.elapsed()
    );
}

fn main() {
    if std::env::var_os("TIERED_CRASH_CHILD").is_some() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(child());
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let mut ran = 0;
    for (name, outage, fsync) in [
        ("sigkill_three_times_loses_nothing", false, "batched"),
        (
            "sigkill_with_the_database_stopped_loses_nothing",
            true,
            "batched",
        ),
        (
            "sigkill_with_periodic_fsync_loses_nothing",
            false,
            "periodic",
        ),
    ] {
        if wanted(name) {
            scenario(name, outage, fsync);
            ran += 1;
        }
    }
    println!("\ntest result: ok. {ran} passed; 0 failed");
}
