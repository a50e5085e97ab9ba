"""What keeping connected sessions' records current costs (docs/cluster.md, "Checkpoints
while connected"): QoS 1 and QoS 2 messages from publishers on node b to one persistent
subscriber on node a (three NATS servers, each node on its own), with `makelaar bench`.

    MAKELAAR_BIN=... NATS_SERVER_BIN=... python3 bench/cluster/checkpoint_cost.py \
        [--runs 3] [--duration 10] [--bins OLD NEW]

Prints per binary and QoS the subscriber's delivered msg/s and latency p50/p99, medians of the
runs (binaries interleaved, a fresh cluster per run)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "interop"))

from test_cluster import NatsCluster, Node  # noqa: E402


def run_once(binary: str, qos: int, duration: float) -> dict:
    os.environ["MAKELAAR_BIN"] = binary
    work = Path(tempfile.mkdtemp(prefix="mk-ckpt-"))
    nats = NatsCluster(work)
    nodes = []
    try:
        for i, name in enumerate(("a", "b")):
            n = Node(work, nats, name, servers=[nats.urls[i]])
            nodes.append(n)
            n.wait_serving()
        a, b = nodes
        sub = subprocess.Popen(
            [binary, "bench", "sub", "-p", str(a.port), "-V", "5", "--persistent",
             "-q", str(qos), "-t", "bench/#", "-c", "1", "--duration", str(duration + 4),
             "--warmup", "1", "--json"],
            stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        pub = subprocess.run(
            [binary, "bench", "pub", "-p", str(b.port), "-V", "5", "-q", str(qos), "-c", "4",
             "--inflight", "100", "-t", "bench/%i", "--duration", str(duration),
             "--warmup", "2", "--json"],
            stdout=subprocess.PIPE, text=True, timeout=duration + 60)
        out, _ = sub.communicate(timeout=duration + 60)
        s = json.loads(out.strip().splitlines()[-1])
        p = json.loads(pub.stdout.strip().splitlines()[-1])
        lat = s.get("latency_ms") or {}
        return {"delivered_per_s": s["delivered_per_s"], "acked_per_s": p["acked_per_s"],
                "p50": lat.get("p50"), "p99": lat.get("p99"), "lost": s.get("lost"),
                "duplicates": s.get("duplicates")}
    finally:
        for n in nodes:
            n.stop()
        nats.stop()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--bins", nargs="+", default=[os.environ.get("MAKELAAR_BIN", "makelaar")])
    ap.add_argument("--qos", nargs="+", type=int, default=[1, 2])
    args = ap.parse_args()
    results: dict = {}
    for r in range(args.runs):
        for qos in args.qos:
            for binary in args.bins:
                load = os.getloadavg()[0]
                res = run_once(binary, qos, args.duration)
                res["load"] = round(load, 1)
                print(json.dumps({"run": r, "bin": binary, "qos": qos, **res}), flush=True)
                results.setdefault((binary, qos), []).append(res)
    print("\nmedians:")
    for (binary, qos), rs in results.items():
        med = {k: statistics.median([x[k] for x in rs if x.get(k) is not None] or [0])
               for k in ("delivered_per_s", "acked_per_s", "p50", "p99")}
        print(f"{binary} QoS {qos}: {med}  (runs: {[x['delivered_per_s'] for x in rs]})")


if __name__ == "__main__":
    main()
