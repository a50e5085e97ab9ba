#!/usr/bin/env python3
"""A guided tour of MQTT against a running broker, with paho-mqtt 2.x.

It walks through what a newcomer to MQTT reads about: connecting, topics and the `+` and `#`
wildcards, QoS 0, 1 and 2 with their acknowledgements, retained messages, the last will, and
clean versus persistent sessions, over plain TCP or TLS. Every step prints what happens in plain
words and every wait is bounded, so the script doubles as a smoke test: it exits 0 when every
step behaved as MQTT says, 1 when a step did not, and 2 when the broker cannot be reached.

All topics live under a prefix that is unique to the run, and the retained messages and
sessions the tour creates are removed before it exits.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import secrets
import socket
import ssl
import sys
import threading
import time

try:
    import paho.mqtt
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
except ImportError:
    sys.exit("This example needs paho-mqtt 2.x: python3 -m pip install 'paho-mqtt>=2'")

if int(paho.mqtt.__version__.split(".")[0]) < 2:
    sys.exit(
        f"This example needs paho-mqtt 2.x, found {paho.mqtt.__version__}: "
        "python3 -m pip install --upgrade 'paho-mqtt>=2'"
    )

HOW_TO_RUN = """\
how to run it against Makelaar (from the repository's root):

  plain TCP on 1883:
    makelaar serve                     # or: cargo run --release -p makelaar -- serve
    python3 examples/python/mqtt_example.py

  TLS on 8883 (and plain TCP on 1883 beside it):
    ./scripts/gen-certs.sh certs
    makelaar serve --listen mqtt://127.0.0.1:1883 --listen mqtts://127.0.0.1:8883 \\
        --cert certs/server.crt --key certs/server.key
    python3 examples/python/mqtt_example.py --tls --cafile certs/ca.crt

Exit status: 0 when every step passed, 1 when a step failed, 2 when the broker
could not be reached. Any MQTT 3.1.1 / 5.0 broker will do, Mosquitto included.
"""

STEP_TIMEOUT = 5.0  # the longest any single wait may take, in seconds
QUIET = 1.0  # how long we listen to be sure that something does NOT arrive
SESSION_EXPIRY = 300  # seconds a persistent MQTT 5.0 session outlives its connection


class TourFailed(Exception):
    """A step did not behave as MQTT says it should."""


class BrokerUnreachable(TourFailed):
    """No connection to the broker at all."""


_print_lock = threading.Lock()


def say(text: str = "") -> None:
    with _print_lock:
        print(text, flush=True)


def note(text: str) -> None:
    say(f"    {text}")


class Endpoint:
    """Where a client connects: host, port and, for TLS, the CA that signed the broker."""

    def __init__(self, host: str, port: int, cafile: str | None = None):
        self.host, self.port, self.cafile = host, port, cafile

    @property
    def tls(self) -> bool:
        return self.cafile is not None

    def __str__(self) -> str:
        kind = f"TLS, trusting {self.cafile}" if self.tls else "plain TCP"
        return f"{self.host}:{self.port} ({kind})"


# paho's debug log, reduced to the packets that carry and acknowledge a message.
_TRACE = re.compile(r"^(Sending|Received) (PUBLISH|PUBACK|PUBREC|PUBREL|PUBCOMP)\b(.*)")
_PUBLISH_FLAGS = re.compile(r"\(d(\d), q(\d), r(\d), m(\d+)\)")
_MID = re.compile(r"Mid: (\d+)")


class Peer:
    """One MQTT client with a background network thread and bounded, race-free waits."""

    def __init__(
        self,
        tour: "Tour",
        name: str,
        endpoint: Endpoint | None = None,
        persistent: bool = False,
        will: tuple[str, str] | None = None,
        trace: bool = False,
    ):
        self.tour = tour
        self.name = name
        self.endpoint = endpoint or tour.endpoint
        self.persistent = persistent
        self.client_id = f"{tour.run_id}-{name}"
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._cond = threading.Condition()
        self._connack: tuple[bool, mqtt.ReasonCode] | None = None
        self._subacks: dict[int, list] = {}
        self._acks: dict[int, object] = {}
        self._gone = False
        self.running = False

        options = {
            "callback_api_version": mqtt.CallbackAPIVersion.VERSION2,
            "client_id": self.client_id,
            "protocol": mqtt.MQTTv5 if tour.v5 else mqtt.MQTTv311,
            "reconnect_on_failure": False,
        }
        if not tour.v5:
            options["clean_session"] = not persistent
        self.client = mqtt.Client(**options)
        if self.endpoint.tls:
            # Verifies the broker's certificate against the CA, host name included.
            self.client.tls_set(ca_certs=self.endpoint.cafile)
        if will:
            self.client.will_set(will[0], will[1], qos=1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        if trace:
            self.client.on_log = self._on_log

    # --- callbacks (run on paho's network thread) ---

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self._connack = (flags.session_present, reason_code)
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self._subacks[mid] = list(reason_codes)
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._cond:
            self._acks[mid] = reason_code
            self._cond.notify_all()

    def _on_message(self, client, userdata, message):
        self.messages.put(message)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self._gone = True
            self._cond.notify_all()

    def _on_log(self, client, userdata, level, text):
        m = _TRACE.match(text)
        if not m:
            return
        direction, packet, rest = m.groups()
        arrow = "->" if direction == "Sending" else "<-"
        flags = _PUBLISH_FLAGS.search(rest)
        mid = _MID.search(rest)
        if packet == "PUBLISH" and flags:
            qos, pid = flags.group(2), flags.group(4)
            detail = f"QoS {qos}" + (f", packet id {pid}" if qos != "0" else ", no packet id")
        elif mid:
            detail = f"packet id {mid.group(1)}"
        else:
            detail = ""
        say(f"      [{self.name:>9} {arrow} broker] {packet:<7} {detail}")

    # --- actions ---

    def _wait(self, ready, what: str, timeout: float = STEP_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TourFailed(f"{self.name}: {what} did not happen within {timeout:.0f} s")
                self._cond.wait(left)

    def connect(self, clean: bool | None = None) -> bool:
        """Connects and waits for CONNACK; returns the session-present flag."""
        ep = self.endpoint
        kwargs = {"keepalive": 30}
        if self.tour.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY if self.persistent else 0
            kwargs["properties"] = props
            kwargs["clean_start"] = (not self.persistent) if clean is None else clean
        try:
            self.client.connect(ep.host, ep.port, **kwargs)
        except ssl.SSLError as e:
            raise BrokerUnreachable(
                f"the TLS handshake with {ep.host}:{ep.port} failed ({e}). Is that the TLS "
                f"listener, and did the CA in {ep.cafile} sign the broker's certificate for "
                f"the name '{ep.host}'?"
            ) from None
        except OSError as e:
            hint = " Is that the broker's TLS listener?" if ep.tls else ""
            raise BrokerUnreachable(
                f"cannot reach an MQTT broker at {ep.host}:{ep.port} ({e}).{hint} Start one "
                f"first, e.g. `makelaar serve`; see --help."
            ) from None
        self.client.loop_start()
        self.running = True
        self._wait(lambda: self._connack is not None or self._gone, "CONNACK")
        if self._connack is None:
            raise TourFailed(f"{self.name}: the broker closed the connection instead of CONNACK")
        session_present, reason = self._connack
        if reason.is_failure:
            raise TourFailed(f"{self.name}: the broker refused the connection: {reason}")
        return session_present

    def subscribe(self, topic_filter: str, qos: int) -> int:
        """Subscribes and waits for SUBACK; returns the QoS the broker granted."""
        result, mid = self.client.subscribe(topic_filter, qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise TourFailed(f"{self.name}: could not send SUBSCRIBE: {mqtt.error_string(result)}")
        self._wait(lambda: mid in self._subacks, f"SUBACK for '{topic_filter}'")
        code = self._subacks[mid][0]
        if code.is_failure:
            raise TourFailed(f"{self.name}: the broker refused '{topic_filter}': {code}")
        return code.value

    def publish(self, topic: str, payload: str, qos: int = 0, retain: bool = False):
        """Publishes and waits until paho reports it done: sent (QoS 0), PUBACK (QoS 1) or
        PUBCOMP (QoS 2). Returns the acknowledgement's reason code."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        try:
            info.wait_for_publish(timeout=STEP_TIMEOUT)
        except (RuntimeError, ValueError) as e:
            raise TourFailed(f"{self.name}: publishing to '{topic}' failed: {e}") from None
        if not info.is_published():
            ack = {0: "sending", 1: "PUBACK", 2: "PUBCOMP"}[qos]
            raise TourFailed(
                f"{self.name}: no {ack} for the QoS {qos} message on '{topic}' "
                f"within {STEP_TIMEOUT:.0f} s"
            )
        with self._cond:
            return self._acks.get(info.mid)

    def expect(self, count: int, what: str, timeout: float = STEP_TIMEOUT) -> list:
        """Waits for `count` messages in total within `timeout` seconds."""
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(left, 0.001)))
            except queue.Empty:
                raise TourFailed(
                    f"{self.name} expected {what} but received {len(got)} of {count} "
                    f"message(s) within {timeout:.0f} s"
                ) from None
        return got

    def expect_nothing(self, quiet: float = QUIET):
        """Returns the first message that arrives within `quiet` seconds, or None."""
        try:
            return self.messages.get(timeout=quiet)
        except queue.Empty:
            return None

    def disconnect(self) -> None:
        """A graceful goodbye: DISCONNECT, then the socket closes."""
        if not self.running:
            return
        self.client.disconnect()
        try:
            self._wait(lambda: self._gone, "the disconnect")
        finally:
            self.client.loop_stop()
            self.running = False

    def kill(self) -> None:
        """Dies the way a crashed device does: the socket closes without DISCONNECT."""
        self.client.loop_stop()  # stop paho's thread first; it sends nothing on the way out
        self.running = False
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


