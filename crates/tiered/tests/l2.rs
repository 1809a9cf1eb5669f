//! The L2 tier against a real, private `redis-server`: sharing between
//! instances, lifetimes carried in the envelope, codecs, compression,
//! encryption, bad data, tenants, TLS + ACL, database numbers and the utilities.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{held_load, s, secs, val};
use serde::{Deserialize, Serialize};
use tiered::{Cache, CacheBuilder, Codec, Compression, Encryption, ManualClock, RedisL2};
use tiered_testkit::redis::{ca_cert, RedisConfig, RedisServer};
use tiered_testkit::Loader;

/// These tests are about L2 alone (the backplane has its own): without it, no
/// message from another instance can make a read conservatively skip L1.
fn on(redis: &RedisServer, clock: &ManualClock) -> CacheBuilder<String> {
    Cache::<String>::builder("users")
        .clock(clock.clone())
        .redis(redis.url())
        .backplane(false)
        // Generous: a loaded CI machine must not trip the breaker.
        .l2_timeout(secs(5))
        .ttl(secs(60))
        .grace(secs(600))
}

fn never() -> Loader<String> {
    Loader::new(tiered_testkit::Step::Fail("the loader must not run".into()))
}

#[tokio::test]
async fn two_instances_share_l2() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let a = on(&redis, &clock).build().unwrap();
    let b = on(&redis, &clock).build().unwrap();

    a.set("1", s("Ada")).await.unwrap();
    assert_eq!(val(b.get("1").await), Some(s("Ada")), "b reads a's set");

    let loader = Loader::returning(s("Grace"));
    assert_eq!(
        val(a.get_or_load("2", loader.load()).await),
        Some(s("Grace"))
    );
    let b_loader = never();
    assert_eq!(
        val(b.get_or_load("2", b_loader.load()).await),
        Some(s("Grace"))
    );
    assert_eq!(b_loader.calls(), 0, "b was served by a's load through L2");
    let stats = b.stats().l2.unwrap();
    assert_eq!(stats.hits, 2);
    assert_eq!(stats.bad_data, 0);

    // A removal reaches L2 too.
    assert!(a.remove("1").await.unwrap());
    let fresh = Cache::<String>::builder("users")
        .clock(clock.clone())
        .redis(redis.url())
        .build()
        .unwrap();
    assert_eq!(val(fresh.get("1").await), None);
}

#[tokio::test]
async fn l2_entries_keep_their_remaining_lifetime_and_grace() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let a = on(&redis, &clock).build().unwrap();
    a.set("k", s("v")).await.unwrap();
    // Redis's TTL is the end of the grace window: 60 s fresh + 600 s grace.
    let ttl: u64 = redis
        .cli(&["PTTL", "tiered:users:k"])
        .trim()
        .parse()
        .unwrap();
    assert!((655_000..=660_000).contains(&ttl), "PTTL {ttl}");

    clock.advance(secs(50));
    let b = on(&redis, &clock).build().unwrap();
    assert_eq!(val(b.get("k").await), Some(s("v")));
    let seen = b.inspect("k").await.unwrap();
    assert!(seen.in_l1 && seen.in_l2);
    assert_eq!(
        seen.fresh_for,
        Some(secs(10)),
        "b got the remaining 10 s, not a new 60"
    );

    // Past fresh: L2 no longer answers as fresh, b loads.
    clock.advance(secs(11));
    let c = on(&redis, &clock).build().unwrap();
    let loader = Loader::returning(s("v2"));
    assert_eq!(val(c.get_or_load("k", loader.load()).await), Some(s("v2")));
    assert_eq!(loader.calls(), 1);
    // b's L1 copy expired at the same instant as L2's.
    assert_eq!(
        val(b.get("k").await),
        Some(s("v2")),
        "b re-read L2 after its copy expired"
    );
}

