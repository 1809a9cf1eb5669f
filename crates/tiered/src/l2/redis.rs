//! [`RedisL2`]: the [`L2`] on Redis, standalone or Cluster.
//!
//! One multiplexed connection per node, shared by every task: concurrent calls
//! are pipelined on it automatically (the `redis` crate's
//! `ConnectionManager`, which also reconnects after a failure; on a cluster,
//! its cluster connection, which follows slot moves). The connection is made
//! on first use, so building a cache never waits for — or fails on — a Redis
//! that is down; the breaker takes it from there.
//!
//! Multi-key calls (`MGET`, `DEL`) go out as one command; on a cluster the
//! `redis` crate splits them per slot and sends the parts concurrently. Keys
//! sharing a hash tag (`{...}` in the cache key, see [`super::layout`]) share a
//! slot. Conditional writes are small Lua scripts comparing the envelope's
//! version bytes, one per key, all sent at once.

use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Script, TlsCertificates, Value as RValue};
use tokio::sync::OnceCell;

use super::{L2Error, L2Future, L2Write, ServerUsage, L2};
use crate::error::{Error, Result};

/// Byte-wise "a < b" for two 8-byte big-endian versions. (Lua's `<` on strings
/// uses the server's collation locale, which is not byte order.)
const OLDER: &str = r"
local function older(a, b)
  for i = 1, 8 do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return false
end
";

/// The string at a key, or `false` if there is none — or if the key holds
/// another type (a hash another program wrote there): `GET` would raise
/// WRONGTYPE, failing the script on every attempt, and a kept write would
/// then be replayed for ever. Reads see such a key as a miss (`MGET` gives
/// nil), so the scripts treat it as absent, and a write replaces it.
const ENTRY: &str = r"
local function entry(k)
  local v = redis.pcall('GET', k)
  if type(v) == 'string' then return v end
  return false
end
";

