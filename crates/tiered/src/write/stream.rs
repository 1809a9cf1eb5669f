//! A Redis Stream as the write-behind queue, for several instances sharing L2.
//!
//! Records go to the stream `{tiered-wb:<namespace>}` (dead letters to
//! `{tiered-wb:<namespace>}:dead`, the record count to
//! `{tiered-wb:<namespace>}:n`, all in the same Cluster slot). Every
//! instance's flusher reads through one consumer group, so any instance
//! drains any instance's writes; an entry is acknowledged (`XACK`) and
//! deleted (`XDEL`) once the store has all its records (or the dead-letter
//! queue has those it refused).
//!
//! # One entry, many records
//!
//! Up to two `XADD`s are on the wire at once ([`XADD_IN_FLIGHT`]); appends
//! made while both are go out together in the next one, as one stream entry holding each record in its own `r` field (at most
//! [`ENTRY_RECORDS`] records or [`ENTRY_BYTES`] bytes; then the next entry).
//! This is group commit, as the write-ahead log does with `fdatasync`: Redis
//! does its per-entry work (`XADD`, `XREADGROUP`, `XACK`, `XDEL`, and with
//! `appendfsync always` an AOF flush) once for the group instead of once per
//! record — that work, not this process, bounded the queue when every record
//! was its own entry. A lone append still goes out at once, alone. The cost:
//! an entry is acknowledged only when every record in it is confirmed, so a
//! crash replays the confirmed records of a partly flushed entry too, which
//! the store's version guard makes harmless (it does the same for a record
//! confirmed by the store whose `XACK` never happened).
//!
//! **Upgrading:** instances from before group commit read only the first
//! record of an entry and would acknowledge the rest unread. Stop every
//! older instance sharing the stream before starting one of this version
//! (what they left queued is read correctly by the new one).
//!
//! # What is durable when a call returns
//!
//! `set_behind` returns once `XADD` has answered: the record is in Redis's
//! memory. It survives the *instance* crashing (another flusher, or this one
//! restarted, delivers it). Surviving a *Redis* crash is Redis's own
//! durability: with `appendonly yes` and `appendfsync everysec` (the usual
//! setting) up to about a second of acknowledged writes can be lost when the
//! Redis host dies; with `appendfsync always`, none. Replication to replicas
//! is asynchronous, so a failover can lose the last writes too. Without AOF
//! a Redis restart loses the queue. If that is not acceptable, use the local
//! [write-ahead log](super::wal).
//!
//! # Crashed instances
//!
//! A record read by a flusher that then died stays *pending* for its
//! consumer. On start, a flusher first re-reads its own pending records (give
//! each instance a stable [`StreamOptions::consumer`] name to resume at
//! once); every [`StreamOptions::claim_idle`] it also sweeps the stream and
//! claims (`XAUTOCLAIM`) records any consumer — itself included, for an
//! acknowledgement that failed — has held that long, read after read until
//! the sweep is through.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Value as RValue;
use tokio::sync::{mpsc, oneshot};

use super::queue::{Dead, Queue, QueueFuture, Queued};
use super::record::Record;
use super::WriteError;
use crate::l2::redis::Conn;
use crate::l2::RedisL2;

/// Settings of the Redis Stream queue.
#[derive(Debug)]
pub struct StreamOptions {
    redis: RedisL2,
    /// The consumer group every instance reads through (default `tiered`).
    pub group: String,
    /// This instance's consumer name: stable across restarts so a restarted
    /// instance resumes its own pending records at once (default: random).
    pub consumer: String,
    /// Claim records another consumer has held this long (default 30 s).
    pub claim_idle: Duration,
}

impl StreamOptions {
    /// A queue in the Redis (standalone or Cluster) that `redis` connects to.
    /// Build it with [`RedisL2::builder`] or [`RedisL2::cluster`].
    pub fn new(redis: RedisL2) -> Self {
        StreamOptions {
            redis,
            group: "tiered".into(),
            consumer: format!("consumer-{:016x}", fastrand::u64(..)),
            claim_idle: Duration::from_secs(30),
        }
    }