#[tokio::test]
async fn get_many_or_load_loads_only_what_l2_lacks() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let a = on(&redis, &clock).build().unwrap();
    let b = on(&redis, &clock).build().unwrap();
    for k in ["a", "b", "c"] {
        a.set(k, format!("v-{k}")).await.unwrap();
    }
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&asked);
    let got = b
        .get_many_or_load(&["a", "b", "c", "d"], move |keys: Vec<String>| async move {
            seen.lock().unwrap().extend(keys.iter().cloned());
            Ok::<_, std::io::Error>(
                keys.into_iter()
                    .map(|k| (k.clone(), format!("loaded-{k}")))
                    .collect::<HashMap<_, _>>(),
            )
        })
        .await
        .unwrap();
    assert_eq!(*asked.lock().unwrap(), vec![s("d")]);
    assert_eq!(got.len(), 4);
    assert_eq!(*got["a"], "v-a");
    assert_eq!(*got["d"], "loaded-d");
    // And `d` went to L2 for everyone.
    assert_eq!(val(a.get("d").await), Some(s("loaded-d")));
}

#[tokio::test]
async fn a_load_fenced_by_a_removal_writes_no_tier() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let a = on(&redis, &clock).build().unwrap();
    let b = on(&redis, &clock).build().unwrap();
    let loader = Loader::returning(s("read before the removal"));
    let call = held_load(&a, &loader, "k", a.options()).await;
    a.remove("k").await.unwrap();
    loader.release();
    call.await.unwrap().unwrap();
    assert!(!a.contains("k").unwrap());
    assert_eq!(
        val(b.get("k").await),
        None,
        "the fenced result never reached L2"
    );
    // What L2 holds is the removal's tombstone, not the fenced value.
    assert!(!b.inspect("k").await.unwrap().in_l2);
}

#[tokio::test]
async fn a_slow_load_never_overwrites_a_newer_set_in_l2() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let a = on(&redis, &clock).build().unwrap();
    let b = on(&redis, &clock).build().unwrap();
    let loader = Loader::returning(s("old"));
    let call = held_load(&a, &loader, "k", a.options()).await;
    // Another instance writes a newer value while a's loader runs.
    clock.advance(Duration::from_millis(1));
    b.set("k", s("new")).await.unwrap();
    loader.release();
    call.await.unwrap().unwrap();
    let c = on(&redis, &clock).build().unwrap();
    assert_eq!(val(c.get("k").await), Some(s("new")));
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    bio: String,
}

fn user(bio_len: usize) -> User {
    User {
        id: 42,
        name: "Ada".into(),
        bio: "analytical engine ".repeat(bio_len / 18 + 1),
    }
}

#[tokio::test]
async fn every_codec_compression_and_encryption_round_trips() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let key = Encryption::new(1, [7; 32]);
    #[cfg_attr(not(feature = "zstd"), allow(unused_mut))]
    let mut compressions = vec![Compression::None, Compression::Lz4 { min_bytes: 64 }];
    #[cfg(feature = "zstd")]
    compressions.push(Compression::Zstd {
        min_bytes: 64,
        level: 3,
    });
    let mut round = 0;
    for codec in [Codec::Postcard, Codec::Json, Codec::MessagePack] {
        for &compression in &compressions {
            for encryption in [None, Some(key.clone())] {
                round += 1;
                let make = || {
                    let mut b = Cache::<User>::builder(format!("codec{round}"))
                        .clock(clock.clone())
                        .redis(redis.url())
                        .l2_timeout(secs(5))
                        .codec(codec)
                        .compression(compression);
                    if let Some(e) = &encryption {
                        b = b.encryption(e.clone());
                    }
                    b.build().unwrap()
                };
                let (a, b) = (make(), make());
                for (k, bio) in [("small", 10), ("large", 4000)] {
                    a.set(k, user(bio)).await.unwrap();
                    let got = b.get(k).await.unwrap();
                    let what = format!("{codec:?} {compression:?} {encryption:?} {k}");
                    assert_eq!(got.as_deref(), Some(&user(bio)), "{what}");
                    let stored = redis.cli(&["STRLEN", &format!("tiered:codec{round}:{k}")]);
                    let stored: usize = stored.trim().parse().unwrap();
                    if k == "large" && compression != Compression::None {
                        assert!(stored < 2000, "{what}: {stored} bytes, not compressed");
                    }
                }
                assert_eq!(b.stats().l2.unwrap().bad_data, 0);
            }
        }
    }
}

