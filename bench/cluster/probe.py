#!/usr/bin/env python3
"""Delivery-path probe for a Makelaar cluster on NATS JetStream (issue 14).

Models how QoS 1/2 messages reach the Makelaar nodes that want them, on three NATS
servers started by nats3.sh (client ports 14222..14224). Each "node" is a process that
connects to its own NATS server, as a Makelaar node would, and holds 1,000 distinct MQTT
filters (10k persistent sessions share them). Messages live in P partition streams
(R3, file storage, fsync before ack), subjects `m.<partition>.<topic levels>.$`.

Modes (see docs/cluster.md, "The delivery path"):
  A  per node and partition one ordered push consumer (ephemeral, memory, R1, no acks)
     whose filter_subjects are the node's distinct filters for that partition;
     filters change with consumer updates.
  B  the stream RePublishes every stored message to `r.<subject>` on core NATS with
     Nats-Sequence / Nats-Last-Sequence headers; nodes subscribe their filters on core
     NATS and backfill per-subject gaps with Direct Get.
  C  per node and partition one ordered push consumer WITHOUT filter: every node reads
     every message once and filters with its own topic tree; nothing on NATS changes
     when subscriptions come and go.

Scenarios: filters (cost of filter_subjects), deliver (latency, cost, throughput, churn,
flap or restart, memory) for one mode, kv (client-id registry CAS), share (consumers for
share groups), creates (rate of short-lived consumer creation); `summary FILE` prints the
medians of what `deliver --json FILE` appended. Run it through probe.sh, which starts and
stops the servers.
"""
import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import zlib

import nats

URLS = [f"nats://127.0.0.1:{14222 + i}" for i in range(3)]
NODES = 3
N_EXACT, N_PLUS, N_HASH = 850, 100, 50  # 1,000 distinct filters per node


def now_ns():
    return time.monotonic_ns()


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def fmt_ms(xs):
    return f"p50 {pct(xs, 50):.2f} ms, p99 {pct(xs, 99):.2f} ms (n={len(xs)})"


# ---------------------------------------------------------------- workload ---------
def node_filters(n):
    """The 1,000 distinct MQTT filters node n holds (its 3,333 sessions share them)."""
    fs = [f"dev/n{n}-{i}/cmd" for i in range(N_EXACT)]
    fs += [f"site/n{n}-{k}/+/status" for k in range(N_PLUS)]
    fs += [f"fleet/n{n}-{k}/#" for k in range(N_HASH)]
    return fs


def topic_for(n, rnd):
    """A random topic that exactly one node (n) subscribes to."""
    r = rnd.random()
    if r < 0.85:
        return f"dev/n{n}-{rnd.randrange(N_EXACT)}/cmd"
    if r < 0.95:
        return f"site/n{n}-{rnd.randrange(N_PLUS)}/d{rnd.randrange(50)}/status"
    return f"fleet/n{n}-{rnd.randrange(N_HASH)}/t{rnd.randrange(9)}/x"


def partition(topic, P):
    return zlib.crc32(topic.encode()) % P


def subject(topic, P):
    # escaping of '.', '*', '>', ' ' and empty levels left out: the probe's topics have none
    return f"m.{partition(topic, P)}.{topic.replace('/', '.')}.$"


def filter_subjects(f, P):
    """(partition or None for all, subject filter without the m.<p>. prefix)."""
    levels = f.split("/")
    if "+" not in levels and "#" not in levels:
        return partition(f, P), ".".join(levels) + ".$"
    toks = ["*" if x == "+" else (">" if x == "#" else x) for x in levels]
    if toks[-1] != ">":
        toks.append("$")
    return None, ".".join(toks)


def per_partition_filters(filters, P):
    out = [[] for _ in range(P)]
    for f in filters:
        p, s = filter_subjects(f, P)
        for q in (range(P) if p is None else [p]):
            out[q].append(f"m.{q}.{s}")
    return out


class Matcher:
    """The node's local topic tree, as a set plus one regex (good enough for the probe)."""

    def __init__(self, filters):
        self.exact = {f for f in filters if "+" not in f and "#" not in f}
        pats = []
        for f in filters:
            if f in self.exact:
                continue
            rx = "/".join("[^/]*" if x == "+" else (".*" if x == "#" else re.escape(x)) for x in f.split("/"))
            pats.append(rx.replace("/.*", "(/.*)?"))
        self.rx = re.compile("^(?:" + "|".join(pats) + ")$") if pats else None

    def add(self, f):
        self.exact.add(f)

    def match(self, t):
        return t in self.exact or bool(self.rx and self.rx.match(t))


async def jsreq(nc, subj, body=None, timeout=10):
    r = await nc.request(subj, json.dumps(body or {}).encode(), timeout=timeout)
    return json.loads(r.data)


async def setup_streams(nc, P, republish):
    for p in range(P):
        cfg = {"name": f"MQ{p}", "subjects": [f"m.{p}.>"], "num_replicas": 3, "storage": "file",
               "max_age": 3600 * 10**9, "allow_direct": True, "duplicate_window": 60 * 10**9}
        if republish:
            cfg["republish"] = {"src": f"m.{p}.>", "dest": f"r.m.{p}.>"}
        r = await jsreq(nc, f"$JS.API.STREAM.CREATE.MQ{p}", cfg)
        if "error" in r and r["error"].get("err_code") != 10058:
            raise SystemExit(f"stream create: {r['error']}")


def server_pids(piddir):
    out = []
    for i in (1, 2, 3):
        with open(os.path.join(piddir, f"n{i}.pid")) as f:
            out.append(int(f.read().strip()))
    return out


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def varz_out(i):
    import urllib.request
    v = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{18222 + i}/varz", timeout=5).read())
    return v["out_msgs"], v["out_bytes"]


