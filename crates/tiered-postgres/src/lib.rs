//! `tiered-postgres`: PostgreSQL as the system of record behind a `tiered`
//! cache — [`PgStore`] implements [`tiered::write::Store`] for the cache's
//! write paths.
//!
//! ```no_run
//! use tiered::write::{Store, StoreWrite};
//! use tiered_postgres::PgStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store: PgStore<String> = PgStore::connect("postgres://app@db/app", "cache_users").await?;
//! store.create_table().await?;
//! store
//!     .apply(&[StoreWrite { key: "42".into(), version: 7, value: Some("Ada".to_string().into()) }])
//!     .await?;
//! assert_eq!(store.get("42").await?, Some(("Ada".to_string(), 7)));
//! # Ok(())
//! # }
//! ```
//!
//! # The table
//!
//! [`PgStore::create_table`] creates it (if missing) as:
//!
//! ```sql
//! CREATE TABLE cache_users (
//!     key        TEXT PRIMARY KEY,
//!     value      JSONB,                  -- the value as JSON; NULL when deleted
//!     version    BIGINT NOT NULL,        -- the highest version applied
//!     deleted    BOOLEAN NOT NULL DEFAULT FALSE,
//!     updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
//! );
//! ```
//!
//! Values are stored with `serde_json`, so the table is readable (and
//! queryable: `value->>'name'`) by anything else that uses the database.
//!
//! # The version guard
//!
//! Every write carries a version that only grows for its key. A batch is one
//! statement:
//!
//! ```sql
//! INSERT INTO cache_users AS stored (key, value, version, deleted)
//! SELECT * FROM UNNEST($1::text[], $2::jsonb[], $3::int8[], $4::bool[])
//! ON CONFLICT (key) DO UPDATE
//!     SET value = EXCLUDED.value, version = EXCLUDED.version,
//!         deleted = EXCLUDED.deleted, updated_at = now()
//!     WHERE stored.version < EXCLUDED.version
//! ```
//!
//! A write that is not newer than the stored row changes nothing, and is not
//! an error. So replaying a batch after a crash, or applying an old batch
//! after a newer one, never moves a key backwards: the store is idempotent.
//! One statement is also one transaction: a batch applies whole or not at
//! all.
//!
//! # Tombstones
//!
//! A delete does not remove the row: it sets `value = NULL, deleted = true`
//! and keeps the delete's version. Without that row, an older write replayed
//! after the delete would find no version to lose against and bring the key
//! back. Reads ([`PgStore::get`], [`PgStore::load`]) treat a tombstone as
//! absent. Tombstones can be purged once no replay can be older than them,
//! e.g. `DELETE FROM cache_users WHERE deleted AND updated_at < now() -
//! interval '7 days'`, as long as write-behind never holds a write for that
//! long.
//!
//! # Your own tables
//!
//! To write into real columns instead of a JSON document, give
//! [`PgStore::with_statements`] an upsert and a delete statement. The upsert
//! gets `$1` the key (`text`), `$2` the value (`jsonb`), `$3` the version
//! (`int8`); the delete gets `$1` the key and `$2` the version. A batch runs
//! them row by row in one transaction. The version guard and the tombstone
//! are yours to write — see [`PgStore::with_statements`] for an example.
//!
//! # Errors
//!
//! A failed batch is a [`tiered::write::StoreError`] of one of two kinds
//! (see [`classify`]):
//!
//! * **Rejected** — PostgreSQL refused the data itself: a data exception
//!   (SQLSTATE class `22`: bad cast, invalid text, out of range), an
//!   integrity-constraint violation (class `23`: `CHECK`, `NOT NULL`, foreign
//!   key, unique), a value or key too large (`54000`); also a value that does
//!   not serialize to JSON, or a version above `i64::MAX`. Such a record will
//!   never pass, so write-behind isolates it and dead-letters it.
//! * **Unavailable** — everything else: the server is down, restarting or
//!   shutting down (`57P01`), the pool timed out, the batch took longer than
//!   the [timeout](PgStore::with_timeout), a serialization failure or
//!   deadlock, and also a missing table or column (`42P01`, `42703`). Those
//!   are retried for as long as it takes: an operator can create the table or
//!   restart the server, and then every held write goes through.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::Row as _;
use tiered::write::{Store, StoreError, StoreFuture, StoreWrite};

/// The pool size [`PgStore::connect`] uses: a few batches in flight at once,
/// plus reads.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;

