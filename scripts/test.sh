#!/usr/bin/env bash
# The whole test suite: what a new user runs, and what CI runs (.ci/run).
#
# Tests talk to real programs, never mocks. This script checks that each program
# the suite needs is installed, installs it with apt-get when it can (root), and
# otherwise stops with a clear message. It never skips a test silently.
set -euo pipefail
cd "$(dirname "$0")/.."

# Programs the tests need, as "command:debian-package": private Redis servers
# and clusters (tiered-testkit starts them on free ports), and openssl for the
# test CA of the TLS tests.
# The gateway's dashboard test drives Debian's chromium through chromedriver.
REQUIRED=(redis-server:redis-server redis-cli:redis-tools redis-benchmark:redis-tools openssl:openssl node:nodejs npm:npm python3:python3 chromium:chromium chromedriver:chromium-driver)

need() {
  local cmd=${1%%:*} pkg=${1##*:}
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: $cmd is missing; installing $pkg" >&2
    apt-get update -qq && apt-get install -y -qq "$pkg" >/dev/null
    command -v "$cmd" >/dev/null 2>&1 && return 0
  fi
  echo "test.sh: the tests need '$cmd' (Debian package '$pkg'). Install it and run again." >&2
  exit 1
}

command -v cargo >/dev/null 2>&1 || { echo "test.sh: cargo is missing: install Rust (https://rustup.rs)" >&2; exit 1; }
for req in "${REQUIRED[@]+"${REQUIRED[@]}"}"; do need "$req"; done

# PostgreSQL's server programs (initdb, postgres) for the write-path tests:
# tiered-testkit starts private servers from them. Debian keeps them off PATH,
# in /usr/lib/postgresql/<version>/bin, which the testkit also searches.
pg_server() { command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
if ! pg_server; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: PostgreSQL's initdb is missing; installing postgresql" >&2
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  fi
  pg_server || { echo "test.sh: the tests need PostgreSQL's server programs (Debian package 'postgresql'). Install it and run again." >&2; exit 1; }
fi
need psql:postgresql-client

# Every example runs to completion (they print what they did). Examples that
# use Redis get a private server on a Unix socket (no port to collide with,
# and the machine's own Redis is left alone).
redis_dir=$(mktemp -d)
redis-server --port 0 --unixsocket "$redis_dir/redis.sock" --save "" --appendonly no \
  --dir "$redis_dir" --daemonize no >"$redis_dir/log" 2>&1 &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; rm -rf "$redis_dir"' EXIT
for _ in $(seq 100); do [ -S "$redis_dir/redis.sock" ] && break; sleep 0.1; done
export REDIS_URL="redis+unix://$redis_dir/redis.sock"
for example in crates/tiered/examples/*.rs; do
  name=$(basename "$example" .rs)
  echo "--- example $name"
  cargo run --quiet -p tiered --example "$name"
done
# (It starts its own private PostgreSQL.)
echo "--- example origin_helpers"
cargo run --quiet -p tiered-http --example origin_helpers
echo "--- example write_behind"
cargo run --quiet -p tiered-postgres --example write_behind

# The gateway's demo (the README's run command), without waiting for Ctrl-C.
echo "--- tiered demo"
cargo run --quiet -p tiered-gateway --bin tiered -- demo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --requests 400 --no-wait

# HTTP caching conformance (npm: http-cache-tests) against the CacheLayer
# proxy example; fails if a "required" test fails that is not excused in
# scripts/conformance-exceptions.txt (see CONFORMANCE.md).
echo "--- HTTP caching conformance"
bash scripts/conformance.sh

# The benchmark harnesses still run (small smoke runs; speed and hit-ratio
# targets are not asserted here — BENCHMARKS.md records the full runs).
echo "--- bench smoke: l1-hit"
cargo run --quiet -p tiered-bench --bin l1-hit -- --threads 1 --ops 20000 --rounds 1
echo "--- bench smoke: l2-get"
cargo run --quiet -p tiered-bench --bin l2-get -- --ops 6400 --rounds 1
echo "--- bench smoke: backplane-latency"
cargo run --quiet -p tiered-bench --bin backplane-latency -- --n 20
echo "--- bench smoke: hit-ratio on gli and loop"
cargo run --quiet -p tiered-bench --bin hit-ratio -- --only gli,loop
echo "--- bench smoke: write-paths"
cargo run --quiet -p tiered-bench --bin write-paths -- --ops 2000 --rows 2000 --rounds 1

# The optional zstd codec path (a cargo feature, so not in the default build).
echo "--- L2 codecs with the zstd feature"
cargo test --quiet -p tiered --features zstd --test l2 every_codec

# Unit, integration and doc tests of every crate (last, so its summary closes the run).
log=$(mktemp)
trap 'rm -f "$log"; kill $redis_pid 2>/dev/null; rm -rf "$redis_dir"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# One total for the whole suite, in the plain "N passed, N failed" form.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "\ntests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
