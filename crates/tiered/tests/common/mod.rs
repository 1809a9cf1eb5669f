//! Shared helpers for the integration tests.
#![allow(dead_code)] // each test file uses a different subset

use std::time::Duration;

use tiered::{Cache, CacheBuilder, ManualClock, Options};
use tiered_testkit::Loader;

pub const SEC: Duration = Duration::from_secs(1);

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A builder over a fresh manual clock, with top-key sampling off so counts are exact.
pub fn builder(clock: &ManualClock) -> CacheBuilder<String> {
    Cache::<String>::builder("test")
        .clock(clock.clone())
        .top_keys(32, 1)
}

pub fn cache(clock: &ManualClock) -> Cache<String> {
    builder(clock).build().expect("valid config")
}

pub fn s(v: &str) -> String {
    v.to_string()
}

/// Unwraps a cache answer into an owned `Option<String>` for easy asserts.
pub fn val(r: tiered::Result<Option<std::sync::Arc<String>>>) -> Option<String> {
    r.expect("call should succeed").map(|v| (*v).clone())
}

/// A spawned cache call.
pub type Call = tokio::task::JoinHandle<tiered::Result<Option<std::sync::Arc<String>>>>;

/// Spawns `get_or_load_with(key, opts)` using `loader`'s next call.
pub fn spawn_get(cache: &Cache<String>, loader: &Loader<String>, key: &str, opts: Options) -> Call {
    let (cache, loader, key) = (cache.clone(), loader.clone(), key.to_owned());
    tokio::spawn(async move { cache.get_or_load_with(&key, &opts, loader.load()).await })
}

/// Holds `loader`, spawns a load of `key`, and returns once the loader is running
/// (and waiting for `loader.release()`).
pub async fn held_load(
    cache: &Cache<String>,
    loader: &Loader<String>,
    key: &str,
    opts: Options,
) -> Call {
    loader.hold();
    let calls = loader.calls();
    let task = spawn_get(cache, loader, key, opts);
    loader.wait_for_calls(calls + 1).await;
    task
}

/// Polls `check` until it holds; panics after `limit` of wall time.
pub async fn until_within<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Loads `key` into `cache`'s L1 with `value` (through the loader, not L2).
pub async fn hold(cache: &Cache<String>, key: &str, value: &str) {
    let loader = Loader::returning(s(value));
    cache.get_or_load(key, loader.load()).await.expect("load");
    assert!(cache.contains(key).expect("valid key"));
}
