#!/usr/bin/env bash
# Makelaar against Mosquitto, same machine, same run, same load generator (`makelaar bench`).
#
#   bench/compare.sh              # medians of 3, about 10 minutes
#   bench/compare.sh --quick      # 1 repetition, short runs, under 2 minutes
#   bench/compare.sh --repeat 5 --duration 10 --no-build
#
# Every scenario runs against a freshly started broker of each kind (loopback, a free port),
# alternating which broker goes first; each run has a time limit; whatever the script started
# is stopped on exit. The raw JSON of every run is kept in the results directory it prints.
# See docs/benchmarks.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPEAT=3
DURATION=8
WARMUP=2
CONNS=10000
BUILD=1
BIN=""
BROKER_BIN=""
OUT=""
ONLY=""

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --quick            1 repetition, 3 s runs after 1 s warm-up, 5,000 idle connections
  --repeat N         repetitions of each scenario (median reported)      [3]
  --duration S       seconds measured per run                             [8]
  --warmup S         seconds of load before measuring                     [2]
  --conns N          idle connections in the conn and conn_tls scenarios  [10000]
  --only LIST        comma-separated scenarios: fanin_rate,fanin_max,fanout,fanin_q1,lat_q0,
                     lat_q1,conn,conn_tls,persist_q1,durable_q1
  --bin PATH         use this makelaar binary (implies --no-build)
  --broker-bin PATH  serve with this makelaar binary, generate load with --bin (A/B of builds)
  --no-build         do not run cargo build --release
  --out DIR          keep the raw JSON results here        [a new directory under /tmp]
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) REPEAT=1; DURATION=3; WARMUP=1; CONNS=5000 ;;
        --repeat) REPEAT=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --conns) CONNS=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --bin) BIN=$2; BUILD=0; shift ;;
        --broker-bin) BROKER_BIN=$2; shift ;;
        --no-build) BUILD=0 ;;
        --out) OUT=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "$BIN" ]; then
    BIN=$TARGET_DIR/release/makelaar
fi
if [ "$BUILD" = 1 ]; then
    echo "building $BIN ..." >&2
    (cd "$ROOT" && cargo build --release -q -p makelaar)
fi
if [ ! -x "$BIN" ]; then
    echo "compare.sh: no makelaar binary at $BIN; build it (cargo build --release -p makelaar) or give --bin PATH" >&2
    exit 1
fi
BROKER_BIN=${BROKER_BIN:-$BIN}
if [ ! -x "$BROKER_BIN" ]; then
    echo "compare.sh: no makelaar binary at $BROKER_BIN; give --broker-bin an executable" >&2
    exit 1
fi
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    echo "installing mosquitto (Debian package) ..." >&2
    apt-get install -y mosquitto >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
for tool in python3 timeout; do
    command -v "$tool" >/dev/null || { echo "compare.sh: needs $tool" >&2; exit 1; }
done

# Each connection is a descriptor in the broker and one in the generator (separate processes,
# so 10,000 connections need about 10,050 per process).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt $((CONNS + 200)) ]; then
    echo "compare.sh: open-files limit $NOFILE is too low for $CONNS connections; using $((NOFILE - 200))" >&2
    CONNS=$((NOFILE - 200))
fi

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/makelaar-compare.XXXXXX")}
mkdir -p "$OUT"
# The TLS scenarios: both brokers serve the same certificate (RSA 2048, signed by a test CA).
CERTS=$OUT/certs
if [ -z "$ONLY" ] || [[ ",$ONLY," == *,conn_tls,* ]]; then
    sh "$ROOT/scripts/gen-certs.sh" "$CERTS" >/dev/null
fi
CONF_DIR=$(mktemp -d)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    done
    rm -rf "$CONF_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
    local port=$1 i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

BROKER_PID=""
BROKER_PORT=""