/// KEYS[1]; ARGV: value, ttl ms, version (8 bytes). Stores unless a valid
/// envelope with the same or a newer version is there.
const SET_IF_NEWER: &str = r"
local cur = entry(KEYS[1])
if cur and string.len(cur) >= 9 and string.byte(cur, 1) == 1
   and not older(string.sub(cur, 2, 9), ARGV[3]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// KEYS[1]; ARGV: value, ttl ms, expected version (8 bytes, or empty: absent).
const COMPARE_AND_SET: &str = r"
local cur = entry(KEYS[1])
if ARGV[3] == '' then
  if cur then return 0 end
elseif not cur or string.sub(cur, 2, 9) ~= ARGV[3] or string.byte(cur, 1) ~= 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// KEYS: lock, waiting; ARGV: token, ttl ms. 1: taken; 0: held by another
/// (and the waiters' flag is set, so the holder announces its value).
const LEASE_ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 0
";

/// KEYS: lock; ARGV: token, ttl ms.
const LEASE_RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// KEYS: lock, waiting; ARGV: token. -1: not ours (expired, someone else's);
/// else whether anyone waited.
const LEASE_RELEASE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
return redis.call('DEL', KEYS[2])
";

/// KEYS: value, lock; ARGV: value, ttl ms, version (8 bytes), token.
/// -1: lease lost; 0: an equal or newer version is there; 1: stored.
const SET_IF_LEASED: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return -1 end
local cur = entry(KEYS[1])
if cur and string.len(cur) >= 9 and string.byte(cur, 1) == 1
   and not older(string.sub(cur, 2, 9), ARGV[3]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// KEYS[1]; ARGV: version (8 bytes).
const DELETE_VERSION: &str = r"
local cur = entry(KEYS[1])
if cur and string.byte(cur, 1) == 1 and string.sub(cur, 2, 9) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// KEYS[1]; ARGV: increment, ttl ms. The TTL is set when the key has none
/// (it was just created), so a rate-limit window starts at its first hit.
const INCR: &str = r"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
";

/// Where to connect. (One per cache, built once: its size does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// A connection to either kind of deployment.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// A plain multiplexed connection (no reconnect): the subscriber's.
    Blocking(Box<redis::aio::MultiplexedConnection>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, RValue> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Blocking(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<RValue>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Blocking(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Blocking(c) => c.get_db(),
        }
    }
}

/// Redis as the L2 tier. Build with [`RedisL2::builder`] (or give the cache
/// builder a URL: [`crate::CacheBuilder::redis`]).
///
/// URLs: `redis://[user:password@]host[:port][/db]`, `rediss://…` for TLS.
pub struct RedisL2 {
    target: Target,
    connect_timeout: Duration,
    conn: OnceCell<Conn>,
    /// The backplane subscriber's own connection: its blocking `XREAD` must
    /// not hold up the shared one.
    blocking: parking_lot::Mutex<Option<Conn>>,
    set_if_newer: Script,
    compare_and_set: Script,
    delete_version: Script,
    incr: Script,
    lease_acquire: Script,
    lease_renew: Script,
    lease_release: Script,
    set_if_leased: Script,
}

impl std::fmt::Debug for RedisL2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.target {
            Target::Single(_) => "standalone",
            Target::Cluster(_) => "cluster",
        };
        // No URL: it may hold a password.
        f.debug_struct("RedisL2")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisL2`].
#[derive(Debug, Clone)]
pub struct RedisL2Builder {
    urls: Vec<String>,
    cluster: bool,
    root_cert: Option<Vec<u8>>,
    connect_timeout: Duration,
}

impl RedisL2Builder {
    /// Trusts this CA certificate (PEM) for `rediss://` instead of the system's
    /// roots (for private CAs).
    pub fn root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_cert = Some(pem.into());
        self
    }

    /// How long connecting may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Checks the URLs and builds. Does not connect (see the module docs).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL that does not parse, a cluster with no
    /// seed, or a CA certificate given for a non-TLS URL.
    pub fn build(self) -> Result<RedisL2> {
        let bad = |e: redis::RedisError| Error::InvalidConfig(format!("Redis URL: {e}"));
        if self.urls.is_empty() {
            return Err(Error::InvalidConfig("no Redis URL given".into()));
        }
        let certs = || TlsCertificates {
            client_tls: None,
            root_cert: self.root_cert.clone(),
        };
        if self.root_cert.is_some() && !self.urls.iter().all(|u| u.starts_with("rediss://")) {
            return Err(Error::InvalidConfig(
                "a CA certificate was given but the Redis URL is not rediss://".into(),
            ));
        }
        let target = if self.cluster {
            let mut b = redis::cluster::ClusterClientBuilder::new(self.urls.clone())
                .connection_timeout(self.connect_timeout);
            if self.root_cert.is_some() {
                b = b.certs(certs());
            }
            Target::Cluster(b.build().map_err(bad)?)
        } else {
            let [url] = &self.urls[..] else {
                return Err(Error::InvalidConfig(
                    "several URLs given for a standalone Redis; use RedisL2::cluster".into(),
                ));
            };
            let client = match self.root_cert {
                Some(_) => redis::Client::build_with_tls(url.as_str(), certs()),
                None => redis::Client::open(url.as_str()),
            };
            Target::Single(client.map_err(bad)?)
        };
        Ok(RedisL2 {
            target,
            connect_timeout: self.connect_timeout,
            conn: OnceCell::new(),
            blocking: parking_lot::Mutex::new(None),
            set_if_newer: Script::new(&format!("{ENTRY}{OLDER}{SET_IF_NEWER}")),
            compare_and_set: Script::new(&format!("{ENTRY}{COMPARE_AND_SET}")),
            delete_version: Script::new(&format!("{ENTRY}{DELETE_VERSION}")),
            incr: Script::new(INCR),
            lease_acquire: Script::new(LEASE_ACQUIRE),
            lease_renew: Script::new(LEASE_RENEW),
            lease_release: Script::new(LEASE_RELEASE),
            set_if_leased: Script::new(&format!("{ENTRY}{OLDER}{SET_IF_LEASED}")),
        })
    }
}

