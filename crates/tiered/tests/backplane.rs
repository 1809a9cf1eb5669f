//! The backplane: every form of invalidation reaches every other instance's L1,
//! own messages are skipped, late starters honour earlier invalidations, and a
//! Redis restart (lost stream) is detected as a gap.
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::time::Duration;

use common::{hold, s, secs, val};
use tiered::{Cache, CacheBuilder, ManualClock};
use tiered_testkit::redis::{RedisConfig, RedisServer};
use tiered_testkit::Loader;

fn on(redis: &RedisServer, clock: &ManualClock) -> CacheBuilder<String> {
    Cache::<String>::builder("bp")
        .clock(clock.clone())
        .redis(redis.url())
        .l2_timeout(secs(5))
        .ttl(secs(600))
}

/// Polls `check` until it holds (10 s of wall time at most).
async fn until<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    common::until_within(what, Duration::from_secs(10), check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_reaches_other_instances() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    hold(&b, "k", "old").await;
    a.remove("k").await.unwrap();
    until("b drops its copy", || async { !b.contains("k").unwrap() }).await;
    assert_eq!(val(b.get("k").await), None);
    // a skips its own message: once it has heard b's, it has heard one.
    b.remove("other").await.unwrap();
    until("a hears b", || async {
        a.stats().backplane.unwrap().received >= 1
    })
    .await;
    assert_eq!(a.stats().backplane.unwrap().received, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_replaces_other_instances_copies() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    a.set("k", s("v1")).await.unwrap();
    assert_eq!(val(b.get("k").await), Some(s("v1")));
    a.set("k", s("v2")).await.unwrap();
    until("b sees v2", || async {
        val(b.get("k").await) == Some(s("v2"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_reaches_other_instances_and_their_l2_reads() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    let opts = b.options().tag("team:7");
    let loader = Loader::returning(s("tagged"));
    b.get_or_load_with("k", &opts, loader.load()).await.unwrap();
    clock.advance(secs(1));
    a.invalidate_tag("team:7").unwrap();
    until("b drops its tagged copy", || async {
        !b.contains("k").unwrap()
    })
    .await;
    // The L2 copy predates the invalidation: b does not read it back.
    let reload = Loader::returning(s("reloaded"));
    assert_eq!(
        val(b.get_or_load_with("k", &opts, reload.load()).await),
        Some(s("reloaded"))
    );
    assert_eq!(reload.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_reaches_other_instances() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    for k in ["x", "y"] {
        hold(&b, k, "old").await;
    }
    clock.advance(secs(1));
    a.clear();
    until("b is cleared", || async { b.stats().l1.entries == 0 }).await;
    assert_eq!(
        val(b.get("x").await),
        None,
        "the L2 copy predates the clear"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_later_honours_earlier_invalidations() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let a = on(&redis, &clock).build().unwrap();
    let opts = a.options().tag("t");
    a.set_with("k", s("tagged"), &opts).await.unwrap();
    clock.advance(secs(1));
    a.invalidate_tag("t").unwrap();
    // Let the publisher record the tag time in Redis (the set's message is
    // published first, the tag's second).
    until("published", || async {
        a.stats().backplane.unwrap().published >= 2
    })
    .await;
    let late = on(&redis, &clock).build().unwrap();
    // No waiting: the first read waits for the records itself.
    let loader = Loader::returning(s("reloaded"));
    assert_eq!(
        val(late.get_or_load_with("k", &opts, loader.load()).await),
        Some(s("reloaded"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_a_gap_and_empties_l1() {
    let mut redis = RedisServer::start_with(RedisConfig::default());
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    // b has read at least one message, so it knows where it stands.
    hold(&b, "other", "x").await;
    a.remove("other").await.unwrap();
    until("b applied a message", || async {
        b.stats().backplane.unwrap().received >= 1
    })
    .await;
    hold(&b, "k", "old").await;
    // Redis loses everything, including the stream.
    redis.kill();
    redis.restart();
    until("b detects the gap", || async {
        b.stats().backplane.unwrap().gaps >= 1
    })
    .await;
    assert!(
        !b.contains("k").unwrap(),
        "L1 emptied: it may have missed invalidations"
    );
    // One outage, one gap or two — not a loop re-detecting a missing stream.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gaps = b.stats().backplane.unwrap().gaps;
    assert!(gaps <= 3, "{gaps} gaps for one restart");
    hold(&b, "k", "new").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.contains("k").unwrap(), "L1 works again after the gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_removed_at_once_reach_other_instances() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    for k in ["1", "2", "3"] {
        hold(&b, k, "old").await;
    }
    a.remove_many(&["1", "2", "2"]).await.unwrap();
    until("b drops 1 and 2", || async {
        !b.contains("1").unwrap() && !b.contains("2").unwrap()
    })
    .await;
    assert!(b.contains("3").unwrap());
    assert_eq!(val(b.get("1").await), None);
    assert!(a.remove_many(&[""]).await.unwrap_err().is_invalid_input());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_invalidation_reloads_but_keeps_the_fail_safe_value() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let make = || on(&redis, &clock).grace(secs(3600)).build().unwrap();
    let (a, b) = (make(), make());
    a.set("k", s("v1")).await.unwrap();
    assert_eq!(val(b.get("k").await), Some(s("v1")));
    assert!(a.expire("k").await.unwrap());
    until("b's fresh copy is gone", || async {
        !b.contains("k").unwrap()
    })
    .await;
    // The source is down: the old value is still served, everywhere.
    let down: Loader<String> = Loader::new(tiered_testkit::Step::Fail("down".into()));
    assert_eq!(val(b.get_or_load("k", down.load()).await), Some(s("v1")));
    assert_eq!(val(a.get_or_load("k", down.load()).await), Some(s("v1")));
    assert_eq!(down.calls(), 2, "each read tried to revalidate");
    // The source is back: the next read (after the back-off) revalidates.
    clock.advance(secs(60));
    let up = Loader::returning(s("v2"));
    assert_eq!(val(a.get_or_load("k", up.load()).await), Some(s("v2")));
    assert!(!a.expire("missing").await.unwrap());
}

#[tokio::test]
async fn soft_invalidation_without_l2() {
    let clock = ManualClock::new();
    let cache = Cache::<String>::builder("local")
        .clock(clock.clone())
        .ttl(secs(60))
        .grace(secs(600))
        .build()
        .unwrap();
    cache.set("k", s("v1")).await.unwrap();
    assert!(cache.expire("k").await.unwrap());
    assert!(!cache.contains("k").unwrap(), "no longer fresh");
    let down: Loader<String> = Loader::new(tiered_testkit::Step::Fail("down".into()));
    assert_eq!(
        val(cache.get_or_load("k", down.load()).await),
        Some(s("v1"))
    );
    assert_eq!(down.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_invalidation_scans_l2_and_reaches_other_instances() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    let keys = ["user:1:a", "user:1:b", "user:2:a", "user:10:a"];
    for k in keys {
        a.set(k, s("v")).await.unwrap();
    }
    // Once b has heard of the sets (a message arriving while b reads a key
    // keeps that read out of b's L1, conservatively), b reads them into L1.
    until("b heard the sets", || async {
        b.stats().backplane.unwrap().received >= 4
    })
    .await;
    for k in keys {
        assert_eq!(val(b.get(k).await), Some(s("v")));
        assert!(b.contains(k).unwrap());
    }
    let removed = a.invalidate_pattern("user:1:*").await.unwrap();
    assert_eq!(removed, 2);
    until("b drops user:1:*", || async {
        !b.contains("user:1:a").unwrap() && !b.contains("user:1:b").unwrap()
    })
    .await;
    assert!(
        b.contains("user:2:a").unwrap() && b.contains("user:10:a").unwrap(),
        "{:?}",
        b.stats()
    );
    assert_eq!(val(b.get("user:1:a").await), None);
    assert_eq!(redis.cli(&["EXISTS", "tiered:bp:user:2:a"]).trim(), "1");
    assert!(a
        .invalidate_pattern("")
        .await
        .unwrap_err()
        .is_invalid_input());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_rules_invalidate_filled_in_keys_and_patterns_everywhere() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    a.on_event("post.created", &["user:{author_id}:posts", "feed:*"])
        .unwrap();
    let keys = ["user:42:posts", "user:7:posts", "feed:eu", "feed:us"];
    for k in keys {
        hold(&b, k, "old").await;
    }
    // A rule that needs a missing field: refused, nothing removed.
    assert!(a
        .emit("post.created", &[])
        .await
        .unwrap_err()
        .is_invalid_input());
    assert_eq!(a.emit("unknown.event", &[("x", "1")]).await.unwrap(), 0);
    let n = a
        .emit("post.created", &[("author_id", "42")])
        .await
        .unwrap();
    assert_eq!(n, 2);
    until("b drops the event's keys", || async {
        ["user:42:posts", "feed:eu", "feed:us"]
            .iter()
            .all(|k| !b.contains(k).unwrap())
    })
    .await;
    assert!(b.contains("user:7:posts").unwrap());
    assert!(a
        .on_event("bad", &["user:{id"])
        .unwrap_err()
        .is_invalid_input());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_invalidations_happen_once_due_on_every_instance() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    hold(&b, "promo", "50% off").await;
    let opts = b.options().tag("campaign");
    let loader = Loader::returning(s("banner"));
    b.get_or_load_with("banner", &opts, loader.load())
        .await
        .unwrap();
    let at = tiered::Clock::now(&clock).saturating_add(secs(10));
    a.remove_at("promo", at).await.unwrap();
    a.invalidate_tag_at("campaign", at).await.unwrap();
    // Not yet due.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(b.contains("promo").unwrap() && b.contains("banner").unwrap());
    clock.advance(secs(11));
    until("the scheduled invalidations ran", || async {
        !b.contains("promo").unwrap() && !b.contains("banner").unwrap()
    })
    .await;
    assert_eq!(val(b.get("promo").await), None);
    // Done: nothing left in the schedule.
    assert_eq!(redis.cli(&["ZCARD", "tiered:bp#sched"]).trim(), "0");
    let no_l2 = Cache::<String>::builder("x").build().unwrap();
    assert!(no_l2.remove_at("k", at).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_are_invalidated_on_every_instance_and_in_l2() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    // b builds a page from org:1 (and a report from the page: a chain).
    let loader = Loader::returning(s("org one"));
    b.get_or_load("org:1", loader.load()).await.unwrap();
    let page = b.options().depends_on("org:1");
    let loader = Loader::returning(s("page built from org 1"));
    b.get_or_load_with("page", &page, loader.load())
        .await
        .unwrap();
    let report = b.options().depends_on("page");
    let loader = Loader::returning(s("report built from the page"));
    b.get_or_load_with("report", &report, loader.load())
        .await
        .unwrap();
    clock.advance(secs(1));
    // a never declared any dependency; it changes org:1.
    a.set("org:1", s("org one, renamed")).await.unwrap();
    until("b drops the page and the report", || async {
        !b.contains("page").unwrap() && !b.contains("report").unwrap()
    })
    .await;
    // An instance that never loaded them does not take the old copies from L2.
    let c = on(&redis, &clock).build().unwrap();
    for (key, opts) in [("page", &page), ("report", &report)] {
        let reload = Loader::returning(s("rebuilt"));
        let got = c.get_or_load_with(key, opts, reload.load()).await;
        assert_eq!(val(got), Some(s("rebuilt")), "{key}");
    }
}
