"""Shared subscriptions across cluster nodes (issue 14, docs/cluster.md "Shared
subscriptions"): `$share/GROUP/FILTER` with members on several nodes gets each message to
exactly one member in the whole cluster (5.0 section 4.8.2), while plain subscribers still get
every message. Three real NATS servers and three Makelaar nodes, paho clients."""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from clients import unique
from test_cluster import NatsCluster, Node, cleaned_up, connected, pytestmark  # noqa: F401

N = 40


@contextlib.contextmanager
def running(names=("a", "b", "c")):
    """Three NATS servers and a node on each (4 partitions keep the groups' consumers few);
    stopped, and their logs printed on an error, when the body ends."""
    workdir = Path(tempfile.mkdtemp(prefix="mk-share-"))
    nats = NatsCluster(workdir)
    nodes = []
    with cleaned_up(nats, nodes, workdir):
        for i, name in enumerate(names):
            n = Node(workdir, nats, name, servers=[nats.urls[i]], cluster_toml="partitions = 4\n")
            nodes.append(n)
            n.wait_serving()
        yield nodes


@pytest.fixture(scope="module")
def three():
    with running() as nodes:
        yield nodes


def settle(pub, members, topic, qos, timeout=30.0):
    """Publishes probes until a member gets one: the group's queue subscriptions and
    consumers are made a moment after the SUBACK (docs/cluster.md). Then drains."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.publish(topic, b"probe", qos=qos)
        time.sleep(0.3)
        if any(not m.messages.empty() for m in members):
            time.sleep(1.0)
            for m in members:
                m.drain(quiet=0.5)
            return
    raise AssertionError(f"no probe on {topic} reached a member in {timeout}s")


def collect(*members, want: set, timeout=30.0) -> Counter:
    """Every message the members get until all of `want` arrived (a group's consumer in a
    partition may start a moment late on a loaded machine: its messages come late, not
    never) or `timeout` passed, then what comes in one more quiet second (duplicates)."""
    got = Counter()
    deadline = time.monotonic() + timeout
    while not want <= set(got) and time.monotonic() < deadline:
        for m in members:
            while not m.messages.empty():
                got[m.messages.get().payload] += 1
        time.sleep(0.05)
    for m in members:
        for msg in m.drain(quiet=1.0, timeout=5):
            got[msg.payload] += 1
    return got


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_each_message_reaches_exactly_one_member_across_nodes(three, qos):
    a, b, c = three
    base = unique(f"sh{qos}")
    group = f"$share/g/{base}/#"
    on_a = connected(a)
    on_a.subscribe(group, qos=qos)
    on_b = connected(b)
    on_b.subscribe(group, qos=qos)
    plain = connected(a)
    plain.subscribe(f"{base}/#", qos=qos)
    pub_c = connected(c)
    pub_a = connected(a)
    settle(pub_c, [on_a, on_b], f"{base}/probe", qos)
    plain.drain(quiet=0.5)
    # Half from a third node, half from a node with a member (its own member must not get
    # a copy of its own besides the group's one).
    sent = []
    for i in range(N):
        payload = f"m{i}".encode()
        (pub_c if i % 2 == 0 else pub_a).publish(f"{base}/x/{i % 3}", payload, qos=qos)
        sent.append(payload)
    got = collect(on_a, on_b, want=set(sent))
    dupes = {p: n for p, n in got.items() if n > 1}
    assert not dupes, f"delivered to more than one member: {dupes}"
    assert set(got) == set(sent), f"missing: {sorted(set(sent) - set(got))}"
    # The plain subscriber gets every message, once.
    seen = collect(plain, want=set(sent))
    assert seen == Counter(sent)
    for cl in (on_a, on_b, plain, pub_c, pub_a):
        cl.close()


def group_on_a_and_b(a, b, c, base):
    """A share group on `base/#` with a QoS 1 member on node a and one on node b, and a
    publisher on node c, settled (a probe reached a member)."""
    group = f"$share/g/{base}/#"
    on_a = connected(a)
    on_a.subscribe(group, qos=1)
    on_b = connected(b)
    on_b.subscribe(group, qos=1)
    pub = connected(c)
    settle(pub, [on_a, on_b], f"{base}/probe", 1)
    return group, on_a, on_b, pub


def test_a_member_leaving_stops_its_nodes_share(three):
    """The last member on a node leaves: the group's messages all go to the other node's."""
    a, b, c = three
    base = unique("shleave")
    group, on_a, on_b, pub = group_on_a_and_b(a, b, c, base)
    on_b.unsubscribe(group)
    time.sleep(0.5)
    on_b.drain(quiet=0.3)
    for i in range(N):
        pub.publish(f"{base}/t", f"m{i}".encode(), qos=1)
    got = [m.payload for m in on_a.get_n(N, timeout=30)]
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(N))
    on_b.expect_none(timeout=1.0)
    for cl in (on_a, on_b, pub):
        cl.close()


def test_the_first_member_leaving_passes_the_group_to_the_other_node_at_once(three):
    """The member on the node that made the group's consumers leaves, and the group's
    messages published right after its UNSUBACK all reach the member on the other node
    within half the consumers' ack wait (30 s): the other node pulls from the consumers
    from its member's SUBACK on (not only once a first pull that NATS answered with "no
    responders", while a consumer just made had no leader yet, expired: issue 14, 35 s),
    and what the leaving node's last pull request still brings goes back at once rather
    than waiting out the ack wait."""
    a, b, c = three
    base = unique("shfirst")
    group, on_a, on_b, pub = group_on_a_and_b(a, b, c, base)
    on_a.unsubscribe(group)
    sent = [f"m{i}".encode() for i in range(N)]
    for i, payload in enumerate(sent):
        pub.publish(f"{base}/t/{i % 7}", payload, qos=1)
    got = [m.payload for m in on_b.get_n(N, timeout=15)]
    assert sorted(got) == sorted(sent)
    on_a.expect_none(timeout=1.0)
    for cl in (on_a, on_b, pub):
        cl.close()


def test_a_member_node_stopped_midstream_loses_no_qos1_message():
    with running() as nodes:
        a, b, c = nodes
        base = unique("shstop")
        group, on_a, on_b, pub = group_on_a_and_b(a, b, c, base)
        total = 200
        sent = []

        def publish_all():
            for i in range(total):
                payload = f"m{i}".encode()
                pub.publish(f"{base}/t/{i % 5}", payload, qos=1)
                sent.append(payload)
                time.sleep(0.01)

        t = threading.Thread(target=publish_all)
        t.start()
        while len(sent) < total // 3:
            time.sleep(0.05)
        b.stop()  # SIGTERM, mid-stream
        t.join(timeout=60)
        assert len(sent) == total
        got = Counter()
        for m in (on_a, on_b):
            for msg in m.drain(quiet=2.0, timeout=60):
                got[msg.payload] += 1
        missing = sorted(set(sent) - set(got), key=lambda p: int(p[1:]))
        assert not missing, f"acknowledged and never delivered: {missing}"
        on_a.close()
        pub.close()
