"""One real mosquitto.conf, read by both brokers: `mosquitto -c FILE` and
`makelaar serve --mosquitto-conf FILE`. With the same password file (Debian's
mosquitto_passwd) and ACL file (patterns included), the same clients are accepted, refused,
allowed and denied. Also: `makelaar config convert` prints a makelaar.toml that runs the same."""

import getpass
import os
import subprocess

import pytest

from auth_files import USERS, fresh_source, mosquitto_passwd, try_connect
from brokers import BROKER_KIND, Broker, find_makelaar, free_port, mosquitto_exe
from clients import MqttClient
import test_acl as A
import ws_raw as W

CN = "makelaar-test-client"


def conf_text(b, passwd, acl):
    certs = b.certs
    return f"""\
# A mosquitto.conf as a Debian system might have it, with three listeners.
per_listener_settings true
persistence false
autosave_interval 1800
log_dest stderr
log_type error
log_type warning
log_type notice
user {getpass.getuser()}
max_queued_messages 200
sys_interval 10

# Local clients: anonymous access, ACL applies.
listener {b.port} 127.0.0.1
allow_anonymous true
password_file {passwd}
acl_file {acl}

# Mutual TLS: the certificate's CN is the username.
listener {b.tls_port} 127.0.0.1
certfile {certs / "server.crt"}
keyfile {certs / "server.key"}
cafile {certs / "ca.crt"}
require_certificate true
use_identity_as_username true
acl_file {acl}

# Everyone else: passwords only.
listener {b.port3} 127.0.0.1
password_file {passwd}
acl_file {acl}
"""


class ConfBroker(Broker):
    """A broker started from a mosquitto.conf: Mosquitto with -c, Makelaar with
    --mosquitto-conf."""

    def __init__(self, workdir, certs, passwd, acl):
        super().__init__(workdir, certs, {}, name="mosquitto-conf")
        self.port3 = free_port()
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text(conf_text(self, passwd, acl))

    def command(self):
        if self.kind == "makelaar":
            env = dict(os.environ)
            env.setdefault("RUST_LOG", "info")
            return [find_makelaar(), "serve", "--mosquitto-conf", str(self.conf)], env
        return [mosquitto_exe(), "-c", str(self.conf)], None


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mconf")
    passwd = mosquitto_passwd(d / "passwd")
    acl = d / "acl"
    acl.write_text(A.ACL + f"\nuser {CN}\ntopic readwrite cn/#\n")
    return passwd, acl


@pytest.fixture(scope="module")
def conf_broker(tmp_path_factory, certs, files):
    from conftest import _active_brokers, _stop
    b = ConfBroker(tmp_path_factory.mktemp("mconf-broker"), certs, *files)
    b.start()
    _active_brokers.append(b)
    yield b
    _stop(b)


def login(b, who, port=None, version=5):
    username, client_id = A.IDENTITIES[who]
    password = USERS[username][0] if username else None
    c = MqttClient(b, client_id=client_id, version=version, username=username,
                   password=password, bind_address=fresh_source())
    c.connect(port=port)
    return c


@pytest.mark.parametrize("listener", ["anonymous-ok", "passwords-only"])
@pytest.mark.parametrize("username,password,accepted", [
    (None, None, "anonymous-ok"),
    ("alice", "s3cret", "both"),
    ("carol", "old-style", "both"),
    ("alice", "wrong", "none"),
    ("nobody", "x", "none"),
], ids=["anonymous", "alice", "carol-sha512", "wrong-password", "unknown-user"])
def test_who_gets_in(conf_broker, listener, username, password, accepted):
    port = conf_broker.port if listener == "anonymous-ok" else conf_broker.port3
    reason = try_connect(conf_broker, username, password, port=port)
    ok = accepted == "both" or accepted == listener
    assert (reason == 0) == ok, f"{listener}: {username!r} got {reason}"


@pytest.mark.parametrize("who", ["anon", "alice", "bob"])
def test_what_each_may_publish(conf_broker, who):
    """The ACL matrix of test_acl.py, through the listeners of the mosquitto.conf."""
    c = login(conf_broker, who)
    try:
        allowed = {t for t in A.TOPICS if c.publish(t, b"w", qos=1) < 0x80}
        assert allowed == A.MAY_WRITE[who]
    finally:
        c.close()


def test_what_each_may_read(conf_broker):
    subs = {who: login(conf_broker, who) for who in ("anon", "alice", "bob")}
    admin = login(conf_broker, "admin", port=conf_broker.port3)
    try:
        for c in subs.values():
            c.subscribe("#", qos=1)
        for t in A.TOPICS:
            admin.publish(t, b"r", qos=1)
        for who, c in subs.items():
            assert A.received_topics(c) == A.MAY_READ[who], who
    finally:
        for c in [*subs.values(), admin]:
            c.close()


def test_the_certificate_names_the_client(conf_broker, certs):
    c = MqttClient(conf_broker, tls=True, certfile=str(certs / "client.crt"),
                   keyfile=str(certs / "client.key"), version=5)
    try:
        c.connect()
        assert c.publish("cn/x", b"ok", qos=1) < 0x80
        assert c.publish("alice/x", b"no", qos=1) == 0x87
    finally:
        c.close()


