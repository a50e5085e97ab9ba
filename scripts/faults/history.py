#!/usr/bin/env python3
"""Reads a fault run's history.json (scripts/cluster-faults.sh --keep) and prints, per
subscriber, the runs of QoS 2 messages received twice (DUP), acknowledged messages that
arrived after a later one of their publisher (ORDER) and acknowledged messages never
received (LOST), with wall-clock times and the node each arrival came through; then the
late appends (LATE: unacknowledged messages received twice or after a later one of their
publisher) with the fault that was on when they were sent, and a count of them by fault
kind; with a client id as second argument, that client's connections too (CONN).

Usage: scripts/faults/history.py DIR/history.json [CLIENT_ID]
"""
import collections
import datetime
import json
import sys

h = json.load(open(sys.argv[1]))
off = h["now_wall"] - h["now_monotonic"]
def wall(t): return datetime.datetime.utcfromtimestamp(t + off).strftime("%H:%M:%S.%f")[:-3]
def acked_at(pub, seq):
    t = h["acked"].get(pub + ":2", {}).get(str(seq))
    return f"acked {wall(t)}" if t is not None else "unacknowledged (a late append)"
conns = collections.defaultdict(list)
for c in h["conns"]:
    conns[c["client_id"]].append(c)
def node_at(cid, t):
    for c in conns[cid]:
        if c["opened"] <= t and (c["closed"] is None or t <= c["closed"]):
            return c["node"]
    return None
def runs(seqs):
    seqs = sorted(seqs); out = []
    for s in seqs:
        if out and s == out[-1][1] + 1: out[-1][1] = s
        else: out.append([s, s])
    return out
for sub, recs in h["received"].items():
    seen = collections.defaultdict(list)
    for t, pub, qos, seq in recs:
        seen[(pub, qos, seq)].append(t)
    dups = collections.defaultdict(list)
    for (pub, qos, seq), ts in seen.items():
        if qos == 2 and len(ts) > 1:
            dups[pub].append(seq)
    for pub, seqs in dups.items():
        for a, b in runs(seqs):
            t1 = seen[(pub, 2, a)]
            print(f"DUP {sub} {pub} q2 {a}-{b} ({b-a+1}) first {wall(t1[0])}@m{node_at(sub,t1[0])} again {wall(t1[1])}@m{node_at(sub,t1[1])} {acked_at(pub, a)}")
    # order: an acknowledged message arriving after a later one of its publisher (the first
    # arrival of each; an unacknowledged one arriving late is a late append, not listed)
    last = {}
    firsts = set()
    for t, pub, qos, seq in recs:
        if (pub, qos, seq) in firsts:
            continue
        firsts.add((pub, qos, seq))
        prev = last.get((pub, qos))  # the highest number seen so far, and when
        if prev is None or seq > prev[0]:
            last[(pub, qos)] = (seq, t)
        elif str(seq) in h["acked"].get(f"{pub}:{qos}", {}):
            print(f"ORDER {sub} {pub} q{qos} {seq} at {wall(t)}@m{node_at(sub, t)} after {prev[0]} at {wall(prev[1])}@m{node_at(sub, prev[1])}")
    # lost
    for key, acked in h["acked"].items():
        pub, qos = key.split(":"); qos = int(qos)
        miss = [int(s) for s in acked if (pub, qos, int(s)) not in seen]
        for a, b in runs(miss):
            print(f"LOST {sub} {pub} q{qos} {a}-{b} ({b-a+1}) acked {wall(acked[str(a)])}..{wall(acked[str(b)])}")
# late appends: unacknowledged messages that came twice or after a later one of their
# publisher, each with the node its publisher was on and the fault that was on when it
# was sent (the last one begun before)
faults = sorted(h["faults"], key=lambda f: f["at"])
def fault_at(t):
    on = [f for f in faults if f["at"] <= t]
    return on[-1] if on else None
late = {}
for sub, recs in h["received"].items():
    seen = collections.Counter()
    high = {}
    for t, pub, qos, seq in recs:
        seen[(pub, qos, seq)] += 1
        acked = str(seq) in h["acked"].get(f"{pub}:{qos}", {})
        twice = qos == 2 and seen[(pub, qos, seq)] == 2
        behind = seen[(pub, qos, seq)] == 1 and seq < high.get((pub, qos), 0)
        high[(pub, qos)] = max(high.get((pub, qos), 0), seq)
        if not acked and (twice or behind):
            late.setdefault((pub, qos, seq), []).append((sub, "twice" if twice else "behind", t))
by_kind = collections.Counter()
for (pub, qos, seq), where in sorted(late.items()):
    sent = h["sent"].get(f"{pub}:{qos}", {}).get(str(seq))
    f = fault_at(sent) if sent is not None else None
    node = node_at(pub, sent) if sent is not None else None
    kind = f"{f['kind']}@m{f['victim']}" if f else "none"
    on_victim = f is not None and node == f["victim"]
    by_kind[(f["kind"] if f else "none", on_victim)] += 1
    subs = ", ".join(f"{s} {how} {wall(t)}" for s, how, t in where)
    print(f"LATE {pub} q{qos} {seq} sent {wall(sent) if sent else '?'}@m{node} during {kind}: {subs}")
for (kind, on_victim), n in sorted(by_kind.items()):
    print(f"LATE-BY-FAULT {kind} publisher {'on' if on_victim else 'not on'} the victim: {n}")
if len(sys.argv) > 2:
    cid = sys.argv[2]
    for c in conns[cid]:
        print("CONN", cid, "m%d" % c["node"], wall(c["opened"]), wall(c["closed"]) if c["closed"] else None, c["reason"])
