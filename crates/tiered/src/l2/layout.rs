//! Redis key layout: where a cache key lives in Redis.
//!
//! ```text
//! {prefix}:{namespace}:{key}              a cache entry
//! {prefix}:{tenant}/{namespace}:{key}     the same, for a cache with a tenant
//! {prefix}:{namespace}#c:{key}            a counter (Cache::incr)
//! {prefix}:{namespace}#bp                 the backplane stream
//! {prefix}:{namespace}#tags               tag invalidation and clear times
//! {prefix}:{namespace}#sched              scheduled invalidations
//! {prefix}:{namespace}#deps               keys some entry depends on
//! ```
//!
//! # Escaping
//!
//! In the prefix, the tenant and the namespace, every byte other than ASCII
//! letters, digits, `_`, `.` and `-` is written as `%XX` (upper-case hex). The key
//! itself is written as is: it is the last component, everything after the
//! second `:` belongs to it.
//!
//! So the structural characters `:`, `/` and `#` never occur inside an escaped
//! component, and the mapping from (prefix, tenant, namespace, kind, key) to a
//! Redis key is injective: tenant `a` with namespace `b:c` and tenant `a:b` with
//! namespace `c` get different keys, and no cache key can make one tenant's
//! entry land in another tenant's space.
//!
//! Escaping also removes `{` and `}` from the components, so on Redis Cluster
//! only the *key* can carry a hash tag: `user:{42}:profile` and
//! `user:{42}:orders` share a slot (and can be fetched in one `MGET` round trip),
//! whatever the namespace.

use std::fmt::Write;

/// Maps cache keys to Redis keys for one cache.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `{prefix}:{[tenant/]namespace}`, escaped.
    space: String,
}

impl Layout {
    /// The layout for `namespace` under `prefix`, optionally for `tenant`.
    pub fn new(prefix: &str, tenant: Option<&str>, namespace: &str) -> Self {
        let mut space = escape(prefix);
        space.push(':');
        if let Some(tenant) = tenant {
            space.push_str(&escape(tenant));
            space.push('/');
        }
        space.push_str(&escape(namespace));
        Layout { space }
    }

    /// The Redis key of a cache entry.
    pub fn entry(&self, key: &str) -> String {
        let mut s = String::with_capacity(self.space.len() + 1 + key.len());
        s.push_str(&self.space);
        s.push(':');
        s.push_str(key);
        s
    }

    /// The backplane stream of this cache (see [`crate::backplane`]).
    pub fn backplane(&self) -> String {
        format!("{}#bp", self.space)
    }

    /// The set of keys some entry depends on.
    pub fn depended(&self) -> String {
        format!("{}#deps", self.space)
    }

    /// The schedule of invalidations (a sorted set by due time).
    pub fn schedule(&self) -> String {
        format!("{}#sched", self.space)
    }

    /// The hash of tag invalidation and clear times.
    pub fn records(&self) -> String {
        format!("{}#tags", self.space)
    }

    /// The lease key and the waiters' flag key for a cache key, in the same
    /// Cluster slot as its entry, and never equal to an entry key nor matched
    /// by a pattern over entries: `{prefix}:{ns}#lock:{key}` when the key has
    /// a hash tag of its own (which then decides the slot), else
    /// `{{prefix}:{ns}:{key}}#lock` (the whole entry key as the tag). `None`
    /// for the rare key whose braces make that impossible (`{}` or an unmatched
    /// `}` before any tag): such keys are loaded with in-process
    /// single-flight only.
    pub fn lease(&self, key: &str) -> Option<(String, String)> {
        let entry = self.entry(key);
        if let Some(open) = key.find('{') {
            return match key[open + 1..].find('}') {
                Some(len) if len > 0 => Some((
                    format!("{}#lock:{key}", self.space),
                    format!("{}#wait:{key}", self.space),
                )),
                _ => None,
            };
        }
        if key.contains('}') {
            return None;
        }
        Some((format!("{{{entry}}}#lock"), format!("{{{entry}}}#wait")))
    }

    /// The Redis key of a counter.
    pub fn counter(&self, key: &str) -> String {
        format!("{}#c:{key}", self.space)
    }
}

/// Escapes one layout component (see the module docs).
pub fn escape(component: &str) -> String {
    let mut out = String::with_capacity(component.len());
    for b in component.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_examples() {
        let plain = Layout::new("tiered", None, "users");
        assert_eq!(plain.entry("42"), "tiered:users:42");
        assert_eq!(plain.entry("a:b"), "tiered:users:a:b");
        assert_eq!(plain.counter("hits"), "tiered:users#c:hits");
        let tenant = Layout::new("tiered", Some("acme"), "users");
        assert_eq!(tenant.entry("42"), "tiered:acme/users:42");
        assert_eq!(escape("a:b/c{d}%"), "a%3Ab%2Fc%7Bd%7D%25");
    }

    #[test]
    fn lease_keys_share_the_entry_slot_and_never_look_like_entries() {
        let l = Layout::new("tiered", None, "users");
        assert_eq!(
            l.lease("42"),
            Some((
                "{tiered:users:42}#lock".into(),
                "{tiered:users:42}#wait".into()
            ))
        );
        // The key's own hash tag decides the slot, for the entry and the lease.
        assert_eq!(
            l.lease("user:{42}:profile").map(|(lock, _)| lock),
            Some("tiered:users#lock:user:{42}:profile".into())
        );
        // Not an entry key, and not matched by a pattern over entries.
        assert!(!l.lease("x").unwrap().0.starts_with("tiered:users:"));
        for bad in ["a{}b", "a}b"] {
            assert_eq!(l.lease(bad), None, "{bad}");
        }
    }

    #[test]
    fn components_never_collide() {
        // Pairs that naive joining would map to the same Redis key.
        let a = Layout::new("p", Some("a"), "b:c").entry("k");
        let b = Layout::new("p", Some("a:b"), "c").entry("k");
        assert_ne!(a, b);
        let no_tenant = Layout::new("p", None, "t/ns").entry("k");
        let tenant = Layout::new("p", Some("t"), "ns").entry("k");
        assert_ne!(no_tenant, tenant);
        let ns_with_hash = Layout::new("p", None, "ns#c").entry("k");
        let counter = Layout::new("p", None, "ns").counter("k");
        assert_ne!(ns_with_hash, counter);
        // A key cannot climb out of its namespace.
        let other = Layout::new("p", None, "x").entry("y");
        let climbing = Layout::new("p", None, "ns").entry(":x:y");
        assert_ne!(other, climbing);
    }
}
