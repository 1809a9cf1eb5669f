#!/usr/bin/env bash
# Cache-HIT throughput and latency of tiered vs nginx proxy_cache vs Varnish, plus
# the latency a MISS adds over going straight to the origin — all in one run.
#
#   bench/gateway/run.sh                        # build tiered, 3 rounds x 10 s per cell
#   TIERED=/path/to/tiered bench/gateway/run.sh # use an existing binary (no cargo build)
#   DURATION=3s ROUNDS=1 PROXIES="nginx varnish" bench/gateway/run.sh
#
# Knobs (environment): DURATION (10s), CONNECTIONS (64), THREADS (1), ROUNDS (3),
# MISS_CONNECTIONS (1), PROXIES ("tiered nginx varnish"), PROXY_CPU (0), LOAD_CPU (1),
# SIZES ("1k 64k"), OUT (bench/gateway/results.md), TIERED (build + target/release/tiered), KEEP_TMP (0),
# TMPDIR (/tmp: where the temp dir and nginx's on-disk cache go).
# See README.md next to this file.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
MISS_CONNECTIONS=${MISS_CONNECTIONS:-1}
PROXIES=${PROXIES:-tiered nginx varnish}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-$HERE/results.md}
KEEP_TMP=${KEEP_TMP:-0}
read -r -a SIZES <<<"${SIZES:-1k 64k}"

read -r -a PROXY_LIST <<<"$PROXIES"

log() { printf '[gateway-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf '\n[gateway-bench] ERROR: %s\n\n' "$*" >&2
    exit 1
}

has_proxy() {
    local p
    for p in "${PROXY_LIST[@]}"; do [[ $p == "$1" ]] && return 0; done
    return 1
}

# ---------------------------------------------------------------------------
# Pre-flight
# ---------------------------------------------------------------------------
for p in "${PROXY_LIST[@]}"; do
    case $p in tiered | nginx | varnish) ;; *) die "unknown proxy '$p' in PROXIES (tiered nginx varnish)" ;; esac
