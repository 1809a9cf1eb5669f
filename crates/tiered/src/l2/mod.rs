//! The distributed tier (L2): a Redis shared by every instance of a service.
//!
//! L1 answers from process memory; on an L1 miss the cache asks L2 before it runs
//! the loader, so one instance's load serves every other instance. A value
//! travels to L2 in an *envelope* that keeps its logical expiry, grace window,
//! version and tags, so an instance reading it knows exactly how fresh it is;
//! Redis's own TTL is only the end of the grace window (when nobody may use the
//! value any more).
//!
//! The modules, in the order a value meets them:
//!
//! * [`layout`] — the Redis key for a cache key: `{prefix}:{namespace}:{key}`,
//!   with the escaping rule that keeps tenants and namespaces apart.
//! * [`codec`] — how a value becomes bytes: the [`Codec`] (postcard, JSON,
//!   MessagePack), [`Compression`] above a size threshold, optional
//!   [`Encryption`] with key rotation.
//! * [`envelope`] — the versioned wire format around those bytes.
//! * [`L2`] (this module) — the storage trait, and [`RedisL2`] implementing it
//!   for standalone Redis and Redis Cluster.
//! * [`breaker`] — the circuit breaker that stops calling a Redis that is down.
//! * [`pending`] — writes and removals that could not reach Redis, kept
//!   (bounded, one per key) and replayed when it is back.
//! * `utilities` — counters, sliding expiration, compare-and-set and
//!   [`Inspection`], as `Cache` methods.
//! * `tier` — the glue the cache uses: timeouts, breaker, codecs, bad-data
//!   handling and statistics around an [`L2`].
//!
//! # Outages
//!
//! Every call has a timeout ([`L2Config::timeout`], 250 ms by default — far below
//! the loader's 30 s hard timeout). After [`L2Config::breaker_failures`]
//! consecutive failures the breaker opens: for [`L2Config::breaker_cooldown`] the
//! cache does not call Redis at all and answers from L1 and the loader; then one
//! probe call is let through, and its success closes the breaker. Callers never
//! see an L2 error from `get`/`get_or_load`/`set`/`remove`: a read that cannot
//! reach L2 is a miss, and a write or removal that cannot reach it is kept in
//! [`pending`] and replayed once a call succeeds again.
//!
//! # Bad data
//!
//! A value in Redis that is not a valid envelope — written by another program,
//! truncated, of a format version this build does not know, failing
//! decompression, decryption or decoding — is a miss: it is deleted, counted
//! (`Stats::l2.bad_data`, metric `tiered_cache_l2_bad_data_total`) and logged
//! (once per key, up to a bound), and never panics the process.

pub(crate) mod batch;
pub mod breaker;
pub mod codec;
pub mod envelope;
pub mod layout;
pub mod pending;
pub(crate) mod redis;
pub(crate) mod tier;
mod utilities;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use self::redis::{RedisL2, RedisL2Builder};
pub use breaker::BreakerState;
pub use codec::{Codec, Compression, Encryption};
pub use layout::Layout;
pub use utilities::Inspection;

/// A boxed future returned by [`L2`] methods.
pub type L2Future<'a, T> = Pin<Box<dyn Future<Output = Result<T, L2Error>> + Send + 'a>>;

/// An error talking to the distributed tier. The cache never hands these to
/// `get`/`get_or_load` callers (an unreachable L2 is a miss); the Redis utilities
/// that cannot work without L2 return them as [`crate::Error::L2`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum L2Error {
    /// The backend failed (connection refused, reset, protocol error...).
    #[error("L2 backend error: {0}")]
    Backend(String),
    /// The call did not finish within the configured timeout.
    #[error("L2 call timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered with an error (wrong type, script error...): it is
    /// reachable, so this does not count towards the breaker.
    #[error("L2 command error: {0}")]
    Command(String),
    /// The circuit breaker is open: L2 is not being called.
    #[error("L2 circuit breaker is open")]
    BreakerOpen,
    /// No L2 tier is configured on this cache.
    #[error("this cache has no L2 tier")]
    NotConfigured,
}

/// One value to store: the Redis key, the bytes, the physical TTL and the
/// version (the envelope carries it too; conditional writes compare it).
#[derive(Debug, Clone)]
pub struct L2Write {
    /// The full Redis key.
    pub key: String,
    /// The envelope bytes.
    pub value: Vec<u8>,
    /// Redis TTL (at least 1 ms).
    pub ttl: Duration,
    /// The entry's version.
    pub version: u64,
}

