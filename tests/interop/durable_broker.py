"""`makelaar serve --data-dir DIR` as the store tests and the crash test need it: started,
killed with SIGKILL or stopped with SIGTERM, and started again on the same directory and
port, with its output kept in one log file across runs."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import mqtt_raw as R
from brokers import ProcessHandle, find_makelaar, free_port


class Server(ProcessHandle):
    """`makelaar serve --data-dir DIR --listen mqtt://127.0.0.1:PORT`, started, killed and
    restarted on the same directory and port. `limits` go in a config file."""

    def __init__(self, workdir: Path, *args: str, limits: dict | None = None):
        self.workdir = Path(workdir)
        self.data = self.workdir / "data"
        self.port = free_port()
        self.config = self.workdir / "makelaar.toml"
        lines = ["sys_interval = 0", "[limits]"]
        lines += [f"{k} = {v}" for k, v in (limits or {}).items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.args = args
        self.log = self.workdir / "broker.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def command(self, *extra: str) -> list[str]:
        return [find_makelaar(), "serve", "--config", str(self.config), "--data-dir",
                str(self.data), "--listen", f"mqtt://127.0.0.1:{self.port}", *self.args, *extra]

    def start(self, *extra: str, timeout=20.0):
        self.starts += 1
        with open(self.log, "ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            self.proc = subprocess.Popen(
                self.command(*extra), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.workdir,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")})
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"makelaar exited with {self.proc.returncode} at start "
                                   f"{self.starts}:\n{self.log_tail()}")
            try:
                R.RawClient(self.port, timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"makelaar did not listen within {timeout} s:\n"
                                       + self.log_tail()) from None
                time.sleep(0.02)

    def wait_disconnected(self, client_id: str, timeout=10.0):
        """Waits for the broker's log line saying `client_id` is gone (written once the
        broker's router has been told), so a stop right after it cannot overtake it."""
        needle = f'client_id="{client_id}"'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if any("client disconnected" in line and needle in line
                   for line in text.splitlines()):
                return
            time.sleep(0.05)
        raise AssertionError(f"no 'client disconnected' line for {client_id} within "
                             f"{timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines=40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
