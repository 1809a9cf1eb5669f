#![allow(clippy::unwrap_used)]
//! `PgStore` against a private PostgreSQL server per test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use tiered::write::{Store, StoreErrorKind, StoreWrite};
use tiered_postgres::{Error, PgStore, Stored};
use tiered_testkit::postgres::PostgresServer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    email: String,
}

fn user(name: &str) -> User {
    User {
        name: name.into(),
        email: format!("{name}@example.com"),
    }
}

fn put(key: &str, version: u64, value: User) -> StoreWrite<User> {
    StoreWrite {
        key: key.into(),
        version,
        value: Some(Arc::new(value)),
    }
}

fn del(key: &str, version: u64) -> StoreWrite<User> {
    StoreWrite {
        key: key.into(),
        version,
        value: None,
    }
}

/// A server and a store on a fresh default table `users`, whose pool gives up
/// on a connection after 1 s (so that "server down" tests are quick).
async fn setup() -> (PostgresServer, PgStore<User>) {
    let server = PostgresServer::start();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(1))
        .connect(&server.url())
        .await
        .unwrap();
    let store = PgStore::new(pool, "users").unwrap();
    store.create_table().await.unwrap();
    (server, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_creates_and_round_trips() {
    let server = PostgresServer::start();
    let store: PgStore<User> = PgStore::connect(&server.url(), "public.Cache_Users")
        .await
        .unwrap();
    store.create_table().await.unwrap();
    // Idempotent.
    store.create_table().await.unwrap();
    assert_eq!(store.get("1").await.unwrap(), None);
    store.apply(&[put("1", 3, user("ada"))]).await.unwrap();
    assert_eq!(store.get("1").await.unwrap(), Some((user("ada"), 3)));
    assert_eq!(store.load("1").await.unwrap(), Some(user("ada")));
    // Quoted as written: the table's name keeps its capitals.
    assert_eq!(
        server.psql(r#"select key, value->>'name', version, deleted from "Cache_Users""#),
        "1|ada|3|f"
    );
    // An empty batch is fine.
    store.apply(&[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_and_equal_versions_are_ignored_so_replays_are_harmless() {
    let (_server, store) = setup().await;
    let batch = [put("a", 2, user("a2")), put("b", 5, user("b5"))];
    store.apply(&batch).await.unwrap();
    // The same batch again (a replay after a crash): nothing changes, no error.
    store.apply(&batch).await.unwrap();
    // Older, and equal with a different value: ignored.
    store
        .apply(&[put("a", 1, user("a1")), put("b", 5, user("other"))])
        .await
        .unwrap();
    assert_eq!(
        store.dump().await.unwrap(),
        [
            ("a".to_string(), user("a2"), 2),
            ("b".to_string(), user("b5"), 5)
        ]
    );
    // Newer: applied.
    store.apply(&[put("a", 3, user("a3"))]).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some((user("a3"), 3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_keeps_a_tombstone_that_older_writes_cannot_resurrect() {
    let (server, store) = setup().await;
    store.apply(&[put("k", 1, user("v1"))]).await.unwrap();
    store.apply(&[del("k", 2)]).await.unwrap();
    assert_eq!(store.get("k").await.unwrap(), None);
    assert_eq!(
        store.stored("k").await.unwrap(),
        Some(Stored {
            value: None,
            version: 2
        })
    );
    assert_eq!(
        server.psql("select value is null, deleted, version from users"),
        "t|t|2"
    );
    // The write the delete superseded, replayed: still deleted.
    store.apply(&[put("k", 1, user("v1"))]).await.unwrap();
    assert_eq!(store.get("k").await.unwrap(), None);
    assert!(store.dump().await.unwrap().is_empty());
    // Deleting a key never written leaves a tombstone too.
    store.apply(&[del("never", 4)]).await.unwrap();
    store.apply(&[put("never", 3, user("late"))]).await.unwrap();
    assert_eq!(store.load("never").await.unwrap(), None);
    // A newer write brings the key back.
    store.apply(&[put("k", 3, user("v3"))]).await.unwrap();
    assert_eq!(store.get("k").await.unwrap(), Some((user("v3"), 3)));
    assert_eq!(store.stored("missing").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_row_fails_the_whole_batch_and_applies_nothing() {
    let (server, store) = setup().await;
    server.psql(
        "alter table users add constraint no_poison \
         check (value->>'name' is distinct from 'poison')",
    );
    store.apply(&[put("a", 1, user("a1"))]).await.unwrap();
    let batch = [
        put("a", 2, user("a2")),
        put("p", 1, user("poison")),
        put("c", 1, user("c1")),
    ];
    let err = store.apply(&batch).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Rejected, "{err}");
    assert!(err.to_string().contains("no_poison"), "{err}");
    // Nothing of it applied.
    assert_eq!(
        store.dump().await.unwrap(),
        [("a".to_string(), user("a1"), 1)]
    );
    // Without the culprit it goes through.
    store
        .apply(&[batch[0].clone(), batch[2].clone()])
        .await
        .unwrap();
    assert_eq!(store.dump().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_errors_are_rejected() {
    let (_server, store) = setup().await;
    // A version PostgreSQL cannot hold.
    let err = store
        .apply(&[put("a", u64::MAX, user("a"))])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Rejected, "{err}");
    // A NUL in a key: invalid text for PostgreSQL (SQLSTATE 22021).
    let err = store.apply(&[put("a\0b", 1, user("a"))]).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Rejected, "{err}");
    // A NUL in a JSON string: jsonb refuses it (22P05).
    let err = store.apply(&[put("a", 1, user("x\0y"))]).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Rejected, "{err}");
    assert!(store.dump().await.unwrap().is_empty());
}

/// A value whose serialization fails.
#[derive(Debug, Deserialize)]
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("cannot serialize this"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_does_not_serialize_is_rejected() {
    let server = PostgresServer::start();
    let store: PgStore<Unserializable> = PgStore::connect(&server.url(), "t").await.unwrap();
    store.create_table().await.unwrap();
    let err = store
        .apply(&[StoreWrite {
            key: "k".into(),
            version: 1,
            value: Some(Arc::new(Unserializable)),
        }])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Rejected);
    assert!(err.to_string().contains("cannot serialize this"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writes_to_one_key_in_a_batch_keep_the_highest_version() {
    let (_server, store) = setup().await;
    store
        .apply(&[
            put("a", 2, user("a2")),
            put("a", 7, user("a7")),
            put("a", 3, user("a3")),
        ])
        .await
        .unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some((user("a7"), 7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_while_the_server_is_down_then_works_again() {
    let (mut server, store) = setup().await;
    store.apply(&[put("a", 1, user("a1"))]).await.unwrap();
    server.stop();
    let err = store.apply(&[put("a", 2, user("a2"))]).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    server.start_again();
    // The pool replaces its dead connections.
    store.apply(&[put("a", 2, user("a2"))]).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some((user("a2"), 2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_times_out_as_unavailable() {
    let (server, store) = setup().await;
    let store = store.with_timeout(Duration::from_millis(500));
    store.apply(&[put("a", 1, user("a1"))]).await.unwrap();
    server.pause();
    let started = Instant::now();
    let err = store.apply(&[put("a", 2, user("a2"))]).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    server.resume();
    store.apply(&[put("a", 2, user("a2"))]).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some((user("a2"), 2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_unavailable_not_rejected() {
    let (server, store) = setup().await;
    server.psql("drop table users");
    let err = store.apply(&[put("a", 1, user("a1"))]).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    // An operator fixes it; the same writes go through.
    store.create_table().await.unwrap();
    store.apply(&[put("a", 1, user("a1"))]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_value_that_does_not_decode_is_an_error() {
    let (server, store) = setup().await;
    server.psql(r#"insert into users (key, value, version) values ('bad', '{"name": 42}', 1)"#);
    match store.get("bad").await {
        Err(Error::Decode { key, .. }) => assert_eq!(key, "bad"),
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert!(matches!(store.dump().await, Err(Error::Decode { .. })));
    server.psql(
        r#"update users set value = '{"name": "n", "email": "e"}', version = -1 where key = 'bad'"#,
    );
    assert!(matches!(
        store.stored("bad").await,
        Err(Error::NegativeVersion { version: -1, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_table_names_are_refused() {
    let server = PostgresServer::start();
    for bad in [
        "users; drop table x",
        "a.b.c",
        "",
        "1users",
        "us\"ers",
        "a b",
    ] {
        let err = PgStore::<User>::connect(&server.url(), bad)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidTableName(_)), "{bad:?}: {err}");
    }
    let pool = PgPoolOptions::new().connect_lazy(&server.url()).unwrap();
    assert!(matches!(
        PgStore::<User>::new(pool, "x.y.z"),
        Err(Error::InvalidTableName(_))
    ));
}

const UPSERT: &str = "INSERT INTO people AS p (id, name, email, version, deleted)
     VALUES ($1::bigint, $2->>'name', $2->>'email', $3, false)
     ON CONFLICT (id) DO UPDATE
         SET name = EXCLUDED.name, email = EXCLUDED.email,
             version = EXCLUDED.version, deleted = false
         WHERE p.version < EXCLUDED.version";

const DELETE: &str = "INSERT INTO people AS p (id, version, deleted)
     VALUES ($1::bigint, $2, true)
     ON CONFLICT (id) DO UPDATE
         SET name = NULL, email = NULL, version = EXCLUDED.version, deleted = true
         WHERE p.version < EXCLUDED.version";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_statements_map_values_into_columns() {
    let server = PostgresServer::start();
    server.psql(
        "create table people (id bigint primary key, name text check (name <> 'poison'), \
         email text, version bigint not null, deleted boolean not null)",
    );
    let pool = PgPoolOptions::new().connect(&server.url()).await.unwrap();
    let store: PgStore<User> = PgStore::with_statements(pool, UPSERT, DELETE);
    let people = || server.psql("select id, name, email, version, deleted from people order by id");

    store
        .apply(&[put("1", 2, user("ada")), put("2", 1, user("bob"))])
        .await
        .unwrap();
    assert_eq!(
        people(),
        "1|ada|ada@example.com|2|f\n2|bob|bob@example.com|1|f"
    );
    // Older: ignored. Delete: a tombstone that an older replay cannot undo.
    store
        .apply(&[put("1", 1, user("old")), del("2", 2)])
        .await
        .unwrap();
    store.apply(&[put("2", 1, user("bob"))]).await.unwrap();
    assert_eq!(people(), "1|ada|ada@example.com|2|f\n2|||2|t");

    // Atomic: a CHECK violation in the second row undoes the first.
    let err = store
        .apply(&[put("3", 1, user("cy")), put("4", 1, user("poison"))])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Rejected, "{err}");
    // A key the mapping cannot cast (22P02): rejected.
    let err = store.apply(&[put("x", 1, user("cy"))]).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Rejected, "{err}");
    assert_eq!(server.psql("select count(*) from people"), "2");

    // Reads need the default layout.
    assert!(matches!(store.get("1").await, Err(Error::NoTable)));
    assert!(matches!(store.create_table().await, Err(Error::NoTable)));
}
