"""The quick-reconnect race: a client sends DISCONNECT, closes, and reconnects with the same
client id at once. What it sent on the old connection must count before the new CONNECT is
decided: no will after a normal DISCONNECT [MQTT-3.14.4-3], a session ended by Session Expiry 0
is not handed back [MQTT-3.1.2-23] [MQTT-3.2.2-3], a Session Expiry set on DISCONNECT applies
[MQTT-3.14.2-2], reason 0x04 publishes the will once.

Raw sockets keep DISCONNECT, close and the new CONNECT back to back; the new socket is opened
(and accepted) before the DISCONNECT is sent, which is the race at its tightest. Hundreds of
cycles per case: on a broker that decides the CONNECT first, a good share of them go wrong.
"""

import socket

import pytest

import mqtt_raw as R
from clients import unique

CYCLES = 300
# The wills of every cycle and a last marker go to this watcher, at QoS 0, in routing order:
# once the marker arrives, every will published before it has arrived too.
MARKER = b"marker"


class Watcher:
    def __init__(self, raw, topic):
        self.topic = topic
        self.r = raw(version=4, timeout=10)
        assert self.r.connect(unique("watch")).reason == 0
        assert self.r.subscribe([(f"{topic}/#", 0)]).reasons == [0]

    def wills_until_marker(self, last):
        """Publishes the marker from `last` (a connected raw client) and returns the payloads
        of every will seen before it."""
        last.publish(f"{self.topic}/marker", MARKER)
        seen = []
        while True:
            p = self.r.recv_type(R.PUBLISH, timeout=10)
            if p.payload == MARKER:
                return seen
            seen.append(p.payload)


def _connect_bytes(cid, version, clean, expiry, topic):
    will = dict(topic=f"{topic}/will", payload=b"offline", qos=0)
    props = [(R.SESSION_EXPIRY_INTERVAL, expiry)] if version == 5 else None
    return R.connect(cid, version=version, clean=clean, will=will, properties=props)


def _cycles(raw, broker, topic, version, clean, expiry, goodbye, n=CYCLES):
    """Connects, then n times: opens a new socket, sends `goodbye` on the old one, closes it,
    and sends CONNECT on the new one at once. Returns the new connections' CONNACKs and the
    last, still connected client."""
    cid = unique("qr")
    old = raw(version=version, timeout=10)
    old.send(_connect_bytes(cid, version, clean, expiry, topic))
    assert old.recv_type(R.CONNACK).reason == 0
    acks = []
    for _ in range(n):
        new = raw(version=version, timeout=10)
        old.sock.sendall(goodbye)
        old.sock.shutdown(socket.SHUT_WR)
        old.close()
        new.send(_connect_bytes(cid, version, clean, expiry, topic))
        acks.append(new.recv_type(R.CONNACK))
        old = new
    return acks, old


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_no_will_and_no_session_after_disconnect_and_immediate_reconnect(raw, broker, topic,
                                                                          version):
    """3.1.1 clean session 1 / 5.0 Session Expiry 0 reconnecting with Clean Start 0: every
    DISCONNECT counts, so no will is ever published and no session is ever present.
    [MQTT-3.14.4-3] [MQTT-3.1.2-10] [MQTT-3.1.2-23] [MQTT-3.2.2-3]"""
    w = Watcher(raw, topic)
    clean = version == 4
    goodbye = R.disconnect(version=version)
    acks, last = _cycles(raw, broker, topic, version, clean, 0, goodbye)
    assert all(a.reason == 0 for a in acks)
    present = sum(a.session_present for a in acks)
    assert present == 0, f"{present} of {len(acks)} reconnects got Session Present 1"
    wills = w.wills_until_marker(last)
    assert wills == [], f"{len(wills)} wills published after {len(acks)} normal DISCONNECTs"


def test_v5_session_expiry_0_on_disconnect_ends_the_session(raw, broker, topic):
    """CONNECT with Session Expiry 60, DISCONNECT sets it to 0: the session ends there
    [MQTT-3.14.2-2], so the immediate Clean Start 0 reconnect finds none [MQTT-3.2.2-3]."""
    w = Watcher(raw, topic)
    goodbye = R.disconnect(version=5, properties=[(R.SESSION_EXPIRY_INTERVAL, 0)])
    acks, last = _cycles(raw, broker, topic, 5, False, 60, goodbye)
    present = sum(a.session_present for a in acks)
    assert present == 0, f"{present} of {len(acks)} reconnects got a session the client ended"
    assert w.wills_until_marker(last) == []


def test_v5_session_expiry_set_on_disconnect_keeps_the_session(raw, broker, topic):
    """CONNECT with Session Expiry 10, DISCONNECT raises it to 300: the session is kept, and
    the Clean Start 0 reconnect has it (Session Present 1), with no will. [MQTT-3.14.2-2]"""
    w = Watcher(raw, topic)
    goodbye = R.disconnect(version=5, properties=[(R.SESSION_EXPIRY_INTERVAL, 300)])
    acks, last = _cycles(raw, broker, topic, 5, False, 10, goodbye)
    assert all(a.session_present for a in acks)
    assert w.wills_until_marker(last) == []


def test_v5_disconnect_with_will_publishes_it_exactly_once(raw, broker, topic):
    """DISCONNECT 0x04 (Disconnect with Will Message) then an immediate reconnect: the will
    is published once per cycle, never twice, never lost. [MQTT-3.14.4-3]"""
    w = Watcher(raw, topic)
    goodbye = R.disconnect(reason=0x04, version=5)
    n = 150
    acks, last = _cycles(raw, broker, topic, 5, False, 60, goodbye, n=n)
    assert all(a.session_present for a in acks)
    assert w.wills_until_marker(last) == [b"offline"] * n
