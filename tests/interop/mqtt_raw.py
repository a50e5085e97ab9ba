"""A small hand-written MQTT codec and a raw-socket client, for tests that must see (or send)
exact bytes: malformed input, packet ids, DUP flags, topic aliases, unacknowledged flows.

Properties are kept as an ordered list of (id, value) pairs so repeated and ordered properties
(user properties, subscription identifiers) can be checked exactly.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass, field

# Packet types
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = (
    8, 9, 10, 11, 12, 13, 14, 15)

TYPE_NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
    7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}

# Property identifiers (MQTT 5.0 section 2.2.2.2)
PAYLOAD_FORMAT_INDICATOR = 0x01
MESSAGE_EXPIRY_INTERVAL = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_IDENTIFIER = 0x0B
SESSION_EXPIRY_INTERVAL = 0x11
ASSIGNED_CLIENT_IDENTIFIER = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTHENTICATION_METHOD = 0x15
AUTHENTICATION_DATA = 0x16
REQUEST_PROBLEM_INFORMATION = 0x17
WILL_DELAY_INTERVAL = 0x18
REQUEST_RESPONSE_INFORMATION = 0x19
RESPONSE_INFORMATION = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
SHARED_SUBSCRIPTION_AVAILABLE = 0x2A

_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
PROPERTY_TYPES = {
    PAYLOAD_FORMAT_INDICATOR: _BYTE, MESSAGE_EXPIRY_INTERVAL: _U32, CONTENT_TYPE: _STR,
    RESPONSE_TOPIC: _STR, CORRELATION_DATA: _BIN, SUBSCRIPTION_IDENTIFIER: _VARINT,
    SESSION_EXPIRY_INTERVAL: _U32, ASSIGNED_CLIENT_IDENTIFIER: _STR, SERVER_KEEP_ALIVE: _U16,
    AUTHENTICATION_METHOD: _STR, AUTHENTICATION_DATA: _BIN, REQUEST_PROBLEM_INFORMATION: _BYTE,
    WILL_DELAY_INTERVAL: _U32, REQUEST_RESPONSE_INFORMATION: _BYTE, RESPONSE_INFORMATION: _STR,
    SERVER_REFERENCE: _STR, REASON_STRING: _STR, RECEIVE_MAXIMUM: _U16,
    TOPIC_ALIAS_MAXIMUM: _U16, TOPIC_ALIAS: _U16, MAXIMUM_QOS: _BYTE, RETAIN_AVAILABLE: _BYTE,
    USER_PROPERTY: _PAIR, MAXIMUM_PACKET_SIZE: _U32, WILDCARD_SUBSCRIPTION_AVAILABLE: _BYTE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE: _BYTE, SHARED_SUBSCRIPTION_AVAILABLE: _BYTE,
}


class DecodeError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def mstr(s) -> bytes:
    """An MQTT string (or binary data): 2-byte length then the bytes. Accepts str or bytes, so
    tests can put invalid UTF-8 on the wire."""
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return u16(len(b)) + b


def encode_properties(props) -> bytes:
    """props: list of (id, value) pairs (a dict is accepted too). User property value: (k, v)."""
    if props is None:
        return varint(0)
    if isinstance(props, dict):
        props = list(props.items())
    body = bytearray()
    for pid, value in props:
        kind = PROPERTY_TYPES[pid]
        body += varint(pid)
        if kind == _BYTE:
            body.append(value)
        elif kind == _U16:
            body += u16(value)
        elif kind == _U32:
            body += u32(value)
        elif kind == _VARINT:
            body += varint(value)
        elif kind in (_STR, _BIN):
            body += mstr(value)
        elif kind == _PAIR:
            body += mstr(value[0]) + mstr(value[1])
    return varint(len(body)) + bytes(body)


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + varint(len(body)) + body


def connect(client_id="", version=4, clean=True, keepalive=60, will=None, username=None,
            password=None, properties=None, protocol_name=None) -> bytes:
    """version: 3 (MQIsdp), 4 (3.1.1) or 5. will: dict(topic, payload, qos=0, retain=False,
    properties=None)."""
    if protocol_name is None:
        protocol_name = "MQIsdp" if version == 3 else "MQTT"
    flags = 0
    if clean:
        flags |= 0x02
    if will is not None:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    body = mstr(protocol_name) + bytes([version, flags]) + u16(keepalive)
    if version == 5:
        body += encode_properties(properties)
    body += mstr(client_id)
    if will is not None:
        if version == 5:
            body += encode_properties(will.get("properties"))
        body += mstr(will["topic"]) + mstr(will["payload"])
    if username is not None:
        body += mstr(username)
    if password is not None:
        body += mstr(password)
    return packet(CONNECT, 0, body)


def publish(topic, payload=b"", qos=0, retain=False, dup=False, packet_id=None, version=4,
            properties=None) -> bytes:
    flags = (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    body = mstr(topic)
    if qos > 0:
        body += u16(1 if packet_id is None else packet_id)
    if version == 5:
        body += encode_properties(properties)
    if isinstance(payload, str):
        payload = payload.encode()
    return packet(PUBLISH, flags, body + payload)


def ack(ptype: int, packet_id: int, reason=None, version=4, properties=None) -> bytes:
    """PUBACK, PUBREC, PUBREL (flags 0b0010) or PUBCOMP."""
    body = u16(packet_id)
    if version == 5 and (reason not in (None, 0) or properties):
        body += bytes([reason or 0])
        if properties:
            body += encode_properties(properties)
    return packet(ptype, 0x02 if ptype == PUBREL else 0, body)


def subscribe(packet_id, filters, version=4, properties=None) -> bytes:
    """filters: list of (filter, options byte) — for 3.1.1 the options byte is the QoS."""
    body = u16(packet_id)
    if version == 5:
        body += encode_properties(properties)
    for f, opts in filters:
        body += mstr(f) + bytes([opts])
    return packet(SUBSCRIBE, 0x02, body)


def sub_options(qos=0, no_local=False, retain_as_published=False, retain_handling=0) -> int:
    return qos | (0x04 if no_local else 0) | (0x08 if retain_as_published else 0) | (
        retain_handling << 4)


def unsubscribe(packet_id, filters, version=4, properties=None) -> bytes:
    body = u16(packet_id)
    if version == 5:
        body += encode_properties(properties)
    for f in filters:
        body += mstr(f)
    return packet(UNSUBSCRIBE, 0x02, body)


def pingreq() -> bytes:
    return packet(PINGREQ, 0, b"")


def disconnect(reason=None, version=4, properties=None) -> bytes:
    body = b""
    if version == 5 and (reason not in (None, 0) or properties):
        body = bytes([reason or 0])
        if properties:
            body += encode_properties(properties)
    return packet(DISCONNECT, 0, body)


def auth(reason=0, properties=None) -> bytes:
    return packet(AUTH, 0, bytes([reason]) + encode_properties(properties))


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

class Props(list):
    """Ordered (id, value) list with lookups."""

    def get(self, pid, default=None):
        for k, v in self:
            if k == pid:
                return v
        return default

    def all(self, pid):
        return [v for k, v in self if k == pid]

    def has(self, pid):
        return any(k == pid for k, _ in self)


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def left(self):
        return len(self.data) - self.pos

    def take(self, n):
        if self.pos + n > len(self.data):
            raise DecodeError("truncated packet")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def byte(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def varint(self):
        mult, value = 1, 0
        for _ in range(4):
            b = self.byte()
            value += (b & 0x7F) * mult
            if not b & 0x80:
                return value
            mult *= 128
        raise DecodeError("malformed variable byte integer")

    def binary(self):
        return self.take(self.u16())

    def string(self):
        return self.binary().decode("utf-8")

    def properties(self):
        length = self.varint()
        end = self.pos + length
        props = Props()
        while self.pos < end:
            pid = self.varint()
            kind = PROPERTY_TYPES.get(pid)
            if kind is None:
                raise DecodeError(f"unknown property id {pid:#x}")
            if kind == _BYTE:
                v = self.byte()
            elif kind == _U16:
                v = self.u16()
            elif kind == _U32:
                v = self.u32()
            elif kind == _VARINT:
                v = self.varint()
            elif kind == _STR:
                v = self.string()
            elif kind == _BIN:
                v = self.binary()
            else:
                v = (self.string(), self.string())
            props.append((pid, v))
        if self.pos != end:
            raise DecodeError("property length mismatch")
        return props


@dataclass
class Packet:
    type: int
    flags: int
    raw: bytes  # the body (after the fixed header)
    packet_id: int | None = None
    reason: int | None = None  # CONNACK return code / reason code, PUBACK.. reason, DISCONNECT
    reasons: list = field(default_factory=list)  # SUBACK / UNSUBACK
    properties: Props = field(default_factory=Props)
    session_present: bool = False
    topic: str | bytes | None = None
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False

    @property
    def name(self):
        return TYPE_NAMES.get(self.type, f"type{self.type}")

    def __repr__(self):
        parts = [self.name]
        for attr in ("packet_id", "reason", "topic"):
            v = getattr(self, attr)
            if v is not None:
                parts.append(f"{attr}={v!r}")
        if self.type == PUBLISH:
            parts.append(f"qos={self.qos} retain={self.retain} dup={self.dup} "
                         f"payload={self.payload[:40]!r}")
        if self.reasons:
            parts.append(f"reasons={self.reasons}")
        if self.properties:
            parts.append(f"props={list(self.properties)}")
        return "<" + " ".join(parts) + ">"


def decode(ptype_flags: int, body: bytes, version: int) -> Packet:
    ptype, flags = ptype_flags >> 4, ptype_flags & 0x0F
    p = Packet(type=ptype, flags=flags, raw=body)
    r = _Reader(body)
    if ptype == CONNACK:
        p.session_present = bool(r.byte() & 1)
        p.reason = r.byte()
        if version == 5 and r.left():
            p.properties = r.properties()
    elif ptype == PUBLISH:
        p.qos = (flags >> 1) & 3
        p.retain = bool(flags & 1)
        p.dup = bool(flags & 8)
        t = r.binary()
        try:
            p.topic = t.decode("utf-8")
        except UnicodeDecodeError:
            p.topic = t
        if p.qos:
            p.packet_id = r.u16()
        if version == 5:
            p.properties = r.properties()
        p.payload = r.take(r.left())
    elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        p.packet_id = r.u16()
        p.reason = 0
        if version == 5 and r.left():
            p.reason = r.byte()
            if r.left():
                p.properties = r.properties()
    elif ptype in (SUBACK, UNSUBACK):
        p.packet_id = r.u16()
        if version == 5:
            p.properties = r.properties()
        p.reasons = list(r.take(r.left()))
    elif ptype in (DISCONNECT, AUTH):
        p.reason = 0
        if r.left():
            p.reason = r.byte()
            if r.left():
                p.properties = r.properties()
    return p


# ---------------------------------------------------------------------------------------------
# Raw client
# ---------------------------------------------------------------------------------------------

class Closed(Exception):
    """The broker closed the connection."""


class RawClient:
    """A TCP (or TLS) connection that sends hand-made bytes and decodes what comes back.

    Every read is bounded by a timeout; recv_packet raises TimeoutError when nothing arrives and
    Closed when the broker closes the connection.
    """

    def __init__(self, port, host="127.0.0.1", version=4, timeout=5.0, tls_context=None,
                 source=None, preamble=None):
        self.version = version
        self.timeout = timeout
        # source: a local address to connect from, e.g. another 127.x.y.z for a test whose
        # failed logins must not slow down the others (brokers slow down by address).
        sock = socket.create_connection((host, port), timeout=timeout,
                                        source_address=(source, 0) if source else None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if preamble:
            # Bytes before anything else, before TLS: a PROXY protocol header.
            sock.sendall(preamble)
        if tls_context is not None:
            sock = tls_context.wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    # -- sending --
    def send(self, data: bytes):
        self.sock.sendall(data)

    def try_send(self, data: bytes) -> bool:
        """Send, returning False instead of raising when the broker has closed the socket."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, ssl.SSLError,
                OSError):
            return False

    # -- receiving --
    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from broker")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data from broker") from None
        except (ConnectionResetError, ConnectionAbortedError, ssl.SSLError, OSError) as e:
            if isinstance(e, socket.timeout):
                raise TimeoutError("no data from broker") from None
            self.eof = True
            raise Closed(str(e)) from None
        if not chunk:
            self.eof = True
            raise Closed("connection closed by broker")
        self.buf += chunk

    def _try_parse(self):
        if len(self.buf) < 2:
            return None
        mult, length, i = 1, 0, 1
        while True:
            if i >= len(self.buf):
                return None
            b = self.buf[i]
            length += (b & 0x7F) * mult
            i += 1
            if not b & 0x80:
                break
            mult *= 128
            if i > 4:
                raise DecodeError("malformed remaining length from broker")
        if len(self.buf) < i + length:
            return None
        first = self.buf[0]
        body = bytes(self.buf[i:i + length])
        del self.buf[:i + length]
        return decode(first, body, self.version)

    def recv_packet(self, timeout=None) -> Packet:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            p = self._try_parse()
            if p is not None:
                return p
            if self.eof:
                raise Closed("connection closed by broker")
            self._fill(deadline)

    def recv_type(self, ptype, timeout=None, skip=()) -> Packet:
        """Next packet, which must be of type ptype (packets whose type is in skip are dropped)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            p = self.recv_packet(max(0.0, deadline - time.monotonic()))
            if p.type in skip:
                continue
            assert p.type == ptype, f"expected {TYPE_NAMES[ptype]}, got {p!r}"
            return p

    def expect_nothing(self, timeout=0.5):
        """Assert no packet arrives (and the connection stays open) for timeout seconds."""
        try:
            p = self.recv_packet(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected packet {p!r}")

    def wait_closed(self, timeout=5.0) -> list:
        """Wait until the broker closes the connection; returns the packets received before.
        Raises AssertionError if the connection is still open after timeout seconds."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            try:
                got.append(self.recv_packet(max(0.0, deadline - time.monotonic())))
            except Closed:
                return got
            except TimeoutError:
                raise AssertionError(
                    f"broker did not close the connection within {timeout}s; got {got!r}"
                ) from None

    def closed_with(self, timeout=5.0):
        """Wait for the close and return the DISCONNECT packet seen before it, or None."""
        got = self.wait_closed(timeout)
        for p in got:
            if p.type == DISCONNECT:
                return p
        return None

    # -- conveniences --
    def connect(self, client_id="", timeout=None, **kw) -> Packet:
        kw.setdefault("version", self.version)
        self.send(connect(client_id, **kw))
        return self.recv_type(CONNACK, timeout)

    def subscribe(self, filters, packet_id=1, properties=None, timeout=None) -> Packet:
        if isinstance(filters, str):
            filters = [(filters, 0)]
        self.send(subscribe(packet_id, filters, self.version, properties))
        return self.recv_type(SUBACK, timeout)

    def publish(self, topic, payload=b"", qos=0, **kw):
        kw.setdefault("version", self.version)
        self.send(publish(topic, payload, qos, **kw))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Drop the connection abruptly (RST), like a crashed client."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
