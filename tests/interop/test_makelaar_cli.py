"""`makelaar pub`, `makelaar sub` and `makelaar rr` next to Mosquitto's tools and paho:
interop both ways (makelaar sub on Debian's mosquitto receives from mosquitto_pub;
mosquitto_sub on makelaar serve receives from makelaar pub) over TCP and TLS, MQTT 3.1.1 and 5,
the same -F output as mosquitto_sub, --json, rr with a paho responder, exit codes.

These tests start their own brokers (one Makelaar, one Mosquitto per module), whatever
MAKELAAR_TEST_BROKER says; the makelaar binary is found as for the rest of the suite
(MAKELAAR_BIN, or target/release|debug/makelaar)."""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading

import pytest

from brokers import DEFAULT_CONFIG, Broker, find_makelaar, merge_config
from clients import MqttClient, props, unique
from paho.mqtt.packettypes import PacketTypes

TIMEOUT = 10

HAVE_MOSQUITTO = bool(shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto"))
HAVE_MOSQUITTO_CLIENTS = bool(shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub"))
needs_mosquitto = pytest.mark.skipif(
    not HAVE_MOSQUITTO, reason="mosquitto not installed (apt-get install -y mosquitto)")
needs_mosquitto_clients = pytest.mark.skipif(
    not HAVE_MOSQUITTO_CLIENTS,
    reason="mosquitto-clients not installed (apt-get install -y mosquitto-clients)")


def _makelaar_bin() -> str:
    try:
        return find_makelaar()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def _start(kind, tmp_path_factory, certs, name) -> Broker:
    b = Broker(tmp_path_factory.mktemp(name), certs, merge_config(DEFAULT_CONFIG), name=name)
    b.kind = kind  # this module wants both brokers, whatever MAKELAAR_TEST_BROKER says
    b.start()
    return b


@pytest.fixture(scope="module")
def makelaar_broker(tmp_path_factory, certs):
    _makelaar_bin()
    b = _start("makelaar", tmp_path_factory, certs, "cli-makelaar")
    yield b
    b.stop()


@pytest.fixture(scope="module")
def mosquitto_broker(tmp_path_factory, certs):
    if not HAVE_MOSQUITTO:
        pytest.skip("mosquitto not installed (apt-get install -y mosquitto)")
    b = _start("mosquitto", tmp_path_factory, certs, "cli-mosquitto")
    yield b
    b.stop()


def conn(b: Broker, tls=False) -> list[str]:
    if tls:
        return ["-h", "localhost", "-p", str(b.tls_port), "--cafile", b.cafile]
    return ["-h", "127.0.0.1", "-p", str(b.port)]


def makelaar(tool, *args, input=None) -> subprocess.CompletedProcess:
    """Runs `makelaar TOOL ARGS...` to completion (bounded)."""
    return subprocess.run([_makelaar_bin(), tool, *args], input=input, capture_output=True,
                          timeout=TIMEOUT)


class Bg:
    """A subscriber in the background: `makelaar sub -d` (debug on stderr) or
    `mosquitto_sub -d` (debug on stdout). Ready once its SUBACK came; message lines queued."""

    def __init__(self, cmd):
        if cmd[0] == "mosquitto_sub" and shutil.which("stdbuf"):
            cmd = ["stdbuf", "-oL", *cmd]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue = queue.Queue()
        self.ready = threading.Event()
        self.err: list[str] = []
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()
        if not self.ready.wait(TIMEOUT):
            self.kill()
            raise AssertionError(f"{cmd}: no SUBACK within {TIMEOUT}s: {self.err}")

    def _out(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("Client ") or line.startswith("Subscribed (mid"):
                if "SUBACK" in line:
                    self.ready.set()
                continue
            self.lines.put(line)

    def _err(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.err.append(line)
            if "received SUBACK" in line:
                self.ready.set()

    def line(self, timeout=TIMEOUT) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.cmd}: no output within {timeout}s; stderr {self.err[-5:]}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(3)


@pytest.fixture
def bg():
    made = []

    def make(cmd):
        s = Bg(cmd)
        made.append(s)
        return s

    yield make
    for s in made:
        s.kill()


VERSIONS = [("311", "mqttv311"), ("5", "mqttv5")]


@needs_mosquitto_clients
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_makelaar_sub_receives_from_mosquitto_pub_on_mosquitto(mosquitto_broker, bg, tls, version):
    b = mosquitto_broker
    ours, theirs = version
    t = unique("mq2mk")
    s = bg([_makelaar_bin(), "sub", "-d", *conn(b, tls), "-V", ours, "-q", "1", "-t", f"{t}/#", "-v"])
    p = subprocess.run(["mosquitto_pub", *conn(b, tls), "-V", theirs, "-q", "1", "-t", f"{t}/x",
                        "-m", "hello from mosquitto_pub"], capture_output=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    assert s.line() == f"{t}/x hello from mosquitto_pub"


@needs_mosquitto_clients
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_mosquitto_sub_receives_from_makelaar_pub_on_makelaar(makelaar_broker, bg, tls, version):
    b = makelaar_broker
    ours, theirs = version
    t = unique("mk2mq")
    s = bg(["mosquitto_sub", "-d", *conn(b, tls), "-V", theirs, "-q", "2", "-t", f"{t}/#", "-v"])
    p = makelaar("pub", *conn(b, tls), "-V", ours, "-q", "2", "-t", f"{t}/x",
                 "-m", "hello from makelaar pub")
    assert p.returncode == 0, p.stderr
    assert s.line() == f"{t}/x hello from makelaar pub"


@needs_mosquitto_clients
def test_format_string_output_matches_mosquitto_sub(makelaar_broker, bg):
    """The same -F string prints the same line from makelaar sub and mosquitto_sub."""
    b = makelaar_broker
    t = unique("fmt")
    fmt = "%t|%p|%q|%r|%l|%m|%x|%X|%8t|%-8l|%08l|%.3t|%C|%R|%E|%F|%%|\\t|"
    common = [*conn(b), "-V", "5", "-q", "1", "-t", f"{t}/#", "-F", fmt]
    mine = bg([_makelaar_bin(), "sub", "-d", *common])
    theirs = bg(["mosquitto_sub", "-d", *common])
    p = makelaar("pub", *conn(b), "-V", "5", "-q", "1", "-t", f"{t}/a", "-m", "héllo",
                 "-D", "publish", "content-type", "text/plain",
                 "-D", "publish", "response-topic", "re/ply",
                 "-D", "publish", "payload-format-indicator", "1")
    assert p.returncode == 0, p.stderr
    assert mine.line() == theirs.line()


def test_json_output(makelaar_broker, bg):
    """--json: one object per line; text payloads as text, others as base64; v5 properties."""
    b = makelaar_broker
    t = unique("json")
    s = bg([_makelaar_bin(), "sub", "-d", *conn(b), "-V", "5", "-q", "1", "-t", f"{t}/#", "--json"])
    c = MqttClient(b, version=5)
    c.connect()
    try:
        c.publish(f"{t}/text", "grüezi", qos=1, properties=props(
            PacketTypes.PUBLISH, ContentType="text/plain", ResponseTopic="a/b",
            CorrelationData=b"\x00\x01", UserProperty=[("k", "v"), ("k", "w")]))
        c.publish(f"{t}/bin", b"\xff\x00\x10", qos=1, retain=True)
    finally:
        c.disconnect()
    first = json.loads(s.line())
    assert first["topic"] == f"{t}/text"
    assert first["qos"] == 1 and first["retain"] is False
    assert first["payload"] == "grüezi" and first["payload_encoding"] == "utf-8"
    assert first["properties"]["content_type"] == "text/plain"
    assert first["properties"]["response_topic"] == "a/b"
    assert base64.b64decode(first["properties"]["correlation_data"]) == b"\x00\x01"
    assert first["properties"]["user_properties"] == [["k", "v"], ["k", "w"]]
    second = json.loads(s.line())
    assert second["payload_encoding"] == "base64"
    assert base64.b64decode(second["payload"]) == b"\xff\x00\x10"
    # Clean up the retained message.
    assert makelaar("pub", *conn(b), "-t", f"{t}/bin", "-r", "-n").returncode == 0


def test_makelaar_pub_properties_reach_paho(makelaar_broker):
    b = makelaar_broker
    t = unique("props")
    c = MqttClient(b, version=5)
    c.connect()
    try:
        c.subscribe(t, qos=2)
        p = makelaar("pub", *conn(b), "-t", t, "-m", "x", "-q", "2",
                     "-D", "publish", "user-property", "origin", "cli",
                     "-D", "publish", "correlation-data", "c-1",
                     "-D", "publish", "message-expiry-interval", "120",
                     "-D", "publish", "content-type", "application/x")
        assert p.returncode == 0, p.stderr
        m = c.get()
        assert m.qos == 2
        assert m.properties.UserProperty == [("origin", "cli")]
        assert m.properties.CorrelationData == b"c-1"
        assert m.properties.ContentType == "application/x"
        assert 118 <= m.properties.MessageExpiryInterval <= 120
    finally:
        c.disconnect()


@pytest.mark.parametrize("which", ["makelaar", "mosquitto"])
def test_rr_with_a_paho_responder(request, which):
    """makelaar rr sends Response Topic and Correlation Data; a paho responder answers with the
    same correlation data; rr prints the answer and exits 0."""
    if which == "mosquitto" and not HAVE_MOSQUITTO:
        pytest.skip("mosquitto not installed")
    b = request.getfixturevalue(f"{which}_broker")
    t = unique("rr")
    responder = MqttClient(b, version=5)
    responder.connect()
    responder.subscribe(f"{t}/req", qos=1)
    stop = threading.Event()

    def answer():
        while not stop.is_set():
            try:
                m = responder.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            responder.publish(m.properties.ResponseTopic, b"answer: " + m.payload, qos=1,
                              properties=props(PacketTypes.PUBLISH,
                                               CorrelationData=m.properties.CorrelationData))

    th = threading.Thread(target=answer, daemon=True)
    th.start()
    try:
        p = makelaar("rr", *conn(b), "-t", f"{t}/req", "-e", f"{t}/resp", "-m", "question",
                     "-q", "1", "-W", "5")
        assert p.returncode == 0, p.stderr
        assert p.stdout == b"answer: question\n"
    finally:
        stop.set()
        th.join(2)
        responder.disconnect()


def test_exit_codes(makelaar_broker):
    b = makelaar_broker
    # -W: nothing arrives: 27, as mosquitto_sub.
    p = makelaar("sub", *conn(b), "-t", unique("none"), "-W", "1")
    assert p.returncode == 27
    # Nothing listens: one sentence, exit 1.
    s = __import__("socket").socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = makelaar("pub", "-h", "127.0.0.1", "-p", str(port), "-t", "t", "-m", "x")
    assert p.returncode == 1
    assert p.stderr.decode() == (
        f"makelaar pub: Connection refused: is the broker running on 127.0.0.1:{port}?\n")
    # A bad flag: one sentence, exit 1 (mosquitto_pub's code for usage errors).
    p = makelaar("pub", "--no-such-flag")
    assert p.returncode == 1
    assert len(p.stderr.decode().strip().splitlines()) == 1


@needs_mosquitto
def test_not_authorized_exits_with_the_connack_code(tmp_path_factory, certs):
    """Against a Mosquitto without anonymous access: CONNACK 5 (3.1.1) / 0x87 (5) becomes the
    exit code, with one sentence."""
    b = Broker(tmp_path_factory.mktemp("noanon"), certs, merge_config(DEFAULT_CONFIG),
               name="noanon")
    b.kind = "mosquitto"
    conf_writer = b._write_mosquitto_config

    def write_conf():
        path = conf_writer()
        path.write_text(path.read_text().replace("allow_anonymous true", "allow_anonymous false"))
        return path

    b._write_mosquitto_config = write_conf
    b.start()
    try:
        p = makelaar("pub", *conn(b), "-t", "t", "-m", "x")
        assert p.returncode == 5, p.stderr
        assert p.stderr.decode() == "makelaar pub: Connection refused: not authorized\n"
        p = makelaar("sub", *conn(b), "-t", "t", "-V", "5")
        assert p.returncode == 135, p.stderr
    finally:
        b.stop()
