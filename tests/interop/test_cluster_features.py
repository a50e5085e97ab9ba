"""What a client sees of MQTT 5.0's message and subscription features, and of each node's
authentication and ACL files, when publisher and subscriber are on different cluster nodes
(issue 14, "What users get"). Three real NATS servers, two Makelaar nodes started with the
same password and ACL files, paho clients."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from brokers import find_makelaar
from clients import MqttClient, unique
from test_cluster import (NatsCluster, Node, cleaned_up, probe_until_received,  # noqa: F401
                          pytestmark)

PASSWORD = "s3cret-pw"

# The same files on every node (docs/cluster.md: "authentication and ACLs from each node's
# configuration, identical files on every node").
ACL = """\
user admin
topic readwrite #

user reader
topic read open/#

user writer
topic write open/#
topic write closed/#
"""


def props(kind, **values):
    p = Properties(kind)
    for k, v in values.items():
        setattr(p, k, v)
    return p


@pytest.fixture(scope="module")
def nodes():
    workdir = Path(tempfile.mkdtemp(prefix="mk-cluster-feat-"))
    passwd = workdir / "passwd"
    for i, user in enumerate(("admin", "reader", "writer")):
        flags = ["-c"] if i == 0 else []
        subprocess.run([find_makelaar(), "passwd", *flags, "-H", "sha512-pbkdf2", "-b",
                        str(passwd), user, PASSWORD], check=True)
    acl = workdir / "acl"
    acl.write_text(ACL)
    nats = NatsCluster(workdir)
    started = []
    with cleaned_up(nats, started, workdir):
        for i, name in enumerate(["a", "b"]):
            n = Node(workdir, nats, name, servers=[nats.urls[i]],
                     args=("--password-file", str(passwd), "--acl-file", str(acl)))
            started.append(n)
            n.wait_serving()
        yield started


def client(node, user="admin", **kw) -> MqttClient:
    c = MqttClient(node, username=user, password=PASSWORD, **kw)
    c.connect()
    return c


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_v5_message_properties_cross_nodes(nodes, qos):
    """[MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-4]: the user properties,
    response topic, correlation data, content type and payload format indicator reach the
    subscriber unaltered; the expiry interval the subscriber sees is what is left of it
    [MQTT-3.3.2-6]; the subscription identifier is the subscriber's own [MQTT-3.3.4-3]."""
    a, b = nodes
    base = unique(f"props{qos}")
    sub = client(b)
    sub.subscribe(f"{base}/#", options=SubscribeOptions(qos=qos),
                  properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=4242))
    pub = client(a)
    probe_until_received(pub, sub, f"{base}/probe")
    p = props(PacketTypes.PUBLISH, UserProperty=[("k1", "v1"), ("k1", "v2"), ("z", "last")],
              ResponseTopic=f"{base}/reply", CorrelationData=b"\x00corr\xff",
              ContentType="application/x-test", PayloadFormatIndicator=1,
              MessageExpiryInterval=120)
    pub.publish(f"{base}/x", "héllo".encode(), qos=qos, properties=p)
    m = sub.get()
    assert m.topic == f"{base}/x" and m.payload == "héllo".encode() and m.qos == qos
    got = m.properties
    # Order and repeats kept [MQTT-3.3.2-18].
    assert got.UserProperty == [("k1", "v1"), ("k1", "v2"), ("z", "last")]
    assert got.ResponseTopic == f"{base}/reply"
    assert got.CorrelationData == b"\x00corr\xff"
    assert got.ContentType == "application/x-test"
    assert got.PayloadFormatIndicator == 1
    assert 110 <= got.MessageExpiryInterval <= 120
    assert got.SubscriptionIdentifier == [4242]
    sub.expect_none()
    for c in (sub, pub):
        c.close()


