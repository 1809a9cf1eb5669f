//! The bounded-staleness promise under faults (see `tiered::backplane`): a
//! subscriber that falls behind a trimmed stream, a paused Redis, an
//! invalidation racing a slow load on another instance. After each: no
//! instance serves the old value past the window, and no invalidation issued
//! during the fault is forgotten.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{held_load, hold, s, secs, until_within as until, val};
use tiered::backplane::{Backplane, StreamId, StreamState};
use tiered::l2::L2Future;
use tiered::{Cache, CacheBuilder, ManualClock, RedisL2};
use tiered_testkit::redis::{RedisConfig, RedisServer};
use tiered_testkit::Loader;

/// The staleness window after a fault ends (the module docs promise < 1 s).
const WINDOW: Duration = Duration::from_secs(1);

/// The L2 breaker's cooldown. It runs on the injected clock, so a breaker that
/// opened during a fault (say, a ping on a connection that has not reconnected
/// yet) half-opens only when a test advances the clock: tests that wait for L2
/// to catch up after a fault advance it by this much on every poll, as real
/// time would.
const COOLDOWN: Duration = Duration::from_millis(100);

/// A backplane that can stop delivering: `read` waits while held (the
/// subscriber falls behind), everything else goes to Redis.
struct Faulty {
    redis: RedisL2,
    held: Arc<AtomicBool>,
    /// Set while a read waits at the gate (no `XREAD` in flight).
    parked: Arc<AtomicBool>,
}

impl Backplane for Faulty {
    fn publish<'a>(&'a self, stream: &'a str, message: Vec<u8>) -> L2Future<'a, StreamId> {
        self.redis.publish(stream, message)
    }
    fn state<'a>(&'a self, stream: &'a str) -> L2Future<'a, StreamState> {
        self.redis.state(stream)
    }
    fn read<'a>(
        &'a self,
        stream: &'a str,
        after: StreamId,
        wait: Duration,
    ) -> L2Future<'a, Vec<(StreamId, Vec<u8>)>> {
        Box::pin(async move {
            while self.held.load(Ordering::SeqCst) {
                self.parked.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.parked.store(false, Ordering::SeqCst);
            self.redis.read(stream, after, wait).await
        })
    }
    fn remember<'a>(&'a self, key: &'a str, field: &'a str, at: u64) -> L2Future<'a, ()> {
        self.redis.remember(key, field, at)
    }
    fn recall<'a>(&'a self, key: &'a str) -> L2Future<'a, Vec<(String, u64)>> {
        self.redis.recall(key)
    }
    fn mark_depended<'a>(&'a self, set: &'a str, keys: &'a [String]) -> L2Future<'a, ()> {
        self.redis.mark_depended(set, keys)
    }
    fn depended<'a>(&'a self, set: &'a str, keys: &'a [String]) -> L2Future<'a, Vec<bool>> {
        self.redis.depended(set, keys)
    }
    fn schedule<'a>(&'a self, key: &'a str, member: &'a str, at_ms: u64) -> L2Future<'a, ()> {
        self.redis.schedule(key, member, at_ms)
    }
    fn due<'a>(&'a self, key: &'a str, now_ms: u64, limit: usize) -> L2Future<'a, Vec<String>> {
        self.redis.due(key, now_ms, limit)
    }
    fn claim<'a>(&'a self, key: &'a str, member: &'a str) -> L2Future<'a, bool> {
        self.redis.claim(key, member)
    }
}

fn on(redis: &RedisServer, clock: &ManualClock) -> CacheBuilder<String> {
    Cache::<String>::builder("faults")
        .clock(clock.clone())
        .redis(redis.url())
        .l2_timeout(Duration::from_millis(300))
        .l2_breaker(2, COOLDOWN)
        .ttl(secs(600))
}

