//! Two service instances sharing one Redis: what one loads, the other reads from
//! L2 without touching the database; a removal on one reaches the other's L1
//! through the backplane; a rate-limit counter and a read-modify-write that
//! never loses an update.
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379 cargo run -p tiered --example two_tier`
//! (`REDIS_URL` defaults to that; `rediss://user:pass@host/2` for TLS, ACL and
//! database 2.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tiered::{Cache, Codec};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    sku: String,
    name: String,
    stock: u32,
}

fn instance(url: &str) -> Result<Cache<Product>, tiered::Error> {
    Cache::builder("products")
        .redis(url)
        // JSON: readable with `redis-cli GET tiered:products:sku-1`.
        .codec(Codec::Json)
        .ttl(Duration::from_secs(60))
        .grace(Duration::from_secs(3600))
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let (a, b) = (instance(&url)?, instance(&url)?);
    let queries = Arc::new(AtomicUsize::new(0));
    let load = |sku: &'static str| {
        let queries = Arc::clone(&queries);
        move || async move {
            queries.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Some(Product {
                sku: sku.into(),
                name: "Teapot".into(),
                stock: 12,
            }))
        }
    };
    // Start clean (a previous run may have left these).
    a.remove("sku-1").await?;

    let p = a.get_or_load("sku-1", load("sku-1")).await?;
    println!("instance a loaded {p:?}");
    let p = b.get_or_load("sku-1", load("sku-1")).await?;
    println!("instance b got {p:?} from L2");
    println!("database queries: {}", queries.load(Ordering::SeqCst));
    assert_eq!(queries.load(Ordering::SeqCst), 1);
    let seen = b.inspect("sku-1").await?;
    println!(
        "inspect: in L1 {}, in L2 {}, fresh for {:?}, {} bytes in Redis, version {:?}",
        seen.in_l1,
        seen.in_l2,
        seen.fresh_for,
        seen.l2_bytes.unwrap_or(0),
        seen.version
    );

    // Read-modify-write through L2: both instances sell one teapot at once.
    let sell = |c: Cache<Product>| async move {
        c.update("sku-1", |p| {
            p.map(|p| Product {
                stock: p.stock - 1,
                ..p.clone()
            })
        })
        .await
    };
    let (x, y) = tokio::join!(sell(a.clone()), sell(b.clone()));
    x?;
    y?;
    let (left, _) = a.get_versioned("sku-1").await?.ok_or("gone")?;
    println!("stock after two concurrent sales: {}", left.stock);
    assert_eq!(left.stock, 10);

    // The backplane: a removal on one instance reaches the other's L1.
    b.get_or_load("sku-2", load("sku-2")).await?;
    assert!(b.contains("sku-2")?);
    let started = std::time::Instant::now();
    a.remove("sku-2").await?;
    while b.contains("sku-2")? {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "backplane too slow"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "a removed sku-2; b's L1 copy was gone {:.1} ms later",
        started.elapsed().as_secs_f64() * 1e3
    );

    // A fixed-window rate limit: 3 calls per minute per client.
    let limit = |n: i64| if n > 3 { "rejected" } else { "allowed" };
    a.remove("sku-1").await?;
    for _ in 0..4 {
        let n = a
            .incr("client:203.0.113.9", 1, Duration::from_secs(60))
            .await?;
        println!("request {n}: {}", limit(n));
    }
    Ok(())
}
