//! Bad flags, variables and config files are refused with a message naming
//! the culprit, and the process exits non-zero before binding a port.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

use common::{bin, ConfigFile};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    for var in [
        "TIERED_CONFIG",
        "TIERED_LISTEN",
        "TIERED_ORIGIN",
        "TIERED_REDIS",
        "TIERED_ADMIN_TOKEN",
        "TIERED_L1_BYTES",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A port held by this test while a bad configuration is tried: had the
/// gateway tried to bind before checking its configuration, it would fail
/// with "cannot listen" instead of the configuration error. The port is
/// bound as port 0 and then read back, so no other process can take it
/// between choosing and holding it (a `free_port()` then `bind` could race).
fn hold(ip: &str) -> (std::net::TcpListener, u16) {
    let held = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = held.local_addr().unwrap().port();
    (held, port)
}

fn assert_not_bound(err: &str) {
    assert!(
        !err.contains("cannot listen"),
        "tried to bind before checking: {err}"
    );
}

#[test]
fn bad_flags_are_rejected_with_their_name() {
    for (args, needle) in [
        (
            vec![
                "serve",
                "--listen",
                "nope",
                "--origin",
                "http://127.0.0.1:1",
            ],
            "--listen",
        ),
        (vec!["serve", "--origin", "ftp://x"], "--origin"),
        (
            vec!["serve", "--origin", "http://127.0.0.1:1/api"],
            "must not have a path",
        ),
        (
            vec![
                "serve",
                "--origin",
                "http://127.0.0.1:1",
                "--l1-bytes",
                "lots",
            ],
            "--l1-bytes",
        ),
        (
            vec![
                "serve",
                "--origin",
                "http://127.0.0.1:1",
                "--redis",
                "http://x",
            ],
            "--redis",
        ),
        (
            vec!["serve", "--origin", "http://127.0.0.1:1", "--frobnicate"],
            "--frobnicate",
        ),
        (vec!["serve"], "no origin"),
    ] {
        let out = run(&args, &[]);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn bad_environment_variables_are_rejected() {
    let out = run(
        &["serve", "--origin", "http://127.0.0.1:1"],
        &[("TIERED_L1_BYTES", "12 parsecs")],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--l1-bytes"), "{}", stderr(&out));
}

#[test]
fn bad_config_files_name_file_line_and_field() {
    let (_held, listen) = hold("127.0.0.1");
    let cases = [
        (
            "listen = \"127.0.0.1:1\"\n[proxy]\nread_timeout = \"30 parsecs\"\n",
            "line 3",
            "read_timeout",
        ),
        ("lisen = \"127.0.0.1:1\"\n", "line 1", "lisen"),
        (
            "[[route]]\nprefix = \"/\"\norigin = \"ftp://x\"\n",
            "line 3",
            "origin",
        ),
        (
            "[[route]]\nprefix = \"api\"\norigin = \"http://127.0.0.1:1\"\n",
            "line 2",
            "prefix",
        ),
        ("l1_bytes = \"many\"\n", "line 1", "l1_bytes"),
        (
            "[proxy]\nmin_upload_rate = \"fast\"\n",
            "line 2",
            "min_upload_rate",
        ),
        (
            "[cache]\nheuristic_fraction = 3.0\n",
            "line 2",
            "heuristic_fraction",
        ),
        ("listen = [\n", "line", "listen"),
        ("[proxy]\nconnect_timeout = \"0s\"\n", "line 2", "connect_timeout"),
        (
            "[[route]]\nprefix = \"/\"\nhost = \"a.test\"\norigin = \"http://127.0.0.1:1\"\nttl = \"5s\"\n",
            "line 3",
            "route.host",
        ),
    ];
    for (text, line, field) in cases {
        let cfg = ConfigFile::new(text);
        let path = cfg.path.clone();
        let out = run(
            &[
                "serve",
                "--config",
                &path,
                "--listen",
                &format!("127.0.0.1:{listen}"),
            ],
            &[],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(&path), "{text}: no path in {err}");
        assert!(err.contains(line), "{text}: no {line} in {err}");
        assert!(err.contains(field), "{text}: no {field} in {err}");
        assert_not_bound(&err);
    }
    let out = run(&["serve", "--config", "/nonexistent/tiered.toml"], &[]);
    assert!(stderr(&out).contains("/nonexistent/tiered.toml"));
}

#[test]
fn a_public_admin_listener_without_a_token_is_refused() {
    let (_held, admin) = hold("0.0.0.0");
    let out = run(
        &[
            "serve",
            "--origin",
            "http://127.0.0.1:1",
            "--admin-listen",
            &format!("0.0.0.0:{admin}"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--admin-token"), "{}", stderr(&out));
    assert_not_bound(&stderr(&out));
}

#[test]
fn precedence_is_flag_then_environment_then_file() {
    let cfg = ConfigFile::new(
        "listen = \"127.0.0.1:1001\"\nl1_bytes = \"32MiB\"\nadmin_listen = \"127.0.0.1:1003\"\n[[route]]\nprefix = \"/\"\norigin = \"http://127.0.0.1:1\"\n",
    );
    let out = run(
        &["check", "--config", &cfg.path, "--listen", "127.0.0.1:2001"],
        &[
            ("TIERED_LISTEN", "127.0.0.1:3001"),
            ("TIERED_L1_BYTES", "48MiB"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("127.0.0.1:2001"), "flag beats env: {shown}");
    assert!(
        shown.contains(&(48u64 << 20).to_string()),
        "env beats file: {shown}"
    );
    assert!(
        shown.contains("127.0.0.1:1003"),
        "file beats default: {shown}"
    );
}

#[test]
fn help_documents_every_flag() {
    let out = run(&["serve", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--origin",
        "--redis",
        "--admin-listen",
        "--admin-token",
        "--admin-token-file",
        "--l1-bytes",
        "--config",
        "TIERED_LISTEN",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn the_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/tiered.toml");
    let out = run(&["check", "--config", path], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}