impl RedisL2 {
    /// A standalone Redis at `url`.
    pub fn builder(url: impl Into<String>) -> RedisL2Builder {
        RedisL2Builder {
            urls: vec![url.into()],
            cluster: false,
            root_cert: None,
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// A Redis Cluster, discovered from any of `seeds`.
    pub fn cluster<I, S>(seeds: I) -> RedisL2Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisL2Builder {
            urls: seeds.into_iter().map(Into::into).collect(),
            cluster: true,
            root_cert: None,
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// A connection for blocking reads (made once, on first use), whose
    /// response timeout allows a `BLOCK` of `wait`.
    pub(crate) async fn blocking_conn(&self, wait: Duration) -> Result<Conn, L2Error> {
        if let Some(conn) = self.blocking.lock().clone() {
            return Ok(conn);
        }
        let timeout = wait + Duration::from_secs(2);
        let conn = async {
            match &self.target {
                Target::Single(client) => {
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.connect_timeout))
                        .set_response_timeout(Some(timeout));
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(|c| Conn::Blocking(Box::new(c)))
                }
                Target::Cluster(client) => {
                    let config = redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(self.connect_timeout)
                        .set_response_timeout(timeout);
                    client
                        .get_async_connection_with_config(config)
                        .await
                        .map(Conn::Cluster)
                }
            }
        }
        .await
        .map_err(backend)?;
        *self.blocking.lock() = Some(conn.clone());
        Ok(conn)
    }

    /// Drops the blocking connection (after an error), so the next call
    /// connects afresh.
    pub(crate) fn reset_blocking(&self) {
        *self.blocking.lock() = None;
    }

    pub(crate) async fn conn(&self) -> Result<Conn, L2Error> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                match &self.target {
                    Target::Single(client) => {
                        // Retries are the breaker's job; the manager only
                        // reconnects in the background after a failure.
                        let config = ConnectionManagerConfig::new()
                            .set_number_of_retries(1)
                            .set_min_delay(Duration::from_millis(50))
                            .set_max_delay(Duration::from_secs(1))
                            .set_connection_timeout(Some(self.connect_timeout));
                        client
                            .get_connection_manager_with_config(config)
                            .await
                            .map(Conn::Single)
                    }
                    Target::Cluster(client) => {
                        client.get_async_connection().await.map(Conn::Cluster)
                    }
                }
            })
            .await
            .map_err(backend)?;
        Ok(conn.clone())
    }
}

