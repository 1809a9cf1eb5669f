//! The errors the cache returns.
//!
//! Two families: *input* errors ([`Error::InvalidKey`], [`Error::InvalidOption`],
//! [`Error::InvalidConfig`]) are returned before anything changes; *load* errors
//! ([`Error::Loader`], [`Error::LoaderPanicked`], [`Error::Timeout`],
//! [`Error::LoadAborted`]) reach a caller only when there was no stale value to
//! serve instead (see fail-safe in the crate docs). Load errors are never cached.

use std::sync::Arc;
use std::time::Duration;

/// A boxed error from a user's loader.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in a cache call.
///
/// `Clone` because one failed load is reported to every caller that was waiting on
/// it (single-flight).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key is empty or longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// Why the key was refused.
        reason: String,
    },
    /// A per-entry option is out of range (zero or absurd TTL, NaN fraction, ...).
    #[error("invalid option `{option}`: {reason}")]
    InvalidOption {
        /// The option's name, as on [`Options`](crate::Options).
        option: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The cache configuration is invalid (empty namespace, zero budget, ...).
    #[error("invalid cache configuration: {0}")]
    InvalidConfig(String),
    /// The loader returned an error and no stale value could be served.
    #[error("loader failed: {0}")]
    Loader(#[source] Arc<dyn std::error::Error + Send + Sync + 'static>),
    /// The loader panicked. The key is not wedged: the next call loads again.
    #[error("loader panicked")]
    LoaderPanicked,
    /// The loader ran past its hard timeout and no stale value could be served.
    #[error("loader timed out after {0:?}")]
    Timeout(Duration),
    /// The load task was dropped before finishing (e.g. the runtime shut down).
    #[error("load aborted before it finished")]
    LoadAborted,
    /// A loading call was made outside a tokio runtime.
    #[error("no tokio runtime: loads run as tokio tasks")]
    NoRuntime,
    /// An operation that needs the L2 tier (a Redis utility such as
    /// [`Cache::incr`](crate::Cache::incr)) could not use it.
    #[error("L2: {0}")]
    L2(#[from] crate::l2::L2Error),
    /// The tokio runtime has timers disabled, so loader timeouts cannot run.
    #[error("tokio timers are disabled: build the runtime with enable_time() or enable_all()")]
    TimersDisabled,
}

impl Error {
    pub(crate) fn option(option: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidOption {
            option,
            reason: reason.into(),
        }
    }

    pub(crate) fn from_loader(e: BoxError) -> Self {
        Error::Loader(Arc::from(e))
    }

    /// True for errors caused by the caller's input (nothing was changed).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidKey { .. } | Error::InvalidOption { .. } | Error::InvalidConfig(_)
        )
    }
}

/// `Result<T, tiered::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
