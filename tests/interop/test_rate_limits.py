"""Rate limits, with their reason codes and $SYS counters: max_publish_rate (DISCONNECT 0x96)
and max_connection_rate per source address (CONNACK 0x9F). Makelaar only: Mosquitto has no
such limits."""

import time

import pytest

import mqtt_raw as R
from auth_files import fresh_source, try_connect
from brokers import BROKER_KIND
from clients import MqttClient, unique

pytestmark = pytest.mark.skipif(BROKER_KIND != "makelaar",
                                reason="Mosquitto has no rate limits")


def sys_value(b, topic, until, timeout=6):
    """Waits until the $SYS topic's value (published every second) satisfies `until`;
    returns it."""
    c = MqttClient(b, version=4)
    value = None
    try:
        c.connect()
        c.subscribe(topic, qos=0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in c.drain(quiet=0.3, timeout=1.2):
                value = int(m.payload.decode())
            if value is not None and until(value):
                return value
        raise AssertionError(f"{topic}: last value {value}")
    finally:
        c.close()


def test_a_client_publishing_too_fast_is_disconnected(make_broker, topic):
    b = make_broker(limits={"max_publish_rate": 20}, sys_interval=1)
    fast = R.RawClient(b.port, version=5, source=fresh_source())
    try:
        assert fast.connect(unique("fast")).reason == 0
        for i in range(200):
            if not fast.try_send(R.publish(f"{topic}/x", b"%d" % i, version=5)):
                break
        assert fast.closed_with(5).reason == 0x96
    finally:
        fast.close()
    # At the rate, a client carries on.
    steady = MqttClient(b, version=5)
    try:
        steady.connect()
        steady.subscribe(f"{topic}/y", qos=0)
        for i in range(30):
            steady.publish(f"{topic}/y", b"%d" % i, qos=0)
            time.sleep(0.06)
        assert len(steady.get_n(30)) == 30
        assert steady.is_connected
    finally:
        steady.close()
    sys_value(b, "$SYS/broker/clients/disconnected/publish_rate", lambda v: v >= 1)


@pytest.mark.parametrize("version,code", [(4, 3), (5, 0x9F)], ids=["v311", "v5"])
def test_connections_over_the_rate_of_one_address_are_refused(make_broker, version, code):
    b = make_broker(limits={"max_connection_rate": 3}, sys_interval=1)
    source = fresh_source()
    reasons = [try_connect(b, version=version, source=source) for _ in range(8)]
    assert reasons.count(0) >= 3 and code in reasons, reasons
    # Another address is not affected, and the rate comes back.
    assert try_connect(b, version=version) == 0
    time.sleep(1.1)
    assert try_connect(b, version=version, source=source) == 0
    sys_value(b, "$SYS/broker/clients/refused/connection_rate", lambda v: v >= 1)


def test_failed_logins_are_counted(tmp_path, make_broker):
    from auth_files import mosquitto_passwd
    passwd = mosquitto_passwd(tmp_path / "passwd", {"alice": ("s3cret", [])})
    b = make_broker(password_file=str(passwd), allow_anonymous=True, sys_interval=1)
    assert try_connect(b, "alice", "wrong") == 4
    assert try_connect(b, "nobody", "x") == 4
    sys_value(b, "$SYS/broker/clients/refused/login", lambda v: v == 2)