/// How long [`PgStore::connect`]'s pool waits for a connection.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one [`Store::apply`] may take by default; see
/// [`PgStore::with_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What can go wrong outside [`Store::apply`] (which returns a
/// [`StoreError`]): setting up the store, and reading.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The table name is not `name` or `schema.name` made of ASCII letters,
    /// digits, `_` and `$` (not starting with a digit or `$`), at most 63
    /// bytes each.
    #[error("invalid table name {0:?}: expected `name` or `schema.name` of [A-Za-z_][A-Za-z0-9_$]*, at most 63 bytes each")]
    InvalidTableName(String),
    /// A read or [`PgStore::create_table`] on a store made with
    /// [`PgStore::with_statements`], which knows no table to read.
    #[error("this store writes with custom statements and has no table to read; query your tables directly")]
    NoTable,
    /// The database failed.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// A stored value is not valid JSON for the value type.
    #[error("the value stored for key {key:?} does not decode: {source}")]
    Decode {
        /// The row's key.
        key: String,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
    /// A stored version is negative (the store never writes one).
    #[error("the version stored for key {key:?} is negative: {version}")]
    NegativeVersion {
        /// The row's key.
        key: String,
        /// The stored version.
        version: i64,
    },
}

/// Why one write of a batch cannot be sent (always
/// [`Rejected`](tiered::write::StoreErrorKind::Rejected)).
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("key {key:?}: version {version} is above the largest BIGINT")]
    VersionOutOfRange { key: String, version: u64 },
    #[error("key {key:?}: the value does not serialize to JSON: {source}")]
    Serialize {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A stored row as read back: a value, or a tombstone (`value: None`), at a
/// version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<V> {
    /// The value; `None` for a deleted key.
    pub value: Option<V>,
    /// The highest version applied to the key.
    pub version: u64,
}

/// A `schema.table` name that passed [`quote_table`]: safe to put in SQL.
#[derive(Clone, Debug)]
struct Table {
    quoted: String,
}

#[derive(Clone, Debug)]
enum Mode {
    /// The default layout: one `UNNEST` statement per batch.
    Table { table: Table, upsert: Arc<str> },
    /// The caller's statements, row by row in a transaction.
    Statements { upsert: Arc<str>, delete: Arc<str> },
}

/// A [`Store`] writing to PostgreSQL; see the [crate docs](crate).
///
/// Cheap to clone (the pool is shared).
pub struct PgStore<V> {
    pool: PgPool,
    mode: Mode,
    timeout: Duration,
    // `fn() -> V`: a store holds no `V`, so it is Send + Sync whatever `V` is.
    _values: PhantomData<fn() -> V>,
}

impl<V> Clone for PgStore<V> {
    fn clone(&self) -> Self {
        PgStore {
            pool: self.pool.clone(),
            mode: self.mode.clone(),
            timeout: self.timeout,
            _values: PhantomData,
        }
    }
}

