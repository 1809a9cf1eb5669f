//! Shared helpers for the integration tests.
#![allow(dead_code)] // each test file uses a different subset

use std::time::Duration;

use tiered::{Cache, CacheBuilder, ManualClock};

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