def load():
    return open("/proc/loadavg").read().split()[0]


# ---------------------------------------------------------------- a node -----------
class Node:
    def __init__(self, n, mode, P):
        self.n, self.mode, self.P = n, mode, P
        self.filters = node_filters(n)
        self.matcher = Matcher(self.filters)
        self.pfilters = per_partition_filters(self.filters, P)
        self.reset()
        self.cons = {}  # partition -> dict(name, sid, last_sseq, last_cseq, last_seen)
        self.gen = 0
        self.recreated = 0
        self.update_errors = 0
        self.backfilled = 0
        self.update_lat = []
        self.apply_lat = []
        self.probe_sent = self.probe_ok = 0
        self.pending_probes = {}
        self.last_seen_subj = {}
        self.start_seq = [0] * P
        self.subs = {}

    def reset(self):
        self.arrivals = {}  # key -> (count, arrival ns, latency ns)

    def record(self, topic, data):
        if self.mode == "C" and not self.matcher.match(topic):
            return
        try:
            pid, seq, t0 = data.split(b"|", 2)
        except ValueError:
            return
        key = (int(pid), int(seq))
        t0 = int(t0)
        t = now_ns()
        if key in self.pending_probes:
            self.pending_probes.pop(key)
            self.probe_ok += 1
            return
        a = self.arrivals.get(key)
        if a and os.environ.get("PROBE_DEBUG"):
            print(f"node {self.n + 1} dup {key} via {getattr(self, '_via', '?')}", file=sys.stderr)
        if a:
            self.arrivals[key] = (a[0] + 1, a[1], a[2])
        else:
            self.arrivals[key] = (1, t, t - t0)

    # ---- modes A and C: ordered push consumers
    def cons_config(self, p, name, start_seq):
        cfg = {"name": name, "deliver_subject": f"_dlv.n{self.n}.{name}", "ack_policy": "none",
               "mem_storage": True, "num_replicas": 1, "inactive_threshold": 30 * 10**9,
               "flow_control": True, "idle_heartbeat": 1 * 10**9, "max_deliver": 1,
               "replay_policy": "instant"}
        if start_seq:
            cfg["deliver_policy"] = "by_start_sequence"
            cfg["opt_start_seq"] = start_seq
        else:
            cfg["deliver_policy"] = "new"
        if self.mode == "A":
            cfg["filter_subjects"] = list(self.pfilters[p])
        return cfg

    async def create_consumer(self, p, start_seq):
        self.gen += 1
        name = f"nd{self.n}p{p}g{self.gen}"
        prev = self.cons.get(p) or {"last_sseq": 0, "last_cseq": 0}
        old = prev.get("name")
        if start_seq:
            start_seq = prev["last_sseq"] + 1 if prev["last_sseq"] else start_seq
        cfg = self.cons_config(p, name, start_seq)
        # replace before any await, so the old consumer's late deliveries are ignored from here on
        st = {"name": name, "last_sseq": prev["last_sseq"], "last_cseq": 0, "last_seen": time.monotonic(),
              "busy": False, "cfg": cfg}
        self.cons[p] = st
        if prev.get("sub"):
            await prev["sub"].unsubscribe()

        async def cb(msg, p=p, name=name):
            s = self.cons.get(p)
            if not s or s["name"] != name:
                return
            s["last_seen"] = time.monotonic()
            if not msg.reply or msg.reply.startswith("$JS.FC") or (msg.headers and "Status" in (msg.headers or {})):
                if msg.reply:
                    await self.nc.publish(msg.reply, b"")
                return
            if msg.data == b"" and msg.headers and msg.headers.get("Status"):
                return
            tok = msg.reply.split(".")
            if not getattr(self, "_shown", False) and os.environ.get("PROBE_DEBUG"):
                self._shown = True
                print("reply format:", msg.reply, file=sys.stderr)
            sseq, cseq = int(tok[-4]), int(tok[-3])
            if cseq != s["last_cseq"] + 1:
                # a gap in the consumer's own sequence: recreate from the last stream seq + 1
                asyncio.ensure_future(self.recover(p, name))
                return
            s["last_cseq"], s["last_sseq"] = cseq, sseq
            topic = msg.subject.split(".", 2)[2][:-2].replace(".", "/")
            self._via = (name, sseq, cseq)
            self.record(topic, msg.data)

        st["sub"] = await self.nc.subscribe(cfg["deliver_subject"], cb=cb, pending_msgs_limit=1_000_000,
                                            pending_bytes_limit=1 << 30)
        r = await jsreq(self.nc, f"$JS.API.CONSUMER.CREATE.MQ{p}.{name}", {"stream_name": f"MQ{p}", "config": cfg})
        if "error" in r:
            raise RuntimeError(f"consumer create: {r['error']}")
        if old:
            try:
                await jsreq(self.nc, f"$JS.API.CONSUMER.DELETE.MQ{p}.{old}", timeout=2)
            except Exception:
                pass

    async def recover(self, p, name):
        s = self.cons.get(p)
        if not s or s["name"] != name or s["busy"]:
            return
        s["busy"] = True
        self.recreated += 1
        start = (s["last_sseq"] or self.start_seq[p]) + 1
        for _ in range(60):
            try:
                await self.create_consumer(p, start)
                return
            except Exception:
                await asyncio.sleep(0.5)

    async def watchdog(self):
        while True:
            await asyncio.sleep(0.5)
            t = time.monotonic()
            for p, s in list(self.cons.items()):
                if t - s["last_seen"] > 3.0 and not s["busy"]:
                    asyncio.ensure_future(self.recover(p, s["name"]))

    async def update_filters(self, p):
        s = self.cons[p]
        cfg = dict(s["cfg"])
        cfg["filter_subjects"] = list(self.pfilters[p])
        try:
            r = await jsreq(self.nc, f"$JS.API.CONSUMER.CREATE.MQ{p}.{s['name']}",
                            {"stream_name": f"MQ{p}", "action": "update", "config": cfg})
        except Exception as e:
            r = {"error": str(e)}
        if "error" in r:
            self.update_errors += 1
            print(f"node {self.n + 1}: consumer update failed: {r['error']}", file=sys.stderr)
        else:
            s["cfg"] = cfg

    # ---- mode B: core subscriptions on republished subjects
    async def b_cb(self, msg):
        h = msg.headers or {}
        seq, last = int(h.get("Nats-Sequence", 0)), int(h.get("Nats-Last-Sequence", 0))
        subj = h.get("Nats-Subject") or msg.subject[2:]
        stream = h.get("Nats-Stream")
        p = int(subj.split(".")[1])
        floor = self.last_seen_subj.get(subj, self.start_seq[p])
        if last > floor:
            # a message on this subject was stored but never reached us: fetch the gap
            s = floor + 1
            while s < seq:
                try:
                    r = await self.nc.request(f"$JS.API.DIRECT.GET.{stream}",
                                              json.dumps({"seq": s, "next_by_subj": subj}).encode(), timeout=2)
                except Exception:
                    break
                gs = int((r.headers or {}).get("Nats-Sequence", 0))
                if not gs or gs >= seq:
                    break
                self.backfilled += 1
                self.record(subj.split(".", 2)[2][:-2].replace(".", "/"), r.data)
                s = gs + 1
        self.last_seen_subj[subj] = max(seq, self.last_seen_subj.get(subj, 0))
        self.record(subj.split(".", 2)[2][:-2].replace(".", "/"), msg.data)

    def b_subjects(self, f):
        p, s = filter_subjects(f, self.P)
        return f"r.m.{'*' if p is None else p}.{s}"

    # ---- commands
    async def start(self):
        self.nc = await nats.connect(URLS[self.n], max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                     ping_interval=1, max_outstanding_pings=3)
        for p in range(self.P):
            r = await jsreq(self.nc, f"$JS.API.STREAM.INFO.MQ{p}")
            self.start_seq[p] = r["state"]["last_seq"]
        t = time.perf_counter()
        if self.mode in "AC":
            for p in range(self.P):
                await self.create_consumer(p, 0)
            asyncio.ensure_future(self.watchdog())
        else:
            for f in self.filters:
                self.subs[f] = await self.nc.subscribe(self.b_subjects(f), cb=self.b_cb, pending_msgs_limit=1_000_000,
                                                       pending_bytes_limit=1 << 30)
            await self.nc.flush()
        return time.perf_counter() - t

    async def churn(self, rate, duration, pub_js):
        """Subscriptions come and go at `rate` changes/s: alternately add a new exact filter and
        drop the previous one. After a change is applied (when the node could send SUBACK), a probe
        message is published on the new topic; it must arrive."""
        self.update_lat, self.apply_lat = [], []
        self.probe_sent = self.probe_ok = 0
        dirty = {}  # partition -> list of change times waiting for an update
        k = 0
        added = []
        end = time.monotonic() + duration
        interval = 1.0 / rate
        updaters = {}

        async def updater(p):
            while dirty.get(p):
                waiting = dirty.pop(p)
                t = now_ns()
                await self.update_filters(p)
                done = now_ns()
                self.update_lat.append((done - t) / 1e6)
                for (t0, probe_topic) in waiting:
                    self.apply_lat.append((done - t0) / 1e6)
                    # probe only a filter that is still subscribed (an add applied late may be gone again)
                    if probe_topic and probe_topic in added:
                        asyncio.ensure_future(self.send_probe(probe_topic, pub_js))
            updaters.pop(p, None)

        next_t = time.monotonic()
        while time.monotonic() < end:
            k += 1
            t0 = now_ns()
            if k % 2 == 1 or len(added) < 500:
                f = f"dev/n{self.n}-new{k}/cmd"
                added.append(f)
                probe = f
                self.matcher.add(f)
            else:
                f = added.pop(0)
                probe = None
            p, s = filter_subjects(f, self.P)
            if self.mode == "A":
                full = f"m.{p}.{s}"
                if probe:
                    self.pfilters[p].append(full)
                else:
                    self.pfilters[p].remove(full)
                dirty.setdefault(p, []).append((t0, probe))
                if p not in updaters:
                    updaters[p] = asyncio.ensure_future(updater(p))
            elif self.mode == "B":
                if probe:
                    self.subs[f] = await self.nc.subscribe(self.b_subjects(f), cb=self.b_cb)
                    await self.nc.flush()
                    self.apply_lat.append((now_ns() - t0) / 1e6)
                    asyncio.ensure_future(self.send_probe(f, pub_js))
                else:
                    await self.subs.pop(f).unsubscribe()
            else:  # C: only the local tree changes
                self.apply_lat.append((now_ns() - t0) / 1e6)
                if probe:
                    asyncio.ensure_future(self.send_probe(f, pub_js))
            next_t += interval
            d = next_t - time.monotonic()
            if d > 0:
                await asyncio.sleep(d)
            elif k % 50 == 0:
                await asyncio.sleep(0)
        achieved = k / (time.monotonic() - (end - duration))
        for u in list(updaters.values()):
            await u
        await asyncio.sleep(2.0)
        return {"changes": k, "achieved_per_s": achieved, "updates": len(self.update_lat),
                "update_ms": [pct(self.update_lat, 50), pct(self.update_lat, 99)],
                "apply_ms": [pct(self.apply_lat, 50), pct(self.apply_lat, 99)],
                "probes_sent": self.probe_sent, "probes_arrived": self.probe_ok,
                "update_errors": self.update_errors}

    async def send_probe(self, topic, pub_js):
        self.probe_sent += 1
        key = (900 + self.n, self.probe_sent)
        self.pending_probes[key] = True
        await pub_js.publish(subject(topic, self.P), f"{key[0]}|{key[1]}|{now_ns()}".encode(), timeout=5)

    def report(self):
        lat = [a[2] / 1e6 for a in self.arrivals.values()]
        return {"keys": {k: (a[0], a[1]) for k, a in self.arrivals.items()}, "lat": lat,
                "recreated": self.recreated, "backfilled": self.backfilled}


