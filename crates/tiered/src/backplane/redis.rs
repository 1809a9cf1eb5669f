//! [`Backplane`] on Redis: a Stream per cache namespace for the messages, a hash
//! for tag invalidation times. See the [module docs](super) for the design.

use std::time::Duration;

use redis::Value as RValue;

use super::{Backplane, StreamId, StreamState};
use crate::l2::redis::backend;
use crate::l2::{L2Error, L2Future, RedisL2};

/// The stream is capped near this many messages (`XADD MAXLEN ~`). An instance
/// that falls further behind than this detects a gap and empties its L1.
pub const MAX_STREAM_LEN: usize = 100_000;

/// KEYS[1] hash; ARGV: field, time. Keeps the larger time.
const REMEMBER: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > cur then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 0
";

fn protocol(what: &str) -> L2Error {
    L2Error::Command(format!("unexpected reply to {what}"))
}

fn text(v: &RValue) -> Option<String> {
    match v {
        RValue::BulkString(b) => String::from_utf8(b.clone()).ok(),
        RValue::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn id(v: &RValue) -> Option<StreamId> {
    StreamId::parse(&text(v)?)
}

/// `XINFO STREAM` replies with field/value pairs (a map in RESP3).
fn fields(v: RValue) -> Vec<(String, RValue)> {
    match v {
        RValue::Array(items) => items
            .chunks(2)
            .filter_map(|pair| match pair {
                [k, v] => Some((text(k)?, v.clone())),
                _ => None,
            })
            .collect(),
        RValue::Map(pairs) => pairs
            .into_iter()
            .filter_map(|(k, v)| Some((text(&k)?, v)))
            .collect(),
        _ => Vec::new(),
    }
}

impl Backplane for RedisL2 {
    fn publish<'a>(&'a self, stream: &'a str, message: Vec<u8>) -> L2Future<'a, StreamId> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let reply: RValue = redis::cmd("XADD")
                .arg(stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(MAX_STREAM_LEN)
                .arg("*")
                .arg("m")
                .arg(message)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            id(&reply).ok_or_else(|| protocol("XADD"))
        })
    }

    fn state<'a>(&'a self, stream: &'a str) -> L2Future<'a, StreamState> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let reply = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(stream)
                .query_async::<RValue>(&mut conn)
                .await;
            let reply = match reply {
                Ok(r) => r,
                // "ERR no such key": the stream does not exist (yet, or any more).
                Err(e) if e.code() == Some("ERR") => return Ok(StreamState::default()),
                Err(e) => return Err(backend(e)),
            };
            let mut state = StreamState {
                exists: true,
                ..Default::default()
            };
            for (name, value) in fields(reply) {
                match name.as_str() {
                    "last-generated-id" => state.last = id(&value).unwrap_or_default(),
                    "max-deleted-entry-id" => state.max_deleted = id(&value).unwrap_or_default(),
                    "entries-added" => {
                        if let RValue::Int(n) = value {
                            state.added = u64::try_from(n).unwrap_or(0);
                        }
                    }
                    "length" => {
                        if let RValue::Int(n) = value {
                            state.length = u64::try_from(n).unwrap_or(0);
                        }
                    }
                    // Redis 7 keeps it even when the first entry is trimmed.
                    "recorded-first-entry-id" => state.first = id(&value).unwrap_or_default(),
                    // Older servers: the first entry itself, [id, fields].
                    "first-entry" if state.first == StreamId::default() => {
                        if let RValue::Array(entry) = &value {
                            state.first = entry.first().and_then(id).unwrap_or_default();
                        }
                    }
                    _ => {}
                }
            }
            Ok(state)
        })
    }

    fn read<'a>(
        &'a self,
        stream: &'a str,
        after: StreamId,
        wait: Duration,
    ) -> L2Future<'a, Vec<(StreamId, Vec<u8>)>> {
        Box::pin(async move {
            let mut conn = self.blocking_conn(wait).await?;
            let reply = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(512)
                .arg("BLOCK")
                .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1))
                .arg("STREAMS")
                .arg(stream)
                .arg(after.to_string())
                .query_async::<RValue>(&mut conn)
                .await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    // A plain connection does not reconnect by itself.
                    self.reset_blocking();
                    return Err(backend(e));
                }
            };
            // nil (timeout), or [[stream, [[id, [field, value, ...]], ...]]]
            // (a map of stream → entries in RESP3).
            let entries = match reply {
                RValue::Nil => return Ok(Vec::new()),
                RValue::Array(mut streams) if !streams.is_empty() => match streams.swap_remove(0) {
                    RValue::Array(mut pair) if pair.len() == 2 => pair.swap_remove(1),
                    _ => return Err(protocol("XREAD")),
                },
                RValue::Map(mut streams) if !streams.is_empty() => streams.swap_remove(0).1,
                _ => return Err(protocol("XREAD")),
            };
            let RValue::Array(entries) = entries else {
                return Err(protocol("XREAD"));
            };
            let mut out = Vec::with_capacity(entries.len());
            for entry in entries {
                let RValue::Array(parts) = entry else {
                    return Err(protocol("XREAD"));
                };
                let [entry_id, RValue::Array(kv)] = &parts[..] else {
                    return Err(protocol("XREAD"));
                };
                let entry_id = id(entry_id).ok_or_else(|| protocol("XREAD"))?;
                // Our entries have one field, `m`. Anything else (another
                // program writing to the stream, a damaged entry) is passed
                // on as empty bytes, which do not decode: the subscriber
                // takes it as an invalidation it cannot read and empties L1
                // (coherence first). Its id still counts as read.
                let body = match &kv[..] {
                    [_, RValue::BulkString(b)] => b.clone(),
                    _ => Vec::new(),
                };
                out.push((entry_id, body));
            }
            Ok(out)
        })
    }

    fn remember<'a>(&'a self, key: &'a str, field: &'a str, at: u64) -> L2Future<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            redis::Script::new(REMEMBER)
                .key(key)
                .arg(field)
                .arg(at)
                .invoke_async::<i64>(&mut conn)
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    fn mark_depended<'a>(&'a self, set: &'a str, keys: &'a [String]) -> L2Future<'a, ()> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(());
            }
            let mut conn = self.conn().await?;
            redis::cmd("SADD")
                .arg(set)
                .arg(keys)
                .exec_async(&mut conn)
                .await
                .map_err(backend)
        })
    }

    fn depended<'a>(&'a self, set: &'a str, keys: &'a [String]) -> L2Future<'a, Vec<bool>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut conn = self.conn().await?;
            let found: Vec<i64> = redis::cmd("SMISMEMBER")
                .arg(set)
                .arg(keys)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            Ok(found.into_iter().map(|n| n == 1).collect())
        })
    }

    fn schedule<'a>(&'a self, key: &'a str, member: &'a str, at_ms: u64) -> L2Future<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            redis::cmd("ZADD")
                .arg(key)
                .arg(at_ms)
                .arg(member)
                .exec_async(&mut conn)
                .await
                .map_err(backend)
        })
    }

    fn due<'a>(&'a self, key: &'a str, now_ms: u64, limit: usize) -> L2Future<'a, Vec<String>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            redis::cmd("ZRANGEBYSCORE")
                .arg(key)
                .arg("-inf")
                .arg(now_ms)
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut conn)
                .await
                .map_err(backend)
        })
    }

    fn claim<'a>(&'a self, key: &'a str, member: &'a str) -> L2Future<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let n: i64 = redis::cmd("ZREM")
                .arg(key)
                .arg(member)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            Ok(n == 1)
        })
    }

    fn recall<'a>(&'a self, key: &'a str) -> L2Future<'a, Vec<(String, u64)>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let all: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            Ok(all
                .into_iter()
                .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
                .collect())
        })
    }
}
