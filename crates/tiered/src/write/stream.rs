//! A Redis Stream as the write-behind queue, for several instances sharing L2.
//!
//! Records go to the stream `{tiered-wb:<namespace>}` (dead letters to
//! `{tiered-wb:<namespace>}:dead`, the same Cluster slot). Every instance's
//! flusher reads through one consumer group, so any instance drains any
//! instance's writes; a record is acknowledged (`XACK`) and deleted (`XDEL`)
//! once the store has it.
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
//! once); every [`StreamOptions::claim_idle`] it also claims (`XAUTOCLAIM`)
//! records that other consumers have held that long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Value as RValue;

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

/// The Redis Stream queue.
pub(crate) struct StreamQueue {
    options: StreamOptions,
    key: String,
    dead_key: String,
    /// Local ids handed to the flusher → stream ids.
    ids: Mutex<HashMap<u64, String>>,
    next_id: AtomicU64,
    /// Own pending records (from before a restart) are read first, from
    /// this id on.
    own_pending_done: AtomicBool,
    own_cursor: Mutex<String>,
    last_claim: Mutex<Instant>,
    /// `XLEN` as last read, plus appends since.
    depth: AtomicU64,
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
        let mut queue = StreamQueue {
            options,
            dead_key,
            ids: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            own_pending_done: AtomicBool::new(false),
            own_cursor: Mutex::new("0".into()),
            last_claim: Mutex::new(Instant::now()),
            depth: AtomicU64::new(0),
            max_version: 0,
            key,
        };
        let mut conn = queue.conn().await?;
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
            .into_iter()
            .filter_map(|(_, fields)| Record::decode(field(&fields, b"r")?).map(|r| r.version))
            .max()
            .unwrap_or(0);
        queue.refresh_depth(&mut conn).await?;
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

    async fn refresh_depth(&self, conn: &mut Conn) -> Result<(), WriteError> {
        let len: u64 = redis::cmd("XLEN")
            .arg(&self.key)
            .query_async(conn)
            .await
            .map_err(queue_error)?;
        self.depth.store(len, Ordering::Relaxed);
        Ok(())
    }

    /// Hands stream entries to the flusher; acknowledges (and drops) any that
    /// are not readable records, which nothing could ever apply.
    async fn hand_out(
        &self,
        conn: &mut Conn,
        found: Vec<(String, Fields)>,
    ) -> Result<Vec<Queued>, WriteError> {
        let mut out = Vec::with_capacity(found.len());
        let mut junk = Vec::new();
        for (stream_id, fields) in found {
            match field(&fields, b"r").and_then(Record::decode) {
                Some(record) => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    self.ids.lock().insert(id, stream_id);
                    out.push(Queued { id, record });
                }
                None => {
                    tracing::error!(stream = %self.key, id = %stream_id, "write-behind stream: unreadable entry dropped");
                    junk.push(stream_id);
                }
            }
        }
        if !junk.is_empty() {
            self.ack(conn, &junk).await?;
        }
        Ok(out)
    }

    async fn ack(&self, conn: &mut Conn, stream_ids: &[String]) -> Result<(), WriteError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&self.key)
            .arg(&self.options.group)
            .arg(stream_ids)
            .ignore();
        pipe.cmd("XDEL").arg(&self.key).arg(stream_ids).ignore();
        pipe.query_async::<()>(conn).await.map_err(queue_error)
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
}

impl Queue for StreamQueue {
    fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    fn bytes(&self) -> u64 {
        0
    }

    fn append(&self, record: Record) -> QueueFuture<'_, ()> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            redis::cmd("XADD")
                .arg(&self.key)
                .arg("*")
                .arg("r")
                .arg(record.encode())
                .query_async::<RValue>(&mut conn)
                .await
                .map_err(queue_error)?;
            self.depth.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }

    fn take(&self, max: usize) -> QueueFuture<'_, Vec<Queued>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            self.refresh_depth(&mut conn).await?;
            if !self.own_pending_done.load(Ordering::Relaxed) {
                // After a restart: what this consumer read and never
                // confirmed, walked with a cursor.
                let cursor = self.own_cursor.lock().clone();
                let found = self.read_group(&mut conn, max, &cursor).await?;
                match found.last() {
                    None => self.own_pending_done.store(true, Ordering::Relaxed),
                    Some((last, _)) => {
                        *self.own_cursor.lock() = last.clone();
                        return self.hand_out(&mut conn, found).await;
                    }
                }
            }
            let claim_due = {
                let mut last = self.last_claim.lock();
                let due = last.elapsed() >= self.options.claim_idle;
                if due {
                    *last = Instant::now();
                }
                due
            };
            if claim_due {
                let reply: RValue = redis::cmd("XAUTOCLAIM")
                    .arg(&self.key)
                    .arg(&self.options.group)
                    .arg(&self.options.consumer)
                    .arg(u64::try_from(self.options.claim_idle.as_millis()).unwrap_or(u64::MAX))
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(max)
                    .query_async(&mut conn)
                    .await
                    .map_err(queue_error)?;
                if let RValue::Array(mut parts) = reply {
                    if parts.len() >= 2 {
                        let claimed = entries(parts.swap_remove(1), "XAUTOCLAIM")?;
                        if !claimed.is_empty() {
                            return self.hand_out(&mut conn, claimed).await;
                        }
                    }
                }
            }
            let found = self.read_group(&mut conn, max, ">").await?;
            self.hand_out(&mut conn, found).await
        })
    }

    fn confirm(&self, ids: Vec<u64>) -> QueueFuture<'_, ()> {
        Box::pin(async move {
            // The local ids go only once `XACK` succeeded: a confirm that
            // failed can be made again.
            let stream_ids: Vec<String> = {
                let map = self.ids.lock();
                ids.iter().filter_map(|id| map.get(id).cloned()).collect()
            };
            if stream_ids.is_empty() {
                return Ok(());
            }
            let mut conn = self.conn().await?;
            self.ack(&mut conn, &stream_ids).await?;
            {
                let mut map = self.ids.lock();
                for id in &ids {
                    map.remove(id);
                }
            }
            let _ = self
                .depth
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                    Some(d.saturating_sub(stream_ids.len() as u64))
                });
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
                    let record = Record::decode(field(&fields, b"r")?)?;
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
            let record = field(&fields, b"r")
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
