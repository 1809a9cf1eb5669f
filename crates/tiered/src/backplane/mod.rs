//! The backplane: every instance's L1 learns of every other instance's
//! invalidations.
//!
//! With L2 shared, an instance that removes, sets or invalidates something
//! changes L2 at once — but every *other* instance may hold the old value in its
//! own L1. The backplane carries the change to them: removed keys, new versions
//! of set keys, invalidated tags and dependencies, namespace clears. Each
//! instance applies what others sent and ignores its own messages.
//!
//! # Why a Redis Stream, not pub/sub
//!
//! Pub/sub forgets: a message published while an instance is reconnecting is
//! gone, and that instance serves the old value until its TTL — the most common
//! coherence bug in multi-tier caches. Messages here go to a Redis **Stream**
//! (`XADD`, capped with `MAXLEN ~`). Each instance remembers the id of the last
//! message it applied and reads on from there (`XREAD BLOCK`), so after a
//! disconnect it simply catches up. What it cannot catch up on, it detects — a
//! **gap**:
//!
//! * the stream was trimmed past the last id it applied (its first entry is
//!   newer than that id, or it is empty but has a newer last id), or entries
//!   after it were deleted (`max-deleted-entry-id`);
//! * the stream was reset (Redis restarted without persistence, or failed over
//!   to a replica that had not seen it): its last id is older than ours, or it
//!   is gone.
//!
//! On a gap the instance empties its L1 (the only safe answer to "some
//! invalidations were lost") and reloads the tag and clear records, which are
//! kept in Redis beside the stream (see below).
//!
//! # The staleness bound
//!
//! While Redis is reachable, an invalidation reaches other instances as fast as
//! `XREAD BLOCK` returns (BENCHMARKS.md has the measured p50/p99). When Redis is
//! unreachable, an instance cannot hear anything; it keeps serving its L1
//! entries only within their own TTL and grace, exactly as without a backplane.
//! Once Redis is reachable again, the subscriber is back within its retry delay
//! ([`RETRY`], 100 ms) plus one read: it replays what it missed or, on a gap,
//! empties L1. So: **after Redis is reachable again, an instance serves a value
//! older than the newest invalidation for at most about 200 ms plus the time to
//! read the backlog** — under the 1 s target.
//!
//! An invalidation issued while Redis is down is not lost either: it is applied
//! locally at once and its message waits in the outbox (bounded), published in
//! order when Redis is back. If the outbox overflows, the instance publishes a
//! *reset* when it can, which makes every other instance empty its L1.
//!
//! # Dependencies across instances
//!
//! An entry that depends on key K carries the tag `k:K` (see
//! [`crate::invalidate`]). When a dependant goes to L2, K is added to a Redis
//! set of depended-on keys; when any instance removes or sets K and finds it
//! in that set, it invalidates `k:K` like a tag — recorded in Redis and sent
//! to everyone — so every instance drops its dependants, including copies it
//! would read from L2 later, transitively (inherited tags) and cycle-safe (no
//! graph walk).
//!
//! # Tags and clears outlive the stream
//!
//! An entry read from L2 is judged by its creation time against the times of
//! the tag invalidations and clears it may have missed (see
//! [`crate::invalidate`]). So those times are also written to Redis (a hash of
//! tag → time, and the clear time), and an instance loads them when it starts
//! and after a gap. An instance that starts after an invalidation therefore
//! never reads an L2 entry it invalidated.