def node_proc(n, mode, P, inq, outq):
    async def run():
        node = Node(n, mode, P)
        setup = await node.start()
        outq.put(("ready", setup))
        pub_nc = await nats.connect(URLS[n])
        pub_js = pub_nc.jetstream()
        loop = asyncio.get_running_loop()
        while True:
            cmd = await loop.run_in_executor(None, inq.get)
            if cmd[0] == "reset":
                node.reset()
                outq.put(("ok",))
            elif cmd[0] == "report":
                outq.put(("report", node.report()))
            elif cmd[0] == "churn":
                outq.put(("churn", await node.churn(cmd[1], cmd[2], pub_js)))
            elif cmd[0] == "quit":
                outq.put(("bye",))
                return

    asyncio.run(run())


class Cluster:
    def __init__(self, mode, P):
        ctx = mp.get_context("spawn")
        self.q = [(ctx.Queue(), ctx.Queue()) for _ in range(NODES)]
        self.procs = [ctx.Process(target=node_proc, args=(n, mode, P, *self.q[n]), daemon=True) for n in range(NODES)]
        for p in self.procs:
            p.start()

    def ask(self, cmd, timeout=600):
        for i, o in self.q:
            i.put(cmd)
        return [o.get(timeout=timeout) for _, o in self.q]

    def ready(self):
        return [o.get(timeout=600)[1] for _, o in self.q]


