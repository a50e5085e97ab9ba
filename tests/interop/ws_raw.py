"""A hand-made WebSocket client (RFC 6455) for tests that must control the frames: MQTT
packets split across frames or sharing one, text frames, oversized frames, pings, wrong paths
and subprotocols. Also PROXY protocol headers (v1 and v2) for proxied connections.

WsClient is an mqtt_raw.RawClient whose bytes travel in WebSocket frames: send() wraps bytes in
one binary frame, recv_packet() decodes MQTT packets from the binary frames' payloads, and the
server's control frames are noted (pongs, the close code).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import socket
import struct
import time

import mqtt_raw as R

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes, fin=True, mask=True) -> bytes:
    """A client frame (masked unless told otherwise)."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head.append(bit | n)
    elif n <= 0xFFFF:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def packet_length(data: bytes) -> int:
    """The whole length of the MQTT packet `data` starts with, from its fixed header."""
    n, shift = 0, 0
    for i, b in enumerate(data[1:5], start=1):
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return 1 + i + n
    raise ValueError(f"no complete fixed header in {data[:5]!r}")


def upgrade_request(host, port, path="/mqtt", protocols=("mqtt",), headers=()) -> tuple:
    """The HTTP upgrade request, and the Sec-WebSocket-Accept the server must answer with."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if protocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
    lines.extend(headers)
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), accept


class HandshakeRefused(Exception):
    def __init__(self, status, response):
        super().__init__(f"HTTP {status}: {response!r}")
        self.status = status
        self.response = response


def proxy_v1(src, dst="127.0.0.1", sport=40000, dport=1883) -> bytes:
    proto = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode()


def proxy_v2(src, dst="127.0.0.1", sport=40000, dport=1883, local=False, tlvs=b"") -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        fam, addrs = 0x11, s.packed + d.packed
    else:
        fam, addrs = 0x21, s.packed + d.packed
    body = addrs + struct.pack("!HH", sport, dport) + tlvs
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    return sig + bytes([0x20 if local else 0x21, fam]) + struct.pack("!H", len(body)) + body


class WsClient(R.RawClient):
    """MQTT over a hand-made WebSocket. Raises HandshakeRefused when the server answers the
    upgrade with anything but 101 (the status and the whole answer in the exception)."""

    def __init__(self, port, host="127.0.0.1", path="/mqtt", protocols=("mqtt",), headers=(),
                 version=4, timeout=5.0, tls_context=None, source=None, preamble=None):
        super().__init__(port, host, version=version, timeout=timeout, tls_context=tls_context,
                         source=source, preamble=preamble)
        self.wire = bytearray()
        self.pongs: list[bytes] = []
        self.data_frames: list[bytes] = []  # the payload of every binary frame received
        self.close_code = None  # the server's close frame: its code (or 0 without one)
        request, accept = upgrade_request(host, port, path, protocols, headers)
        self.sock.sendall(request)
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.wire:
            if not self._recv_wire(deadline):
                break
        head, sep, rest = bytes(self.wire).partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
        if status != 101:
            # The rest of the answer (its body) until the server closes.
            try:
                while self._recv_wire(deadline):
                    pass
            except TimeoutError:
                pass
            self.close()
            raise HandshakeRefused(status, bytes(self.wire).decode(errors="replace"))
        lines = head.decode().split("\r\n")[1:]
        # The answer's headers, names in lower case (each name once is enough here).
        self.response_headers = {k.strip().lower(): v.strip()
                                 for k, _, v in (line.partition(":") for line in lines)}
        assert self.response_headers.get("sec-websocket-accept") == accept, lines
        self.wire = bytearray(rest)

    # -- sending --
    def send(self, data: bytes):
        """Bytes as one binary frame."""
        self.sock.sendall(frame(BINARY, data))

    def send_frames(self, *frames: bytes):
        """Hand-made frames, in one write."""
        self.sock.sendall(b"".join(frames))

    # -- receiving --
    def _recv_wire(self, deadline) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from broker")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data from broker") from None
        except OSError as e:
            self.eof = True
            raise R.Closed(str(e)) from None
        if not chunk:
            return False
        self.wire += chunk
        return True

    def _frames(self):
        """Takes the complete server frames out of self.wire."""
        while len(self.wire) >= 2:
            b0, b1 = self.wire[0], self.wire[1]
            assert not b1 & 0x80, "server frames must not be masked"
            n, at = b1 & 0x7F, 2
            if n == 126:
                if len(self.wire) < 4:
                    return
                n, at = struct.unpack("!H", self.wire[2:4])[0], 4
            elif n == 127:
                if len(self.wire) < 10:
                    return
                n, at = struct.unpack("!Q", self.wire[2:10])[0], 10
            if len(self.wire) < at + n:
                return
            payload = bytes(self.wire[at:at + n])
            del self.wire[:at + n]
            yield b0 & 0x0F, payload

    def _fill(self, deadline):
        """Reads until at least one whole frame is taken in (or the connection ends)."""
        if self.close_code is not None:
            self.eof = True
            raise R.Closed(f"close frame {self.close_code}")
        while True:
            progressed = False
            for opcode, payload in self._frames():
                progressed = True
                if opcode in (BINARY, CONTINUATION):
                    self.buf += payload
                    self.data_frames.append(payload)
                elif opcode == PONG:
                    self.pongs.append(payload)
                elif opcode == CLOSE:
                    self.close_code = (struct.unpack("!H", payload[:2])[0]
                                       if len(payload) >= 2 else 0)
                    return
                else:
                    raise AssertionError(f"unexpected frame opcode {opcode:#x} from the server")
            if progressed:
                return
            if not self._recv_wire(deadline):
                self.eof = True
                raise R.Closed("connection closed by broker")

    def wait_close_frame(self, timeout=5.0) -> int:
        """Waits for the server's close frame (what comes before it is dropped); its code."""
        deadline = time.monotonic() + timeout
        try:
            while self.close_code is None:
                self._fill(deadline)
        except R.Closed:
            pass
        assert self.close_code is not None, "the connection ended without a close frame"
        return self.close_code

    def wait_pong(self, timeout=5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while not self.pongs:
            self._fill(deadline)
        return self.pongs.pop(0)


def handshake_status(port, **kw) -> int:
    """The HTTP status the server answers an upgrade request with (101 when upgraded)."""
    try:
        c = WsClient(port, **kw)
    except HandshakeRefused as e:
        return e.status
    c.close()
    return 101
