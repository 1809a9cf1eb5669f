//! Private `redis-server` processes for tests: standalone, TLS + ACL, and a
//! 3-master Redis Cluster, each on free ports in its own temporary directory.
//!
//! Every test starts its own servers, so tests run in parallel and can kill,
//! pause (`SIGSTOP`) and resume them without disturbing each other. Processes are
//! killed when the handle drops.
//!
//! Needs `redis-server` and `redis-cli` on `PATH` (Debian package
//! `redis-server`), and `openssl` for the TLS certificates.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The ACL user a [`RedisConfig::acl`] server accepts.
pub const ACL_USER: &str = "tiered";
/// Its password.
pub const ACL_PASSWORD: &str = "s3cret-pass";

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct RedisConfig {
    /// Serve TLS only (a test CA signs the server's certificate; see [`ca_cert`]).
    pub tls: bool,
    /// Disable the default user; only [`ACL_USER`] / [`ACL_PASSWORD`] may connect.
    pub acl: bool,
    /// Keep data across [`RedisServer::kill`] + [`RedisServer::restart`]
    /// (append-only file, fsync on every write).
    pub persistent: bool,
    /// With `persistent`: `appendfsync everysec` instead of `always`.
    pub fsync_every_second: bool,
    /// Start as a cluster node (used by [`RedisCluster`]).
    cluster: bool,
}

impl RedisConfig {
    /// TLS and ACL.
    pub fn secure() -> Self {
        RedisConfig {
            tls: true,
            acl: true,
            ..Default::default()
        }
    }

    /// Data survives a kill and restart.
    pub fn persistent() -> Self {
        RedisConfig {
            persistent: true,
            ..Default::default()
        }
    }

    /// Sets [`fsync_every_second`](Self::fsync_every_second).
    #[must_use]
    pub fn fsync_every_second(mut self, yes: bool) -> Self {
        self.fsync_every_second = yes;
        self
    }
}

/// A private `redis-server` process.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    config: RedisConfig,
}

impl RedisServer {
    /// Starts a standalone server without persistence.
    ///
    /// # Panics
    ///
    /// If the server cannot be started (a test fixture: failing loudly is right).
    pub fn start() -> Self {
        Self::start_with(RedisConfig::default())
    }

    /// Starts a server as `config` says.
    ///
    /// # Panics
    ///
    /// If the server cannot be started.
    pub fn start_with(config: RedisConfig) -> Self {
        let dir = temp_dir("redis");
        let mut last = None;
        for _ in 0..5 {
            let port = free_port(config.cluster);
            let mut server = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
                config: config.clone(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => {
                    // Port taken between our probe and the bind: try another.
                    server.child.take().map(|mut c| c.kill());
                    last = Some(e);
                }
            }
        }
        panic!("could not start redis-server: {last:?}");
    }

    fn spawn(&mut self) -> io::Result<()> {
        let mut cmd = Command::new("redis-server");
        let port = self.port.to_string();
        cmd.args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "redis.log"]);
        if self.config.persistent {
            let policy = if self.config.fsync_every_second {
                "everysec"
            } else {
                "always"
            };
            cmd.args(["--appendonly", "yes", "--appendfsync", policy]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if self.config.tls {
            let certs = certs();
            cmd.args(["--port", "0", "--tls-port", &port])
                .arg("--tls-cert-file")
                .arg(certs.join("server.crt"))
                .arg("--tls-key-file")
                .arg(certs.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(certs.join("ca.crt"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &port]);
        }
        if self.config.acl {
            // One argument per word: redis-server joins them into the
            // `user` directive (a single quoted argument would be one word).
            let password = format!(">{ACL_PASSWORD}");
            cmd.args(["--user", ACL_USER, "on", &password, "~*", "&*", "+@all"])
                .args(["--user", "default", "off"]);
        }
        if self.config.cluster {
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "2000"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn()?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    let log =
                        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                    return Err(io::Error::other(format!(
                        "redis-server exited ({status}): {}",
                        log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                    )));
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && (self.config.tls || self.config.acl || ping(self.port))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("redis-server did not start in time"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL to connect with: `redis://127.0.0.1:PORT`, or for a secure server
    /// `rediss://tiered:PASSWORD@localhost:PORT` (the certificate names
    /// `localhost`; pass [`ca_cert`] as the root).
    pub fn url(&self) -> String {
        let scheme = if self.config.tls { "rediss" } else { "redis" };
        let host = if self.config.tls {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let auth = if self.config.acl {
            format!("{ACL_USER}:{ACL_PASSWORD}@")
        } else {
            String::new()
        };
        format!("{scheme}://{auth}{host}:{}", self.port)
    }

    /// Kills the process with `SIGKILL`: connections drop, nothing is flushed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)).
    ///
    /// # Panics
    ///
    /// If it does not come back.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("redis-server restart: {e}"),
                Err(_) => {
                    if let Some(mut c) = self.child.take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Freezes the process (`SIGSTOP`): connections stay open, requests hang.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes a paused process (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.id().to_string())
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "kill -{sig} failed for redis-server"
            );
        }
    }

    /// Runs `redis-cli` against this (plain, non-ACL) server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL also ends a paused (SIGSTOPped) process.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 3-master Redis Cluster (no replicas), each node a private process.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes, assigns the 16384 slots among them and waits until the
    /// cluster reports `cluster_state:ok` on every node.
    ///
    /// # Panics
    ///
    /// If the cluster does not form.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(RedisConfig {
                    cluster: true,
                    ..Default::default()
                })
            })
            .collect();
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let out = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + START_TIMEOUT;
        while !nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { nodes }
    }

    /// The seed URLs, one per node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, to kill or pause one.
    pub fn nodes(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }
}

/// The directory holding `ca.crt` (the test CA), `server.crt` and `server.key`,
/// made once per process with `openssl`.
///
/// # Panics
///
/// If `openssl` fails.
pub fn certs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = temp_dir("certs");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        run(&[
            &["req", "-x509", "-nodes", "-days", "2"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=tiered test CA",
            ],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat());
        run(&[
            &["req", "-nodes"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat());
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext.cnf");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        dir
    })
}

/// The test CA's certificate (PEM), to trust when connecting to a TLS server.
pub fn ca_cert() -> Vec<u8> {
    std::fs::read(certs().join("ca.crt")).expect("read ca.crt")
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `PING` over a raw socket (no redis-cli process per probe).
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A port free right now; for cluster nodes, its bus port (+10000) too.
///
/// Never the same port twice in one process: a server that was killed keeps
/// its port for [`RedisServer::restart`], and another test must not grab it
/// meanwhile (the test would then talk to someone else's server). Shared with
/// [`crate::postgres`] for the same reason.
pub(crate) fn free_port(cluster: bool) -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local addr").port();
        let mut used = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        let taken = |p: u16| used.contains(&p);
        if taken(port) || (cluster && taken(port + 10_000)) {
            continue;
        }
        if cluster && (port >= 55_000 || TcpListener::bind(("127.0.0.1", port + 10_000)).is_err()) {
            continue;
        }
        used.push(port);
        if cluster {
            used.push(port + 10_000);
        }
        return port;
    }
}

/// A new, empty directory under the system temp dir, unique in this machine.
pub(crate) fn temp_dir(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tiered-testkit-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}
