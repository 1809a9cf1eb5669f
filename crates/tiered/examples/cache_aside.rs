//! Cache-aside over a slow loader: the first read pays for the database, the
//! next ones don't, and a stampede of 500 concurrent readers costs one query.
//!
//! Run: `cargo run -p tiered --example cache_aside`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tiered::Cache;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// Stands in for a database: 50 ms per query, and counts the queries.
#[derive(Clone, Default)]
struct Database {
    queries: Arc<AtomicUsize>,
}

impl Database {
    async fn find_user(&self, id: u64) -> Result<Option<User>, std::io::Error> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok((id < 1000).then(|| User {
            id,
            name: format!("user-{id}"),
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), tiered::Error> {
    let db = Database::default();
    let users: Cache<User> = Cache::builder("users")
        .ttl(Duration::from_secs(60))
        .negative_ttl(Duration::from_secs(10))
        .build()?;

    let load = |id: u64| {
        let db = db.clone();
        move || async move { db.find_user(id).await }
    };

    let t = Instant::now();
    let user = users.get_or_load("42", load(42)).await?;
    println!(
        "first read:  {:?} in {:?} (loaded from the database)",
        user.map(|u| u.name.clone()),
        t.elapsed()
    );

    let t = Instant::now();
    let user = users.get_or_load("42", load(42)).await?;
    println!(
        "second read: {:?} in {:?} (L1 hit)",
        user.map(|u| u.name.clone()),
        t.elapsed()
    );

    let t = Instant::now();
    let readers: Vec<_> = (0..500)
        .map(|_| {
            let (users, load) = (users.clone(), load(7));
            tokio::spawn(async move { users.get_or_load("7", load).await })
        })
        .collect();
    for r in readers {
        r.await.expect("reader task")?;
    }
    println!(
        "500 concurrent readers of a cold key took {:?}",
        t.elapsed()
    );

    for _ in 0..3 {
        users.get_or_load("5000", load(5000)).await?;
    }
    println!("3 reads of a missing user: absent, cached as absent after the first query");

    let stats = users.stats();
    println!(
        "database queries: {} | hits: {} misses: {} coalesced: {} negative hits: {} | hit ratio {:.1}%",
        db.queries.load(Ordering::SeqCst),
        stats.l1.hits,
        stats.l1.misses,
        stats.coalesced,
        stats.negative_hits,
        stats.hit_ratio() * 100.0
    );
    Ok(())
}
