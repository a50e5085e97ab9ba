"""CONNECT / CONNACK: protocol versions, client identifiers, takeover, keep-alive."""

import time

import pytest

import mqtt_raw as R
from clients import unique


@pytest.mark.parametrize("version", [3, 4, 5], ids=["mqtt31", "mqtt311", "mqtt5"])
def test_protocol_versions_accepted(client, topic, version):
    """MQTT 3.1 ('MQIsdp', level 3), 3.1.1 (level 4) and 5.0 (level 5) clients connect and
    exchange a message. [MQTT-3.1.2-1] [MQTT-3.2.2-3]"""
    c = client(version=version)
    assert c.connack.reason_code == 0
    assert c.connack.session_present is False
    assert c.subscribe(f"{topic}/x", qos=1) == [1]
    c.publish(f"{topic}/x", b"hello", qos=1)
    m = c.get()
    assert (m.topic, m.payload, m.qos) == (f"{topic}/x", b"hello", 1)


def test_mqisdp_raw(raw):
    """A hand-made MQTT 3.1 CONNECT (protocol name MQIsdp, level 3) is accepted."""
    r = raw(version=3)
    ack = r.connect(unique("v31"), version=3)
    assert ack.reason == 0


def test_unknown_protocol_level_gets_connack_0x01(raw):
    """A 3.1.1-shaped CONNECT with protocol level 6: CONNACK 0x01 (unacceptable protocol level),
    then the connection is closed. [MQTT-3.1.2-2] (3.1.1); a 5.0 server may answer 0x84
    (Unsupported Protocol Version) instead [MQTT-3.1.2-2] (5.0)."""
    r = raw(version=4)
    r.send(R.connect(unique("lvl"), version=6))
    got = r.wait_closed(5)
    connacks = [p for p in got if p.type == R.CONNACK]
    assert connacks, f"expected a CONNACK before the close, got {got}"
    assert connacks[0].reason in (0x01, 0x84)


def test_unknown_protocol_level_v5_shaped(raw):
    """A CONNECT that looks like 5.0 (with properties) but carries level 7: a CONNACK with 0x84
    (Unsupported Protocol Version) or 0x01, then closed. [MQTT-3.1.2-2]"""
    r = raw(version=5)
    body = R.mstr("MQTT") + bytes([7, 0x02]) + R.u16(60) + R.varint(0) + R.mstr(unique("l7"))
    r.send(R.packet(R.CONNECT, 0, body))
    got = r.wait_closed(5)
    connacks = [p for p in got if p.type == R.CONNACK]
    assert connacks, f"expected a CONNACK before the close, got {got}"
    # The reason byte is the second byte of the CONNACK in both formats.
    assert connacks[0].raw[1] in (0x01, 0x84)


def test_wrong_protocol_name_closed(raw):
    """Protocol name other than 'MQTT' at level 4: the server may send CONNACK 0x01 but must
    close the connection. [MQTT-3.1.2-1]"""
    r = raw(version=4)
    r.send(R.connect(unique("name"), version=4, protocol_name="MQTX"))
    got = r.wait_closed(5)
    for p in got:
        assert p.type == R.CONNACK and p.reason != 0, f"unexpected {p}"


def test_v311_empty_client_id_clean_session_accepted(raw):
    """3.1.1: a zero-byte client id with CleanSession=1 is accepted and the server assigns one.
    [MQTT-3.1.3-6] [MQTT-3.1.3-7]"""
    r = raw(version=4)
    ack = r.connect("", clean=True)
    assert ack.reason == 0
    assert ack.session_present is False
    r.send(R.pingreq())
    assert r.recv_packet().type == R.PINGRESP


def test_v311_empty_client_id_without_clean_session_refused(raw):
    """3.1.1: a zero-byte client id with CleanSession=0 gets CONNACK 0x02 (identifier rejected)
    and the connection is closed. [MQTT-3.1.3-8]"""
    r = raw(version=4)
    r.send(R.connect("", clean=False))
    ack = r.recv_type(R.CONNACK)
    assert ack.reason == 0x02
    assert ack.session_present is False  # [MQTT-3.2.2-4]
    r.wait_closed(5)


def test_v5_empty_client_id_assigned(client):
    """5.0: an empty client id gets an Assigned Client Identifier in CONNACK. [MQTT-3.2.2-16]"""
    c = client(version=5, client_id="")
    assigned = getattr(c.connack.properties, "AssignedClientIdentifier", None)
    assert assigned, f"no Assigned Client Identifier in {c.connack!r}"


