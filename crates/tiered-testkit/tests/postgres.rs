#![allow(clippy::unwrap_used)]
//! The private PostgreSQL server: starts, answers, keeps data across a stop,
//! pauses and resumes.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tiered_testkit::postgres::PostgresServer;

#[test]
fn starts_and_answers() {
    let server = PostgresServer::start();
    assert_eq!(server.psql("select 1"), "1");
    assert_eq!(
        server.url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", server.port())
    );
    // Superuser, UTF-8: what the stores' tests assume.
    assert_eq!(
        server.psql("select current_user, pg_encoding_to_char(encoding) from pg_database where datname = 'postgres'"),
        "postgres|UTF8"
    );
}

#[test]
fn data_survives_stop_and_start_again_and_kill() {
    let mut server = PostgresServer::start();
    let port = server.port();
    server.psql("create table t (id int primary key); insert into t values (1), (2)");
    server.stop();
    assert!(!server.is_running());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    server.start_again();
    assert_eq!(server.port(), port);
    assert_eq!(server.psql("select count(*) from t"), "2");
    // A crash: committed rows survive (recovery from the WAL).
    server.psql("insert into t values (3)");
    server.kill();
    server.start_again();
    assert_eq!(
        server.psql("select string_agg(id::text, ',' order by id) from t"),
        "1,2,3"
    );
    server.restart();
    assert_eq!(server.psql("select count(*) from t"), "3");
}

#[test]
fn pause_freezes_open_and_new_connections_until_resume() {
    let server = PostgresServer::start();
    // An open connection: psql reading queries from a pipe, its answers read
    // by a thread.
    let mut open = Command::new("psql")
        .args(["-X", "-At"])
        .arg(server.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = open.stdin.take().unwrap();
    let output = BufReader::new(open.stdout.take().unwrap());
    let (tx, answers) = mpsc::channel();
    std::thread::spawn(move || {
        for line in output.lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    writeln!(input, "select 1;").unwrap();
    assert_eq!(answers.recv_timeout(Duration::from_secs(10)).unwrap(), "1");

    server.pause();
    writeln!(input, "select 2;").unwrap();
    let new = Command::new("psql")
        .args(["-X", "-At", "-c", "select 3"])
        .arg(server.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        answers.recv_timeout(Duration::from_millis(500)).is_err(),
        "a paused server answered on an open connection"
    );
    let mut new = new;
    assert!(
        new.try_wait().unwrap().is_none(),
        "a paused server accepted a connection"
    );

    server.resume();
    assert_eq!(answers.recv_timeout(Duration::from_secs(10)).unwrap(), "2");
    let deadline = Instant::now() + Duration::from_secs(10);
    while new.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no answer after resume");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = new.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    drop(input);
    open.wait().unwrap();
}

#[test]
fn drop_removes_the_process_and_data() {
    let server = PostgresServer::start();
    let port = server.port();
    server.pause();
    drop(server);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}
