//! Configuration: a TOML file, `TIERED_*` environment variables and flags.
//!
//! Precedence is flag > environment > file > default. Clap reads flags and
//! their environment variables (each flag names its variable in `--help`); the
//! file fills what neither gave. Everything is checked here, before a port is
//! bound: a bad file is reported with its path, line and field (the TOML
//! parser's span points at the offending value), a bad flag or variable by
//! its name.
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//! admin_listen = "127.0.0.1:9090"
//! admin_token_file = "/etc/tiered/admin-token"
//! redis = "redis://127.0.0.1:6379"      # or "redis+cluster://h1:7000,h2:7000"
//! l1_bytes = "256MiB"
//!
//! [proxy]
//! connect_timeout = "2s"
//! read_timeout = "30s"
//!
//! [[route]]
//! prefix = "/api/"
//! origin = "http://127.0.0.1:3000"
//! ttl = "30s"
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

/// How long the gateway may wait on a client's upload before
/// [`Config::min_upload_rate`] applies (a slow start, such as a TCP
/// connection warming up, is not an attack).
pub const UPLOAD_GRACE: Duration = Duration::from_secs(5);

/// A configuration that cannot be used; the message says where and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Where to find Redis: one server, or the seeds of a Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://`, `rediss://` or `redis+unix://`.
    Standalone(String),
    /// `redis+cluster://host:port,host:port` (`rediss+cluster://` for TLS).
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// Parses a Redis URL; `redis+cluster://a:1,b:2` (or `rediss+cluster://`)
    /// names the seeds of a Cluster.
    pub fn parse(url: &str) -> Result<Self, String> {
        for (cluster, plain) in [
            ("redis+cluster://", "redis://"),
            ("rediss+cluster://", "rediss://"),
        ] {
            if let Some(rest) = url.strip_prefix(cluster) {
                let seeds: Vec<String> = rest
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| format!("{plain}{s}"))
                    .collect();
                if seeds.is_empty() {
                    return Err(format!("{url}: a cluster URL needs at least one host:port"));
                }
                return Ok(RedisTarget::Cluster(seeds));
            }
        }
        if ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|p| url.starts_with(p))
        {
            Ok(RedisTarget::Standalone(url.to_owned()))
        } else {
            Err(format!(
                "{url}: expected redis://, rediss://, redis+unix:// or redis+cluster://"
            ))
        }
    }
}

/// An upstream and the requests routed to it.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix this route serves (`/` for everything).
    pub prefix: String,
    /// Only requests for this `Host` (without port), if set.
    pub host: Option<String>,
    /// `http://host:port` of the origin.
    pub origin: Uri,
    /// Cache every storable response of this route for this long, whatever
    /// its freshness headers say (they still decide whether it may be stored).
    pub ttl: Option<Duration>,
    /// Never cache this route.
    pub bypass: bool,
    /// Query parameters left out of the cache key (e.g. `utm_source`).
    pub ignore_query: Vec<String>,
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Everything `tiered serve` runs with, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client-facing listener.
    pub listen: SocketAddr,
    /// Admin API and dashboard listener.
    pub admin_listen: SocketAddr,
    /// Bearer token for the admin API; `None` allows only a loopback listener.
    pub admin_token: Option<String>,
    /// Shared L2 and backplane.
    pub redis: Option<RedisTarget>,
    /// L1 budget in bytes.
    pub l1_bytes: u64,
    /// Upstreams, most specific first.
    pub routes: Vec<Route>,
    /// Upstream TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed for the origin's response headers (counted from the
    /// last chunk of the request body sent; an origin that stops reading
    /// the body that long is a 504 too), and between two chunks of the
    /// response body. A client whose upload stalls that long, counted from
    /// when the gateway began waiting on it, gets a 408.
    pub read_timeout: Duration,
    /// Largest request body accepted (413 above it).
    pub max_request_body: u64,
    /// Slowest request body accepted, in bytes per second of time spent
    /// waiting on the client for it, once that time exceeds
    /// [`UPLOAD_GRACE`]; slower uploads get a 408 (once the origin has
    /// answered, the upload and both connections are cut instead). 0 is
    /// off.
    pub min_upload_rate: u64,
    /// Largest response stored in the cache (bigger ones are streamed through).
    pub max_cached_body: u64,
    /// After SIGTERM, how long `/readyz` says 503 while the gateway still
    /// accepts and serves, so load balancers stop routing to it first.
    pub drain_delay: Duration,
    /// Time in-flight requests get to finish once the gateway stops
    /// accepting.
    pub shutdown_grace: Duration,
    /// Answer `/healthz` and `/readyz` on the client listener too.
    pub health_on_listener: bool,
    /// `stale-if-error` applied when the origin sends none.
    pub stale_if_error: Duration,
    /// Extra targeted Cache-Control fields (e.g. `CDN-Cache-Control`).
    pub targeted_fields: Vec<String>,
    /// Heuristic freshness fraction of the `Last-Modified` age, if enabled.
    pub heuristic: Option<f64>,
    /// Header naming the tenant, if the cache is partitioned by tenant.
    pub tenant_header: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (`info`, `tiered_gateway=debug`, ...).
    pub log_level: String,
}

