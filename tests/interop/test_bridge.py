"""Bridges over real sockets: Makelaar bridged to Debian's Mosquitto 2.0 and to a second
Makelaar, with MQTT 3.1.1 and 5.0 toward the remote. Messages flow both ways with their
topics remapped by the prefixes, their QoS and retain flags; the notification topic says
`1` while the link is up and `0` once the remote is gone; nothing acknowledged is lost when
the remote goes away, when Makelaar is killed with SIGKILL meanwhile, or when the remote
lost the bridge's session; QoS 2 is delivered exactly once across a reconnect; and two
brokers bridged `# both` each way deliver every message once."""

from __future__ import annotations

import os
import time
from collections import Counter

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge_helpers import Makelaar, Mosquitto, Proxy, bridge_toml
from brokers import BROKER_KIND, free_port
import mqtt_raw as R
from clients import MqttClient, unique

pytestmark = pytest.mark.skipif(BROKER_KIND != "makelaar",
                                reason="bridges are tested with Makelaar as the local broker")

# Messages published during the outage in the loss tests (the issue asks for 10,000; the
# default keeps the suite quick, BRIDGE_LOSS_N=10000 runs the full figure).
LOSS_N = int(os.environ.get("BRIDGE_LOSS_N", "2000"))

VERSIONS = {"3.1.1": 4, "5.0": 5}


@pytest.fixture
def procs(request):
    started = []
    yield started
    for p in started:
        p.kill()
    if getattr(request.node, "rep_call_failed", False):
        # What each broker logged, for the report: Makelaar's warnings and the relay's
        # steps, the end of Mosquitto's packet log.
        for p in started:
            print(f"--- {p.name} ({type(p).__name__}), {p.log}:\n{p.tail()}")


def remote_broker(kind, tmp_path, procs, name="remote", persistence=True):
    if kind == "mosquitto":
        r = Mosquitto(tmp_path, name, persistence=persistence)
    else:
        r = Makelaar(tmp_path, name)
    procs.append(r)
    return r.start()


def client(broker, version=5, clean=True, client_id=None):
    c = MqttClient(broker, version=version, clean=clean, client_id=client_id)
    c.connect()
    return c


