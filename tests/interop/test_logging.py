"""The log of who comes and goes: with `--log-level info`, one line per client connected,
refused and disconnected, with the client id, remote address, protocol version, transport,
username and the reason; `--log-format json` writes them as JSON objects with these as fields.
By default (warn) there are none. Makelaar only (skipped against Mosquitto)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

import mqtt_raw as R
from auth_files import fresh_source, makelaar_passwd
from brokers import BROKER_KIND, find_makelaar, free_port
from clients import MqttClient, unique

pytestmark = pytest.mark.skipif(BROKER_KIND != "makelaar",
                                reason="tests Makelaar's log lines")

PASSWORD = "s3cret"


class LogBroker:
    """`makelaar serve` on a plain and a TLS port, its standard error kept in a file."""

    def __init__(self, workdir, certs, *args, config=None):
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls_port = free_port()
        self.cafile = str(certs / "ca.crt")
        self.stderr_path = workdir / "stderr.log"
        cmd = [find_makelaar(), "serve", "--in-memory",
               "--listen", f"mqtt://{self.host}:{self.port}",
               "--listen", f"mqtts://{self.host}:{self.tls_port}",
               "--cert", str(certs / "server.crt"), "--key", str(certs / "server.key"), *args]
        if config is not None:
            path = workdir / "makelaar.toml"
            path.write_text(config)
            cmd += ["--config", str(path)]
        # The documented default applies only without RUST_LOG, which the suite may set.
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        self.err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.err, cwd=workdir, env=env)
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, f"broker exited:\n{self.text()}"
            try:
                with socket.create_connection((self.host, self.tls_port), timeout=0.5):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"broker did not start:\n{self.text()}"
                time.sleep(0.05)

    def text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def records(self) -> list[dict]:
        """Every JSON line so far (a line that is not JSON fails the test)."""
        out = []
        for line in self.text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"not a JSON line: {line!r}")
        return out

    def clients(self, client_id, message=None, peer=None) -> list[dict]:
        """The fields of the client lines about `client_id` (of one message, from one
        address, if given)."""
        return [r["fields"] for r in self.records()
                if r.get("target") == "makelaar::clients"
                and r["fields"].get("client_id") == client_id
                and (message is None or r["fields"]["message"] == message)
                and (peer is None or r["fields"]["peer"] == peer)]

    def wait_for(self, client_id, message, timeout=5.0, peer=None) -> dict:
        """The one line `message` about `client_id` (from `peer`), once it is there."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.clients(client_id, message, peer)
            if found:
                # Lines come whole: a second one would be a bug, not a late line.
                time.sleep(0.2)
                found = self.clients(client_id, message, peer)
                assert len(found) == 1, f"{len(found)} lines {message!r}: {found}"
                return found[0]
            assert time.monotonic() < deadline, (
                f"no {message!r} line for {client_id} within {timeout}s:\n{self.text()}")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.err.close()


@pytest.fixture(scope="module")
def passwd(tmp_path_factory):
    return makelaar_passwd(tmp_path_factory.mktemp("logpw") / "passwd", {"alice": PASSWORD})


@pytest.fixture(scope="module")
def broker(tmp_path_factory, certs, passwd):
    b = LogBroker(tmp_path_factory.mktemp("logging"), certs, "--log-format", "json",
                  "--log-level", "info", "--password-file", str(passwd),
                  "--allow-anonymous", "true")
    yield b
    assert b.proc.poll() is None, f"broker died:\n{b.text()}"
    b.stop()


def local_address(c) -> str:
    """The address a paho client (MqttClient) or a RawClient connects from."""
    sock = c.sock if isinstance(c, R.RawClient) else c.c.socket()
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


@pytest.mark.parametrize("version,protocol", [(4, "3.1.1"), (5, "5.0"), (3, "3.1")])
def test_connect_and_disconnect_lines(broker, version, protocol):
    c = MqttClient(broker, client_id=unique("log"), version=version, username="alice",
                   password=PASSWORD)
    c.connect()
    peer = local_address(c)
    line = broker.wait_for(c.client_id, "client connected")
    assert line == {"message": "client connected", "client_id": c.client_id, "peer": peer,
                    "protocol": protocol, "transport": "tcp", "username": "alice",
                    "session_present": False}
    c.disconnect()
    gone = broker.wait_for(c.client_id, "client disconnected")
    assert gone["reason"] == "client DISCONNECT", gone
    assert gone["reason_code"] == "0x00" and gone["peer"] == peer, gone
    assert gone["protocol"] == protocol and gone["username"] == "alice", gone


