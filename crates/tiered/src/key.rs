//! Key and namespace rules.
//!
//! Keys are UTF-8 strings of 1 to [`MAX_KEY_LEN`] bytes. The limit keeps one
//! request from pinning megabytes of key material in L1 (and, later, in Redis,
//! where the key is also prefixed with the namespace). Any byte sequence within
//! the limit is a valid key: the L2 layout escapes what it needs to.

use crate::error::{Error, Result};

/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// The longest namespace accepted, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 128;

/// Checks a key against the rules above.
pub(crate) fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            reason: "the key is empty".into(),
        });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey {
            reason: format!("the key is {} bytes; the limit is {MAX_KEY_LEN}", key.len()),
        });
    }
    Ok(())
}

/// Checks a namespace: non-empty, at most [`MAX_NAMESPACE_LEN`] bytes, no control
/// characters (it appears in metric labels and logs).
pub(crate) fn validate_namespace(ns: &str) -> Result<()> {
    if ns.is_empty() {
        return Err(Error::InvalidConfig("the namespace is empty".into()));
    }
    if ns.len() > MAX_NAMESPACE_LEN {
        return Err(Error::InvalidConfig(format!(
            "the namespace is {} bytes; the limit is {MAX_NAMESPACE_LEN}",
            ns.len()
        )));
    }
    if ns.chars().any(char::is_control) {
        return Err(Error::InvalidConfig(
            "the namespace contains control characters".into(),
        ));
    }
    Ok(())
}
