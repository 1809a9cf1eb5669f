//! Private PostgreSQL servers for tests, each on a free port with its own data
//! directory under the system temp dir.
//!
//! Every test starts its own server, so tests run in parallel and can stop,
//! kill, pause (`SIGSTOP`) and resume them without disturbing each other. The
//! process (and its data) goes away when the handle drops.
//!
//! Needs the PostgreSQL server binaries (`postgres`, `initdb`, `pg_isready`;
//! Debian package `postgresql`), found on `PATH` or else in the highest
//! `/usr/lib/postgresql/*/bin`.
//!
//! # Speed
//!
//! `initdb` takes about a second, most of a server's start. It runs once per
//! machine and PostgreSQL version, into a template cluster under the temp dir;
//! each server then starts from a copy of it (`cp -a`, about a tenth of that).
//!
//! # Running as root
//!
//! PostgreSQL refuses to run as root, which CI and the dev machines are. Then
//! `initdb` and `postgres` run as the `postgres` system user, which owns the
//! data directories; as any other user they run as that user.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::redis::{free_port, temp_dir};

/// How long a server may take to accept connections, or to shut down.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A private `postgres` process with a superuser `postgres` that needs no
/// password (trust authentication, on 127.0.0.1 only).
///
/// Nothing is synced to disk (`fsync=off`, `full_page_writes=off`): data
/// survives [`stop`](Self::stop) and [`kill`](Self::kill) of the server, not
/// a crash of the machine, which no test needs. Commits are synchronous: each
/// one is written (not synced) to the OS before it returns, so a killed server
/// keeps every commit it acknowledged.
#[derive(Debug)]
pub struct PostgresServer {
    child: Option<Child>,
    port: u16,
    /// Holds `data/` (the cluster, also the Unix socket's directory) and
    /// `postgres.log`.
    dir: PathBuf,
    /// Production durability (`fsync=on`), for benchmarks.
    durable: bool,
}

impl PostgresServer {
    /// Starts a server with an empty `postgres` database.
    ///
    /// # Panics
    ///
    /// If the server cannot be started (a test fixture: failing loudly is
    /// right), with the end of its log.
    pub fn start() -> Self {
        Self::start_inner(false)
    }

