"""Brokers for the bridge tests: Makelaar with `[[bridge]]` tables (started, killed with
SIGKILL and started again on the same data directory) and Debian's Mosquitto 2.0 as a
remote, with or without persistence, and with bridges of its own."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from pathlib import Path

from brokers import ProcessHandle, find_makelaar, free_port, mosquitto_exe


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def bridge_toml(name: str, port: int, topics: list[dict], tls: dict | None = None,
                queue: dict | None = None, **keys) -> str:
    """One `[[bridge]]` table to 127.0.0.1:port with its `[[bridge.topic]]` tables and, with
    `tls` and `queue`, its `[bridge.tls]` and `[bridge.queue]`. Quick reconnects unless told: restart_timeout [1] (one
    second)."""
    keys = {"restart_timeout": [1], "keepalive": 10,
            "addresses": [f"127.0.0.1:{port}"], **keys}
    lines = ["[[bridge]]", f"name = {toml_value(name)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    for t in topics:
        lines.append("[[bridge.topic]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in t.items()]
    for table, values in (("tls", tls), ("queue", queue)):
        if values is not None:
            lines.append(f"[bridge.{table}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"broker did not listen on {port}:\n{tail(log)}") from None
            time.sleep(0.02)


def tail(log: Path, lines=60) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Proc(ProcessHandle):
    """A broker process with a port, a log file and start / stop / kill."""

    host = "127.0.0.1"
    cafile = None
    tls_port = None

    def __init__(self, workdir: Path, name: str):
        self.workdir = Path(workdir) / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        self.log = self.workdir / "broker.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self):
        with open(self.log, "ab") as log:
            log.write(b"--- start\n")
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")})
        wait_port(self.port, self.proc, self.log)
        return self

    def tail(self) -> str:
        return tail(self.log)


class Makelaar(Proc):
    """`makelaar serve` with a data directory and `[[bridge]]` tables (`bridges`: TOML)."""

    def __init__(self, workdir: Path, name: str, bridges: str = "", limits: dict | None = None,
                 top: str = "sys_interval = 0"):
        super().__init__(workdir, name)
        self.data = self.workdir / "data"
        self.config = self.workdir / "makelaar.toml"
        self.limits = limits or {}
        self.top = top
        self.set_bridges(bridges)

    def set_bridges(self, bridges: str):
        """Top-level keys first (`top`), then the `[[bridge]]` tables, then `[limits]`."""
        lines = [self.top, bridges, "[limits]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in self.limits.items()]
        self.config.write_text("\n".join(lines) + "\n")

    def command(self):
        return [find_makelaar(), "serve", "--config", str(self.config), "--data-dir",
                str(self.data), "--listen", f"mqtt://127.0.0.1:{self.port}"]


class Mosquitto(Proc):
    """Debian's Mosquitto 2.0; `persistence` keeps sessions across a SIGTERM restart;
    `extra`: more mosquitto.conf lines (a bridge of its own)."""

    def __init__(self, workdir: Path, name: str, persistence=False, extra: str = ""):
        super().__init__(workdir, name)
        lines = [
            f"user {getpass.getuser()}",
            "allow_anonymous true",
            f"listener {self.port} 127.0.0.1",
            "log_dest stderr",
            "log_type all",
            "max_queued_messages 100000",
            "max_inflight_messages 20",
        ]
        if persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/",
                      "autosave_interval 1"]
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n" + extra)

    def command(self):
        return [mosquitto_exe(), "-c", str(self.conf)]


class Proxy:
    """A TCP forwarder between a bridge and its remote that can cut its open connections
    silently: `partition()` stops moving their bytes either way while their sockets stay
    open (no FIN, no RST), as a network that drops packets would look to both brokers; new
    connections are forwarded as usual."""

    def __init__(self, target_port: int):
        import threading
        self.target = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.generation = 0
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                a.close()
                continue
            self.sockets += [a, b]
            gen = self.generation
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst, gen), daemon=True).start()

    def _pump(self, src, dst, gen):
        while True:
            if gen != self.generation:
                return  # partitioned: stop reading, never close
            try:
                src.settimeout(0.1)
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if gen != self.generation:
                return
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def partition(self):
        self.generation += 1

    def close(self):
        self.listener.close()
        for s in self.sockets:
            s.close()
