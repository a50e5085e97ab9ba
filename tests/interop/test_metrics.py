"""/metrics read with the Prometheus client library's own parser: the format, every family
documented, figures checked against what the test did over real MQTT connections (while
`makelaar bench` runs, gauges, drops, authentication, the store), and the Grafana dashboard
against a live scrape. The HTTP listener itself is tested in test_http_listener.py."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from auth_files import makelaar_passwd, try_connect
from brokers import BROKER_KIND, REPO_ROOT, find_makelaar
from clients import MqttClient, props, unique
from http_client import Scrape, wait_for

pytestmark = pytest.mark.skipif(BROKER_KIND != "makelaar",
                                reason="the HTTP listener and its metrics are Makelaar's")

# No $SYS topics: the retained-message figures then count only what the tests publish.
BROKER_CONFIG = {"http": True, "sys_interval": 0}

DOCS = REPO_ROOT / "docs" / "metrics.md"
DASHBOARD = REPO_ROOT / "docs" / "grafana" / "makelaar-dashboard.json"


def documented_names():
    names = re.findall(r"^\| `(makelaar_[a-z0-9_]+)`", DOCS.read_text(), re.M)
    assert len(names) > 30, "docs/metrics.md lost its tables"
    return set(names)


# ---------------------------------------------------------------------------------------------


def test_metrics_parse_and_every_family_is_documented(broker):
    s = Scrape(broker)
    documented = documented_names()
    live_families = set()
    for f in s.families:
        assert f.documentation, f"{f.name} has no HELP"
        assert f.type in ("counter", "gauge", "histogram"), f"{f.name}: {f.type}"
        assert f.name.startswith("makelaar_"), f.name
        # The parser drops a counter's _total from the family name; the samples keep it.
        name = f.name + "_total" if f.type == "counter" else f.name
        live_families.add(name)
        if f.type == "counter":
            assert all(x.name == name for x in f.samples), f.samples
        if f.type == "histogram":
            buckets = [x for x in f.samples if x.name.endswith("_bucket")]
            counts = [x.value for x in buckets]
            assert counts == sorted(counts), f"{f.name}: buckets not cumulative"
            assert buckets[-1].labels["le"] == "+Inf"
            assert counts[-1] == s(f.name + "_count")
    assert live_families == documented, (
        f"served but not in docs/metrics.md: {sorted(live_families - documented)}; "
        f"documented but not served: {sorted(documented - live_families)}")
    version = [x for f in s.families if f.name == "makelaar_build_info" for x in f.samples]
    assert version and re.fullmatch(r"\d+\.\d+\.\d+.*", version[0].labels["version"])


def test_counters_move_while_bench_runs(broker):
    before = Scrape(broker)
    bench = subprocess.Popen(
        [find_makelaar(), "bench", "fanin", "-p", str(broker.port), "-c", "2", "-q", "1",
         "-d", "4", "-w", "0.5", "--drain", "0.5", "-t", unique("bench") + "/%i"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    during = []
    try:
        time.sleep(1.0)
        while bench.poll() is None and len(during) < 8:
            during.append(Scrape(broker))
            time.sleep(0.5)
        out, _ = bench.communicate(timeout=30)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 0, out.decode(errors="replace")
    assert len(during) >= 3, "bench ended before three scrapes"
    mqtt = f"mqtt://127.0.0.1:{broker.port}"
    series = {
        "in QoS 1": lambda s: s("makelaar_messages_total", direction="in", qos="1"),
        "out QoS 1": lambda s: s("makelaar_messages_total", direction="out", qos="1"),
        "payload in": lambda s: s("makelaar_message_payload_bytes_total", direction="in",
                                  qos="1"),
        "network in": lambda s: s("makelaar_network_bytes_total", direction="in"),
        "network out": lambda s: s("makelaar_network_bytes_total", direction="out"),
        "packets in": lambda s: s("makelaar_packets_total", direction="in"),
    }
    for what, value in series.items():
        seen = [value(before)] + [value(s) for s in during]
        assert seen == sorted(seen), f"{what} went down: {seen}"
        # Moving while the load runs, not just once at the end.
        assert value(during[0]) > value(before), f"{what}: {seen}"
        assert value(during[-1]) > value(during[0]), f"{what}: {seen}"
    # Three clients (two publishers, one subscriber) were connected during the run.
    assert max(s("makelaar_listener_connections", listener=mqtt) for s in during) >= 3
    assert max(s("makelaar_clients_connected") for s in during) >= 3
    after = Scrape(broker)
    assert after("makelaar_listener_connections_accepted_total", listener=mqtt) >= \
        before("makelaar_listener_connections_accepted_total", listener=mqtt) + 3


def test_gauges_match_what_the_test_set_up(make_broker):
    b = make_broker(http=True, sys_interval=0)
    made = []

    def client(**kw):
        c = MqttClient(b, **kw)
        made.append(c)
        c.connect()
        return c

    try:
        a = client(version=5)
        a.subscribe("g/a", qos=1)
        a.subscribe("g/b", qos=0)
        shared = client(version=5)
        shared.subscribe("$share/grp/g/#", qos=1)
        pub = client(version=4)
        away = client(version=4, clean=False, client_id=unique("away"))
        away.subscribe("q/#", qos=1)
        away.disconnect()
        # Publish only once the broker has seen `away` go: a message routed before its
        # DISCONNECT is handled is sent to it and stays in flight rather than queued.
        wait_for(b, lambda s: s("makelaar_sessions", state="offline") == 1)
        for _ in range(4):
            pub.publish("q/x", b"abcd", qos=1)  # 3 + 4 bytes each, queued for `away`
        pub.publish("r/1", b"hello", qos=1, retain=True)  # 3 + 5
        pub.publish("r/2", b"xy", qos=1, retain=True)  # 3 + 2
        mqtt = f"mqtt://127.0.0.1:{b.port}"
        expected = {
            ("makelaar_clients_connected", ()): 3,
            ("makelaar_sessions", (("state", "online"),)): 3,
            ("makelaar_sessions", (("state", "offline"),)): 1,
            ("makelaar_subscriptions", (("kind", "regular"),)): 3,
            ("makelaar_subscriptions", (("kind", "shared"),)): 1,
            ("makelaar_retained_messages", ()): 2,
            ("makelaar_retained_bytes", ()): 13,
            ("makelaar_queued_messages", ()): 4,
            ("makelaar_queued_bytes", ()): 28,
            ("makelaar_queued_messages_longest", ()): 4,
            ("makelaar_inflight_messages", ()): 0,
            ("makelaar_listener_connections", (("listener", mqtt),)): 3,
        }

        def matches(s):
            return all(s(name, **dict(labels)) == v for (name, labels), v in expected.items())

        wait_for(b, matches)
        # The queued messages go out when `away` returns: the gauges follow.
        back = MqttClient(b, client_id=away.client_id, version=4, clean=False)
        made.append(back)
        back.connect()
        assert len(back.get_n(4)) == 4
        wait_for(b, lambda s: s("makelaar_queued_messages") == 0
                 and s("makelaar_sessions", state="offline") == 0
                 and s("makelaar_messages_total", direction="out", qos="1") >= 4)
    finally:
        for c in made:
            c.close()


def test_drops_are_counted_by_reason(make_broker):
    b = make_broker(http=True, sys_interval=0, limits={"max_queued_messages": 3})
    made = []

    def client(**kw):
        c = MqttClient(b, **kw)
        made.append(c)
        return c

    def dropped(s, reason):
        return s("makelaar_messages_dropped_total", reason=reason)

    try:
        slow = client(version=4, clean=False, client_id=unique("slow"))
        slow.connect()
        slow.subscribe("d/q", qos=1)
        slow.disconnect()
        late = client(version=4, clean=False, client_id=unique("late"))
        late.connect()
        late.subscribe("d/exp", qos=1)
        late.disconnect()
        small = client(version=5)
        small.connect(properties=props(PacketTypes.CONNECT, MaximumPacketSize=64))
        small.subscribe("d/big", qos=0)
        pub = client(version=5)
        pub.connect()
        before = Scrape(b)
        for _ in range(10):
            pub.publish("d/q", b"m", qos=1)  # 3 kept, 7 over max_queued_messages
        pub.publish("d/q", b"zero", qos=0)  # QoS 0 for an offline session
        pub.publish("d/q", b"zero", qos=0)
        pub.publish("d/nobody", b"x", qos=1)  # matches nothing
        pub.publish("d/big", b"x" * 200, qos=0)  # larger than the subscriber's maximum
        pub.publish("d/exp", b"x", qos=1,
                    properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1))
        time.sleep(2.2)
        late.connect()  # its one queued message has expired by now
        late.expect_none(timeout=0.5)
        want = {"queue_full": 7, "offline_qos0": 2, "no_subscribers": 1, "too_large": 1,
                "expired": 1, "store_full": 0, "slow_client": 0}
        after = wait_for(b, lambda s: all(dropped(s, r) - dropped(before, r) == n
                                          for r, n in want.items()))
        assert after("makelaar_queued_messages") == 3
    finally:
        for c in made:
            c.close()


def test_auth_failures_are_counted_by_reason(make_broker, tmp_path):
    pw = makelaar_passwd(tmp_path / "passwords", {"alice": "s3cret"})
    b = make_broker(http=True, sys_interval=0, password_file=str(pw), allow_anonymous=False)
    before = Scrape(b)
    assert try_connect(b, "alice", "wrong") == 4
    assert try_connect(b, "alice", "wrong") == 4
    assert try_connect(b, "mallory", "guess") == 4
    assert try_connect(b) == 5
    assert try_connect(b, "alice", "s3cret") == 0
    want = {"wrong_password": 2, "unknown_user": 1, "anonymous": 1, "throttled": 0}

    def fail(s, r):
        return s("makelaar_auth_failures_total", reason=r)

    wait_for(b, lambda s: all(fail(s, r) - fail(before, r) == n for r, n in want.items()))


def test_store_commits_are_timed_in_durable_mode(broker, client, topic):
    before = Scrape(broker)
    assert before("makelaar_store_enabled") == 1
    sub = client(version=4, clean=False, client_id=unique("durable"))
    sub.subscribe(f"{topic}/#", qos=1)
    pub = client(version=4)
    for i in range(20):
        pub.publish(f"{topic}/{i}", b"kept", qos=1, retain=True)
    sub.get_n(20)

    def grown(s):
        return s("makelaar_store_commits_total") > before("makelaar_store_commits_total")

    after = wait_for(broker, grown)
    commits = after("makelaar_store_commits_total")
    hist = "makelaar_store_commit_duration_seconds"
    assert after(f"{hist}_count") == commits
    assert after(f"{hist}_bucket", le="+Inf") == commits
    assert after(f"{hist}_sum") > before(f"{hist}_sum")
    assert after("makelaar_store_commit_ops_count") == commits
    written = after("makelaar_store_ops_total", outcome="written")
    assert after("makelaar_store_commit_ops_sum") == written
    assert written - before("makelaar_store_ops_total", outcome="written") >= 20
    assert after("makelaar_store_fsyncs_total") > before("makelaar_store_fsyncs_total")
    assert after("makelaar_store_message_bytes") > 0


def test_an_in_memory_broker_has_no_store_figures(make_broker, client):
    b = make_broker(http=True, sys_interval=0, in_memory=True)
    c = client(on=b, version=4)
    c.publish("m/r", b"x", qos=1, retain=True)
    s = Scrape(b)
    assert s("makelaar_store_enabled") == 0
    assert s("makelaar_store_commits_total") == 0
    assert s("makelaar_store_commit_duration_seconds_count") == 0
    assert s("makelaar_retained_messages") == 1


def test_dashboard_queries_only_metrics_that_exist(broker):
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # Families without samples count (the bridges' without bridges).
    scrape = Scrape(broker)
    live = scrape.names() | scrape.family_names()
    queried = set()
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            names = re.findall(r"\bmakelaar_[a-z0-9_]+", t["expr"])
            assert names, f"{panel['title']}: {t['expr']}"
            queried.update(names)
    missing = sorted(queried - live)
    assert not missing, f"the dashboard queries metrics /metrics does not serve: {missing}"
    # Every documented family has a panel (build info and the store switch excepted).
    uncovered = {n for n in documented_names()
                 if not any(q == n or q.startswith(n + "_") for q in queried)}
    assert uncovered <= {"makelaar_store_enabled"}, sorted(uncovered)