_run_prefix = ""  # set by Tour; stripped from topics when they are printed


def short(topic: str) -> str:
    return topic[len(_run_prefix) + 1:] if topic.startswith(_run_prefix + "/") else topic


def describe(message: mqtt.MQTTMessage) -> str:
    payload = message.payload.decode("utf-8", "replace")
    return (
        f"'{payload}' on {short(message.topic)} "
        f"(QoS {message.qos}, retain flag {int(message.retain)})"
    )


class Tour:
    def __init__(self, args: argparse.Namespace):
        self.v5 = args.mqtt == "5"
        self.run_id = "tour-" + secrets.token_hex(4)
        self.prefix = f"makelaar-example/{self.run_id}"
        global _run_prefix
        _run_prefix = self.prefix
        self.plain = Endpoint(args.host, args.port)
        self.endpoint = Endpoint(args.host, args.tls_port, args.cafile) if args.tls else self.plain
        self.peers: list[Peer] = []
        self.retained: set[str] = set()
        self.persistent_ids: list[str] = []

    def t(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix}"

    def peer(self, name: str, **kwargs) -> Peer:
        p = Peer(self, name, **kwargs)
        self.peers.append(p)
        return p

    def connect(self, name: str, **kwargs) -> Peer:
        p = self.peer(name, **kwargs)
        p.connect()
        return p

    def run(self) -> int:
        steps = [
            ("connect", self.step_connect),
            ("topics and wildcards", self.step_wildcards),
            ("QoS 0, 1 and 2", self.step_qos),
            ("retained messages", self.step_retained),
            ("last will", self.step_will),
            ("clean and persistent sessions", self.step_sessions),
        ]
        if self.endpoint.tls:
            steps.append(("one broker, two listeners", self.step_two_listeners))
        version = "5.0" if self.v5 else "3.1.1"
        say(f"MQTT {version} tour against {self.endpoint}")
        say(f"every topic of this run starts with {self.prefix}/ (left out below)")
        for number, (title, step) in enumerate(steps, 1):
            say()
            say(f"== {number}. {title} ==")
            try:
                step()
            except BrokerUnreachable as e:
                say(f"\nFAILED: {e}")
                return 2
            except TourFailed as e:
                say(f"\nFAILED in step {number} ({title}): {e}")
                return 1
        say()
        say(f"All {len(steps)} steps behaved as MQTT says. Tour complete.")
        return 0

    # --- the steps ---

    def step_connect(self) -> None:
        say("A client opens a connection to the broker and sends CONNECT with its client id;")
        say("the broker answers CONNACK. Nothing else may happen before that.")
        p = self.peer("hello")
        present = p.connect()
        note(f"{p.client_id} connected; CONNACK says session present = {int(present)}")
        note("(a brand-new client id has no earlier session, so that flag is 0)")
        p.disconnect()
        note("it sent DISCONNECT and closed the connection: a polite goodbye")

    def step_wildcards(self) -> None:
        say("Topics are paths separated by '/'. A subscription may use wildcards:")
        say("'+' matches exactly one level, '#' matches any number of levels (even none).")
        base = self.t("sensors")
        plus_filter, hash_filter = f"{base}/+/temperature", f"{base}/#"
        plus = self.connect("plus")
        plus.subscribe(plus_filter, 1)
        hashed = self.connect("hash")
        hashed.subscribe(hash_filter, 1)
        note(f"'plus' subscribed to {short(plus_filter)}")
        note(f"'hash' subscribed to {short(hash_filter)}")
        pub = self.connect("sensor")
        topics = [
            f"{base}/kitchen/temperature",
            f"{base}/kitchen/humidity",
            f"{base}/garden/shed/temperature",
            base,
        ]
        for i, topic in enumerate(topics):
            pub.publish(topic, f"reading {i + 1}", qos=1)
        got_hash = {m.topic for m in hashed.expect(len(topics), "every reading")}
        got_plus = {m.topic for m in plus.expect(1, "the kitchen temperature")}
        extra = plus.expect_nothing(QUIET / 2)
        if extra is not None:
            got_plus.add(extra.topic)
        for topic in topics:
            note(
                f"{short(topic):<32} '+': {'yes' if topic in got_plus else 'no ':<3}"
                f"   '#': {'yes' if topic in got_hash else 'no'}"
            )
        if got_plus != {topics[0]}:
            raise TourFailed(f"'{plus_filter}' should match only {topics[0]}, got {sorted(got_plus)}")
        if got_hash != set(topics):
            raise TourFailed(f"'{hash_filter}' should match all four topics, got {sorted(got_hash)}")
        note("'+' stopped at one level; '#' also matched the parent topic itself")
        note("(topics starting with '$', like $SYS/..., are never matched by a leading wildcard)")
        for p in (plus, hashed, pub):
            p.disconnect()

    def step_qos(self) -> None:
        say("QoS is the delivery promise for one hop (client -> broker, or broker -> client):")
        say("  0 at most once: no acknowledgement;  1 at least once: PUBACK;")
        say("  2 exactly once: PUBREC, PUBREL, PUBCOMP.")
        say("A subscriber receives at the lower of the publish QoS and its subscription QoS.")
        topic_filter = self.t("qos/#")
        sub = self.connect("sub-q2", trace=True)
        sub.subscribe(topic_filter, 2)
        low = self.connect("sub-q0")
        low.subscribe(topic_filter, 0)
        note(f"'sub-q2' subscribed to {short(topic_filter)} at QoS 2, 'sub-q0' at QoS 0")
        pub = self.connect("publisher", trace=True)
        for qos in (0, 1, 2):
            say(f"  publishing at QoS {qos}:")
            started = time.monotonic()
            reason = pub.publish(self.t(f"qos/{qos}"), f"hello at QoS {qos}", qos=qos)
            took = (time.monotonic() - started) * 1000
            (msg,) = sub.expect(1, f"the QoS {qos} message")
            (msg0,) = low.expect(1, f"the QoS {qos} message")
            time.sleep(0.2)  # let the subscriber's last acknowledgement show in the trace
            if qos == 0:
                note("QoS 0 is fire and forget: paho calls it done once the bytes are sent")
            else:
                done = "PUBACK" if qos == 1 else "PUBCOMP"
                extra = f" (reason: {reason})" if self.v5 and reason is not None else ""
                note(f"the broker confirmed it with {done} after {took:.1f} ms{extra}")
            note(f"sub-q2 received {describe(msg)}")
            note(f"sub-q0 received {describe(msg0)}")
            if msg.qos != qos or msg0.qos != 0:
                raise TourFailed(
                    f"delivery QoS should be min(publish, subscription): expected {qos} and 0, "
                    f"got {msg.qos} and {msg0.qos}"
                )
        for p in (sub, low, pub):
            p.disconnect()

    def step_retained(self) -> None:
        say("A retained message is kept by the broker, one per topic, and handed to every")
        say("later subscriber straight away: the 'last known value' of that topic.")
        topic = self.t("home/frontdoor")
        pub = self.connect("door")
        pub.publish(topic, "locked", qos=1, retain=True)
        self.retained.add(topic)
        note(f"'door' published 'locked' to {short(topic)} with the retain flag; nobody was listening")
        late = self.connect("late-1")
        late.subscribe(topic, 1)
        (msg,) = late.expect(1, "the retained message")
        note(f"'late-1' subscribed afterwards and at once received {describe(msg)}")
        if not msg.retain or msg.payload != b"locked":
            raise TourFailed(f"expected the retained 'locked' with retain flag 1, got {describe(msg)}")
        pub.publish(topic, "someone rang", qos=1)
        (msg,) = late.expect(1, "the live message")
        note(f"a normal publish arrives live, retain flag 0: {describe(msg)}")
        if msg.retain:
            raise TourFailed("a message delivered live to an existing subscriber must have retain 0")
        pub.publish(topic, "unlocked", qos=1, retain=True)
        late.expect(1, "the new retained value")
        late2 = self.connect("late-2")
        late2.subscribe(topic, 1)
        (msg,) = late2.expect(1, "the newest retained message")
        more = late2.expect_nothing()
        note(f"after a second retained publish, 'late-2' gets only the newest: {describe(msg)}")
        if msg.payload != b"unlocked" or more is not None:
            raise TourFailed("the broker must keep exactly one retained message per topic")
        pub.publish(topic, "", qos=1, retain=True)
        self.retained.discard(topic)
        late.expect(1, "the empty message that clears the retained value")
        late3 = self.connect("late-3")
        late3.subscribe(topic, 1)
        leftover = late3.expect_nothing()
        if leftover is not None:
            raise TourFailed(f"an empty retained publish must clear the topic, got {describe(leftover)}")
        note("an empty retained payload cleared it: 'late-3' received nothing")
        for p in (pub, late, late2, late3):
            p.disconnect()

    def step_will(self) -> None:
        say("When connecting, a client may leave a 'last will': a message the broker publishes")
        say("for it if the connection ends without a DISCONNECT (crash, power or network loss).")
        status = self.t("status/#")
        watcher = self.connect("watcher")
        watcher.subscribe(status, 1)
        note(f"'watcher' subscribed to {short(status)}")
        polite = self.connect("sensor-a", will=(self.t("status/sensor-a"), "offline (unexpected)"))
        polite.disconnect()
        note("'sensor-a' (with a will) said goodbye with DISCONNECT ...")
        msg = watcher.expect_nothing()
        if msg is not None:
            raise TourFailed(f"a will must not be sent after DISCONNECT, got {describe(msg)}")
        note("... so the broker threw its will away: nothing arrived")
        doomed = self.connect("sensor-b", will=(self.t("status/sensor-b"), "offline (unexpected)"))
        doomed.kill()
        note("'sensor-b' (with a will) lost its connection without DISCONNECT ...")
        (msg,) = watcher.expect(1, "sensor-b's last will")
        note(f"... and the broker published its will: {describe(msg)}")
        watcher.disconnect()

    def step_sessions(self) -> None:
        say("A clean session ends with the connection. A persistent session survives it:")
        say("the broker keeps its subscriptions and queues QoS 1/2 messages while it is away.")
        if self.v5:
            say(f"(MQTT 5.0: Clean Start = 0 and Session Expiry Interval = {SESSION_EXPIRY} s)")
        else:
            say("(MQTT 3.1.1: Clean Session = 0)")
        topic = self.t("inbox")
        inbox = self.peer("inbox", persistent=True)
        self.persistent_ids.append(inbox.client_id)
        present = inbox.connect()
        inbox.subscribe(f"{topic}/#", 1)
        inbox.disconnect()
        note(f"'inbox' connected with a persistent session (session present = {int(present)}),")
        note(f"subscribed to {short(topic)}/# at QoS 1 and went offline")
        pub = self.connect("sender")
        for i in (1, 2, 3):
            pub.publish(f"{topic}/mail", f"letter {i} of 3", qos=1)
        pub.publish(f"{topic}/mail", "a QoS 0 postcard", qos=0)
        note("'sender' published three QoS 1 messages and one QoS 0 message meanwhile")
        back = self.peer("inbox", persistent=True)
        present = back.connect()
        note(f"'inbox' came back: CONNACK says session present = {int(present)}")
        if not present:
            raise TourFailed("the broker should have kept the persistent session (session present 0)")
        letters = back.expect(3, "the three queued QoS 1 messages")
        for m in letters:
            note(f"delivered on reconnect: {describe(m)}")
        if [m.payload for m in letters] != [f"letter {i} of 3".encode() for i in (1, 2, 3)]:
            raise TourFailed("queued messages must be delivered, in the order they were published")
        postcard = back.expect_nothing()
        if postcard is None:
            note("the QoS 0 message was not queued (brokers queue QoS 0 only when configured to)")
        else:
            note(f"this broker also queued QoS 0: {describe(postcard)}")
        back.disconnect()

        clean = self.connect("clean")
        clean.subscribe(f"{topic}/#", 1)
        clean.disconnect()
        note("'clean' connected with a clean session, subscribed to the same topics, went offline")
        pub.publish(f"{topic}/mail", "letter nobody keeps", qos=1)
        again = self.peer("clean")
        present = again.connect()
        lost = again.expect_nothing()
        note(f"'clean' came back: session present = {int(present)}, messages waiting: "
             f"{'none' if lost is None else describe(lost)}")
        if present or lost is not None:
            raise TourFailed("a clean session must start empty: no session, no queued messages")
        again.disconnect()
        pub.disconnect()
        self.end_sessions()
        note("finally 'inbox' reconnected with a clean session to discard its stored session")

    def step_two_listeners(self) -> None:
        say("The TLS and the plain listener lead to the same broker: a message published over")
        say(f"TLS reaches a subscriber connected over plain TCP at {self.plain.host}:{self.plain.port}.")
        listener = self.peer("plain-sub", endpoint=self.plain)
        try:
            listener.connect()
        except BrokerUnreachable:
            self.peers.remove(listener)
            note(f"skipped: no plain listener answers at {self.plain.host}:{self.plain.port}")
            return
        listener.subscribe(self.t("bridge"), 1)
        pub = self.connect("tls-pub")
        pub.publish(self.t("bridge"), "sent over TLS", qos=1)
        (msg,) = listener.expect(1, "the message published over TLS")
        note(f"'plain-sub' received {describe(msg)}")
        for p in (listener, pub):
            p.disconnect()

    # --- cleanup ---

    def end_sessions(self) -> None:
        """Reconnects each persistent client id with a clean session, which discards it."""
        while self.persistent_ids:
            client_id = self.persistent_ids.pop()
            p = self.peer(client_id[len(self.run_id) + 1:])
            p.connect(clean=True)
            p.disconnect()

    def cleanup(self) -> None:
        """Best effort: stop every client, clear retained topics, end persistent sessions."""
        for p in self.peers:
            if p.running:
                try:
                    p.disconnect()
                except TourFailed:
                    pass
        try:
            if self.retained:
                p = self.connect("cleanup")
                for topic in sorted(self.retained):
                    p.publish(topic, "", qos=1, retain=True)
                p.disconnect()
            self.end_sessions()
        except TourFailed as e:
            say(f"(cleanup incomplete: {e})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description="A guided tour of MQTT (connect, wildcards, QoS 0/1/2, retained messages, "
        "last will, clean and persistent sessions) against a running broker. "
        "It prints each step and exits non-zero if one misbehaves.",
        epilog=HOW_TO_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="localhost", help="broker host (default: localhost)")
    parser.add_argument("--port", type=int, default=1883, help="plain TCP port (default: 1883)")
    parser.add_argument("--tls", action="store_true", help="take the tour over TLS on --tls-port")
    parser.add_argument("--tls-port", type=int, default=8883, help="TLS port (default: 8883)")
    parser.add_argument(
        "--cafile", help="CA certificate (PEM) that signed the broker's certificate; needed with --tls"
    )
    parser.add_argument(
        "--mqtt", choices=["3.1.1", "5"], default="5", help="protocol version (default: 5)"
    )
    args = parser.parse_args()
    if args.tls and not args.cafile:
        parser.error("--tls needs --cafile, e.g. --cafile certs/ca.crt from ./scripts/gen-certs.sh")
    if args.cafile and not os.path.isfile(args.cafile):
        parser.error(f"--cafile {args.cafile}: no such file (./scripts/gen-certs.sh certs makes one)")

    tour = Tour(args)
    try:
        return tour.run()
    finally:
        tour.cleanup()


if __name__ == "__main__":
    sys.exit(main())
