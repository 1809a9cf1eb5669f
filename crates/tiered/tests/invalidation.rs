//! Invalidation within one process: tags, dependencies (with cascades), clear,
//! and — the classic bug — invalidation while a load is running.

#![allow(clippy::unwrap_used)] // in tests an unwrap is an assertion

mod common;

use common::*;
use tiered::ManualClock;
use tiered_testkit::Loader;

#[tokio::test]
async fn invalidating_a_tag_drops_every_entry_carrying_it() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let team7 = cache.options().tag("team:7");
    let both = cache.options().tags(["team:7", "admins"]);
    cache.set_with("alice", s("a"), &team7).await.unwrap();
    cache.set_with("bob", s("b"), &both).await.unwrap();
    cache
        .set_with("carol", s("c"), &cache.options().tag("team:8"))
        .await
        .unwrap();
    cache.set("dave", s("d")).await.unwrap();

    cache.invalidate_tag("team:7").unwrap();
    assert!(!cache.contains("alice").unwrap());
    assert!(!cache.contains("bob").unwrap());
    assert!(cache.contains("carol").unwrap());
    assert!(cache.contains("dave").unwrap());

    // Entries stored after the invalidation with the same tag are valid.
    cache.set_with("alice", s("a2"), &team7).await.unwrap();
    assert_eq!(val(cache.get("alice").await), Some(s("a2")));
    // Invalidating an unknown tag is harmless.
    cache.invalidate_tag("nobody").unwrap();
    assert!(cache.contains("alice").unwrap());
}

#[tokio::test]
async fn a_tagged_entry_loaded_through_get_or_load_is_invalidated_too() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("v"));
    let opts = cache.options().tag("t");
    cache
        .get_or_load_with("k", &opts, loader.load())
        .await
        .unwrap();
    cache.invalidate_tag("t").unwrap();
    cache
        .get_or_load_with("k", &opts, loader.load())
        .await
        .unwrap();
    assert_eq!(loader.calls(), 2);
}

#[tokio::test]
async fn removing_a_key_invalidates_its_dependants_transitively() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    cache.set("user:1", s("Ada")).await.unwrap();
    cache
        .set_with(
            "profile:1",
            s("profile of Ada"),
            &cache.options().depends_on("user:1"),
        )
        .await
        .unwrap();
    cache
        .set_with(
            "page:1",
            s("page with profile"),
            &cache.options().depends_on("profile:1"),
        )
        .await
        .unwrap();
    cache.set("unrelated", s("x")).await.unwrap();

    cache.remove("user:1").await.unwrap();
    assert!(!cache.contains("profile:1").unwrap(), "direct dependant");
    assert!(
        !cache.contains("page:1").unwrap(),
        "dependant of a dependant"
    );
    assert!(cache.contains("unrelated").unwrap());
}

#[tokio::test]
async fn setting_a_key_invalidates_its_dependants() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    cache.set("price:9", s("10")).await.unwrap();
    cache
        .set_with(
            "cart:1",
            s("total 10"),
            &cache.options().depends_on("price:9"),
        )
        .await
        .unwrap();
    cache.set("price:9", s("12")).await.unwrap();
    assert!(!cache.contains("cart:1").unwrap());
    assert!(cache.contains("price:9").unwrap());
}

#[tokio::test]
async fn remove_during_a_load_is_not_undone_by_the_load() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("read before the delete"));
    let call = held_load(&cache, &loader, "k", cache.options()).await;
    cache.remove("k").await.unwrap(); // the row was deleted while the loader read it
    loader.release();
    // The caller that asked before the removal gets what was loaded...
    assert_eq!(val(call.await.unwrap()), Some(s("read before the delete")));
    // ...but it is not stored.
    assert!(!cache.contains("k").unwrap());
    assert_eq!(cache.stats().fenced, 1);
}

#[tokio::test]
async fn set_during_a_load_wins_over_the_load() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("old"));
    let call = held_load(&cache, &loader, "k", cache.options()).await;
    cache.set("k", s("new")).await.unwrap();
    loader.release();
    call.await.unwrap().unwrap();
    assert_eq!(val(cache.get("k").await), Some(s("new")));
}

#[tokio::test]
async fn tag_invalidation_during_a_load_fences_it() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("v"));
    loader.hold();
    let opts = cache.options().tag("t");
    let call = {
        let (cache, loader, opts) = (cache.clone(), loader.clone(), opts.clone());
        tokio::spawn(async move { cache.get_or_load_with("k", &opts, loader.load()).await })
    };
    loader.wait_for_calls(1).await;
    cache.invalidate_tag("t").unwrap();
    loader.release();
    call.await.unwrap().unwrap();
    assert!(!cache.contains("k").unwrap());
    cache
        .get_or_load_with("k", &opts, loader.load())
        .await
        .unwrap();
    assert_eq!(loader.calls(), 2);
    assert!(
        cache.contains("k").unwrap(),
        "a load started after the invalidation stores"
    );
}

#[tokio::test]
async fn removing_a_dependency_during_a_load_fences_the_dependant() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    cache.set("user:1", s("Ada")).await.unwrap();
    let loader = Loader::returning(s("profile built from Ada"));
    loader.hold();
    let opts = cache.options().depends_on("user:1");
    let call = {
        let (cache, loader) = (cache.clone(), loader.clone());
        tokio::spawn(async move {
            cache
                .get_or_load_with("profile:1", &opts, loader.load())
                .await
        })
    };
    loader.wait_for_calls(1).await;
    cache.remove("user:1").await.unwrap();
    loader.release();
    call.await.unwrap().unwrap();
    assert!(!cache.contains("profile:1").unwrap());
}

