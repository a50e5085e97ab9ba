"""An ACL file with user sections, deny rules and patterns (%c, %u), applied by both brokers
with the same password file (Debian's mosquitto_passwd): the same clients may publish, receive
and leave wills on the same topics. Run against both brokers.

What is compared, with Mosquitto 2.0's semantics (see crates/auth/src/acl/mod.rs):
- PUBLISH: 5.0 PUBACK 0x87 when refused; 3.1.1 acknowledged as usual, and dropped;
- delivery: a subscription to '#' is granted, and brings exactly the topics the client may read,
  live, retained, and queued for an offline session;
- wills: published only to topics their client may write."""

import pytest

from auth_files import USERS, fresh_source, mosquitto_passwd, start_broker
from clients import MqttClient

ACL = """\
# anonymous clients
topic read public/#
topic readwrite anon/#

user alice
topic readwrite alice/#
topic read public/#
topic write public/alice
topic deny alice/secret

user bob
topic readwrite bob/#
topic write public/#
topic deny public/alice

user admin
topic readwrite #

pattern readwrite devices/%c/#
pattern read users/%u/inbox
pattern write users/%u/outbox
pattern deny devices/%c/locked
"""

TOPICS = [
    "public/x", "public/alice", "anon/x", "alice/x", "alice/secret", "bob/x",
    "devices/dev-alice/t", "devices/dev-bob/t", "devices/dev-anon/t",
    "devices/dev-alice/locked", "users/alice/inbox", "users/bob/inbox", "users/alice/outbox",
    "other/x",
]

# identity: (username, client id)
IDENTITIES = {
    "anon": (None, "dev-anon"),
    "alice": ("alice", "dev-alice"),
    "bob": ("bob", "dev-bob"),
    "admin": ("admin", "admin-observer"),
}

MAY_WRITE = {
    "anon": {"anon/x", "devices/dev-anon/t"},
    "alice": {"public/alice", "alice/x", "devices/dev-alice/t", "users/alice/outbox"},
    "bob": {"public/x", "bob/x", "devices/dev-bob/t"},
    "admin": set(TOPICS),
}