    /// Sets [`consumer`](Self::consumer).
    #[must_use]
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = name.into();
        self
    }

    /// Sets [`claim_idle`](Self::claim_idle).
    #[must_use]
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }
}

/// At most this many records go into one stream entry.
pub const ENTRY_RECORDS: usize = 256;
/// An entry takes no more records once its records' bytes reach this.
pub const ENTRY_BYTES: usize = 1 << 20;
/// `XADD`s on the wire at once. With one, Redis's `appendfsync always`
/// flush and the round trip left both sides idle in turn; a second in
/// flight acknowledged 15–40% more writes there (`write-paths`,
/// BENCHMARKS.md).
pub const XADD_IN_FLIGHT: usize = 2;

/// An encoded record waiting for the next `XADD`, and who to tell.
type Append = (Vec<u8>, oneshot::Sender<Result<(), String>>);

/// Entries handed to the flusher and not acknowledged yet.
#[derive(Default)]
struct Handed {
    /// Local id → the stream id of its entry.
    ids: HashMap<u64, Arc<str>>,
    entries: HashMap<Arc<str>, Entry>,
}

struct Entry {
    /// Records the entry was written with (what its `XACK` takes off the count).
    records: u64,
    /// Local ids of its records.
    ids: Vec<u64>,
    /// Those not confirmed yet: at none, the entry is acknowledged.
    open: HashSet<u64>,
}

/// The Redis Stream queue.
pub(crate) struct StreamQueue {
    options: StreamOptions,
    key: String,
    dead_key: String,
    count_key: String,
    /// To the task that writes entries (see the module docs).
    appends: mpsc::UnboundedSender<Append>,
    ack_script: redis::Script,
    handed: Mutex<Handed>,
    next_id: AtomicU64,
    /// Records per entry in the last read that found any: the next read
    /// asks for as many entries as should hold the records the flusher has
    /// room for. The last read, not a lifetime average, so that a shift from
    /// small entries to full ones costs at most one oversized read.
    per_entry: AtomicU64,
    /// Own pending records (from before a restart) are read first, from
    /// this id on.
    own_pending_done: AtomicBool,
    own_cursor: Mutex<String>,
    /// When the last sweep for records idle under other consumers started.
    last_claim: Mutex<Instant>,
    /// Where the sweep in progress goes on (`XAUTOCLAIM`'s cursor); `None`
    /// between sweeps. A sweep goes on at every read until it has been
    /// through the whole stream, so a dead instance's backlog longer than one
    /// read is claimed in one go, not one read per `claim_idle`.
    claim_cursor: Mutex<Option<String>>,
    /// Records this instance has appended, ever.
    appended: AtomicU64,
    /// The depth is `base + appended`: `base` is the record count as last
    /// read less the appends made before that read began. So an append that
    /// lands while a count is on its way is never lost from the depth (one
    /// the count already holds is counted twice, which only makes `flush`
    /// look again). Nothing is ever stored over a concurrent append.
    base: AtomicI64,
    max_version: u64,
}

fn queue_error(e: redis::RedisError) -> WriteError {
    WriteError::Queue(format!("Redis: {e}"))
}

fn protocol(command: &str) -> WriteError {
    WriteError::Queue(format!("Redis: unexpected reply to {command}"))
}