#[tokio::test]
async fn clear_during_a_load_fences_it() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("v"));
    let call = held_load(&cache, &loader, "k", cache.options()).await;
    cache.clear();
    loader.release();
    call.await.unwrap().unwrap();
    assert!(!cache.contains("k").unwrap());
    assert_eq!(cache.stats().l1.entries, 0);
}

#[tokio::test]
async fn callers_after_an_invalidation_do_not_join_a_load_that_predates_it() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let tagged = cache.options().tag("t");
    // Each invalidation in turn: remove, clear, tag.
    for round in 0..3 {
        let loader = Loader::returning(s("read before"));
        let old = held_load(&cache, &loader, "k", tagged.clone()).await;
        match round {
            0 => {
                cache.remove("k").await.unwrap();
            }
            1 => cache.clear(),
            _ => cache.invalidate_tag("t").unwrap(),
        }
        // A caller arriving now must not get the pre-invalidation read.
        let fresh = Loader::returning(s("read after"));
        let got = cache.get_or_load_with("k", &tagged, fresh.load()).await;
        assert_eq!(val(got), Some(s("read after")), "round {round}");
        assert_eq!(fresh.calls(), 1, "round {round}: a new load ran");
        loader.release();
        assert_eq!(val(old.await.unwrap()), Some(s("read before")));
        // The old load finished last but did not overwrite the newer value.
        assert_eq!(
            val(cache.get("k").await),
            Some(s("read after")),
            "round {round}"
        );
        cache.remove("k").await.unwrap();
    }
}

#[tokio::test]
async fn a_stale_value_removed_during_the_load_is_not_served_on_failure() {
    let clock = ManualClock::new();
    let cache = builder(&clock)
        .ttl(secs(10))
        .grace(secs(60))
        .build()
        .unwrap();
    cache.set("k", s("old")).await.unwrap();
    clock.advance(secs(11)); // stale, within grace
    let loader: Loader<String> = Loader::new(tiered_testkit::Step::Fail("down".into()));
    let call = held_load(&cache, &loader, "k", cache.options()).await;
    cache.remove("k").await.unwrap(); // deleted while the reload runs
    loader.release();
    let result = call.await.unwrap();
    assert!(
        result.is_err(),
        "removed data must not come back: {result:?}"
    );
    assert_eq!(cache.stats().stale_hits, 0);
}

#[tokio::test]
async fn a_load_older_than_pruned_records_is_refused() {
    let clock = ManualClock::new();
    let cache = builder(&clock).ttl(secs(10)).build().unwrap();
    let loader = Loader::returning(s("v"));
    let slow = held_load(&cache, &loader, "k", cache.options().tag("x")).await;
    cache.invalidate_tag("x").unwrap();
    // Long after every lifetime, thousands of invalidations force a prune that
    // drops the record of "x": the slow load must still not install.
    clock.advance(secs(3600));
    for i in 0..5000 {
        cache.invalidate_tag(&format!("other-{i}")).unwrap();
    }
    loader.release();
    slow.await.unwrap().unwrap();
    assert!(!cache.contains("k").unwrap());
    assert_eq!(cache.stats().fenced, 1);
}

#[tokio::test]
async fn many_tag_invalidations_stay_correct_after_pruning() {
    let clock = ManualClock::new();
    let cache = builder(&clock).ttl(secs(10)).build().unwrap();
    // More than the pruning threshold of records, spread over time so old ones
    // are pruned: entries tagged before each invalidation must still be dropped.
    for round in 0..5000u32 {
        let tag = format!("t{round}");
        cache
            .set_with("k", s("v"), &cache.options().tag(tag.as_str()))
            .await
            .unwrap();
        cache.invalidate_tag(&tag).unwrap();
        assert!(!cache.contains("k").unwrap(), "round {round}");
        if round % 100 == 0 {
            clock.advance(secs(5));
        }
    }
}

#[tokio::test]
async fn unrelated_invalidations_do_not_break_single_flight() {
    let clock = ManualClock::new();
    let cache = cache(&clock);
    let loader = Loader::returning(s("v"));
    let first = held_load(&cache, &loader, "k", cache.options().tag("mine")).await;
    // A busy cache: other tags and dependencies keep being invalidated.
    cache.set("parent", s("p")).await.unwrap();
    cache
        .set_with("child", s("c"), &cache.options().depends_on("parent"))
        .await
        .unwrap();
    let mut callers = Vec::new();
    for i in 0..20 {
        cache.invalidate_tag(&format!("other-{i}")).unwrap();
        cache.set("parent", s("p2")).await.unwrap(); // invalidates the dependency tag
        callers.push(spawn_get(&cache, &loader, "k", cache.options().tag("mine")));
    }
    tiered_testkit::eventually("20 coalesced waits", || cache.stats().coalesced == 20).await;
    loader.release();
    for c in callers {
        assert_eq!(val(c.await.unwrap()), Some(s("v")));
    }
    assert_eq!(val(first.await.unwrap()), Some(s("v")));
    assert_eq!(
        loader.calls(),
        1,
        "one load despite the unrelated invalidations"
    );
    assert!(cache.contains("k").unwrap());
}