def wait_for(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")


def notification(c, timeout=15.0):
    m = c.get(timeout)
    return m.topic, m.payload, m.retain


@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("remote_kind", ["mosquitto", "makelaar"])
def test_messages_flow_both_ways_with_prefixes_qos_retain_and_notifications(
        tmp_path, procs, remote_kind, version):
    remote = remote_broker(remote_kind, tmp_path, procs)
    topics = [
        {"pattern": "sensor/#", "direction": "out", "qos": 1,
         "local_prefix": "site/", "remote_prefix": "cloud/site1/"},
        {"pattern": "cmd/#", "direction": "in", "qos": 2,
         "local_prefix": "site/", "remote_prefix": "cloud/site1/"},
    ]
    local = Makelaar(tmp_path, "local", bridge_toml(
        "cloud", remote.port, topics, protocol_version=version, remote_client_id="site1",
        session_expiry_interval=3600))
    procs.append(local)
    # Subscribed at the remote before the bridge exists: the `1` arrives live.
    rwatch = client(remote)
    rwatch.subscribe("$SYS/broker/connection/site1/state", 1)
    local.start()
    lwatch = client(local)
    lwatch.subscribe("$SYS/broker/connection/site1/state", 1)
    assert notification(rwatch)[1] == b"1"
    # Locally the retained value may still be the `0` of the start, then `1`.
    wait_for(lambda: notification(lwatch)[1] == b"1", what="local notification 1")

    # out: site/sensor/... → cloud/site1/sensor/..., QoS capped by the topic line (1).
    rsub = client(remote)
    rsub.subscribe("cloud/site1/#", 2)
    pub = client(local)
    pub.publish("site/sensor/t1", b"21.5", qos=2)
    m = rsub.get(10)
    assert (m.topic, m.payload, m.qos, m.retain) == ("cloud/site1/sensor/t1", b"21.5", 1, False)
    pub.publish("site/other/x", b"not carried", qos=1)
    # Retained: a late subscriber at the remote gets it with RETAIN set.
    pub.publish("site/sensor/r", b"kept", qos=1, retain=True)
    assert rsub.get(10).topic == "cloud/site1/sensor/r"
    late = client(remote)
    late.subscribe("cloud/site1/sensor/r", 1)
    m = late.get(10)
    assert (m.payload, m.retain) == (b"kept", True)

    # in: cloud/site1/cmd/... → site/cmd/..., QoS as published (topic line allows 2).
    lsub = client(local)
    lsub.subscribe("site/cmd/#", 2)
    lsub.subscribe("site/sensor/echo", 2)
    rpub = client(remote)
    rpub.publish("cloud/site1/cmd/open", b"now", qos=2)
    rpub.publish("cloud/site1/sensor/echo", b"in-only for cmd", qos=1)
    m = lsub.get(10)
    assert (m.topic, m.payload, m.qos) == ("site/cmd/open", b"now", 2)
    lsub.expect_none(1.0)
    # What the bridge brought in does not go back out (No Local): the remote's subscriber
    # has the two messages once each, as published there.
    got = sorted(m.topic for m in rsub.drain(1.0, 5))
    assert got == ["cloud/site1/cmd/open", "cloud/site1/sensor/echo"], got

    # The remote goes away: the local notification says 0.
    remote.stop()
    wait_for(lambda: notification(lwatch)[1] == b"0", what="local notification 0")
    for c in (rwatch, lwatch, rsub, pub, late, lsub, rpub):
        c.close()


@pytest.mark.parametrize("remote_kind", ["mosquitto", "makelaar"])
def test_mqtt5_properties_are_carried_and_the_response_topic_remapped(
        tmp_path, procs, remote_kind):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    remote = remote_broker(remote_kind, tmp_path, procs)
    topics = [{"pattern": "#", "direction": "out", "qos": 1,
               "local_prefix": "site/", "remote_prefix": "cloud/"}]
    local = Makelaar(tmp_path, "local", bridge_toml(
        "up", remote.port, topics, protocol_version="5.0", remote_client_id="edge"))
    procs.append(local)
    sub = client(remote)
    sub.subscribe("cloud/#", 1)
    local.start()
    pub = client(local)
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("app", "kept")]
    p.ContentType = "text/plain"
    p.ResponseTopic = "site/replies/1"
    p.CorrelationData = b"corr"
    p.MessageExpiryInterval = 3600
    keep = []

    def arrived():
        pub.publish("site/req", b"q", qos=1, properties=p)
        keep.extend(m for m in sub.drain(0.3, 1) if m.topic == "cloud/req")
        return bool(keep)

    wait_for(arrived, what="the message at the remote")
    m = keep[0]
    props = m.properties
    assert ("app", "kept") in props.UserProperty
    assert props.ContentType == "text/plain"
    assert props.ResponseTopic == "cloud/replies/1"
    assert props.CorrelationData == b"corr"
    assert 3590 <= props.MessageExpiryInterval <= 3600


def test_a_full_bridge_queue_refuses_with_0x97_instead_of_dropping(tmp_path, procs):
    dead = free_port()  # the remote is away: everything waits in the queue
    local = Makelaar(tmp_path, "local", bridge_toml(
        "up", dead, [{"pattern": "x/#", "qos": 1}], remote_client_id="edge",
        queue={"max_messages": 5, "when_full": "reject"}))
    procs.append(local)
    local.start()
    # The bridge's local session subscribes before it publishes its first notification.
    watch = client(local)
    watch.subscribe("$SYS/broker/connection/edge/state", 1)
    assert notification(watch)[1] == b"0"
    pub = client(local)
    codes = [pub.publish(f"x/{i}", b"m", qos=1) for i in range(8)]
    reasons = [getattr(c, "value", c) for c in codes]
    # The first five are queued (0x10: no other subscriber); the rest are refused.
    assert [r == 0x97 for r in reasons] == [False] * 5 + [True] * 3, reasons
    pub.close()


def sys_values(c, prefix, n, timeout=10.0):
    """The latest retained `$SYS` values under `prefix`, once `n` leaves were seen."""
    values = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(values) < n:
        for m in c.drain(0.3, 1):
            values[m.topic[len(prefix):]] = m.payload.decode()
    return values