# ---------------------------------------------------------------- publishing -------
class Publisher:
    def __init__(self, P, pid, servers=(0, 1, 2)):
        self.P, self.pid, self.servers = P, pid, servers
        self.seq = 0
        self.acked = {}  # key -> (dest node, ack time ns)
        self.ack_lat = []
        self.failed = 0
        self.rnd = random.Random(pid)

    async def connect(self):
        self.ncs = [await nats.connect(URLS[s]) for s in self.servers]
        self.jss = [nc.jetstream() for nc in self.ncs]

    async def one(self, timeout=5.0):
        self.seq += 1
        seq = self.seq
        dest = self.rnd.randrange(NODES)
        topic = topic_for(dest, self.rnd)
        js = self.jss[seq % len(self.jss)]
        t0 = now_ns()
        try:
            await js.publish(subject(topic, self.P), f"{self.pid}|{seq}|{t0}".encode().ljust(100, b" "),
                             timeout=timeout, headers={"Nats-Msg-Id": f"{self.pid}-{seq}"})
        except Exception:
            self.failed += 1
            return
        t1 = now_ns()
        self.acked[(self.pid, seq)] = (dest, t1)
        self.ack_lat.append((t1 - t0) / 1e6)

    async def paced(self, rate, duration):
        interval = 1.0 / rate
        tasks = set()
        start = time.monotonic()
        nxt = start
        while time.monotonic() - start < duration:
            t = asyncio.ensure_future(self.one())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            nxt += interval
            d = nxt - time.monotonic()
            if d > 0:
                await asyncio.sleep(d)
        if tasks:
            await asyncio.wait(tasks)

    async def windowed(self, window, duration):
        start = time.monotonic()

        async def worker():
            while time.monotonic() - start < duration:
                await self.one()

        await asyncio.gather(*[worker() for _ in range(window)])
        return time.monotonic() - start


def check(pubs, reports, mode):
    """Every acknowledged message arrived once at the node that subscribes to it?"""
    missing = dups = extra = 0
    last_arrival = 0
    arrived = {}
    for n, rep in enumerate(reports):
        keys = rep["keys"]
        for pub in pubs:
            for key, (dest, _) in pub.acked.items():
                if dest != n:
                    continue
                a = keys.get(key)
                if not a:
                    missing += 1
                else:
                    dups += a[0] - 1
                    last_arrival = max(last_arrival, a[1])
                    arrived[key] = a[1]
        want = {k for pub in pubs for k, (d, _) in pub.acked.items() if d == n}
        extra += sum(1 for k in keys if k not in want)
    check.arrived = arrived
    return missing, dups, extra, last_arrival


