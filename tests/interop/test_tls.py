"""TLS listener (mqtts): the test CA from scripts/gen-certs.sh, paho and raw TLS clients,
refusal of an untrusted server certificate, mutual TLS with require_certificate, and a
certificate file without its intermediate CA: the chain completed from cafile (makelaar.toml,
--mosquitto-conf, Mosquitto itself for reference, SIGHUP), or a warning when it cannot be."""

import getpass
import os
import signal
import socket
import ssl
import subprocess
import time

import pytest

import mqtt_raw as R
from brokers import BROKER_KIND, find_makelaar, free_port, mosquitto_exe
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


# ---------------------------------------------------------------------------------------------
# A certificate file with the server certificate alone, its intermediate CA in cafile (a
# common Mosquitto setup): the chain is completed from cafile, as OpenSSL does for Mosquitto.

def _serve(cmd, cwd, port, log_path, timeout=10.0):
    """Starts a broker process writing to `log_path`; returns it once `port` accepts."""
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info")
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            cwd=cwd, env=env)
    log.close()
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"port {port} not open:\n{log_path.read_text()}")
            time.sleep(0.05)


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _chain_config(tmp_path, certs, kind, port, cafile):
    """The command of a broker whose mqtts listener on `port` has the certificate file
    chain-server.crt (the server certificate alone) and the CA file `cafile`: a makelaar.toml,
    or a mosquitto.conf for `makelaar serve --mosquitto-conf` or Mosquitto itself."""
    cert, key = certs / "chain-server.crt", certs / "chain-server.key"
    if kind == "toml":
        conf = tmp_path / "makelaar.toml"
        conf.write_text(f'listen = ["mqtts://127.0.0.1:{port}"]\ncert = "{cert}"\n'
                        f'key = "{key}"\ncafile = "{cafile}"\nallow_anonymous = true\n')
        return [find_makelaar(), "serve", "--in-memory", "--config", str(conf)]
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"persistence false\nlog_dest stderr\nuser {getpass.getuser()}\n"
                    f"listener {port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n"
                    f"cafile {cafile}\nallow_anonymous true\n")
    if kind == "mosquitto":
        return [mosquitto_exe(), "-c", str(conf)]
    return [find_makelaar(), "serve", "--mosquitto-conf", str(conf)]


CHAIN_KINDS = [
    pytest.param("toml", marks=pytest.mark.skipif(BROKER_KIND != "makelaar",
                                                  reason="a makelaar.toml")),
    pytest.param("mosquitto-conf", marks=pytest.mark.skipif(BROKER_KIND != "makelaar",
                                                            reason="makelaar --mosquitto-conf")),
    # The reference: what Mosquitto does with the same mosquitto.conf.
    pytest.param("mosquitto", marks=pytest.mark.skipif(not os.path.exists(mosquitto_exe()),
                                                       reason="needs Debian's mosquitto")),
]


@pytest.mark.parametrize("kind", CHAIN_KINDS)
def test_chain_completed_from_cafile(tmp_path, certs, kind):
    """certfile holds only the server certificate, cafile the intermediate and the root:
    clients that trust only the root verify the chain (paho's ssl and mosquitto_sub), as with
    Mosquitto; Makelaar says at info that it completed the chain."""
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_text((certs / "intermediate.crt").read_text() + (certs / "ca.crt").read_text())
    port = free_port()
    log = tmp_path / "broker.log"
    proc = _serve(_chain_config(tmp_path, certs, kind, port, bundle), tmp_path, port, log)
    try:
        r = R.RawClient(port, "localhost", version=4, tls_context=_ctx(certs), timeout=5)
        try:
            assert r.connect(unique("chain")).reason == 0
        finally:
            r.close()
        pub = subprocess.run(
            ["mosquitto_pub", "-h", "localhost", "-p", str(port), "--cafile",
             str(certs / "ca.crt"), "-t", unique("chain"), "-m", "through the chain", "-q", "1"],
            capture_output=True, text=True, timeout=20)
        assert pub.returncode == 0, pub.stderr
    finally:
        _stop(proc)
    if kind != "mosquitto":
        text = log.read_text()
        line = next((l for l in text.splitlines() if "lacks 1 intermediate" in l), None)
        assert line is not None, text
        assert "chain-server.crt" in line and "ca-bundle.pem" in line and " INFO " in line, line
        assert "WARN" not in text.replace("Illegal SNI", ""), text


@pytest.mark.skipif(BROKER_KIND != "makelaar", reason="Makelaar's start-up warning")
@pytest.mark.parametrize("kind", ["toml", "mosquitto-conf"])
def test_an_incomplete_chain_is_warned_about(tmp_path, certs, kind):
    """The intermediate is in neither file: the start-up says so in one warning naming the
    certificate file and the fix; a client that refuses the certificate is reported too."""
    port = free_port()
    log = tmp_path / "broker.log"
    proc = _serve(_chain_config(tmp_path, certs, kind, port, certs / "ca.crt"), tmp_path, port,
                  log)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            R.RawClient(port, "localhost", version=4, tls_context=_ctx(certs), timeout=5)
        time.sleep(0.3)
    finally:
        _stop(proc)
    lines = log.read_text().splitlines()
    warning = [l for l in lines if " WARN " in l and "holds the server certificate" in l]
    assert len(warning) == 1, lines
    cert = str(certs / "chain-server.crt")
    assert warning[0].count(cert) == 2, warning[0]  # the file, and where to append
    assert "Makelaar test intermediate CA" in warning[0], warning[0]
    assert "append the intermediate certificate(s)" in warning[0], warning[0]
    refused = [l for l in lines if " WARN " in l and "refused the certificate" in l]
    assert len(refused) == 1 and "UnknownCA" in refused[0], lines


@pytest.mark.skipif(BROKER_KIND != "makelaar", reason="Makelaar's SIGHUP reload")
def test_sighup_completes_the_chain_from_the_new_cafile(tmp_path, certs):
    """The CA file gains the intermediate while the broker runs: after SIGHUP the chain is
    completed from it and clients that trust only the root connect."""
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_text((certs / "ca.crt").read_text())
    port = free_port()
    log = tmp_path / "broker.log"
    proc = _serve(_chain_config(tmp_path, certs, "toml", port, bundle), tmp_path, port, log)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            R.RawClient(port, "localhost", version=4, tls_context=_ctx(certs), timeout=5)
        bundle.write_text((certs / "intermediate.crt").read_text()
                          + (certs / "ca.crt").read_text())
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        r = R.RawClient(port, "localhost", version=4, tls_context=_ctx(certs), timeout=5)
        try:
            assert r.connect(unique("reload-chain")).reason == 0
        finally:
            r.close()
    finally:
        _stop(proc)
    assert "lacks 1 intermediate" in log.read_text(), log.read_text()
