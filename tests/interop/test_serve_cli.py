"""`makelaar serve` itself: flags, and configuration mistakes reported as one sentence naming
the thing and the fix, with exit status 1. Makelaar only (skipped against Mosquitto)."""

import socket
import subprocess
import tempfile

import pytest

import mqtt_raw as R
from brokers import BROKER_KIND, find_makelaar, free_port
from clients import unique

pytestmark = pytest.mark.skipif(BROKER_KIND != "makelaar",
                                reason="tests the makelaar command line")


def _serve(*args, timeout=10):
    # In a directory of its own: the default data directory is ./makelaar-data.
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([find_makelaar(), "serve", *args], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)


def _assert_one_clear_error(p, *needles):
    """Exit status 1, a short message naming the thing, no panic or backtrace."""
    assert p.returncode == 1, f"exit status {p.returncode}; stderr: {p.stderr}"
    err = p.stderr.strip()
    assert err, "no error message"
    assert "panicked" not in err and "RUST_BACKTRACE" not in err, err
    assert len(err.splitlines()) <= 3, f"expected one sentence, got:\n{err}"
    for n in needles:
        assert n in err, f"{n!r} not named in: {err}"


def _config(tmp_path, text):
    path = tmp_path / "makelaar.toml"
    path.write_text(text)
    return str(path)


def test_unknown_config_key(tmp_path):
    port = free_port()
    cfg = _config(tmp_path, f'listen = ["mqtt://127.0.0.1:{port}"]\nlisten_typo = 1\n')
    _assert_one_clear_error(_serve("--config", cfg), "listen_typo")


def test_unknown_limit_key(tmp_path):
    port = free_port()
    cfg = _config(tmp_path, f'listen = ["mqtt://127.0.0.1:{port}"]\n[limits]\nmax_qeue = 5\n')
    _assert_one_clear_error(_serve("--config", cfg), "max_qeue")


def test_bad_config_value(tmp_path):
    port = free_port()
    cfg = _config(tmp_path, f'listen = ["mqtt://127.0.0.1:{port}"]\n[limits]\nmax_qos = 5\n')
    _assert_one_clear_error(_serve("--config", cfg), "max_qos")


def test_invalid_toml(tmp_path):
    cfg = _config(tmp_path, 'listen = ["mqtt://127.0.0.1:1"\n')
    _assert_one_clear_error(_serve("--config", cfg), "makelaar.toml")


def test_bad_listen_url():
    _assert_one_clear_error(_serve("--listen", "http://127.0.0.1:1883"), "http://127.0.0.1:1883")


def test_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        _assert_one_clear_error(_serve("--listen", f"mqtt://127.0.0.1:{port}"), str(port))


def test_unreadable_certificate(tmp_path):
    port = free_port()
    missing = str(tmp_path / "missing.pem")
    _assert_one_clear_error(
        _serve("--listen", f"mqtts://127.0.0.1:{port}", "--cert", missing, "--key", missing),
        missing)


def test_require_certificate_without_cafile(certs):
    port = free_port()
    _assert_one_clear_error(
        _serve("--listen", f"mqtts://127.0.0.1:{port}", "--cert", str(certs / "server.crt"),
               "--key", str(certs / "server.key"), "--require-certificate"),
        "cafile")


def test_listen_flag_serves(tmp_path):
    """`makelaar serve --listen mqtt://127.0.0.1:PORT` (no config file) accepts clients."""
    import time
    port = free_port()
    proc = subprocess.Popen([find_makelaar(), "serve", "--listen", f"mqtt://127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                r = R.RawClient(port, version=4)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "broker did not listen within 10 s"
                time.sleep(0.05)
        assert r.connect(unique("flag")).reason == 0
        r.close()
    finally:
        proc.terminate()
        proc.wait(5)
