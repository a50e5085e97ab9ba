"""A real Mosquitto 2.0 bridge into the broker under test (the broker is the bridge's remote).

Mosquitto connects with the bridge bit (`try_private true`: protocol level 0x84, or 0x83 for
3.1) and
`topic # both 1`, with and without prefixes, or speaks 5.0 (`mqttv50`, which asks for No
Local itself). Messages must flow both ways with the right topics, QoS and retain flags, and
no message may loop: with the bridge bit, the broker gives the bridge's subscriptions No Local
and Retain As Published, so what the bridge publishes is not sent back to it (which would
make Mosquitto's subscribers see it twice), and a retained message stays retained on the
other side. The bridge's retained state `1` appears under `$SYS/broker/connection/<id>/state`.
"""

import getpass
import os
import subprocess
import time
from types import SimpleNamespace

import pytest

from brokers import BROKER_KIND, free_port, mosquitto_exe
from clients import unique

pytestmark = pytest.mark.skipif(not os.path.exists(mosquitto_exe()),
                                reason="needs Debian's mosquitto")

# (protocol, local prefix on Mosquitto, remote prefix on the broker under test)
CASES = {
    "bridge-bit": ("mqttv311", "", ""),
    "bridge-bit-prefixes": ("mqttv311", "edge/", "cloud/"),
    "bridge-bit-3.1": ("mqttv31", "", ""),
    "mqtt5": ("mqttv50", "", ""),
}