# ---------------------------------------------------------------- scenarios --------
async def scen_filters(args):
    """Cost of filter_subjects on one consumer: create and update latency by filter count."""
    nc = await nats.connect(URLS[0])
    pids = server_pids(args.piddir)
    await setup_streams(nc, 1, False)
    print(f"## filters (one consumer, ordered-style push, R1 memory; load {load()})")
    print("| filters | create ms | update ms (median of 7) | recreated by update? | RSS delta MiB (3 servers) |")
    print("|---|---|---|---|---|")
    for n in [10, 100, 250, 500, 1000, 2000, 4000]:
        rss0 = sum(rss_mib(p) for p in pids)
        fl = [f"m.0.dev.d{i}.cmd.$" for i in range(n)]
        name = f"f{n}"
        cfg = {"name": name, "filter_subjects": fl, "ack_policy": "none", "mem_storage": True, "num_replicas": 1,
               "inactive_threshold": 60 * 10**9, "deliver_subject": f"_x.{name}", "deliver_policy": "new"}
        t = time.perf_counter()
        r = await jsreq(nc, f"$JS.API.CONSUMER.CREATE.MQ0.{name}", {"stream_name": "MQ0", "config": cfg}, timeout=60)
        c = (time.perf_counter() - t) * 1e3
        if "error" in r:
            print(f"| {n} | error {r['error']} |")
            continue
        created = r.get("created")
        ups = []
        for k in range(7):
            cfg["filter_subjects"] = fl + [f"m.0.new.n{k}.$"]
            t = time.perf_counter()
            r2 = await jsreq(nc, f"$JS.API.CONSUMER.CREATE.MQ0.{name}",
                             {"stream_name": "MQ0", "action": "update", "config": cfg}, timeout=60)
            ups.append((time.perf_counter() - t) * 1e3)
        rss1 = sum(rss_mib(p) for p in pids)
        print(f"| {n} | {c:.1f} | {statistics.median(ups):.1f} (max {max(ups):.1f}) | "
              f"{'yes' if r2.get('created') != created else 'no'} | {rss1 - rss0:+.1f} |")
    # overlapping filters
    r = await jsreq(nc, "$JS.API.CONSUMER.CREATE.MQ0.ov", {"stream_name": "MQ0", "config": {
        "name": "ov", "filter_subjects": ["m.0.a.>", "m.0.a.b.$"], "ack_policy": "none", "mem_storage": True,
        "num_replicas": 1, "deliver_subject": "_x.ov"}})
    print(f"\nsubsumed filters (`m.0.a.>` + `m.0.a.b.$`): {r.get('error', {}).get('description', 'accepted')}")
    r = await jsreq(nc, "$JS.API.CONSUMER.CREATE.MQ0.ov2", {"stream_name": "MQ0", "config": {
        "name": "ov2", "filter_subjects": ["m.0.a.*.c.$", "m.0.a.b.*.$"], "ack_policy": "none", "mem_storage": True,
        "num_replicas": 1, "deliver_subject": "_x.ov2"}})
    print(f"partly overlapping filters (`m.0.a.*.c.$` + `m.0.a.b.*.$`): {r.get('error', {}).get('description', 'accepted')}")
    await nc.close()