MAY_READ = {
    "anon": {"public/x", "public/alice", "anon/x", "devices/dev-anon/t"},
    "alice": {"public/x", "public/alice", "alice/x", "devices/dev-alice/t",
              "users/alice/inbox"},
    "bob": {"bob/x", "devices/dev-bob/t", "users/bob/inbox"},
    "admin": set(TOPICS),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("acl")
    passwd = mosquitto_passwd(d / "passwd")
    acl = d / "acl"
    acl.write_text(ACL)
    return passwd, acl


@pytest.fixture
def acl_broker(tmp_path_factory, certs, files):
    """A fresh broker per test: the topics are fixed, and retained messages must not leak
    from one test into another."""
    from conftest import _stop
    passwd, acl = files
    b = start_broker(tmp_path_factory, certs, "acl", password_file=str(passwd),
                     acl_file=str(acl), allow_anonymous=True)
    yield b
    _stop(b)


def login(broker, who, version=5, clean=True, will=None, connect=True):
    username, client_id = IDENTITIES[who]
    password = USERS[username][0] if username else None
    c = MqttClient(broker, client_id=client_id, version=version, clean=clean,
                   username=username, password=password, bind_address=fresh_source())
    if will:
        c.will_set(*will)
    if connect:
        props = None
        if version == 5 and not clean:
            from paho.mqtt.packettypes import PacketTypes
            from clients import props as make_props
            props = make_props(PacketTypes.CONNECT, SessionExpiryInterval=600)
        c.connect(properties=props)
    return c


def received_topics(c, quiet=0.7):
    return {m.topic for m in c.drain(quiet=quiet)}


@pytest.mark.parametrize("who", ["anon", "alice", "bob", "admin"])
def test_publish_is_checked_for_write_access(acl_broker, who):
    """5.0: each PUBLISH at QoS 1 is answered 0x87 exactly where the ACL refuses the write,
    and only the allowed ones reach a subscriber who may read everything."""
    observer = login(acl_broker, "admin") if who != "admin" else None
    if observer:
        observer.subscribe("#", qos=1)
    c = login(acl_broker, who)
    try:
        allowed = set()
        for t in TOPICS:
            reason = c.publish(t, b"w", qos=1)
            if reason < 0x80:
                allowed.add(t)
            else:
                assert reason == 0x87, f"{who} -> {t}: reason {reason:#x}"
        assert allowed == MAY_WRITE[who]
        if observer:
            assert received_topics(observer) == MAY_WRITE[who]
    finally:
        c.close()
        if observer:
            observer.close()


def test_refused_publish_in_v311_is_acknowledged_and_dropped(acl_broker):
    """[MQTT-3.3.5-2] a 3.1.1 client cannot be told: PUBACK as usual, the message dropped."""
    observer = login(acl_broker, "admin")
    observer.subscribe("#", qos=1)
    c = login(acl_broker, "alice", version=4)
    try:
        assert c.publish("bob/x", b"no", qos=1) == 0
        assert c.publish("alice/x", b"yes", qos=1) == 0
        assert received_topics(observer) == {"alice/x"}
    finally:
        c.close()
        observer.close()


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_delivery_brings_only_what_may_be_read(acl_broker, version):
    """Everyone subscribes to '#' (granted: Mosquitto 2.0 does not check SUBSCRIBE) and gets
    exactly the topics it may read."""
    subs = {}
    try:
        for who in ("anon", "alice", "bob"):
            subs[who] = login(acl_broker, who, version=version)
            codes = subs[who].subscribe("#", qos=1)
            assert codes[0] in (0, 1), f"{who}: SUBACK {codes}"
        admin = login(acl_broker, "admin")
        subs["admin"] = admin
        for t in TOPICS:
            admin.publish(t, b"r", qos=1)
        for who in ("anon", "alice", "bob"):
            assert received_topics(subs[who]) == MAY_READ[who], who
    finally:
        for c in subs.values():
            c.close()


def test_retained_messages_are_filtered_too(acl_broker):
    """Retained messages are sent at subscribe only where they may be read."""
    admin = login(acl_broker, "admin")
    try:
        for t in TOPICS:
            admin.publish(t, b"kept", qos=1, retain=True)
        for who in ("anon", "alice", "bob"):
            c = login(acl_broker, who)
            try:
                c.subscribe("#", qos=1)
                assert received_topics(c) == MAY_READ[who], who
            finally:
                c.close()
    finally:
        admin.close()


def test_messages_queued_offline_are_filtered(acl_broker):
    """A persistent session gets, on its return, only what it may read."""
    alice = login(acl_broker, "alice", clean=False)
    alice.subscribe("#", qos=1)
    alice.disconnect()
    admin = login(acl_broker, "admin")
    try:
        for t in ("alice/x", "bob/x", "alice/secret", "public/x"):
            admin.publish(t, b"q", qos=1)
        back = login(acl_broker, "alice", clean=False)
        try:
            assert back.connack.session_present
            assert received_topics(back) == {"alice/x", "public/x"}
        finally:
            back.close()
    finally:
        admin.close()


def test_wills_are_checked_for_write_access(acl_broker):
    """A will goes out only to a topic its client may write."""
    observer = login(acl_broker, "admin")
    observer.subscribe("#", qos=1)
    alice = login(acl_broker, "alice", will=("alice/x", b"gone", 1, False))
    bob = login(acl_broker, "bob", will=("alice/x", b"gone", 1, False))
    try:
        alice.kill()
        bob.kill()
        assert received_topics(observer, quiet=1.0) == {"alice/x"}
    finally:
        for c in (alice, bob, observer):
            c.close()


def test_a_subscription_is_granted_but_brings_nothing_unreadable(acl_broker):
    """Mosquitto 2.0 grants every SUBSCRIBE; bob's messages do not reach alice's 'bob/#'."""
    alice = login(acl_broker, "alice")
    bob = login(acl_broker, "bob")
    try:
        assert alice.subscribe("bob/#", qos=1) == [1]
        bob.publish("bob/x", b"private", qos=1)
        alice.expect_none()
    finally:
        alice.close()
        bob.close()