class MosquittoBridge:
    """Debian's Mosquitto on a free port, bridged to the broker under test."""

    def __init__(self, tmp_path, remote_port, bridge_id, protocol, local_prefix,
                 remote_prefix):
        self.port = free_port()
        self.host = "127.0.0.1"
        self.cafile = None
        self.log_path = tmp_path / "mosquitto-bridge.log"
        prefixes = ""
        if local_prefix or remote_prefix:
            empty = '""'
            prefixes = f" {local_prefix or empty} {remote_prefix or empty}"
        conf = tmp_path / "mosquitto-bridge.conf"
        conf.write_text("\n".join([
            f"user {getpass.getuser()}",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "log_type all",
            f"listener {self.port} 127.0.0.1",
            "connection into-broker-under-test",
            f"address 127.0.0.1:{remote_port}",
            f"remote_clientid {bridge_id}",
            f"bridge_protocol_version {protocol}",
            "try_private true",
            "cleansession true",
            "restart_timeout 1",
            f"topic # both 1{prefixes}",
        ]) + "\n")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([mosquitto_exe(), "-c", str(conf)],
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def log_text(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


@pytest.fixture(params=list(CASES))
def bridged(request, broker, client, tmp_path):
    """(case, Mosquitto, its state topic on the broker, prefix there, prefix on Mosquitto),
    once the bridge is up: its retained state `1` has arrived."""
    protocol, local_prefix, remote_prefix = CASES[request.param]
    bridge_id = unique("mqbridge")
    state = f"$SYS/broker/connection/{bridge_id}/state"
    watcher = client(version=4)
    watcher.subscribe(state, qos=1)
    m = MosquittoBridge(tmp_path, broker.port, bridge_id, protocol, local_prefix,
                        remote_prefix)
    try:
        msg = watcher.get(timeout=15)
        assert (msg.topic, msg.payload) == (state, b"1"), m.log_text()
        # Mosquitto subscribes at the remote right after its CONNACK; let that land.
        time.sleep(0.5)
        yield SimpleNamespace(mosquitto=m, state=state, here=remote_prefix,
                              there=local_prefix, protocol=protocol)
    finally:
        m.stop()
        client(version=4).publish(state, b"", qos=1, retain=True)


def test_the_bridge_state_is_retained_here(bridged, client):
    late = client(version=4)
    late.subscribe(bridged.state, qos=1)
    m = late.get()
    assert (m.payload, m.retain) == (b"1", True)


def test_messages_cross_both_ways_once(bridged, client):
    """Each side's subscriber to everything gets each message exactly once, at QoS 1 (the
    topic line's QoS caps a QoS 2 message), on the topic its side names it."""
    t = unique("loop")
    here = client(version=5)
    here.subscribe(f"{bridged.here}{t}/#", qos=2)
    there = client(version=4, on=bridged.mosquitto)
    there.subscribe(f"{bridged.there}{t}/#", qos=2)
    here_pub = client(version=4)
    there_pub = client(version=4, on=bridged.mosquitto)

    here_pub.publish(f"{bridged.here}{t}/from-here", b"h", qos=2)
    there_pub.publish(f"{bridged.there}{t}/from-there", b"m", qos=2)

    got_here = sorted((m.topic, m.payload, m.qos) for m in here.drain(quiet=1.5))
    got_there = sorted((m.topic, m.payload, m.qos) for m in there.drain(quiet=1.5))
    assert got_here == [
        (f"{bridged.here}{t}/from-here", b"h", 2),
        (f"{bridged.here}{t}/from-there", b"m", 1),
    ], bridged.mosquitto.log_text()
    assert got_there == [
        (f"{bridged.there}{t}/from-here", b"h", 1),
        (f"{bridged.there}{t}/from-there", b"m", 2),
    ], bridged.mosquitto.log_text()


def test_retained_messages_stay_retained_across(bridged, client):
    """A retained message published on either side is retained on the other: the broker
    sends it to the bridge with its retain flag (Retain As Published), Mosquitto keeps it."""
    t = unique("ret")
    client(version=4).publish(f"{bridged.here}{t}/a", b"from here", qos=1, retain=True)
    client(version=4, on=bridged.mosquitto).publish(f"{bridged.there}{t}/b", b"from there",
                                                     qos=1, retain=True)
    time.sleep(1.0)
    late_there = client(version=4, on=bridged.mosquitto)
    late_there.subscribe(f"{bridged.there}{t}/a", qos=1)
    m = late_there.get()
    assert (m.payload, m.retain) == (b"from here", True), bridged.mosquitto.log_text()
    late_here = client(version=4)
    late_here.subscribe(f"{bridged.here}{t}/b", qos=1)
    m = late_here.get()
    assert (m.payload, m.retain) == (b"from there", True)
    # Each once: a message that came back over the bridge would arrive a second time.
    fresh = client(version=4)
    fresh.subscribe(f"{bridged.here}{t}/#", qos=1)
    assert sorted(m.payload for m in fresh.drain(quiet=1.0)) == [b"from here", b"from there"]
    for c, topic in ((client(version=4), f"{bridged.here}{t}/a"),
                     (client(version=4, on=bridged.mosquitto), f"{bridged.there}{t}/b")):
        c.publish(topic, b"", qos=1, retain=True)


@pytest.mark.skipif(BROKER_KIND != "makelaar", reason="reads Makelaar's log")
def test_the_log_names_the_bridge(make_broker, client, tmp_path):
    """The "client connected" line of a client with the bridge bit says bridge=true; an
    ordinary client's does not."""
    b = make_broker(log_level="warn,makelaar::clients=info")
    bridge_id = unique("logged")
    plain = client(version=4, on=b)
    m = MosquittoBridge(tmp_path, b.port, bridge_id, "mqttv311", "", "")
    try:
        watcher = client(version=4, on=b)
        watcher.subscribe(f"$SYS/broker/connection/{bridge_id}/state", qos=1)
        assert watcher.get(timeout=15).payload == b"1", m.log_text()
    finally:
        m.stop()
    lines = [line for line in b.stderr_path.read_text().splitlines()
             if "client connected" in line]
    bridge_lines = [line for line in lines if bridge_id in line]
    plain_lines = [line for line in lines if plain.client_id in line]
    assert len(bridge_lines) == 1 and "bridge=true" in bridge_lines[0], lines
    assert len(plain_lines) == 1 and "bridge" not in plain_lines[0], lines
    client(version=4, on=b).publish(f"$SYS/broker/connection/{bridge_id}/state", b"",
                                    qos=1, retain=True)