done
((${#PROXY_LIST[@]} > 0)) || die "PROXIES is empty"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
for tool in wrk taskset curl python3 awk sed sort setsid; do
    command -v "$tool" >/dev/null || die "'$tool' not found"
done
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
VARNISHD=${VARNISHD:-$(command -v varnishd || echo /usr/sbin/varnishd)}
[[ -x $NGINX ]] || die "nginx not found (Debian: apt-get install nginx-light)"
if has_proxy varnish; then [[ -x $VARNISHD ]] || die "varnishd not found (Debian: apt-get install varnish)"; fi
ncpu=$(nproc)
((ncpu > PROXY_CPU && ncpu > LOAD_CPU)) || die "need CPUs $PROXY_CPU and $LOAD_CPU, have $ncpu"

if has_proxy tiered; then
    if [[ -z ${TIERED:-} ]]; then
        log "building tiered: cargo build --release -p tiered-gateway"
        (cd "$ROOT" && cargo build --release -p tiered-gateway)
        TIERED=${CARGO_TARGET_DIR:-$ROOT/target}/release/tiered
    fi
    [[ -x $TIERED ]] || die "TIERED=$TIERED is not an executable"
fi

# ---------------------------------------------------------------------------
# Temp dir, process bookkeeping, cleanup
# ---------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tiered-gateway-bench.XXXXXX")
PIDS=()   # each server runs in its own session: pid == process group id
NAMES=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    local i pid n
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
    for i in "${!PIDS[@]}"; do
        pid=${PIDS[$i]}
        for ((n = 0; n < 50; n++)); do
            kill -0 -- "-$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 -- "-$pid" 2>/dev/null; then
            log "${NAMES[$i]} (pgid $pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null
        fi
    done
    wait 2>/dev/null
    if ((rc != 0)); then
        local f
        for f in "$WORK"/*/*.log; do
            if [[ -s $f ]]; then
                printf '\n--- last lines of %s ---\n' "$f" >&2
                tail -n 20 "$f" >&2
            fi
        done
    fi
    if [[ $KEEP_TMP == 1 ]]; then
        log "kept temp dir $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME LOGFILE CPU DIR CMD...: run CMD pinned to CPU, in its own session, cwd DIR.
start() {
    local name=$1 logfile=$2 cpu=$3 dir=$4
    shift 4
    (cd "$dir" && exec setsid taskset -c "$cpu" "$@" >"$logfile" 2>&1 </dev/null) &
    PIDS+=("$!")
    NAMES+=("$name")
    LAST_PID=$!
}

# wait_up NAME PID URL: wait (<= 60 s) until URL answers with any HTTP status.
wait_up() {
    local name=$1 pid=$2 url=$3 n
    for ((n = 0; n < 600; n++)); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during startup"
        if curl -s -o /dev/null --max-time 1 "$url"; then return 0; fi
        sleep 0.1
    done
    die "$name did not answer on $url within 60 s"
}

# render TEMPLATE OUT KEY=VALUE...: replace @KEY@ with VALUE.
render() {
    local tmpl=$1 out=$2 kv args=()
    shift 2
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tmpl" >"$out"
    if grep -v '^[[:space:]]*#' "$out" | grep -q '@[A-Z_]*@'; then die "unfilled placeholder in $out"; fi
}

# Free ports, all bound at once so they are distinct.
read -r P_ORIGIN P_NGINX P_VARNISH P_TIERED P_ADMIN < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
') || die "could not pick free ports with python3"

declare -A PORT=([origin]=$P_ORIGIN [nginx]=$P_NGINX [varnish]=$P_VARNISH [tiered]=$P_TIERED)
USER_NAME=$(id -un)
GROUP_NAME=$(id -gn)

# ---------------------------------------------------------------------------
# Origin: nginx static files, pinned next to wrk (it only works on misses)
# ---------------------------------------------------------------------------
start_origin() {
    local d=$WORK/origin
    mkdir -p "$d/www" "$d/tmp"
    head -c 1024 /dev/urandom >"$d/www/1k"
    head -c 65536 /dev/urandom >"$d/www/64k"
    render "$HERE/origin.nginx.conf.tmpl" "$d/nginx.conf" \
        PREFIX="$d" PORT="$P_ORIGIN" DOCROOT="$d/www" USER="$USER_NAME" GROUP="$GROUP_NAME"
    start origin "$d/stderr.log" "$LOAD_CPU" "$d" "$NGINX" -p "$d/" -c "$d/nginx.conf" -e "$d/error.log"
    wait_up origin "$LAST_PID" "http://127.0.0.1:$P_ORIGIN/nginx_status"
    local h
    h=$(curl -s -D - -o /dev/null "http://127.0.0.1:$P_ORIGIN/1k")
    grep -qi '^cache-control: public, max-age=3600' <<<"$h" || die "origin lacks Cache-Control: $h"
    grep -qi '^etag:' <<<"$h" || die "origin lacks ETag: $h"
}

# Requests the origin has served so far (stub_status; the status request itself counts).
origin_requests() {
    curl -s --max-time 5 "http://127.0.0.1:$P_ORIGIN/nginx_status" | awk 'NR == 3 { print $3 }'
}

# ---------------------------------------------------------------------------
# Proxies, each pinned to PROXY_CPU
# ---------------------------------------------------------------------------
start_nginx() {
    local d=$WORK/nginx
    mkdir -p "$d/tmp" "$d/cache"
    render "$HERE/proxy.nginx.conf.tmpl" "$d/nginx.conf" \
        PREFIX="$d" PORT="$P_NGINX" ORIGIN_PORT="$P_ORIGIN" USER="$USER_NAME" GROUP="$GROUP_NAME"
    start nginx "$d/stderr.log" "$PROXY_CPU" "$d" "$NGINX" -p "$d/" -c "$d/nginx.conf" -e "$d/error.log"
    wait_up nginx "$LAST_PID" "http://127.0.0.1:$P_NGINX/1k"
}

start_varnish() {
    local d=$WORK/varnish
    mkdir -p "$d"
    render "$HERE/default.vcl.tmpl" "$d/default.vcl" ORIGIN_PORT="$P_ORIGIN"
    # Mask every shared-memory log record: nothing reads the log here, so the
    # closest thing to turning it off. Tag names come from varnishd itself.
    local vsl_mask
    vsl_mask=$("$VARNISHD" -x vsl | awk 'prev ~ /^[A-Za-z0-9_]+$/ && /^-+$/ { printf "%s-%s", sep, prev; sep = "," } { prev = $0 }')
    [[ -n $vsl_mask ]] || die "could not list VSL tags with 'varnishd -x vsl'"
    # -j none: as root, the default 'unix' jail drops to the varnish user, which cannot
    # read the 0700 temp dir; no jail keeps it running as the current user.
    start varnish "$d/varnishd.log" "$PROXY_CPU" "$d" "$VARNISHD" -F -j none \
        -n "$d/work" -a "127.0.0.1:$P_VARNISH" -T 127.0.0.1:0 -f "$d/default.vcl" -s malloc,256m \
        -p thread_pools=1 -p thread_pool_min=100 -p thread_pool_max=1000 \
        -p vsl_mask="$vsl_mask"
    wait_up varnish "$LAST_PID" "http://127.0.0.1:$P_VARNISH/1k"
}

start_tiered() {
    local d=$WORK/tiered
    mkdir -p "$d"
    # RUST_LOG=warn unless set: keep per-request logging out of the measurement,
    # like access_log off (nginx) and the masked shm log (Varnish).
    start tiered "$d/tiered.log" "$PROXY_CPU" "$d" env RUST_LOG="${RUST_LOG:-warn}" \
        "$TIERED" serve --listen "127.0.0.1:$P_TIERED" --origin "http://127.0.0.1:$P_ORIGIN" \
        --admin-listen "127.0.0.1:$P_ADMIN" --l1-bytes 268435456
    wait_up tiered "$LAST_PID" "http://127.0.0.1:$P_TIERED/1k"
}

# is_hit PROXY HEADERS: does the response say it came from the cache?
is_hit() {
    case $1 in
    nginx) grep -qiE '^x-cache-status: *HIT' <<<"$2" ;;
    varnish | tiered) grep -qiE '^x-cache: *HIT' <<<"$2" ;;
    esac
}

# check_hit PROXY PATH: warm PATH and fail loudly unless the proxy now serves it as a hit.
check_hit() {
    local proxy=$1 path=$2 url="http://127.0.0.1:${PORT[$1]}$2" expect i h code size
    case $path in /1k) expect=1024 ;; /64k) expect=65536 ;; esac
    for ((i = 0; i < 3; i++)); do curl -s -o /dev/null --max-time 5 "$url" || true; done
    h=$(curl -s --max-time 5 -D - -o /dev/null -w 'X-Bench-Result: %{http_code} %{size_download}\n' "$url") ||
        die "$proxy: GET $url failed"
    read -r code size < <(sed -n 's/^X-Bench-Result: //p' <<<"$h") || true
    [[ $code == 200 && $size == "$expect" ]] || die "$proxy: GET $path gave status $code, $size bytes (want 200, $expect)"
    is_hit "$proxy" "$h" || die "$proxy is not serving $path from cache after warming; response headers:
$(tr -d '\r' <<<"$h" | sed '/^X-Bench-Result:/d')"
}

# check_miss PROXY: a never-seen URL must not be reported as a hit.
check_miss() {
    local proxy=$1 h
    h=$(curl -s --max-time 5 -D - -o /dev/null "http://127.0.0.1:${PORT[$1]}/1k?miss=probe-$RANDOM$RANDOM")
    if is_hit "$proxy" "$h"; then die "$proxy answered a never-seen URL as a HIT: $h"; fi
}

# ---------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------
RES=$WORK/results.tsv  # kind target size round rps p50_ms p99_ms
CMDS=$WORK/wrk-commands.txt
: >"$RES"
: >"$CMDS"
mkdir -p "$WORK/wrk"

# parse_wrk FILE -> "rps p50_ms p99_ms requests non2xx socket_errors"
parse_wrk() {
    awk '
    function ms(s,    v, u) {
        v = s + 0; u = s; sub(/^[0-9.]+/, "", u)
        if (u == "us") return v / 1000
        if (u == "ms") return v
        if (u == "s") return v * 1000
        if (u == "m") return v * 60000
        if (u == "h") return v * 3600000
        return -1
    }
    /^Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    / requests in / { n = $1 }
    /Non-2xx or 3xx responses:/ { bad = $NF }
    /Socket errors:/ { gsub(/[^0-9 ]/, " "); for (i = 1; i <= NF; i++) err += $i }
    END {
        if (rps == "" || p50 == "" || p99 == "") exit 1
        printf "%s %.4f %.4f %d %d %d\n", rps, p50, p99, n, bad, err
    }' "$1"
}

# run_wrk KIND TARGET SIZE ROUND CONNECTIONS URL [MISS_PREFIX]
# With MISS_PREFIX, wrk runs miss.lua: every request is a new URL (see miss.lua).
# cpu_ticks CPU: "busy total" jiffies of one CPU so far (/proc/stat).
cpu_ticks() {
    awk -v c="cpu$1" '$1 == c { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6 }' /proc/stat
}

# busy_pct "BUSY0 TOTAL0" "BUSY1 TOTAL1": the CPU's busy share in between, in %.
busy_pct() {
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
        t = y[2] - x[2]; if (t <= 0) print "nan"; else printf "%.1f", 100 * (y[1] - x[1]) / t }'
}

run_wrk() {
    local kind=$1 target=$2 size=$3 round=$4 conns=$5 url=$6 prefix=${7:-}
    local out="$WORK/wrk/$kind-$target-$size-r$round.txt"
    local cmd=(taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$conns" -d"$DURATION" --latency)
    local shown
    if [[ -n $prefix ]]; then
        cmd+=(-s "$HERE/miss.lua" "$url" -- "$prefix")
        shown="${cmd[*]}"
        shown="${shown% -- *} -- <prefix-unique-per-run>"
    else
        cmd+=("$url")
        shown="${cmd[*]}"
    fi
    shown="$shown    # $kind, $target"
    grep -qxF -- "$shown" "$CMDS" || printf '%s\n' "$shown" >>"$CMDS"

    local before after served proxy0 load0 proxy_busy load_busy
    before=$(origin_requests)
    proxy0=$(cpu_ticks "$PROXY_CPU")
    load0=$(cpu_ticks "$LOAD_CPU")
    "${cmd[@]}" >"$out" 2>&1 || die "wrk failed ($kind $target $size): $(cat "$out")"
    proxy_busy=$(busy_pct "$proxy0" "$(cpu_ticks "$PROXY_CPU")")
    load_busy=$(busy_pct "$load0" "$(cpu_ticks "$LOAD_CPU")")
    after=$(origin_requests)
    served=$((after - before - 1))

    local rps p50 p99 n bad err
    read -r rps p50 p99 n bad err < <(parse_wrk "$out") || die "could not parse wrk output: $(cat "$out")"
    ((n > 0)) || die "wrk completed no requests ($kind $target $size): $(cat "$out")"
    ((bad == 0)) || die "$target answered $bad of $n requests with non-2xx/3xx ($kind $size)"
    if ((err > 0)); then log "warning: $err socket errors ($kind $target $size round $round), see $out"; fi

    if [[ $kind == hit ]]; then
        # A HIT run must not reach the origin (allow 0.1% slack for nothing in particular).
        ((served * 1000 <= n)) ||
            die "$target sent $served of $n requests to the origin during the $size HIT run: not serving hits"
    elif [[ $target != origin ]]; then
        # A MISS run must reach the origin for every request.
        ((served * 100 >= n * 99)) ||
            die "$target sent only $served of $n requests to the origin during the MISS run: some were hits"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$target" "$size" "$round" "$rps" "$p50" "$p99" "$proxy_busy" "$load_busy" >>"$RES"
    log "$kind $target $size round $round: $rps req/s, p50 $p50 ms, p99 $p99 ms, CPU busy: proxy core $proxy_busy%, wrk core $load_busy% (origin saw $served)"
}

# median KIND TARGET SIZE COLUMN(5=rps 6=p50 7=p99 8=proxy core busy % 9=wrk core busy %)
median() {
    awk -F'\t' -v k="$1" -v t="$2" -v s="$3" -v c="$4" '$1 == k && $2 == t && $3 == s { print $c }' "$RES" |
        sort -g |
        awk '{ a[NR] = $1 } END {
            if (NR == 0) { print "nan"; exit }
            if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2
        }'
}

# rotate N ITEMS...: ITEMS rotated left by N (varies who goes first in each round).
rotate() {
    local n=$1
    shift
    local items=("$@") i len=$#
    for ((i = 0; i < len; i++)); do printf '%s ' "${items[$(((i + n) % len))]}"; done
}

# ---------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------
log "temp dir $WORK; ports: origin $P_ORIGIN, nginx $P_NGINX, varnish $P_VARNISH, tiered $P_TIERED (admin $P_ADMIN)"
start_origin
for p in "${PROXY_LIST[@]}"; do "start_$p"; done

for p in "${PROXY_LIST[@]}"; do
    for s in "${SIZES[@]}"; do check_hit "$p" "/$s"; done
    check_miss "$p"
done
log "all proxies serve hits; $ROUNDS round(s) of ${DURATION} per cell, $CONNECTIONS connections (hits), $MISS_CONNECTIONS (misses)"

for ((r = 1; r <= ROUNDS; r++)); do
    read -r -a order <<<"$(rotate $((r - 1)) "${PROXY_LIST[@]}")"
    for s in "${SIZES[@]}"; do
        for p in "${order[@]}"; do
            check_hit "$p" "/$s"
            run_wrk hit "$p" "$s" "$r" "$CONNECTIONS" "http://127.0.0.1:${PORT[$p]}/$s"
        done
    done
    read -r -a order <<<"$(rotate $((r - 1)) origin "${PROXY_LIST[@]}")"
    for p in "${order[@]}"; do
        run_wrk miss "$p" 1k "$r" "$MISS_CONNECTIONS" "http://127.0.0.1:${PORT[$p]}/1k" "$p-r$r-$$-$RANDOM"
    done
done

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
ver_nginx=$("$NGINX" -v 2>&1 | head -n1 | sed 's/^nginx version: //')
ver_varnish=$("$VARNISHD" -V 2>&1 | head -n1)
ver_wrk=$(wrk -v 2>&1 | head -n1 | sed 's/ Copyright.*//' || true)
ver_tiered="-"
if has_proxy tiered; then ver_tiered=$("$TIERED" --version 2>/dev/null | head -n1 || true); fi
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null | head -n1) ]]; then commit="$commit (dirty)"; fi
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)

