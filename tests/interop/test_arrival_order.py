"""Order between two connections (issue 12): client B sends SUBSCRIBE and does not wait for its
SUBACK, client A publishes to that topic right after. B's SUBSCRIBE reached the broker first, so
a broker that handles packets in the order they arrived routes A's PUBLISH to B, as Eclipse
Paho's MQTT 5.0 interop test `test_request_response` expects.

MQTT itself orders only the messages of one client [MQTT-4.6.0-5]; this is the order clients
mostly see from a single-threaded broker. Makelaar does not keep it yet (issue 12): the task
tokio wakes last in one reactor turn runs first, and the PUBLISH overtakes the SUBSCRIBE. So
the test runs only on demand for now (MAKELAAR_KNOWN_BUGS=1). docs/benchmarks.md ("Order between two connections") has
what was tried and measured: arrival stamps taken from the reactor's wake order, a short wait
and a sort in the router (commits 1ceb6c4 and 2de56be, reverted in 4ed14c5) kept the order as below, and were not kept because
they slowed the QoS 1 fan-in.

Two cases: B idle before its SUBSCRIBE (Paho's pattern), and B acknowledging the previous
cycle's delivery (QoS 1) right before it. Makelaar as it is: 2 to 4 % of the cycles went the
other way in the first case, 28 to 95 % in the second (release build, loaded machine). Mosquitto 2.0.11 (as
measured here, not a promise it makes): in the first case none of 3,000 cycles with its
defaults, but 3 to 8 % with `set_tcp_nodelay true`, which this suite's Mosquitto
configuration sets; in the second about a third, as it reads one packet per socket per turn
of its event loop (B's PUBACK and SUBSCRIBE take two turns, and A's PUBLISH, read in the
first, overtakes the SUBSCRIBE).

With the arrival stamps (a wait of at most 50 us for the earlier connection, and only when the
router was idle), the release build (which scripts/test.sh runs this suite against) let at most
1 in 400 go in either case, with a load average of 6 to 11 on 2 cores; hence 1 % of the cycles
may. An unoptimized build under such load missed 1 to 3.5 % in the second case.

Raw sockets keep the two packets back to back (a few microseconds apart, one thread, two
sockets). The PUBACK's reason code tells, per cycle, what the broker did: 0x10 (No matching
subscribers, MQTT 5.0 section 3.4.2.1) means it routed the PUBLISH before applying the
SUBSCRIBE.
"""

import os

import pytest

import mqtt_raw as R
from clients import unique

CYCLES = 1000
# Cycles that may go the other way (see above).
TOLERATED = CYCLES // 100


# Not yet kept by Makelaar (issue 12), and only in part by Mosquitto: see the module docstring.
# Run on demand (MAKELAAR_KNOWN_BUGS=1) rather than as an expected failure that could never
# fail: when the order is kept, remove this mark and the test guards it.
pytestmark = pytest.mark.skipif(
    os.environ.get("MAKELAAR_KNOWN_BUGS") != "1",
    reason="issue 12: the order between two connections is not kept yet; "
           "MAKELAAR_KNOWN_BUGS=1 runs this reproduction")


@pytest.mark.parametrize("qos", [
    pytest.param(0, id="subscriber_idle"),
    pytest.param(1, id="subscriber_just_acked"),
])
def test_a_publish_right_after_another_clients_subscribe_reaches_it(raw, topic, qos):
    a = raw(version=5, timeout=10)
    b = raw(version=5, timeout=10)
    assert a.connect(unique("a")).reason == 0
    assert b.connect(unique("b")).reason == 0
    missed = []
    for i in range(CYCLES):
        t = f"{topic}/{i}"
        pid = i % 60000 + 1
        # B subscribes and does not wait; A publishes at once, on its own socket.
        b.send(R.subscribe(pid, [(t, R.sub_options(qos=qos))], version=5))
        a.send(R.publish(t, b"request", qos=1, packet_id=pid, version=5))
        puback = a.recv_type(R.PUBACK)
        assert puback.packet_id == pid
        assert b.recv_type(R.SUBACK).reasons == [qos]
        if puback.reason == 0x10:
            missed.append(i)
            continue
        assert puback.reason == 0, puback
        got = b.recv_type(R.PUBLISH)
        assert (got.topic, got.payload, got.qos) == (t, b"request", qos)
        if qos:
            b.send(R.ack(R.PUBACK, got.packet_id, version=5))
    assert len(missed) <= TOLERATED, (
        f"{len(missed)} of {CYCLES} PUBLISHes were routed before the SUBSCRIBE that arrived "
        f"before them (cycles {missed[:20]}...)")
