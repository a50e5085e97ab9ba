"""$SYS/broker/... topics as Mosquitto publishes them, every sys_interval (1 s here)."""

import queue
import re
import time

import pytest

BROKER_CONFIG = {"sys_interval": 1}

TOPICS = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
]


class SysView:
    """Latest value of every $SYS topic seen by a subscriber of '$SYS/#'."""

    def __init__(self, client):
        self.c = client(version=4)
        self.c.subscribe("$SYS/#", qos=0)
        self.values = {}

    def _pump(self, timeout):
        try:
            m = self.c.messages.get(timeout=timeout)
        except queue.Empty:
            return
        self.values[m.topic] = m.payload.decode("utf-8", "replace")

    def wait_all(self, topics, timeout=4.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(t in self.values for t in topics):
                return
            self._pump(0.2)
        missing = [t for t in topics if t not in self.values]
        raise AssertionError(f"$SYS topics not published within {timeout}s: {missing}")

    def number(self, topic):
        return _num(self.values[topic])

    def wait_until(self, topic, pred, timeout=5.0):
        """Consume updates until pred(number(topic)) holds (non-numeric values are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if topic in self.values and re.search(r"\d", self.values[topic]) and \
                    pred(self.number(topic)):
                return self.number(topic)
            self._pump(0.2)
        raise AssertionError(f"{topic} = {self.values.get(topic)!r} did not reach the expected "
                             f"value within {timeout}s")

    def settled(self, topic, wait=2.5):
        """The value of topic after a couple of sys intervals (the broker may still be reporting
        what the previous test left behind), reading updates meanwhile."""
        self.wait_all([topic])
        end = time.monotonic() + wait
        while time.monotonic() < end:
            self._pump(max(0.0, end - time.monotonic()))
        return self.number(topic)

    def fresh(self, topic, timeout=3.0):
        """Wait for the next numeric update of topic after now and return its number."""
        deadline = time.monotonic() + timeout
        self.values.pop(topic, None)
        while time.monotonic() < deadline:
            v = self.values.get(topic)
            if v is not None and re.search(r"\d", v):
                return self.number(topic)
            self._pump(0.2)
        raise AssertionError(f"no numeric update of {topic} within {timeout}s")


def _num(text):
    m = re.search(r"\d+", text)
    assert m, f"no number in {text!r}"
    return int(m.group())


@pytest.fixture
def sys_view(client):
    return SysView(client)


def test_sys_topics_published(sys_view):
    """Every listed $SYS/broker topic is published within the sys interval (1 s) plus slack,
    with a sensible value."""
    sys_view.wait_all(TOPICS, timeout=4)
    assert sys_view.values["$SYS/broker/version"].strip()
    for t in TOPICS[1:]:
        assert sys_view.number(t) >= 0


def test_sys_uptime_increases(sys_view):
    """$SYS/broker/uptime is in seconds and increases between updates."""
    first = sys_view.fresh("$SYS/broker/uptime")
    sys_view.wait_until("$SYS/broker/uptime", lambda v: v > first, timeout=4)
    assert "second" in sys_view.values["$SYS/broker/uptime"]


def test_sys_clients_connected_moves(sys_view, client):
    """$SYS/broker/clients/connected follows clients connecting and disconnecting."""
    base = sys_view.settled("$SYS/broker/clients/connected")
    extra = [client(version=4) for _ in range(3)]
    sys_view.wait_until("$SYS/broker/clients/connected", lambda v: v >= base + 3)
    for c in extra:
        c.disconnect()
    sys_view.wait_until("$SYS/broker/clients/connected", lambda v: v <= base)


def test_sys_message_and_byte_counters_move(sys_view, client, topic):
    """messages/received, messages/sent, bytes/received and bytes/sent grow with traffic."""
    counters = ["$SYS/broker/messages/received", "$SYS/broker/messages/sent",
                "$SYS/broker/bytes/received", "$SYS/broker/bytes/sent"]
    sys_view.wait_all(counters)
    base = {t: sys_view.number(t) for t in counters}  # monotonic: a stale value is only lower
    sub = client(version=4)
    sub.subscribe(f"{topic}/count", qos=1)
    pub = client(version=4)
    for i in range(20):
        pub.publish(f"{topic}/count", b"x" * 1000, qos=1)
    sub.get_n(20)
    sys_view.wait_until(counters[0], lambda v: v >= base[counters[0]] + 20)
    sys_view.wait_until(counters[1], lambda v: v >= base[counters[1]] + 20)
    sys_view.wait_until(counters[2], lambda v: v >= base[counters[2]] + 20_000)
    sys_view.wait_until(counters[3], lambda v: v >= base[counters[3]] + 20_000)


def test_sys_subscription_count_moves(sys_view, client, topic):
    """$SYS/broker/subscriptions/count grows when subscriptions are added."""
    base = sys_view.settled("$SYS/broker/subscriptions/count")
    c = client(version=4)
    for i in range(5):
        c.subscribe(f"{topic}/s{i}", qos=0)
    sys_view.wait_until("$SYS/broker/subscriptions/count", lambda v: v >= base + 5)


def test_sys_retained_count_moves(sys_view, client, topic):
    """$SYS/broker/retained messages/count grows with retained messages and shrinks when they
    are cleared."""
    t = "$SYS/broker/retained messages/count"
    base = sys_view.settled(t)
    pub = client(version=4)
    for i in range(3):
        pub.publish(f"{topic}/r{i}", b"kept", qos=1, retain=True)
    sys_view.wait_until(t, lambda v: v >= base + 3)
    for i in range(3):
        pub.publish(f"{topic}/r{i}", b"", qos=1, retain=True)
    sys_view.wait_until(t, lambda v: v <= base)


def test_sys_not_writable_by_clients_does_not_break(sys_view, client):
    """A client publishing to a $SYS topic does not crash the broker or stop $SYS updates
    (whether the publish is dropped is the broker's choice)."""
    c = client(version=4)
    c.publish("$SYS/broker/uptime", b"fake", qos=1)
    sys_view.wait_until("$SYS/broker/uptime", lambda v: v >= 0)
    first = sys_view.fresh("$SYS/broker/uptime")
    sys_view.wait_until("$SYS/broker/uptime", lambda v: v > first, timeout=4)