def test_anonymous_client_over_tls(broker):
    c = MqttClient(broker, client_id=unique("log-tls"), version=5, tls=True)
    c.connect()
    line = broker.wait_for(c.client_id, "client connected")
    assert line["transport"] == "tls", line
    assert "username" not in line, "an anonymous client has no username field"
    c.disconnect()
    assert broker.wait_for(c.client_id, "client disconnected")["transport"] == "tls"


def test_assigned_client_id_is_logged(broker):
    c = MqttClient(broker, client_id="", version=5)
    ack = c.connect()
    assigned = ack.properties.AssignedClientIdentifier
    line = broker.wait_for(assigned, "client connected")
    assert line["protocol"] == "5.0"
    c.disconnect()
    broker.wait_for(assigned, "client disconnected")


def test_keep_alive_timeout(broker):
    cid = unique("log-ka")
    r = R.RawClient(broker.port, broker.host, version=5, timeout=5)
    r.send(R.connect(cid, version=5, keepalive=1))
    assert r.recv_packet(5).type == R.CONNACK
    # Silent: closed after 1.5 × the keep-alive.
    gone = broker.wait_for(cid, "client disconnected", timeout=6)
    assert gone["reason"] == "keep-alive timeout", gone
    assert gone["reason_code"] == "0x8D", gone
    r.close()


@pytest.mark.parametrize("version", [4, 5])
def test_takeover(broker, version):
    cid = unique("log-take")
    first = MqttClient(broker, client_id=cid, version=version)
    first.connect()
    first_peer = local_address(first)
    broker.wait_for(cid, "client connected")
    second = MqttClient(broker, client_id=cid, version=version)
    second.connect()
    gone = broker.wait_for(cid, "client disconnected")
    assert gone["reason"] == "taken over by another connection", gone
    assert gone["reason_code"] == "0x8E" and gone["peer"] == first_peer, gone
    lines = broker.clients(cid, "client connected")
    assert len(lines) == 2 and lines[1]["peer"] == local_address(second), lines
    second.disconnect()


def test_refused_login(broker):
    cid = unique("log-bad")
    r = R.RawClient(broker.port, broker.host, version=4, timeout=5, source=fresh_source())
    r.send(R.connect(cid, version=4, username="alice", password="wrong"))
    ack = r.recv_packet(6)
    assert ack.type == R.CONNACK and ack.reason != 0
    line = broker.wait_for(cid, "client refused")
    assert line["reason"] == "bad user name or password", line
    assert line["reason_code"] == "0x86" and line["username"] == "alice", line
    assert line["protocol"] == "3.1.1" and line["transport"] == "tcp", line
    assert "s3cret" not in broker.text() and "wrong" not in json.dumps(line)
    r.close()
    time.sleep(0.3)
    assert broker.clients(cid, "client connected") == []
    assert broker.clients(cid, "client disconnected") == []


def test_client_id_refused_by_the_broker(broker):
    # 3.1.1: an empty client id without clean session is refused with 0x02 [MQTT-3.1.3-8].
    r = R.RawClient(broker.port, broker.host, version=4, timeout=5)
    r.send(R.connect("", version=4, clean=False))
    assert r.recv_packet(5).reason != 0
    line = broker.wait_for("", "client refused", peer=local_address(r))
    assert line["reason_code"] == "0x85", line
    r.close()


def test_socket_closed_without_disconnect(broker):
    cid = unique("log-drop")
    r = R.RawClient(broker.port, broker.host, version=4, timeout=5)
    r.send(R.connect(cid, version=4))
    assert r.recv_packet(5).type == R.CONNACK
    broker.wait_for(cid, "client connected")
    r.close()
    gone = broker.wait_for(cid, "client disconnected")
    assert gone["reason"] == "connection closed by the client without DISCONNECT", gone
    assert "reason_code" not in gone, gone


def test_protocol_error(broker):
    cid = unique("log-bad-packet")
    r = R.RawClient(broker.port, broker.host, version=5, timeout=5)
    r.send(R.connect(cid, version=5))
    assert r.recv_packet(5).type == R.CONNACK
    # A SUBSCRIBE with reserved flags 0000 instead of 0010: malformed [MQTT-3.8.1-1].
    r.send(R.packet(8, 0, R.u16(1) + b"\x00" + R.mstr("t") + b"\x00"))
    gone = broker.wait_for(cid, "client disconnected")
    assert gone["reason"] == "protocol error", gone
    assert gone["reason_code"] == "0x81", gone
    r.close()