@pytest.mark.skipif(BROKER_KIND != "makelaar", reason="tests the makelaar command line")
def test_config_convert_prints_an_equivalent_makelaar_toml(conf_broker, tmp_path):
    """`makelaar config convert` output parses, and names the ignored directives."""
    p = subprocess.run([find_makelaar(), "config", "convert", str(conf_broker.conf)],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    toml = p.stdout
    assert "autosave_interval" in toml and "[[listener]]" in toml
    assert "use_identity_as_username = true" in toml
    assert "max_queued_messages = 200" in toml
    # It is a makelaar.toml: `serve --config` starts with it (on other ports, so the
    # running broker keeps its own).
    for old in (conf_broker.port, conf_broker.tls_port, conf_broker.port3):
        toml = toml.replace(f":{old}\"", f":{free_port()}\"")
    path = tmp_path / "makelaar.toml"
    path.write_text(toml)
    proc = subprocess.Popen([find_makelaar(), "serve", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        line = proc.stdout.readline().decode()
        assert "listening on" in line, line
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.skipif(BROKER_KIND != "makelaar", reason="tests the makelaar command line")
@pytest.mark.parametrize("directive,line,needle", [
    ("auth_plugin /usr/lib/x.so", 2, "plugin"),
    ("connection to-cloud\naddress cloud.example:1883\ntopic a/# out 1\nbridge_psk 00ff", 5,
     "TLS-PSK"),
    ("address cloud.example:1883", 2, "no \"connection\" line comes before it"),
    ("max_queued_mesages 10", 2, "check its spelling"),
])
def test_unsupported_directives_stop_the_start(tmp_path, directive, line, needle):
    """One line naming the file, the line, the directive and what to do."""
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {free_port()} 127.0.0.1\n{directive}\n")
    p = subprocess.run([find_makelaar(), "serve", "--mosquitto-conf", str(conf)],
                       capture_output=True, text=True, timeout=20, cwd=tmp_path)
    assert p.returncode == 1
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{conf}:{line}:" in err and needle in err, err


@pytest.mark.skipif(BROKER_KIND != "makelaar", reason="tests the makelaar command line")
def test_a_bridge_section_is_read_and_converted(tmp_path, certs):
    """A `connection` section: `serve` reads it (warning about a topic carried at QoS 0) and
    starts the bridge, `config convert` writes it as [[bridge]], and that file starts the
    broker and its bridge too."""
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    (tmp_path / "ca.pem").write_bytes((certs / "ca.crt").read_bytes())
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    "connection to-cloud\naddress cloud.example:8883\n"
                    "bridge_cafile ca.pem\ntopic sensors/# out 0 \"\" site1/\n")
    p = subprocess.run([find_makelaar(), "config", "convert", str(conf)], capture_output=True,
                       text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    assert "[[bridge]]\nname = \"to-cloud\"" in p.stdout, p.stdout
    assert "[[bridge.topic]]\npattern = \"sensors/#\"" in p.stdout, p.stdout
    toml = tmp_path / "makelaar.toml"
    toml.write_text(p.stdout.replace(f":{port}\"", f":{free_port()}\""))
    for args in (["--mosquitto-conf", str(conf)], ["--config", str(toml)]):
        proc = subprocess.Popen([find_makelaar(), "serve", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            lines = [proc.stdout.readline().decode() for _ in range(3)]
            text = "".join(lines)
            assert "is carried at QoS 0" in text, text
            assert "bridge \"to-cloud\" started: 1 topic line(s) to cloud.example:8883" in text, text
            assert "listening on" in text, text
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.mark.skipif(not os.path.exists(mosquitto_exe()), reason="needs Debian's mosquitto")
def test_mosquitto_refuses_the_same_unknown_directive(tmp_path):
    """A misspelled directive stops Mosquitto too: refusing it is the compatible choice."""
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {free_port()} 127.0.0.1\nmax_queued_mesages 10\n")
    p = subprocess.run([mosquitto_exe(), "-c", str(conf)], capture_output=True, text=True,
                       timeout=20)
    assert p.returncode != 0


@pytest.mark.skipif(BROKER_KIND != "makelaar", reason="tests the makelaar command line")
def test_websocket_listeners_serve_any_path(tmp_path):
    """`protocol websockets` is read as a ws:// listener that serves every path, as
    Mosquitto's does. (Debian's Mosquitto 2.0.11 cannot open a WebSocket listener on these
    machines, so it is not run beside.)"""
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nprotocol websockets\nallow_anonymous true\n")
    proc = subprocess.Popen([find_makelaar(), "serve", "--mosquitto-conf", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        line = proc.stdout.readline().decode()
        assert f"listening on ws://127.0.0.1:{port}/*" in line, line
        for path in ("/mqtt", "/", "/any/where"):
            c = W.WsClient(port, path=path)
            try:
                assert c.connect(f"ws{len(path)}").reason == 0
            finally:
                c.close()
    finally:
        proc.terminate()
        proc.wait(10)
