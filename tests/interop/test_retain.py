"""Retained messages: storage, replacement, clearing, retain flag on delivery, 5.0 retain
handling and retain-as-published."""

import time

import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions

import mqtt_raw as R
from brokers import BROKER_KIND
from clients import unique
from http_client import wait_for


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_late_subscriber_gets_retained_with_flag(client, topic, version):
    """A retained message is stored and sent to a later subscriber with RETAIN=1.
    [MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-8] (3.1.1)"""
    pub = client(version=version)
    pub.publish(f"{topic}/r", b"21.5", qos=1, retain=True)
    pub.disconnect()
    sub = client(version=version)
    sub.subscribe(f"{topic}/r", qos=1)
    m = sub.get()
    assert (m.topic, m.payload, m.retain, m.qos) == (f"{topic}/r", b"21.5", True, 1)
    sub.expect_none(0.3)


def test_one_retained_message_per_topic(client, topic):
    """A new retained message replaces the previous one on the same topic. [MQTT-3.3.1-5]"""
    pub = client(version=4)
    for v in (b"first", b"second", b"third"):
        pub.publish(f"{topic}/r", v, qos=1, retain=True)
    sub = client(version=4)
    sub.subscribe(f"{topic}/r", qos=1)
    assert sub.get().payload == b"third"
    sub.expect_none(0.5)


def test_empty_payload_clears_retained(client, topic):
    """A retained PUBLISH with an empty payload removes the retained message and is not itself
    stored. [MQTT-3.3.1-10] [MQTT-3.3.1-11] (3.1.1)"""
    pub = client(version=4)
    pub.publish(f"{topic}/r", b"something", qos=1, retain=True)
    pub.publish(f"{topic}/r", b"", qos=1, retain=True)
    sub = client(version=4)
    sub.subscribe(f"{topic}/#", qos=1)
    sub.expect_none(0.7)


def test_wildcard_subscription_gets_every_matching_retained(client, topic):
    """A wildcard subscription receives the retained message of every matching topic, and only
    those. [MQTT-3.3.1-6] [MQTT-3.8.4-4]"""
    pub = client(version=4)
    for t in ("a/x", "a/y", "a/y/z", "b/x"):
        pub.publish(f"{topic}/{t}", t.encode(), qos=1, retain=True)
    sub = client(version=4)
    sub.subscribe(f"{topic}/a/#", qos=1)
    got = sorted((m.topic, m.retain) for m in sub.get_n(3))
    assert got == [(f"{topic}/a/x", True), (f"{topic}/a/y", True), (f"{topic}/a/y/z", True)]
    sub.expect_none(0.5)


def test_retained_delivered_at_minimum_qos(client, topic):
    """A retained message is delivered at the minimum of its QoS and the subscription's.
    [MQTT-3.8.4-6] (3.1.1)"""
    pub = client(version=4)
    pub.publish(f"{topic}/q2", b"two", qos=2, retain=True)
    pub.publish(f"{topic}/q0", b"zero", qos=0, retain=True)
    sub = client(version=4)
    sub.subscribe(f"{topic}/q2", qos=1)
    m = sub.get()
    assert (m.payload, m.qos) == (b"two", 1)
    sub.subscribe(f"{topic}/q0", qos=2)
    m = sub.get()
    assert (m.payload, m.qos) == (b"zero", 0)


def test_live_delivery_has_retain_0_for_v311(client, topic):
    """3.1.1: a retained message delivered because of an existing subscription has RETAIN=0.
    [MQTT-3.3.1-9] (3.1.1)"""
    sub = client(version=4)
    sub.subscribe(f"{topic}/live", qos=1)
    client(version=4).publish(f"{topic}/live", b"now", qos=1, retain=True)
    m = sub.get()
    assert (m.payload, m.retain) == (b"now", False)


def test_retained_flag_on_wire_raw(client, raw, topic):
    """On the wire: the PUBLISH sent on subscribe has the RETAIN bit set. [MQTT-3.3.1-8]"""
    client(version=4).publish(f"{topic}/w", b"wire", qos=1, retain=True)
    r = raw(version=4)
    assert r.connect(unique("rw")).reason == 0
    r.subscribe([(f"{topic}/w", 0)])
    p = r.recv_type(R.PUBLISH)
    assert (p.payload, p.retain, p.qos) == (b"wire", True, 0)


def test_v5_retain_handling_0_sends_on_every_subscribe(client, topic):
    """5.0 Retain Handling 0: retained messages are sent at every subscribe, also when the
    subscription already exists. [MQTT-3.3.1-9] (5.0)"""
    client(version=5).publish(f"{topic}/rh", b"kept", qos=1, retain=True)
    sub = client(version=5)
    opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
    sub.subscribe(f"{topic}/rh", options=opts)
    assert sub.get().payload == b"kept"
    sub.subscribe(f"{topic}/rh", options=opts)
    m = sub.get()
    assert (m.payload, m.retain) == (b"kept", True)


def test_v5_retain_handling_1_only_for_new_subscription(client, topic):
    """5.0 Retain Handling 1: retained messages are sent only if the subscription did not
    already exist. [MQTT-3.3.1-10] (5.0)"""
    client(version=5).publish(f"{topic}/rh", b"kept", qos=1, retain=True)
    sub = client(version=5)
    opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
    sub.subscribe(f"{topic}/rh", options=opts)
    assert sub.get().payload == b"kept"
    sub.subscribe(f"{topic}/rh", options=opts)
    sub.expect_none(0.7)


