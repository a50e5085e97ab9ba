"""[limits] max_topic_levels: how deep a topic name or filter may be (default 200, as
Mosquitto's built-in limit). A deeper one is a protocol violation: the client is disconnected
(5.0 with the reason code), a will refused with the CONNECT; counted in /metrics and logged
with the limit's name. Makelaar only: Mosquitto has no setting for it."""

import pytest

import mqtt_raw as R
from brokers import BROKER_KIND
from clients import unique
from http_client import wait_for

pytestmark = pytest.mark.skipif(BROKER_KIND != "makelaar",
                                reason="Mosquitto has no max_topic_levels setting")

BROKER_CONFIG = {"http": True}


def deep(prefix, levels):
    """A topic of `levels` levels under `prefix` (one level)."""
    return "/".join([prefix] + ["l"] * (levels - 1))


def _disconnected_with(r, reason):
    got = r.wait_closed(5)
    assert [(p.type, p.reason) for p in got] == [(R.DISCONNECT, reason)], got


def test_default_limit_is_200_levels(broker, raw, client, topic):
    """A 5.0 PUBLISH to a topic name of 201 levels gets DISCONNECT 0x90 Topic Name invalid
    ("correctly formed, but is not accepted by this Client or Server", 5.0 section 3.14.2.1)
    and nothing is delivered; 200 levels are fine. Counted by reason in /metrics; the log
    names max_topic_levels and how to raise it."""
    watcher = client(version=5)
    watcher.subscribe(f"{topic}/#", qos=0)
    before = wait_for(broker, lambda s: True)
    ok = raw(version=5)
    assert ok.connect(unique("ok200")).reason == 0
    ok.publish(deep(topic, 200), b"200 levels", qos=1, version=5)
    assert ok.recv_type(R.PUBACK).reason == 0
    assert watcher.get().payload == b"200 levels"
    r = raw(version=5)
    assert r.connect(unique("deep201")).reason == 0
    r.publish(deep(topic, 201), b"201 levels", qos=1, version=5)
    _disconnected_with(r, 0x90)
    watcher.expect_none(0.3)
    reason = "topic_name_invalid"
    n = before("makelaar_disconnects_total", reason=reason)
    wait_for(broker, lambda s: s("makelaar_disconnects_total", reason=reason) == n + 1)
    log = broker.stderr_path.read_text(errors="replace")
    assert "max_topic_levels" in log and "raise max_topic_levels in [limits]" in log, \
        broker.stderr_tail()


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_a_65536_level_filter_is_refused(raw, client, topic, version):
    """SUBSCRIBE with a filter of 65,536 levels (65,535 '/'): the whole SUBSCRIBE is refused and
    the connection closed, 5.0 with DISCONNECT 0x8F Topic Filter invalid ("correctly formed,
    but is not accepted by this Server", section 3.14.2.1), 3.1.1 without a reply
    [MQTT-4.8.0-1]. The valid filter beside it is not subscribed."""
    cid = unique("deepf")
    r = raw(version=version)
    props = [(R.SESSION_EXPIRY_INTERVAL, 60)] if version == 5 else None
    assert r.connect(cid, clean=False, version=version, properties=props).reason == 0
    r.send(R.subscribe(1, [(f"{topic}/ok", 1), ("/" * 65_535, 0)], version=version))
    if version == 5:
        _disconnected_with(r, 0x8F)
    else:
        assert r.wait_closed(5) == []
    again = raw(version=version)
    assert again.connect(cid, clean=False, version=version, properties=props).session_present
    client(version=4).publish(f"{topic}/ok", b"never subscribed", qos=1)
    again.expect_nothing(0.5)


def test_a_deep_unsubscribe_is_refused(raw, topic):
    """UNSUBSCRIBE of a filter over the limit closes the connection like SUBSCRIBE (0x8F)."""
    r = raw(version=5)
    assert r.connect(unique("deepu"), version=5).reason == 0
    r.send(R.unsubscribe(1, [deep(topic, 201)], version=5))
    _disconnected_with(r, 0x8F)


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_a_deep_will_topic_refuses_the_connect(raw, client, topic, version):
    """A will topic over the limit refuses the CONNECT: 5.0 CONNACK 0x90 ("The Will Topic Name
    is not malformed, but is not accepted by this Server", section 3.2.2.2), 3.1.1 CONNACK 3.
    No will is ever published."""
    watcher = client(version=5)
    watcher.subscribe(f"{topic}/#", qos=0)
    r = raw(version=version)
    ack = r.connect(unique("deepw"), version=version,
                    will={"topic": deep(topic, 201), "payload": b"gone"})
    assert ack.reason == (0x90 if version == 5 else 3)
    assert r.wait_closed(5) == []
    watcher.expect_none(0.3)


def test_the_limit_is_configurable(make_broker, topic):
    """max_topic_levels = 3 refuses a fourth level; 0 removes the limit (300 levels pass)."""
    b = make_broker(limits={"max_topic_levels": 3})
    r = R.RawClient(b.port, version=5)
    try:
        assert r.connect(unique("l3"), version=5).reason == 0
        assert r.subscribe([("a/b/+", 0)]).reasons == [0]
        r.send(R.subscribe(2, [("a/b/c/#", 0)], version=5))
        _disconnected_with(r, 0x8F)
    finally:
        r.close()
    b = make_broker(limits={"max_topic_levels": 0})
    r = R.RawClient(b.port, version=5)
    try:
        assert r.connect(unique("l0"), version=5).reason == 0
        assert r.subscribe([(deep(topic, 300), 1)]).reasons == [1]
        r.publish(deep(topic, 300), b"deep", qos=0, version=5)
        assert r.recv_type(R.PUBLISH).payload == b"deep"
    finally:
        r.close()