impl<V> fmt::Debug for PgStore<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("mode", &self.mode)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<V: tiered::Value> PgStore<V> {
    /// Connects a pool of up to [`DEFAULT_MAX_CONNECTIONS`] (waiting at most
    /// [`DEFAULT_ACQUIRE_TIMEOUT`] for one) to `url`, for the default layout
    /// in `table` (`name` or `schema.name`, taken as written: quoted, so
    /// case-sensitive). Does not create the table; see
    /// [`create_table`](Self::create_table).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTableName`], or the connection failed.
    pub async fn connect(url: &str, table: &str) -> Result<Self, Error> {
        // Before connecting: a bad name is a bug, whether or not the
        // database is up.
        let table = quote_table(table)?;
        let pool = PgPoolOptions::new()
            .max_connections(DEFAULT_MAX_CONNECTIONS)
            .acquire_timeout(DEFAULT_ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        Ok(Self::with_table(pool, table))
    }

    /// A store for the default layout in `table` on your `pool`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTableName`].
    pub fn new(pool: PgPool, table: &str) -> Result<Self, Error> {
        Ok(Self::with_table(pool, quote_table(table)?))
    }

    fn with_table(pool: PgPool, table: Table) -> Self {
        let upsert = format!(
            "INSERT INTO {t} AS stored (key, value, version, deleted) \
             SELECT * FROM UNNEST($1::text[], $2::jsonb[], $3::int8[], $4::bool[]) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
             version = EXCLUDED.version, deleted = EXCLUDED.deleted, updated_at = now() \
             WHERE stored.version < EXCLUDED.version",
            t = table.quoted
        );
        PgStore {
            pool,
            mode: Mode::Table {
                table,
                upsert: upsert.into(),
            },
            timeout: DEFAULT_TIMEOUT,
            _values: PhantomData,
        }
    }

    /// A store writing with your own statements, to map values into real
    /// columns. A batch runs them row by row in one transaction.
    ///
    /// * `upsert_sql` gets `$1` the key (`text`), `$2` the value (`jsonb`,
    ///   as `serde_json` writes `V`) and `$3` the version (`int8`).
    /// * `delete_sql` gets `$1` the key and `$2` the version.
    ///
    /// Both must keep the [contract](tiered::write::Store): change nothing
    /// unless the write's version is newer than the stored one (the `WHERE`
    /// of `ON CONFLICT … DO UPDATE`), and delete by keeping a tombstone with
    /// the version, not by removing the row — otherwise a replayed older
    /// write brings a deleted key back:
    ///
    /// ```no_run
    /// # use tiered_postgres::PgStore;
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct User { name: String, email: String }
    ///
    /// # async fn f(pool: sqlx::PgPool) {
    /// // CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT, email TEXT,
    /// //                     version BIGINT NOT NULL, deleted BOOLEAN NOT NULL);
    /// let store: PgStore<User> = PgStore::with_statements(
    ///     pool,
    ///     "INSERT INTO users AS u (id, name, email, version, deleted)
    ///      VALUES ($1::bigint, $2->>'name', $2->>'email', $3, false)
    ///      ON CONFLICT (id) DO UPDATE
    ///          SET name = EXCLUDED.name, email = EXCLUDED.email,
    ///              version = EXCLUDED.version, deleted = false
    ///          WHERE u.version < EXCLUDED.version",
    ///     "INSERT INTO users AS u (id, version, deleted)
    ///      VALUES ($1::bigint, $2, true)
    ///      ON CONFLICT (id) DO UPDATE
    ///          SET name = NULL, email = NULL, version = EXCLUDED.version, deleted = true
    ///          WHERE u.version < EXCLUDED.version",
    /// );
    /// # }
    /// ```
    ///
    /// A key that is not a number then fails the cast (SQLSTATE `22P02`) and
    /// is [rejected](classify), like any constraint the columns carry.
    /// [`get`](Self::get) and the other reads need the default layout and
    /// return [`Error::NoTable`] here.
    pub fn with_statements(
        pool: PgPool,
        upsert_sql: impl Into<String>,
        delete_sql: impl Into<String>,
    ) -> Self {
        PgStore {
            pool,
            mode: Mode::Statements {
                upsert: upsert_sql.into().into(),
                delete: delete_sql.into().into(),
            },
            timeout: DEFAULT_TIMEOUT,
            _values: PhantomData,
        }
    }

    /// Bounds one [`apply`](Store::apply) (default [`DEFAULT_TIMEOUT`]); past
    /// it the batch fails as unavailable. Without a bound a frozen server
    /// (a full disk, a paused VM) would hold write-behind forever; the batch
    /// may or may not have been applied, which the version guard makes safe
    /// to retry.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The pool, to run your own queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the default table (see the [crate docs](crate)) unless it
    /// exists. The schema of a `schema.name` must exist.
    ///
    /// # Errors
    ///
    /// [`Error::NoTable`] for a [`with_statements`](Self::with_statements)
    /// store, or the database failed.
    pub async fn create_table(&self) -> Result<(), Error> {
        let table = self.table()?;
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {t} (\
             key TEXT PRIMARY KEY, \
             value JSONB, \
             version BIGINT NOT NULL, \
             deleted BOOLEAN NOT NULL DEFAULT FALSE, \
             updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            t = table.quoted
        );
        sqlx::query(&sql).execute(&self.pool).await?;
        Ok(())
    }

    /// The live value of `key` and its version; `None` if the key was never
    /// written or is deleted.
    ///
    /// # Errors
    ///
    /// The database failed, or the stored value does not decode as `V`
    /// ([`Error::Decode`]).
    pub async fn get(&self, key: &str) -> Result<Option<(V, u64)>, Error> {
        Ok(self
            .stored(key)
            .await?
            .and_then(|s| s.value.map(|v| (v, s.version))))
    }

    /// The live value of `key`, for a cache loader:
    /// `cache.get_or_load(key, || store.load(key))`.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn load(&self, key: &str) -> Result<Option<V>, Error> {
        Ok(self.get(key).await?.map(|(v, _)| v))
    }