/// What flags and `TIERED_*` variables gave (clap fills this).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// TOML configuration file (see the README for every key).
    #[arg(long, short = 'c', env = "TIERED_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for clients [default: 127.0.0.1:8080].
    #[arg(long, env = "TIERED_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// The origin every request goes to (replaces the file's routes).
    #[arg(long, env = "TIERED_ORIGIN", value_name = "URL")]
    pub origin: Option<String>,
    /// Redis for the shared L2 tier and the backplane: redis://, rediss://,
    /// redis+unix://, or redis+cluster://host:port,host:port for a Cluster.
    /// Without it, tiered runs on L1 alone.
    #[arg(long, env = "TIERED_REDIS", value_name = "URL")]
    pub redis: Option<String>,
    /// Address of the admin API and dashboard [default: 127.0.0.1:9090].
    #[arg(long, env = "TIERED_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin API requires. Without a token the admin API
    /// only listens on loopback.
    #[arg(
        long,
        env = "TIERED_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Read the admin token from this file (first line).
    #[arg(long, env = "TIERED_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// L1 (in-process) budget, e.g. 268435456, 256MiB, 1GiB [default: 256MiB].
    #[arg(long, env = "TIERED_L1_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub l1_bytes: Option<u64>,
    /// Log format [default: pretty].
    #[arg(long, env = "TIERED_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info or tiered_gateway=debug [default: info].
    #[arg(long, env = "TIERED_LOG", value_name = "FILTER")]
    pub log_level: Option<String>,
}

// ---- the file ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<Addr>,
    admin_listen: Option<Addr>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    redis: Option<RedisUrl>,
    l1_bytes: Option<Size>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    #[serde(default)]
    proxy: ProxySection,
    #[serde(default)]
    cache: CacheSection,
    #[serde(default, rename = "route")]
    routes: Vec<RouteSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxySection {
    connect_timeout: Option<Timeout>,
    read_timeout: Option<Timeout>,
    max_request_body: Option<Size>,
    min_upload_rate: Option<Size>,
    shutdown_grace: Option<Dur>,
    drain_delay: Option<Dur>,
    health_on_listener: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheSection {
    max_body: Option<Size>,
    stale_if_error: Option<Dur>,
    #[serde(default)]
    targeted_fields: Vec<String>,
    heuristic_fraction: Option<Fraction>,
    tenant_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSection {
    prefix: Prefix,
    host: Option<toml::Spanned<String>>,
    origin: Origin,
    ttl: Option<Dur>,
    #[serde(default)]
    bypass: bool,
    #[serde(default)]
    ignore_query: Vec<String>,
}

/// Value types that check themselves while the file is parsed, so their
/// errors carry the TOML parser's line and column.
macro_rules! checked {
    ($name:ident, $inner:ty, $parse:expr) => {
        #[derive(Debug, Clone)]
        struct $name($inner);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = Raw::deserialize(d)?;
                let parse: fn(&Raw) -> Result<$inner, String> = $parse;
                parse(&raw).map($name).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A string, or (for sizes and fractions) a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Raw {
    fn text(&self) -> Result<&str, String> {
        match self {
            Raw::Text(s) => Ok(s),
            _ => Err("expected a string".into()),
        }
    }
}

checked!(Addr, SocketAddr, |r| {
    let s = r.text()?;
    s.parse()
        .map_err(|_| format!("invalid address {s:?} (expected IP:PORT)"))
});
checked!(Dur, Duration, |r| parse_duration(r.text()?));
checked!(Timeout, Duration, |r| {
    let d = parse_duration(r.text()?)?;
    if d.is_zero() {
        return Err("must be more than 0 (e.g. 500ms, 2s)".into());
    }
    Ok(d)
});
checked!(Size, u64, |r| match r {
    Raw::Int(n) if *n >= 0 => Ok(*n as u64),
    Raw::Text(s) => parse_size(s),
    _ => Err("expected a size like 268435456 or \"256MiB\"".into()),
});
checked!(Fraction, f64, |r| match r {
    Raw::Float(f) if (0.0..=1.0).contains(f) => Ok(*f),
    _ => Err("expected a number between 0.0 and 1.0".into()),
});
checked!(Origin, Uri, |r| parse_origin(r.text()?));
checked!(Prefix, String, |r| {
    let s = r.text()?;
    if s.starts_with('/') {
        Ok(s.to_owned())
    } else {
        Err(format!("route prefix {s:?} must start with '/'"))
    }
});
checked!(RedisUrl, RedisTarget, |r| RedisTarget::parse(r.text()?));

/// Parses `500ms`, `2s`, `5m`, `1h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (expected e.g. 500ms, 2s, 5m)"))?;
    let secs = |k: u64| Duration::from_secs(n.saturating_mul(k));
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(secs(1)),
        "m" => Ok(secs(60)),
        "h" => Ok(secs(3600)),
        "d" => Ok(secs(86400)),
        _ => Err(format!(
            "invalid duration {s:?}: unit must be ms, s, m, h or d"
        )),
    }
}

/// Parses `1048576`, `512KiB`, `256MiB`, `1GiB` (also KB/MB/GB as powers of 10).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (expected e.g. 268435456 or 256MiB)"))?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unit must be KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// An origin is `http://host[:port]` with nothing after the authority.
pub fn parse_origin(s: &str) -> Result<Uri, String> {
    let uri: Uri = s
        .parse()
        .map_err(|e| format!("invalid origin URL {s:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "origin {s:?}: https origins are not supported yet; put a TLS client proxy in between or use http"
            ))
        }
        _ => return Err(format!("origin {s:?} must start with http://")),
    }
    if uri.authority().is_none() {
        return Err(format!("origin {s:?} has no host"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!(
            "origin {s:?} must not have a path or query (routes keep the request's path)"
        ));
    }
    Ok(uri)
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        })
    }
}