async def scen_deliver(args):
    P, mode = args.partitions, args.mode
    pids = server_pids(args.piddir)
    nc = await nats.connect(URLS[0])
    rss0 = [rss_mib(p) for p in pids]
    await setup_streams(nc, P, mode == "B")
    await asyncio.sleep(1.0)
    rss1 = [rss_mib(p) for p in pids]
    cl = Cluster(mode, P)
    setup = cl.ready()
    await asyncio.sleep(2.0)
    rss2 = [rss_mib(p) for p in pids]
    jsz = await jsreq(nc, "$JS.API.INFO")
    out = {"mode": mode, "P": P, "setup_s": setup, "rss_empty": rss0, "rss_streams": rss1, "rss_filters": rss2,
           "consumers": jsz.get("consumers"), "streams": jsz.get("streams")}
    print(f"## mode {mode}, P={P}  (load {load()})")
    print(f"streams {out['streams']}, consumers {out['consumers']}; node setup s {['%.2f' % s for s in setup]}")
    print("RSS MiB per server: no streams " + " ".join(f"{x:.0f}" for x in rss0)
          + " | streams " + " ".join(f"{x:.0f}" for x in rss1)
          + " | + 3x1,000 filters " + " ".join(f"{x:.0f}" for x in rss2))

    pubid = 1

    async def phase(name, fn, wait=3.0):
        nonlocal pubid
        cl.ask(("reset",))
        pub = Publisher(P, pubid)
        pubid += 1
        await pub.connect()
        cpu0 = [cpu_s(p) for p in pids]
        ncpu0 = [cpu_s(p.pid) for p in cl.procs]
        t0 = time.monotonic()
        res = await fn(pub)
        el = time.monotonic() - t0
        cpu1 = [cpu_s(p) for p in pids]
        phase.node_cpu = sum(cpu_s(p.pid) for p in cl.procs) - sum(ncpu0)
        await asyncio.sleep(wait)
        reps = [r[1] for r in cl.ask(("report",))]
        missing, dups, extra, last = check([pub], reps, mode)
        lat = [x for r in reps for x in r["lat"]]
        for c in pub.ncs:
            await c.close()
        return pub, reps, lat, missing, dups, extra, last, el, res, [b - a for a, b in zip(cpu0, cpu1)]

    phases = args.phases.split(",")
    # 1. latency at a low paced rate
    if "lat" in phases:
        pub, reps, lat, missing, dups, extra, _, el, _, cpu = await phase("lat", lambda p: p.paced(args.rate, args.seconds))
        out["latency"] = {"ack": [pct(pub.ack_lat, 50), pct(pub.ack_lat, 99)], "e2e": [pct(lat, 50), pct(lat, 99)],
                          "n": len(pub.acked), "missing": missing, "dups": dups}
        print(f"latency at {args.rate}/s: publish->ack {fmt_ms(pub.ack_lat)}; publish->arrival on the subscribing "
              f"node {fmt_ms(lat)}; missing {missing} dups {dups} extra {extra} (load {load()})")

    # 1b. cost per message at a fixed rate: CPU of the NATS servers and of the three node processes
    if "cost" in phases:
        v0 = [varz_out(i) for i in range(3)]
        pub, reps, lat, missing, dups, extra, last, el, _, cpu = await phase(
            "cost", lambda p: p.paced(args.cost_rate, args.seconds))
        n = len(pub.acked)
        v1 = [varz_out(i) for i in range(3)]
        out_msgs = sum(b[0] - a[0] for a, b in zip(v0, v1)) / max(n, 1)
        out_bytes = sum(b[1] - a[1] for a, b in zip(v0, v1)) / max(n, 1)
        print(f"NATS messages sent per published message (all servers, clients and routes, incl. acks and "
              f"Raft): {out_msgs:.1f}, {out_bytes:.0f} bytes")
        out["cost_varz"] = [out_msgs, out_bytes]
        out["cost"] = {"rate": n / el, "nats_us": sum(cpu) / max(n, 1) * 1e6, "node_us": phase.node_cpu / max(n, 1) * 1e6,
                       "e2e": [pct(lat, 50), pct(lat, 99)], "missing": missing}
        print(f"cost at {args.cost_rate}/s ({n / el:.0f}/s achieved): NATS CPU {sum(cpu) / max(n, 1) * 1e6:.0f} us/msg "
              f"(3 servers), node processes {phase.node_cpu / max(n, 1) * 1e6:.0f} us/msg; arrival {fmt_ms(lat)}; "
              f"missing {missing} (load {load()})")

    # 2. throughput, QoS 1 with a window of acks in flight, 3 publisher connections (one per server)
    if "tput" in phases:
        pub, reps, lat, missing, dups, extra, last, el, el2, cpu = await phase(
            "tput", lambda p: p.windowed(args.window, args.seconds), wait=5.0)
        acked = len(pub.acked)
        out["throughput"] = {"acked_per_s": acked / el2, "e2e": [pct(lat, 50), pct(lat, 99)], "missing": missing,
                             "dups": dups, "server_cpu_s": cpu, "cpu_us_per_msg": sum(cpu) / max(acked, 1) * 1e6}
        print(f"throughput, window {args.window}: {acked / el2:.0f} acked msg/s ({acked} in {el2:.1f} s), arrival "
              f"{fmt_ms(lat)}; missing {missing} dups {dups}; NATS CPU {sum(cpu):.1f} s = "
              f"{sum(cpu) / max(acked, 1) * 1e6:.0f} us/msg (load {load()})")

    # 3. churn of subscriptions while messages flow: gaps/dups on the steady filters, new filters served?
    if "churn" in phases:
        async def churn_fn(p):
            task = asyncio.ensure_future(p.paced(args.rate, args.churn_seconds))
            loop = asyncio.get_running_loop()
            res = await loop.run_in_executor(None, lambda: cl.ask(("churn", args.churn_rate, args.churn_seconds)))
            await task
            return [r[1] for r in res]

        pub, reps, lat, missing, dups, extra, last, el, churn, cpu = await phase("churn", churn_fn)
        out["churn"] = {"nodes": churn, "missing": missing, "dups": dups, "e2e": [pct(lat, 50), pct(lat, 99)],
                        "server_cpu_s": cpu, "elapsed": el}
        print(f"churn {args.churn_rate} changes/s per node for {args.churn_seconds} s with {args.rate} msg/s flowing "
              f"(load {load()}):")
        for n, c in enumerate(churn):
            print(f"  node {n + 1}: {c['changes']} changes, {c['achieved_per_s']:.0f}/s achieved, {c['updates']} consumer "
                  f"updates (update p50 {c['update_ms'][0]:.1f} p99 {c['update_ms'][1]:.1f} ms), change->applied p50 "
                  f"{c['apply_ms'][0]:.1f} p99 {c['apply_ms'][1]:.1f} ms, post-SUBACK probes {c['probes_arrived']}/"
                  f"{c['probes_sent']}")
        print(f"  steady traffic during churn: arrival {fmt_ms(lat)}; missing {missing} dups {dups}; NATS CPU "
              f"{sum(cpu):.1f} s in {el:.1f} s")

    # 4. flap: SIGSTOP (or kill -9 and restart) one server for a few seconds while messages flow; publishers on the other two
    if "flap" in phases:
        async def flap_fn(p):
            p.servers = (0, 1)
            p.ncs, p.jss = p.ncs[:2], p.jss[:2]
            task = asyncio.ensure_future(p.paced(args.rate, args.flap_pause + 8))
            await asyncio.sleep(3)
            if args.flap_kind == "stop":
                os.kill(pids[2], signal.SIGSTOP)
                await asyncio.sleep(args.flap_pause)
                os.kill(pids[2], signal.SIGCONT)
            else:  # kill -9, then start it again with the same configuration and data
                os.kill(pids[2], signal.SIGKILL)
                await asyncio.sleep(args.flap_pause)
                log = open(os.path.join(args.piddir, "n3.log"), "ab")
                proc = subprocess.Popen(["nats-server", "-c", os.path.join(args.piddir, "n3.conf")], stdout=log,
                                        stderr=log, start_new_session=True)
                with open(os.path.join(args.piddir, "n3.pid"), "w") as f:
                    f.write(f"{proc.pid}\n")
                pids[2] = proc.pid
            cont = now_ns()
            await task
            return cont

        pub, reps, lat, missing, dups, extra, last, el, cont, cpu = await phase("flap", flap_fn, wait=15.0)
        before = [check.arrived.get(k, 0) for k, (d, t1) in pub.acked.items() if t1 < cont]
        catch_up = (max(before) - cont) / 1e9 if before else float("nan")
        rec = [r["recreated"] for r in reps]
        bf = [r["backfilled"] for r in reps]
        out["flap"] = {"acked": len(pub.acked), "failed": pub.failed, "missing": missing, "dups": dups,
                       "catch_up_s": catch_up, "recreated": rec, "backfilled": bf,
                       "e2e": [pct(lat, 50), pct(lat, 99), max(lat) if lat else 0]}
        what = "SIGSTOP" if args.flap_kind == "stop" else "kill -9, restart after"
        print(f"flap ({what} n3 for {args.flap_pause} s, {args.rate} msg/s): acked {len(pub.acked)}, publish failures "
              f"{pub.failed}; missing {missing}, dups {dups}; everything acked before SIGCONT arrived {catch_up:.2f} s after SIGCONT/restart; "
              f"consumers recreated per node {rec}, backfilled {bf}; arrival p50 {pct(lat, 50):.1f} p99 "
              f"{pct(lat, 99):.1f} max {max(lat) if lat else 0:.0f} ms (load {load()})")
    out["rss_end"] = [rss_mib(p) for p in pids]
    cl.ask(("quit",))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(out) + "\n")
    await nc.close()


