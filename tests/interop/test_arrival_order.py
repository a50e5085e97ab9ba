"""Order between two connections (issue 12): client B sends SUBSCRIBE and does not wait for its
SUBACK, client A publishes to that topic right after. B's SUBSCRIBE reached the broker first, so
a broker that handles packets in the order they arrived routes A's PUBLISH to B — as Mosquitto's
single event loop does, and as Eclipse Paho's MQTT 5.0 interop test `test_request_response`
expects.

MQTT itself orders only the messages of one client [MQTT-4.6.0-5]; this is the order clients
see from a single-threaded broker. Makelaar keeps it by stamping what each connection reads
with the order in which the reactor saw the sockets turn readable (see
crates/broker/src/arrival.rs). Without that, the task woken last by one reactor turn runs first
and the PUBLISH overtakes the SUBSCRIBE in a good share of the cycles.

Raw sockets keep the two packets back to back (a few microseconds apart, one thread, two
sockets). The PUBACK's reason code tells, per cycle, what the broker did: 0x10 (No matching
subscribers, MQTT 5.0 section 3.4.2.1) means it routed the PUBLISH before applying the
SUBSCRIBE.
"""

import mqtt_raw as R
from clients import unique

CYCLES = 400


def test_a_publish_right_after_another_clients_subscribe_reaches_it(raw, topic):
    a = raw(version=5, timeout=10)
    b = raw(version=5, timeout=10)
    assert a.connect(unique("a")).reason == 0
    assert b.connect(unique("b")).reason == 0
    missed = []
    for i in range(CYCLES):
        t = f"{topic}/{i}"
        pid = i % 60000 + 1
        # B subscribes and does not wait; A publishes at once, on its own socket.
        b.send(R.subscribe(pid, [(t, R.sub_options(qos=1))], version=5))
        a.send(R.publish(t, b"request", qos=1, packet_id=pid, version=5))
        puback = a.recv_type(R.PUBACK)
        assert puback.packet_id == pid
        assert b.recv_type(R.SUBACK).reasons == [1]
        if puback.reason == 0x10:
            missed.append(i)
            continue
        assert puback.reason == 0, puback
        got = b.recv_type(R.PUBLISH)
        assert (got.topic, got.payload) == (t, b"request")
        b.send(R.ack(R.PUBACK, got.packet_id, version=5))
    assert not missed, (
        f"{len(missed)} of {CYCLES} PUBLISHes were routed before the SUBSCRIBE that arrived "
        f"before them (cycles {missed[:20]}...)")
