//! The two background tasks of an instance's backplane link: the publisher,
//! which sends this instance's invalidations in order (and keeps them while
//! Redis is down), and the subscriber, which applies everyone else's and
//! handles gaps. See the [module docs](super) for the guarantees.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{Backplane, Change, Message, StreamId, StreamState, BLOCK, FORMAT, RETRY};
use crate::cache::Inner;
use crate::clock::{Timestamp, MAX_PEER_AHEAD};
use crate::invalidate::TagId;
use crate::l2::L2Error;
use crate::stats::Counter;
use crate::Value;

/// The most messages kept while Redis is unreachable; past it, a reset is
/// published instead (see the module docs).
const MAX_OUTBOX: usize = 10_000;
/// How far back (ms) a new subscriber starts reading, to cover messages sent
/// between its first L1 install and its first read.
const START_BACK_MS: u64 = 5_000;
/// The field of the records hash holding the last clear time.
const CLEAR_FIELD: &str = "clear";

/// One queued outgoing change.
struct Outgoing {
    change: Change,
    at: u64,
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<Outgoing>,
    overflowed: bool,
    /// Tag invalidations and the clear time that arrived while the queue was
    /// full, coalesced (latest time per tag): a reset alone would not record
    /// them in Redis for instances that read L2 later.
    tags: std::collections::HashMap<String, u64>,
    cleared: Option<u64>,
}

impl Outbox {
    /// Keeps what must not be lost of `change` outside the queue.
    fn coalesce(&mut self, change: &Change, at: u64) {
        match change {
            Change::Tags(tags) => {
                for tag in tags {
                    let t = self.tags.entry(tag.clone()).or_insert(at);
                    *t = (*t).max(at);
                }
            }
            Change::Cleared => self.cleared = Some(self.cleared.unwrap_or(at).max(at)),
            _ => {}
        }
    }
}

/// Counters behind `Stats::backplane`.
#[derive(Default)]
pub(crate) struct Counters {
    pub published: Counter,
    pub received: Counter,
    pub gaps: Counter,
    pub errors: Counter,
}

/// A snapshot of the backplane's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackplaneStats {
    /// Messages this instance published.
    pub published: u64,
    /// Messages from other instances applied here.
    pub received: u64,
    /// Gaps detected (each emptied L1 and reloaded the records).
    pub gaps: u64,
    /// Failed backplane calls (publish or read).
    pub errors: u64,
    /// Messages waiting to be published.
    pub outbox: u64,
    /// Subscribed, with the tag and clear records loaded (until then, and
    /// after a gap until they are reloaded, L2 reads are misses).
    pub ready: bool,
}

/// An instance's link to the backplane.
pub(crate) struct Link {
    transport: Arc<dyn Backplane>,
    stream: String,
    records: String,
    schedule: String,
    depended: String,
    sender: u64,
    outbox: Mutex<Outbox>,
    wake: Notify,
    started: AtomicBool,
    /// Wake-ups for lease waiters, by key.
    waiters: Mutex<std::collections::HashMap<String, std::sync::Weak<Notify>>>,
    /// A change taken off the queue and not yet published.
    in_flight: std::sync::atomic::AtomicUsize,
    /// The tag and clear records are loaded: entries read from L2 can be
    /// judged. False at start and after a gap, until they are (re)loaded.
    ready: AtomicBool,
    became_ready: Notify,
    counters: Counters,
}

impl Link {
    pub(crate) fn new(
        transport: Arc<dyn Backplane>,
        stream: String,
        records: String,
        schedule: String,
        depended: String,
    ) -> Self {
        Link {
            transport,
            stream,
            records,
            schedule,
            depended,
            sender: fastrand::u64(..),
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
            started: AtomicBool::new(false),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            waiters: Mutex::new(std::collections::HashMap::new()),
            ready: AtomicBool::new(false),
            became_ready: Notify::new(),
            counters: Counters::default(),
        }
    }

    pub(crate) fn stats(&self) -> BackplaneStats {
        let c = &self.counters;
        BackplaneStats {
            published: c.published.get(),
            received: c.received.get(),
            gaps: c.gaps.get(),
            errors: c.errors.get(),
            outbox: self.outbox.lock().queue.len() as u64,
            ready: self.ready.load(Ordering::Acquire),
        }
    }