fn read_file(path: &Path) -> Result<(File, String), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("config file {}: {e}", path.display())))?;
    let file =
        toml::from_str(&text).map_err(|e| err(format!("config file {}: {e}", path.display())))?;
    Ok((file, text))
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

/// Routes match the normalized path (see `tiered_http::normalize_path`).
fn normalize_prefix(prefix: &str) -> String {
    tiered_http::normalize_path(prefix).into_owned()
}

fn read_token(path: &Path, origin: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("{origin} {}: {e}", path.display())))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(err(format!(
            "{origin} {}: the file is empty",
            path.display()
        )));
    }
    Ok(token)
}

impl Config {
    /// Merges flags/env over the file (if any) over the defaults, and checks
    /// the result.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the file, line and field, or the flag.
    pub fn load(o: &Overrides) -> Result<Config, ConfigError> {
        let (file, text) = match &o.config {
            Some(path) => read_file(path)?,
            None => (File::default(), String::new()),
        };
        let where_file = || {
            o.config
                .as_ref()
                .map_or_else(String::new, |p| format!("config file {}: ", p.display()))
        };

        let routes = if let Some(origin) = &o.origin {
            let origin = parse_origin(origin).map_err(|e| err(format!("--origin: {e}")))?;
            vec![Route {
                prefix: "/".into(),
                host: None,
                origin,
                ttl: None,
                bypass: false,
                ignore_query: Vec::new(),
            }]
        } else {
            let mut routes = Vec::with_capacity(file.routes.len());
            for r in file.routes {
                let host = match r.host {
                    Some(h) if r.ttl.is_some() || !r.ignore_query.is_empty() => {
                        // The cache layer's rules match paths, not hosts: a
                        // host route's ttl would apply to every host.
                        return Err(err(format!(
                            "{}line {}: route.host: a route with a host cannot set ttl or ignore_query (yet); use the origin's Cache-Control",
                            where_file(),
                            line_of(&text, h.span().start)
                        )));
                    }
                    h => h.map(|h| h.into_inner().to_ascii_lowercase()),
                };
                routes.push(Route {
                    prefix: normalize_prefix(&r.prefix.0),
                    host,
                    origin: r.origin.0,
                    ttl: r.ttl.map(|d| d.0),
                    bypass: r.bypass,
                    ignore_query: r.ignore_query,
                });
            }
            // Most specific first: host routes before host-less ones, then
            // longer prefixes before shorter.
            routes.sort_by(|a, b| {
                (b.host.is_some(), b.prefix.len()).cmp(&(a.host.is_some(), a.prefix.len()))
            });
            routes
        };
        if routes.is_empty() {
            return Err(err(format!(
                "{}no origin: give --origin URL (or TIERED_ORIGIN), or [[route]] entries in the config file",
                where_file()
            )));
        }

        let admin_token = match (&o.admin_token, &o.admin_token_file) {
            // Flags and variables mix here (clap merges them), so which one
            // should win is ambiguous: refuse rather than guess.
            (Some(_), Some(_)) => {
                return Err(err(
                    "give --admin-token (TIERED_ADMIN_TOKEN) or --admin-token-file (TIERED_ADMIN_TOKEN_FILE), not both",
                ))
            }
            (Some(t), _) if t.is_empty() => return Err(err("--admin-token: empty token")),
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => Some(read_token(path, "--admin-token-file")?),
            (None, None) => match (&file.admin_token, &file.admin_token_file) {
                (Some(t), _) if t.is_empty() => {
                    return Err(err(format!("{}admin_token: empty token", where_file())))
                }
                (Some(t), _) => Some(t.clone()),
                (None, Some(path)) => Some(read_token(
                    path,
                    &format!("{}admin_token_file", where_file()),
                )?),
                (None, None) => None,
            },
        };
        let admin_listen = o
            .admin_listen
            .or(file.admin_listen.map(|a| a.0))
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090)));
        if admin_token.is_none() && !admin_listen.ip().is_loopback() {
            return Err(err(format!(
                "the admin API on {admin_listen} is not loopback-only: set --admin-token (or TIERED_ADMIN_TOKEN, admin_token_file), or listen on 127.0.0.1"
            )));
        }

        let redis = match &o.redis {
            Some(url) => Some(RedisTarget::parse(url).map_err(|e| err(format!("--redis: {e}")))?),
            None => file.redis.map(|r| r.0),
        };
        let l1_bytes = o
            .l1_bytes
            .or(file.l1_bytes.map(|s| s.0))
            .unwrap_or(256 << 20);
        if !(1 << 20..=tiered::MAX_L1_BYTES).contains(&l1_bytes) {
            return Err(err(format!(
                "l1_bytes {l1_bytes}: at least 1MiB and at most {}",
                tiered::MAX_L1_BYTES
            )));
        }
        let max_cached_body = file.cache.max_body.map_or(8 << 20, |s| s.0);
        if max_cached_body == 0 {
            return Err(err(format!("{}cache.max_body is 0", where_file())));
        }
        if max_cached_body > l1_bytes / 4 {
            return Err(err(format!(
                "{}cache.max_body ({max_cached_body}) must be at most a quarter of l1_bytes ({l1_bytes})",
                where_file()
            )));
        }
        for field in &file.cache.targeted_fields {
            if http::HeaderName::from_bytes(field.as_bytes()).is_err() {
                return Err(err(format!(
                    "{}cache.targeted_fields: {field:?} is not a header name",
                    where_file()
                )));
            }
        }
        if let Some(h) = &file.cache.tenant_header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(err(format!(
                    "{}cache.tenant_header: {h:?} is not a header name",
                    where_file()
                )));
            }
        }
        let log_level = o
            .log_level
            .clone()
            .or(file.log_level)
            .unwrap_or_else(|| "info".into());
        tracing_subscriber::EnvFilter::try_new(&log_level)
            .map_err(|e| err(format!("log level {log_level:?}: {e}")))?;

        Ok(Config {
            listen: o
                .listen
                .or(file.listen.map(|a| a.0))
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            admin_listen,
            admin_token,
            redis,
            l1_bytes,
            routes,
            connect_timeout: file
                .proxy
                .connect_timeout
                .map_or(Duration::from_secs(2), |d| d.0),
            read_timeout: file
                .proxy
                .read_timeout
                .map_or(Duration::from_secs(30), |d| d.0),
            max_request_body: file.proxy.max_request_body.map_or(16 << 20, |s| s.0),
            min_upload_rate: file.proxy.min_upload_rate.map_or(240, |s| s.0),
            max_cached_body,
            shutdown_grace: file
                .proxy
                .shutdown_grace
                .map_or(Duration::from_secs(30), |d| d.0),
            drain_delay: file.proxy.drain_delay.map_or(Duration::ZERO, |d| d.0),
            health_on_listener: file.proxy.health_on_listener.unwrap_or(true),
            stale_if_error: file.cache.stale_if_error.map_or(Duration::ZERO, |d| d.0),
            targeted_fields: file.cache.targeted_fields,
            heuristic: file.cache.heuristic_fraction.map(|f| f.0),
            tenant_header: file.cache.tenant_header,
            log_format: o
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Pretty),
            log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("tiered-cfg-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).map_err(|e| err(e.to_string()))?;
        let path = dir.join("tiered.toml");
        std::fs::write(&path, text).map_err(|e| err(e.to_string()))?;
        let out = Config::load(&Overrides {
            config: Some(path),
            ..Default::default()
        });
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    #[test]
    fn units_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("x2s").is_err());
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("1TiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn sizes_the_caches_would_refuse_are_refused_here() {
        // Caught by `tiered check` and before a port is bound, not by the
        // cache builders later.
        let route = "[[route]]\nprefix = \"/\"\norigin = \"http://127.0.0.1:1\"\n";
        let huge = load_text(&format!("l1_bytes = \"8000000000000000000\"\n{route}"));
        assert!(huge.is_err_and(|e| e.to_string().contains("l1_bytes")));
        let zero = load_text(&format!("{route}[cache]\nmax_body = \"0\"\n"));
        assert!(zero.is_err_and(|e| e.to_string().contains("max_body is 0")));
    }

    #[test]
    fn redis_urls() {
        assert_eq!(
            RedisTarget::parse("redis+cluster://a:1,b:2"),
            Ok(RedisTarget::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
        assert!(RedisTarget::parse("http://x").is_err());
        assert!(RedisTarget::parse("redis+cluster://").is_err());
    }

    #[test]
    fn routes_sort_most_specific_first() -> Result<(), ConfigError> {
        let c = load_text(
            r#"
[[route]]
prefix = "/"
origin = "http://127.0.0.1:1"
[[route]]
prefix = "/api/"
origin = "http://127.0.0.1:2"
[[route]]
prefix = "/"
host = "Static.Example"
origin = "http://127.0.0.1:3"
"#,
        )?;
        let order: Vec<_> = c.routes.iter().map(|r| r.origin.to_string()).collect();
        assert_eq!(
            order,
            [
                "http://127.0.0.1:3/",
                "http://127.0.0.1:2/",
                "http://127.0.0.1:1/"
            ]
        );
        assert_eq!(c.routes[0].host.as_deref(), Some("static.example"));
        Ok(())
    }

    #[test]
    fn file_errors_name_line_and_field() {
        let e = load_text("listen = \"127.0.0.1:1\"\n[proxy]\nread_timeout = \"30 parsecs\"\n")
            .map(|_| ())
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert!(e.contains("tiered.toml"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("read_timeout"), "{e}");

        let e = load_text("lisen = \"127.0.0.1:1\"\n")
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert!(
            e.contains("line 1") && e.contains("unknown field `lisen`"),
            "{e}"
        );

        let e = load_text("[[route]]\nprefix = \"/\"\norigin = \"ftp://x\"\n")
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert!(e.contains("line 3") && e.contains("http://"), "{e}");
    }

    #[test]
    fn a_public_admin_listener_needs_a_token() {
        let e = Config::load(&Overrides {
            origin: Some("http://127.0.0.1:1".into()),
            admin_listen: Some(SocketAddr::from(([0, 0, 0, 0], 9090))),
            ..Default::default()
        });
        assert!(e.is_err());
        let ok = Config::load(&Overrides {
            origin: Some("http://127.0.0.1:1".into()),
            admin_listen: Some(SocketAddr::from(([0, 0, 0, 0], 9090))),
            admin_token: Some("s3cret".into()),
            ..Default::default()
        });
        assert!(ok.is_ok());
    }

    #[test]
    fn flags_override_the_file() -> Result<(), ConfigError> {
        let dir = std::env::temp_dir().join(format!("tiered-cfg-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).map_err(|e| err(e.to_string()))?;
        let path = dir.join("tiered.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1000\"\nl1_bytes = \"64MiB\"\n[[route]]\nprefix = \"/\"\norigin = \"http://127.0.0.1:1\"\n",
        )
        .map_err(|e| err(e.to_string()))?;
        let c = Config::load(&Overrides {
            config: Some(path),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 2000))),
            ..Default::default()
        })?;
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(c.listen.port(), 2000);
        assert_eq!(c.l1_bytes, 64 << 20);
        Ok(())
    }
}