#[tokio::test]
async fn json_values_are_readable_in_redis() {
    let redis = RedisServer::start();
    let cache = Cache::<User>::builder("people")
        .redis(redis.url())
        .l2_timeout(secs(5))
        .codec(Codec::Json)
        .build()
        .unwrap();
    cache.set("42", user(5)).await.unwrap();
    let raw = redis.cli(&["GET", "tiered:people:42"]);
    assert!(raw.contains(r#"{"id":42,"name":"Ada""#), "{raw}");
}

#[tokio::test]
async fn encryption_keys_rotate_and_wrong_keys_are_misses() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let old_key = [1; 32];
    let new_key = [2; 32];
    let build = |enc: Encryption| {
        Cache::<String>::builder("secrets")
            .clock(clock.clone())
            .redis(redis.url())
            .l2_timeout(secs(5))
            .encryption(enc)
            .build()
            .unwrap()
    };
    let before = build(Encryption::new(1, old_key));
    before.set("k", s("classified")).await.unwrap();
    let raw = redis.cli(&["GET", "tiered:secrets:k"]);
    assert!(
        !raw.contains("classified"),
        "the value is not stored in clear"
    );

    let rotated = build(Encryption::new(2, new_key).with_previous_key(1, old_key));
    assert_eq!(val(rotated.get("k").await), Some(s("classified")));

    let stranger = build(Encryption::new(2, new_key));
    let loader = Loader::returning(s("reloaded"));
    assert_eq!(
        val(stranger.get_or_load("k", loader.load()).await),
        Some(s("reloaded"))
    );
    assert_eq!(stranger.stats().l2.unwrap().bad_data, 1);
    assert_eq!(loader.calls(), 1);
}

#[tokio::test]
async fn bad_data_in_redis_is_a_miss_deleted_and_counted() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let a = on(&redis, &clock).build().unwrap();
    a.set("good", s("a real value")).await.unwrap();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let good: Vec<u8> = redis::cmd("GET")
        .arg("tiered:users:good")
        .query(&mut conn)
        .unwrap();
    let mut future = good.clone();
    future[0] = 9;
    // Another program's value, a truncated envelope, an unknown format
    // version, an empty string.
    let planted: [(&str, &[u8]); 4] = [
        ("foreign", b"hello from php"),
        ("truncated", &good[..good.len() - 3]),
        ("future", &future),
        ("empty", b""),
    ];
    for (key, bytes) in planted {
        redis::cmd("SET")
            .arg(format!("tiered:users:{key}"))
            .arg(bytes)
            .query::<()>(&mut conn)
            .unwrap();
    }
    let b = on(&redis, &clock).build().unwrap();
    for (i, key) in ["foreign", "truncated", "future", "empty"]
        .iter()
        .enumerate()
    {
        let loader = Loader::returning(format!("reloaded {key}"));
        let got = b.get_or_load(key, loader.load()).await;
        assert_eq!(val(got), Some(format!("reloaded {key}")));
        assert_eq!(loader.calls(), 1, "{key}: a miss, so the loader ran");
        assert_eq!(b.stats().l2.unwrap().bad_data, i as u64 + 1);
    }
    // The bad values were replaced by the loads' good ones.
    let c = on(&redis, &clock).build().unwrap();
    assert_eq!(val(c.get("foreign").await), Some(s("reloaded foreign")));
    assert_eq!(c.stats().l2.unwrap().bad_data, 0);
    // A bad value that nobody reloads is deleted.
    redis.cli(&["SET", "tiered:users:junk", "junk"]);
    assert_eq!(val(c.get("junk").await), None);
    assert_eq!(redis.cli(&["EXISTS", "tiered:users:junk"]).trim(), "0");
}