def test_drop_qos0_first_max_age_and_3_1_1_refusals_are_counted_by_reason(tmp_path, procs):
    dead = free_port()  # the remote is away: everything waits in the queue
    local = Makelaar(tmp_path, "local", bridge_toml(
        "up", dead, [{"pattern": "x/#", "qos": 1}], remote_client_id="edge",
        queue={"max_messages": 3, "when_full": "drop-qos0-first", "max_age": 3}),
        top="sys_interval = 1")
    procs.append(local)
    local.start()
    watch = client(local)
    watch.subscribe("$SYS/broker/connection/edge/state", 1)
    assert notification(watch)[1] == b"0"
    pub = client(local)
    assert pub.publish("x/a", b"1", qos=1) != 0x97
    pub.publish("x/b", b"0", qos=0)
    assert pub.publish("x/c", b"1", qos=1) != 0x97
    # Full: the queued QoS 0 message makes room; then, without one, the queue refuses.
    assert pub.publish("x/d", b"1", qos=1) != 0x97
    assert pub.publish("x/e", b"1", qos=1) == 0x97
    # A 3.1.1 publisher cannot be told: it is disconnected instead of acknowledged.
    raw = R.RawClient(local.port, version=4)
    assert raw.connect("old-pub", clean=False).reason == 0
    raw.publish("x/f", b"1", qos=1, packet_id=7)
    assert [p for p in raw.wait_closed(5) if p.type == R.PUBACK] == []
    # Three seconds later the queued messages are too old: a new one pushes them out.
    time.sleep(3.5)
    assert pub.publish("x/g", b"1", qos=1) != 0x97
    sys = client(local)
    prefix = "$SYS/broker/bridge/up/"
    sys.subscribe(prefix + "#", 0)
    want = {"dropped/queue_qos0": "1", "dropped/queue_full": "2", "dropped/max_age": "3",
            "dropped/queue_oldest": "0", "queue/messages": "1"}

    def counted():
        v = sys_values(sys, prefix, 20, timeout=3)
        return all(v.get(k) == x for k, x in want.items())
    wait_for(counted, timeout=15, what=f"$SYS bridge drops {want}")
    assert "max_age" in local.tail() and "drop" in local.tail()


@pytest.mark.parametrize("remote_kind", ["mosquitto", "makelaar"])
def test_retained_messages_go_to_the_remote_again_only_when_its_session_is_new(
        tmp_path, procs, remote_kind):
    remote = remote_broker(remote_kind, tmp_path, procs)
    local = Makelaar(tmp_path, "local", bridge_toml(
        "up", remote.port, [{"pattern": "r/#", "qos": 1}], remote_client_id="edge",
        protocol_version="5.0", session_expiry_interval=3600))
    procs.append(local)
    local.start()
    rwatch = client(remote)
    rwatch.subscribe("$SYS/broker/connection/edge/state", 1)
    wait_for(lambda: notification(rwatch)[1] == b"1", what="the link up")
    # The local side is up too (its `1` follows the subscription that sends the retained
    # messages to a new remote session): a retained message published before that would go
    # out twice, live and as a retained message of the subscription [MQTT-3.3.1-9].
    lwatch = client(local)
    lwatch.subscribe("$SYS/broker/connection/edge/state", 1)
    wait_for(lambda: notification(lwatch)[1] == b"1", what="the local side up")
    lwatch.close()
    rsub = client(remote)
    rsub.subscribe("r/#", 1)
    pub = client(local)
    pub.publish("r/kept", b"v1", qos=1, retain=True)
    assert rsub.get(10).payload == b"v1"
    pub.close()
    # This broker restarts; the remote kept the bridge's session and has the value: the
    # retained message is not sent again.
    local.stop()
    assert notification(rwatch)[1] == b"0"
    local.start()
    assert notification(rwatch)[1] == b"1"
    rsub.expect_none(2.0)
    # A changed value goes out, once.
    pub = client(local)
    pub.publish("r/kept", b"v2", qos=1, retain=True)
    assert rsub.get(10).payload == b"v2"
    rsub.expect_none(1.0)
    # The remote restarts without the bridge's session (and without the retained value):
    # it gets the retained message again, once.
    rsub.close()
    rwatch.close()
    remote.stop()
    for f in list(remote.workdir.glob("*.db")) + [remote.workdir / "data"]:
        if f.is_dir():
            import shutil
            shutil.rmtree(f)
        elif f.exists():
            f.unlink()
    remote.start()
    late = client(remote)
    late.subscribe("r/#", 1)
    rwatch = client(remote)
    rwatch.subscribe("$SYS/broker/connection/edge/state", 1)
    wait_for(lambda: notification(rwatch)[1] == b"1", timeout=30, what="the link up again")
    got = [m.payload for m in late.drain(1.5, 10)]
    assert got == [b"v2"], got