impl StreamQueue {
    pub async fn open(options: StreamOptions, namespace: &str) -> Result<Self, WriteError> {
        let key = format!("{{tiered-wb:{namespace}}}");
        let dead_key = format!("{key}:dead");
        let count_key = format!("{key}:n");
        let mut conn = options
            .redis
            .conn()
            .await
            .map_err(|e| WriteError::Queue(format!("Redis: {e}")))?;
        let (appends, waiting) = mpsc::unbounded_channel();
        tokio::spawn(write_entries(
            conn.clone(),
            key.clone(),
            count_key.clone(),
            waiting,
        ));
        let mut queue = StreamQueue {
            options,
            dead_key,
            count_key,
            appends,
            // KEYS: the stream, the count; ARGV: the group, then pairs of
            // entry id and its record count. Per entry, not one XDEL for
            // all, to count only what this call deleted. Returns the count
            // after (nil if it is not a number).
            ack_script: redis::Script::new(
                r"local gone = 0
                  for i = 2, #ARGV, 2 do
                    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
                    if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
                      gone = gone + tonumber(ARGV[i + 1])
                    end
                  end
                  if redis.call('XLEN', KEYS[1]) == 0 then
                    redis.pcall('SET', KEYS[2], 0)
                    return 0
                  end
                  if gone > 0 then
                    redis.pcall('DECRBY', KEYS[2], gone)
                  end
                  local count = redis.pcall('GET', KEYS[2])
                  if not count then
                    return 0
                  end
                  return tonumber(count)",
            ),
            handed: Mutex::new(Handed::default()),
            next_id: AtomicU64::new(1),
            // Nothing read yet: guess small entries, so a first read of a
            // long backlog of full ones does not take far more than asked.
            per_entry: AtomicU64::new(16),
            own_pending_done: AtomicBool::new(false),
            own_cursor: Mutex::new("0".into()),
            last_claim: Mutex::new(Instant::now()),
            claim_cursor: Mutex::new(None),
            appended: AtomicU64::new(0),
            base: AtomicI64::new(0),
            max_version: 0,
            key,
        };
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&queue.key)
            .arg(&queue.options.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<RValue>(&mut conn)
            .await;
        if let Err(e) = created {
            if e.code() != Some("BUSYGROUP") {
                return Err(queue_error(e));
            }
        }
        // Versions must keep growing past what is queued.
        let last: RValue = redis::cmd("XREVRANGE")
            .arg(&queue.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(queue_error)?;
        queue.max_version = entries(last, "XREVRANGE")?
            .iter()
            .flat_map(|(_, fields)| records(fields))
            .filter_map(|r| Record::decode(r).map(|r| r.version))
            .max()
            .unwrap_or(0);
        // A stream written before the count existed held one record per
        // entry: start the count there.
        let len: u64 = redis::cmd("XLEN")
            .arg(&queue.key)
            .query_async(&mut conn)
            .await
            .map_err(queue_error)?;
        redis::cmd("SET")
            .arg(&queue.count_key)
            .arg(len)
            .arg("NX")
            .query_async::<RValue>(&mut conn)
            .await
            .map_err(queue_error)?;
        queue.refresh_depth(&mut conn).await;
        Ok(queue)
    }

    pub fn max_version(&self) -> u64 {
        self.max_version
    }

    async fn conn(&self) -> Result<Conn, WriteError> {
        self.options
            .redis
            .conn()
            .await
            .map_err(|e| WriteError::Queue(format!("Redis: {e}")))
    }

    /// Takes `count`, read from Redis after `appended` appends, as the depth
    /// (plus the appends made since: see `base`).
    fn set_depth(&self, count: u64, appended: u64) {
        let base = i64::try_from(count)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(appended).unwrap_or(i64::MAX));
        self.base.store(base, Ordering::Relaxed);
    }

    /// Reads the record count. It is advisory: if it cannot be read or is
    /// not a number, the local figure stays and nothing else fails.
    async fn refresh_depth(&self, conn: &mut Conn) {
        let appended = self.appended.load(Ordering::Relaxed);
        let count: Result<Option<i64>, _> = redis::cmd("GET")
            .arg(&self.count_key)
            .query_async(conn)
            .await;
        match count {
            // Below zero only if something else deleted entries.
            Ok(count) => self.set_depth(count.unwrap_or(0).max(0) as u64, appended),
            Err(e) => {
                tracing::warn!(key = %self.count_key, error = %e, "write-behind stream: cannot read the record count");
            }
        }
    }

    /// How many entries to read for about `max` records.
    fn entries_for(&self, max: usize) -> usize {
        let per_entry = usize::try_from(self.per_entry.load(Ordering::Relaxed)).unwrap_or(1);
        (max / per_entry.max(1)).max(1)
    }

