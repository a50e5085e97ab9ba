"""Debian's mosquitto_pub / mosquitto_sub as real clients, the way a user tries the broker."""

import queue
import re
import shutil
import subprocess
import threading

import pytest

from clients import unique

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")),
    reason="mosquitto-clients not installed (apt-get install -y mosquitto-clients)")

TIMEOUT = 10


def _conn_args(broker, tls=False, host="127.0.0.1"):
    if tls:
        return ["-h", host, "-p", str(broker.tls_port), "--cafile", broker.cafile]
    return ["-h", host, "-p", str(broker.port)]


def pub(broker, *args, tls=False, host="127.0.0.1", check=True):
    """Run mosquitto_pub to completion (bounded)."""
    cmd = ["mosquitto_pub", *_conn_args(broker, tls, host), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    if check:
        assert p.returncode == 0, f"{cmd} failed ({p.returncode}): {p.stderr}"
    return p


class Sub:
    """mosquitto_sub running in the background with -d, so we can tell when its SUBACK has
    arrived. Message lines (not the debug 'Client ...' lines) are collected."""

    def __init__(self, broker, *args, tls=False, host="127.0.0.1", wait_suback=True):
        self.cmd = ["mosquitto_sub", "-d", *_conn_args(broker, tls, host), *args]
        # Line-buffered stdout (stdbuf), so the SUBACK debug line shows up when it happens.
        prefix = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
        self.proc = subprocess.Popen(prefix + self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines = queue.Queue()
        self.debug = []
        self.suback = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if wait_suback and not self.suback.wait(TIMEOUT):
            self.kill()
            raise AssertionError(f"{self.cmd}: no SUBACK within {TIMEOUT}s: {self.debug} "
                                 f"{self.proc.stderr.read()}")

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("Client ") or line.startswith("Subscribed (mid"):
                self.debug.append(line)
                if "received SUBACK" in line:
                    self.suback.set()
            else:
                self.lines.put(line)

    def line(self, timeout=TIMEOUT):
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.cmd}: no output within {timeout}s; debug: "
                                 f"{self.debug[-5:]}") from None

    def received_qos(self):
        """QoS values of the PUBLISH packets mosquitto_sub reported receiving."""
        return [int(m.group(1)) for d in self.debug
                for m in [re.search(r"received PUBLISH \(d\d, q(\d)", d)] if m]

    def wait(self, timeout=TIMEOUT):
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def subs():
    made = []

    def make(*args, **kw):
        s = Sub(*args, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.kill()


def test_sub_receives_pub(broker, subs):
    """The README's first check: `mosquitto_sub -t 'sensor/#' -v` prints what
    `mosquitto_pub -t sensor/temp -m 21.5` sends."""
    p = unique("cli")
    s = subs(broker, "-t", f"{p}/sensor/#", "-v")
    pub(broker, "-t", f"{p}/sensor/temp", "-m", "21.5")
    assert s.line() == f"{p}/sensor/temp 21.5"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_sub_receives_pub_over_tls(broker, subs, host):
    """The same over TLS with --cafile (server certificate valid for localhost and 127.0.0.1)."""
    p = unique("tls")
    s = subs(broker, "-t", f"{p}/sensor/#", "-v", tls=True, host=host)
    pub(broker, "-t", f"{p}/sensor/temp", "-m", "21.5", tls=True, host=host)
    assert s.line() == f"{p}/sensor/temp 21.5"


def test_tls_with_wrong_ca_fails(broker, certs):
    """mosquitto_pub with --cafile of another CA cannot connect."""
    cmd = ["mosquitto_pub", "-h", "localhost", "-p", str(broker.tls_port), "--cafile",
           str(certs / "unknown-ca.crt"), "-t", "x", "-m", "y"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode != 0


@pytest.mark.parametrize("sub_v", ["mqttv311", "mqttv5", "mqttv31"])
@pytest.mark.parametrize("pub_v", ["311", "5"])
def test_protocol_versions(broker, subs, sub_v, pub_v):
    """-V 311 / -V 5 (and 3.1 for the subscriber) interoperate in every combination."""
    p = unique("ver")
    s = subs(broker, "-V", sub_v, "-t", f"{p}/#", "-v")
    pub(broker, "-V", pub_v, "-t", f"{p}/x", "-m", f"from {pub_v}")
    assert s.line() == f"{p}/x from {pub_v}"


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_qos_levels(broker, subs, qos):
    """-q 0/1/2 on both sides: the subscriber receives the message at that QoS."""
    p = unique("qos")
    s = subs(broker, "-q", str(qos), "-t", f"{p}/q", "-v")
    pub(broker, "-q", str(qos), "-t", f"{p}/q", "-m", "hello")
    assert s.line() == f"{p}/q hello"
    assert s.received_qos() == [qos]


def test_retained_with_r(broker, subs):
    """mosquitto_pub -r leaves a retained message that a later mosquitto_sub receives
    (-C 1 exits after it); -r -n clears it."""
    p = unique("ret")
    pub(broker, "-r", "-q", "1", "-t", f"{p}/status", "-m", "online")
    s = subs(broker, "-t", f"{p}/status", "-v", "-C", "1", wait_suback=False)
    assert s.line() == f"{p}/status online"
    assert s.wait() == 0
    pub(broker, "-r", "-n", "-q", "1", "-t", f"{p}/status")
    # -W 1: give up after 1 s without messages (exit code 27 in mosquitto_sub 2.0).
    empty = subprocess.run(["mosquitto_sub", *_conn_args(broker), "-t", f"{p}/status", "-C",
                            "1", "-W", "1"], capture_output=True, text=True, timeout=TIMEOUT)
    assert empty.stdout == ""
    assert empty.returncode != 0


def test_count_option_exits_after_n(broker, subs):
    """mosquitto_sub -C 3 exits (status 0) after exactly three messages."""
    p = unique("cnt")
    s = subs(broker, "-t", f"{p}/c", "-C", "3")
    for i in range(3):
        pub(broker, "-q", "1", "-t", f"{p}/c", "-m", f"m{i}")
    assert [s.line(), s.line(), s.line()] == ["m0", "m1", "m2"]
    assert s.wait() == 0


def test_lines_from_stdin(broker, subs):
    """mosquitto_pub -l sends one message per line of standard input, in order."""
    p = unique("stdin")
    s = subs(broker, "-t", f"{p}/l", "-q", "1")
    cmd = ["mosquitto_pub", *_conn_args(broker), "-q", "1", "-t", f"{p}/l", "-l"]
    r = subprocess.run(cmd, input="one\ntwo\nthree\n", capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert [s.line(), s.line(), s.line()] == ["one", "two", "three"]


def test_persistent_session_with_cli(broker, subs):
    """mosquitto_sub -c -i ID -q 1 keeps a session: a message published while it is away is
    delivered when it comes back."""
    p = unique("sess")
    cid = unique("cli-sub")
    first = subs(broker, "-c", "-i", cid, "-q", "1", "-t", f"{p}/s", "-C", "1")
    pub(broker, "-q", "1", "-t", f"{p}/s", "-m", "first")
    assert first.line() == "first"
    assert first.wait() == 0
    pub(broker, "-q", "1", "-t", f"{p}/s", "-m", "while away")
    # The queued message may arrive before the SUBACK, so don't wait for it.
    again = subs(broker, "-c", "-i", cid, "-q", "1", "-t", f"{p}/s", "-C", "1",
                 wait_suback=False)
    assert again.line() == "while away"


def test_v5_user_property_and_format(broker, subs):
    """-V 5 with -D PUBLISH user-property and content-type: mosquitto_sub -F shows them."""
    p = unique("props")
    s = subs(broker, "-V", "5", "-t", f"{p}/u", "-F", "%t|%p|%C|%P")
    pub(broker, "-V", "5", "-t", f"{p}/u", "-m", "data", "-D", "PUBLISH", "user-property",
        "room", "kitchen", "-D", "PUBLISH", "content-type", "text/plain")
    assert s.line() == f"{p}/u|data|text/plain|room:kitchen"
