"""TLS listener (mqtts): the test CA from scripts/gen-certs.sh, paho and raw TLS clients,
refusal of an untrusted server certificate, and mutual TLS with require_certificate."""

import socket
import ssl

import pytest

import mqtt_raw as R
from clients import MqttClient, unique


def _ctx(certs, ca="ca.crt", cert=None, key=None):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs / ca))
    if cert:
        ctx.load_cert_chain(str(certs / cert), str(certs / key))
    return ctx


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_paho_over_tls(client, topic, version):
    """paho with tls_set(ca_certs=test CA) connects to the mqtts listener and exchanges QoS 1
    messages."""
    c = client(version=version, tls=True)
    assert c.connack.reason_code == 0
    c.subscribe(f"{topic}/tls", qos=1)
    c.publish(f"{topic}/tls", b"encrypted", qos=1)
    assert c.get().payload == b"encrypted"


def test_tls_and_plain_clients_share_messages(client, topic):
    """A message published over TLS reaches a plain-TCP subscriber and the other way round."""
    plain = client(version=4)
    secure = client(version=5, tls=True)
    plain.subscribe(f"{topic}/mix", qos=1)
    secure.subscribe(f"{topic}/mix", qos=1)
    secure.publish(f"{topic}/mix", b"from tls", qos=1)
    assert plain.get().payload == b"from tls"
    assert secure.get().payload == b"from tls"
    plain.publish(f"{topic}/mix", b"from plain", qos=1)
    assert secure.get().payload == b"from plain"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_server_certificate_matches_host(broker, certs, host):
    """The server certificate verifies for both 'localhost' and 127.0.0.1 (SAN), with hostname
    checking on."""
    ctx = _ctx(certs)
    r = R.RawClient(broker.tls_port, host, version=4, tls_context=ctx)
    try:
        assert r.connect(unique("sni")).reason == 0
        assert r.sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        r.close()


def test_wrong_ca_refused(broker, certs):
    """A client that trusts a different CA refuses the server certificate (paho raises a
    certificate verification error)."""
    c = MqttClient(broker, version=4, tls=True, cafile=str(certs / "unknown-ca.crt"))
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            c.connect(timeout=5)
    finally:
        c.close()


def test_plain_mqtt_on_tls_port_gets_no_connack(broker):
    """Plain MQTT bytes sent to the TLS port never produce a CONNACK: the connection is closed
    (or answered with a TLS alert)."""
    r = R.RawClient(broker.tls_port, version=4, timeout=5)
    try:
        r.send(R.connect(unique("plain")))
        with pytest.raises((R.Closed, R.DecodeError, AssertionError)):
            p = r.recv_packet(5)
            assert p.type == R.CONNACK and False, p
    finally:
        r.close()


def test_tls_handshake_on_plain_port_fails(broker, certs):
    """A TLS handshake against the plain MQTT port fails (no TLS there)."""
    ctx = _ctx(certs)
    s = socket.create_connection((broker.host, broker.port), timeout=5)
    try:
        with pytest.raises((ssl.SSLError, OSError)):
            ctx.wrap_socket(s, server_hostname="localhost")
    finally:
        s.close()


# --- mutual TLS ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mtls_broker(tmp_path_factory, certs):
    from conftest import _start, _stop
    from brokers import DEFAULT_CONFIG, merge_config
    b = _start(tmp_path_factory, certs,
               merge_config(DEFAULT_CONFIG, {"require_certificate": True}), "mtls")
    yield b
    _stop(b)


def _tls_connect_refused(b, ctx):
    """The TLS handshake or the first read fails: no CONNACK for this client."""
    try:
        r = R.RawClient(b.tls_port, "localhost", version=4, tls_context=ctx, timeout=5)
    except (ssl.SSLError, OSError):
        return
    try:
        if not r.try_send(R.connect(unique("mtls"))):
            return
        try:
            p = r.recv_packet(5)
        except (R.Closed, ssl.SSLError, OSError):
            return
        pytest.fail(f"client was accepted: {p}")
    finally:
        r.close()


def test_mtls_valid_client_certificate_accepted(mtls_broker, certs):
    """require_certificate: a client certificate signed by the configured CA is accepted."""
    ctx = _ctx(certs, cert="client.crt", key="client.key")
    r = R.RawClient(mtls_broker.tls_port, "localhost", version=4, tls_context=ctx)
    try:
        assert r.connect(unique("mtls")).reason == 0
    finally:
        r.close()


@pytest.mark.parametrize("cert", [None, "expired", "unknown"],
                         ids=["no-cert", "expired-cert", "unknown-ca-cert"])
def test_mtls_bad_client_certificate_refused(mtls_broker, certs, cert):
    """require_certificate: no certificate, an expired one, or one from an unknown CA is
    refused during the TLS handshake."""
    ctx = _ctx(certs, cert=f"{cert}.crt" if cert else None, key=f"{cert}.key" if cert else None)
    _tls_connect_refused(mtls_broker, ctx)


def test_large_messages_over_tls(client, topic):
    """Payloads of 512 KiB cross the TLS listener intact, in both directions."""
    import os
    c = client(version=5, tls=True)
    c.subscribe(f"{topic}/big", qos=1)
    payloads = [os.urandom(512 * 1024) for _ in range(3)]
    for p in payloads:
        c.publish(f"{topic}/big", p, qos=1, timeout=10)
    assert [m.payload for m in c.get_n(3, timeout=10)] == payloads


def test_many_messages_over_tls(client, topic):
    """1,000 QoS 1 messages over TLS arrive complete and in order."""
    sub = client(version=4, tls=True)
    sub.subscribe(f"{topic}/many", qos=1)
    pub = client(version=4, tls=True)
    infos = [pub.publish(f"{topic}/many", b"%d" % i, qos=1, wait=False) for i in range(1000)]
    for info in infos:
        info.wait_for_publish(10)
    got = sub.get_n(1000, timeout=15)
    assert [int(m.payload) for m in got] == list(range(1000))