def test_an_out_topic_removed_from_the_configuration_is_unsubscribed_at_start(tmp_path, procs):
    dead = free_port()  # the remote is away: what the bridge subscribes waits in its queue
    local = Makelaar(tmp_path, "local", bridge_toml(
        "up", dead, [{"pattern": "a/#", "qos": 1}, {"pattern": "b/#", "qos": 1}],
        remote_client_id="edge"))
    procs.append(local)
    local.start()
    watch = client(local)
    watch.subscribe("$SYS/broker/connection/edge/state", 1)
    assert notification(watch)[1] == b"0"
    pub = client(local)
    assert pub.publish("b/x", b"1", qos=1) == 0  # the bridge's session takes it
    pub.close()
    watch.close()
    local.stop()
    local.set_bridges(bridge_toml("up", dead, [{"pattern": "a/#", "qos": 1}],
                                  remote_client_id="edge"))
    local.start()
    watch = client(local)
    watch.subscribe("$SYS/broker/connection/edge/state", 1)
    assert notification(watch)[1] == b"0"
    pub = client(local)
    # b/# is no longer the bridge's: nobody subscribes to it (5.0: 0x10).
    wait_for(lambda: pub.publish("b/y", b"1", qos=1) == 0x10, what="b/# unsubscribed")
    assert pub.publish("a/y", b"1", qos=1) == 0
    assert "no longer carries out" in local.tail()


def test_a_lazy_bridge_connects_at_the_threshold_and_leaves_when_idle(tmp_path, procs):
    remote = remote_broker("mosquitto", tmp_path, procs)
    watch = client(remote)
    watch.subscribe("$SYS/broker/connection/edge/state", 1)
    sub = client(remote)
    sub.subscribe("x/#", 1)
    local = Makelaar(tmp_path, "local", bridge_toml(
        "up", remote.port, [{"pattern": "x/#", "qos": 1}], remote_client_id="edge",
        start_type="lazy", threshold=5, idle_timeout=2))
    procs.append(local)
    local.start()
    lwatch = client(local)
    lwatch.subscribe("$SYS/broker/connection/edge/state", 1)
    assert notification(lwatch)[1] == b"0"  # primed: the subscription exists
    pub = client(local)
    for i in range(4):
        pub.publish(f"x/{i}", str(i).encode(), qos=1)
    sub.expect_none(1.5)  # four wait: below the threshold
    pub.publish("x/4", b"4", qos=1)
    got = sorted(int(m.payload) for m in sub.get_n(5, timeout=10))
    assert got == [0, 1, 2, 3, 4]
    assert notification(watch)[1] == b"1"
    # Nothing more for idle_timeout: the link ends, and the remote's notification says so.
    assert notification(watch, timeout=10)[1] == b"0"


def test_a_dead_primary_address_fails_over_to_the_next(tmp_path, procs):
    remote = remote_broker("mosquitto", tmp_path, procs)
    dead = free_port()
    local = Makelaar(tmp_path, "local", bridge_toml(
        "up", remote.port, [{"pattern": "x/#", "qos": 1}], remote_client_id="edge",
        addresses=[f"127.0.0.1:{dead}", f"127.0.0.1:{remote.port}"]))
    procs.append(local)
    sub = client(remote)
    sub.subscribe("x/#", 1)
    local.start()
    pub = client(local)
    wait_for(lambda: (pub.publish("x/1", b"via the second", qos=1) == 0 and
                      any(m.payload == b"via the second" for m in sub.drain(0.3, 1))),
             what="a message over the second address")


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_the_remote_notification_says_0_when_the_bridge_stops_or_dies(tmp_path, procs, how):
    """A clean stop publishes `0` at the remote before closing; a killed broker leaves it to
    the bridge's will."""
    remote = remote_broker("mosquitto", tmp_path, procs)
    watch = client(remote)
    watch.subscribe("$SYS/broker/connection/edge/state", 1)
    local = Makelaar(tmp_path, "local", bridge_toml(
        "up", remote.port, [{"pattern": "x/#"}], remote_client_id="edge"))
    procs.append(local)
    local.start()
    assert notification(watch)[1] == b"1"
    local.stop() if how == "stop" else local.kill()
    topic, payload, _ = notification(watch, timeout=20)
    assert (topic, payload) == ("$SYS/broker/connection/edge/state", b"0")
    watch.close()