    /// Starts a server with PostgreSQL's default durability (`fsync=on`,
    /// `full_page_writes=on`): every commit is on disk when it returns, as in
    /// production. For benchmarks, where the cost of a commit must be real.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_durable() -> Self {
        Self::start_inner(true)
    }

    fn start_inner(durable: bool) -> Self {
        let template = template();
        let dir = temp_dir("postgres");
        let data = dir.join("data");
        // A directory left by a crashed process with our pid: `cp` would copy
        // the template *into* it.
        if data.exists() {
            std::fs::remove_dir_all(&data).expect("remove a stale data dir");
        }
        // `-a` keeps the owner (the `postgres` user when we are root) and the
        // 0700 mode the server insists on.
        run(Command::new("cp").arg("-a").arg(template).arg(&data));
        let mut server = PostgresServer {
            child: None,
            port: 0,
            dir,
            durable,
        };
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port(false);
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => {
                    // Port taken between our probe and the bind: try another.
                    server.kill();
                    last = Some(e);
                }
            }
        }
        // Dropping it removes the directory.
        drop(server);
        panic!("could not start postgres: {last:?}");
    }

    fn spawn(&mut self) -> io::Result<()> {
        let install = install();
        let data = self.dir.join("data");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))?;
        let mut cmd = Command::new(install.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string()])
            // The socket in the data dir: the default (/var/run/postgresql)
            // may not exist or not be writable.
            .arg("-k")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                if self.durable {
                    "fsync=on"
                } else {
                    "fsync=off"
                },
            ])
            // Not `off`: an asynchronous commit sits in the server's memory
            // for up to ~0.6 s, and `kill` would lose commits that clients
            // were told had succeeded. With `fsync=off`, `on` costs only a
            // write() per commit.
            .args(["-c", "synchronous_commit=on"])
            .args([
                "-c",
                if self.durable {
                    "full_page_writes=on"
                } else {
                    "full_page_writes=off"
                },
            ])
            .args(["-c", "max_connections=100"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some((uid, gid)) = install.run_as {
            cmd.uid(uid).gid(gid);
        }
        self.child = Some(cmd.spawn()?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let Some(child) = self.child.as_mut() else {
                return Err(io::Error::other("postgres is not running"));
            };
            let pid = child.id();
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "postgres exited ({status}): {}",
                    self.log_tail()
                )));
            }
            // The pid file must name *our* process as ready: `pg_isready`
            // alone could be answered by another server that took the port
            // while ours was down, and a killed server leaves a stale file.
            if self.pid_file_ready(pid) && self.is_ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "postgres did not start in {START_TIMEOUT:?}: {}",
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `data/postmaster.pid` says process `pid` accepts connections
    /// (first line the pid, eighth the status).
    fn pid_file_ready(&self, pid: u32) -> bool {
        let Ok(text) = std::fs::read_to_string(self.dir.join("data/postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = text.lines().collect();
        lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str())
            && lines.get(7).map(|l| l.trim()) == Some("ready")
    }

    fn is_ready(&self) -> bool {
        Command::new(install().bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-t", "2", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
        let mut tail: Vec<&str> = log.lines().rev().take(10).collect();
        tail.reverse();
        tail.join(" | ")
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Whether the process is up (possibly paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Shuts down cleanly ("fast" shutdown, `SIGINT`): open transactions roll
    /// back, connections drop, committed data stays for
    /// [`start_again`](Self::start_again). Resumes a paused server first.
    ///
    /// # Panics
    ///
    /// If it does not exit in time (it is killed first).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        // A stopped process would never handle the SIGINT, and a stopped
        // backend would hold up the shutdown.
        signal(&processes(pid), "CONT");
        signal(&[pid], "INT");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    self.child = Some(child);
                    self.kill();
                    panic!("postgres did not shut down: {}", self.log_tail());
                }
            }
        }
    }

    /// Kills the server and its backends with `SIGKILL`, like a crash:
    /// connections drop, nothing is shut down cleanly (committed data
    /// survives; the next start recovers from the WAL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            // Frozen first, so that it forks no process while we list them.
            // The backends too: left alone they would notice the death of
            // the postmaster only a moment later, holding the shared memory a
            // restart needs (and, until then, serving open connections).
            signal(&[pid], "STOP");
            signal(&processes(pid), "KILL");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a [stopped](Self::stop) or [killed](Self::kill) server again on
    /// the same port, with the same data.
    ///
    /// # Panics
    ///
    /// If it is running, or does not come back (retrying for a while: the
    /// port or the shared memory of a killed server may take a moment to be
    /// released).
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "start_again: the server is running; stop or kill it first"
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("postgres start_again: {e}"),
                Err(_) => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// [`stop`](Self::stop) then [`start_again`](Self::start_again).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Freezes the server and its backends (`SIGSTOP`): connections stay open,
    /// queries and new connections hang.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            let pid = child.id();
            // The postmaster first, so that it starts no backend we miss.
            assert!(signal(&[pid], "STOP"), "kill -STOP failed for postgres");
            signal(&children(pid), "STOP");
        }
    }

    /// Resumes a paused server (`SIGCONT`).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            let pid = child.id();
            assert!(signal(&[pid], "CONT"), "kill -CONT failed for postgres");
            signal(&children(pid), "CONT");
        }
    }

    /// Runs `sql` with `psql` against the `postgres` database and returns what
    /// it prints, unaligned and without headers (`-At`: one row a line,
    /// columns separated by `|`), without the final newline. Several
    /// statements separated by `;` run in one transaction.
    ///
    /// # Panics
    ///
    /// If `psql` fails (an SQL error, the server down), with its error.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(&install().psql)
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.ends_with('\n') {
            text.pop();
        }
        text
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // SIGKILL also ends a paused (SIGSTOPped) process.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `SIGsig` to `pids` with the `kill` command (no `unsafe`, no libc).
/// False if any of them failed (say, a backend that just exited); the others
/// are signalled all the same.
fn signal(pids: &[u32], sig: &str) -> bool {
    if pids.is_empty() {
        return true;
    }
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `postmaster` and its [`children`].
fn processes(postmaster: u32) -> Vec<u32> {
    let mut all = vec![postmaster];
    all.extend(children(postmaster));
    all
}

/// The postmaster's children: backends, one per connection, and the
/// background processes. Signals must name them: a process-group signal
/// would miss them, because each calls `setsid()` when it starts.
fn children(postmaster: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            // "PID (COMM) STATE PPID ...": COMM may hold spaces and parens,
            // so split after its last ')'.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == postmaster).then_some(pid)
        })
        .collect()
}

/// Where the binaries are and who runs them.
#[derive(Debug)]
struct Install {
    /// Holds `postgres`, `initdb` and `pg_isready`.
    bin: PathBuf,
    /// `psql`: in `bin` if there, else from `PATH`.
    psql: PathBuf,
    /// `postgres --version`, e.g. `15.20`, to key the template by.
    version: String,
    /// The `postgres` user's uid and gid when we are root.
    run_as: Option<(u32, u32)>,
}