def test_an_expired_message_is_not_delivered_across_nodes(nodes):
    """[MQTT-3.3.2-5]: a message whose expiry passed while it waited for an offline
    persistent session on another node is not delivered when the session returns."""
    a, b = nodes
    base = unique("exp")
    cid = unique("expsub")
    expiry = props(PacketTypes.CONNECT, SessionExpiryInterval=300)
    sub = MqttClient(b, client_id=cid, clean=False, username="admin", password=PASSWORD)
    sub.connect(properties=expiry)
    sub.subscribe(f"{base}/#", qos=1)
    pub = client(a)
    probe_until_received(pub, sub, f"{base}/probe")
    sub.disconnect()
    pub.publish(f"{base}/short", b"short", qos=1,
                properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1))
    pub.publish(f"{base}/long", b"long", qos=1,
                properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=600))
    time.sleep(2.5)
    back = MqttClient(b, client_id=cid, clean=False, username="admin", password=PASSWORD)
    back.connect(properties=expiry)
    assert back.connack.session_present
    got = [m.payload for m in back.drain(quiet=1.5)]
    assert got == [b"long"]
    for c in (back, pub):
        c.close()


def test_no_local_and_retain_as_published_across_nodes(nodes):
    """[MQTT-3.8.3-3] No Local: a client does not get its own messages back, while a
    subscriber on another node does. [MQTT-3.3.1-12] [MQTT-3.3.1-13] Retain As Published:
    a live retained message from another node keeps its RETAIN flag only for the
    subscription that asked for it."""
    a, b = nodes
    base = unique("nlrap")
    me = client(a)
    me.subscribe(f"{base}/#", options=SubscribeOptions(qos=1, noLocal=True))
    rap = client(b)
    rap.subscribe(f"{base}/#", options=SubscribeOptions(qos=1, retainAsPublished=True))
    plain = client(b)
    plain.subscribe(f"{base}/#", options=SubscribeOptions(qos=1))
    probe_until_received(me, rap, f"{base}/probe")
    plain.drain(quiet=0.5)
    me.publish(f"{base}/state", b"on", qos=1, retain=True)
    assert rap.get().retain is True
    assert plain.get().retain is False
    me.expect_none(timeout=1.0)
    # Another client's message does reach the No Local subscriber.
    other = client(b)
    other.publish(f"{base}/other", b"x", qos=1)
    assert me.get().payload == b"x"
    other.publish(f"{base}/state", b"", qos=1, retain=True)
    for c in (me, rap, plain, other):
        c.close()


def test_each_nodes_password_file_decides_who_connects(nodes):
    """[MQTT-3.1.4-2]: a wrong password, or no username where anonymous clients are not
    allowed, is refused on every node (5.0: CONNACK 0x86 Bad user name or password, 0x87 Not
    authorized)."""
    for node in nodes:
        ok = client(node, user="reader")
        ok.close()
        bad = MqttClient(node, username="reader", password="wrong")
        ack = bad.connect(expect_success=False)
        assert ack is not None and ack.reason_code == 0x86, ack
        bad.stop()
        anon = MqttClient(node)
        ack = anon.connect(expect_success=False)
        assert ack is not None and ack.reason_code in (0x86, 0x87), ack
        anon.stop()


def test_each_nodes_acl_decides_what_crosses(nodes):
    """The ACL of the subscriber's node decides what it receives, the ACL of the publisher's
    node what may be published: a message refused on one node reaches no subscriber on the
    other (5.0: PUBACK 0x87 Not authorized [MQTT-3.4.2-1])."""
    a, b = nodes
    base = unique("acl")
    reader = client(b, user="reader")
    reader.subscribe("#", qos=1)
    watcher = client(b)
    watcher.subscribe(f"{base}/#", qos=1)
    watcher.subscribe(f"open/{base}/#", qos=1)
    writer = client(a, user="writer")
    admin = client(a)
    probe_until_received(admin, watcher, f"{base}/probe")
    reader.drain(quiet=0.5)
    # Allowed to write, and the reader may read only open/#.
    assert writer.publish(f"open/{base}/1", b"open", qos=1) == 0
    assert writer.publish(f"closed/{base}/1", b"closed", qos=1) == 0
    got = reader.drain(quiet=1.5)
    assert [(m.topic, m.payload) for m in got] == [(f"open/{base}/1", b"open")]
    # Not allowed to write here: refused on its node, so the other node's watcher (who may
    # read everything) never sees it.
    assert writer.publish(f"{base}/denied", b"denied", qos=1) == 0x87
    got = [m.payload for m in watcher.drain(quiet=1.5)]
    assert b"denied" not in got
    assert b"open" in got
    for c in (reader, watcher, writer, admin):
        c.close()
