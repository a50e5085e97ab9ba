"""PROXY protocol v1 and v2 (`proxy_protocol = true`) on TCP, TLS and WebSocket listeners: the
header is read exactly (not one byte of the MQTT or TLS that follows), the client address it
names is the one the broker uses (log lines, max_connection_rate), and a connection without a
valid header is refused while the broker serves everyone else. Makelaar only: the generated
Mosquitto configuration has no such listener."""

import re
import ssl
import time

import pytest

import mqtt_raw as R
import ws_raw as W
from brokers import BROKER_KIND, free_port
from clients import unique

pytestmark = pytest.mark.skipif(BROKER_KIND != "makelaar",
                                reason="the Mosquitto test configuration has no PROXY listener")

PROXY_PORT = free_port()
PROXY_TLS_PORT = free_port()
PROXY_WS_PORT = free_port()
BROKER_CONFIG = {
    "listener": [
        {"url": f"mqtt://127.0.0.1:{PROXY_PORT}", "proxy_protocol": True},
        {"url": f"mqtts://127.0.0.1:{PROXY_TLS_PORT}", "proxy_protocol": True},
        {"url": f"ws://127.0.0.1:{PROXY_WS_PORT}/mqtt", "proxy_protocol": True},
    ],
}


def connect_through(port, header, version=5, tls_context=None, source=None):
    """Sends `header`, then a CONNECT; the CONNACK's reason, or None if the broker closed."""
    r = R.RawClient(port, version=version, preamble=header, tls_context=tls_context,
                    source=source)
    try:
        r.send(R.connect(unique("pp"), version=version))
        try:
            return r.recv_type(R.CONNACK).reason
        except R.Closed:
            return None
    finally:
        r.close()


def logged(broker, pattern, timeout=3.0):
    """Waits until the broker's log has a line matching `pattern`; the matches."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.findall(pattern, broker.stderr_path.read_text())
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.parametrize("header,peer", [
    (W.proxy_v1("198.51.100.7", sport=41000), "198.51.100.7:41000"),
    (W.proxy_v1("2001:db8::5", dst="::1", sport=41001), r"\[2001:db8::5\]:41001"),
    (W.proxy_v2("198.51.100.8", sport=41002), "198.51.100.8:41002"),
    (W.proxy_v2("2001:db8::6", dst="::1", sport=41003), r"\[2001:db8::6\]:41003"),
    # TLVs after the addresses (here PP2_TYPE_AUTHORITY and a NOOP) are skipped.
    (W.proxy_v2("198.51.100.9", sport=41004, tlvs=b"\x02\x00\x07example\x04\x00\x03abc"),
     "198.51.100.9:41004"),
], ids=["v1-tcp4", "v1-tcp6", "v2-tcp4", "v2-tcp6", "v2-tlvs"])
def test_the_proxied_address_is_the_client(broker, header, peer):
    assert connect_through(PROXY_PORT, header) == 0
    assert logged(broker, rf"client connected .*peer={peer} .*transport=\"?tcp\b")


def test_local_and_unknown_keep_the_socket_address(broker):
    """v2 LOCAL (a health check of the proxy itself) and v1 UNKNOWN: the connection's own
    address stands."""
    source = "127.0.7.1"
    assert connect_through(PROXY_PORT, W.proxy_v2("198.51.100.10", local=True),
                           source=source) == 0
    assert connect_through(PROXY_PORT, b"PROXY UNKNOWN\r\n", source=source) == 0
    assert len(logged(broker, r"client connected .*peer=127\.0\.7\.1:\d+ .*transport=\"?tcp\b")) == 2


def test_header_and_connect_in_one_segment(broker):
    """The header is read exactly: a CONNECT in the same segment is not lost."""
    for header in (W.proxy_v1("198.51.100.11"), W.proxy_v2("198.51.100.12")):
        r = R.RawClient(PROXY_PORT, version=4)
        try:
            r.send(header + R.connect(unique("seg")) + R.pingreq())
            assert r.recv_type(R.CONNACK).reason == 0
            assert r.recv_type(R.PINGRESP)
        finally:
            r.close()


@pytest.mark.parametrize("start", [
    R.connect("no-header"),
    b"PROXY TCP4 198.51.100.1 127.0.0.1 1 2 3\r\n",
    b"PROXY TCP4 198.51.100.300 127.0.0.1 1 2\r\n",
    b"PROXY TCP6 198.51.100.1 127.0.0.1 1 2\r\n",
    b"PROXY " + b"x" * 120,
    b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12),  # version 3
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x0c" + bytes(12),  # IPv6 in an IPv4-sized block
    b"GET / HTTP/1.1\r\n\r\n",
], ids=["mqtt", "v1-extra-field", "v1-bad-ip", "v1-wrong-family", "v1-too-long",
        "v2-version", "v2-short", "http"])
def test_a_connection_without_a_valid_header_is_refused(broker, start):
    r = R.RawClient(PROXY_PORT, version=4)
    try:
        r.send(start + R.connect(unique("bad")))
        assert r.wait_closed() == []
    finally:
        r.close()
    # Everyone else is served.
    assert connect_through(PROXY_PORT, W.proxy_v1("198.51.100.13")) == 0
    assert connect_through(broker.port, b"") == 0


def test_the_missing_header_is_logged_once(broker):
    for _ in range(3):
        assert connect_through(PROXY_PORT, b"", version=4) is None
    assert len(logged(broker, r"expects a PROXY protocol header.*said once")) == 1


def test_tls_behind_a_proxy(broker, certs):
    """The header comes before the TLS handshake."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs / "ca.crt"))
    assert connect_through(PROXY_TLS_PORT, W.proxy_v2("198.51.100.14", sport=41014),
                           tls_context=ctx) == 0
    assert logged(broker, r"client connected .*peer=198\.51\.100\.14:41014 .*transport=\"?tls\b")
    # Without the header, the handshake does not even start.
    with pytest.raises((ssl.SSLError, OSError)):
        R.RawClient(PROXY_TLS_PORT, tls_context=ctx, timeout=3)


def test_websocket_behind_a_proxy(broker):
    c = W.WsClient(PROXY_WS_PORT, preamble=W.proxy_v1("198.51.100.15", sport=41015))
    try:
        assert c.connect(unique("ppws")).reason == 0
    finally:
        c.close()
    assert logged(broker, r"client connected .*peer=198\.51\.100\.15:41015 .*transport=\"?ws\b")


def test_the_connection_rate_is_counted_per_proxied_address(make_broker):
    """All connections come from one proxy; max_connection_rate counts the clients it names."""
    port = free_port()
    make_broker(limits={"max_connection_rate": 1},
                listener=[{"url": f"mqtt://127.0.0.1:{port}", "proxy_protocol": True}])
    proxy = "127.0.7.2"
    first = [connect_through(port, W.proxy_v2("203.0.113.20"), source=proxy) for _ in range(4)]
    assert first[0] == 0 and 0x9F in first, first
    # Other clients behind the same proxy, at once: had the proxy's address been counted,
    # they would wait a second each.
    assert connect_through(port, W.proxy_v1("203.0.113.21"), source=proxy) == 0
    assert connect_through(port, W.proxy_v2("203.0.113.22"), source=proxy) == 0


@pytest.mark.slow
def test_a_header_that_never_ends_times_out(broker):
    r = R.RawClient(PROXY_PORT, timeout=10)
    try:
        r.send(b"PROXY TCP4 198.51.100.1 ")
        started = time.monotonic()
        assert r.wait_closed(timeout=9) == []
        assert 4 <= time.monotonic() - started <= 8
    finally:
        r.close()