//! # Limits (known, not yet fixed)
//!
//! * **Clocks.** Tag and clear times, and entry versions, come from each
//!   instance's clock; an instance whose clock runs ahead can write L2 entries
//!   that look newer than an invalidation. Keep clocks in sync (NTP).
//! * **Slow loads and removals.** A removal leaves a versioned tombstone in L2
//!   for 60 s, which refuses the L2 write of any load that started before it
//!   (on any instance). A load still running after that (a hard timeout above
//!   60 s) could put its old value back. A removal replayed after an outage is
//!   a plain `DEL`, without that protection.
//! * **Dependencies across instances.** A removal reaches the L1 dependants of
//!   every instance, but an instance that never declared the dependency judges
//!   an L2 copy of a dependant without it.
//! * **Records.** The tag-time hash in Redis grows by one field per distinct
//!   tag ever invalidated. An instance prunes its own copy after the longest
//!   lifetime it has seen; a tagged L2 entry created before the newest pruned
//!   record is then refused (a reload, never a stale read).
//! * **Throughput.** The publisher sends one message per round trip; past
//!   about a thousand invalidations a second per instance the outbox grows, and
//!   an overflow (10,000) resets every instance's L1.
//! * **Redis settings.** The stream and the records have no TTL: use a
//!   `noeviction` or `volatile-*` eviction policy, or an evicted stream is
//!   (correctly, but expensively) a gap for everyone.

pub(crate) mod redis;
pub(crate) mod subscriber;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::l2::L2Future;

pub use self::redis::MAX_STREAM_LEN;

/// The subscriber's delay between attempts while Redis is unreachable.
pub const RETRY: Duration = Duration::from_millis(100);
/// How long one `XREAD` blocks waiting for messages.
pub(crate) const BLOCK: Duration = Duration::from_millis(1000);

/// A position in the stream: a Redis stream id `ms-seq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl StreamId {
    /// Parses `ms-seq`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// What the stream looks like now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamState {
    /// The stream exists.
    pub exists: bool,
    /// The id of the last message ever added (`0-0` if none).
    pub last: StreamId,
    /// The newest id deleted with `XDEL` (`0-0` if none).
    pub max_deleted: StreamId,
    /// The id of the oldest entry still there (`0-0` if none).
    pub first: StreamId,
    /// Entries in the stream now.
    pub length: u64,
    /// Entries ever added (`entries-added`, Redis 7; 0 if unknown).
    pub added: u64,
}

impl StreamState {
    /// Whether messages after `after` may have been lost: the stream is gone
    /// or was reset (its last id is older than `after`), or entries after
    /// `after` were trimmed or deleted. Conservative: when the entry *at*
    /// `after` was trimmed too, it reports a gap even if nothing unseen was
    /// (a subscriber that far behind has almost surely missed some).
    pub fn lost_after(&self, after: StreamId) -> bool {
        // Anything ever removed from the stream? (Unknown before Redis 7:
        // assume so.)
        let removed_any = self.added == 0 || self.added > self.length;
        !self.exists
            || self.last < after
            || self.max_deleted > after
            || (removed_any && self.length == 0 && self.last > after)
            || (removed_any && self.length > 0 && self.first > after)
    }
}

/// Transport for invalidation messages and the records that outlive them.
/// [`crate::RedisL2`] implements it on a Redis Stream.
pub trait Backplane: Send + Sync + 'static {
    /// Appends `message` to `stream`.
    fn publish<'a>(&'a self, stream: &'a str, message: Vec<u8>) -> L2Future<'a, StreamId>;

    /// The stream's state (for gap detection).
    fn state<'a>(&'a self, stream: &'a str) -> L2Future<'a, StreamState>;

    /// Messages after `after`, waiting up to `wait` for the first (on a
    /// connection of its own: a blocked read must not hold up other calls).
    fn read<'a>(
        &'a self,
        stream: &'a str,
        after: StreamId,
        wait: Duration,
    ) -> L2Future<'a, Vec<(StreamId, Vec<u8>)>>;

    /// Records `field` → `at` in the hash `key`, keeping the larger time.
    fn remember<'a>(&'a self, key: &'a str, field: &'a str, at: u64) -> L2Future<'a, ()>;

    /// Every field → time in the hash `key`.
    fn recall<'a>(&'a self, key: &'a str) -> L2Future<'a, Vec<(String, u64)>>;

    /// Adds `keys` to the set `set` (the keys some entry depends on).
    fn mark_depended<'a>(&'a self, set: &'a str, keys: &'a [String]) -> L2Future<'a, ()>;

    /// For each of `keys`, whether it is in the set `set`.
    fn depended<'a>(&'a self, set: &'a str, keys: &'a [String]) -> L2Future<'a, Vec<bool>>;

    /// Adds `member` to the schedule `key`, due at `at_ms` (Unix ms).
    fn schedule<'a>(&'a self, key: &'a str, member: &'a str, at_ms: u64) -> L2Future<'a, ()>;

    /// Up to `limit` members of the schedule `key` due at or before `now_ms`.
    fn due<'a>(&'a self, key: &'a str, now_ms: u64, limit: usize) -> L2Future<'a, Vec<String>>;

    /// Takes `member` off the schedule; `true` for the one caller that did
    /// (so exactly one instance carries a scheduled invalidation out).
    fn claim<'a>(&'a self, key: &'a str, member: &'a str) -> L2Future<'a, bool>;
}

