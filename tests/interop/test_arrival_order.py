"""Order between two connections (issue 12): client B sends SUBSCRIBE and does not wait for its
SUBACK, client A publishes to that topic right after. B's SUBSCRIBE reached the broker first, so
a broker that handles packets in the order they arrived routes A's PUBLISH to B, as Eclipse
Paho's MQTT 5.0 interop test `test_request_response` expects.

MQTT itself orders only the messages of one client [MQTT-4.6.0-5]; this is the order clients
mostly see from a single-threaded broker. tokio runs the task it woke last in one reactor turn
first, so without care the PUBLISH overtakes the SUBSCRIBE: 2 to 6 % of the cycles in the first
case below, 20 to 95 % in the second (release build, loaded machine). Makelaar keeps it in
`broker::arrival`: the reactor's wake stamps each connection, and a task about to forward what
it read yields while a connection woken before it has not forwarded yet (docs/benchmarks.md,
"Order between two connections", has what was tried and measured).

Two cases: B idle before its SUBSCRIBE (Paho's pattern), and B acknowledging the previous
cycle's delivery (QoS 1) right before it, so that its SUBSCRIBE may come while its task is
still at the PUBACK. Mosquitto 2.0.11 (as measured here, not a promise it makes): in the first
case none of 3,000 cycles with its defaults, but 3 to 8 % with `set_tcp_nodelay true`; in the
second about a third, as it reads one packet per socket per turn of its event loop (B's PUBACK
and SUBSCRIBE take two turns, and A's PUBLISH, read in the first, overtakes the SUBSCRIBE).
Makelaar, release build, 2 cores with compilers beside it: at most a few in 1,000 in either
case; the yield is bounded (twice, 50 us), so 1 % of the cycles may go the other way.

Raw sockets keep the two packets back to back (a few microseconds apart, one thread, two
sockets). The PUBACK's reason code tells, per cycle, what the broker did: 0x10 (No matching
subscribers, MQTT 5.0 section 3.4.2.1) means it routed the PUBLISH before applying the
SUBSCRIBE.
"""

import pytest

import mqtt_raw as R
from clients import unique

CYCLES = 1000
# Cycles that may go the other way (see above).
TOLERATED = CYCLES // 100


ATTEMPTS = 3


@pytest.mark.parametrize("qos", [
    pytest.param(0, id="subscriber_idle"),
    pytest.param(1, id="subscriber_just_acked"),
])
def test_a_publish_right_after_another_clients_subscribe_reaches_it(raw, topic, qos):
    # The wait is bounded (see above): when the machine takes a core from the broker for a
    # few milliseconds, the cycles of that moment go the other way. So up to three runs of
    # 1,000 cycles: one within the tolerance shows the order kept; without it every run is
    # over (2 to 6 % in the first case, 20 to 95 % in the second).
    counts = []
    for attempt in range(ATTEMPTS):
        missed = _cycles(raw, f"{topic}/{attempt}", qos)
        counts.append(len(missed))
        if len(missed) <= TOLERATED:
            return
    pytest.fail(
        f"PUBLISHes routed before the SUBSCRIBE that arrived before them, per run of {CYCLES}: "
        f"{counts} (the last run's cycles: {missed[:20]}...)")


def _cycles(raw, topic, qos):
    """Runs CYCLES cycles on two fresh connections; returns the cycles whose PUBLISH was
    routed before the SUBSCRIBE."""
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
    a.close()
    b.close()
    return missed