fn install() -> &'static Install {
    static INSTALL: OnceLock<Install> = OnceLock::new();
    INSTALL.get_or_init(|| {
        let bin = find_bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries (postgres, initdb, pg_isready) not found on PATH \
                 nor in /usr/lib/postgresql/*/bin; install the Debian package `postgresql`"
            )
        });
        let psql = if bin.join("psql").is_file() {
            bin.join("psql")
        } else {
            PathBuf::from("psql")
        };
        let out = output(Command::new(bin.join("postgres")).arg("--version"));
        // "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)" -> "15.20";
        // only [0-9.] so that it is safe in a path.
        let version = out
            .split_whitespace()
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
            .map(|w| {
                w.chars()
                    .filter(|c| c.is_ascii_digit() || *c == '.')
                    .collect()
            })
            .unwrap_or_else(|| "unknown".to_string());
        let run_as = (current_uid() == 0).then(|| {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .expect("id runs");
                assert!(
                    out.status.success(),
                    "running as root, and PostgreSQL refuses to: there must be a `postgres` \
                     user to run it as (`id {flag} postgres` failed)"
                );
                parse_id(&out.stdout)
            };
            (id("-u"), id("-g"))
        });
        Install {
            bin,
            psql,
            version,
            run_as,
        }
    })
}

/// The directory of `postgres` found on `PATH` (through symlinks, so that
/// `/usr/local/bin/postgres -> /usr/lib/postgresql/15/bin/postgres` finds that
/// version's `pg_isready` and `psql`), else the highest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["postgres", "initdb", "pg_isready"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let exe = dir.join("postgres");
        if !exe.is_file() {
            continue;
        }
        if let Some(real) = std::fs::canonicalize(&exe)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            if complete(&real) {
                return Some(real);
            }
        }
        if complete(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            // "15", "9.6": compare numerically, 15 > 9.6.
            let key = name
                .split('.')
                .map(|n| n.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((key, e.path().join("bin")))
        })
        .filter(|(_, bin)| complete(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The effective uid, from `id -u` (no libc).
fn current_uid() -> u32 {
    parse_id(
        &Command::new("id")
            .arg("-u")
            .output()
            .expect("id runs")
            .stdout,
    )
}

fn parse_id(out: &[u8]) -> u32 {
    let text = String::from_utf8_lossy(out);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("`id` printed {text:?}, not a number"))
}

/// The template cluster: made by `initdb` once per machine, PostgreSQL version
/// and user, then only ever copied (never started, so it never changes).
///
/// Parallel test processes may each run `initdb` the first time; each does so
/// in a directory of its own and renames it into place, so the template is
/// always complete, and the losers of the race use the winner's.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let install = install();
        let base = std::env::temp_dir();
        let name = format!(
            "tiered-testkit-pg-template-{}-{}",
            install.version,
            current_uid()
        );
        let path = base.join(&name);
        static N: AtomicU64 = AtomicU64::new(0);
        let scratch = |what: &str| {
            base.join(format!(
                "{name}.{what}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ))
        };
        if path.exists() && !is_cluster(&path) {
            // Damaged (say, a temp cleaner removed files): move it aside, so
            // that the rename below can replace it.
            let aside = scratch("broken");
            if std::fs::rename(&path, &aside).is_ok() {
                let _ = std::fs::remove_dir_all(&aside);
            }
        }
        if is_cluster(&path) {
            return path;
        }
        let fresh = scratch("new");
        std::fs::create_dir(&fresh).expect("create a dir for initdb");
        if let Some((uid, gid)) = install.run_as {
            std::os::unix::fs::chown(&fresh, Some(uid), Some(gid)).expect("chown the initdb dir");
        }
        let mut initdb = Command::new(install.bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&fresh)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"])
            // C: always installed, and sorts the same everywhere.
            .args(["--locale=C", "--no-sync"])
            // Readable by the `postgres` user when we are root.
            .current_dir(&base);
        if let Some((uid, gid)) = install.run_as {
            initdb.uid(uid).gid(gid);
        }
        run(&mut initdb);
        // Fails if another process got there first (the target is a
        // non-empty directory): use theirs.
        if std::fs::rename(&fresh, &path).is_err() {
            let _ = std::fs::remove_dir_all(&fresh);
            assert!(
                is_cluster(&path),
                "could not put the template cluster at {}",
                path.display()
            );
        }
        path
    })
}

/// Whether `dir` holds a complete cluster as `initdb` leaves it.
fn is_cluster(dir: &Path) -> bool {
    ["PG_VERSION", "global/pg_control", "postgresql.conf"]
        .iter()
        .all(|f| dir.join(f).is_file())
}

/// Runs `cmd`, panicking with its output if it fails.
fn run(cmd: &mut Command) {
    output(cmd);
}

/// Runs `cmd` and returns its stdout, panicking with its output if it fails.
fn output(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} did not run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