/// Versions and creation times are clock readings: an entry from far ahead
/// (a broken clock, damaged bytes) is bad data. Trusted, a version near
/// `u64::MAX` would make every later write of the key lose the version
/// check, and a creation time ahead would escape every invalidation.
#[tokio::test]
async fn an_entry_from_far_ahead_of_the_clock_is_bad_data_not_a_value_for_good() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let a = on(&redis, &clock).build().unwrap();
    a.set("versioned", s("v1")).await.unwrap();
    a.set("created", s("c1")).await.unwrap();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut raw = |key: &str, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes: Vec<u8> = redis::cmd("GET")
            .arg(format!("tiered:users:{key}"))
            .query(&mut conn)
            .unwrap();
        edit(&mut bytes);
        redis::cmd("SET")
            .arg(format!("tiered:users:{key}"))
            .arg(bytes)
            .query::<()>(&mut conn)
            .unwrap();
    };
    // The version (bytes 1..9) at u64::MAX.
    raw("versioned", &|b| b[1..9].fill(0xFF));
    // Created, fresh until and stale until (bytes 10..18, 26..34, 34..42) a
    // day ahead: consistent with each other, so only the clock can tell.
    let ahead = (1_704_067_200u64 + 86_400) * 1_000_000_000;
    raw("created", &|b| {
        for at in [10, 26, 34] {
            b[at..at + 8].copy_from_slice(&ahead.to_be_bytes());
        }
    });
    let b = on(&redis, &clock).build().unwrap();
    for (i, key) in ["versioned", "created"].iter().enumerate() {
        let loader = Loader::returning(format!("reloaded {key}"));
        assert_eq!(
            val(b.get_or_load(key, loader.load()).await),
            Some(format!("reloaded {key}"))
        );
        assert_eq!(loader.calls(), 1, "{key}: a miss, so the loader ran");
        assert_eq!(b.stats().l2.unwrap().bad_data, i as u64 + 1);
    }
    // Replaced in L2, and later writes win again.
    a.set("versioned", s("v2")).await.unwrap();
    let c = on(&redis, &clock).build().unwrap();
    assert_eq!(val(c.get("versioned").await), Some(s("v2")));
    assert_eq!(val(c.get("created").await), Some(s("reloaded created")));
}

/// Another program's hash at one of the cache's keys: reads miss, and a
/// write replaces it instead of failing for ever in a script and being kept
/// for replay.
#[tokio::test]
async fn a_key_of_another_type_is_replaced_by_a_write_not_kept_for_replay() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    redis.cli(&["HSET", "tiered:users:k", "f", "v"]);
    let a = on(&redis, &clock).build().unwrap();
    assert_eq!(val(a.get("k").await), None);
    a.set("k", s("mine")).await.unwrap();
    let stats = a.stats().l2.unwrap();
    assert_eq!((stats.pending, stats.errors), (0, 0), "{stats:?}");
    assert_eq!(redis.cli(&["TYPE", "tiered:users:k"]).trim(), "string");
    let b = on(&redis, &clock).build().unwrap();
    assert_eq!(val(b.get("k").await), Some(s("mine")));
    // A conditional write on such a key takes it for absent.
    redis.cli(&["HSET", "tiered:users:n", "f", "v"]);
    assert!(b.compare_and_set("n", None, s("first")).await.unwrap());
    assert_eq!(val(a.get("n").await), Some(s("first")));
}