    /// The row of `key`, tombstones included (`value: None`); `None` if the
    /// key was never written.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn stored(&self, key: &str) -> Result<Option<Stored<V>>, Error> {
        let sql = format!(
            "SELECT key, CASE WHEN deleted THEN NULL ELSE value::text END AS value, version \
             FROM {} WHERE key = $1",
            self.table()?.quoted
        );
        let row = sqlx::query(&sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| decode_row(&r).map(|(_, stored)| stored))
            .transpose()
    }

    /// Every live row (tombstones left out) with its version, by key.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn dump(&self) -> Result<Vec<(String, V, u64)>, Error> {
        let sql = format!(
            "SELECT key, value::text AS value, version FROM {} WHERE NOT deleted ORDER BY key",
            self.table()?.quoted
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        let mut live = Vec::with_capacity(rows.len());
        for row in &rows {
            let (key, stored) = decode_row::<V>(row)?;
            // A live row with an SQL NULL value was not written by this
            // store; it has nothing to return.
            if let Some(value) = stored.value {
                live.push((key, value, stored.version));
            }
        }
        Ok(live)
    }

    fn table(&self) -> Result<&Table, Error> {
        match &self.mode {
            Mode::Table { table, .. } => Ok(table),
            Mode::Statements { .. } => Err(Error::NoTable),
        }
    }

    async fn apply_batch(&self, batch: &[StoreWrite<V>]) -> Result<(), StoreError> {
        let rows = encode(batch)?;
        if rows.is_empty() {
            return Ok(());
        }
        match &self.mode {
            Mode::Table { upsert, .. } => {
                let mut keys = Vec::with_capacity(rows.len());
                let mut values = Vec::with_capacity(rows.len());
                let mut versions = Vec::with_capacity(rows.len());
                let mut deleted = Vec::with_capacity(rows.len());
                for row in rows {
                    keys.push(row.key);
                    deleted.push(row.value.is_none());
                    values.push(row.value.map(Json));
                    versions.push(row.version);
                }
                sqlx::query(upsert)
                    .bind(keys)
                    .bind(values)
                    .bind(versions)
                    .bind(deleted)
                    .execute(&self.pool)
                    .await
                    .map_err(classify)?;
            }
            Mode::Statements { upsert, delete } => {
                let mut tx = self.pool.begin().await.map_err(classify)?;
                for row in rows {
                    let query = match row.value {
                        Some(value) => sqlx::query(upsert)
                            .bind(row.key)
                            .bind(Json(value))
                            .bind(row.version),
                        None => sqlx::query(delete).bind(row.key).bind(row.version),
                    };
                    // An error drops `tx`, which rolls the batch back.
                    query.execute(&mut *tx).await.map_err(classify)?;
                }
                tx.commit().await.map_err(classify)?;
            }
        }
        Ok(())
    }
}

impl<V: tiered::Value> Store<V> for PgStore<V> {
    fn apply<'a>(&'a self, batch: &'a [StoreWrite<V>]) -> StoreFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.apply_batch(batch)).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::unavailable(format!(
                    "PostgreSQL did not apply the batch within {:?}",
                    self.timeout
                ))),
            }
        })
    }
}

/// One write, ready to bind.
struct Encoded<'a> {
    key: &'a str,
    value: Option<Box<RawValue>>,
    version: i64,
}

