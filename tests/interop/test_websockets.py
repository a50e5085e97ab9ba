"""MQTT over WebSocket (ws:// and wss:// listeners): paho's websocket transport (3.1.1 and 5.0,
plain and TLS), messages across transports, hand-made frames (packets split across frames and
sharing one, text and oversized frames, pings), the handshake's refusals (path, subprotocol),
X-Forwarded-For from trusted proxies, and MQTT.js in headless Chromium. Makelaar only: the
generated Mosquitto configuration has no WebSocket listener."""

import http.server
import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

import mqtt_raw as R
import ws_raw as W
from brokers import BROKER_KIND, free_port
from browser import mqtt_js_path
from clients import MqttClient, unique

pytestmark = pytest.mark.skipif(BROKER_KIND != "makelaar",
                                reason="the Mosquitto test configuration has no WebSocket listener")

WS_PORT = free_port()
WSS_PORT = free_port()
BROKER_CONFIG = {
    "listener": [
        {"url": f"ws://127.0.0.1:{WS_PORT}/mqtt"},
        {"url": f"wss://127.0.0.1:{WSS_PORT}/mqtt"},
    ],
}


def tls_context(certs):
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs / "ca.crt"))


@pytest.fixture
def ws_client(broker):
    """Factory for paho clients over WebSocket: ws_client(version=5, tls=False, ...)."""
    made = []

    def make(version=5, tls=False, connect=True, will=None, **kw):
        c = MqttClient(broker, version=version, tls=tls, transport="websockets",
                       port=WSS_PORT if tls else WS_PORT, **kw)
        if will is not None:
            c.will_set(**will)
        made.append(c)
        if connect:
            c.connect()
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def ws_raw(broker):
    made = []

    def make(**kw):
        c = W.WsClient(kw.pop("port", WS_PORT), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


# ---------------------------------------------------------------------------------------------
# paho over WebSocket


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_paho_over_websocket(ws_client, topic, version, tls):
    c = ws_client(version=version, tls=tls)
    assert c.connack.reason_code == 0
    assert c.subscribe(f"{topic}/a", qos=1) == [1]
    c.publish(f"{topic}/a", b"over websocket", qos=1)
    m = c.get()
    assert (m.topic, m.payload, m.qos) == (f"{topic}/a", b"over websocket", 1)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_messages_cross_transports(ws_client, client, topic, qos):
    """A WebSocket client and a TCP client exchange messages both ways, at every QoS."""
    ws = ws_client(version=5)
    tcp = client(version=4)
    ws.subscribe(f"{topic}/to-ws", qos=qos)
    tcp.subscribe(f"{topic}/to-tcp", qos=qos)
    tcp.publish(f"{topic}/to-ws", b"from tcp", qos=qos)
    ws.publish(f"{topic}/to-tcp", b"from ws", qos=qos)
    assert ws.get().payload == b"from tcp"
    assert tcp.get().payload == b"from ws"


def test_large_messages_both_ways(ws_client, client, topic):
    """Messages far larger than one read or one frame header's short form."""
    payload = bytes(range(256)) * 2000  # 512 KB
    ws = ws_client(version=5, tls=True)
    tcp = client(version=5)
    ws.subscribe(f"{topic}/big", qos=1)
    tcp.publish(f"{topic}/big", payload, qos=1)
    assert ws.get().payload == payload
    tcp.subscribe(f"{topic}/back", qos=1)
    ws.publish(f"{topic}/back", payload, qos=1)
    assert tcp.get().payload == payload


def test_retained_message_reaches_a_websocket_subscriber(ws_client, client, topic):
    tcp = client(version=4)
    tcp.publish(f"{topic}/state", b"kept", qos=1, retain=True)
    ws = ws_client(version=4)
    ws.subscribe(f"{topic}/state", qos=1)
    m = ws.get()
    assert (m.payload, m.retain) == (b"kept", True)
    tcp.publish(f"{topic}/state", b"", qos=1, retain=True)


def test_will_of_a_websocket_client(ws_client, client, topic):
    """A WebSocket client that drops its connection has its will published to a TCP client."""
    tcp = client(version=5)
    tcp.subscribe(f"{topic}/will", qos=1)
    ws = ws_client(version=5, will={"topic": f"{topic}/will", "payload": b"gone", "qos": 1})
    ws.kill()
    assert tcp.get().payload == b"gone"


# ---------------------------------------------------------------------------------------------
# Eclipse Paho C (tests/interop/paho_c/ws_client.c)

PAHO_C_SOURCE = Path(__file__).parent / "paho_c" / "ws_client.c"


@pytest.fixture(scope="module")
def paho_c_client(tmp_path_factory):
    """The Paho C test client, compiled against Debian's libpaho-mqtt-dev. Skipped when the
    library or gcc is missing, except in CI (scripts/test.sh installs them there)."""
    missing = [what for what, there in [
        ("libpaho-mqtt-dev", Path("/usr/include/MQTTClient.h").exists()),
        ("gcc", shutil.which("gcc") is not None),
    ] if not there]
    if missing:
        message = (f"the Paho C test needs {' and '.join(missing)}: apt-get install "
                   f"{' '.join(missing)} (scripts/test.sh does)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    exe = tmp_path_factory.mktemp("paho_c") / "ws_client"
    p = subprocess.run(["gcc", "-O1", "-Wall", "-o", str(exe), str(PAHO_C_SOURCE),
                        "-lpaho-mqtt3cs"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"cannot compile {PAHO_C_SOURCE}:\n{p.stderr}"
    return exe


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_paho_c_gets_packets_sent_back_to_back(broker, certs, paho_c_client, tls):
    """Paho C reads the next packet only when the socket turns readable: with two packets in
    one frame it stalls. SUBACK + retained PUBLISH, PUBACK + delivery, PUBCOMP + delivery
    must each reach it within 5 s."""
    uri = f"wss://localhost:{WSS_PORT}/mqtt" if tls else f"ws://127.0.0.1:{WS_PORT}/mqtt"
    args = [str(paho_c_client), uri, unique("paho-c")]
    if tls:
        args.append(str(certs / "ca.crt"))
    p = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "every message and acknowledgement arrived" in p.stdout


# ---------------------------------------------------------------------------------------------
# Hand-made frames


def test_one_packet_split_across_frames_and_messages(ws_raw, topic):
    """[MQTT-6.0.0-2] packets need not line up with frames: a CONNECT in three pieces (a
    fragmented message and a message of its own), a PUBLISH split between two messages."""
    c = ws_raw()
    pkt = R.connect(unique("split"))
    c.send_frames(W.frame(W.BINARY, pkt[:3], fin=False),
                  W.frame(W.CONTINUATION, pkt[3:7], fin=True))
    time.sleep(0.1)
    c.send_frames(W.frame(W.BINARY, pkt[7:]))
    assert c.recv_type(R.CONNACK).reason == 0
    c.subscribe(f"{topic}/s")
    pub = R.publish(f"{topic}/s", b"x" * 300)
    c.send_frames(W.frame(W.BINARY, pub[:150]), W.frame(W.BINARY, pub[150:]))
    assert c.recv_type(R.PUBLISH).payload == b"x" * 300


def test_several_packets_in_one_frame(ws_raw, topic):
    """CONNECT, SUBSCRIBE, PUBLISH and PINGREQ in one frame [MQTT-6.0.0-2]; the answers come
    back each in a frame of its own (as other brokers send them: Paho C needs it)."""
    c = ws_raw()
    c.send(R.connect(unique("batch")) + R.subscribe(1, [(f"{topic}/b", 1)])
           + R.publish(f"{topic}/b", b"batched", qos=1, packet_id=7) + R.pingreq())
    assert c.recv_type(R.CONNACK).reason == 0
    got = [c.recv_packet() for _ in range(4)]
    types = sorted(p.type for p in got)
    assert types == sorted([R.SUBACK, R.PUBACK, R.PUBLISH, R.PINGRESP]), got
    assert [p for p in got if p.type == R.PUBLISH][0].payload == b"batched"
    assert len(c.data_frames) == 5, c.data_frames
    for payload in c.data_frames:
        assert W.packet_length(payload) == len(payload), c.data_frames


def test_pings_get_pongs_between_fragments(ws_raw):
    c = ws_raw()
    pkt = R.connect(unique("ping"))
    c.send_frames(W.frame(W.BINARY, pkt[:5], fin=False), W.frame(W.PING, b"hello?"),
                  W.frame(W.CONTINUATION, pkt[5:]))
    assert c.wait_pong() == b"hello?"
    assert c.recv_type(R.CONNACK).reason == 0


def test_a_text_frame_closes_the_connection(ws_raw, client, topic):
    """[MQTT-6.0.0-1] MQTT goes in binary frames: a text frame gets close 1003 and the
    connection ends; the broker carries on."""
    c = ws_raw()
    assert c.connect(unique("text")).reason == 0
    c.send_frames(W.frame(W.TEXT, b"{\"hello\": 1}"))
    assert c.wait_close_frame() == 1003
    c.wait_closed()
    ok = client(version=4)
    ok.subscribe(f"{topic}/alive")


def test_unmasked_frames_are_refused(ws_raw):
    c = ws_raw()
    c.send_frames(W.frame(W.BINARY, R.connect(unique("unmasked")), mask=False))
    assert c.wait_close_frame() == 1002


def test_a_message_over_max_packet_size_is_refused(make_broker):
    port = free_port()
    b = make_broker(limits={"max_packet_size": 2048},
                    listener=[{"url": f"ws://127.0.0.1:{port}/mqtt"}])
    c = W.WsClient(port)
    try:
        assert c.connect(unique("big")).reason == 0
        # The frame header announces 4 KB: refused before the payload is read.
        c.send_frames(W.frame(W.BINARY, b"\x30" + b"\x00" * 4095))
        assert c.wait_close_frame() == 1009
    finally:
        c.close()
    # Within the limit, over the same listener.
    c = W.WsClient(port)
    try:
        assert c.connect(unique("fits")).reason == 0
        c.subscribe("fits/x")
        c.publish("fits/x", b"y" * 1900)
        assert c.recv_type(R.PUBLISH).payload == b"y" * 1900
    finally:
        c.close()


def test_a_client_close_frame_is_answered(ws_raw):
    c = ws_raw()
    assert c.connect(unique("bye")).reason == 0
    c.send_frames(W.frame(W.CLOSE, (1000).to_bytes(2, "big")))
    assert c.wait_close_frame() == 1000


# ---------------------------------------------------------------------------------------------
# The handshake


def test_the_handshake_answers_mqtt(ws_raw):
    c = ws_raw(protocols=("chat", "mqtt"))
    assert c.response_headers["sec-websocket-protocol"] == "mqtt"
    assert c.connect(unique("hs")).reason == 0


def test_mqtt_3_1_clients_get_their_subprotocol(ws_raw):
    c = ws_raw(protocols=("mqttv3.1",), version=3)
    assert c.response_headers["sec-websocket-protocol"] == "mqttv3.1"
    assert c.connect(unique("v31"), version=3).reason == 0


@pytest.mark.parametrize("kw,status,says", [
    ({"path": "/other"}, 404, "served at /mqtt"),
    ({"path": "/"}, 404, "served at /mqtt"),
    ({"protocols": ()}, 400, "mqtt"),
    ({"protocols": ("chat", "MQTT5")}, 400, "[MQTT-6.0.0-3]"),
])
def test_refused_handshakes(broker, kw, status, says):
    with pytest.raises(W.HandshakeRefused) as e:
        W.WsClient(WS_PORT, **kw)
    assert e.value.status == status
    assert says in e.value.response


def test_a_plain_http_request_is_told_to_upgrade(broker):
    r = R.RawClient(WS_PORT)
    try:
        r.sock.sendall(b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = r.sock.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 426 Upgrade Required\r\n"), answer
    finally:
        r.close()


def test_mqtt_bytes_on_the_websocket_port_are_refused(broker, client, topic):
    r = R.RawClient(WS_PORT)
    try:
        r.send(R.connect(unique("tcp-on-ws")))
        answer = r.sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
    finally:
        r.close()
    client(version=4).subscribe(f"{topic}/still-serving")


def test_any_path_with_a_star(make_broker):
    port = free_port()
    make_broker(listener=[{"url": f"ws://127.0.0.1:{port}/*"}])
    for path in ("/", "/mqtt", "/some/where?x=1"):
        assert W.handshake_status(port, path=path) == 101, path


def test_sighup_reloads_the_wss_certificate(make_broker, certs, tmp_path):
    """A wss listener's certificate is read again on SIGHUP: new connections get the new one
    (here signed by another CA), while the old CA no longer verifies."""
    cert, key = tmp_path / "ws.crt", tmp_path / "ws.key"
    shutil.copy(certs / "server.crt", cert)
    shutil.copy(certs / "server.key", key)
    port = free_port()
    b = make_broker(listener=[{"url": f"wss://127.0.0.1:{port}/mqtt", "cert": str(cert),
                               "key": str(key)}])
    old_ca = tls_context(certs)
    new_ca = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                        cafile=str(certs / "unknown-ca.crt"))
    W.WsClient(port, tls_context=old_ca).close()
    # A server certificate from the other CA.
    ext = tmp_path / "ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run = lambda *args: subprocess.run(args, check=True, capture_output=True, timeout=60)
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "new.key"),
        "-out", str(tmp_path / "new.csr"), "-subj", "/CN=localhost")
    run("openssl", "x509", "-req", "-in", str(tmp_path / "new.csr"), "-days", "2",
        "-CA", str(certs / "unknown-ca.crt"), "-CAkey", str(certs / "unknown-ca.key"),
        "-CAserial", str(tmp_path / "srl"), "-CAcreateserial", "-extfile", str(ext),
        "-out", str(tmp_path / "new.crt"))
    shutil.copy(tmp_path / "new.crt", cert)
    shutil.copy(tmp_path / "new.key", key)
    b.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while f"the certificates of wss://127.0.0.1:{port}/mqtt" not in b.stderr_tail(20):
        assert time.monotonic() < deadline, b.stderr_tail(20)
        time.sleep(0.05)
    with pytest.raises(ssl.SSLCertVerificationError):
        W.WsClient(port, tls_context=old_ca)
    c = W.WsClient(port, tls_context=new_ca)
    try:
        assert c.connect(unique("reloaded")).reason == 0
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# X-Forwarded-For


def test_forwarded_for_from_a_trusted_proxy_is_the_client_address(make_broker):
    """Behind a trusted proxy (127.0.0.1 here) the right-most untrusted X-Forwarded-For address
    is the client: max_connection_rate counts it, and the log names it. The same header from an
    untrusted address is ignored."""
    trusted, untrusted = free_port(), free_port()
    b = make_broker(limits={"max_connection_rate": 1}, listener=[
        {"url": f"ws://127.0.0.1:{trusted}/mqtt", "trusted_proxies": ["127.0.0.0/8"]},
        {"url": f"ws://127.0.0.1:{untrusted}/mqtt", "trusted_proxies": ["10.0.0.0/8"]},
    ])

    def connect(port, xff, source):
        c = W.WsClient(port, headers=[f"X-Forwarded-For: {xff}"], version=5, source=source)
        try:
            return c.connect(unique("xff")).reason
        finally:
            c.close()

    # Through the trusted listener, clients behind the same proxy count apart (had the proxy's
    # address been counted, the later ones would wait a second each); the left-most entry
    # (anything a client wrote) is not believed.
    proxy = "127.0.9.1"
    a = [connect(trusted, "6.6.6.6, 203.0.113.5", proxy) for _ in range(4)]
    assert a[0] == 0 and 0x9F in a, a
    assert connect(trusted, "6.6.6.6, 203.0.113.6", proxy) == 0
    assert connect(trusted, "6.6.6.6, 203.0.113.7", proxy) == 0
    # The untrusted listener takes the socket's address, whatever the header says.
    source = "127.0.9.2"
    u = [connect(untrusted, f"198.51.100.{i}", source) for i in range(4)]
    assert u[0] == 0 and 0x9F in u, u
    log = b.stderr_path.read_text()
    assert re.search(r"client connected .*peer=203\.0\.113\.5:0 .*transport=\"?ws\b", log), log[-3000:]
    assert "6.6.6.6" not in log


# ---------------------------------------------------------------------------------------------
# MQTT.js in headless Chromium


@pytest.fixture(scope="module")
def web_page_url():
    """A page served over HTTP from 127.0.0.1, as a web application would be: Chromium lets
    pages of the local address space (not about:blank) open connections to it."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>MQTT over WebSocket</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_mqtt_js_in_a_browser(broker, browser_page, web_page_url, client, topic):
    """MQTT.js (npm `mqtt`) in Chromium connects over ws://, subscribes, receives a message
    paho publishes over TCP, and publishes one paho receives."""
    page = browser_page
    page.goto(web_page_url)
    page.add_script_tag(path=str(mqtt_js_path()))
    tcp = client(version=5)
    tcp.subscribe(f"{topic}/from-browser", qos=1)
    url = f"ws://127.0.0.1:{WS_PORT}/mqtt"
    subscribed = page.evaluate("""([url, topic]) => new Promise((resolve, reject) => {
        const c = mqtt.connect(url, {protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 5000});
        window.client = c;
        window.received = [];
        c.on('message', (t, payload) => window.received.push([t, payload.toString()]));
        c.on('error', (e) => reject(String(e)));
        c.on('connect', () => c.subscribe(topic, {qos: 1},
            (err, granted) => err ? reject(String(err)) : resolve(granted[0].qos)));
    })""", [url, f"{topic}/to-browser"])
    assert subscribed == 1
    tcp.publish(f"{topic}/to-browser", "to the browser".encode(), qos=1)
    page.wait_for_function("window.received.length > 0", timeout=5000)
    assert page.evaluate("window.received") == [[f"{topic}/to-browser", "to the browser"]]
    page.evaluate("""([topic]) => new Promise((resolve, reject) =>
        window.client.publish(topic, 'from the browser', {qos: 1},
            (err) => err ? reject(String(err)) : resolve()))""", [f"{topic}/from-browser"])
    assert tcp.get().payload == b"from the browser"
    page.evaluate("() => new Promise((resolve) => window.client.end(false, {}, resolve))")
