#!/usr/bin/env python3
"""Usage: scripts/faults/records.py DIR (a fault run kept with --keep, nodes logging
with MK_LOG="info,makelaar::records=debug").

Checks the makelaar::records debug lines of a fault run: per client, a record's cursor
(next, and writer_through when the same writer) never goes back between consecutive
records, except across a claim (then printed as context)."""
import re, sys, glob, collections
d = sys.argv[1]
ev = []
for f in sorted(glob.glob(f"{d}/m*.log")):
    node = f.split("/")[-1][:-4]
    for line in open(f, errors="replace"):
        if "makelaar::records" not in line:
            continue
        t = line[:27]
        m = re.search(r'client_id=(\S+)', line)
        cid = m.group(1).strip('"') if m else None
        ev.append((t, node, cid, line.strip()))
ev.sort()
last = {}
def cursors(line):
    m = re.search(r'place=(.*?)( held| cursors_of|$)', line)
    out = {}
    if m:
        for p, n, w in re.findall(r'p(\d+):(\d+)/(\d+)', m.group(1)):
            out[int(p)] = (int(n), int(w))
    return out
for t, node, cid, line in ev:
    if "session record written" in line:
        c = cursors(line)
        prev = last.get(cid)
        if prev and prev[1] == node:
            back = [(p, prev[2][p], c.get(p)) for p in prev[2] if p in c and c[p][0] < prev[2][p][0]]
            if back:
                print("BACK", t, node, cid, back[:4])
                print("   prev", prev[0], prev[3][:300])
                print("   now ", line[:300])
        last[cid] = (t, node, c, line)
    elif "read by a claim" in line:
        last.pop(cid, None)
# claims that read a record older than the last one written before the claim
lastw = {}
for t, node, cid, line in ev:
    if "session record written" in line:
        lastw[cid] = (t, node, cursors(line), line)
    elif "read by a claim" in line and cid in lastw:
        c = cursors(line)
        w = lastw[cid]
        back = [(p, w[2][p], c.get(p)) for p in w[2] if c.get(p, (0, 0))[0] < w[2][p][0]]
        if back:
            print("STALE", t, node, cid, "last written", w[0], w[1], back[:4])
