"""Clients for the crash test (test_durability.py): raw-socket publishers and persistent
subscribers that keep exact books across broker kills — which PUBLISH got its PUBACK/PUBREC,
which message each subscriber received, how often, in what order, and whether intact.

All of them are driven from one thread (`pump`), so the books need no locks and "this PUBACK
was read before the kill" is exact. A message is identified by its payload (publisher, topic,
sequence number), which also carries filler derived from those, so damage is seen."""

from __future__ import annotations

import hashlib
import select
import time

import mqtt_raw as R

SESSION_EXPIRY = 3600  # persistent 5.0 sessions; 3.1.1 ones never expire
ERROR_REASON = 0x80  # reason codes from here on are failures (5.0)


def payload(pub: str, topic: str, seq: int) -> bytes:
    head = f"{pub}|{topic}|{seq}|".encode()
    size = 8 + (seq * 37) % 300
    filler = hashlib.blake2b(head, digest_size=64).digest() * (size // 64 + 1)
    return head + filler[:size]


def parse_payload(data: bytes):
    """(publisher, topic, seq), or None when the payload is not exactly what was sent."""
    try:
        pub, topic, seq, _ = data.split(b"|", 3)
        key = (pub.decode(), topic.decode(), int(seq))
    except ValueError:
        return None
    return key if payload(*key) == data else None


def matches(filt: str, topic: str) -> bool:
    f, t = filt.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


class Client:
    """One MQTT client identity whose connections come and go with the broker."""

    def __init__(self, name: str, version: int, persistent: bool):
        self.name, self.version, self.persistent = name, version, persistent
        self.raw: R.RawClient | None = None
        # Set while reading what a dead broker left behind: nothing can be sent, and a
        # failed send must not drop the acknowledgements still to be read.
        self.quiet = False
        self.connects = 0
        self.errors: list[str] = []

    @property
    def connected(self) -> bool:
        return self.raw is not None

    def connect(self, port: int, deadline: float):
        props = [(R.SESSION_EXPIRY_INTERVAL, SESSION_EXPIRY)] if (
            self.version == 5 and self.persistent) else None
        while True:
            try:
                raw = R.RawClient(port, version=self.version, timeout=5)
                ack = raw.connect(self.name, clean=not self.persistent, properties=props)
                break
            except (OSError, R.Closed, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert ack.reason == 0, f"{self.name}: CONNACK {ack!r}"
        # [MQTT-3.2.2-2] a persistent session survives the broker's restart (a kill -9
        # included); [MQTT-3.2.2-1] a clean one never has a session present.
        expected = self.persistent and self.connects > 0
        if ack.session_present != expected:
            self.errors.append(f"{self.name}: CONNACK session present {ack.session_present} "
                               f"on connect {self.connects + 1}, expected {expected}")
        self.connects += 1
        self.raw, self.quiet = raw, False
        self.on_connected()
        # What came in the same read as CONNACK (a resumed session's re-sends) is buffered
        # already: the socket will not show it as readable again.
        self.handle_buffered()

    def send(self, data: bytes):
        if self.raw is not None and not self.quiet and not self.raw.try_send(data):
            self.drop()

    def read(self, wait: float = 0.0):
        """Reads what the socket has (waiting up to `wait` for the first bytes) and handles
        every whole packet in it."""
        raw = self.raw
        try:
            ready, _, _ = select.select([raw.sock], [], [], wait)
            if ready:
                chunk = raw.sock.recv(1 << 16)
                if not chunk:
                    raise R.Closed("closed")
                raw.buf += chunk
        except (OSError, R.Closed):
            raw.eof = True
        self.handle_buffered()

    def handle_buffered(self):
        raw = self.raw
        while self.raw is raw:
            p = raw._try_parse()
            if p is None:
                break
            self.on_packet(p)
        if raw is not None and raw.eof and self.raw is raw:
            self.drop()

    def drain_dead(self):
        """After the broker died: handle whatever it wrote before, up to the close."""
        self.quiet = True
        deadline = time.monotonic() + 5  # the kernel closes a killed process's sockets
        while self.raw is not None and time.monotonic() < deadline:
            self.read(0.5)
        self.drop()

    def disconnect(self):
        self.send(R.disconnect(version=self.version))
        self.drop()

    def drop(self):
        if self.raw is not None:
            self.raw.close()
            self.raw = None

    def on_connected(self):
        pass

    def pump(self):
        pass


class Publisher(Client):
    """Publishes numbered messages round-robin over its topics, `window` at a time.

    A persistent publisher re-sends its unacknowledged PUBLISH (DUP, same packet id) and
    PUBREL after reconnecting [MQTT-4.4.0-1]; a clean one abandons them, so they may or may
    not arrive. Either way the books say exactly which were acknowledged."""

    def __init__(self, name, version, persistent, qos, topics, window=10, rate=300):
        super().__init__(name, version, persistent)
        self.qos, self.topics, self.window = qos, topics, window
        # Messages per second at most: enough for many in flight at every kill, few enough
        # that the subscribers' backlogs drain in seconds however many cycles run.
        self.rate, self.tokens, self.tick = rate, 0.0, time.monotonic()
        self.publishing = True
        self.next_seq, self.next_pid = 1, 1
        self.inflight: dict[int, list] = {}  # packet id -> [topic, seq, retain, released]
        self.sent: dict[int, tuple] = {}  # seq -> (topic, retain), first sends
        self.acked: dict[int, str] = {}  # seq -> topic, PUBACK/PUBREC received
        self.resent = self.abandoned = 0

    def _publish(self, pid, topic, seq, retain, dup=False):
        self.send(R.publish(topic, payload(self.name, topic, seq), self.qos, retain=retain,
                            dup=dup, packet_id=pid, version=self.version))

    def on_connected(self):
        if not self.persistent:
            self.abandoned += sum(1 for m in self.inflight.values() if not m[3])
            self.inflight.clear()
            return
        for pid, (topic, seq, retain, released) in list(self.inflight.items()):
            self.resent += 1
            if released:
                self.send(R.ack(R.PUBREL, pid, version=self.version))
            else:
                self._publish(pid, topic, seq, retain, dup=True)

    def pump(self):
        now = time.monotonic()
        self.tokens = min(self.window, self.tokens + (now - self.tick) * self.rate)
        self.tick = now
        while (self.connected and self.publishing and len(self.inflight) < self.window
               and self.tokens >= 1):
            self.tokens -= 1
            seq = self.next_seq
            self.next_seq += 1
            topic = self.topics[seq % len(self.topics)]
            retain = seq % 3 == 0
            while self.next_pid in self.inflight:
                self.next_pid = self.next_pid % 65535 + 1
            pid = self.next_pid
            self.next_pid = pid % 65535 + 1
            self.inflight[pid] = [topic, seq, retain, False]
            self.sent[seq] = (topic, retain)
            self._publish(pid, topic, seq, retain)

    def on_packet(self, p):
        m = self.inflight.get(p.packet_id)
        want = {1: R.PUBACK, 2: R.PUBREC}[self.qos]
        if p.type == want and m is not None and not m[3]:
            if p.reason is not None and p.reason >= ERROR_REASON:
                self.errors.append(f"{self.name}: message {m[1]} refused: {p!r}")
                del self.inflight[p.packet_id]
                return
            self.acked[m[1]] = m[0]
            if self.qos == 1:
                del self.inflight[p.packet_id]
            else:
                m[3] = True
                self.send(R.ack(R.PUBREL, p.packet_id, version=self.version))
        elif p.type == R.PUBCOMP and m is not None and m[3]:
            del self.inflight[p.packet_id]
        elif p.type in (R.PUBACK, R.PUBREC, R.PUBCOMP):
            self.errors.append(f"{self.name}: unexpected {p!r}")

    def retained_bounds(self, topic):
        """The seqs the topic's retained message may have: at least the last one
        acknowledged, at most the last one sent."""
        acked = [s for s, t in self.acked.items() if t == topic and self.sent[s][1]]
        sent = [s for s, (t, r) in self.sent.items() if t == topic and r]
        return (max(acked) if acked else None), (max(sent) if sent else None)


class Subscriber(Client):
    """A persistent subscriber that does the whole QoS 1/2 handshake and checks each
    delivery: intact, at the right QoS, in order per publisher and topic, and for QoS 2
    exactly once — a PUBLISH again with the packet id of an exchange it has not finished
    (PUBREC sent, no PUBREL yet) is the same delivery, anything else a duplicate."""

    def __init__(self, name, version, qos, filters, pub_qos):
        super().__init__(name, version, True)
        self.qos, self.filters, self.pub_qos = qos, filters, pub_qos
        self.unfinished: dict[int, tuple] = {}  # packet id -> message, inbound QoS 2
        self.received: dict[tuple, int] = {}  # message -> receipts
        self.last: dict[tuple, int] = {}  # (publisher, topic) -> highest seq so far
        self.redelivered = self.resumed = 0
        self.held: list[bytes] | None = None

    def subscribe(self):
        self.send(R.subscribe(1, [(f, self.qos) for f in self.filters], self.version))
        ack = self.raw.recv_type(R.SUBACK, timeout=10)
        assert ack.reasons == [self.qos] * len(self.filters), f"{self.name}: {ack!r}"

    def on_packet(self, p):
        if p.type == R.PUBREL:
            self.unfinished.pop(p.packet_id, None)
            self.send(R.ack(R.PUBCOMP, p.packet_id, version=self.version))
            return
        if p.type != R.PUBLISH:
            if p.type != R.PINGRESP:
                self.errors.append(f"{self.name}: unexpected {p!r}")
            return
        key = parse_payload(p.payload)
        if key is None or key[1] != p.topic:
            self.errors.append(f"{self.name}: damaged message on {p.topic}: {p.payload[:60]!r}")
        elif p.qos != min(self.qos, self.pub_qos[key[0]]):  # [MQTT-3.8.4-8]
            self.errors.append(f"{self.name}: {key} at QoS {p.qos}")
        elif p.qos == 2:
            self._exactly_once(p, key)
        else:
            self._count(key)
        ack = R.ack(R.PUBREC if p.qos == 2 else R.PUBACK, p.packet_id, version=self.version)
        if self.held is None:
            self.send(ack)
        else:
            self.held.append(ack)

    def hold_acks(self):
        """Answers PUBLISH later, all at once (`release_acks`): the broker then handles a burst
        of PUBACK/PUBREC in one go, and a kill right after lands among the writes they cause."""
        self.held = []

    def release_acks(self):
        held, self.held = self.held, None
        if held:
            self.send(b"".join(held))

    def _exactly_once(self, p, key):
        if p.packet_id in self.unfinished:
            # Re-sent before PUBREL reached us: DUP set [MQTT-3.3.1-1], same message.
            if self.unfinished[p.packet_id] != key or not p.dup:
                self.errors.append(f"{self.name}: packet id {p.packet_id} of unfinished "
                                   f"{self.unfinished[p.packet_id]} reused for {p!r}")
            self.resumed += 1
            return
        if key in self.received:
            # 5.0 [MQTT-4.3.3-6]: no PUBLISH again once PUBREL is sent; after our PUBCOMP
            # it is a new message [MQTT-4.3.3-12].
            self.errors.append(f"{self.name}: QoS 2 message {key} delivered twice: {p!r}")
        self.unfinished[p.packet_id] = key
        self._count(key)

    def _count(self, key):
        stream = key[:2]
        if key in self.received:
            self.redelivered += 1  # QoS 1: at least once, so again is allowed
        elif key[2] <= self.last.get(stream, 0):
            self.errors.append(f"{self.name}: {key} after seq {self.last[stream]} "
                               "(out of order, [MQTT-4.6.0-6])")
        self.last[stream] = max(key[2], self.last.get(stream, 0))
        self.received[key] = self.received.get(key, 0) + 1

    def wants(self, topic) -> bool:
        return any(matches(f, topic) for f in self.filters)


def pump(clients, seconds: float, until=None):
    """Runs every connected client for `seconds`, or until `until()` is true."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for c in clients:
            c.pump()
        live = {c.raw.sock: c for c in clients if c.connected}
        if not live:
            time.sleep(0.01)
        else:
            ready, _, _ = select.select(list(live), [], [], 0.01)
            for s in ready:
                c = live[s]
                if c.connected and c.raw.sock is s:
                    c.read()
        if until is not None and until():
            return True
    return False


def retained_now(port: int, filt: str, topics, timeout=5.0) -> dict:
    """The retained messages matching `filt`, from a fresh clean 5.0 client: it waits (up
    to `timeout`) for those of `topics`, then for a short quiet spell."""
    got = {}
    with R.RawClient(port, version=5, timeout=timeout) as c:
        c.connect("crash-retained-check", clean=True)
        c.send(R.subscribe(1, [(filt, 0)], 5))
        c.recv_type(R.SUBACK)
        deadline = time.monotonic() + timeout
        while set(got) < set(topics) and time.monotonic() < deadline:
            try:
                p = c.recv_packet(max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                break
            if p.type == R.PUBLISH and p.retain:  # [MQTT-3.3.1-8]
                got[p.topic] = p.payload
        # Anything else retained shows within a short quiet spell.
        try:
            while True:
                p = c.recv_packet(0.2)
                if p.type == R.PUBLISH and p.retain:
                    got[p.topic] = p.payload
        except (TimeoutError, R.Closed):
            pass
    return got