#[tokio::test]
async fn tenants_never_see_each_others_entries() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let acme = on(&redis, &clock).tenant("acme").build().unwrap();
    let globex = on(&redis, &clock).tenant("globex").build().unwrap();
    let none = on(&redis, &clock).build().unwrap();
    acme.set("1", s("acme's")).await.unwrap();
    assert_eq!(val(globex.get("1").await), None);
    assert_eq!(val(none.get("1").await), None);
    assert_eq!(redis.cli(&["EXISTS", "tiered:acme/users:1"]).trim(), "1");
}

#[tokio::test]
async fn a_database_number_in_the_url_is_used() {
    let redis = RedisServer::start();
    let cache = Cache::<String>::builder("db")
        .redis(format!("{}/3", redis.url()))
        .l2_timeout(secs(5))
        .build()
        .unwrap();
    cache.set("k", s("v")).await.unwrap();
    assert_eq!(redis.cli(&["-n", "3", "EXISTS", "tiered:db:k"]).trim(), "1");
    assert_eq!(redis.cli(&["-n", "0", "EXISTS", "tiered:db:k"]).trim(), "0");
}

#[tokio::test]
async fn tls_and_acl() {
    let redis = RedisServer::start_with(RedisConfig::secure());
    assert!(redis.url().starts_with("rediss://tiered:"));
    let make = || {
        Cache::<String>::builder("secure")
            .redis_with(RedisL2::builder(redis.url()).root_certificate(ca_cert()))
            .l2_timeout(secs(5))
            .build()
            .unwrap()
    };
    let (a, b) = (make(), make());
    a.set("k", s("over TLS")).await.unwrap();
    assert_eq!(val(b.get("k").await), Some(s("over TLS")));
    assert_eq!(b.stats().l2.unwrap().errors, 0);

    // A wrong password: L2 is unusable, callers still get answers.
    let wrong = redis.url().replace("s3cret-pass", "wrong");
    let locked_out = Cache::<String>::builder("secure")
        .redis_with(RedisL2::builder(wrong).root_certificate(ca_cert()))
        .build()
        .unwrap();
    let loader = Loader::returning(s("from the loader"));
    assert_eq!(
        val(locked_out.get_or_load("k", loader.load()).await),
        Some(s("from the loader"))
    );
    assert!(locked_out.stats().l2.unwrap().errors >= 1);
}

#[tokio::test]
async fn bad_redis_configuration_is_refused_at_build() {
    let cases = [
        Cache::<String>::builder("x").redis("not a url").build(),
        Cache::<String>::builder("x")
            .redis("http://localhost")
            .build(),
        Cache::<String>::builder("x")
            .redis_with(RedisL2::builder("redis://localhost").root_certificate(vec![1]))
            .build(),
        Cache::<String>::builder("x")
            .redis("redis://localhost")
            .tenant("")
            .build(),
        Cache::<String>::builder("x").l1_enabled(false).build(),
    ];
    for (i, built) in cases.into_iter().enumerate() {
        let err = built.expect_err("must be refused");
        assert!(err.is_invalid_input(), "case {i}: {err}");
    }
}

#[tokio::test]
async fn counters_expire_from_their_first_increment() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let cache = on(&redis, &clock).build().unwrap();
    assert_eq!(cache.incr("ip:1", 1, secs(60)).await.unwrap(), 1);
    assert_eq!(cache.incr("ip:1", 5, secs(600)).await.unwrap(), 6);
    let ttl: u64 = redis
        .cli(&["PTTL", "tiered:users#c:ip:1"])
        .trim()
        .parse()
        .unwrap();
    assert!(
        (55_000..=60_000).contains(&ttl),
        "the window was set once: {ttl}"
    );
    // A counter is not a cache value.
    assert_eq!(val(cache.get("ip:1").await), None);
    assert!(cache
        .incr("ip:1", 1, Duration::ZERO)
        .await
        .unwrap_err()
        .is_invalid_input());
    let no_l2 = Cache::<String>::builder("x").build().unwrap();
    assert!(matches!(
        no_l2.incr("k", 1, secs(1)).await,
        Err(tiered::Error::L2(tiered::L2Error::NotConfigured))
    ));
}