/// A distributed tier: raw bytes under full keys. The cache puts envelopes in it
/// (see [`envelope`]); implementations need not understand them, except that a
/// stored value's bytes 1..9 are its version as a big-endian `u64`, which the
/// conditional writes compare.
///
/// Implementations must be cheap to call concurrently: the cache calls them from
/// many tasks at once and adds its own timeout around every call.
pub trait L2: Send + Sync + 'static {
    /// The values at `keys`, in order (`None` where absent). One round trip per
    /// node, not per key.
    fn get_many<'a>(&'a self, keys: &'a [String]) -> L2Future<'a, Vec<Option<Vec<u8>>>>;

    /// Stores each write, replacing whatever is there, and returns what was
    /// there (`SET … GET`).
    fn swap(&self, writes: Vec<L2Write>) -> L2Future<'_, Vec<Option<Vec<u8>>>>;

    /// Stores each write unless the key holds a value whose version is the same
    /// or newer; returns, per write, whether it was stored. This is how a slow
    /// load, or a replayed write, never overwrites a newer value.
    fn set_if_newer(&self, writes: Vec<L2Write>) -> L2Future<'_, Vec<bool>>;

    /// Stores `write` only if the key's current version is `expected` (`None`:
    /// only if the key is absent). Returns whether it was stored.
    fn compare_and_set(&self, write: L2Write, expected: Option<u64>) -> L2Future<'_, bool>;

    /// Deletes `keys`; returns how many existed.
    fn delete<'a>(&'a self, keys: &'a [String]) -> L2Future<'a, u64>;

    /// Deletes `key` only if it holds version `version`.
    fn delete_version<'a>(&'a self, key: &'a str, version: u64) -> L2Future<'a, bool>;

    /// The key's remaining Redis TTL; `None` if the key is absent or has none.
    fn ttl<'a>(&'a self, key: &'a str) -> L2Future<'a, Option<Duration>>;

    /// Adds `by` to the integer at `key` and returns the result; a key created by
    /// this call expires after `ttl` (later calls leave the expiry alone).
    fn incr<'a>(&'a self, key: &'a str, by: i64, ttl: Duration) -> L2Future<'a, i64>;

    /// Deletes every key matching the Redis glob `pattern`, walking the
    /// keyspace with `SCAN` (every master of a Cluster); returns how many.
    fn delete_matching<'a>(&'a self, pattern: &'a str) -> L2Future<'a, u64>;

    /// Takes the lease `lock` with `token` (random, unique) for `ttl` if
    /// nobody holds it. If someone does, sets the flag `waiting` (so the holder
    /// knows to announce its value) and returns `false`. The keys share the
    /// entry's Cluster slot (see [`layout::Layout::lease`]).
    ///
    /// The lease methods have default implementations that answer
    /// "unsupported" ([`L2Error::Command`]): a backend without them gets
    /// in-process single-flight, and its breaker is not affected.
    fn lease_acquire<'a>(
        &'a self,
        lock: &'a str,
        waiting: &'a str,
        token: u64,
        ttl: Duration,
    ) -> L2Future<'a, bool> {
        let _ = (lock, waiting, token, ttl);
        unsupported()
    }

    /// Extends the lease if `token` still holds it; `false` if it was lost.
    fn lease_renew<'a>(&'a self, lock: &'a str, token: u64, ttl: Duration) -> L2Future<'a, bool> {
        let _ = (lock, token, ttl);
        unsupported()
    }

    /// Releases the lease if `token` still holds it (compare-and-delete, so a
    /// holder whose lease expired can never release someone else's). `None`:
    /// it was not ours any more; `Some(waited)`: released, and whether another
    /// instance waited.
    fn lease_release<'a>(
        &'a self,
        lock: &'a str,
        waiting: &'a str,
        token: u64,
    ) -> L2Future<'a, Option<bool>> {
        let _ = (lock, waiting, token);
        unsupported()
    }

    /// A version-guarded write (as [`set_if_newer`](Self::set_if_newer)) made
    /// only while `token` holds `lock`: the fencing check at install. `None`
    /// if the lease was lost (a holder that stalled past it writes nothing).
    fn set_if_leased<'a>(
        &'a self,
        write: L2Write,
        lock: &'a str,
        token: u64,
    ) -> L2Future<'a, Option<bool>> {
        let _ = (write, lock, token);
        unsupported()
    }

    /// A cheap round trip (the breaker's probe).
    fn ping(&self) -> L2Future<'_, ()>;

    /// How full the server is, for dashboards. Defaults to "unsupported".
    fn server_usage(&self) -> L2Future<'_, ServerUsage> {
        unsupported()
    }
}

/// The size of the Redis behind an L2 ([`crate::Cache::l2_server_usage`]):
/// the whole server (every master of a Cluster), not only this cache's keys,
/// which Redis cannot count without walking the keyspace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerUsage {
    /// Keys in the selected database (`DBSIZE`; a Cluster has only db 0),
    /// summed over masters.
    pub keys: u64,
    /// Memory Redis has allocated (`INFO memory` `used_memory`, summed).
    pub used_memory: u64,
    /// `maxmemory`, summed over masters; 0 when any master has no limit.
    pub max_memory: u64,
    /// The nodes counted.
    pub nodes: u32,
}

fn unsupported<'a, T: Send + 'a>() -> L2Future<'a, T> {
    Box::pin(async { Err(L2Error::Command("not supported by this L2".into())) })
}

/// How the cache uses its L2: timeouts, breaker, replay bound, key layout and
/// value encoding. Set through [`crate::CacheBuilder`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct L2Config {
    /// Timeout of every L2 call.
    pub timeout: Duration,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe call.
    pub breaker_cooldown: Duration,
    /// The most keys whose writes or removals are kept for replay during an outage.
    pub max_pending: usize,
    /// The largest value (decoded or decompressed) accepted from L2, in bytes:
    /// a guard against a corrupted length field allocating gigabytes.
    pub max_value_bytes: usize,
    /// Value encoding.
    pub codec: Codec,
    /// Compression above a size threshold.
    pub compression: Compression,
    /// Authenticated encryption, if any.
    pub encryption: Option<Encryption>,
    /// The key prefix (default `tiered`).
    pub prefix: String,
    /// The tenant, if the cache is per tenant.
    pub tenant: Option<String>,
}

impl Default for L2Config {
    fn default() -> Self {
        L2Config {
            timeout: Duration::from_millis(250),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_millis(500),
            max_pending: 10_000,
            max_value_bytes: 64 << 20,
            codec: Codec::default(),
            compression: Compression::default(),
            encryption: None,
            prefix: "tiered".into(),
            tenant: None,
        }
    }
}
