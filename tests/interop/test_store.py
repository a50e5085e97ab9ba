"""The durable store from the outside: what survives a restart, the data directory's lock, a
damaged store file (refused, or moved aside with --on-corrupt-store move-aside), the queue
limit of an offline session across a restart, and `makelaar store inspect` (text and --json).
Each test runs its own `makelaar serve --data-dir DIR`. Makelaar only (skipped against
Mosquitto). The crash test is test_durability.py."""

from __future__ import annotations

import json
import subprocess

import pytest

import mqtt_raw as R
from brokers import BROKER_KIND, find_makelaar, free_port
from durable_broker import Server

pytestmark = pytest.mark.skipif(BROKER_KIND != "makelaar",
                                reason="tests makelaar's own store and command line")

EXPIRY = [(R.SESSION_EXPIRY_INTERVAL, 600)]


def makelaar(*args, timeout=20) -> subprocess.CompletedProcess:
    return subprocess.run([find_makelaar(), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def inspect(data, *flags) -> subprocess.CompletedProcess:
    return makelaar("store", "inspect", "--data-dir", str(data), *flags)


def assert_one_clear_error(p, *needles):
    """Exit status 1 and one sentence naming what is wrong and what to do; no panic."""
    assert p.returncode == 1, f"exit status {p.returncode}; stderr: {p.stderr}"
    err = p.stderr.strip().splitlines()
    err = [line for line in err if " INFO " not in line]  # the listener's start-up line
    assert len(err) == 1, f"expected one sentence, got:\n{p.stderr}"
    assert "panicked" not in err[0], err[0]
    for n in needles:
        assert n in err[0], f"{n!r} not named in: {err[0]}"


def connect(server, client_id, version=5, clean=False, properties=EXPIRY):
    c = R.RawClient(server.port, version=version)
    ack = c.connect(client_id, clean=clean, properties=properties if version == 5 else None)
    assert ack.reason == 0, ack
    return c, ack


def publish_acked(server, topic, payloads, qos=1, retain=False):
    """Publishes and waits for each PUBACK: acknowledged means kept."""
    c, _ = connect(server, "", clean=True, properties=None)
    for i, p in enumerate(payloads, 1):
        c.publish(topic, p, qos=qos, retain=retain, packet_id=i)
        if qos == 1:
            c.recv_type(R.PUBACK)
    c.send(R.disconnect(version=5))
    c.close()


def receive(c, n, qos=1):
    got = []
    for _ in range(n):
        p = c.recv_type(R.PUBLISH)
        got.append((p.topic, p.payload))
        if p.qos == 1:
            c.send(R.ack(R.PUBACK, p.packet_id, version=c.version))
    return got


def test_sessions_queues_and_retained_messages_survive_a_restart(tmp_path):
    """A persistent session keeps its subscription and its queue, and every retained message
    keeps its topic [MQTT-3.1.2-4] [MQTT-3.3.1-5], across a clean stop and a kill -9."""
    server = Server(tmp_path).start()
    try:
        c, _ = connect(server, "keeper")
        c.subscribe([("keep/#", 1)])
        c.send(R.disconnect(version=5))
        c.close()
        for t in ("a", "b", "c"):
            publish_acked(server, f"keep/{t}", [f"retained {t}".encode()], retain=True)
        publish_acked(server, "keep/q", [b"one", b"two"])
        for stop in (server.stop, server.kill):
            stop()
            server.start()
        c, ack = connect(server, "keeper")
        assert ack.session_present  # [MQTT-3.2.2-2]
        got = receive(c, 5)
        assert sorted(got[:3]) == [(f"keep/{t}", f"retained {t}".encode()) for t in "abc"]
        assert got[3:] == [("keep/q", b"one"), ("keep/q", b"two")]
        c.close()
        fresh, _ = connect(server, "", clean=True, properties=None)
        fresh.subscribe([("keep/#", 0)])
        retained = {p.topic: p.payload for p in (fresh.recv_type(R.PUBLISH) for _ in range(3))}
        assert retained == {f"keep/{t}": f"retained {t}".encode() for t in "abc"}
        fresh.close()
    finally:
        server.kill()


def test_clean_start_discards_the_stored_session_for_good(tmp_path):
    """5.0 [MQTT-3.1.2-4] Clean Start discards the session: after a kill -9 and a restart
    neither its subscription nor its queued message comes back, though the new session (with
    an expiry of its own) is there."""
    server = Server(tmp_path).start()
    try:
        c, _ = connect(server, "restarter")
        c.subscribe([("gone/#", 1)])
        c.close()
        publish_acked(server, "gone/queued", [b"for the old session"])
        c, ack = connect(server, "restarter", clean=True)
        assert not ack.session_present
        c.close()
        server.kill()
        server.start()
        c, ack = connect(server, "restarter")
        assert ack.session_present  # the new one
        publish_acked(server, "gone/later", [b"no subscription now"])
        c.expect_nothing(0.5)
        c.close()
    finally:
        server.kill()


def test_a_second_broker_on_the_same_data_dir_is_refused(tmp_path):
    """The data directory is locked: a second `makelaar serve` (and `store inspect`) on it
    is refused with one sentence naming the directory; the first broker carries on."""
    server = Server(tmp_path).start()
    try:
        second = makelaar("serve", "--data-dir", str(server.data), "--listen",
                          f"mqtt://127.0.0.1:{free_port()}", "--sys-interval", "0")
        assert_one_clear_error(second, str(server.data), "in use", f"pid {server.proc.pid}")
        assert_one_clear_error(inspect(server.data), str(server.data), "running broker",
                               "stop it")
        c, _ = connect(server, "still-there", clean=True, properties=None)
        c.close()
    finally:
        server.kill()


def damage(path, how):
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(bytes((i * 131 + 7) % 256 for i in range(len(data))))
    else:
        path.write_bytes(data[:len(data) // 3])


def a_store_with_data(tmp_path):
    server = Server(tmp_path).start()
    publish_acked(server, "old/topic", [b"from before"], retain=True)
    server.stop()
    return server, server.data / "makelaar.redb"


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_a_damaged_store_is_refused_naming_the_file_and_the_way_out(tmp_path, how):
    server, store = a_store_with_data(tmp_path)
    damage(store, how)
    before = store.read_bytes()
    refused = makelaar("serve", *server.command()[2:])
    assert_one_clear_error(refused, str(store), "--on-corrupt-store move-aside")
    assert_one_clear_error(inspect(server.data), str(store), "--on-corrupt-store move-aside")
    assert store.read_bytes() == before, "the damaged file was changed"


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_move_aside_keeps_the_damaged_file_and_starts_empty(tmp_path, how):
    server, store = a_store_with_data(tmp_path)
    damage(store, how)
    before = store.read_bytes()
    server.start("--on-corrupt-store", "move-aside")
    try:
        aside = list(server.data.glob("makelaar.redb.corrupt-*"))
        assert len(aside) == 1 and aside[0].read_bytes() == before, list(server.data.iterdir())
        assert "moved it aside" in server.log.read_text()
        c, ack = connect(server, "new-client")
        assert not ack.session_present
        c.subscribe([("old/#", 1)])
        c.expect_nothing(0.3)  # the retained message went with the damaged file
        c.publish("old/topic", b"after", qos=1, packet_id=1)
        assert c.recv_type(R.PUBACK, skip=(R.PUBLISH,)).packet_id == 1
        c.close()
    finally:
        server.stop()
    assert inspect(server.data).returncode == 0


def test_store_inspect_shows_sessions_queues_and_retained(tmp_path):
    """After a known workload and a clean stop: two offline sessions with their queue depths,
    a publisher with one QoS 2 exchange waiting for PUBREL, three retained messages."""
    server = Server(tmp_path).start()
    try:
        a, _ = connect(server, "inspect-a")
        a.subscribe([("ins/#", 1), ("other/+", 2)])
        a.send(R.disconnect(version=5))
        b, _ = connect(server, "inspect-b", version=4)
        b.subscribe([("ins/x", 2)])
        b.send(R.disconnect())
        for t in ("x", "y", "z"):
            publish_acked(server, f"ins/{t}", [b"r-" + t.encode()], retain=True)
        publish_acked(server, "ins/x", [b"12345"] * 4)
        # A persistent publisher's QoS 2 PUBLISH, PUBREC received, PUBREL never sent.
        p, _ = connect(server, "inspect-pub")
        p.publish("nobody/here", b"q2", qos=2, packet_id=9)
        assert p.recv_type(R.PUBREC).packet_id == 9
        p.close()
        server.wait_disconnected("inspect-pub")
    finally:
        server.stop()
    text = inspect(server.data)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "sessions  3" in out, out
    assert "queued    12 messages, 112 bytes" in out, out
    assert "retained  3 messages, 24 bytes" in out, out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.startswith("inspect-")}
    # v, expiry, state, subscriptions, queued, bytes, inbound QoS 2. inspect-a: the three
    # retained publishes (ins/x, y, z: 8 bytes each) and four of 10 bytes to ins/x.
    assert rows == {
        "inspect-a": ["5", "600s", "offline", "2", "7", "64", "0"],
        "inspect-b": ["4", "never", "offline", "1", "5", "48", "0"],
        "inspect-pub": ["5", "600s", "offline", "0", "0", "0", "1"],
    }, out

    js = inspect(server.data, "--json")
    assert js.returncode == 0, js.stderr
    store = json.loads(js.stdout)
    sessions = {s["client_id"]: s for s in store["sessions"]}
    assert set(sessions) == {"inspect-a", "inspect-b", "inspect-pub"}
    a = sessions["inspect-a"]
    assert (a["protocol_version"], a["expiry_interval"], a["connected_at_shutdown"]) == (5, 600,
                                                                                        False)
    assert sorted(a["subscriptions"]) == ["ins/#", "other/+"]
    assert (a["queued"], a["queued_bytes"]) == (7, 64)
    b = sessions["inspect-b"]
    assert (b["expiry_interval"], b["queued"], b["subscriptions"]) == (None, 5, ["ins/x"])
    assert not b["connected_at_shutdown"]
    assert sessions["inspect-pub"]["inbound_qos2"] == 1
    assert (store["retained"], store["retained_bytes"]) == (3, 3 * (5 + 3))
    assert store["path"] == str(server.data / "makelaar.redb")


def test_store_inspect_without_a_store(tmp_path):
    assert_one_clear_error(inspect(tmp_path / "nothing"), "no store in", str(tmp_path / "nothing"))
    assert_one_clear_error(inspect(tmp_path), "makelaar.redb does not exist")
    assert not (tmp_path / "makelaar.redb").exists(), "inspect created a store"


@pytest.mark.parametrize("restart", ["stop", "kill"])
def test_max_queued_messages_holds_across_a_restart(tmp_path, restart):
    """max_queued_messages = 5 for an offline persistent session: of 8 messages 5 are queued,
    the rest dropped and logged once; after a restart (the queue now in the store only) new
    messages are still dropped, and the client gets exactly the first 5, in order."""
    server = Server(tmp_path, limits={"max_queued_messages": 5}).start()
    try:
        c, _ = connect(server, "bounded", version=4)
        c.subscribe([("lim/#", 1)])
        c.send(R.disconnect())
        c.close()
        publish_acked(server, "lim/t", [f"m{i}".encode() for i in range(1, 9)])
        getattr(server, restart)()
        server.start()
        publish_acked(server, "lim/t", [b"m9", b"m10"])
        server.stop()
        js = inspect(server.data, "--json")
        assert [s["queued"] for s in json.loads(js.stdout)["sessions"]] == [5], js.stdout
        server.start()
        c, ack = connect(server, "bounded", version=4)
        assert ack.session_present
        got = receive(c, 5)
        assert [p for _, p in got] == [f"m{i}".encode() for i in range(1, 6)]
        c.expect_nothing(0.5)
        c.close()
    finally:
        server.stop()
    log = server.log.read_text()
    # Dropped and logged once per broker run while the session stays full, not per message.
    assert log.count("session queue full") == 2, log
