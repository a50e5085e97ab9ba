"""Bad input to authentication: oversize and malformed usernames and passwords (refused, the
broker carries on; run against both brokers), and password or ACL files with broken lines
(a clear error at start-up naming the file and the line; Makelaar only)."""

import subprocess
import tempfile

import pytest

from auth_files import mosquitto_passwd, start_broker, try_connect
from brokers import BROKER_KIND, find_makelaar, free_port


@pytest.fixture(scope="module")
def closed_broker(tmp_path_factory, certs):
    from conftest import _stop
    passwd = mosquitto_passwd(tmp_path_factory.mktemp("passwd") / "passwd")
    b = start_broker(tmp_path_factory, certs, "auth-bad", password_file=str(passwd),
                     allow_anonymous=False)
    yield b
    _stop(b)


@pytest.mark.parametrize("username,password", [
    ("u" * 60_000, "s3cret"),
    ("alice", "p" * 60_000),
    ("u" * 65_000, "p" * 400),  # the CONNECT is over 64 KiB: refused from its header
    ("alice", b"\xff\xfe\x00binary"),  # a password is binary data: fine, and wrong
], ids=["60k-username", "60k-password", "over-64k-connect", "binary-password"])
def test_oversize_and_odd_credentials_are_refused(closed_broker, username, password):
    assert try_connect(closed_broker, username, password) != 0
    assert try_connect(closed_broker, "alice", "s3cret") == 0


@pytest.mark.parametrize("username", [b"ali\xffce", b"ali\x00ce", b"\xed\xa0\x80"],
                         ids=["invalid-utf8", "nul", "surrogate"])
@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_malformed_usernames_never_get_in(closed_broker, username, version):
    """[MQTT-1.5.3-1] [MQTT-1.5.3-2] a username that is not valid UTF-8 (or holds U+0000) is
    a malformed packet: the connection is closed (or refused), never accepted."""
    assert try_connect(closed_broker, username, "s3cret", version=version) != 0
    assert try_connect(closed_broker, "alice", "s3cret", version=version) == 0


# --- start-up errors ----------------------------------------------------------------------

needs_makelaar = pytest.mark.skipif(BROKER_KIND != "makelaar",
                                    reason="tests the makelaar command line")


def _serve(*args):
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([find_makelaar(), "serve", "--in-memory",
                               "--listen", f"mqtt://127.0.0.1:{free_port()}", *args],
                              capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL, cwd=cwd)


def _one_clear_error(p, *needles):
    assert p.returncode == 1, f"exit status {p.returncode}; stderr: {p.stderr}"
    err = p.stderr.strip()
    assert "panicked" not in err and len(err.splitlines()) <= 3, err
    for n in needles:
        assert n in err, f"{n!r} not named in: {err}"


@needs_makelaar
def test_a_broken_password_file_line_stops_the_start(tmp_path):
    path = mosquitto_passwd(tmp_path / "passwd", {"alice": ("s3cret", [])})
    with open(path, "a") as f:
        f.write("# a comment is fine\nbob-without-a-hash\n")
    _one_clear_error(_serve("--password-file", str(path)), str(path), "line 3", "':'")


@needs_makelaar
def test_an_unknown_hash_stops_the_start(tmp_path):
    path = tmp_path / "passwd"
    path.write_text("alice:$1$md5$notsupported\n")
    _one_clear_error(_serve("--password-file", str(path)), str(path), "line 1", "alice")


@needs_makelaar
def test_a_missing_password_file_stops_the_start(tmp_path):
    path = tmp_path / "nope"
    _one_clear_error(_serve("--password-file", str(path)), str(path), "password_file")


@needs_makelaar
@pytest.mark.parametrize("line,needle", [
    ("topic readwrite a/#/b", "filter"),
    ("topic sometimes a/b", "sometimes"),
    ("user", "user"),
    ("topik read a", "topik"),
])
def test_a_broken_acl_line_stops_the_start(tmp_path, line, needle):
    path = tmp_path / "acl"
    path.write_text(f"# ok\ntopic read a/#\n{line}\n")
    _one_clear_error(_serve("--acl-file", str(path)), str(path), "line 3", needle)


@needs_makelaar
def test_an_acl_file_that_is_not_utf8_stops_the_start(tmp_path):
    path = tmp_path / "acl"
    path.write_bytes(b"topic read caf\xe9/#\n")
    _one_clear_error(_serve("--acl-file", str(path)), str(path), "line 1", "UTF-8")