/// Serializes `batch`, keeping one write per key (the highest version) in
/// first-seen order.
///
/// The [`Store`] contract says a batch never holds two writes for one key,
/// but PostgreSQL fails an `INSERT … ON CONFLICT` that touches a row twice,
/// and that failure would be classified as unavailable and retried forever.
fn encode<V: serde::Serialize>(batch: &[StoreWrite<V>]) -> Result<Vec<Encoded<'_>>, StoreError> {
    let mut rows: Vec<Encoded<'_>> = Vec::with_capacity(batch.len());
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
    for write in batch {
        let version = i64::try_from(write.version).map_err(|_| {
            StoreError::rejected(WriteError::VersionOutOfRange {
                key: write.key.clone(),
                version: write.version,
            })
        })?;
        if let Some(&at) = seen.get(write.key.as_str()) {
            if rows[at].version >= version {
                continue;
            }
        }
        // Serialized once, to JSON text that is bound as is (no
        // `serde_json::Value` tree in between).
        let value = write
            .value
            .as_deref()
            .map(serde_json::value::to_raw_value)
            .transpose()
            .map_err(|source| {
                StoreError::rejected(WriteError::Serialize {
                    key: write.key.clone(),
                    source,
                })
            })?;
        let row = Encoded {
            key: &write.key,
            value,
            version,
        };
        match seen.get(write.key.as_str()) {
            Some(&at) => rows[at] = row,
            None => {
                seen.insert(&write.key, rows.len());
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// Decodes a `(key, value::text, version)` row.
fn decode_row<V: serde::de::DeserializeOwned>(
    row: &sqlx::postgres::PgRow,
) -> Result<(String, Stored<V>), Error> {
    let key: String = row.try_get("key")?;
    let text: Option<String> = row.try_get("value")?;
    let version: i64 = row.try_get("version")?;
    let value = match text {
        Some(text) => match serde_json::from_str(&text) {
            Ok(v) => Some(v),
            Err(source) => return Err(Error::Decode { key, source }),
        },
        None => None,
    };
    let version = match u64::try_from(version) {
        Ok(v) => v,
        Err(_) => return Err(Error::NegativeVersion { key, version }),
    };
    Ok((key, Stored { value, version }))
}

/// Classifies a failed statement as [`Rejected`](StoreError::rejected) or
/// [`Unavailable`](StoreError::unavailable).
///
/// Rejected: database errors whose SQLSTATE class is `22` (data exception) or
/// `23` (integrity-constraint violation), `54000` (program limit exceeded: a
/// value or key too large to store or index), and values that fail to encode
/// for the wire. These depend on the record alone, so no retry will ever get
/// it through: write-behind retries it alone a few times, then dead-letters
/// it, without holding up other keys.
///
/// Unavailable: everything else — I/O errors, pool timeouts, a closed pool,
/// protocol errors, and other database errors such as `57P01` (admin
/// shutdown), `40001` (serialization failure), `40P01` (deadlock), `42P01`
/// (undefined table) or `42703` (undefined column). These are retried for as
/// long as it takes, never dead-lettered: the server comes back, a conflict
/// clears, an operator creates the missing table or column — and then every
/// held write goes through instead of having been thrown away.
pub fn classify(error: sqlx::Error) -> StoreError {
    let rejected = match &error {
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            code.starts_with("22") || code.starts_with("23") || code == "54000"
        }),
        sqlx::Error::Encode(_) => true,
        _ => false,
    };
    if rejected {
        StoreError::rejected(error)
    } else {
        StoreError::unavailable(error)
    }
}

/// Checks `name` (`table` or `schema.table`) and quotes each part.
///
/// Quoting keeps the name as written (case-sensitive) and allows reserved
/// words (`order`, `user`); the check means the quotes are never needed for
/// safety: no `"`, space or `;` gets through.
fn quote_table(name: &str) -> Result<Table, Error> {
    let invalid = || Error::InvalidTableName(name.to_string());
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 {
        return Err(invalid());
    }
    let mut quoted = Vec::with_capacity(parts.len());
    for part in parts {
        let mut chars = part.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        // 63 bytes: PostgreSQL's NAMEDATALEN - 1; longer names are silently
        // truncated, which could make two tables one.
        if !first_ok || !rest_ok || part.len() > 63 {
            return Err(invalid());
        }
        quoted.push(format!("\"{part}\""));
    }
    Ok(Table {
        quoted: quoted.join("."),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_checked_and_quoted() {
        let ok = |n: &str| quote_table(n).map(|t| t.quoted).ok();
        assert_eq!(ok("users").as_deref(), Some("\"users\""));
        assert_eq!(ok("app.Users_2$").as_deref(), Some("\"app\".\"Users_2$\""));
        assert_eq!(ok("_x").as_deref(), Some("\"_x\""));
        assert_eq!(ok(&"a".repeat(63)).map(|s| s.len()), Some(65));
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a.b.c",
            "1abc",
            "$a",
            "a b",
            "a;drop table x",
            "a\"b",
            "\"a\"",
            "a-b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(quote_table(bad), Err(Error::InvalidTableName(_))),
                "{bad:?} accepted"
            );
        }
    }

    fn write(key: &str, version: u64, value: Option<u32>) -> StoreWrite<u32> {
        StoreWrite {
            key: key.into(),
            version,
            value: value.map(Arc::new),
        }
    }

    #[test]
    fn a_batch_keeps_the_highest_version_per_key() {
        let batch = [
            write("a", 2, Some(1)),
            write("b", 1, Some(2)),
            write("a", 5, None),
            write("a", 3, Some(3)),
        ];
        let rows = encode(&batch).expect("encodes");
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.key,
                    r.version,
                    r.value.as_ref().map(|v| v.get().to_string()),
                )
            })
            .collect();
        assert_eq!(got, [("a", 5, None), ("b", 1, Some("2".to_string()))]);
    }

    #[test]
    fn versions_above_i64_are_rejected() {
        let err = encode(&[write("a", u64::MAX, Some(1))])
            .err()
            .expect("rejected");
        assert_eq!(err.kind(), tiered::StoreErrorKind::Rejected);
        assert!(
            err.to_string().contains("above the largest BIGINT"),
            "{err}"
        );
    }
}
