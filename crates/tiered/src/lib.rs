//! `tiered`: a typed multi-tier cache for backend services.
//!
//! # The 60-second tour
//!
//! ```
//! use std::time::Duration;
//! use tiered::Cache;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tiered::Error> {
//! let users: Cache<String> = Cache::builder("users")
//!     .ttl(Duration::from_secs(60))      // fresh for a minute
//!     .grace(Duration::from_secs(3600))  // then kept an hour as a fail-safe fallback
//!     .eager_refresh(0.8)                // refreshed in the background after 48 s
//!     .negative_ttl(Duration::from_secs(10)) // "no such user" cached too
//!     .build()?;
//!
//! // Cache-aside / read-through: the loader runs once per miss, however many
//! // callers ask at the same time.
//! let name = users
//!     .get_or_load("42", || async { Ok::<_, std::io::Error>(Some("Ada".to_string())) })
//!     .await?;
//! assert_eq!(name.as_deref().map(String::as_str), Some("Ada"));
//!
//! // Invalidation by key or tag.
//! let opts = users.options().tag("team:7");
//! users.set_with("43", "Grace".into(), &opts).await?;
//! users.invalidate_tag("team:7")?;
//! assert!(!users.contains("43")?);
//! # Ok(())
//! # }
//! ```
//!
//! # What happens on a read
//!
//! [`Cache::get_or_load`]:
//!
//! 1. **L1 hit** (fresh): return the `Arc<V>` — no I/O, no deserialization. Past the
//!    eager-refresh point (or picked by [XFetch](Options::xfetch)), also start one
//!    background refresh.
//! 2. **Miss**: if an [existence filter](BloomFilter) is set and says the key
//!    cannot exist, return "absent". Otherwise join the key's running load or start
//!    one — one loader call per key at a time ([single-flight](load::flight)).
//!    The load asks **L2** first (if configured, see [`l2`]): a fresh entry there
//!    is installed in L1 with its remaining lifetime and the loader does not run.
//!    Loads run as tokio tasks on the caller's runtime, which needs timers enabled
//!    (`#[tokio::main]` does that) for loader timeouts.
//! 3. **Load fails or is slow**: if a stale value is within its grace window,
//!    return it ([fail-safe](load::failsafe)), and back off the loader for a while.
//!    The error is never cached.
//! 4. **Install**: store the value — in L2, then L1 — unless the key was
//!    invalidated while the loader ran ([fencing](invalidate)).
//!
//! # Choosing options
//!
//! * `ttl` bounds how stale a *fresh* hit can be; `grace` is how long you would
//!   rather serve old data than an error. Short TTL + long grace is the usual
//!   pairing.
//! * `eager_refresh` removes load latency from hot keys' expiry; `xfetch` does the
//!   same without a fixed point, weighted by how slow the loader is.
//! * `ttl_jitter` spreads expiries of keys loaded together (after a deploy, a warm).
//! * `negative_ttl` keeps "not found" from reaching the database every time.
//!
//! The in-process tier is bounded in **bytes** (see [`l1`]). The distributed tier
//! is Redis, standalone or Cluster ([`l2`]): add it with
//! [`CacheBuilder::redis`]. A backplane keeping every instance's L1 coherent and
//! the write paths come in later versions.
//!
//! # Time
//!
//! All expiry decisions read an injected [`Clock`]; tests use [`ManualClock`].

pub mod backplane;
pub mod builder;
pub mod cache;
pub mod clock;
mod entry;
pub mod error;
pub mod filter;
pub mod invalidate;
pub mod key;
pub mod l1;
pub mod l2;
pub mod load;
pub mod metrics;
pub mod options;
pub mod stats;
pub mod topk;
pub mod write;

pub use backplane::Backplane;
pub use builder::{CacheBuilder, DEFAULT_L1_BYTES, MAX_L1_BYTES};
pub use cache::MAX_BATCH_KEYS;
pub use cache::{Cache, WarmProgress, WarmReport};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use error::{BoxError, Error, Result};
pub use filter::BloomFilter;
pub use key::{MAX_KEY_LEN, MAX_NAMESPACE_LEN};
pub use l2::{Codec, Compression, Encryption, Inspection, L2Config, L2Error, RedisL2, L2};
pub use options::{AdaptiveTtl, Options, DEFAULT_HARD_TIMEOUT, MAX_TAGS, MAX_TAG_LEN, MAX_TTL};
pub use stats::{BackplaneStats, L2Stats, Stats, TierStats};
pub use topk::HotKey;
pub use write::{Store, StoreError, StoreErrorKind, StoreWrite};

/// What a cache can hold: any owned, thread-safe, serializable type.
///
/// Serialization is used to weigh values for the L1 budget (by default) and to
/// store them in distributed tiers.
pub trait Value: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {}

impl<T> Value for T where T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {}
