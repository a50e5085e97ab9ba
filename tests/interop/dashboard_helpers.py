"""Helpers for the dashboard tests: a Makelaar broker with an `http://` listener and a
`[dashboard]` table, plain HTTP requests from chosen source addresses, server-sent events read
from a raw socket, and screenshot checks with Pillow."""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import time

from brokers import Broker, _toml_value


class DashboardBroker(Broker):
    """A Makelaar broker with an http:// listener (config {"http": True}); `dashboard` is the
    `[dashboard]` table (a dict), written after the settings."""

    def __init__(self, workdir, certs, config, name="dashboard", dashboard=None, extra=""):
        super().__init__(workdir, certs, dict(config, http=True), name=name)
        self.dashboard = dashboard or {}
        self.extra = extra

    @property
    def url(self) -> str:
        return self.http_url

    def _write_makelaar_config(self):
        path = super()._write_makelaar_config()
        if self.dashboard:
            with path.open("a") as f:
                f.write("\n[dashboard]\n" + "".join(
                    f"{k} = {_toml_value(v)}\n" for k, v in self.dashboard.items()))
        if self.extra:
            with path.open("a") as f:
                f.write("\n" + self.extra)
        return path


def start_dashboard_broker(tmp_path_factory, certs, name, dashboard=None, extra="", **settings):
    """Starts a DashboardBroker registered with conftest (its output is attached to failures;
    stop it with conftest._stop)."""
    import conftest
    from brokers import DEFAULT_CONFIG, merge_config

    b = DashboardBroker(tmp_path_factory.mktemp(name), certs,
                        merge_config(DEFAULT_CONFIG, settings), name=name, dashboard=dashboard,
                        extra=extra)
    b.start()
    conftest._active_brokers.append(b)
    return b


class Answer:
    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.headers = headers
        self.body = body
        self.elapsed = elapsed

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<HTTP {self.status} {self.body[:200]!r}>"


def request(broker, method, path, user=None, password=None, headers=None, source="127.0.0.1",
            timeout=30):
    """One HTTP request to the broker's dashboard from `source` (a loopback address)."""
    h = dict(headers or {})
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        h["Authorization"] = f"Basic {token}"
    conn = http.client.HTTPConnection("127.0.0.1", broker.http_port, timeout=timeout,
                                      source_address=(source, 0))
    start = time.monotonic()
    try:
        conn.request(method, path, headers=h)
        resp = conn.getresponse()
        body = resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body,
                      time.monotonic() - start)
    finally:
        conn.close()


class EventReader:
    """Server-sent events read from a raw socket: `events()` parses what has arrived."""

    def __init__(self, broker, path, rcvbuf=None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", broker.http_port))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{broker.http_port}\r\n"
                          f"Accept: text/event-stream\r\n\r\n".encode())
        self.buf = b""

    def read_until(self, needle: bytes, timeout=10):
        deadline = time.monotonic() + timeout
        while needle not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not received in {timeout}s; got "
                                     f"{self.buf[-500:]!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"stream ended before {needle!r}: {self.buf[-500:]!r}")
            self.buf += chunk

    def events(self):
        """(name, data) of every complete event so far (chunked framing is skipped over:
        event lines are recognised by their prefixes)."""
        out, name = [], None
        for line in self.buf.split(b"\n"):
            line = line.rstrip(b"\r")
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: ") and name:
                try:
                    out.append((name, json.loads(line[6:])))
                except ValueError:
                    pass  # cut by a chunk boundary
                name = None
        return out

    def close(self):
        self.sock.close()


# ---- screenshots --------------------------------------------------------------------------

def image(png: bytes):
    from PIL import Image
    return Image.open(io.BytesIO(png)).convert("RGB")


def not_blank(img, min_share=0.03):
    """Asserts that more than `min_share` of the pixels differ from the most common colour
    and that the picture has some variety (not one flat colour, not an error page's few)."""
    colours = img.getcolors(maxcolors=1 << 20) or []
    assert colours, "screenshot has too many colours to count"
    total = img.width * img.height
    top = max(colours)[0]
    assert (total - top) / total > min_share, "screenshot is (almost) all one colour"
    assert len(colours) > 50, f"screenshot has only {len(colours)} colours"


def pixels_near(img, rgb, tolerance=40, box=None):
    """How many pixels within `box` (left, top, right, bottom) are within `tolerance` of
    `rgb` on every channel."""
    if box:
        img = img.crop(box)
    r0, g0, b0 = rgb
    data = img.tobytes()  # RGB, 3 bytes a pixel
    n = 0
    for i in range(0, len(data) - 2, 3):
        if (abs(data[i] - r0) <= tolerance and abs(data[i + 1] - g0) <= tolerance
                and abs(data[i + 2] - b0) <= tolerance):
            n += 1
    return n
