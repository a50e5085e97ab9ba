"""MQTT 3.1 (protocol name MQIsdp, level 3) where it differs from 3.1.1: the DUP flag on
retried PUBREL, SUBSCRIBE and UNSUBSCRIBE packets."""

import mqtt_raw as R
from clients import unique

# MQTT 3.1 section 2.1: "This flag is set when the client or server attempts to re-deliver a
# PUBLISH, PUBREL, SUBSCRIBE or UNSUBSCRIBE message"; their QoS bits stay 1.
DUP = 0x08
QOS1 = 0x02


def _connected_v31(raw):
    r = raw(version=3)
    assert r.connect(unique("v31"), version=3).reason == 0
    return r


def test_retried_pubrel_with_dup_completes_the_qos2_exchange(raw, client, topic):
    """A 3.1 publisher that resends its PUBREL with DUP set (0x6A) gets PUBCOMP, the exchange
    completes and the message is delivered once; the connection stays open. The fixed PUBREL
    flags 0010 of [MQTT-2.2.2-1] are 3.1.1's, not 3.1's."""
    sub = client(version=4)
    sub.subscribe(f"{topic}/q2", qos=2)
    r = _connected_v31(raw)
    r.publish(f"{topic}/q2", b"exactly once", qos=2, packet_id=7, version=3)
    assert r.recv_type(R.PUBREC).packet_id == 7
    r.send(R.packet(R.PUBREL, QOS1 | DUP, R.u16(7)))
    assert r.recv_type(R.PUBCOMP).packet_id == 7
    assert [m.payload for m in sub.drain(quiet=0.5)] == [b"exactly once"]
    # Still connected: a ping is answered.
    r.send(R.pingreq())
    r.recv_type(R.PINGRESP)


def test_retried_subscribe_and_unsubscribe_with_dup_are_answered(raw, client, topic):
    """SUBSCRIBE (0x8A) and UNSUBSCRIBE (0xAA) with DUP set, as a 3.1 client retries them, are
    acknowledged like the first attempt and take effect."""
    r = _connected_v31(raw)
    body = R.u16(3) + R.mstr(f"{topic}/s") + bytes([1])
    r.send(R.packet(R.SUBSCRIBE, QOS1 | DUP, body))
    ack = r.recv_type(R.SUBACK)
    assert (ack.packet_id, ack.reasons) == (3, [1])
    client(version=4).publish(f"{topic}/s", b"subscribed", qos=1)
    p = r.recv_type(R.PUBLISH)
    assert p.payload == b"subscribed"
    r.send(R.ack(R.PUBACK, p.packet_id))
    r.send(R.packet(R.UNSUBSCRIBE, QOS1 | DUP, R.u16(4) + R.mstr(f"{topic}/s")))
    assert r.recv_type(R.UNSUBACK).packet_id == 4
    client(version=4).publish(f"{topic}/s", b"unsubscribed", qos=1)
    r.expect_nothing(0.5)


def test_dup_on_pubrel_is_still_malformed_from_v311(raw):
    """From 3.1.1 on the PUBREL flags are fixed (0010); DUP set is a malformed packet: closed
    without an answer. [MQTT-2.2.2-1] [MQTT-2.2.2-2]"""
    r = raw(version=4)
    assert r.connect(unique("v311dup")).reason == 0
    r.publish("dup/x", b"x", qos=2, packet_id=7)
    assert r.recv_type(R.PUBREC).packet_id == 7
    r.send(R.packet(R.PUBREL, QOS1 | DUP, R.u16(7)))
    assert r.wait_closed(5) == []
