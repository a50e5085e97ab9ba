"""The crash test of issue 5: nothing acknowledged is ever lost, across restarts and kill -9.

It runs `makelaar serve --data-dir DIR --listen mqtt://127.0.0.1:PORT` itself, with the
default `durability = "sync"`, and for MAKELAAR_CRASH_CYCLES cycles (default 20, under a
minute) lets four publishers publish numbered messages to two topics each — QoS 1 and 2,
MQTT 3.1.1 and 5.0, persistent ones that re-send what was not acknowledged and clean ones
that give it up, every third message retained — to four persistent subscribers: two
connected throughout, two offline but for a short visit now and then. At a random moment
while messages flow the broker is killed with SIGKILL and started again on the same
directory. Each restart first checks the retained messages; after the last cycle everyone
reconnects and drains, and the test asserts:

- every message acknowledged to its publisher (PUBACK/PUBREC read before the kill, or after
  a re-send) reached every subscriber whose filter matches — all subscribed before the first
  publish [MQTT-4.3.2-2] [MQTT-4.3.3-8] (5.0) — at the QoS asked for [MQTT-3.8.4-8];
- QoS 2 exactly once: a second PUBLISH of a message counts only as the re-send, with DUP, of
  the subscriber's unfinished exchange (PUBREC sent, PUBREL not yet received) [MQTT-4.3.3-6]
  [MQTT-4.3.3-10] [MQTT-4.3.3-12] (5.0);
- order per publisher and topic: first receipts in sequence, QoS 1 redeliveries aside
  [MQTT-4.6.0-6];
- payloads intact; persistent sessions present after every restart [MQTT-3.2.2-2];
- retained messages: after each restart, each topic's is the last one acknowledged or one sent
  after it (unacknowledged but kept), intact; in the end exactly the last acknowledged for the
  publishers that re-send;
- after a clean stop, `makelaar store inspect --json` shows the sessions with nothing queued.

`pytest -s` prints the figures; MAKELAAR_CRASH_SEED=N replays a run's random choices (the
broker's timing still varies). Makelaar only: skipped against Mosquitto.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest

from brokers import BROKER_KIND, find_makelaar
from crash_clients import Publisher, Subscriber, parse_payload, pump, retained_now
from durable_broker import Server

pytestmark = pytest.mark.skipif(
    BROKER_KIND != "makelaar",
    reason="the crash test kills and restarts makelaar serve on its data directory")

CYCLES = int(os.environ.get("MAKELAAR_CRASH_CYCLES", "20"))
SEED = int(os.environ.get("MAKELAAR_CRASH_SEED", str(random.randrange(1 << 32))))
CONNECT_SECONDS = 20  # a restart after kill -9 checks the store file first
DRAIN_SECONDS = 60


@pytest.fixture(autouse=True)
def _watchdog():
    """Replaces the suite's 60 s watchdog: this test runs for a minute or more by design."""
    limit = 120 + 10 * CYCLES

    def on_alarm(signum, frame):
        raise TimeoutError(f"crash test still running after {limit}s (watchdog)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def clients():
    def topics(p):
        return [f"crash/{p}/a", f"crash/{p}/b"]

    pubs = [
        Publisher("p1", 4, True, 1, topics("p1")),
        Publisher("p2", 5, False, 1, topics("p2")),
        Publisher("p3", 5, True, 2, topics("p3")),
        Publisher("p4", 4, False, 2, topics("p4")),
    ]
    qos = {p.name: p.qos for p in pubs}
    online = [
        Subscriber("s-online-5", 5, 2, ["crash/#"], qos),
        Subscriber("s-online-4", 4, 1, ["crash/+/a", "crash/+/b"], qos),
    ]
    offline = [
        Subscriber("s-offline-5", 5, 2, ["crash/+/a"], qos),
        Subscriber("s-offline-4", 4, 2, ["crash/#"], qos),
    ]
    return pubs, online, offline


def missing(sub, pubs):
    return [(p.name, t, s) for p in pubs for s, t in p.acked.items()
            if sub.wants(t) and (p.name, t, s) not in sub.received]


def check_retained(server, pubs, errors, when):
    must = [t for p in pubs for t in p.topics if p.retained_bounds(t)[0] is not None]
    got = retained_now(server.port, "crash/#", must)
    for p in pubs:
        for topic in p.topics:
            lo, hi = p.retained_bounds(topic)
            data = got.get(topic)
            key = None if data is None else parse_payload(data)
            if data is None:
                if lo is not None:  # [MQTT-3.3.1-5] kept, and so found by a new subscriber
                    errors.append(f"{when}: retained {topic} seq {lo} (acknowledged) is gone")
            elif key is None or key[:2] != (p.name, topic):
                errors.append(f"{when}: retained {topic} is damaged: {data[:60]!r}")
            elif not (lo or 0) <= key[2] <= (hi or 0) or not p.sent[key[2]][1]:
                errors.append(f"{when}: retained {topic} is seq {key[2]}, expected from "
                              f"{lo} (last acknowledged) to {hi} (last sent)")


def test_kill_9_loses_nothing_acknowledged(tmp_path):
    rng = random.Random(SEED)
    server = Server(tmp_path, limits={"max_queued_messages": 1_000_000})
    pubs, online, offline = clients()
    subs = online + offline
    everyone = pubs + subs
    errors: list[str] = []
    started = time.monotonic()

    def connect(cs):
        for c in cs:
            c.connect(server.port, time.monotonic() + CONNECT_SECONDS)

    try:
        server.start()
        connect(subs)
        for s in subs:
            s.subscribe()
        for s in offline:
            s.disconnect()
        for cycle in range(CYCLES):
            if cycle:
                server.start()
                check_retained(server, pubs, errors, f"restart {cycle}")
            visiting = [s for i, s in enumerate(offline) if (cycle + i) % 3 == 0]
            connect(online + visiting + pubs)
            run = rng.uniform(0.05, 1.5)
            visit = rng.uniform(0, run)
            pump(everyone, visit)
            for s in visiting:  # offline again before the kill, with its backlog stored
                s.disconnect()
            if rng.random() < 0.5:
                pump(everyone, run - visit)
            else:
                # The kill lands among what a burst of acknowledgements sets off: PUBREL
                # after PUBREC, Done after PUBACK/PUBCOMP, the next messages sent.
                pump(everyone, max(0.0, run - visit - 0.03))
                for s in online:
                    s.hold_acks()
                pump(everyone, 0.03)
                for s in online:
                    s.release_acks()
                time.sleep(rng.uniform(0, 0.003))
            server.kill()
            for c in everyone:
                c.drain_dead()

        # The end: everyone back, publishers finish what they have in flight, all drain.
        server.start()
        check_retained(server, pubs, errors, "last restart")
        connect(subs + pubs)
        for p in pubs:
            p.publishing = False
        last_check = [0.0]

        def done():
            if time.monotonic() - last_check[0] < 0.5:
                return False
            last_check[0] = time.monotonic()
            return (not any(p.inflight for p in pubs if p.persistent)
                    and not any(s.unfinished for s in subs)
                    and not any(missing(s, pubs) for s in subs))

        drained = pump(everyone, DRAIN_SECONDS, until=done)
        pump(everyone, 0.5)  # anything more (a duplicate) arrives now or not at all
        check_retained(server, pubs, errors, "the end")
        for c in everyone:
            c.disconnect()
        assert server.stop() == 0, server.log_tail()
        inspected = subprocess.run(
            [find_makelaar(), "store", "inspect", "--data-dir", str(server.data), "--json"],
            capture_output=True, text=True, timeout=30)
    finally:
        server.kill()
    elapsed = time.monotonic() - started

    published = sum(len(p.sent) for p in pubs)
    acked = sum(len(p.acked) for p in pubs)
    qos2 = sum(len(p.acked) for p in pubs if p.qos == 2)
    delivered = sum(sum(s.received.values()) for s in subs)
    distinct = sum(len(s.received) for s in subs)
    figures = (
        f"{CYCLES} kill -9 cycles in {elapsed:.0f} s (seed {SEED}): {published} messages "
        f"published, {acked} acknowledged ({qos2} at QoS 2), "
        f"{sum(p.resent for p in pubs)} re-sent after a restart, "
        f"{sum(p.abandoned for p in pubs)} given up unacknowledged; {delivered} deliveries "
        f"({distinct} distinct) to {len(subs)} persistent subscribers, "
        f"{sum(s.redelivered for s in subs)} QoS 1 redeliveries, "
        f"{sum(s.resumed for s in subs)} QoS 2 exchanges resumed with DUP")
    print("\n" + figures)

    for c in everyone:
        errors += c.errors
    lost = {s.name: missing(s, pubs) for s in subs}
    lost = {k: v for k, v in lost.items() if v}
    assert not lost, (f"acknowledged but never delivered ({figures}): "
                      + "; ".join(f"{k}: {len(v)}, e.g. {v[:5]}" for k, v in lost.items())
                      + "\n" + server.log_tail())
    assert not errors, f"{len(errors)} violations ({figures}):\n" + "\n".join(errors[:30])
    assert drained, f"did not drain within {DRAIN_SECONDS} s ({figures})"

    assert inspected.returncode == 0, inspected.stderr
    store = json.loads(inspected.stdout)
    sessions = {s["client_id"]: s for s in store["sessions"]}
    durable = {c.name for c in everyone if c.persistent}
    assert set(sessions) == durable, store
    left = {k: (s["queued"], s["inbound_qos2"]) for k, s in sessions.items()
            if s["queued"] or s["inbound_qos2"]}
    assert not left, f"(queued, inbound QoS 2) left in the store after draining: {left}"
    assert store["retained"] == sum(len(p.topics) for p in pubs), store