/// Sorts a `redis` error: the server answering with an error is `Command`
/// (it is up; the breaker should not open), anything else is `Backend`.
pub(crate) fn backend(e: redis::RedisError) -> L2Error {
    let unreachable = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.is_cluster_error();
    if unreachable {
        L2Error::Backend(e.to_string())
    } else {
        L2Error::Command(e.to_string())
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl L2 for RedisL2 {
    fn get_many<'a>(&'a self, keys: &'a [String]) -> L2Future<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut conn = self.conn().await?;
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            if values.len() != keys.len() {
                return Err(L2Error::Backend(format!(
                    "MGET of {} keys returned {} values",
                    keys.len(),
                    values.len()
                )));
            }
            Ok(values)
        })
    }

    fn swap(&self, writes: Vec<L2Write>) -> L2Future<'_, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            let conn = self.conn().await?;
            let calls = writes.iter().map(|w| {
                let mut conn = conn.clone();
                async move {
                    redis::cmd("SET")
                        .arg(&w.key)
                        .arg(&w.value[..])
                        .arg("PX")
                        .arg(millis(w.ttl))
                        .arg("GET")
                        .query_async::<Option<Vec<u8>>>(&mut conn)
                        .await
                }
            });
            try_join_all(calls).await.map_err(backend)
        })
    }

    fn set_if_newer(&self, writes: Vec<L2Write>) -> L2Future<'_, Vec<bool>> {
        Box::pin(async move {
            let conn = self.conn().await?;
            let calls = writes.iter().map(|w| {
                let mut conn = conn.clone();
                async move {
                    self.set_if_newer
                        .key(&w.key)
                        .arg(&w.value[..])
                        .arg(millis(w.ttl))
                        .arg(&w.version.to_be_bytes()[..])
                        .invoke_async::<i64>(&mut conn)
                        .await
                        .map(|stored| stored == 1)
                }
            });
            try_join_all(calls).await.map_err(backend)
        })
    }

    fn compare_and_set(&self, write: L2Write, expected: Option<u64>) -> L2Future<'_, bool> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let expected = expected.map(u64::to_be_bytes);
            let stored: i64 = self
                .compare_and_set
                .key(&write.key)
                .arg(&write.value[..])
                .arg(millis(write.ttl))
                .arg(expected.as_ref().map_or(&[][..], |e| &e[..]))
                .invoke_async(&mut conn)
                .await
                .map_err(backend)?;
            Ok(stored == 1)
        })
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> L2Future<'a, u64> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(0);
            }
            let mut conn = self.conn().await?;
            redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .map_err(backend)
        })
    }

    fn delete_version<'a>(&'a self, key: &'a str, version: u64) -> L2Future<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let n: i64 = self
                .delete_version
                .key(key)
                .arg(&version.to_be_bytes()[..])
                .invoke_async(&mut conn)
                .await
                .map_err(backend)?;
            Ok(n == 1)
        })
    }

    fn ttl<'a>(&'a self, key: &'a str) -> L2Future<'a, Option<Duration>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let ms: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            // -2: no key; -1: no expiry.
            Ok(u64::try_from(ms).ok().map(Duration::from_millis))
        })
    }

    fn incr<'a>(&'a self, key: &'a str, by: i64, ttl: Duration) -> L2Future<'a, i64> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            self.incr
                .key(key)
                .arg(by)
                .arg(millis(ttl))
                .invoke_async(&mut conn)
                .await
                .map_err(backend)
        })
    }

    fn lease_acquire<'a>(
        &'a self,
        lock: &'a str,
        waiting: &'a str,
        token: u64,
        ttl: Duration,
    ) -> L2Future<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let n: i64 = self
                .lease_acquire
                .key(lock)
                .key(waiting)
                .arg(token)
                .arg(millis(ttl))
                .invoke_async(&mut conn)
                .await
                .map_err(backend)?;
            Ok(n == 1)
        })
    }

    fn lease_renew<'a>(&'a self, lock: &'a str, token: u64, ttl: Duration) -> L2Future<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let n: i64 = self
                .lease_renew
                .key(lock)
                .arg(token)
                .arg(millis(ttl))
                .invoke_async(&mut conn)
                .await
                .map_err(backend)?;
            Ok(n == 1)
        })
    }

    fn lease_release<'a>(
        &'a self,
        lock: &'a str,
        waiting: &'a str,
        token: u64,
    ) -> L2Future<'a, Option<bool>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let n: i64 = self
                .lease_release
                .key(lock)
                .key(waiting)
                .arg(token)
                .invoke_async(&mut conn)
                .await
                .map_err(backend)?;
            Ok((n >= 0).then_some(n == 1))
        })
    }

    fn set_if_leased<'a>(
        &'a self,
        write: L2Write,
        lock: &'a str,
        token: u64,
    ) -> L2Future<'a, Option<bool>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let n: i64 = self
                .set_if_leased
                .key(&write.key)
                .key(lock)
                .arg(&write.value[..])
                .arg(millis(write.ttl))
                .arg(&write.version.to_be_bytes()[..])
                .arg(token)
                .invoke_async(&mut conn)
                .await
                .map_err(backend)?;
            Ok(match n {
                -1 => None,
                n => Some(n == 1),
            })
        })
    }

    fn delete_matching<'a>(&'a self, pattern: &'a str) -> L2Future<'a, u64> {
        Box::pin(async move {
            match self.conn().await? {
                Conn::Cluster(mut cluster) => {
                    let mut removed = 0;
                    for (host, port) in masters(&mut cluster).await? {
                        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host,
                            port,
                        });
                        let mut del = cluster.clone();
                        removed += scan_delete(pattern, &mut del, |cmd| {
                            let mut c = cluster.clone();
                            let route = route.clone();
                            async move { c.route_command(cmd, route).await }
                        })
                        .await?;
                    }
                    Ok(removed)
                }
                mut conn => {
                    let scanner = conn.clone();
                    scan_delete(pattern, &mut conn, |cmd| {
                        let mut c = scanner.clone();
                        async move { cmd.query_async::<RValue>(&mut c).await }
                    })
                    .await
                }
            }
        })
    }

    fn server_usage(&self) -> L2Future<'_, ServerUsage> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("DBSIZE").cmd("INFO").arg("memory");
            let replies: Vec<(u64, String)> = match self.conn().await? {
                Conn::Cluster(mut cluster) => {
                    let mut out = Vec::new();
                    for (host, port) in masters(&mut cluster).await? {
                        let route = SingleNodeRoutingInfo::ByAddress { host, port };
                        let reply = cluster
                            .route_pipeline(pipe.clone(), 0, 2, route)
                            .await
                            .map_err(backend)?;
                        out.push(redis::from_redis_value(RValue::Array(reply)).map_err(|e| {
                            L2Error::Command(format!("unexpected DBSIZE/INFO reply: {e}"))
                        })?);
                    }
                    out
                }
                mut conn => vec![pipe.query_async(&mut conn).await.map_err(backend)?],
            };
            let mut usage = ServerUsage::default();
            let mut unlimited = false;
            for (keys, info) in replies {
                let field = |name: &str| {
                    info.lines()
                        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                usage.keys += keys;
                usage.used_memory += field("used_memory").unwrap_or(0);
                match field("maxmemory") {
                    Some(0) | None => unlimited = true,
                    Some(max) => usage.max_memory += max,
                }
                usage.nodes += 1;
            }
            if unlimited {
                usage.max_memory = 0;
            }
            Ok(usage)
        })
    }

    fn ping(&self) -> L2Future<'_, ()> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(backend)?;
            Ok(())
        })
    }
}

