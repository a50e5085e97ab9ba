"""Helpers for the authentication and ACL tests: password files made by Debian's
mosquitto_passwd (or `makelaar passwd`), brokers started with them, and source addresses.

Brokers slow down repeated failed logins per source address. Tests whose clients fail to log
in on purpose therefore connect from addresses of their own (any 127.x.y.z reaches the loopback
interface on Linux), so that they do not slow down each other or the rest of the suite."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

import mqtt_raw as R
from brokers import DEFAULT_CONFIG, find_makelaar, merge_config

# username -> password; written with the hash options given.
USERS = {
    "alice": ("s3cret", []),
    "bob": ("zoë: spaces & colons", []),
    "carol": ("old-style", ["-H", "sha512"]),
    "dave": ("seven", ["-H", "sha512-pbkdf2", "-I", "7"]),
    "émile": ("ünïcode", []),
    "admin": ("admin-pw", []),
}


def fresh_source() -> str:
    """A loopback address no other test uses (127.0.0.1 excluded)."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def mosquitto_passwd(path: Path, users=USERS) -> Path:
    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        pytest.skip("mosquitto_passwd is not installed (apt-get install mosquitto)")
    first = True
    for user, (password, opts) in users.items():
        args = [exe, *opts, *(["-c"] if first else []), "-b", str(path), user, password]
        subprocess.run(args, check=True, capture_output=True, timeout=30)
        first = False
    return path


def makelaar_passwd(path: Path, users: dict, *opts) -> Path:
    """A password file written by `makelaar passwd -b` (with options such as -H)."""
    first = True
    for user, password in users.items():
        args = [find_makelaar(), "passwd", *opts, *(["-c"] if first else []), "-b", str(path),
                user, password]
        subprocess.run(args, check=True, capture_output=True, timeout=60)
        first = False
    return path


def start_broker(tmp_path_factory, certs, name, **settings):
    """A broker with these settings (password_file, acl_file, allow_anonymous, ...), for a
    module or a test; stop it with conftest._stop."""
    from conftest import _start
    return _start(tmp_path_factory, certs, merge_config(DEFAULT_CONFIG, settings), name)


def try_connect(broker, username=None, password=None, version=4, client_id=None,
                source=None, tls_context=None, port=None):
    """Connects with raw bytes from a fresh source address; returns the CONNACK's reason
    (0 accepted) or None when the connection closed without one."""
    r = R.RawClient(port or broker.port, broker.host, version=version, timeout=5,
                    tls_context=tls_context, source=source or fresh_source())
    try:
        r.send(R.connect(client_id or f"auth-{random.randint(0, 1 << 30)}", version=version,
                         username=username, password=password))
        try:
            p = r.recv_packet(5)
        except R.Closed:
            return None
        assert p.type == R.CONNACK, p
        return p.reason
    finally:
        r.close()