# start_broker KIND NAME REP: scenarios named durable* run both brokers with their store on:
# Makelaar with a fresh data directory (durability sync: every acknowledgement after fsync),
# Mosquitto with `persistence true` and its default autosave. All others run in memory.
# Scenarios named *_tls listen with TLS instead of plain TCP, with the same certificate.
start_broker() {
    local kind=$1 name=$2 rep=$3 data
    BROKER_PORT=$(free_port)
    data="$OUT/data.$name.$kind.$rep"
    case "$kind" in
        makelaar)
            if [[ $name == durable* ]]; then
                "$BROKER_BIN" serve --listen "mqtt://127.0.0.1:$BROKER_PORT" --sys-interval 0 \
                    --log-level "error,makelaar::status=info" --data-dir "$data" \
                    >"$OUT/$name.makelaar.$rep.log" 2>&1 &
            elif [[ $name == *_tls ]]; then
                "$BROKER_BIN" serve --listen "mqtts://127.0.0.1:$BROKER_PORT" --sys-interval 0 \
                    --cert "$CERTS/server.crt" --key "$CERTS/server.key" \
                    --log-level error --in-memory >>"$OUT/makelaar.log" 2>&1 &
            else
                "$BROKER_BIN" serve --listen "mqtt://127.0.0.1:$BROKER_PORT" --sys-interval 0 \
                    --log-level error --in-memory >>"$OUT/makelaar.log" 2>&1 &
            fi
            ;;
        mosquitto)
            printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$BROKER_PORT" >"$CONF_DIR/mosquitto.conf"
            if [[ $name == *_tls ]]; then
                # Run as this user: started as root, Mosquitto would switch to the user
                # `mosquitto` before reading the key, which it may not read.
                printf 'certfile %s\nkeyfile %s\nuser %s\n' "$CERTS/server.crt" \
                    "$CERTS/server.key" "$(id -un)" >>"$CONF_DIR/mosquitto.conf"
            fi
            if [[ $name == durable* ]]; then
                mkdir -p "$data"
                printf 'persistence true\npersistence_location %s/\n' "$data" >>"$CONF_DIR/mosquitto.conf"
            else
                printf 'persistence false\n' >>"$CONF_DIR/mosquitto.conf"
            fi
            "$MOSQUITTO" -c "$CONF_DIR/mosquitto.conf" >>"$OUT/mosquitto.log" 2>&1 &
            ;;
    esac
    BROKER_PID=$!
    PIDS+=("$BROKER_PID")
    if ! wait_port "$BROKER_PORT"; then
        echo "compare.sh: $kind did not start listening on port $BROKER_PORT (see $OUT/$kind.log)" >&2
        exit 1
    fi
}

stop_broker() {
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    local keep=() pid
    for pid in "${PIDS[@]}"; do
        [ "$pid" != "$BROKER_PID" ] && keep+=("$pid")
    done
    PIDS=("${keep[@]:-}")
}

# name | bench arguments (without host, port, --json, --broker-pid)
SCENARIOS=(
    "fanin_rate|fanin -c 4 -q 0 --rate 25000 -d $DURATION -w $WARMUP"
    "fanin_max|fanin -c 4 -q 0 -d $DURATION -w $WARMUP"
    "fanout|fanout -c 8 -q 0 -d $DURATION -w $WARMUP"
    "fanin_q1|fanin -c 4 -q 1 --inflight 100 -d $DURATION -w $WARMUP"
    "lat_q0|latency -q 0 --rate 1000 -d $DURATION -w $WARMUP"
    "lat_q1|latency -q 1 --rate 1000 -d $DURATION -w $WARMUP"
    "conn|conn -c $CONNS --parallel 100 -t idle/%i/cmd --hold 2"
    # The same over TLS: a full handshake per connection (no session resumption).
    "conn_tls|conn -c $CONNS --parallel 100 -t idle/%i/cmd --hold 2 --cafile $CERTS/ca.crt"
    # The same QoS 1 fan-in to a persistent subscriber, in memory and with the store on.
    "persist_q1|fanin -c 4 -q 1 --inflight 100 --persistent -d $DURATION -w $WARMUP"
    "durable_q1|fanin -c 4 -q 1 --inflight 100 --persistent -d $DURATION -w $WARMUP"
)

selected() {
    [ -z "$ONLY" ] && return 0
    case ",$ONLY," in *",$1,"*) return 0 ;; esac
    return 1
}

run_one() {
    local kind=$1 name=$2 rep=$3 args=$4 file limit
    file="$OUT/$name.$kind.$rep.json"
    limit=$((DURATION + WARMUP + 40))
    # Opening the connections takes its own time (full TLS handshakes: thousands per second).
    [[ $name == conn* ]] && limit=$((limit + CONNS / 100))
    start_broker "$kind" "$name" "$rep"
    # shellcheck disable=SC2086 # the scenario's arguments are meant to split
    if ! timeout -k 5 "$limit" "$BIN" bench $args -p "$BROKER_PORT" --broker-pid "$BROKER_PID" --json \
        >"$file" 2>"$OUT/$name.$kind.$rep.err"; then
        echo "  $name against $kind failed (see $OUT/$name.$kind.$rep.err)" >&2
        echo '{}' >"$file"
    fi
    [ -s "$OUT/$name.$kind.$rep.err" ] || rm -f "$OUT/$name.$kind.$rep.err"
    stop_broker
}