async def scen_kv(args):
    nc = await nats.connect(URLS[1])
    js = nc.jetstream()
    try:
        kv = await js.create_key_value(bucket="clients", history=1, replicas=3, storage="file")
    except Exception:
        kv = await js.key_value("clients")
    create_lat, update_lat = [], []
    revs = {}
    fails = 0

    async def create(i):
        nonlocal fails
        t = now_ns()
        try:
            revs[i] = await kv.create(f"c{i}", b"node=n2;epoch=1")
            create_lat.append((now_ns() - t) / 1e6)
        except Exception:
            fails += 1

    async def update(i):
        nonlocal fails
        t = now_ns()
        try:
            await kv.update(f"c{i}", b"node=n3;epoch=2", last=revs[i])
            update_lat.append((now_ns() - t) / 1e6)
        except Exception:
            fails += 1

    async def paced(fn, rate, n):
        tasks = []
        start = time.monotonic()
        for i in range(n):
            tasks.append(asyncio.ensure_future(fn(i)))
            d = start + (i + 1) / rate - time.monotonic()
            if d > 0:
                await asyncio.sleep(d)
        await asyncio.gather(*tasks)
        return time.monotonic() - start

    n = args.rate_kv * args.seconds
    e1 = await paced(create, args.rate_kv, n)
    e2 = await paced(update, args.rate_kv, n)
    # a stale revision must be refused (fencing)
    stale_refused = 0
    for i in range(100):
        try:
            await kv.update(f"c{i}", b"node=n1;epoch=3", last=revs[i])
        except Exception:
            stale_refused += 1
    print(f"## KV client-id registry (R3 file bucket, client on n2; load {load()})")
    print(f"create-if-absent at {args.rate_kv}/s: {fmt_ms(create_lat)}, {n / e1:.0f}/s achieved")
    print(f"update with revision at {args.rate_kv}/s: {fmt_ms(update_lat)}, {n / e2:.0f}/s achieved; failures {fails}; "
          f"stale-revision updates refused {stale_refused}/100")
    await nc.close()


async def scen_share(args):
    """Consumers for share groups: one durable R3 pull consumer per group and partition."""
    P, G = args.partitions, args.groups
    pids = server_pids(args.piddir)
    nc = await nats.connect(URLS[0])
    await setup_streams(nc, P, False)
    await asyncio.sleep(2)
    rss0 = [rss_mib(p) for p in pids]
    b0 = [cpu_s(p) for p in pids]
    await asyncio.sleep(10)
    idle0 = sum(cpu_s(p) for p in pids) - sum(b0)
    t = time.perf_counter()
    sem = asyncio.Semaphore(16)

    async def mk(g, p):
        async with sem:
            cfg = {"durable_name": f"sg{g}", "name": f"sg{g}", "filter_subject": f"m.{p}.grp.g{g}.>",
                   "ack_policy": "explicit", "num_replicas": args.share_replicas,
 "deliver_policy": "new", "max_ack_pending": 1000,
                   "ack_wait": 30 * 10**9}
            for _ in range(20):
                try:
                    r = await jsreq(nc, f"$JS.API.CONSUMER.CREATE.MQ{p}.sg{g}", {"stream_name": f"MQ{p}", "config": cfg},
                                    timeout=30)
                    if "error" not in r:
                        return
                except Exception:
                    pass
                await asyncio.sleep(0.5)

    await asyncio.gather(*[mk(g, p) for g in range(G) for p in range(P)])
    el = time.perf_counter() - t
    await asyncio.sleep(5)
    rss1 = [rss_mib(p) for p in pids]
    c0 = [cpu_s(p) for p in pids]
    await asyncio.sleep(10)
    c1 = [cpu_s(p) for p in pids]
    jsz = await jsreq(nc, "$JS.API.INFO")
    print(f"## share groups: {G} groups x P={P} partitions, consumers R{args.share_replicas} (load {load()})")
    print(f"idle NATS CPU before: {idle0 / 10 * 100:.0f}% of one core")
    print(f"durable R{args.share_replicas} consumers: {jsz.get('consumers')} (streams {jsz.get('streams')}), created in {el:.1f} s; "
          f"RSS MiB per server {' '.join(f'{a:.0f}->{b:.0f}' for a, b in zip(rss0, rss1))}; "
          f"idle NATS CPU {sum(b - a for a, b in zip(c0, c1)) / 10 * 100:.0f}% of one core")
    await nc.close()