@pytest.mark.parametrize("version", list(VERSIONS))
def test_tls_with_a_client_certificate_to_mosquitto(tmp_path, procs, certs, version):
    """Mutual TLS: the bridge checks Mosquitto's certificate against the CA and the address
    (127.0.0.1 is in its SAN) and shows its own; Mosquitto requires one."""
    tls_port_holder = Mosquitto(tmp_path, "remote")
    tls_port = free_port()
    tls_port_holder.conf.write_text(tls_port_holder.conf.read_text() + "\n".join([
        "", f"listener {tls_port} 127.0.0.1", f"cafile {certs / 'ca.crt'}",
        f"certfile {certs / 'server.crt'}", f"keyfile {certs / 'server.key'}",
        "require_certificate true", ""]))
    procs.append(tls_port_holder)
    remote = tls_port_holder.start()
    topics = [{"pattern": "s/#", "direction": "both", "qos": 1}]
    local = Makelaar(tmp_path, "local", bridge_toml(
        "tls", tls_port, topics, protocol_version=version, remote_client_id="tls-edge",
        tls={"cafile": str(certs / "ca.crt"), "certfile": str(certs / "client.crt"),
             "keyfile": str(certs / "client.key")}))
    procs.append(local)
    rsub = client(remote)
    rsub.subscribe("s/#", 1)
    local.start()
    lsub = client(local)
    lsub.subscribe("s/in", 1)
    pub = client(local)
    wait_for(lambda: (pub.publish("s/out", b"over tls", qos=1) == 0 and
                      any(m.payload == b"over tls" for m in rsub.drain(0.3, 1))),
             what="a message over the TLS bridge")
    client(remote).publish("s/in", b"back", qos=1)
    assert lsub.get(10).payload == b"back"


def outage_setup(tmp_path, procs, remote_kind, version, qos=1, clean_session=False,
                 local_limits=None):
    """A remote with a persistent subscriber on `cloud/#`, a local Makelaar bridging `data/#`
    out to it; returns (remote, local, subscriber-maker)."""
    remote = remote_broker(remote_kind, tmp_path, procs, persistence=True)
    sub_id = unique("sub")

    def subscriber():
        s = MqttClient(remote, version=5, clean=False, client_id=sub_id)
        s.connect(properties=session_props())
        return s

    s = subscriber()
    s.subscribe("cloud/#", qos)
    s.disconnect()
    topics = [{"pattern": "data/#", "direction": "out", "qos": qos,
               "local_prefix": "", "remote_prefix": "cloud/"}]
    local = Makelaar(tmp_path, "local", bridge_toml(
        "up", remote.port, topics, protocol_version=version, remote_client_id="edge",
        clean_session=clean_session, session_expiry_interval=86400), limits=local_limits)
    procs.append(local)
    local.start()
    # The link up (so the bridge's local session and its subscription exist).
    watch = client(local)
    watch.subscribe("$SYS/broker/connection/edge/state", 1)
    wait_for(lambda: notification(watch)[1] == b"1", what="the link up")
    watch.close()
    return remote, local, subscriber


def session_props():
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 86400
    return p


def publish_many(broker, n, qos=1, prefix="data/m"):
    """Publishes n numbered messages and waits until every one is acknowledged."""
    c = MqttClient(broker, version=5)
    c.c.max_inflight_messages_set(200)
    c.c.max_queued_messages_set(0)
    c.connect()
    infos = [c.publish(f"{prefix}/{i % 10}", str(i).encode(), qos=qos, wait=False)
             for i in range(n)]
    for info in infos:
        info.wait_for_publish(60)
        assert info.is_published()
    c.disconnect()


def collect(sub, n, timeout, got=None):
    """Payloads received until all of 0..n-1 are there (or timeout), added to `got`; a
    Counter."""
    got = Counter() if got is None else got
    deadline = time.monotonic() + timeout
    while len(got) < n:
        try:
            # Past the deadline, only what has already arrived is taken.
            m = sub.messages.get(timeout=0.5 if time.monotonic() < deadline else 0.01)
        except Exception:
            if time.monotonic() < deadline:
                continue
            break
        if m.payload != b"-1":  # a probe
            got[int(m.payload)] += 1
    return got