def test_v5_empty_client_id_assigned_ids_differ(raw):
    """Two clients with empty ids get two different assigned identifiers (checked on the wire).
    [MQTT-3.1.3-6] [MQTT-3.2.2-16]"""
    ids = []
    for _ in range(2):
        r = raw(version=5)
        ack = r.connect("")
        assert ack.reason == 0
        ids.append(ack.properties.get(R.ASSIGNED_CLIENT_IDENTIFIER))
    assert all(ids) and ids[0] != ids[1], ids


def test_takeover_v311_closes_old_connection(client, raw, topic):
    """A second connection with the same client id closes the first one. [MQTT-3.1.4-2]"""
    cid = unique("take")
    old = raw(version=4)
    assert old.connect(cid).reason == 0
    new = client(version=4, client_id=cid)
    assert new.connack.reason_code == 0
    old.wait_closed(5)
    # The new connection works.
    new.subscribe(f"{topic}/t", qos=1)
    new.publish(f"{topic}/t", b"still here", qos=1)
    assert new.get().payload == b"still here"


@pytest.mark.xfail_mosquitto(reason="2.0.11 closes the old connection without DISCONNECT 0x8E")
def test_takeover_v5_old_gets_disconnect_0x8e(client, raw, topic):
    """5.0 takeover: the old connection receives DISCONNECT 0x8E (Session taken over) and is
    closed [MQTT-3.1.4-3]. (Its will being published is in test_will.py.)"""
    cid = unique("take5")
    old = raw(version=5)
    assert old.connect(cid).reason == 0
    new = client(version=5, client_id=cid)
    assert new.connack.reason_code == 0
    d = old.closed_with(5)
    assert d is not None, "old connection was closed without DISCONNECT"
    assert d.reason == 0x8E


@pytest.mark.xfail_mosquitto(reason="checks keep-alives only every few seconds: a 1 s keep-alive "
                             "is enforced after about 5 s")
def test_keep_alive_expiry_disconnects_and_sends_will(client, raw, topic):
    """A client with Keep Alive 1 s that goes silent is disconnected after 1.5 x the keep-alive
    [MQTT-3.1.2-24], and its will is published [MQTT-3.1.2-8]. (test_will.py checks the will
    alone with a lenient deadline.)"""
    watcher = client(version=4)
    watcher.subscribe(f"{topic}/will", qos=0)
    r = raw(version=4)
    ack = r.connect(unique("ka"), keepalive=1,
                    will={"topic": f"{topic}/will", "payload": b"timed out"})
    assert ack.reason == 0
    start = time.monotonic()
    r.wait_closed(5)
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed <= 3.0, f"closed after {elapsed:.2f}s, expected about 1.5 s"
    m = watcher.get(3)
    assert m.payload == b"timed out"


def test_keep_alive_pings_keep_connection_open(raw):
    """A client that sends PINGREQ within its keep-alive stays connected and gets PINGRESP each
    time. [MQTT-3.1.2-23] [MQTT-3.12.4-1]"""
    r = raw(version=4)
    assert r.connect(unique("ping"), keepalive=1).reason == 0
    for _ in range(5):
        time.sleep(0.6)
        r.send(R.pingreq())
        assert r.recv_packet(2).type == R.PINGRESP


@pytest.mark.parametrize("asked", [120, 0])
def test_server_keep_alive_maximum(make_broker, raw, asked):
    """With max_keep_alive = 60, a 5.0 client asking for 120 s (or 0 = none) is told to use
    60 s through the Server Keep Alive property. [MQTT-3.2.2-21] [MQTT-3.1.2-21]"""
    b = make_broker(limits={"max_keep_alive": 60})
    r = raw(version=5, on=b)
    ack = r.connect(unique("ska"), keepalive=asked)
    assert ack.reason == 0
    assert ack.properties.get(R.SERVER_KEEP_ALIVE) == 60, ack


def test_server_keep_alive_not_lowered_below_request(make_broker, raw):
    """A client asking for less than the maximum keeps its own value: Server Keep Alive is
    absent or equal to the requested 30 s. [MQTT-3.2.2-21]"""
    b = make_broker(limits={"max_keep_alive": 60})
    r = raw(version=5, on=b)
    ack = r.connect(unique("ska"), keepalive=30)
    assert ack.reason == 0
    assert ack.properties.get(R.SERVER_KEEP_ALIVE, 30) == 30, ack


def test_connack_session_present_only_for_resumed_session(client):
    """Session Present is 0 for a new session and 1 when a persistent session is resumed;
    CleanSession=1 always gives 0. [MQTT-3.2.2-1] [MQTT-3.2.2-2] [MQTT-3.2.2-3]"""
    cid = unique("sp")
    c = client(version=4, client_id=cid, clean=False)
    assert c.connack.session_present is False
    c.disconnect()
    c = client(version=4, client_id=cid, clean=False)
    assert c.connack.session_present is True
    c.disconnect()
    c = client(version=4, client_id=cid, clean=True)
    assert c.connack.session_present is False