/// One invalidation, as it travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Message {
    /// Wire format version (1).
    pub format: u8,
    /// The sending instance (its own messages are skipped).
    pub sender: u64,
    /// When it was issued, on the sender's clock (nanos).
    pub at: u64,
    pub change: Change,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Change {
    /// Keys removed.
    Removed(Vec<String>),
    /// A key written with this version: older copies are dropped.
    Written { key: String, version: u64 },
    /// Tag ids invalidated (`t:…` tags, `k:…` dependencies).
    Tags(Vec<String>),
    /// The namespace was cleared.
    Cleared,
    /// The sender lost messages it meant to publish: drop everything.
    Reset,
    /// Keys matching a glob pattern were removed.
    Pattern(String),
    /// A lease holder stored a value for this key in L2 (wakes waiters).
    Filled(String),
    // New variants go at the end: postcard encodes the variant's index.
}

/// The current wire format.
pub(crate) const FORMAT: u8 = 1;

impl Message {
    pub(crate) fn encode(&self) -> Vec<u8> {
        // A plain enum of strings and integers: postcard cannot fail on it.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// `None` for bytes that are not a message of a known format.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let m: Message = postcard::from_bytes(bytes).ok()?;
        (m.format == FORMAT).then_some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    #[test]
    fn gaps_are_detected_and_tails_are_not_gaps() {
        let live = StreamState {
            exists: true,
            last: id(50),
            max_deleted: id(0),
            first: id(10),
            length: 41,
            added: 60,
        };
        let never_trimmed = StreamState { added: 41, ..live };
        assert!(!never_trimmed.lost_after(id(0)), "reading from the start");
        assert!(!live.lost_after(id(20)), "behind, nothing trimmed");
        assert!(!live.lost_after(id(50)), "at the tail");
        let trimmed = StreamState {
            first: id(30),
            ..live
        };
        assert!(trimmed.lost_after(id(20)), "entries after 20 were trimmed");
        assert!(!trimmed.lost_after(id(30)));
        let emptied = StreamState {
            length: 0,
            first: id(0),
            ..live
        };
        assert!(emptied.lost_after(id(20)));
        assert!(!emptied.lost_after(id(50)));
        let reset = StreamState {
            last: id(5),
            first: id(1),
            ..live
        };
        assert!(reset.lost_after(id(20)), "the stream restarted below us");
        assert!(StreamState::default().lost_after(id(20)), "gone");
        let deleted = StreamState {
            max_deleted: id(25),
            ..live
        };
        assert!(deleted.lost_after(id(20)));
        assert_eq!(StreamId::parse("12-3"), Some(StreamId { ms: 12, seq: 3 }));
        assert_eq!(StreamId::parse("x-3"), None);
        assert_eq!(id(7).to_string(), "7-0");
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let m = Message {
            format: FORMAT,
            sender: 9,
            at: 1,
            change: Change::Written {
                key: "k".into(),
                version: 3,
            },
        };
        assert_eq!(Message::decode(&m.encode()), Some(m.clone()));
        assert_eq!(Message::decode(b"garbage"), None);
        let future = Message { format: 2, ..m };
        assert_eq!(Message::decode(&future.encode()), None);
    }
}