#[tokio::test]
async fn sliding_expiration_extends_on_every_hit() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let sessions = on(&redis, &clock)
        .ttl(secs(30))
        .grace(secs(0))
        .build()
        .unwrap();
    sessions.set("sess", s("user 7")).await.unwrap();
    for _ in 0..5 {
        clock.advance(secs(20));
        let got = sessions.get_sliding("sess", secs(30)).await.unwrap();
        assert_eq!(got.as_deref().map(String::as_str), Some("user 7"));
    }
    // 100 s after the set, still alive; then idle for 31 s: gone everywhere.
    let other = on(&redis, &clock).build().unwrap();
    assert_eq!(
        other.inspect("sess").await.unwrap().fresh_for,
        Some(secs(30))
    );
    clock.advance(secs(31));
    assert_eq!(sessions.get_sliding("sess", secs(30)).await.unwrap(), None);
    assert!(!sessions.touch("sess", secs(30)).await.unwrap());
}

#[tokio::test]
async fn compare_and_set_and_update_never_lose_an_increment() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let make = || {
        Cache::<u64>::builder("stock")
            .clock(clock.clone())
            .redis(redis.url())
            .l2_timeout(secs(5))
            .ttl(secs(3600))
            .build()
            .unwrap()
    };
    let a = make();
    assert!(a.compare_and_set("sku", None, 10).await.unwrap());
    assert!(
        !a.compare_and_set("sku", None, 99).await.unwrap(),
        "not absent any more"
    );
    let (v, version) = a.get_versioned("sku").await.unwrap().unwrap();
    assert_eq!(*v, 10);
    assert!(!a
        .compare_and_set("sku", Some(version + 1), 99)
        .await
        .unwrap());
    assert!(a.compare_and_set("sku", Some(version), 9).await.unwrap());
    let (_, newer) = a.get_versioned("sku").await.unwrap().unwrap();
    assert!(newer > version);
    assert!(
        !a.compare_and_set("sku", Some(version), 8).await.unwrap(),
        "stale version"
    );

    // Four instances, 25 decrements each, all at once: none lost.
    let instances: Vec<_> = (0..4).map(|_| make()).collect();
    a.set("count", 100).await.unwrap();
    let mut tasks = Vec::new();
    for cache in instances {
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                cache.update("count", |v| v.map(|n| n - 1)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (left, _) = a.get_versioned("count").await.unwrap().unwrap();
    assert_eq!(*left, 0);
}

#[tokio::test]
async fn inspect_reports_every_tier() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let cache = on(&redis, &clock).build().unwrap();
    let opts = cache.options().tag("team:7");
    cache.set_with("k", s("value"), &opts).await.unwrap();
    let seen = cache.inspect("k").await.unwrap();
    assert!(seen.in_l1 && seen.in_l2 && !seen.absent);
    assert_eq!(seen.fresh_for, Some(secs(60)));
    let expires = seen.expires_in.unwrap();
    assert!(expires > secs(600) && expires <= secs(660), "{expires:?}");
    assert!(seen.l2_bytes.unwrap() > 5);
    assert!(seen.version.unwrap() > 0);
    assert_eq!(seen.tags, vec![s("t:team:7")]);
    let nothing = cache.inspect("nope").await.unwrap();
    assert!(!nothing.in_l1 && !nothing.in_l2 && nothing.version.is_none());
}

#[tokio::test]
async fn a_tag_invalidated_here_is_not_read_back_from_l2() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let cache = on(&redis, &clock).build().unwrap();
    let opts = cache.options().tag("team:7");
    cache.set_with("k", s("tagged"), &opts).await.unwrap();
    clock.advance(secs(1));
    cache.invalidate_tag("team:7").unwrap();
    let loader = Loader::returning(s("reloaded"));
    assert_eq!(
        val(cache.get_or_load_with("k", &opts, loader.load()).await),
        Some(s("reloaded"))
    );
    assert_eq!(loader.calls(), 1, "the L2 copy predates the invalidation");
}