def summary(path):
    """Medians per mode over the JSON lines that deliver --json wrote."""
    rows = [json.loads(l) for l in open(path) if l.strip()]
    med = statistics.median
    print("| mode | runs | ack p50/p99 ms | arrival p50/p99 ms | NATS CPU us/msg | node CPU us/msg | QoS 1 acked msg/s "
          "(window) | change->applied p50/p99 ms | post-SUBACK probes | flap: missing / dups / catch-up s | "
          "consumers | RSS MiB/server with filters |")
    print("|" + "---|" * 12)
    for m in "ABC":
        rs = [r for r in rows if r["mode"] == m]
        if not rs:
            continue
        g = lambda f: med([f(r) for r in rs])
        ch = lambda r, i: med([n["apply_ms"][i] for n in r["churn"]["nodes"]])
        probes = sum(n["probes_arrived"] for r in rs for n in r["churn"]["nodes"])
        sent = sum(n["probes_sent"] for r in rs for n in r["churn"]["nodes"])
        print(f"| {m} | {len(rs)} | {g(lambda r: r['latency']['ack'][0]):.2f} / {g(lambda r: r['latency']['ack'][1]):.2f} "
              f"| {g(lambda r: r['latency']['e2e'][0]):.2f} / {g(lambda r: r['latency']['e2e'][1]):.2f} "
              f"| {g(lambda r: r['cost']['nats_us']):.0f} | {g(lambda r: r['cost']['node_us']):.0f} "
              f"| {g(lambda r: r['throughput']['acked_per_s']):.0f} "
              f"| {g(lambda r: ch(r, 0)):.1f} / {g(lambda r: ch(r, 1)):.1f} | {probes}/{sent} "
              f"| {'+'.join(str(r['flap']['missing']) for r in rs)} / {'+'.join(str(r['flap']['dups']) for r in rs)} / "
              f"{g(lambda r: r['flap']['catch_up_s']):.1f} | {rs[0]['consumers']} "
              f"| {g(lambda r: statistics.mean(r['rss_filters'])):.0f} (streams only {g(lambda r: statistics.mean(r['rss_streams'])):.0f}) |")


async def scen_creates(args):
    """How fast the cluster creates short-lived consumers (a replay per reconnecting session and
    partition would need one each): ephemeral, R1, in memory, 10 filters, from 3 clients."""
    P = args.partitions
    ncs = [await nats.connect(u) for u in URLS]
    await setup_streams(ncs[0], P, False)
    lat = []
    sem = asyncio.Semaphore(args.concurrency)
    fails = 0

    async def one(i):
        nonlocal fails
        nc = ncs[i % 3]
        p = i % P
        name = f"rp{i}"
        cfg = {"name": name, "ack_policy": "none", "mem_storage": True, "num_replicas": 1,
               "inactive_threshold": 5 * 10**9, "deliver_policy": "all",
               "filter_subjects": [f"m.{p}.dev.s{i}-{k}.cmd.$" for k in range(10)]}
        async with sem:
            t = now_ns()
            try:
                r = await jsreq(nc, f"$JS.API.CONSUMER.CREATE.MQ{p}.{name}", {"stream_name": f"MQ{p}", "config": cfg},
                                timeout=30)
                if "error" in r:
                    fails += 1
                    return
            except Exception:
                fails += 1
                return
            lat.append((now_ns() - t) / 1e6)

    t0 = time.monotonic()
    await asyncio.gather(*[one(i) for i in range(args.count)])
    el = time.monotonic() - t0
    print(f"## short-lived consumers: {args.count} created, {args.concurrency} requests in flight, P={P} "
          f"(load {load()})")
    print(f"{len(lat) / el:.0f} creates/s; create latency {fmt_ms(lat)}; failures {fails}")
    for nc in ncs:
        await nc.close()


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "summary":
        return summary(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["filters", "deliver", "kv", "share", "creates"])
    ap.add_argument("--mode", choices=["A", "B", "C"], default="A")
    ap.add_argument("--partitions", "-P", type=int, default=16)
    ap.add_argument("--rate", type=int, default=300, help="paced publish rate, msg/s (latency, churn, flap)")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--window", type=int, default=256, help="QoS 1 publishes in flight (throughput)")
    ap.add_argument("--churn-rate", type=int, default=1000, help="subscription changes/s per node")
    ap.add_argument("--churn-seconds", type=int, default=10)
    ap.add_argument("--flap-pause", type=float, default=5.0)
    ap.add_argument("--flap-kind", choices=["stop", "restart"], default="stop",
                    help="flap: SIGSTOP/SIGCONT the server, or kill -9 and start it again")
    ap.add_argument("--rate-kv", type=int, default=1000)
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--count", type=int, default=2000, help="creates: consumers to create")
    ap.add_argument("--concurrency", type=int, default=64, help="creates: requests in flight")
    ap.add_argument("--piddir", default=os.environ.get("PROBE_DIR", "/tmp/makelaar-cluster-probe"))
    ap.add_argument("--cost-rate", type=int, default=1500, help="paced rate for the per-message cost phase")
    ap.add_argument("--share-replicas", type=int, default=3)
    ap.add_argument("--phases", default="lat,cost,tput,churn,flap", help="deliver: which phases, comma-separated")
    ap.add_argument("--json", help="append the figures as one JSON line to this file")
    args = ap.parse_args()
    fn = {"filters": scen_filters, "deliver": scen_deliver, "kv": scen_kv, "share": scen_share, "creates": scen_creates}[args.scenario]
    asyncio.run(fn(args))


if __name__ == "__main__":
    main()