    /// Hands the records of stream entries to the flusher; acknowledges (and
    /// drops) entries with no readable record, which nothing could ever apply.
    async fn hand_out(
        &self,
        conn: &mut Conn,
        found: Vec<(String, Fields)>,
    ) -> Result<Vec<Queued>, WriteError> {
        let mut out = Vec::with_capacity(found.len());
        let mut junk = Vec::new();
        let entries = found.len() as u64;
        let mut records_read = 0;
        for (stream_id, fields) in found {
            let written = records(&fields).count() as u64;
            records_read += written;
            let readable: Vec<Record> = records(&fields).filter_map(Record::decode).collect();
            if readable.len() as u64 != written {
                tracing::error!(stream = %self.key, id = %stream_id,
                    dropped = written - readable.len() as u64,
                    "write-behind stream: unreadable record dropped");
            }
            if readable.is_empty() {
                junk.push((stream_id, written));
                continue;
            }
            let stream_id: Arc<str> = stream_id.into();
            let mut handed = self.handed.lock();
            let ids: Vec<u64> = readable
                .into_iter()
                .map(|record| {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    out.push(Queued { id, record });
                    handed.ids.insert(id, Arc::clone(&stream_id));
                    id
                })
                .collect();
            let entry = Entry {
                records: written,
                open: ids.iter().copied().collect(),
                ids,
            };
            // Handed out again (claimed back, or re-read after a restart):
            // the records of the earlier hand-out are superseded.
            if let Some(old) = handed.entries.insert(stream_id, entry) {
                for id in old.ids {
                    handed.ids.remove(&id);
                }
            }
        }
        if let Some(per_entry) = records_read.checked_div(entries) {
            self.per_entry.store(per_entry.max(1), Ordering::Relaxed);
        }
        if !junk.is_empty() {
            // The records read stay handed out whatever happens here: a
            // junk entry left behind is found again by a later sweep.
            if let Err(e) = self.ack(conn, &junk).await {
                tracing::warn!(stream = %self.key, error = %e, "write-behind stream: cannot drop unreadable entries");
            }
        }
        Ok(out)
    }

    /// Acknowledges and deletes entries, each with the number of records it
    /// was written with. The count goes down only by entries this call
    /// deleted: another instance may have acknowledged the same entry (it
    /// claimed it while this one held it), or a retried call may repeat
    /// one. An empty stream resets the count to zero, so any drift ends there.
    /// Returns the count after, if it is a number.
    async fn ack(
        &self,
        conn: &mut Conn,
        done: &[(String, u64)],
    ) -> Result<Option<u64>, WriteError> {
        let mut call = self.ack_script.key(&self.key);
        call.key(&self.count_key).arg(&self.options.group);
        for (stream_id, records) in done {
            call.arg(stream_id).arg(records);
        }
        let count: Option<i64> = call.invoke_async(conn).await.map_err(queue_error)?;
        // Below zero only if something else deleted entries.
        Ok(count.map(|c| c.max(0) as u64))
    }

    async fn read_group(
        &self,
        conn: &mut Conn,
        max: usize,
        from: &str,
    ) -> Result<Vec<(String, Fields)>, WriteError> {
        let reply: RValue = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.options.group)
            .arg(&self.options.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(from)
            .query_async(conn)
            .await
            .map_err(queue_error)?;
        let streams = match reply {
            RValue::Nil => return Ok(Vec::new()),
            RValue::Array(streams) => streams,
            RValue::Map(pairs) => pairs
                .into_iter()
                .map(|(k, v)| RValue::Array(vec![k, v]))
                .collect(),
            _ => return Err(protocol("XREADGROUP")),
        };
        let mut out = Vec::new();
        for stream in streams {
            let RValue::Array(mut pair) = stream else {
                return Err(protocol("XREADGROUP"));
            };
            if pair.len() != 2 {
                return Err(protocol("XREADGROUP"));
            }
            out.extend(entries(pair.swap_remove(1), "XREADGROUP")?);
        }
        Ok(out)
    }