#[tokio::test]
async fn an_entry_read_from_l2_keeps_its_dependencies() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let b = on(&redis, &clock).build().unwrap();
    let opts = b.options().depends_on("org:1");
    b.set_with("profile", s("built from org 1"), &opts)
        .await
        .unwrap();
    let a = on(&redis, &clock).build().unwrap();
    assert_eq!(val(a.get("profile").await), Some(s("built from org 1")));
    assert!(a.contains("profile").unwrap());
    clock.advance(secs(1));
    // `a` never loaded the profile itself, yet removing what it depends on
    // invalidates `a`'s copy.
    a.remove("org:1").await.unwrap();
    assert!(!a.contains("profile").unwrap());
}

#[tokio::test]
async fn fail_safe_serves_another_instances_stale_value_from_l2() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let a = on(&redis, &clock).ttl(secs(10)).build().unwrap();
    a.set("k", s("written by a")).await.unwrap();
    clock.advance(secs(20)); // stale, within the 600 s grace
                             // b has never seen the key; the database is down.
    let b = on(&redis, &clock).ttl(secs(10)).build().unwrap();
    let failing: Loader<String> = Loader::new(tiered_testkit::Step::Fail("db down".into()));
    let got = b.get_or_load("k", failing.load()).await;
    assert_eq!(val(got), Some(s("written by a")));
    assert_eq!(failing.calls(), 1);
    assert_eq!(b.stats().stale_hits, 1);
    // Backed off: the next call serves it again without calling the loader.
    let got = b.get_or_load("k", failing.load()).await;
    assert_eq!(val(got), Some(s("written by a")));
    assert_eq!(failing.calls(), 1);
    // Without a value in grace, the error reaches the caller.
    let got = b.get_or_load("never-set", failing.load()).await;
    assert!(got.is_err());
}

#[tokio::test]
async fn a_removal_on_another_instance_is_not_undone_by_a_slow_load() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    a.set("k", s("old")).await.unwrap();
    // b misses and loads; its loader read the database before the update...
    let fresh_b = on(&redis, &clock).build().unwrap();
    let loader = Loader::returning(s("read before the removal"));
    redis.cli(&["DEL", "tiered:users:k"]);
    let call = held_load(&fresh_b, &loader, "k", fresh_b.options()).await;
    // ...a removes the key (b hears nothing: no backplane here)...
    clock.advance(Duration::from_millis(1));
    a.remove("k").await.unwrap();
    // ...and b's load finishes after: its L2 write is older than the
    // removal's tombstone and is refused.
    loader.release();
    call.await.unwrap().unwrap();
    let c = on(&redis, &clock).build().unwrap();
    assert_eq!(val(c.get("k").await), None);
    assert!(!c.inspect("k").await.unwrap().in_l2);
    drop(b);
}

#[tokio::test]
async fn of_two_racing_sets_the_newer_wins_in_every_tier() {
    let redis = RedisServer::start();
    let clock = ManualClock::new();
    let (a, b) = (
        on(&redis, &clock).build().unwrap(),
        on(&redis, &clock).build().unwrap(),
    );
    let t0 = tiered::Clock::now(&clock);
    clock.advance(Duration::from_millis(5));
    a.set("k", s("newer")).await.unwrap();
    // b's write was issued earlier (older version) but lands later.
    clock.set(t0);
    b.set("k", s("older")).await.unwrap();
    clock.advance(Duration::from_millis(10));
    assert_eq!(
        val(b.get("k").await),
        Some(s("newer")),
        "b did not keep its refused write"
    );
    assert_eq!(val(a.get("k").await), Some(s("newer")));
    let c = on(&redis, &clock).build().unwrap();
    assert_eq!(val(c.get("k").await), Some(s("newer")));
}