    /// Waits (up to `limit`) until entries read from L2 can be judged against
    /// every invalidation this instance should know of. `false`: not yet —
    /// treat L2 as a miss rather than risk serving what was invalidated.
    pub(crate) async fn wait_ready(&self, limit: Duration) -> bool {
        if self.ready.load(Ordering::Acquire) {
            return true;
        }
        let notified = std::pin::pin!(self.became_ready.notified());
        if self.ready.load(Ordering::Acquire) {
            return true;
        }
        if let Some(sleep) = crate::load::sleep_until(tokio::time::Instant::now() + limit) {
            futures_util::future::select(notified, std::pin::pin!(sleep)).await;
        }
        self.ready.load(Ordering::Acquire)
    }

    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        if ready {
            self.became_ready.notify_waiters();
        }
    }

    /// A wake-up for waiters on `key` (see [`crate::load::lease`]).
    pub(crate) fn waiter(&self, key: &str) -> Arc<Notify> {
        let mut waiters = self.waiters.lock();
        if let Some(notify) = waiters.get(key).and_then(std::sync::Weak::upgrade) {
            return notify;
        }
        waiters.retain(|_, w| w.strong_count() > 0);
        let notify = Arc::new(Notify::new());
        waiters.insert(key.to_owned(), Arc::downgrade(&notify));
        notify
    }

    /// Wakes the waiters on `key`.
    pub(crate) fn wake(&self, key: &str) {
        let notify = self
            .waiters
            .lock()
            .get(key)
            .and_then(std::sync::Weak::upgrade);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// Whether every announced change has been published.
    pub(crate) fn drained(&self) -> bool {
        let outbox = self.outbox.lock();
        outbox.queue.is_empty() && !outbox.overflowed && self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Queues `change` for the other instances.
    pub(crate) fn announce(&self, change: Change, at: Timestamp) {
        {
            let mut outbox = self.outbox.lock();
            if outbox.queue.len() >= MAX_OUTBOX {
                outbox.overflowed = true;
                outbox.coalesce(&change, at.as_nanos());
            } else {
                outbox.queue.push_back(Outgoing {
                    change,
                    at: at.as_nanos(),
                });
            }
        }
        self.wake.notify_one();
    }

    /// Records that entries depend on `keys`.
    pub(crate) async fn mark_depended(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        if self
            .transport
            .mark_depended(&self.depended, keys)
            .await
            .is_err()
        {
            self.counters.errors.incr();
        }
    }

    /// Of `keys` (just removed or written), those some entry depends on.
    pub(crate) async fn depended_on(&self, keys: &[String]) -> Vec<String> {
        match self.transport.depended(&self.depended, keys).await {
            // One answer per key; any other count (a nil or short reply)
            // is as unknown as an error.
            Ok(found) if found.len() == keys.len() => keys
                .iter()
                .zip(found)
                .filter(|(_, d)| *d)
                .map(|(k, _)| k.clone())
                .collect(),
            _ => {
                // Unknown: assume they are (a harmless extra invalidation).
                self.counters.errors.incr();
                keys.to_vec()
            }
        }
    }

    /// Schedules `target` (`k:<key>` or `t:<tag>`) for invalidation at `at`.
    pub(crate) async fn schedule(&self, target: &str, at: Timestamp) -> Result<(), L2Error> {
        // Unique, so the same target can be scheduled at several times.
        let member = format!("{:016x}|{target}", fastrand::u64(..));
        let at_ms = at.as_nanos() / 1_000_000;
        self.transport
            .schedule(&self.schedule, &member, at_ms)
            .await
    }

    /// Starts the publisher and the subscriber (once; needs a runtime).
    pub(crate) fn start<V: Value>(self: &Arc<Self>, inner: &Arc<Inner<V>>) {
        if self.started.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        // If either task ends without the cache being dropped (its runtime
        // shut down), the next call on another runtime starts them again.
        struct Restart(Arc<Link>);
        impl Drop for Restart {
            fn drop(&mut self) {
                self.0.started.store(false, Ordering::Release);
            }
        }
        let (p, s) = (Restart(Arc::clone(self)), Restart(Arc::clone(self)));
        let weak = Arc::downgrade(inner);
        runtime.spawn(async move {
            publish(Arc::clone(&p.0), weak).await;
            drop(p);
        });
        let weak = Arc::downgrade(inner);
        runtime.spawn(async move {
            subscribe(Arc::clone(&s.0), weak).await;
            drop(s);
        });
    }
}

async fn pause() {
    if let Some(sleep) = crate::load::sleep_until(tokio::time::Instant::now() + RETRY) {
        sleep.await;
    }
}

/// Sends queued changes in order; on failure keeps them and retries.
async fn publish<V: Value>(link: Arc<Link>, inner: Weak<Inner<V>>) {
    loop {
        let next = {
            let mut outbox = link.outbox.lock();
            if outbox.overflowed {
                // Replace the queue by a reset (every instance empties its
                // L1), then the tag and clear invalidations it held, which
                // must still be recorded for entries read from L2 later.
                outbox.overflowed = false;
                let queued: Vec<Outgoing> = outbox.queue.drain(..).collect();
                for item in &queued {
                    outbox.coalesce(&item.change, item.at);
                }
                let at = now_nanos();
                outbox.queue.push_back(Outgoing {
                    change: Change::Reset,
                    at,
                });
                let tags: Vec<(String, u64)> = outbox.tags.drain().collect();
                for (tag, at) in tags {
                    outbox.queue.push_back(Outgoing {
                        change: Change::Tags(vec![tag]),
                        at,
                    });
                }
                if let Some(at) = outbox.cleared.take() {
                    outbox.queue.push_back(Outgoing {
                        change: Change::Cleared,
                        at,
                    });
                }
            }
            let next = outbox.queue.pop_front();
            if next.is_some() {
                link.in_flight.fetch_add(1, Ordering::AcqRel);
            }
            next
        };
        let Some(item) = next else {
            if inner.strong_count() == 0 {
                return;
            }
            // Wake on the next announcement, or check the owner now and then.
            let notified = std::pin::pin!(link.wake.notified());
            match crate::load::sleep_until(tokio::time::Instant::now() + Duration::from_secs(1)) {
                Some(sleep) => {
                    futures_util::future::select(notified, std::pin::pin!(sleep)).await;
                }
                None => notified.await,
            }
            continue;
        };
        let sent = send(&link, &item).await;
        if sent {
            link.in_flight.fetch_sub(1, Ordering::AcqRel);
        } else {
            link.counters.errors.incr();
            {
                let mut outbox = link.outbox.lock();
                outbox.queue.push_front(item);
                link.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            if inner.strong_count() == 0 {
                return;
            }
            pause().await;
        }
    }
}

async fn send(link: &Link, item: &Outgoing) -> bool {
    // Tag and clear times are recorded first: an instance that misses the
    // message (gap, or not started yet) finds them there.
    let remembered = match &item.change {
        Change::Tags(tags) => {
            let mut ok = true;
            for tag in tags {
                ok &= link
                    .transport
                    .remember(&link.records, tag, item.at)
                    .await
                    .is_ok();
            }
            ok
        }
        Change::Cleared => link
            .transport
            .remember(&link.records, CLEAR_FIELD, item.at)
            .await
            .is_ok(),
        _ => true,
    };
    if !remembered {
        return false;
    }
    let message = Message {
        format: FORMAT,
        sender: link.sender,
        at: item.at,
        change: item.change.clone(),
    };
    match link.transport.publish(&link.stream, message.encode()).await {
        Ok(_) => {
            link.counters.published.incr();
            true
        }
        Err(_) => false,
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Applies other instances' changes; detects and recovers from gaps.
///
/// The position starts 5 s back on the host clock, pulled back to the
/// stream's last id once it is known (so a host clock ahead of Redis's does
/// not skip messages). From the first successful look at the stream on, every
/// loss is a gap: the stream gone, reset, trimmed past us, an undecodable
/// message, or any failure talking to Redis (we cannot know what happened
/// meanwhile: a restart, a failover).
async fn subscribe<V: Value>(link: Arc<Link>, inner: Weak<Inner<V>>) {
    let start_ms = now_nanos() / 1_000_000;
    let mut after = StreamId {
        ms: start_ms.saturating_sub(START_BACK_MS),
        seq: 0,
    };
    let mut positioned = false;
    let mut reload = true;
    // Set by any failure; the next successful look at the stream is a gap.
    let mut disconnected = false;
    loop {
        if inner.strong_count() == 0 {
            return;
        }
        if reload {
            match link.transport.recall(&link.records).await {
                Ok(records) => {
                    if let Some(cache) = inner.upgrade() {
                        apply_records(&cache, records);
                    }
                    reload = false;
                    link.set_ready(true);
                }
                Err(_) => {
                    link.counters.errors.incr();
                    disconnected = true;
                    pause().await;
                    continue;
                }
            }
        }
        let state = match link.transport.state(&link.stream).await {
            Ok(state) => state,
            Err(_) => {
                link.counters.errors.incr();
                disconnected = true;
                pause().await;
                continue;
            }
        };
        if !positioned {
            after = after.min(state.last);
            positioned = true;
        }
        // A stream that is gone (or never was) while we stand at 0-0 is
        // simply empty: nothing to recover from again.
        let gone_and_known = !state.exists && after == StreamId::default();
        if disconnected || (state.lost_after(after) && !gone_and_known) {
            disconnected = false;
            recover(&link, &inner, &state);
            after = state.last;
            reload = true;
            pause().await;
            continue;
        }
        let before = after;
        run_due(&link, &inner).await;
        if let Some(l2) = inner.upgrade().and_then(|c| c.l2.clone()) {
            l2.nudge().await;
        }
        let messages = match link.transport.read(&link.stream, after, BLOCK).await {
            Ok(messages) => messages,
            Err(_) => {
                link.counters.errors.incr();
                disconnected = true;
                pause().await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        // Trimmed while we were reading? Then what we got may skip messages
        // right after `before`.
        match link.transport.state(&link.stream).await {
            Ok(state) if state.lost_after(before) => {
                recover(&link, &inner, &state);
                after = state.last;
                reload = true;
                continue;
            }
            Ok(_) => {}
            Err(_) => {
                link.counters.errors.incr();
                disconnected = true;
                continue;
            }
        }
        let Some(cache) = inner.upgrade() else {
            return;
        };
        for (id, body) in messages {
            after = id;
            match Message::decode(&body) {
                Some(message) if message.sender == link.sender => {}
                Some(message) => {
                    link.counters.received.incr();
                    apply(&cache, message);
                }
                // Another instance's message we cannot read (a newer format
                // during a rolling upgrade, or garbage): an invalidation we
                // cannot apply is a gap, not something to skip.
                None => {
                    link.counters.gaps.incr();
                    tracing::warn!(stream = %link.stream, %id,
                        "unreadable backplane message; L1 emptied");
                    cache.reset_l1();
                }
            }
        }
    }
}

/// Carries out the scheduled invalidations that are due (by the cache's
/// clock). Each is claimed first, so exactly one instance does it; what it
/// does reaches the others through the backplane as usual.
async fn run_due<V: Value>(link: &Link, inner: &Weak<Inner<V>>) {
    let Some(cache) = inner.upgrade() else {
        return;
    };
    let now_ms = cache.clock.now().as_nanos() / 1_000_000;
    let Ok(due) = link.transport.due(&link.schedule, now_ms, 100).await else {
        return; // the next round retries
    };
    let cache = crate::Cache::from_arc(cache);
    for member in due {
        if !matches!(
            link.transport.claim(&link.schedule, &member).await,
            Ok(true)
        ) {
            continue;
        }
        let target = member.split_once('|').map_or("", |(_, t)| t);
        let done = match target.split_once(':') {
            Some(("k", key)) => cache.remove(key).await.map(drop),
            Some(("t", tag)) => cache.invalidate_tag(tag),
            _ => Ok(()), // not ours: claimed and dropped
        };
        if let Err(error) = done {
            tracing::warn!(%target, %error, "scheduled invalidation failed");
        }
    }
}

/// Empties L1: some invalidations may have been lost.
fn recover<V: Value>(link: &Link, inner: &Weak<Inner<V>>, state: &StreamState) {
    link.counters.gaps.incr();
    link.set_ready(false);
    tracing::warn!(stream = %link.stream, last = %state.last,
        "backplane gap: invalidations may have been missed; L1 emptied");
    if let Some(cache) = inner.upgrade() {
        cache.reset_l1();
    }
}

/// A time from another instance or from Redis, taken no further ahead than
/// [`MAX_PEER_AHEAD`]. A clear or tag time decades ahead (a broken peer, a
/// corrupted record) would otherwise outdate every entry, or every entry of a
/// tag, for as long as the process lives — and, kept in the records, on every
/// instance that starts. Taken at the bound instead, it still invalidates
/// everything that exists now.
fn peer_time(at: u64, now: Timestamp) -> Timestamp {
    Timestamp::from_nanos(at).min(now.saturating_add(MAX_PEER_AHEAD))
}

/// Applies the tag and clear times recorded in Redis.
fn apply_records<V: Value>(inner: &Inner<V>, records: Vec<(String, u64)>) {
    let now = inner.clock.now();
    for (field, at) in records {
        let at = peer_time(at, now);
        if field == CLEAR_FIELD {
            inner.clear_local(at);
        } else {
            inner
                .invalidations
                .invalidate_at(&[TagId::from(field.as_str())], at, now);
        }
    }
}

/// Applies one message from another instance to this instance's L1.
fn apply<V: Value>(inner: &Inner<V>, message: Message) {
    let at = peer_time(message.at, inner.clock.now());
    match message.change {
        Change::Removed(keys) => {
            for key in keys {
                inner.remove_from_l1(&key);
            }
        }
        Change::Written { key, version } => inner.drop_older(&key, version),
        Change::Tags(tags) => {
            let tags: Vec<TagId> = tags.iter().map(|t| TagId::from(t.as_str())).collect();
            inner
                .invalidations
                .invalidate_at(&tags, at, inner.clock.now());
        }
        Change::Cleared => inner.clear_local(at),
        Change::Pattern(pattern) => inner.remove_matching_from_l1(&pattern),
        Change::Filled(key) => {
            if let Some(link) = &inner.backplane {
                link.wake(&key);
            }
        }
        Change::Reset => inner.reset_l1(),
    }
}