def assert_all(got: Counter, n: int, max_dups: int | None = 0):
    missing = [i for i in range(n) if got[i] == 0]
    assert not missing, f"{len(missing)} of {n} messages lost, e.g. {missing[:10]}"
    dups = sum(c - 1 for c in got.values())
    print(f"{n} messages, all arrived, {dups} duplicates")
    if max_dups is not None:
        assert dups <= max_dups, f"{dups} duplicates"
    return dups


@pytest.mark.slow
@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("remote_kind", ["mosquitto", "makelaar"])
def test_a_remote_down_while_messages_are_published_loses_nothing(
        tmp_path, procs, remote_kind, version):
    remote, local, subscriber = outage_setup(tmp_path, procs, remote_kind, version)
    remote.stop()
    publish_many(local, LOSS_N)
    remote.start()
    s = subscriber()
    got = collect(s, LOSS_N, timeout=45)
    # The window in flight when the link dropped may arrive twice (at least once).
    assert_all(got, LOSS_N, max_dups=None)
    s.close()


@pytest.mark.slow
@pytest.mark.parametrize("remote_kind", ["mosquitto", "makelaar"])
def test_makelaar_killed_during_the_outage_loses_nothing(tmp_path, procs, remote_kind):
    remote, local, subscriber = outage_setup(tmp_path, procs, remote_kind, "5.0")
    remote.stop()
    publish_many(local, LOSS_N)
    local.kill()
    local.start()
    remote.start()
    s = subscriber()
    got = collect(s, LOSS_N, timeout=45)
    assert_all(got, LOSS_N, max_dups=None)
    s.close()


@pytest.mark.slow
@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("remote_kind", ["mosquitto", "makelaar"])
def test_inward_messages_published_while_makelaar_is_down_arrive_after_it_returns(
        tmp_path, procs, remote_kind, version):
    """The `in` direction: the remote keeps the bridge's session (clean_session false) and
    queues for it while this broker is killed; after the restart the bridge resumes it and
    each message reaches a persistent local subscriber."""
    remote = remote_broker(remote_kind, tmp_path, procs, persistence=True)
    topics = [{"pattern": "cmd/#", "direction": "in", "qos": 1, "local_prefix": "here/"}]
    local = Makelaar(tmp_path, "local", bridge_toml(
        "up", remote.port, topics, protocol_version=version, remote_client_id="edge",
        session_expiry_interval=86400))
    procs.append(local)
    local.start()
    sub_id = unique("lsub")
    lsub = MqttClient(local, version=5, clean=False, client_id=sub_id)
    lsub.connect(properties=session_props())
    lsub.subscribe("here/cmd/#", 1)
    rpub = client(remote)
    wait_for(lambda: (rpub.publish("cmd/probe", b"-1", qos=1) is not None and
                      any(m.payload == b"-1" for m in lsub.drain(0.3, 1))),
             what="the link up")
    lsub.disconnect()
    local.kill()
    n = 500
    for i in range(n):
        rpub.publish(f"cmd/{i % 5}", str(i).encode(), qos=1)
    local.start()
    lsub = MqttClient(local, version=5, clean=False, client_id=sub_id)
    lsub.connect(properties=session_props())
    got = collect(lsub, n, timeout=30)
    assert_all(got, n, max_dups=None)
    lsub.close()
    rpub.close()