def test_v5_retain_handling_2_never_sends(client, topic):
    """5.0 Retain Handling 2: retained messages are not sent at subscribe, but live messages
    still are. [MQTT-3.3.1-11] (5.0)"""
    pub = client(version=5)
    pub.publish(f"{topic}/rh", b"kept", qos=1, retain=True)
    sub = client(version=5)
    opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
    sub.subscribe(f"{topic}/rh", options=opts)
    sub.expect_none(0.7)
    pub.publish(f"{topic}/rh", b"live", qos=1)
    assert sub.get().payload == b"live"


@pytest.mark.parametrize("rap", [False, True], ids=["rap0", "rap1"])
def test_v5_retain_as_published(client, topic, rap):
    """5.0 Retain As Published: on live delivery the RETAIN flag is kept when RAP=1 and cleared
    when RAP=0 [MQTT-3.3.1-12] [MQTT-3.3.1-13] (5.0); a non-retained message always arrives with
    RETAIN=0."""
    sub = client(version=5)
    sub.subscribe(f"{topic}/rap", options=SubscribeOptions(qos=1, retainAsPublished=rap))
    pub = client(version=5)
    pub.publish(f"{topic}/rap", b"retained", qos=1, retain=True)
    m = sub.get()
    assert (m.payload, m.retain) == (b"retained", rap)
    pub.publish(f"{topic}/rap", b"plain", qos=1, retain=False)
    m = sub.get()
    assert (m.payload, m.retain) == (b"plain", False)


def test_v5_retained_on_subscribe_has_flag_even_without_rap(client, topic):
    """5.0: a retained message sent because of a new subscription has RETAIN=1 whatever the
    Retain As Published option. [MQTT-3.3.1-9] (5.0: sent with RETAIN set to 1)"""
    client(version=5).publish(f"{topic}/x", b"kept", qos=1, retain=True)
    sub = client(version=5)
    sub.subscribe(f"{topic}/x", options=SubscribeOptions(qos=1, retainAsPublished=False))
    m = sub.get()
    assert (m.payload, m.retain) == (b"kept", True)


def test_retained_messages_with_v5_properties_kept(client, topic):
    """5.0 properties of a retained message (content type, user properties) are delivered to a
    late subscriber. [MQTT-3.3.2-20] [MQTT-3.3.2-17] (5.0)"""
    from clients import props
    from paho.mqtt.packettypes import PacketTypes
    pub = client(version=5)
    pub.publish(f"{topic}/p", b"{}", qos=1, retain=True,
                properties=props(PacketTypes.PUBLISH, ContentType="application/json",
                                 UserProperty=[("k", "v")]))
    sub = client(version=5)
    sub.subscribe(f"{topic}/p", qos=1)
    m = sub.get()
    assert m.properties.ContentType == "application/json"
    assert m.properties.UserProperty == [("k", "v")]


def _retain_expiring(r, topic, payload, expiry=None, packet_id=1):
    props = [(R.MESSAGE_EXPIRY_INTERVAL, expiry)] if expiry is not None else None
    r.publish(topic, payload, qos=1, retain=True, packet_id=packet_id, properties=props)
    assert r.recv_type(R.PUBACK).packet_id == packet_id


@pytest.mark.skipif(BROKER_KIND != "makelaar",
                    reason="Mosquitto has no max_retained_messages; /metrics is Makelaar's")
def test_expired_retained_message_frees_its_place_without_sys(make_broker, topic):
    """With sys_interval = 0 (no $SYS tick), a retained message whose Message Expiry Interval
    (1 s) has passed is removed on its own timer: it no longer counts against
    max_retained_messages = 1, so another topic's retained message is kept again. (5.0
    section 3.3.2.3.3 [MQTT-3.3.2-5]: an expired message is not delivered.)"""
    b = make_broker(sys_interval=0, limits={"max_retained_messages": 1})
    r = R.RawClient(b.port, version=5)
    try:
        assert r.connect(unique("exp"), version=5).reason == 0
        _retain_expiring(r, f"{topic}/short", b"short-lived", expiry=1)
        _retain_expiring(r, f"{topic}/first-try", b"no room", packet_id=2)
        assert r.subscribe([(f"{topic}/first-try", 1)], packet_id=3).reasons == [1]
        r.expect_nothing(0.3)  # the limit held: not kept
        time.sleep(2.0)
        _retain_expiring(r, f"{topic}/second-try", b"room again", packet_id=4)
        assert r.subscribe([(f"{topic}/second-try", 1)], packet_id=5).reasons == [1]
        p = r.recv_type(R.PUBLISH)
        assert (p.payload, p.retain) == (b"room again", True)
    finally:
        r.close()


@pytest.mark.skipif(BROKER_KIND != "makelaar", reason="/metrics is Makelaar's")
def test_expired_retained_message_leaves_the_count(make_broker, topic):
    """The metrics' retained count drops once a retained message expires, with no $SYS tick
    (sys_interval = 0)."""
    b = make_broker(http=True, sys_interval=0)
    r = R.RawClient(b.port, version=5)
    try:
        assert r.connect(unique("expm"), version=5).reason == 0
        _retain_expiring(r, f"{topic}/short", b"short-lived", expiry=1)
        wait_for(b, lambda s: s("makelaar_retained_messages") == 1)
        started = time.monotonic()
        wait_for(b, lambda s: s("makelaar_retained_messages") == 0, timeout=4)
        assert time.monotonic() - started < 3
    finally:
        r.close()