    /// Up to about `max` records: this consumer's own unconfirmed ones
    /// first after a restart, then a claim sweep's when one is due or under
    /// way, then new ones.
    async fn read(&self, conn: &mut Conn, max: usize) -> Result<Vec<Queued>, WriteError> {
        if !self.own_pending_done.load(Ordering::Relaxed) {
            // After a restart: what this consumer read and never
            // confirmed, walked with a cursor.
            let cursor = self.own_cursor.lock().clone();
            let found = self
                .read_group(conn, self.entries_for(max), &cursor)
                .await?;
            match found.last() {
                None => self.own_pending_done.store(true, Ordering::Relaxed),
                Some((last, _)) => {
                    *self.own_cursor.lock() = last.clone();
                    return self.hand_out(conn, found).await;
                }
            }
        }
        let cursor = {
            let mut cursor = self.claim_cursor.lock();
            let mut last = self.last_claim.lock();
            if cursor.is_none() && last.elapsed() >= self.options.claim_idle {
                *last = Instant::now();
                *cursor = Some("0-0".into());
            }
            cursor.clone()
        };
        if let Some(cursor) = cursor {
            let reply: RValue = redis::cmd("XAUTOCLAIM")
                .arg(&self.key)
                .arg(&self.options.group)
                .arg(&self.options.consumer)
                .arg(u64::try_from(self.options.claim_idle.as_millis()).unwrap_or(u64::MAX))
                .arg(&cursor)
                .arg("COUNT")
                .arg(self.entries_for(max))
                .query_async(conn)
                .await
                .map_err(queue_error)?;
            let RValue::Array(mut parts) = reply else {
                return Err(protocol("XAUTOCLAIM"));
            };
            if parts.len() < 2 {
                return Err(protocol("XAUTOCLAIM"));
            }
            let claimed = entries(parts.swap_remove(1), "XAUTOCLAIM")?;
            // The cursor to go on from; `0-0` once the sweep is through.
            let next = match parts.swap_remove(0) {
                RValue::BulkString(b) => String::from_utf8(b).ok(),
                RValue::SimpleString(s) => Some(s),
                _ => None,
            }
            .filter(|next| next != "0-0" && is_stream_id(next));
            *self.claim_cursor.lock() = next;
            if !claimed.is_empty() {
                return self.hand_out(conn, claimed).await;
            }
        }
        let found = self.read_group(conn, self.entries_for(max), ">").await?;
        self.hand_out(conn, found).await
    }
}