@pytest.mark.slow
@pytest.mark.parametrize("remote_kind", ["mosquitto", "makelaar"])
def test_a_silent_partition_while_the_queue_drains_loses_nothing(tmp_path, procs, remote_kind):
    """The link stops carrying packets (no FIN, no RST) while the bridge drains: the keep-alive
    notices, the bridge reconnects and the local broker sends again what was not
    acknowledged (the NanoMQ #2432 reproduction)."""
    remote = remote_broker(remote_kind, tmp_path, procs, persistence=True)
    proxy = Proxy(remote.port)
    sub = MqttClient(remote, version=5, clean=False, client_id=unique("sub"))
    sub.connect(properties=session_props())
    sub.subscribe("cloud/#", 1)
    topics = [{"pattern": "data/#", "direction": "out", "qos": 1, "remote_prefix": "cloud/"}]
    local = Makelaar(tmp_path, "local", bridge_toml(
        "up", proxy.port, topics, protocol_version="5.0", remote_client_id="edge",
        keepalive=5, session_expiry_interval=86400))
    procs.append(local)
    local.start()
    n = LOSS_N
    wait_for(lambda: (client(local).publish("data/probe", b"-1", qos=1) == 0 and
                      any(m.payload == b"-1" for m in sub.drain(0.3, 1))),
             what="the bridge up")
    # The link goes silent; what the bridge sends next is lost in it, up to its window.
    proxy.partition()
    publish_many(local, n)
    got = Counter()
    collect(sub, n, timeout=40, got=got)
    dups = assert_all(got, n, max_dups=None)
    # At most what was in flight when the link went silent arrives twice.
    assert dups <= 40, dups
    proxy.close()
    sub.close()


@pytest.mark.slow
@pytest.mark.parametrize("remote_kind", ["mosquitto", "makelaar"])
def test_a_remote_without_the_bridge_session_gets_everything(tmp_path, procs, remote_kind):
    """clean_session = true: each link starts with Session Present 0 at the remote, as after
    a remote that lost its state; everything not acknowledged is sent again."""
    remote, local, subscriber = outage_setup(tmp_path, procs, remote_kind, "3.1.1",
                                             clean_session=True)
    remote.stop()
    publish_many(local, LOSS_N)
    remote.start()
    s = subscriber()
    got = collect(s, LOSS_N, timeout=45)
    # Duplicates at most the in-flight window (max_inflight_messages, 20).
    assert_all(got, LOSS_N, max_dups=20)
    s.close()


@pytest.mark.slow
@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("remote_kind", ["mosquitto", "makelaar"])
def test_qos2_across_a_reconnect_with_the_session_kept_is_exactly_once(
        tmp_path, procs, remote_kind, version):
    remote, local, subscriber = outage_setup(tmp_path, procs, remote_kind, version, qos=2)
    s = subscriber()
    n = 600
    c = MqttClient(local, version=5)
    c.c.max_inflight_messages_set(100)
    c.c.max_queued_messages_set(0)
    c.connect()
    infos = []
    third = n // 3
    # The first third arrives while the subscriber is connected; it then leaves cleanly, so
    # that no QoS 2 exchange toward it is cut (a new paho client object would not know the
    # exchange and the message would be lost in the test client, not in the brokers).
    for i in range(third):
        infos.append(c.publish(f"data/q/{i % 3}", str(i).encode(), qos=2, wait=False))
    got = collect(s, third, timeout=45)
    assert len(got) == third, f"only {len(got)} of the first {third} arrived"
    # paho hands a QoS 2 message over before it queues the PUBCOMP: a SUBSCRIBE round trip
    # after a pause makes sure the remote has every PUBCOMP before the subscriber leaves.
    # Without it the remote may keep the last exchanges open and, after its restart, send
    # those messages again to a client object that no longer knows them.
    time.sleep(0.2)
    s.subscribe("settle/none", 0)
    s.disconnect()
    for i in range(third, n):
        infos.append(c.publish(f"data/q/{i % 3}", str(i).encode(), qos=2, wait=False))
        if i == third + 50:
            # The remote restarts (its sessions kept) while the bridge is relaying.
            remote.stop()
            remote.start()
    for info in infos:
        info.wait_for_publish(60)
    c.disconnect()
    s = subscriber()
    got = collect(s, n, timeout=45, got=got)
    assert_all(got, n, max_dups=0)
    s.close()