def test_unsupported_protocol_version_is_refused(broker):
    r = R.RawClient(broker.port, broker.host, timeout=5)
    # CONNECT with protocol level 9.
    body = R.mstr("MQTT") + bytes([9, 0x02]) + R.u16(60) + R.mstr("x")
    r.send(R.packet(1, 0, body))
    assert r.recv_packet(5).type == R.CONNACK
    line = broker.wait_for("", "client refused", peer=local_address(r))
    assert line["protocol"] == "unsupported" and line["reason_code"] == "0x84", line
    r.close()


def test_json_lines_have_timestamp_level_target(broker):
    records = broker.records()
    assert records, "no log lines"
    for r in records:
        assert set(r) >= {"timestamp", "level", "target", "fields"}, r
        assert "message" in r["fields"], r
    assert any(r["target"] == "makelaar::status" for r in records)


def test_broker_shutdown_is_a_reason(tmp_path, certs):
    b = LogBroker(tmp_path, certs, "--log-format", "json", "--log-level", "info")
    try:
        c = MqttClient(b, client_id=unique("log-stop"), version=4)
        c.connect()
        b.wait_for(c.client_id, "client connected")
        b.stop()
        gone = b.wait_for(c.client_id, "client disconnected")
        assert gone["reason"] == "broker shutdown" and gone["reason_code"] == "0x8B", gone
    finally:
        b.stop()


def test_default_level_logs_no_client_lines(tmp_path, certs):
    b = LogBroker(tmp_path, certs)
    try:
        c = MqttClient(b, client_id=unique("log-quiet"), version=4)
        c.connect()
        c.disconnect()
        r = R.RawClient(b.port, b.host, timeout=5, source=fresh_source())
        r.send(R.connect(unique("log-quiet"), version=4, keepalive=1))
        r.recv_packet(5)
        time.sleep(2.5)  # a keep-alive timeout on the way
        r.close()
    finally:
        b.stop()
    text = b.text()
    assert "listening on" in text, text
    assert "client" not in text, f"per-connection lines at the default level:\n{text}"


def test_text_format_is_readable(tmp_path, certs):
    b = LogBroker(tmp_path, certs, "--log-level", "info")
    try:
        c = MqttClient(b, client_id=unique("log-text"), version=5)
        c.connect()
        c.disconnect()
        deadline = time.monotonic() + 5
        while "client disconnected" not in b.text():
            assert time.monotonic() < deadline, b.text()
            time.sleep(0.05)
    finally:
        b.stop()
    lines = [line for line in b.text().splitlines() if c.client_id in line]
    assert len(lines) == 2, lines
    assert " INFO makelaar::clients: client connected " in lines[0], lines[0]
    assert f'client_id="{c.client_id}"' in lines[0] and 'protocol="5.0"' in lines[0], lines[0]
    assert 'reason="client DISCONNECT"' in lines[1], lines[1]
    assert not lines[0].lstrip().startswith("{")


def test_log_settings_from_the_config_file(tmp_path, certs):
    config = 'log_format = "json"\nlog_level = "info"\n'
    b = LogBroker(tmp_path, certs, config=config)
    try:
        c = MqttClient(b, client_id=unique("log-file"), version=4)
        c.connect()
        b.wait_for(c.client_id, "client connected")
        c.disconnect()
    finally:
        b.stop()
    # --log-format on the command line wins over the file.
    other = tmp_path / "flag"
    other.mkdir()
    b = LogBroker(other, certs, "--log-format", "text", config=config)
    try:
        c = MqttClient(b, client_id=unique("log-flag"), version=4)
        c.connect()
        c.disconnect()
        time.sleep(0.5)
    finally:
        b.stop()
    assert f'client_id="{c.client_id}"' in b.text(), b.text()


def test_bad_log_level_in_the_file_is_one_clear_error(tmp_path):
    path = tmp_path / "makelaar.toml"
    path.write_text('log_level = "loud"\n')
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    p = subprocess.run([find_makelaar(), "serve", "--config", str(path)], capture_output=True,
                       text=True, timeout=10, cwd=tmp_path, env=env)
    assert p.returncode == 1, p
    assert p.stderr.strip().startswith("makelaar: ") and "log_level" in p.stderr, p.stderr
    assert "loud" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