impl Queue for StreamQueue {
    fn depth(&self) -> u64 {
        let appended = i64::try_from(self.appended.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let depth = self.base.load(Ordering::Relaxed).saturating_add(appended);
        u64::try_from(depth).unwrap_or(0)
    }

    fn bytes(&self) -> u64 {
        0
    }

    fn append(&self, record: Record) -> QueueFuture<'_, ()> {
        Box::pin(async move {
            let (done, written) = oneshot::channel();
            let gone = || WriteError::Queue("Redis: the stream writer has stopped".into());
            self.appends
                .send((record.encode(), done))
                .map_err(|_| gone())?;
            written
                .await
                .map_err(|_| gone())?
                .map_err(WriteError::Queue)?;
            self.appended.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }

    fn take(&self, max: usize) -> QueueFuture<'_, Vec<Queued>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let taken = self.read(&mut conn, max).await;
            // After the read, so that everything it handed out is in the
            // count (read before, an entry a peer added in between could be
            // handed out uncounted, and its acknowledgement take the depth
            // to zero with records still held).
            self.refresh_depth(&mut conn).await;
            taken
        })
    }

    fn confirm(&self, ids: Vec<u64>) -> QueueFuture<'_, ()> {
        Box::pin(async move {
            // Entries whose every record is confirmed now, with their
            // record counts.
            let done: Vec<(Arc<str>, u64)> = {
                let mut handed = self.handed.lock();
                let Handed { ids: map, entries } = &mut *handed;
                let mut done = Vec::new();
                for id in &ids {
                    let Some(stream_id) = map.get(id) else {
                        continue;
                    };
                    if let Some(entry) = entries.get_mut(stream_id) {
                        entry.open.remove(id);
                        if entry.open.is_empty() && !done.contains(stream_id) {
                            done.push(Arc::clone(stream_id));
                        }
                    }
                }
                done.into_iter()
                    .filter_map(|s| {
                        let records = entries.get(&s)?.records;
                        Some((s, records))
                    })
                    .collect()
            };
            if done.is_empty() {
                return Ok(());
            }
            let records: u64 = done.iter().map(|(_, r)| r).sum();
            let ack: Vec<(String, u64)> = done.iter().map(|(s, r)| (s.to_string(), *r)).collect();
            let appended = self.appended.load(Ordering::Relaxed);
            let acked = match self.conn().await {
                Ok(mut conn) => self.ack(&mut conn, &ack).await,
                Err(e) => Err(e),
            };
            // Forgotten whatever the outcome: the flusher does not confirm
            // again, and an entry the acknowledgement missed is still
            // pending in Redis, where a sweep (this instance's too) hands it
            // out again.
            {
                let mut handed = self.handed.lock();
                for (stream_id, _) in &done {
                    if let Some(entry) = handed.entries.remove(stream_id) {
                        for id in entry.ids {
                            handed.ids.remove(&id);
                        }
                    }
                }
            }
            match acked? {
                // The stream's count, with what peers added and confirmed.
                Some(count) => self.set_depth(count, appended),
                // No count: lower the depth by what was confirmed, to no
                // less than zero (then every later append still shows).
                None => {
                    let records = i64::try_from(records).unwrap_or(i64::MAX);
                    let floor =
                        -i64::try_from(self.appended.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
                    let _ = self
                        .base
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                            Some(b.saturating_sub(records).max(floor))
                        });
                }
            }
            Ok(())
        })
    }

    fn bury(&self, ids: Vec<u64>, record: Record, reason: String) -> QueueFuture<'_, ()> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            redis::cmd("XADD")
                .arg(&self.dead_key)
                .arg("*")
                .arg("r")
                .arg(record.encode())
                .arg("reason")
                .arg(reason)
                .query_async::<RValue>(&mut conn)
                .await
                .map_err(queue_error)?;
            self.confirm(ids).await
        })
    }

    fn dead(&self) -> QueueFuture<'_, Vec<Dead>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let reply: RValue = redis::cmd("XRANGE")
                .arg(&self.dead_key)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .map_err(queue_error)?;
            Ok(entries(reply, "XRANGE")?
                .into_iter()
                .filter_map(|(id, fields)| {
                    let record = Record::decode(records(&fields).next()?)?;
                    let reason =
                        String::from_utf8_lossy(field(&fields, b"reason").unwrap_or_default())
                            .into_owned();
                    Some(Dead { id, record, reason })
                })
                .collect())
        })
    }

    fn revive(&self, id: String) -> QueueFuture<'_, bool> {
        Box::pin(async move {
            if !is_stream_id(&id) {
                return Ok(false);
            }
            let mut conn = self.conn().await?;
            let reply: RValue = redis::cmd("XRANGE")
                .arg(&self.dead_key)
                .arg(&id)
                .arg(&id)
                .query_async(&mut conn)
                .await
                .map_err(queue_error)?;
            let Some((_, fields)) = entries(reply, "XRANGE")?.into_iter().next() else {
                return Ok(false);
            };
            let record = records(&fields)
                .next()
                .and_then(Record::decode)
                .ok_or_else(|| WriteError::Queue(format!("dead letter {id} is unreadable")))?;
            // Queued before the dead letter goes: a failure in between leaves
            // it in both, never in neither.
            self.append(record).await?;
            redis::cmd("XDEL")
                .arg(&self.dead_key)
                .arg(&id)
                .query_async::<u64>(&mut conn)
                .await
                .map_err(queue_error)?;
            Ok(true)
        })
    }

    fn discard(&self, id: String) -> QueueFuture<'_, bool> {
        Box::pin(async move {
            if !is_stream_id(&id) {
                return Ok(false);
            }
            let mut conn = self.conn().await?;
            let deleted: u64 = redis::cmd("XDEL")
                .arg(&self.dead_key)
                .arg(&id)
                .query_async(&mut conn)
                .await
                .map_err(queue_error)?;
            Ok(deleted > 0)
        })
    }
}