def bridged_pair(tmp_path, procs, remote_kind, version, side):
    """Makelaar `a` and a remote (Makelaar or Mosquitto) joined by one bridge `# both 1`,
    configured on `a` (side "local") or on the remote (side "remote")."""
    both = [{"pattern": "#", "direction": "both", "qos": 1}]
    a = Makelaar(tmp_path, "a")
    if remote_kind == "makelaar":
        r = Makelaar(tmp_path, "r")
        if side == "remote":
            r.set_bridges(bridge_toml("to-a", a.port, both, protocol_version=version,
                                      remote_client_id="r-to-a",
                                      session_expiry_interval=3600))
    else:
        proto = {"3.1.1": "mqttv311", "5.0": "mqttv50"}[version]
        extra = (f"\nconnection to-a\naddress 127.0.0.1:{a.port}\ntopic # both 1\n"
                 f"restart_timeout 1\ncleansession false\nremote_clientid r-to-a\n"
                 f"bridge_protocol_version {proto}\n") if side == "remote" else ""
        r = Mosquitto(tmp_path, "r", extra=extra)
    if side == "local":
        a.set_bridges(bridge_toml("to-r", r.port, both, protocol_version=version,
                                  remote_client_id="a-to-r", session_expiry_interval=3600))
    procs += [a, r]
    a.start()
    r.start()
    return a, r


def assert_each_once(a, r):
    sa, sr = client(a), client(r)
    sa.subscribe("t/#", 1)
    sr.subscribe("t/#", 1)
    pa, pr = client(a), client(r)
    # Wait for the link both ways (the probes are told apart from the counted messages).
    wait_for(lambda: (pa.publish("t/probe", b"-1", qos=1) == 0 and
                      any(m.topic == "t/probe" for m in sr.drain(0.3, 1))), what="a to r")
    wait_for(lambda: (pr.publish("t/probe", b"-1", qos=1) == 0 and
                      any(m.topic == "t/probe" for m in sa.drain(0.3, 1))), what="r to a")
    sa.drain(1.0)
    sr.drain(1.0)
    for i in range(20):
        (pa if i % 2 else pr).publish(f"t/{i}", str(i).encode(), qos=1)
    for s in (sa, sr):
        got = Counter(int(m.payload) for m in s.drain(1.5, 20) if m.topic != "t/probe")
        assert got == Counter(range(20)), f"{s.client_id}: {got}"
    for c in (sa, sr, pa, pr):
        c.close()


@pytest.mark.parametrize("side", ["local", "remote"])
@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("remote_kind", ["makelaar", "mosquitto"])
def test_two_brokers_bridged_both_ways_deliver_each_message_once(
        tmp_path, procs, remote_kind, version, side):
    """`topic # both 1` with the bridge on either broker: No Local (5.0) or the bridge bit
    (3.1.1, applied by the remote) keeps what the bridge brought from going back."""
    a, r = bridged_pair(tmp_path, procs, remote_kind, version, side)
    assert_each_once(a, r)


def test_a_triangle_of_makelaars_delivers_each_message_once(tmp_path, procs):
    """A → B → C → A, each bridge `# out 1` with 5.0: a message goes round once and is
    dropped where it started (the loop guard's origin between Makelaar brokers; 3.1.1 has
    no user properties to carry it)."""
    version = "5.0"
    out = [{"pattern": "#", "direction": "out", "qos": 1}]
    brokers = [Makelaar(tmp_path, n) for n in "abc"]
    for i, b in enumerate(brokers):
        nxt = brokers[(i + 1) % 3]
        b.set_bridges(bridge_toml("next", nxt.port, out, protocol_version=version,
                                  remote_client_id=f"{b.name}-next",
                                  session_expiry_interval=3600))
    procs += brokers
    for b in brokers:
        b.start()
    subs = [client(b) for b in brokers]
    for s in subs:
        s.subscribe("t/#", 1)
    pubs = [client(b) for b in brokers]
    wait_for(lambda: (pubs[0].publish("t/probe", b"-1", qos=1) == 0 and
                      any(m.topic == "t/probe" for m in subs[2].drain(0.3, 1))),
             what="a to c over b")
    time.sleep(1.0)
    for s in subs:
        s.drain(1.0)
    for i in range(30):
        pubs[i % 3].publish(f"t/{i}", str(i).encode(), qos=1)
    for s in subs:
        got = Counter(int(m.payload) for m in s.drain(1.5, 20) if m.topic != "t/probe")
        assert got == Counter(range(30)), f"{s.client_id}: {got}"
        # Ordinary clients never see the loop guard's property.
    m = MqttClient(brokers[1], version=5)
    m.connect()
    m.subscribe("t/#", 1)
    pubs[0].publish("t/props", b"p", qos=1)
    got = m.get(10)
    props = getattr(got.properties, "UserProperty", []) if got.properties else []
    assert not any(k == "makelaar-origin" for k, _ in props), props
    for c in subs + pubs + [m]:
        c.close()
