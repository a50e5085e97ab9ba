"""The HTTP listener itself: /healthz and /readyz, routing, https, and clients that misbehave
over HTTP (garbage, oversized headers, a slow client, too many connections): the broker stays
up and keeps serving. /metrics is checked in test_metrics.py."""

from __future__ import annotations

import http.client
import socket
import ssl
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from brokers import BROKER_KIND
from http_client import Scrape, request

pytestmark = pytest.mark.skipif(BROKER_KIND != "makelaar",
                                reason="the HTTP listener is Makelaar's")

BROKER_CONFIG = {"http": True, "sys_interval": 0}


def test_health_endpoints(broker):
    status, _, body = request(broker, "/healthz")
    assert (status, body) == (200, b"ok\n")
    assert request(broker, "/readyz")[:1] == (200,)
    status, headers, body = request(broker, "/healthz", method="HEAD")
    assert (status, headers["content-length"], body) == (200, "3", b"")
    status, _, body = request(broker, "/no/such/page")
    assert status == 404 and b"/metrics" in body
    status, headers, _ = request(broker, "/metrics", method="POST")
    assert (status, headers["allow"]) == (405, "GET, HEAD")


def test_https_serves_the_same_over_tls(make_broker):
    b = make_broker(http="https", sys_interval=0)
    ctx = ssl.create_default_context(cafile=b.cafile)
    conn = http.client.HTTPSConnection("localhost", b.http_port, context=ctx, timeout=5)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        assert r.status == 200
        families = {f.name for f in text_string_to_metric_families(r.read().decode())}
        assert "makelaar_messages" in families  # a counter's family, without _total
        https = f"https://127.0.0.1:{b.http_port}"
        # This connection and the next one's, on the listener named by its scheme.
        opened = [x.value for f in text_string_to_metric_families(request_tls(b, ctx, "/metrics"))
                  for x in f.samples if x.name == "makelaar_listener_connections"
                  and x.labels["listener"] == https]
        assert opened == [2.0]
    finally:
        conn.close()
    # Plain HTTP to the TLS port gets no HTTP answer.
    assert not raw_http(b, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/")


def request_tls(broker, ctx, path):
    conn = http.client.HTTPSConnection("localhost", broker.http_port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


# --- clients that misbehave over HTTP ---------------------------------------------------------


def raw_http(broker, data: bytes, timeout=5.0) -> bytes:
    """Sends bytes as they are and reads until the server closes."""
    with socket.create_connection((broker.host, broker.http_port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        return out


def test_garbage_and_oversized_requests_are_refused(broker):
    answer = raw_http(broker, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:100]
    answer = raw_http(broker, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: "
                      + b"a" * 40_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    answer = raw_http(broker, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                      + b"".join(b"X-%d: y\r\n" % i for i in range(500)) + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    # Keep-alive: several requests on one connection, the last one closing it.
    answer = raw_http(broker, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 5
                      + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200") == 6
    assert request(broker, "/healthz")[0] == 200


@pytest.mark.slow
def test_a_slow_client_is_cut_off_and_does_not_block_others(broker):
    s = socket.create_connection((broker.host, broker.http_port), timeout=20)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < 16:
            # Others are served meanwhile.
            assert request(broker, "/healthz")[0] == 200
            try:
                s.sendall(b"X")  # one byte of a header line that never ends
                s.settimeout(1.0)
                if s.recv(4096) == b"":
                    closed_after = time.monotonic() - started
                    break
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
        # The header-read time limit is 10 s.
        assert closed_after is not None and 9 <= closed_after <= 13, closed_after
    finally:
        s.close()


def test_too_many_connections_are_closed_and_counted(broker):
    before = Scrape(broker)
    socks = []
    try:
        for _ in range(100):
            socks.append(socket.create_connection((broker.host, broker.http_port), timeout=5))
        time.sleep(0.5)
        closed = 0
        for s in socks:
            s.settimeout(0.05)
            try:
                if s.recv(1) == b"":
                    closed += 1
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed += 1
        # At most 64 at once (the default max_connections of an HTTP listener).
        assert closed >= 100 - 64, closed
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)
    after = Scrape(broker)
    refused = (after("makelaar_connections_refused_total", reason="max_connections")
               - before("makelaar_connections_refused_total", reason="max_connections"))
    assert refused >= 100 - 64
    assert request(broker, "/healthz")[0] == 200
