"""paho-mqtt 2.x clients for the tests: every call that waits for the broker is bounded by a
timeout, received messages are collected into a queue."""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

WAIT = 5.0  # default bound on any single wait for the broker

PROTOCOLS = {3: mqtt.MQTTv31, 4: mqtt.MQTTv311, 5: mqtt.MQTTv5}


def unique(prefix="t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def props(packet_type, **values) -> Properties:
    """Properties(PacketTypes.X) with attributes set, e.g. props(PacketTypes.PUBLISH,
    ContentType="text/plain", UserProperty=[("a", "1")])."""
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


def rc_value(rc) -> int:
    """A paho ReasonCode (or int) as an int."""
    if rc is None:
        return None
    return rc.value if hasattr(rc, "value") else int(rc)


class ConnAck:
    def __init__(self, flags, reason_code, properties):
        self.session_present = bool(getattr(flags, "session_present", False))
        self.reason_code = rc_value(reason_code)
        self.properties = properties

    def __repr__(self):
        return (f"<CONNACK rc={self.reason_code:#x} session_present={self.session_present} "
                f"props={self.properties}>")


class MqttClient:
    """A paho client running its network loop in a thread, with blocking helpers.

    version: 3 (MQTT 3.1), 4 (3.1.1) or 5. clean: clean session (3.x) / clean start (5).
    """

    def __init__(self, broker, client_id=None, version=5, clean=True, tls=False, cafile=None,
                 certfile=None, keyfile=None, manual_ack=False, username=None, password=None,
                 bind_address=None, transport="tcp", ws_path="/mqtt", port=None):
        self.broker = broker
        self.version = version
        self.clean = clean
        self.client_id = unique("c") if client_id is None else client_id
        # port: where connect() goes unless told (default: the broker's mqtt or mqtts port);
        # transport="websockets" with ws_path for the broker's ws:// and wss:// listeners.
        self.port = port
        kw = {}
        if version < 5:
            kw["clean_session"] = clean
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=PROTOCOLS[version], reconnect_on_failure=False,
                             manual_ack=manual_ack, transport=transport, **kw)
        if transport == "websockets":
            self.c.ws_set_options(path=ws_path)
        self.bind_address = bind_address or ""
        if username is not None:
            self.c.username_pw_set(username, password)
        self.tls = tls
        if tls:
            self.c.tls_set(ca_certs=cafile or broker.cafile, certfile=certfile, keyfile=keyfile,
                           cert_reqs=ssl.CERT_REQUIRED)
        self.messages: queue.Queue = queue.Queue()
        self.connack: ConnAck | None = None
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self.disconnect_reason = None
        self.disconnect_properties = None
        self._cond = threading.Condition()
        self._subacks = {}
        self._unsubacks = {}
        self._pubacks = {}
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_publish = self._on_publish
        self._loop_started = False

    # -- callbacks (network thread) --
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = ConnAck(flags, reason_code, properties)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = rc_value(reason_code)
        self.disconnect_properties = properties
        self._disconnected.set()
        self._connected.set()  # wake a connect() that is waiting for a CONNACK that won't come

    def _on_message(self, client, userdata, msg):
        self.messages.put(msg)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self._subacks[mid] = ([rc_value(r) for r in reason_codes], properties)
            self._cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self._unsubacks[mid] = ([rc_value(r) for r in reason_codes], properties)
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._cond:
            self._pubacks[mid] = rc_value(reason_code)
            self._cond.notify_all()

    def _wait_for(self, table, mid, timeout, what):
        with self._cond:
            if not self._cond.wait_for(lambda: mid in table, timeout):
                raise TimeoutError(f"{what} not received within {timeout}s")
            return table.pop(mid)

    # -- operations --
    def will_set(self, topic, payload, qos=0, retain=False, properties=None):
        self.c.will_set(topic, payload, qos, retain, properties)
        return self

    def connect(self, keepalive=60, properties=None, timeout=WAIT, port=None,
                expect_success=True) -> ConnAck:
        """Connect and wait for CONNACK. With expect_success, a refused CONNACK fails the test."""
        self._connected.clear()
        self._disconnected.clear()
        self.connack = None
        if port is None:
            port = self.port
        if port is None:
            port = self.broker.tls_port if self.tls else self.broker.port
        kw = {}
        if self.version == 5:
            kw["clean_start"] = self.clean
            kw["properties"] = properties
        self.c.connect(self.broker.host, port, keepalive=keepalive,
                       bind_address=self.bind_address, **kw)
        if not self._loop_started:
            self.c.loop_start()
            self._loop_started = True
        if not self._connected.wait(timeout):
            raise TimeoutError(f"no CONNACK within {timeout}s")
        if self.connack is None:
            raise ConnectionError(f"connection closed before CONNACK "
                                  f"(reason {self.disconnect_reason})")
        if expect_success:
            assert self.connack.reason_code == 0, f"connection refused: {self.connack!r}"
        return self.connack

    def subscribe(self, topic, qos=0, options=None, properties=None, timeout=WAIT):
        """Subscribe and wait for SUBACK; returns the list of reason codes (granted QoS).
        topic may be a list of (filter, qos or SubscribeOptions) pairs."""
        if options is not None:
            arg = (topic, options)
        elif isinstance(topic, list):
            arg = topic
        else:
            arg = (topic, SubscribeOptions(qos=qos)) if self.version == 5 else (topic, qos)
        rc, mid = self.c.subscribe(arg, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {rc}"
        codes, _ = self._wait_for(self._subacks, mid, timeout, "SUBACK")
        return codes

    def unsubscribe(self, topic, properties=None, timeout=WAIT):
        rc, mid = self.c.unsubscribe(topic, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe failed locally: {rc}"
        codes, _ = self._wait_for(self._unsubacks, mid, timeout, "UNSUBACK")
        return codes

    def publish(self, topic, payload=b"", qos=0, retain=False, properties=None, wait=True,
                timeout=WAIT):
        """Publish; with wait, block until PUBACK/PUBCOMP (QoS 1/2) or until written (QoS 0).
        Returns the v5 reason code of the acknowledgement (0 for QoS 0)."""
        info = self.c.publish(topic, payload, qos, retain, properties)
        if not wait:
            return info
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"publish to {topic!r} (qos {qos}) not acknowledged in {timeout}s")
        if qos == 0:
            return 0
        return self._wait_for(self._pubacks, info.mid, timeout, "PUBACK")

    def get(self, timeout=WAIT):
        """The next received message; fails the test if none arrives within timeout."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout}s") from None

    def get_n(self, n, timeout=WAIT):
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            remaining = deadline - time.monotonic()
            try:
                out.append(self.messages.get(timeout=max(0.0, remaining)))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id}: got {len(out)} of {n} messages within {timeout}s: "
                    f"{[(m.topic, m.payload[:30]) for m in out]}") from None
        return out

    def drain(self, quiet=0.5, timeout=WAIT):
        """Collect messages until none arrive for `quiet` seconds (bounded by timeout)."""
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                out.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                break
        return out

    def expect_none(self, timeout=0.7):
        """Assert that no message arrives within timeout seconds."""
        try:
            m = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id}: unexpected message {m.topic!r} {m.payload!r}")

    def wait_disconnected(self, timeout=WAIT):
        """Wait until the connection ends; returns the reason code paho reports."""
        if not self._disconnected.wait(timeout):
            raise AssertionError(f"{self.client_id}: still connected after {timeout}s")
        return self.disconnect_reason

    @property
    def is_connected(self):
        return self.c.is_connected()

    def disconnect(self, reasoncode=None, properties=None, timeout=WAIT):
        """Send DISCONNECT (v5: with reasoncode, an int) and wait for the connection to end."""
        if self.c.is_connected():
            rc = None
            if reasoncode is not None:
                rc = mqtt.ReasonCode(PacketTypes.DISCONNECT, identifier=reasoncode)
            self.c.disconnect(rc, properties)
            self._disconnected.wait(timeout)
        self.stop()

    def kill(self):
        """Drop the TCP connection without DISCONNECT (a crashed client)."""
        sock = self.c.socket()
        # Over WebSocket, paho's socket is a wrapper around the TCP (or TLS) socket.
        sock = getattr(sock, "_socket", sock)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._disconnected.wait(WAIT)
        self.stop()

    def stop(self):
        if self._loop_started:
            self.c.loop_stop()
            self._loop_started = False

    def close(self):
        try:
            if self.c.is_connected():
                self.c.disconnect()
        except Exception:
            pass
        self.stop()