START=$(date +%s)
echo "results in $OUT" >&2
for rep in $(seq 1 "$REPEAT"); do
    for entry in "${SCENARIOS[@]}"; do
        name=${entry%%|*}
        args=${entry#*|}
        selected "$name" || continue
        if [ $((rep % 2)) = 1 ]; then order="makelaar mosquitto"; else order="mosquitto makelaar"; fi
        for kind in $order; do
            echo "[$(($(date +%s) - START))s] repetition $rep/$REPEAT: $name against $kind" >&2
            run_one "$kind" "$name" "$rep" "$args"
        done
    done
done

{
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r)"
    echo "makelaar: $("$BROKER_BIN" --version 2>/dev/null | head -1); mosquitto: $("$MOSQUITTO" -h 2>/dev/null | head -1 | sed 's/^mosquitto version //')"
    echo "runs: median of $REPEAT, ${DURATION} s measured after ${WARMUP} s warm-up, 64-byte payloads, MQTT 3.1.1, loopback; total $(($(date +%s) - START)) s"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt"
echo
python3 - "$OUT" "$REPEAT" "$DURATION" "$WARMUP" <<'PY'
import json, os, re, statistics, sys

out, repeat = sys.argv[1], int(sys.argv[2])
run_secs = float(sys.argv[3]) + float(sys.argv[4])

def load(name, kind):
    runs = []
    for rep in range(1, repeat + 1):
        try:
            with open(os.path.join(out, f"{name}.{kind}.{rep}.json")) as f:
                runs.append(json.load(f))
        except (OSError, ValueError):
            runs.append({})
    return runs

STORE_LINE = re.compile(r"store closed: (\d+) commits, (\d+) fsyncs, (\d+) ops written, (\d+) cancelled")

def store_figures(name):
    """fsyncs per second over the run and ops per commit, from the broker's closing line."""
    runs = []
    for rep in range(1, repeat + 1):
        try:
            with open(os.path.join(out, f"{name}.makelaar.{rep}.log")) as f:
                m = STORE_LINE.search(f.read())
        except OSError:
            m = None
        if m:
            commits, fsyncs, written, cancelled = map(int, m.groups())
            runs.append({"fsyncs_per_s": fsyncs / run_secs,
                         "ops_per_commit": (written + cancelled) / max(commits, 1)})
    return runs

def get(d, path):
    for k in path.split("."):
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d

def median(runs, path, scale=1.0):
    vals = [get(r, path) for r in runs]
    vals = [v * scale for v in vals if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None

# scenario label, file name, metric label, JSON path, scale, higher is better
ROWS = [
    ("fan-in 4→1 QoS 0 @ 4×25k/s", "fanin_rate", "delivered/s", "delivered_per_s", 1, True),
    ("", "fanin_rate", "latency p50 ms", "latency_ms.p50", 1, False),
    ("", "fanin_rate", "latency p99 ms", "latency_ms.p99", 1, False),
    ("", "fanin_rate", "lost", "lost", 1, False),
    ("", "fanin_rate", "broker CPU cores", "broker.cores_used", 1, False),
    ("fan-in 4→1 QoS 0 unthrottled", "fanin_max", "delivered/s", "delivered_per_s", 1, True),
    ("", "fanin_max", "deliveries per broker CPU-s", "broker.deliveries_per_cpu_s", 1, True),
    ("", "fanin_max", "lost (QoS 0, dropped by the broker)", "lost", 1, False),
    ("", "fanin_max", "broker CPU cores", "broker.cores_used", 1, None),
    ("", "fanin_max", "generator CPU cores", "generator.cores_used", 1, None),
    ("fan-out 1→8 QoS 0 unthrottled", "fanout", "deliveries/s", "delivered_per_s", 1, True),
    ("", "fanout", "deliveries per broker CPU-s", "broker.deliveries_per_cpu_s", 1, True),
    ("", "fanout", "lost (QoS 0, dropped by the broker)", "lost", 1, False),
    ("", "fanout", "broker CPU cores", "broker.cores_used", 1, None),
    ("", "fanout", "generator CPU cores", "generator.cores_used", 1, None),
    ("fan-in 4→1 QoS 1 unthrottled (4×100 in flight)", "fanin_q1", "delivered/s", "delivered_per_s", 1, True),
    ("", "fanin_q1", "acked/s", "acked_per_s", 1, None),
    ("", "fanin_q1", "lost after PUBACK", "lost", 1, False),
    ("", "fanin_q1", "broker RSS max MiB", "broker.rss_max_kib", 1 / 1024, False),
    ("latency 1→1 @ 1,000/s QoS 0", "lat_q0", "p50 ms", "latency_ms.p50", 1, False),
    ("", "lat_q0", "p99 ms", "latency_ms.p99", 1, False),
    ("latency 1→1 @ 1,000/s QoS 1", "lat_q1", "p50 ms", "latency_ms.p50", 1, False),
    ("", "lat_q1", "p99 ms", "latency_ms.p99", 1, False),
    ("idle connections, 1 subscription each", "conn", "connections/s", "connections_per_s", 1, True),
    ("", "conn", "broker RSS per connection, bytes", "broker.rss_per_conn_bytes", 1, False),
    ("", "conn", "connections held", "connections", 1, None),
    ("", "conn", "broker CPU µs per connection", "broker.cpu_per_conn_us", 1, False),
    ("idle TLS connections, full handshakes, 1 subscription each", "conn_tls", "connections/s", "connections_per_s", 1, True),
    ("", "conn_tls", "broker RSS per connection, bytes", "broker.rss_per_conn_bytes", 1, False),
    ("", "conn_tls", "connections held", "connections", 1, None),
    ("", "conn_tls", "broker CPU µs per connection", "broker.cpu_per_conn_us", 1, False),
    ("", "conn_tls", "resumed handshakes", "tls.resumed_handshakes", 1, None),
    ("fan-in 4→1 QoS 1, persistent subscriber, in memory", "persist_q1", "delivered/s", "delivered_per_s", 1, True),
    ("", "persist_q1", "lost after PUBACK", "lost", 1, False),
    ("fan-in 4→1 QoS 1, persistent subscriber, store on (sync / persistence true)", "durable_q1", "delivered/s", "delivered_per_s", 1, True),
    ("", "durable_q1", "lost after PUBACK", "lost", 1, False),
    ("", "durable_q1", "broker CPU cores", "broker.cores_used", 1, None),
]

def fmt(v):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if v == int(v):
        return f"{int(v)}"
    return f"{v:.3f}"

cache = {}
print("| scenario | metric | Makelaar | Mosquitto | ratio |")
print("|---|---|---:|---:|---:|")
for label, name, metric, path, scale, higher in ROWS:
    if not any(os.path.exists(os.path.join(out, f"{name}.{k}.1.json")) for k in ("makelaar", "mosquitto")):
        continue
    m = median(cache.setdefault((name, "makelaar"), load(name, "makelaar")), path, scale)
    q = median(cache.setdefault((name, "mosquitto"), load(name, "mosquitto")), path, scale)
    ratio = "–"
    if m is not None and q is not None:
        if q != 0:
            ratio = f"{m / q:.2f}×"
        elif m == 0:
            ratio = "="
    print(f"| {label} | {metric} | {fmt(m)} | {fmt(q)} | {ratio} |")
# The same rate as a median of per-repetition ratios: each repetition runs the two brokers
# back to back, so this follows the machine's load less than the ratio of two medians does.
paired = []
for label, name, metric, path, scale, higher in ROWS:
    if not higher or metric not in ("delivered/s", "deliveries/s", "connections/s"):
        continue
    ms, qs = load(name, "makelaar"), load(name, "mosquitto")
    ratios = [get(m, path) / get(q, path) for m, q in zip(ms, qs)
              if isinstance(get(m, path), (int, float)) and get(q, path)]
    if ratios:
        paired.append(f"{name} {statistics.median(ratios):.2f}× "
                      f"({min(ratios):.2f}–{max(ratios):.2f})")
if paired:
    print()
    print("Paired ratios, median (range) of the repetitions:", ", ".join(paired) + ".")
durable = median(load("durable_q1", "makelaar"), "delivered_per_s")
memory = median(load("persist_q1", "makelaar"), "delivered_per_s")
figures = store_figures("durable_q1")
if durable and memory:
    print()
    print(f"Makelaar with the store on delivers {durable / memory:.0%} of its in-memory figure.")
if figures:
    fs = statistics.median(r["fsyncs_per_s"] for r in figures)
    per = statistics.median(r["ops_per_commit"] for r in figures)
    print(f"Store: {fs:,.0f} fsyncs/s over the run, {per:,.1f} ops per group commit (medians).")
errors = []
for (name, kind), runs in sorted(cache.items()):
    for i, r in enumerate(runs, 1):
        if not r:
            errors.append(f"{name} against {kind}, repetition {i}: no result")
        elif r.get("errors"):
            errors.append(f"{name} against {kind}, repetition {i}: {r['errors']} errors ({r.get('first_error')})")
        elif get(r, "generator.saturated"):
            errors.append(f"{name} against {kind}, repetition {i}: the load generator was saturated")
if errors:
    print()
    for e in errors:
        print("note:", e)
PY