DURATION_SHOWN=$DURATION
[[ $DURATION =~ ^[0-9]+$ ]] && DURATION_SHOWN="${DURATION}s"
tmp_fs=$(df -T "$WORK" 2>/dev/null | awk 'NR == 2 { print $2 }')

fmt() { awk -v v="$1" -v f="$2" 'BEGIN { if (v == "nan") print "-"; else printf f, v }'; }

{
    echo "# tiered gateway benchmark: cache hits and misses vs nginx and Varnish"
    echo
    echo "$(date -u +'%Y-%m-%d %H:%M UTC'), commit $commit, ${cpu_model:-unknown CPU} ($ncpu CPUs), Linux $(uname -r)."
    echo "Proxies pinned to CPU $PROXY_CPU (\`taskset -c $PROXY_CPU\`); wrk and the origin pinned to CPU $LOAD_CPU."
    echo "Each cell: median of $ROUNDS interleaved round(s) of $DURATION_SHOWN."
    echo
    echo "## Cache hits ($CONNECTIONS connections, $THREADS wrk thread(s))"
    echo
    echo "| proxy | body | req/s | p50 ms | p99 ms | tiered req/s ÷ this | proxy core busy | wrk core busy | req/s per proxy core | tiered per core ÷ this |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "-"; else printf "%.2f", a / b }'; }
    # req/s per second of the proxy core's CPU time: the proxy's efficiency,
    # which still tells proxies apart when wrk's core is the bottleneck.
    per_core() { awk -v r="$1" -v b="$2" 'BEGIN { if (r == "nan" || b == "nan" || b == 0) print "nan"; else print r * 100 / b }'; }
    for s in "${SIZES[@]}"; do
        t_rps=nan t_core=nan
        if has_proxy tiered; then
            t_rps=$(median hit tiered "$s" 5)
            t_core=$(per_core "$t_rps" "$(median hit tiered "$s" 8)")
        fi
        for p in "${PROXY_LIST[@]}"; do
            rps=$(median hit "$p" "$s" 5)
            busy=$(median hit "$p" "$s" 8)
            core=$(per_core "$rps" "$busy")
            name=$p
            [[ $p == tiered ]] && name="**tiered**"
            echo "| $name | $s | $(fmt "$rps" %.0f) | $(fmt "$(median hit "$p" "$s" 6)" %.3f) | $(fmt "$(median hit "$p" "$s" 7)" %.3f) | $(ratio "$t_rps" "$rps") | $(fmt "$busy" %.1f)% | $(fmt "$(median hit "$p" "$s" 9)" %.1f)% | $(fmt "$core" %.0f) | $(ratio "$t_core" "$core") |"
        done
    done
    echo
    echo "Busy: the share of each core's time not idle during the run (/proc/stat; the proxy is"
    echo "alone on its core, wrk and the origin share the other). When the wrk core is near 100%,"
    echo "req/s measures wrk as much as the proxy, and req/s per proxy core is the fairer comparison."
    echo
    echo "## Cache misses (1 KB, a new URL per request, $MISS_CONNECTIONS connection(s))"
    echo
    echo "| path | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms |"
    echo "|---|---:|---:|---:|---:|---:|"
    o50=$(median miss origin 1k 6)
    o99=$(median miss origin 1k 7)
    echo "| direct to origin | $(fmt "$(median miss origin 1k 5)" %.0f) | $(fmt "$o50" %.3f) | $(fmt "$o99" %.3f) | - | - |"
    for p in "${PROXY_LIST[@]}"; do
        p50=$(median miss "$p" 1k 6)
        p99=$(median miss "$p" 1k 7)
        add50=$(awk -v a="$p50" -v b="$o50" 'BEGIN { printf "%+.3f", a - b }')
        add99=$(awk -v a="$p99" -v b="$o99" 'BEGIN { printf "%+.3f", a - b }')
        name=$p
        [[ $p == tiered ]] && name="**tiered**"
        echo "| $name | $(fmt "$(median miss "$p" 1k 5)" %.0f) | $(fmt "$p50" %.3f) | $(fmt "$p99" %.3f) | $add50 | $add99 |"
    done
    echo
    echo "## Setup"
    echo
    echo "- nginx: $ver_nginx (\`bench/gateway/proxy.nginx.conf.tmpl\`; origin: \`bench/gateway/origin.nginx.conf.tmpl\`); proxy_cache on ${tmp_fs:-?} (\`$(dirname "$WORK")\`)"
    echo "- varnishd: $ver_varnish (\`bench/gateway/default.vcl.tmpl\`; \`-j none -s malloc,256m -p thread_pools=1 -p thread_pool_min=100 -p thread_pool_max=1000\`, all VSL tags masked)"
    echo "- wrk: $ver_wrk"
    has_proxy tiered && echo "- tiered: ${ver_tiered:-unknown} (\`tiered serve --l1-bytes 268435456\`, RUST_LOG=${RUST_LOG:-warn})"
    echo
    echo "wrk command lines (ports are chosen at run time):"
    echo
    echo '```'
    sed "s|$HERE/|bench/gateway/|g" "$CMDS"
    echo '```'
} >"$WORK/report.md"

mkdir -p "$(dirname "$OUT")"
cp "$WORK/report.md" "$OUT"
cat "$WORK/report.md"
log "written to $OUT"
