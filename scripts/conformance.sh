#!/usr/bin/env bash
# Runs the HTTP caching test suite (npm: http-cache-tests) against the
# CacheLayer proxy example, and prints the pass count by kind.
#
#   scripts/conformance.sh [RESULTS.json]
#
# Fails if a test of kind "required" fails that is not listed, with the RFC
# text that excuses it, in scripts/conformance-exceptions.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
version=0.4.5
suite_home=$root/target/http-cache-tests
suite=$suite_home/node_modules/http-cache-tests
results=${1:-$root/target/conformance-results.json}

command -v node >/dev/null || { echo "conformance: node is required (apt-get install nodejs npm)" >&2; exit 1; }
if [[ ! -f $suite/package.json ]] || ! grep -q "\"version\": \"$version\"" "$suite/package.json"; then
  mkdir -p "$suite_home"
  npm install --prefix "$suite_home" --no-audit --no-fund --silent "http-cache-tests@$version" >/dev/null
fi

cargo build -q -p tiered-http --example proxy
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin_port=$(free_port)
proxy_port=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# The origin serves files from its working directory: run it from the suite.
(cd "$suite" && exec env npm_package_config_protocol=http npm_package_config_port="$origin_port" \
  npm_package_config_pidfile="$suite_home/origin.pid" node server/server.mjs) >"$suite_home/origin.log" 2>&1 &
pids+=($!)
"$root/target/debug/examples/proxy" --listen "127.0.0.1:$proxy_port" --origin "http://127.0.0.1:$origin_port" --targeted Surrogate-Control \
  >"$suite_home/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$proxy_port") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$origin_port") 2>/dev/null; then break; fi
  sleep 0.1
done

(cd "$suite" && env npm_config_base="http://127.0.0.1:$proxy_port" npm_config_id= npm_package_config_id= \
  node --no-warnings cli.mjs) >"$results"
node "$root/scripts/conformance-summary.mjs" "$suite" "$results" "$root/scripts/conformance-exceptions.txt"
