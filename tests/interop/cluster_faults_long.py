"""The long fault schedule (scripts/cluster-faults.sh): N cycles, each one fault of every
kind in turn (kill -9 of a node, kill -9 of a NATS server, SIGSTOP of a node beyond its
lease, SIGSTOP of a NATS server, and, where network namespaces are permitted, a host cut off; with nft also the link
between two hosts cut, and a host's packets dropped at random), on a rotating victim;
then a summary. Exits 1 when the checker found a problem."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster_faults as cf  # noqa: E402


def available(kinds: list[str]) -> list[str]:
    """`kinds` without those this machine cannot make (namespaces need root; the link cut
    and packet loss also nft), each left out with the reason."""
    out = []
    for k in kinds:
        why = cf.netns_unavailable(nft=k in cf.NFT_FAULTS) if k in cf.NETNS_FAULTS else None
        if why is None:
            out.append(k)
        else:
            print(f"{k} left out: {why}")
    return out


def dropped_late(workdir: Path) -> int:
    """How many late appends the nodes' readers dropped, as their logs say (each node's
    log holds all of its runs)."""
    n = 0
    for log in workdir.glob("m*.log"):
        with open(log, errors="replace") as f:
            n += sum(1 for line in f if "a late append" in line)
    return n


def healed(k: int, w, total: int, workdir: Path, keep: bool):
    """After fault k: how many acknowledged messages are still missing; with --keep the
    clients' history so far in history.json, to trace a finding while the run goes on."""
    cf.log(f"fault {k}/{total} healed; missing so far: {w.missing_count()}")
    if keep:
        cf.dump_history(w.history, workdir / "history.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cycles", type=int, default=3, help="rounds of every fault kind (3)")
    ap.add_argument("--faults", default=",".join(cf.FAULTS),
                    help=f"fault kinds, comma-separated ({','.join(cf.FAULTS)})")
    ap.add_argument("--loss-percent", type=int, default=cf.LOSS_PERCENT,
                    help=f"share of packets the loss fault drops, 1-100 ({cf.LOSS_PERCENT})")
    ap.add_argument("--rate", type=float, default=40.0, help="messages/s per publisher (40)")
    ap.add_argument("--strict", action="store_true",
                    help="count late appends of unacknowledged messages (docs/cluster.md, Faults) as problems")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory, its logs and the clients' history (history.json)")
    args = ap.parse_args()
    if not 0 < args.loss_percent <= 100:
        ap.error("--loss-percent: 1 to 100")
    kinds = [k for k in args.faults.split(",") if k]
    for k in kinds:
        if k not in cf.FAULTS:
            ap.error(f"unknown fault {k!r}")
    kinds = available(kinds)
    if args.keep:
        # `cf.run` writes what the clients saw beside the node logs: a finding of a long run
        # can then be traced message by message.
        os.environ["MAKELAAR_KEEP_CLUSTER_LOGS"] = "1"
    use_netns = any(k in cf.NETNS_FAULTS for k in kinds)
    schedule = []
    for c in range(args.cycles):
        for j, k in enumerate(kinds):
            schedule.append((k, (c + j) % 3))
    workdir = Path(tempfile.mkdtemp(prefix="mk-faults-long-"))
    cluster = (cf.NetnsCluster if use_netns else cf.LoopbackCluster)(workdir)
    bad = True
    try:
        cluster.start()
        cf.log(f"{len(schedule)} faults: {schedule}")
        # Subscribers of a faulted node lose nothing since the checkpoints: such losses are
        # losses like any other.
        report = cf.run(cluster, schedule, rate=args.rate, loss_percent=args.loss_percent,
                        tolerate_known_gap=False,
                        tolerate_late_appends=not args.strict,
                        on_cycle=lambda k, w: healed(k, w, len(schedule), workdir, args.keep))
        print()
        print(report.summary())
        print(f"late appends dropped:   {dropped_late(workdir)} by the nodes' readers"
              " (followers, replays, share groups; from the node logs)")
        for p in report.problems():
            print(f"PROBLEM: {p}")
        bad = bool(report.problems())
    finally:
        cluster.stop()
        if args.keep or bad:
            print(f"logs in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
