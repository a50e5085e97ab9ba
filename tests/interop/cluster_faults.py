"""A Jepsen-style fault harness for a Makelaar cluster (issue 15, docs/cluster.md "Faults").

Three NATS servers (one JetStream cluster, `sync_interval: always`) and three Makelaar
nodes, either all on loopback (`LoopbackCluster`) or each NATS server with its node in a
network namespace of its own, joined by a bridge namespace (`NetnsCluster`), so that one
host can be cut off from the others while its clients still reach it, two hosts can lose
each other while both still reach the third (`cut-link`), or one host's packets can be
dropped at random (`loss`); the last two are nftables rules in the bridge namespace.

A workload runs over it while faults are injected on a schedule:

- publishers (paho, MQTT 5.0 and 3.1.1, each on its own node) number their QoS 1 and QoS 2
  messages on a topic per publisher and QoS, and record which were acknowledged (PUBACK;
  PUBREC for QoS 2); a message whose acknowledgement never came is "unknown", never sent
  again; every tenth one is also published retained on a topic of its own;
- persistent subscribers (5.0, Clean Start 0, Session Expiry 600 s) record what arrives;
  one of them moves between nodes by reconnecting elsewhere;
- id probes: before a node is faulted, a client connects there; after the fault the same
  client id connects on another node: how long both connections stay open is recorded;
- every client reconnects to any live node, in turn, like a client behind a TCP load
  balancer (a CONNACK refusing it, 0x88 / return code 3, or a refused port: the next).

After healing and draining, `check` asserts what a user would: every acknowledged message
arrived at every subscriber, QoS 2 exactly once, in order per publisher and topic, the last
acknowledged retained value (or a later unacknowledged one) is what a new subscriber sees on every node,
and no client id was served by two nodes at once for longer than the lease.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from brokers import find_makelaar as makelaar_bin  # noqa: F401 (cf.makelaar_bin)
from brokers import free_port, nats_server_bin  # noqa: F401 (cf.nats_server_bin)

# The cluster's lease (crates/cluster/src/lease.rs, LeaseConfig::default): a node that cannot
# refresh its lease for TTL - margin steps down; its peers call it dead after TTL.
LEASE_TTL = 15.0
# The NATS servers close a silent route within ping_interval x (ping_max + 1) = 3 s, before
# a node gives an append up (5 s), as docs/cluster.md asks of them;
# MK_FAULTS_NATS_DEFAULT_PINGS=1 runs them with NATS's defaults (30 s x 3 on a route), to
# see the late appends that leaves.
ROUTE_PINGS = os.environ.get("MK_FAULTS_NATS_DEFAULT_PINGS") != "1"
LEASE_STEP_DOWN = 10.0



def log(msg: str):
    if os.environ.get("FAULTS_QUIET") != "1":
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- network namespaces ----------------------------------------------------------------------

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_unavailable(nft: bool = False) -> str | None:
    """Why network-namespace faults cannot run here (None: they can); with `nft`, also
    the faults made of nftables rules (`cut-link`, `loss`)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    name = f"mkfprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns is not permitted here: {r.stderr.strip()}"
    try:
        if nft:
            return _nft_unavailable_in(name)
        return None
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _nft_unavailable_in(ns: str) -> str | None:
    """Whether `nft` can filter bridged frames inside namespace `ns` (the link cut and the
    packet loss are bridge-family rules in the bridge namespace)."""
    if shutil.which("nft") is None:
        return "the nft command (nftables) is not installed"
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", "add", "table", "bridge", "probe"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"nft cannot filter bridged frames here: {r.stderr.strip()}"
    return None