/// `<ms>-<seq>`: what API callers may pass as a dead letter id.
fn is_stream_id(id: &str) -> bool {
    let mut parts = id.split('-');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Parses `[[id, [field, value, ...]], ...]`. An entry whose fields are nil
/// (deleted while pending) comes back with no fields.
fn entries(reply: RValue, command: &str) -> Result<Vec<(String, Fields)>, WriteError> {
    let items = match reply {
        RValue::Nil => return Ok(Vec::new()),
        RValue::Array(items) => items,
        _ => return Err(protocol(command)),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let RValue::Array(parts) = item else {
            return Err(protocol(command));
        };
        let mut parts = parts.into_iter();
        let id = match parts.next() {
            Some(RValue::BulkString(b)) => String::from_utf8(b).map_err(|_| protocol(command))?,
            Some(RValue::SimpleString(s)) => s,
            _ => return Err(protocol(command)),
        };
        let mut fields = Vec::new();
        if let Some(RValue::Array(kv)) = parts.next() {
            let mut kv = kv.into_iter();
            while let (Some(RValue::BulkString(k)), Some(RValue::BulkString(v))) =
                (kv.next(), kv.next())
            {
                fields.push((k, v));
            }
        }
        out.push((id, fields));
    }
    Ok(out)
}

/// The encoded records of an entry: its `r` fields, in order.
fn records(fields: &Fields) -> impl Iterator<Item = &[u8]> {
    fields
        .iter()
        .filter(|(k, _)| k.as_slice() == b"r")
        .map(|(_, v)| v.as_slice())
}

/// Writes appends as entries, at most [`XADD_IN_FLIGHT`] `XADD`s in flight
/// at a time: what arrives meanwhile goes into the next entry (see the module
/// docs). Ends when the queue is dropped.
async fn write_entries(
    conn: Conn,
    key: String,
    count_key: String,
    mut waiting: mpsc::UnboundedReceiver<Append>,
) {
    // A script, not MULTI: a refused XADD (say, WRONGTYPE) must leave the
    // count alone too, and a transaction runs the rest of its commands after
    // one fails. The count is advisory: its own failure fails nothing.
    let script = Arc::new(redis::Script::new(
        r"local args = {KEYS[1], '*'}
          for i = 1, #ARGV do
            args[#args + 1] = 'r'
            args[#args + 1] = ARGV[i]
          end
          local id = redis.call('XADD', unpack(args))
          redis.pcall('INCRBY', KEYS[2], #ARGV)
          return id",
    ));
    let slots = Arc::new(tokio::sync::Semaphore::new(XADD_IN_FLIGHT));
    while let Some(first) = waiting.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return; // never closed
        };
        // The writers woken by the last answer are ready to run: let them
        // append before the group is cut, or the first of them goes alone.
        tokio::task::yield_now().await;
        let mut bytes = first.0.len();
        let mut group = vec![first];
        while group.len() < ENTRY_RECORDS && bytes < ENTRY_BYTES {
            let Ok(next) = waiting.try_recv() else { break };
            bytes += next.0.len();
            group.push(next);
        }
        let (script, key, count_key, mut conn) = (
            Arc::clone(&script),
            key.clone(),
            count_key.clone(),
            conn.clone(),
        );
        // Its own task, so the next group can go while this one is on the
        // wire. Redis may then store two groups in either order (a retried
        // script load or a reconnect can let the second overtake), and they
        // can hold records of one key (a writer cancelled while its append
        // was on the wire has let go of its key's stripe; `revive` takes
        // none; other instances share no stripes). Order does not matter:
        // the flusher keeps the higher version, and so does the store.
        tokio::spawn(async move {
            let mut call = script.key(&key);
            call.key(&count_key);
            for (record, _) in &group {
                call.arg(record);
            }
            let result = call
                .invoke_async::<RValue>(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| format!("Redis: {e}"));
            for (_, done) in group {
                // A caller that stopped waiting has nobody to tell.
                let _ = done.send(result.clone());
            }
            // After the answers, so the writers they wake are ready to
            // append by the time the next group is cut.
            drop(slot);
        });
    }
}

fn field<'a>(fields: &'a Fields, name: &[u8]) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k.as_slice() == name)
        .map(|(_, v)| v.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_ids_are_checked() {
        assert!(is_stream_id("1700000000000-0"));
        for bad in ["", "-", "1-", "-1", "1-2-3", "a-1", "1-1 ", "+", "-+"] {
            assert!(!is_stream_id(bad), "{bad:?}");
        }
    }
}
