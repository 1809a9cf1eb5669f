//! The L2 tier on a private 3-master Redis Cluster.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use common::{s, secs, val};
use tiered::Cache;
use tiered_testkit::redis::RedisCluster;
use tiered_testkit::Loader;

fn cache(cluster: &RedisCluster) -> Cache<String> {
    Cache::<String>::builder("users")
        .redis_cluster(cluster.urls())
        .l2_timeout(secs(5))
        .ttl(secs(600))
        .build()
        .unwrap()
}

/// Cache entries on a node (not the backplane's stream and records).
fn entries_on(node: &tiered_testkit::redis::RedisServer) -> u64 {
    let keys = node.cli(&["--scan", "--pattern", "tiered:users:*"]);
    keys.lines().filter(|l| !l.trim().is_empty()).count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_cluster_across_slots() {
    let mut cluster = RedisCluster::start();
    let a = cache(&cluster);
    let b = cache(&cluster);

    let keys: Vec<String> = (0..60).map(|i| format!("user:{i}")).collect();
    for k in &keys[..50] {
        a.set(k, format!("v-{k}")).await.unwrap();
    }
    // The keys really are spread over the three masters.
    let per_node: Vec<u64> = cluster.nodes().iter().map(entries_on).collect();
    assert_eq!(per_node.iter().sum::<u64>(), 50);
    assert!(per_node.iter().all(|&n| n > 0), "{per_node:?}");

    // One batch over all slots: L2 answers 50, the loader gets the other 10.
    let asked = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::clone(&asked);
    let got = b
        .get_many_or_load(&keys, move |missing: Vec<String>| async move {
            seen.lock().unwrap().extend(missing.iter().cloned());
            Ok::<_, std::io::Error>(
                missing
                    .into_iter()
                    .map(|k| (k.clone(), format!("loaded-{k}")))
                    .collect::<HashMap<_, _>>(),
            )
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 60);
    assert_eq!(*got["user:7"], "v-user:7");
    let expected: HashSet<String> = keys[50..].iter().cloned().collect();
    assert_eq!(*asked.lock().unwrap(), expected);
    assert_eq!(b.stats().l2.unwrap().hits, 50);
    assert_eq!(b.stats().l2.unwrap().errors, 0);

    // Loaded values went to the cluster for everyone.
    let c = cache(&cluster);
    let never = Loader::new(tiered_testkit::Step::Fail("must not load".into()));
    assert_eq!(
        val(c.get_or_load("user:55", never.load()).await),
        Some(s("loaded-user:55"))
    );

    // Removal across the cluster.
    assert!(a.remove("user:7").await.unwrap());
    assert_eq!(val(c.get("user:7").await), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_tags_in_keys_share_a_slot() {
    let mut cluster = RedisCluster::start();
    let a = cache(&cluster);
    for part in ["profile", "orders", "cart"] {
        a.set(&format!("{{user:42}}:{part}"), s(part))
            .await
            .unwrap();
    }
    let holding: Vec<u64> = cluster.nodes().iter().map(entries_on).collect();
    assert_eq!(holding.iter().filter(|&&n| n > 0).count(), 1, "{holding:?}");
    assert_eq!(holding.iter().sum::<u64>(), 3);
    let b = cache(&cluster);
    let got = b
        .get_many_or_load(
            &["{user:42}:profile", "{user:42}:orders", "{user:42}:cart"],
            |_keys: Vec<String>| async { Ok::<_, std::io::Error>(HashMap::new()) },
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_invalidation_walks_every_master() {
    let mut cluster = RedisCluster::start();
    let a = cache(&cluster);
    for i in 0..40 {
        a.set(&format!("session:{i}"), s("v")).await.unwrap();
        a.set(&format!("keep:{i}"), s("v")).await.unwrap();
    }
    assert_eq!(a.invalidate_pattern("session:*").await.unwrap(), 40);
    let left: u64 = cluster.nodes().iter().map(entries_on).sum();
    assert_eq!(left, 40, "only keep:* remain");
    let b = cache(&cluster);
    assert_eq!(val(b.get("session:3").await), None);
    assert_eq!(val(b.get("keep:3").await), Some(s("v")));
}