def _enter_netns(name: str):
    """Moves the calling thread (and the threads it starts) into network namespace `name`."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Forwarder:
    """A TCP port on loopback of this namespace whose connections are forwarded to
    127.0.0.1:`port` inside network namespace `ns` (a load balancer's hop): the clients
    reach a node whatever the namespace's links to the other hosts do."""

    def __init__(self, ns: str, port: int):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.ns, self.target = ns, port
        self.closed = False
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        _enter_netns(self.ns)  # this thread and its children: sockets made inside `ns`
        while not self.closed:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.socket()
            up.settimeout(3)
            try:
                up.connect(("127.0.0.1", self.target))
            except OSError:
                down.close()
                up.close()
                continue
            up.settimeout(None)
            with self.lock:
                self.conns += [down, up]
            threading.Thread(target=self._pump, args=(down, up), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket):
        try:
            while True:
                r, _, _ = select.select([a, b], [], [], 1.0)
                if self.closed:
                    break
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("closed")
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            # ValueError: select() on a socket another thread closed meanwhile (fd -1).
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.listener.close()
        with self.lock:
            for s in self.conns:
                try:
                    s.close()
                except OSError:
                    pass


# ---- the processes --------------------------------------------------------------------------

def _wait_port(host: str, port: int, proc: subprocess.Popen, log_path: Path, timeout=90.0,
               netns: str | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
        if netns is None:
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                pass
        else:
            r = subprocess.run(["ip", "netns", "exec", netns, "bash", "-c",
                                f"exec 3<>/dev/tcp/{host}/{port}"], capture_output=True)
            if r.returncode == 0:
                return
        time.sleep(0.3)
    raise RuntimeError(f"port {port} not open after {timeout}s:\n{log_path.read_text()[-4000:]}")


def _http_json(url: str, netns: str | None = None, timeout=1.0):
    if netns is None:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.load(r)
    out = subprocess.run(["ip", "netns", "exec", netns, "python3", "-c",
                          "import sys,urllib.request;"
                          f"sys.stdout.write(urllib.request.urlopen({url!r},timeout={timeout}).read().decode())"],
                         capture_output=True, text=True, timeout=timeout + 5)
    if out.returncode != 0:
        raise OSError(out.stderr.strip()[-200:])
    return json.loads(out.stdout)


@dataclass
class Proc:
    """One process (a NATS server or a node) that can be killed, paused and restarted."""
    name: str
    argv: list[str]
    log_path: Path
    netns: str | None = None
    proc: subprocess.Popen | None = None
    starts: int = 0

    def start(self):
        argv = self.argv if self.netns is None else ["ip", "netns", "exec", self.netns, *self.argv]
        self.starts += 1
        f = self.log_path.open("a")
        f.write(f"\n===== start {self.starts} at {time.strftime('%H:%M:%S')} =====\n")
        f.flush()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def terminate(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ClusterBase:
    """Three NATS servers and three nodes; subclasses say where they listen."""

    n = 3
    netns: list[str | None]

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.nats: list[Proc] = []
        self.nodes: list[Proc] = []
        self.paused: set[int] = set()

    # where things are, per host i
    def nats_host(self, i) -> str: ...
    def node_servers(self, i) -> list[str]: ...
    def node_monitors(self, i) -> list[str]: ...

    def mqtt_port(self, i) -> int:
        """The port a client connects to for node i (on 127.0.0.1)."""
        return self.client_ports[i]

    def _nats_conf(self, i) -> str:
        host = self.nats_host(i)
        routes = ", ".join(f"nats-route://{self.nats_host(j)}:{self.route_ports[j]}"
                           for j in range(self.n))
        return (f"server_name: n{i}\nlisten: {self.nats_listen(i)}:{self.nats_ports[i]}\n"
                f"http: {self.nats_listen(i)}:{self.monitor_ports[i]}\n"
                # A cut-off route is closed within 3 s, with the appends in its buffer,
                # before a node gives them up (5 s): none is stored once the cut heals.
                + ("ping_interval: \"1s\"\nping_max: 2\n" if ROUTE_PINGS else "")
                + f"jetstream {{ store_dir: \"{self.workdir / f'js{i}'}\", sync_interval: always }}\n"
                f"cluster {{ name: mk, listen: {host}:{self.route_ports[i]}, routes: [{routes}] }}\n")

    def nats_listen(self, i) -> str:
        return self.nats_host(i)

    def start(self):
        nats = nats_server_bin()
        for i in range(self.n):
            conf = self.workdir / f"nats{i}.conf"
            conf.write_text(self._nats_conf(i))
            self.nats.append(Proc(f"n{i}", [nats, "-c", str(conf)], self.workdir / f"nats{i}.log",
                                  self.netns[i]))
        for p in self.nats:
            p.start()
        for i, p in enumerate(self.nats):
            _wait_port(self.nats_host(i), self.nats_ports[i], p.proc, p.log_path,
                       netns=self.netns[i])
        self.wait_jetstream()
        for i in range(self.n):
            self.nodes.append(self._node_proc(i))
        for i, p in enumerate(self.nodes):
            p.start()
            self.wait_node(i)  # one after the other: the first creates the buckets

    def wait_jetstream(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        for i in range(self.n):
            while True:
                try:
                    meta = _http_json(f"http://{self.nats_host(i)}:{self.monitor_ports[i]}/jsz",
                                      self.netns[i]).get("meta_cluster") or {}
                    if meta.get("leader") and meta.get("cluster_size", 0) >= self.n:
                        break
                except (OSError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the NATS servers formed no JetStream cluster")
                time.sleep(0.3)

    def wait_healthy(self, timeout=60.0) -> float:
        """Until every NATS server says it is healthy (`/healthz`: JetStream up, its streams
        and consumers current), so the next fault does not fall into the recovery from the
        last one; returns how long that took."""
        start = time.monotonic()
        deadline = start + timeout
        for i in range(self.n):
            while time.monotonic() < deadline:
                try:
                    if _http_json(f"http://{self.nats_host(i)}:{self.monitor_ports[i]}/healthz",
                                  self.netns[i]).get("status") == "ok":
                        break
                except (OSError, ValueError):
                    pass
                time.sleep(0.5)
        return time.monotonic() - start

    def _node_proc(self, i) -> Proc:
        # A subscriber may be offline for 30 s and more while a fault lasts (every node
        # refusing it): 3 publishers at 40 messages/s pass the default per-session bound
        # (1000) in under 10 s, beyond which a node drops new messages for the session by design
        # ("session resumed ... the newest were dropped"): the checker is about the
        # cluster's guarantees, not that bound.
        toml = (f"listen = [\"mqtt://{self.node_listen(i)}:{self.node_ports[i]}\"]\n"
                f"in_memory = true\nsys_interval = 0\n\n"
                f"[limits]\nmax_queued_messages = 100000\n\n[cluster]\n"
                f"monitor = [{', '.join(json.dumps(m) for m in self.node_monitors(i))}]\n")
        conf = self.workdir / f"m{i}.toml"
        conf.write_text(toml)
        argv = [makelaar_bin(), "serve", "--config", str(conf), "--cluster",
                ",".join(self.node_servers(i)), "--node-name", f"m{i}",
                "--log-level", os.environ.get("MK_LOG", "info")]
        return Proc(f"m{i}", argv, self.workdir / f"m{i}.log", self.netns[i])

    def wait_node(self, i, timeout=150.0):
        # Longer than a node tries its start-up steps during a JetStream election (120 s).
        p = self.nodes[i]
        _wait_port(self.node_listen(i), self.node_ports[i], p.proc, p.log_path, timeout,
                   netns=self.netns[i])

    def node_listen(self, i) -> str:
        return "127.0.0.1"

    # faults
    def kill_node(self, i):
        self.nodes[i].kill()

    def restart_node(self, i):
        self.nodes[i].start()
        self.wait_node(i)

    def kill_nats(self, i):
        self.nats[i].kill()

    def restart_nats(self, i):
        p = self.nats[i]
        p.start()
        _wait_port(self.nats_host(i), self.nats_ports[i], p.proc, p.log_path,
                   netns=self.netns[i])

    def pause_nats(self, i):
        self.nats[i].signal(signal.SIGSTOP)

    def resume_nats(self, i):
        self.nats[i].signal(signal.SIGCONT)

    def pause_node(self, i):
        self.nodes[i].signal(signal.SIGSTOP)
        self.paused.add(i)

    def resume_node(self, i):
        self.nodes[i].signal(signal.SIGCONT)
        self.paused.discard(i)

    def nats_of(self, i) -> int | None:
        """Which NATS server node i's main connection is on, from the servers' monitoring
        (`/connz`; a node names it `makelaar <node>`). A stopped server does not answer."""
        for j in range(self.n):
            if not self.nats[j].alive():
                continue
            try:
                connz = _http_json(f"http://{self.nats_host(j)}:{self.monitor_ports[j]}/connz?limit=1024",
                                   self.netns[j])
            except (OSError, ValueError, subprocess.TimeoutExpired):
                continue
            if any(c.get("name") == f"makelaar m{i}" for c in connz.get("connections") or []):
                return j
        return None

    def stop(self):
        for p in self.nodes:
            p.terminate()
        for p in self.nats:
            p.kill()

    def logs(self) -> str:
        out = []
        for p in self.nodes + self.nats:
            try:
                out.append(f"--- {p.name}\n{p.log_path.read_text()[-6000:]}")
            except OSError:
                pass
        return "\n".join(out)


class LoopbackCluster(ClusterBase):
    """Everything on 127.0.0.1 (no partitions)."""

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.netns = [None] * self.n
        self.nats_ports = [free_port() for _ in range(self.n)]
        self.monitor_ports = [free_port() for _ in range(self.n)]
        self.route_ports = [free_port() for _ in range(self.n)]
        self.node_ports = [free_port() for _ in range(self.n)]
        self.client_ports = self.node_ports

    def nats_host(self, i):
        return "127.0.0.1"

    def node_servers(self, i):
        # Its own server first (async-nats shuffles them, but any will do), then the others.
        order = [i] + [j for j in range(self.n) if j != i]
        return [f"nats://127.0.0.1:{self.nats_ports[j]}" for j in order]

    def node_monitors(self, i):
        order = [i] + [j for j in range(self.n) if j != i]
        return [f"http://127.0.0.1:{self.monitor_ports[j]}" for j in order]


class NetnsCluster(ClusterBase):
    """Host i is network namespace `<tag>h<i>`: NATS server n<i> (on 10.77.0.<i+1> and its
    loopback) and node m<i> (talking to n<i> over the namespace's loopback, and to the
    other servers over the bridge when it fails over). A bridge namespace joins the hosts'
    veth links. `partition(i)` takes host i's link down: n<i> and m<i> are cut off from the
    others, and m<i>'s clients still reach it (through a `Forwarder`)."""

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.tag = f"mkf{os.getpid() % 100000}"
        self.bridge = f"{self.tag}br"
        self.netns = [f"{self.tag}h{i}" for i in range(self.n)]
        self.nats_ports = [4222] * self.n
        self.monitor_ports = [8222] * self.n
        self.route_ports = [6222] * self.n
        self.node_ports = [1883] * self.n
        self.forwarders: list[Forwarder] = []
        self._nft_ready = False
        self._setup()

    def _ip(self, *args, ns=None, check=True):
        argv = ["ip", *args] if ns is None else ["ip", "-n", ns, *args]
        r = subprocess.run(argv, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")

    def _setup(self):
        self._ip("netns", "add", self.bridge)
        self._ip("link", "add", "br0", "type", "bridge", ns=self.bridge)
        self._ip("link", "set", "br0", "up", ns=self.bridge)
        self._ip("link", "set", "lo", "up", ns=self.bridge)
        for i, ns in enumerate(self.netns):
            self._ip("netns", "add", ns)
            self._ip("link", "set", "lo", "up", ns=ns)
            # veth pair made inside the host namespace, its peer moved to the bridge.
            self._ip("link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}", ns=ns)
            self._ip("link", "set", f"p{i}", "netns", self.bridge, ns=ns)
            self._ip("link", "set", f"p{i}", "master", "br0", ns=self.bridge)
            self._ip("link", "set", f"p{i}", "up", ns=self.bridge)
            self._ip("addr", "add", f"{self.nats_host(i)}/24", "dev", "eth0", ns=ns)
            self._ip("link", "set", "eth0", "up", ns=ns)

    def nats_host(self, i):
        return f"10.77.0.{i + 1}"

    def nats_listen(self, i):
        return "0.0.0.0"

    def node_servers(self, i):
        others = [f"nats://{self.nats_host(j)}:4222" for j in range(self.n) if j != i]
        return ["nats://127.0.0.1:4222", *others]

    def node_monitors(self, i):
        others = [f"http://{self.nats_host(j)}:8222" for j in range(self.n) if j != i]
        return ["http://127.0.0.1:8222", *others]

    def start(self):
        super().start()
        self.forwarders = [Forwarder(ns, 1883) for ns in self.netns]
        self.client_ports = [f.port for f in self.forwarders]

    def partition(self, i):
        """Cuts host i (its NATS server and its node) off from the other hosts."""
        self._ip("link", "set", f"p{i}", "down", ns=self.bridge)

    def heal(self, i):
        self._ip("link", "set", f"p{i}", "up", ns=self.bridge)

    # Link cuts and packet loss: rules on the bridge's forward hook, which sees every frame
    # going from one host's port to another's (and none of the clients' traffic, which
    # reaches each node through its forwarder on the namespace's loopback).
    NFT_TABLE, NFT_CHAIN = "faults", "links"

    def _nft(self, *args: str):
        argv = ["ip", "netns", "exec", self.bridge, "nft", *args]
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")

    def _nft_rule(self, *match: str):
        """Adds a drop rule (the table and its chain made on first use: the partition
        test runs where nft is missing)."""
        if not self._nft_ready:
            self._nft("add", "table", "bridge", self.NFT_TABLE)
            self._nft("add", "chain", "bridge", self.NFT_TABLE, self.NFT_CHAIN,
                      "{ type filter hook forward priority 0; policy accept; }")
            self._nft_ready = True
        self._nft("add", "rule", "bridge", self.NFT_TABLE, self.NFT_CHAIN, *match, "drop")

    def cut_link(self, a: int, b: int):
        """Cuts the link between hosts a and b in both directions; both still reach the
        third host."""
        self._nft_rule("iifname", f"p{a}", "oifname", f"p{b}")
        self._nft_rule("iifname", f"p{b}", "oifname", f"p{a}")

    def lose(self, i: int, percent: int):
        """Host i's link drops `percent` % of the frames it sends and of those sent to it
        (each direction drawn on its own)."""
        share = ["numgen", "random", "mod", "100", "<", str(percent)]
        self._nft_rule("iifname", f"p{i}", *share)
        self._nft_rule("oifname", f"p{i}", *share)

    def heal_links(self):
        """Takes every cut and loss rule away (one fault at a time: all of them)."""
        if self._nft_ready:
            self._nft("flush", "chain", "bridge", self.NFT_TABLE, self.NFT_CHAIN)

    def stop(self):
        for f in self.forwarders:
            f.close()
        super().stop()
        for ns in [*self.netns, self.bridge]:
            self._ip("netns", "del", ns, check=False)


# ---- clients --------------------------------------------------------------------------------

class Nodes:
    """The list of node ports a client may connect to, in turn (a load balancer)."""

    def __init__(self, ports: list[int]):
        self.ports = ports

    def order(self, start: int) -> list[int]:
        return [(start + k) % len(self.ports) for k in range(len(self.ports))]


@dataclass
class Conn:
    """One connection as a client saw it."""
    client_id: str
    node: int
    opened: float
    closed: float | None = None
    reason: str = ""


class History:
    """Everything the clients saw, with monotonic times."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent: dict[tuple[str, int], dict[int, float]] = {}     # (pub, qos) -> seq -> t
        self.acked: dict[tuple[str, int], dict[int, float]] = {}
        self.retained_sent: dict[str, dict[int, float]] = {}
        self.retained_acked: dict[str, dict[int, float]] = {}
        self.received: dict[str, list[tuple[float, str, int, int]]] = {}  # sub -> (t, pub, qos, seq)
        self.conns: list[Conn] = []
        self.faults: list[dict] = []
        self.overlaps: list[dict] = []
        self.stalls: dict[str, list[tuple[float, float]]] = {}   # client -> (down, up)
        self.connect_refused: list[tuple[str, int, int]] = []  # (client, node, reason code)
        self.wills: dict[str, float] = {}                        # probe id -> connected at
        self.wills_received: dict[str, list[str]] = {}           # sub -> probe ids
        # Persistent subscribers that came back to no session (Session Present 0 after
        # their first subscription): (sub, node, t). [MQTT-3.2.2-3]
        self.sessions_lost: list[tuple[str, int, float]] = []

    def note(self, table, key, seq, t):
        with self.lock:
            table.setdefault(key, {})[seq] = t


PAYLOAD = re.compile(rb"^(?P<pub>[\w-]+):(?P<qos>\d):(?P<seq>\d+)$")


class Client:
    """A paho client that connects to any live node and reconnects to the next one."""

    def __init__(self, name: str, nodes: Nodes, history: History, home: int, version=5,
                 clean=True, expiry=0, keepalive=5):
        self.name, self.nodes, self.history = name, nodes, history
        self.home, self.version, self.clean, self.expiry = home, version, clean, expiry
        self.keepalive = keepalive
        self.conn: Conn | None = None
        self.node: int | None = None
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.lost_at: float | None = None
        # Connections paho saw end (counted by `_on_disconnect`, paho's thread).
        self.ended = 0
        self.c = self._new()

    def _new(self) -> mqtt.Client:
        kw = {} if self.version == 5 else {"clean_session": self.clean}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.name,
                        protocol=mqtt.MQTTv5 if self.version == 5 else mqtt.MQTTv311,
                        reconnect_on_failure=False, **kw)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        self.connack = None
        return c

    def _on_connect(self, client, userdata, flags, rc, properties):
        self.connack = (rc.value if hasattr(rc, "value") else int(rc), flags.session_present)

    def _on_disconnect(self, client, userdata, flags, rc, properties):
        now = time.monotonic()
        self.ended += 1
        self.connected.clear()
        if self.conn is not None and self.conn.closed is None:
            self.conn.closed = now
            self.conn.reason = str(rc)
            if not self.stop.is_set():
                self.lost_at = now

    def try_connect(self, node: int, timeout=5.0) -> bool:
        """One CONNECT to `node`; True when accepted."""
        self.connack = None
        ended_before = self.ended
        props = None
        if self.version == 5:
            props = Properties(PacketTypes.CONNECT)
            if self.expiry:
                props.SessionExpiryInterval = self.expiry
        try:
            self.c.connect("127.0.0.1", self.nodes.ports[node], keepalive=self.keepalive,
                           clean_start=self.clean if self.version == 5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                           properties=props)
        except OSError:
            return False
        self.c.loop_start()
        deadline = time.monotonic() + timeout
        while self.connack is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.connack is None or self.connack[0] != 0:
            if self.connack is not None:
                with self.history.lock:
                    self.history.connect_refused.append((self.name, node, self.connack[0]))
            self.c.loop_stop()
            try:
                self.c.disconnect()
            except Exception:
                pass
            self.c._sock_close()
            return False
        self.node = node
        self.conn = Conn(self.name, node, time.monotonic())
        with self.history.lock:
            self.history.conns.append(self.conn)
        self.connected.set()
        if self.ended != ended_before or not self.c.is_connected():
            # The node closed the connection right after its CONNACK (e.g. 0x8E when
            # another node took the session): paho's thread may have reported it before
            # the connection above was recorded, so it is ended here, and `ensure`
            # connects again (a client that missed this sat "connected" to nothing).
            now = time.monotonic()
            self.connected.clear()
            if self.conn.closed is None:
                self.conn.closed = now
                self.conn.reason = "closed right after its CONNACK"
                self.lost_at = now
            try:
                self.c.loop_stop()
            except RuntimeError:
                pass
            return False
        if self.lost_at is not None:
            with self.history.lock:
                self.history.stalls.setdefault(self.name, []).append((self.lost_at, time.monotonic()))
            self.lost_at = None
        self.after_connect()
        return True

    def after_connect(self):
        pass

    def drop(self):
        """Leaves the current connection (its socket closed, no DISCONNECT)."""
        self.c.loop_stop()
        self.c._sock_close()
        if self.conn is not None and self.conn.closed is None:
            self.conn.closed = time.monotonic()
            self.conn.reason = "dropped by the client"
        self.connected.clear()

    def ensure(self, prefer: int | None = None) -> bool:
        """Connected (or connects to the first node in turn that takes it)."""
        if self.connected.is_set():
            return True
        self.c.loop_stop()
        start = self.home if prefer is None else prefer
        for node in self.nodes.order(start):
            if self.stop.is_set():
                return False
            if self.try_connect(node):
                return True
        return False

    def close(self):
        self.stop.set()
        try:
            self.c.disconnect()
        except Exception:
            pass
        for _ in range(100):
            try:
                self.c.loop_stop()
                break
            except RuntimeError:
                # A reconnect of this client's own thread is starting paho's loop at this
                # moment (its thread made, not yet started): asked again shortly.
                time.sleep(0.02)
        if self.conn is not None and self.conn.closed is None:
            self.conn.closed = time.monotonic()


class Publisher(Client):
    """Publishes `<name>:<qos>:<seq>` on `f/<name>/q<qos>`, QoS 1 and 2 in turn, one message
    in flight at a time; every tenth QoS 1 message also goes retained to `r/<name>`."""

    def __init__(self, name, nodes, history, home, version, rate=40.0):
        super().__init__(name, nodes, history, home, version=version)
        self.rate = rate
        self.seq = {1: 0, 2: 0}
        self.rseq = 0
        self.acks: dict[int, tuple[str, int, int]] = {}
        self.c.on_log = self._on_log
        self.c.on_publish = self._on_publish
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _new(self):
        c = super()._new()
        c.on_log = self._on_log
        c.on_publish = self._on_publish
        return c

    def _acked(self, mid):
        what = self.acks.pop(mid, None)
        if what is None:
            return
        kind, key, seq = what
        t = time.monotonic()
        if kind == "r":
            self.history.note(self.history.retained_acked, key, seq, t)
        else:
            self.history.note(self.history.acked, (self.name, key), seq, t)

    _PUBREC = re.compile(r"Received PUBREC \(Mid: (\d+)\)")
    _PUBACK = re.compile(r"Received PUBACK \(Mid: (\d+)\)")

    def _on_log(self, client, userdata, level, buf):
        # PUBREC is the acknowledgement of a QoS 2 message (paho reports only the PUBCOMP).
        m = self._PUBREC.match(buf)
        if m:
            self._acked(int(m.group(1)))

    def _on_publish(self, client, userdata, mid, rc, properties):
        code = rc.value if hasattr(rc, "value") else int(rc)
        if code < 0x80:
            self._acked(mid)

    def _publish(self, topic, payload, qos, retain, kind, key, seq) -> bool:
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        self.acks[info.mid] = (kind, key, seq)
        t = time.monotonic()
        if kind == "r":
            self.history.note(self.history.retained_sent, key, seq, t)
        else:
            self.history.note(self.history.sent, (self.name, key), seq, t)
        deadline = t + 10
        while info.mid in self.acks and time.monotonic() < deadline and self.connected.is_set():
            time.sleep(0.002)
        return info.mid not in self.acks

    def _run(self):
        n = 0
        while not self.stop.is_set():
            if not self.ensure():
                time.sleep(0.5)
                continue
            # New connection, new session: what was in flight stays unknown, never resent.
            self.acks.clear()
            while not self.stop.is_set() and self.connected.is_set():
                qos = 1 + (n % 2)
                n += 1
                seq = self.seq[qos]
                self.seq[qos] += 1
                ok = self._publish(f"f/{self.name}/q{qos}", f"{self.name}:{qos}:{seq}".encode(),
                                   qos, False, "m", qos, seq)
                if ok and qos == 1 and seq % 10 == 0:
                    self.rseq += 1
                    self._publish(f"r/{self.name}", f"{self.name}:1:{self.rseq}".encode(), 1, True,
                                  "r", self.name, self.rseq)
                if not ok:
                    # Lost or not acknowledged in time: leave this connection.
                    if self.connected.is_set():
                        self.drop()
                    break
                time.sleep(1.0 / self.rate)
            self.c.loop_stop()
            self.c = self._new()


class Subscriber(Client):
    """A persistent session on `f/#` (QoS 2 granted), recording what arrives."""

    def __init__(self, name, nodes, history, home, moves=False):
        super().__init__(name, nodes, history, home, version=5, clean=False, expiry=600)
        self.moves = moves
        self.c.on_message = self._on_message
        self.subscribed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        history.received[name] = []

    def _on_message(self, client, userdata, msg):
        if msg.payload.startswith(b"will:"):
            with self.history.lock:
                self.history.wills_received.setdefault(self.name, []).append(
                    msg.payload[5:].decode())
            return
        m = PAYLOAD.match(msg.payload)
        if m is None:
            return
        with self.history.lock:
            self.history.received[self.name].append(
                (time.monotonic(), m["pub"].decode(), int(m["qos"]), int(m["seq"])))

    def after_connect(self):
        if self.subscribed and self.connack is not None and not self.connack[1]:
            # The broker lost the session (expiry 600 s): recorded, and the subscriptions
            # made again so the rest of the run still checks this subscriber.
            with self.history.lock:
                self.history.sessions_lost.append((self.name, self.node, time.monotonic()))
            self.subscribed = False
        if not self.subscribed:
            r, _ = self.c.subscribe([("f/#", 2), ("w/#", 2)])
            self.subscribed = r == mqtt.MQTT_ERR_SUCCESS

    def setup(self):
        """The session exists (with its subscription) before anything is published."""
        assert self.ensure(), f"{self.name} cannot connect"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if self.subscribed:
                break
        time.sleep(0.5)

    def _run(self):
        next_move = time.monotonic() + random.uniform(4, 8)
        while not self.stop.is_set():
            if not self.connected.is_set():
                # The same paho client across reconnects: its QoS 2 state (PUBREC sent,
                # awaiting PUBREL) goes on with the session.
                if not self.ensure(prefer=self.node if self.node is not None else self.home):
                    time.sleep(0.5)
                continue
            if self.moves and time.monotonic() >= next_move:
                nxt = ((self.node or 0) + 1) % len(self.nodes.ports)
                try:
                    self.c.disconnect()
                except Exception:
                    pass
                time.sleep(0.2)
                self.c.loop_stop()
                if self.conn is not None and self.conn.closed is None:
                    self.conn.closed = time.monotonic()
                self.connected.clear()
                self.ensure(prefer=nxt)
                next_move = time.monotonic() + random.uniform(4, 8)
            time.sleep(0.1)

    def start(self):
        self.thread.start()


class Probe:
    """A client id on a node about to be faulted; after the fault, the same id connects on
    another node: how long both connections are open at once (a node that lost its lease
    must have closed its connection within the lease)."""

    def __init__(self, nodes: Nodes, history: History, victim: int):
        self.id = f"probe-{uuid.uuid4().hex[:8]}"
        self.nodes, self.history, self.victim = nodes, history, victim
        self.old = Client(self.id, nodes, history, victim, keepalive=60)
        # Its will (QoS 2): published once when the connection on the faulted node ends
        # (taken over by the same id elsewhere, whose clean start ends the session).
        self.old.c.will_set(f"w/{self.id}", f"will:{self.id}".encode(), qos=2)
        self.new: Client | None = None

    def before(self) -> bool:
        if not self.old.try_connect(self.victim):
            return False
        with self.history.lock:
            self.history.wills[self.id] = time.monotonic()
        time.sleep(0.3)  # its record (with the will) written
        return True

    def after(self, deadline: float) -> Client | None:
        """Connects the same id elsewhere (tries until `deadline`)."""
        while time.monotonic() < deadline:
            for node in range(len(self.nodes.ports)):
                if node == self.victim:
                    continue
                c = Client(self.id, self.nodes, self.history, node, keepalive=60)
                if c.try_connect(node, timeout=8):
                    self.new = c
                    return c
            time.sleep(0.5)
        return None

    def record(self, kind: str, resumed_at: float | None):
        old, new = self.old.conn, self.new.conn if self.new else None
        if old is None or new is None:
            return
        end = old.closed if old.closed is not None else time.monotonic()
        # A paused process serves nothing: its time counts from when it runs again.
        start = new.opened if resumed_at is None else max(new.opened, resumed_at)
        with self.history.lock:
            self.history.overlaps.append({"kind": kind, "client": self.id, "victim": self.victim,
                                          "overlap": max(0.0, end - start),
                                          "old_open": old.closed is None})

    def close(self):
        for c in (self.old, self.new):
            if c is not None:
                c.close()


# ---- the workload and the schedule ----------------------------------------------------------

class Workload:
    def __init__(self, cluster: ClusterBase, publishers=3, rate=40.0):
        self.cluster = cluster
        self.nodes = Nodes(cluster.client_ports)
        self.history = History()
        n = len(self.nodes.ports)
        # Subscribers: one on each node, the last one moving between nodes.
        self.subs = [Subscriber(f"sub{i}", self.nodes, self.history, i % n, moves=(i == n - 1))
                     for i in range(n)]
        # Publishers on different nodes, 5.0 and 3.1.1.
        self.pubs = [Publisher(f"pub{i}", self.nodes, self.history, (i + 1) % n,
                               version=5 if i % 2 == 0 else 4, rate=rate)
                     for i in range(publishers)]

    def start(self):
        for s in self.subs:
            s.setup()
        for s in self.subs:
            s.start()
        for p in self.pubs:
            p.thread.start()

    def stop_publishers(self):
        for p in self.pubs:
            p.stop.set()
        for p in self.pubs:
            p.thread.join(15)
            p.close()

    def wait_subscribers_connected(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.connected.is_set() for s in self.subs):
                return True
            time.sleep(0.2)
        return False

    def drain(self, quiet=5.0, timeout=90.0):
        """Waits until every subscriber has everything acknowledged, or nothing new came for
        `quiet` seconds with every subscriber connected (whatever is missing then is lost)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.missing_count() == 0:
                return
            with self.history.lock:
                last = max((r[-1][0] for r in self.history.received.values() if r), default=0)
            if (all(s.connected.is_set() for s in self.subs)
                    and time.monotonic() - last > quiet):
                return
            time.sleep(0.5)

    def missing_count(self) -> int:
        with self.history.lock:
            acked = {(p, q, s) for (p, q), seqs in self.history.acked.items() for s in seqs}
            total = 0
            for name, got in self.history.received.items():
                have = {(p, q, s) for _, p, q, s in got}
                total += len(acked - have)
        return total

    def stop(self):
        for s in self.subs:
            s.close()

    def retained_seen(self) -> dict[int, dict[str, int] | None]:
        """What a new subscriber to `r/#` gets on each node, per publisher (`None`: the
        node took no new client within 20 s). Every node, because each keeps its own copy
        of the retained messages, fed by its watch of the cluster's (a node whose watch
        had stalled showed the values from before a fault, found by the CI)."""
        out: dict[int, dict[str, int] | None] = {}
        for node in range(len(self.nodes.ports)):
            got: list[bytes] = []
            c = Client(f"rcheck{node}-{uuid.uuid4().hex[:6]}", self.nodes, self.history, node)
            c.c.on_message = lambda cl, u, m, got=got: got.append(m.payload)
            deadline = time.monotonic() + 20
            while not c.try_connect(node) and time.monotonic() < deadline:
                time.sleep(0.5)
            if not c.connected.is_set():
                c.close()
                out[node] = None
                continue
            c.c.subscribe("r/#", qos=1)
            time.sleep(2.0)
            c.close()
            seen: dict[str, int] = {}
            for p in got:
                m = PAYLOAD.match(p)
                if m:
                    seen[m["pub"].decode()] = int(m["seq"])
            out[node] = seen
        return out


FAULTS = ("kill-node", "kill-nats", "pause-node", "partition", "cut-link", "loss", "pause-nats")
# The faults of a NATS server (no id probe: no node is the victim).
NATS_FAULTS = ("kill-nats", "pause-nats")
# The faults made in network namespaces, and of those the ones made of nftables rules.
NETNS_FAULTS = ("partition", "cut-link", "loss")
NFT_FAULTS = ("cut-link", "loss")
# The faults after which the victim's node no longer serves its clients (killed, paused,
# or stepped down when cut off from the NATS majority): what it held for them is the known
# gap. A NATS server's death, a cut link or packet loss leave every node with a majority:
# its clients must not miss anything (a node that steps down all the same is caught by its
# DISCONNECT 0x89, Server busy).
NODE_LOST_FAULTS = ("kill-node", "pause-node", "partition")
LOSS_PERCENT = 10


def _acknowledged_within(info: mqtt.MQTTMessageInfo, client: "Client", timeout: float) -> bool:
    """Whether a publish was acknowledged within `timeout` while `client` stayed connected
    (paho raises on asking a publish that failed, e.g. its connection closed meanwhile)."""
    t_end = time.monotonic() + timeout
    try:
        while time.monotonic() < t_end and client.connected.is_set() and not info.is_published():
            time.sleep(0.05)
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


def _hold_until(t0: float, hold: float | None, default: float):
    """Sleeps until `hold` (or `default`) seconds after t0."""
    remaining = (hold if hold is not None else default) - (time.monotonic() - t0)
    time.sleep(max(0.0, remaining))


def _hold_link_fault(cluster: NetnsCluster, probe: Probe | None, ev: dict, t0: float,
                     hold: float | None, make):
    """A fault of nft rules (`make` adds them): the probe's id taken elsewhere meanwhile,
    held like a partition (beyond the lease: a node that wrongly stepped down, or wrongly
    kept serving, shows it), then every rule taken away."""
    make()
    if probe:
        probe.after(time.monotonic() + 30)
    _hold_until(t0, hold, LEASE_TTL + 5.0)
    ev["victim_clients_open"] = probe is not None and probe.old.connected.is_set()
    ev["healed"] = time.monotonic()
    cluster.heal_links()


def inject(cluster: ClusterBase, w: Workload, kind: str, victim: int, hold: float | None = None,
           loss_percent: int = LOSS_PERCENT) -> dict:
    """One fault and its healing; returns what was done and when."""
    h = w.history
    probe = Probe(w.nodes, h, victim) if kind not in NATS_FAULTS else None
    if probe is not None and not probe.before():
        probe = None
    on_victim = [s.name for s in w.subs if s.connected.is_set() and s.node == victim]
    t0 = time.monotonic()
    ev = {"kind": kind, "victim": victim, "at": t0, "subs_on_victim": on_victim}
    resumed_at = None
    log(f"fault {kind} on host {victim} (subscribers there: {on_victim or 'none'})")
    if kind == "kill-node":
        cluster.kill_node(victim)
        if probe:
            probe.after(time.monotonic() + 30)
        time.sleep(hold if hold is not None else 3.0)
        ev["healed"] = time.monotonic()
        cluster.restart_node(victim)
    elif kind == "kill-nats":
        ev["nats"] = victim
        cluster.kill_nats(victim)
        time.sleep(hold if hold is not None else 8.0)
        ev["healed"] = time.monotonic()
        cluster.restart_nats(victim)
    elif kind == "pause-nats":
        # The server stalls (a hung disk, a long pause) with its connections open: the
        # nodes connected to it step down, then leave it for another server; the streams
        # it led elect other leaders. Held until the move is due (a lease TTL after the
        # first failed lease write) and a little beyond.
        ev["nats"] = victim
        ev["nodes_on_it"] = [i for i in range(cluster.n) if cluster.nats_of(i) == victim]
        cluster.pause_nats(victim)
        _hold_until(t0, hold, LEASE_TTL + 10.0)
        ev["healed"] = time.monotonic()
        cluster.resume_nats(victim)
    elif kind == "pause-node":
        cluster.pause_node(victim)
        if probe:
            probe.after(time.monotonic() + 30)
        # Beyond its lease: its peers reap it, its clients' sessions move.
        remaining = (hold if hold is not None else LEASE_TTL + 5.0) - (time.monotonic() - t0)
        time.sleep(max(0.0, remaining))
        resumed_at = ev["healed"] = time.monotonic()
        cluster.resume_node(victim)
        # Once it runs again, it must not serve what it lost: the probe's old connection
        # is closed, and a publish on it is never acknowledged.
        if probe and probe.old.connected.is_set():
            ev["acked_after_resume"] = _acknowledged_within(
                probe.old.c.publish("f/probe/fenced", b"after-resume", qos=1), probe.old, 5.0)
    elif kind == "partition":
        assert isinstance(cluster, NetnsCluster)
        cluster.partition(victim)
        if probe:
            probe.after(time.monotonic() + 30)
        remaining = (hold if hold is not None else LEASE_TTL + 5.0) - (time.monotonic() - t0)
        time.sleep(max(0.0, remaining))
        ev["victim_clients_open"] = probe is not None and probe.old.connected.is_set()
        ev["healed"] = time.monotonic()
        cluster.heal(victim)
    elif kind == "cut-link":
        # Host `victim` and the next one lose each other and keep the third: both NATS
        # servers keep a majority through it (but core NATS routes make one hop only, so
        # nothing between the two crosses, and JetStream's leaders churn: a node may step
        # down for a while, its clients then reconnect elsewhere). The probe's id is
        # taken to the other end of the cut first (Probe.after tries victim + 1 first),
        # whose hand-over request cannot reach the victim's node.
        assert isinstance(cluster, NetnsCluster)
        ev["peer"] = (victim + 1) % cluster.n
        _hold_link_fault(cluster, probe, ev, t0, hold,
                         lambda: cluster.cut_link(victim, ev["peer"]))
    elif kind == "loss":
        # Every TCP connection between host `victim` and the others (NATS routes, the
        # other nodes' connections to its server and back) retransmits.
        assert isinstance(cluster, NetnsCluster)
        ev["percent"] = loss_percent
        _hold_link_fault(cluster, probe, ev, t0, hold,
                         lambda: cluster.lose(victim, loss_percent))
    if probe:
        # This fault's probe, and when its id was accepted on another node (none: not
        # within its 30 s; a later fault's probe must not stand in for it).
        ev["probe"] = probe.id
        if probe.new is not None and probe.new.conn is not None:
            ev["takeover"] = probe.new.conn.opened - t0
        if probe.old.connected.is_set():
            t_end = time.monotonic() + 15
            while time.monotonic() < t_end and probe.old.connected.is_set():
                time.sleep(0.1)
        probe.record(kind, resumed_at)
        probe.close()
    with h.lock:
        h.faults.append(ev)
    return ev


@dataclass
class Report:
    cycles: int = 0
    acknowledged: int = 0
    unknown: int = 0
    delivered: int = 0
    lost: list = field(default_factory=list)          # (sub, pub, qos, seq)
    lost_known_gap: list = field(default_factory=list)
    duplicates_qos2: list = field(default_factory=list)
    order_violations: list = field(default_factory=list)
    retained_bad: list = field(default_factory=list)
    overlaps_too_long: list = field(default_factory=list)
    wills: int = 0
    wills_missing: list = field(default_factory=list)   # (sub, probe)
    wills_missing_known_gap: list = field(default_factory=list)
    wills_twice: list = field(default_factory=list)      # (sub, probe, n)
    sessions_lost: list = field(default_factory=list)    # (sub, node, t): Session Present 0
    late_unacked: list = field(default_factory=list)    # anomalies of unacknowledged messages
    tolerate_late_appends: bool = False
    acked_after_resume: int = 0
    longest_stall: float = 0.0
    longest_delivery: float = 0.0
    longest_takeover: float = 0.0
    takeovers: dict = field(default_factory=dict)      # fault kind -> [seconds]
    takeovers_missed: list = field(default_factory=list)  # (kind, probe): not within 30 s
    longest_overlap: float = 0.0
    faults: list = field(default_factory=list)
    overlaps: list = field(default_factory=list)
    explain: list = field(default_factory=list)      # what the clients saw around a loss

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} acknowledged deliveries lost, e.g. {self.lost[:5]}")
            out += self.explain
        if self.duplicates_qos2:
            out.append(f"{len(self.duplicates_qos2)} QoS 2 duplicates, e.g. {self.duplicates_qos2[:5]}")
        if self.order_violations:
            out.append(f"{len(self.order_violations)} order violations, e.g. {self.order_violations[:5]}")
        if self.retained_bad:
            out.append(f"retained values wrong: {self.retained_bad}")
        if self.wills_missing:
            out.append(f"wills never arrived: {self.wills_missing[:5]}")
        if self.wills_twice:
            out.append(f"wills published more than once: {self.wills_twice[:5]}")
        if self.sessions_lost:
            out.append(f"persistent sessions lost (Session Present 0): {self.sessions_lost[:5]}")
        if self.overlaps_too_long:
            out.append(f"client ids on two nodes longer than the lease: {self.overlaps_too_long}")
        if self.late_unacked and not self.tolerate_late_appends:
            out.append(f"late appends of unacknowledged messages: {self.late_unacked[:5]}")
        return out

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for f in self.faults:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
        return "\n".join([
            f"cycles:                 {self.cycles} ({', '.join(f'{k} x{v}' for k, v in sorted(kinds.items()))})",
            f"messages acknowledged:  {self.acknowledged} (unacknowledged, outcome unknown: {self.unknown})",
            f"deliveries checked:     {self.delivered}",
            f"lost:                   {len(self.lost)}",
            f"lost, known gap:        {len(self.lost_known_gap)} (subscriber connected to a killed/paused/cut-off node: cl-durable)",
            f"QoS 2 duplicates:       {len(self.duplicates_qos2)}",
            f"order violations:       {len(self.order_violations)}",
            f"retained wrong:         {len(self.retained_bad)}",
            f"wills:                  {self.wills} expected, {len(self.wills_missing)} missing, {len(self.wills_twice)} twice"
            f" (known gap: {len(self.wills_missing_known_gap)})",
            f"late appends:           {len(self.late_unacked)} QoS 2 duplicates or reorderings of unacknowledged messages",
            f"longest stall:          {self.longest_stall:.1f} s (a client without a connection)",
            f"longest delivery:       {self.longest_delivery:.1f} s (acknowledged to the publisher -> arrived at a subscriber)",
            f"longest takeover:       {self.longest_takeover:.1f} s (fault to the same client id accepted on another node)"
            + "".join(f"; {k} {max(v):.1f} s" for k, v in sorted(self.takeovers.items()))
            + (f"; not within 30 s: {len(self.takeovers_missed)}"
               f" ({', '.join(sorted({k for k, _ in self.takeovers_missed}))})"
               if self.takeovers_missed else ""),
            f"longest double serving: {self.longest_overlap:.1f} s (lease {LEASE_TTL:.0f} s)",
            f"sessions lost:          {len(self.sessions_lost)} (Session Present 0 for a persistent subscriber)",
        ])


def check(w: Workload, retained: dict[int, dict[str, int] | None],
          tolerate_known_gap: bool) -> Report:
    """The checker (see the module documentation)."""
    h = w.history
    r = Report(faults=list(h.faults))
    with h.lock:
        t0 = min((c.opened for c in h.conns), default=0.0)
        r.sessions_lost = [(sub, node, round(t - t0, 2)) for sub, node, t in h.sessions_lost]
        acked = {k: dict(v) for k, v in h.acked.items()}
        sent = {k: dict(v) for k, v in h.sent.items()}
        received = {k: list(v) for k, v in h.received.items()}
        conns = list(h.conns)
    r.acknowledged = sum(len(v) for v in acked.values())
    r.unknown = sum(len(v) for v in sent.values()) - r.acknowledged

    def exposed(sub: str, t_ack: float) -> bool:
        """Whether `sub` was connected to a node that was killed, paused or cut off, or that
        stepped down (its lease not refreshed: DISCONNECT 0x89, Server busy), and the
        message was acknowledged before the subscriber was connected again (the session's
        queue and in-flight messages on that node are the known gap: its record says where
        it stands in the log only when it goes offline on a node that serves). A cut link or
        packet loss is no such fault (NODE_LOST_FAULTS): every node should keep serving."""
        mine = sorted((c for c in conns if c.client_id == sub), key=lambda c: c.opened)
        for k, c in enumerate(mine):
            if "Server busy" in c.reason and c.opened <= t_ack:
                back = mine[k + 1].opened if k + 1 < len(mine) else float("inf")
                if t_ack <= back + 1.0:
                    return True
        for f in r.faults:
            if f["kind"] not in NODE_LOST_FAULTS or sub not in f["subs_on_victim"]:
                continue
            back = min((c.opened for c in conns if c.client_id == sub and c.opened > f["at"]),
                       default=float("inf"))
            if t_ack <= back + 1.0:
                return True
        return False

    for sub, got in received.items():
        counts: dict[tuple[str, int, int], int] = {}
        last: dict[tuple[str, int], int] = {}
        for _, pub, qos, seq in got:
            key = (pub, qos, seq)
            counts[key] = counts.get(key, 0) + 1
            if counts[key] == 1:
                prev = last.get((pub, qos))
                if prev is not None and seq < prev:
                    r.order_violations.append((sub, pub, qos, prev, seq))
                last[(pub, qos)] = seq
        first: dict[tuple[str, int, int], float] = {}
        for t, pub, qos, seq in got:
            first.setdefault((pub, qos, seq), t)
        for (pub, qos), seqs in acked.items():
            for seq, t in seqs.items():
                r.delivered += 1
                if (pub, qos, seq) in first:
                    r.longest_delivery = max(r.longest_delivery, first[(pub, qos, seq)] - t)
                if (pub, qos, seq) not in counts:
                    if exposed(sub, t):
                        r.lost_known_gap.append((sub, pub, qos, seq))
                    else:
                        r.lost.append((sub, pub, qos, seq))
        for k, n in counts.items():
            if k[1] == 2 and n > 1:
                if k[2] in acked.get((k[0], k[1]), {}):
                    r.duplicates_qos2.append((sub, *k, n))
                else:
                    r.late_unacked.append(("duplicate", sub, *k, n))
    # A message whose publisher never got its acknowledgement, arriving after later ones of
    # the same publisher: its append outlived the node's wait for it (see docs/cluster.md
    # "Faults", late appends). Counted apart from the acknowledged messages' order.
    late_order = [v for v in r.order_violations if v[4] not in acked.get((v[1], v[2]), {})]
    r.order_violations = [v for v in r.order_violations if v not in late_order]
    r.late_unacked += [("reordered", *v) for v in late_order]
    if not tolerate_known_gap:
        r.lost += r.lost_known_gap
    # Wills: each probe's will once at every persistent subscriber.
    with h.lock:
        wills = dict(h.wills)
        got_wills = {k: list(v) for k, v in h.wills_received.items()}
    r.wills = len(wills)
    for sub in received:
        seen = got_wills.get(sub, [])
        for probe in wills:
            n = seen.count(probe)
            if n == 0:
                # Published when its connection ended (the fault, or the reap a lease
                # later): a subscriber on the faulted node, or on one that stepped down
                # since, is the known gap.
                stepped_down = any(c.client_id == sub and "Server busy" in c.reason
                                   and (c.closed or 0) > wills[probe] for c in conns)
                if stepped_down or any(
                        sub in f["subs_on_victim"] for f in r.faults
                        if f["kind"] in NODE_LOST_FAULTS):
                    r.wills_missing_known_gap.append((sub, probe))
                else:
                    r.wills_missing.append((sub, probe))
            elif n > 1:
                r.wills_twice.append((sub, probe, n))
    if not tolerate_known_gap:
        r.wills_missing += r.wills_missing_known_gap
    t0 = min((c.opened for c in conns), default=0.0)
    for sub, pub, qos, seq in r.lost[:3]:
        t = acked[(pub, qos)][seq]
        around = [f"{c.node}@{c.opened - t0:.2f}-{(c.closed or 0) - t0:.2f}({c.reason})"
                  for c in conns if c.client_id == sub and abs(c.opened - t) < 30]
        faults = [f"{f['kind']}:{f['victim']}@{f['at'] - t0:.2f}" for f in r.faults]
        r.explain.append(f"  {sub} missed {pub}:{qos}:{seq} acked at {t - t0:.2f}; "
                         f"its connections {around}; faults {faults}")
    # Retained: the last acknowledged value, or one sent after it whose outcome is unknown.
    # Every node's copy is checked.
    for node, values in sorted(retained.items()):
        if values is None:
            r.retained_bad.append((f"m{node}", "took no new client"))
            continue
        for pub, seqs in h.retained_acked.items():
            last_acked = max(seqs)
            sent_after = {s for s in h.retained_sent.get(pub, {}) if s > last_acked}
            seen = values.get(pub)
            if seen != last_acked and seen not in sent_after:
                r.retained_bad.append((f"m{node}", pub, "seen", seen, "last acknowledged", last_acked))
    r.overlaps = list(h.overlaps)
    for o in h.overlaps:
        r.longest_overlap = max(r.longest_overlap, o["overlap"])
        if o["overlap"] > LEASE_TTL:
            r.overlaps_too_long.append(o)
    r.acked_after_resume = sum(1 for f in r.faults if f.get("acked_after_resume"))
    for spans in h.stalls.values():
        for down, up in spans:
            r.longest_stall = max(r.longest_stall, up - down)
    for f in r.faults:
        if "takeover" in f:
            r.longest_takeover = max(r.longest_takeover, f["takeover"])
            r.takeovers.setdefault(f["kind"], []).append(f["takeover"])
        elif f.get("probe"):
            r.takeovers_missed.append((f["kind"], f["probe"]))
    return r


def dump_history(h: History, path: Path):
    """Writes what the clients saw (times on the monotonic clock, as the node logs' are
    not), to trace a finding against the node logs kept beside it."""
    with h.lock:
        data = {
            "now_monotonic": time.monotonic(),
            "now_wall": time.time(),
            "sent": {f"{p}:{q}": v for (p, q), v in h.sent.items()},
            "acked": {f"{p}:{q}": v for (p, q), v in h.acked.items()},
            "received": h.received,
            "conns": [vars(c) for c in h.conns],
            "faults": h.faults,
            "sessions_lost": h.sessions_lost,
        }
    path.write_text(json.dumps(data))


def run(cluster: ClusterBase, schedule: list[tuple[str, int]], settle=4.0, rate=40.0,
        tolerate_known_gap=True, tolerate_late_appends=False, on_cycle=None,
        loss_percent: int = LOSS_PERCENT) -> Report:
    """Runs the workload over `cluster` (started), injects each (fault, victim) of
    `schedule` in turn with `settle` seconds of quiet between, then heals, drains and
    checks."""
    w = Workload(cluster, rate=rate)
    w.start()
    try:
        time.sleep(settle)
        for k, (kind, victim) in enumerate(schedule):
            inject(cluster, w, kind, victim, loss_percent=loss_percent)
            # Back to normal before the next fault: NATS healthy, subscribers back.
            cluster.wait_healthy()
            w.wait_subscribers_connected()
            time.sleep(settle)
            if on_cycle:
                on_cycle(k + 1, w)
        w.stop_publishers()
        w.wait_subscribers_connected()
        w.drain()
        retained = w.retained_seen()
    finally:
        w.stop()
        # Also when the run broke off (a node that did not come back): what the clients saw
        # until then is what traces it.
        if os.environ.get("MAKELAAR_KEEP_CLUSTER_LOGS"):
            dump_history(w.history, cluster.workdir / "history.json")
    report = check(w, retained, tolerate_known_gap)
    report.tolerate_late_appends = tolerate_late_appends
    report.cycles = len(schedule)
    return report