/// Makes sure `b`'s subscriber is running and has applied one of `a`'s
/// messages (so it has a real position in the stream).
async fn synced(a: &Cache<String>, b: &Cache<String>) {
    hold(b, "warm", "x").await;
    a.remove("warm").await.unwrap();
    until("b synced", secs(10), || async {
        b.stats().backplane.unwrap().received >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_behind_a_trimmed_stream_detects_the_gap() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let held = Arc::new(AtomicBool::new(false));
    let parked = Arc::new(AtomicBool::new(false));
    let a = on(&redis, &clock).build().unwrap();
    let b = on(&redis, &clock)
        .backplane_transport(Faulty {
            redis: RedisL2::builder(redis.url()).build().unwrap(),
            held: Arc::clone(&held),
            parked: Arc::clone(&parked),
        })
        .build()
        .unwrap();
    // b is synced and has read one message.
    hold(&b, "warm", "x").await;
    a.remove("warm").await.unwrap();
    until("b applied a message", secs(10), || async {
        b.stats().backplane.unwrap().received >= 1
    })
    .await;
    hold(&b, "k", "old").await;
    // b stops reading; a removes k; the stream is trimmed past b's position
    // (as MAXLEN does when a subscriber lags too far).
    held.store(true, Ordering::SeqCst);
    until("b's subscriber is parked", secs(10), || async {
        parked.load(Ordering::SeqCst)
    })
    .await;
    a.remove("k").await.unwrap();
    a.remove("more").await.unwrap();
    until("a published", secs(10), || async {
        a.stats().backplane.unwrap().published >= 3
    })
    .await;
    redis.cli(&["XTRIM", "tiered:faults#bp", "MAXLEN", "1"]);
    held.store(false, Ordering::SeqCst);
    let resumed = Instant::now();
    until("b drops k", WINDOW, || async { !b.contains("k").unwrap() }).await;
    assert!(b.stats().backplane.unwrap().gaps >= 1);
    assert_eq!(val(b.get("k").await), None);
    assert!(resumed.elapsed() < WINDOW);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_issued_while_redis_is_down_is_not_forgotten() {
    // Append-only file: Redis comes back with the old values, so only the
    // replay of what was issued during the outage can remove them.
    let mut redis = RedisServer::start_with(RedisConfig::persistent());
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    a.set("k", s("old")).await.unwrap();
    let opts = a.options().tag("t");
    a.set_with("tagged", s("old"), &opts).await.unwrap();
    assert!(a.sync_backplane(secs(5)).await);

    redis.kill();
    // Issued during the outage: applied locally at once, kept for the others.
    a.remove("k").await.unwrap();
    clock.advance(secs(1));
    a.invalidate_tag("t").unwrap();
    assert!(!a.contains("k").unwrap());
    assert!(
        !a.sync_backplane(Duration::from_millis(100)).await,
        "the messages wait while Redis is down"
    );
    redis.restart();
    let back = Instant::now();
    // Everything kept is delivered: removals replayed in L2, messages published.
    until("a's outbox drains", secs(5), || async {
        a.sync_backplane(secs(0)).await
    })
    .await;
    until("the removal reached L2", secs(5), || async {
        clock.advance(COOLDOWN);
        redis.cli(&["EXISTS", "tiered:faults:k"]).trim() == "0"
    })
    .await;
    assert!(
        back.elapsed() < WINDOW,
        "{:?} after Redis returned",
        back.elapsed()
    );
    // b (which lived through the outage) and c (started after it) agree,
    // once b is back: until its subscriber has seen the gap and reloaded the
    // tag records, b may still judge an L2 entry by what it knew before.
    until("b recovered from the outage", secs(5), || async {
        let bp = b.stats().backplane.unwrap();
        bp.gaps >= 1 && bp.ready
    })
    .await;
    let c = on(&redis, &clock).build().unwrap();
    for cache in [&b, &c] {
        until("no old k", secs(5), || async {
            val(cache.get("k").await).is_none()
        })
        .await;
        let reload = Loader::returning(s("reloaded"));
        until(
            "the tag invalidation was not forgotten",
            secs(5),
            || async {
                let got = cache.get_or_load_with("tagged", &opts, reload.load()).await;
                val(got) == Some(s("reloaded"))
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_load_on_another_instance_does_not_outlive_an_invalidation() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    synced(&a, &b).await;
    // b's loader reads the database before a's update...
    let loader = Loader::returning(s("read before the update"));
    let call = held_load(&b, &loader, "k", b.options()).await;
    // ...a updates the key...
    a.set("k", s("new")).await.unwrap();
    until("b heard of it", secs(10), || async {
        b.stats().backplane.unwrap().received >= 2
    })
    .await;
    // ...then b's slow load finishes. Its caller gets what it read, but no
    // tier keeps it.
    loader.release();
    call.await.unwrap().unwrap();
    assert_eq!(val(b.get("k").await), Some(s("new")));
    let c = on(&redis, &clock).l2_timeout(secs(5)).build().unwrap();
    assert_eq!(val(c.get("k").await), Some(s("new")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_issued_while_redis_is_paused_reaches_everyone_after_resume() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    synced(&a, &b).await;
    hold(&b, "k", "old").await;
    redis.pause();
    // Frozen Redis: the call returns (after the L2 timeout), the removal is
    // applied here and kept for L2 and the others.
    a.remove("k").await.unwrap();
    assert!(!a.contains("k").unwrap());
    assert!(b.contains("k").unwrap(), "b cannot know yet");
    redis.resume();
    let resumed = Instant::now();
    until("b drops k", WINDOW, || async { !b.contains("k").unwrap() }).await;
    assert!(resumed.elapsed() < WINDOW);
    let c = on(&redis, &clock).build().unwrap();
    until("L2 agrees", secs(5), || async {
        clock.advance(COOLDOWN);
        val(c.get("k").await).is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_time_decades_ahead_does_not_outdate_l2_for_good() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let a = on(&redis, &clock).build().unwrap();
    // A broken peer, or a corrupted record, says the cache was cleared at
    // the end of time.
    redis.cli(&["HSET", "tiered:faults#tags", "clear", &u64::MAX.to_string()]);
    let b = on(&redis, &clock).build().unwrap();
    until("b ready", secs(10), || async {
        b.stats().backplane.unwrap().ready
    })
    .await;
    // Taken at most a minute ahead: it outdates what exists, then no more.
    clock.advance(Duration::from_secs(120));
    a.set("later", s("written after")).await.unwrap();
    assert_eq!(
        val(b.get("later").await),
        Some(s("written after")),
        "b refuses every L2 entry"
    );
}
