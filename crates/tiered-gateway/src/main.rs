//! The `tiered` binary: `serve`, `demo`, `warm`, `check`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tiered_gateway::config::{Config, Overrides};
use tiered_gateway::{demo, logging, server, warm};

/// tiered: a caching reverse proxy for HTTP APIs.
///
/// Caches what your API's Cache-Control allows (RFC 9111) in memory and,
/// with --redis, in Redis shared by every instance; coalesces concurrent
/// misses; serves stale content when the origin fails (if allowed); purges by
/// URL, tag or prefix everywhere at once. Admin API, Prometheus metrics and a
/// live dashboard on the admin listener.
///
/// Settings come from flags, which override TIERED_* environment variables,
/// which override the --config file.
#[derive(Parser)]
#[command(name = "tiered", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the caching reverse proxy.
    Serve(Overrides),
    /// Check a configuration (flags, environment, file) and print it, without binding anything.
    Check(Overrides),
    /// Start a sample API with the gateway in front, send a burst, print a summary, keep serving.
    Demo(demo::DemoArgs),
    /// Fetch URLs through the gateway so they are cached.
    Warm(warm::WarmArgs),
}

fn config_or_exit(o: &Overrides) -> Result<Config, ExitCode> {
    Config::load(o).map_err(|e| {
        eprintln!("tiered: {e}");
        ExitCode::from(2)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("tiered: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn run(cli: Cli) -> Result<(), ExitCode> {
    match cli.command {
        Command::Serve(o) => {
            let config = config_or_exit(&o)?;
            logging::init(config.log_format, &config.log_level);
            runtime()?.block_on(server::serve(config)).map_err(|e| {
                tracing::error!(error = %e, "tiered stopped");
                eprintln!("tiered: {e}");
                ExitCode::FAILURE
            })
        }
        Command::Check(o) => {
            let config = config_or_exit(&o)?;
            let mut shown = config.clone();
            if shown.admin_token.is_some() {
                shown.admin_token = Some("(set)".into());
            }
            println!("{shown:#?}");
            Ok(())
        }
        Command::Demo(args) => runtime()?.block_on(demo::run(args)).map_err(|e| {
            eprintln!("tiered demo: {e}");
            ExitCode::FAILURE
        }),
        Command::Warm(args) => runtime()?.block_on(warm::run(args)).map_err(|e| {
            eprintln!("tiered warm: {e}");
            ExitCode::FAILURE
        }),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