/// `SCAN … MATCH pattern` through `scan` (one node), `UNLINK`ing each batch
/// through `del`. Keys are bytes: another program may have written any.
async fn scan_delete<F, Fut>(
    pattern: &str,
    del: &mut impl ConnectionLike,
    scan: F,
) -> Result<u64, L2Error>
where
    F: Fn(Cmd) -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<RValue>>,
{
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        let reply = scan(cmd).await.map_err(backend)?;
        let (next, keys): (u64, Vec<Vec<u8>>) =
            redis::from_redis_value(reply).map_err(|e| L2Error::Command(e.to_string()))?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(del)
                .await
                .map_err(backend)?;
            removed += n;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

/// The masters of a cluster, from `CLUSTER NODES`.
async fn masters(cluster: &mut ClusterConnection) -> Result<Vec<(String, u16)>, L2Error> {
    let reply = cluster
        .route_command(
            redis::cmd("CLUSTER").arg("NODES").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await
        .map_err(backend)?;
    let text: String =
        redis::from_redis_value(reply).map_err(|e| L2Error::Command(e.to_string()))?;
    let mut out = Vec::new();
    // <id> <ip:port@cport[,hostname]> <flags> ...
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
            continue;
        }
        let addr = addr.split(['@', ',']).next().unwrap_or_default();
        if let Some((host, port)) = addr.rsplit_once(':') {
            if let Ok(port) = port.parse() {
                out.push((host.to_owned(), port));
            }
        }
    }
    if out.is_empty() {
        return Err(L2Error::Command("CLUSTER NODES listed no master".into()));
    }
    Ok(out)
}
