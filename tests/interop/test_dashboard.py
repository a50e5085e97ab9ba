"""The web dashboard, end to end: Makelaar with an http:// listener, paho clients, and the page
in headless Chromium (Playwright). The page must show a connected client with its address,
protocol version and keep-alive, disconnect it (the client gets DISCONNECT 0x98), watch a topic
filter and show what is published there, draw its charts; everything clients control is shown
as text. Screenshots are saved in the test's directory and checked with Pillow.

Authentication (HTTP Basic against the broker's password file, the admin role), the CSRF and
Host checks, and the slow-reader bound of the topic viewer are tested with plain HTTP."""

from __future__ import annotations

import re
import time

import pytest

from brokers import BROKER_KIND
from clients import MqttClient, props, unique
from conftest import _stop
from dashboard_helpers import (EventReader, image, not_blank, pixels_near, request,
                               start_dashboard_broker)
from paho.mqtt.packettypes import PacketTypes
from playwright.sync_api import expect

pytestmark = pytest.mark.skipif(BROKER_KIND != "makelaar",
                                reason="the dashboard is Makelaar's own")

SERIES_BLUE = (0x1F, 0x6F, 0xEB)  # the connections series (dashboard.js)


@pytest.fixture(scope="module")
def dash(tmp_path_factory, certs):
    """A broker whose dashboard is open (no password file), on loopback."""
    b = start_dashboard_broker(tmp_path_factory, certs, "dashboard")
    yield b
    _stop(b)


@pytest.fixture
def clients(dash):
    made = []

    def make(**kw):
        keepalive = kw.pop("keepalive", 60)
        properties = kw.pop("properties", None)
        c = MqttClient(dash, **kw)
        made.append(c)
        c.connect(keepalive=keepalive, properties=properties)
        return c

    yield make
    for c in made:
        c.close()


def wait_until(check, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not as expected within {timeout}s")
        time.sleep(0.1)


def row(page, client_id):
    """The clients table's row of `client_id` (matched on the cell's whole text)."""
    cell = page.locator("td.client-id").get_by_text(client_id, exact=True)
    return page.locator("#clients-table tbody tr").filter(has=cell)


def test_page_shows_a_client_disconnects_it_and_watches_a_topic(dash, clients, browser_page,
                                                                tmp_path):
    page = browser_page
    steady = clients(client_id=unique("steady"))  # keeps the connections series above zero
    victim = clients(client_id=unique("victim"), version=5, keepalive=42)
    victim_addr = "%s:%d" % victim.c.socket().getsockname()[:2]
    expiry = props(PacketTypes.CONNECT, SessionExpiryInterval=300)
    durable = clients(client_id=unique("durable"), version=5, properties=expiry)
    old = clients(client_id=unique("old"), version=4, keepalive=17)

    page.goto(dash.url + "/")
    r = row(page, victim.client_id)
    r.wait_for()
    assert r.locator("td.client-id").inner_text() == victim.client_id
    assert r.locator("td.address").inner_text() == victim_addr
    assert r.locator("td.protocol").inner_text() == "5.0"
    assert r.locator("td.keep-alive").inner_text() == "42 s"
    assert r.locator("td.status").inner_text() == "online"
    o = row(page, old.client_id)
    assert o.locator("td.protocol").inner_text() == "3.1.1"
    assert o.locator("td.keep-alive").inner_text() == "17 s"
    assert row(page, steady.client_id).count() == 1

    # Live figures: the connected count arrives over server-sent events.
    # (Waits use locators: the page's Content-Security-Policy forbids the eval behind
    # wait_for_function.)
    wait_until(lambda: page.locator("#stat-connected").inner_text().isdigit()
               and int(page.locator("#stat-connected").inner_text()) >= 4,
               "the connected count")
    shot = tmp_path / "1-clients.png"
    page.screenshot(path=str(shot), full_page=True)
    not_blank(image(shot.read_bytes()))

    # Disconnect: the client gets DISCONNECT 0x98 (administrative action); its clean session
    # ends, so its row goes away.
    r.locator("button.disconnect").click()
    assert victim.wait_disconnected() == 0x98
    r.wait_for(state="detached")
    assert page.locator("#clients-error").is_hidden()

    # A persistent session stays, offline, without a button.
    d = row(page, durable.client_id)
    d.locator("button.disconnect").click()
    assert durable.wait_disconnected() == 0x98
    d.locator("td.status", has_text="offline").wait_for()
    assert d.locator("button.disconnect").count() == 0

    # Topic viewer: watch sensors/#, publish with paho, see the message arrive (and nothing
    # from elsewhere).
    page.fill("#watch-filter", "sensors/#")
    page.click("#watch-start")
    expect(page.locator("#watch-status")).to_have_text("watching sensors/#")
    time.sleep(0.3)  # the watch is open once `watching` arrived; give the router a moment
    steady.publish("other/topic", b"not shown")
    steady.publish("sensors/room1/temp", b"21.5", qos=1)
    msg = page.locator('#watch-messages li[data-topic="sensors/room1/temp"]')
    msg.wait_for()
    assert msg.locator(".payload").inner_text() == "21.5"
    steady.publish("sensors/raw", bytes([0, 1, 0xFE, 0xFF]))
    raw = page.locator('#watch-messages li[data-topic="sensors/raw"] .payload')
    raw.wait_for()
    assert raw.inner_text() == "0001feff"
    assert page.locator('#watch-messages li[data-topic="other/topic"]').count() == 0

    # Charts: after a few samples the connections series is drawn above the baseline.
    time.sleep(2.5)
    canvas = page.locator("#chart-connections")
    shot = tmp_path / "2-chart.png"
    canvas.screenshot(path=str(shot))
    img = image(shot.read_bytes())
    upper = (0, 0, img.width, img.height * 2 // 3)  # well above the zero line
    assert pixels_near(img, SERIES_BLUE, box=upper) > 20, "no series drawn above zero"
    shot = tmp_path / "3-page.png"
    page.screenshot(path=str(shot), full_page=True)
    full = image(shot.read_bytes())
    not_blank(full)
    assert pixels_near(full, SERIES_BLUE) > 100


XSS = '<img src=x onerror="window.__xss=1;alert(1)">'


def test_what_clients_send_is_shown_as_text(dash, clients, browser_page):
    page = browser_page
    console = []
    page.on("console", lambda m: console.append(m.text))
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    evil_id = XSS + unique("")
    evil = clients(client_id=evil_id, version=5)
    evil.subscribe("evil/" + XSS)
    page.goto(dash.url + "/")
    page.fill("#watch-filter", "evil/#")
    page.click("#watch-start")
    expect(page.locator("#watch-status")).to_have_text("watching evil/#")
    time.sleep(0.3)
    payload = "<script>window.__xss=2</script>" + XSS
    evil.publish("evil/" + XSS, payload.encode())

    r = row(page, evil_id)
    r.wait_for()
    assert r.locator("td.client-id").inner_text() == evil_id
    msg = page.locator("#watch-messages li").first
    msg.wait_for()
    assert msg.locator(".topic").inner_text() == "evil/" + XSS
    assert msg.locator(".payload").inner_text() == payload
    page.locator("#subscriptions-table td.filter", has_text="evil/").wait_for()
    assert page.locator("#subscriptions-table td.filter", has_text="evil/").first.inner_text() \
        == "evil/" + XSS
    # Nothing was parsed as HTML: no element made, no script run, nothing for the CSP to stop.
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("window.__xss") is None
    assert dialogs == []
    assert not [c for c in console if "Content Security Policy" in c], console


def test_watch_refuses_invalid_filters(dash, browser_page):
    a = request(dash, "GET", "/api/watch?filter=a/%23/b")
    assert a.status == 400, a
    assert b"#" in a.body
    assert request(dash, "GET", "/api/watch?filter=%24share/g/a").status == 400
    assert request(dash, "GET", "/api/watch").status == 400
    page = browser_page
    page.goto(dash.url + "/")
    page.fill("#watch-filter", "a/#/b")
    page.click("#watch-start")
    expect(page.locator("#watch-status")).to_have_text(re.compile(r"^cannot watch a/#/b: "))
    assert page.locator("#watch-start").is_enabled()


def test_json_api_lists_and_disconnect_needs_the_header(dash, clients):
    c = clients(client_id=unique("api"), version=5)
    c.subscribe("api/+/x", qos=1)
    c.publish("api/retained/" + c.client_id, b"12345", retain=True)
    page = request(dash, "GET", f"/api/clients?q={c.client_id}").json()
    assert page["total"] == 1
    (item,) = page["items"]
    assert (item["client_id"], item["protocol"], item["online"]) == (c.client_id, "5.0", True)
    subs = request(dash, "GET", f"/api/subscriptions?q={c.client_id}").json()
    assert [(s["filter"], s["qos"]) for s in subs["items"]] == [("api/+/x", 1)]
    ret = request(dash, "GET", f"/api/retained?q={c.client_id}").json()
    assert [(r["topic"], r["size"]) for r in ret["items"]] == [("api/retained/" + c.client_id, 5)]
    stats = request(dash, "GET", "/api/stats").json()
    assert stats["clients_connected"] >= 1 and stats["retained"] >= 1

    path = f"/api/clients/{c.client_id}/disconnect"
    assert request(dash, "POST", path).status == 403  # no header: not from the page
    forged = {"X-Makelaar-Dashboard": "1", "Origin": "http://evil.example"}
    assert request(dash, "POST", path, headers=forged).status == 403
    assert request(dash, "GET", path).status == 405
    assert c.is_connected
    ok = request(dash, "POST", path, headers={"X-Makelaar-Dashboard": "1"})
    assert ok.status == 200, ok
    assert c.wait_disconnected() == 0x98
    again = request(dash, "POST", path, headers={"X-Makelaar-Dashboard": "1"})
    assert again.status == 404


def test_open_dashboard_refuses_other_host_names(dash):
    """Without a password file, a page reached by a host name (DNS rebinding) is refused."""
    assert request(dash, "GET", "/api/stats", headers={"Host": "evil.example"}).status == 403
    assert request(dash, "GET", "/api/stats", headers={"Host": "localhost"}).status == 200
    # /healthz is not the dashboard's: it answers any host.
    assert request(dash, "GET", "/healthz", headers={"Host": "evil.example"}).status == 200


def test_slow_topic_viewer_drops_and_routing_goes_on(dash, clients):
    """A viewer that does not read loses copies (counted); subscribers get everything (at
    QoS 1: at QoS 0 a Python subscriber falls behind 20 MB and loses messages itself)."""
    sub = clients(client_id=unique("fast"))
    sub.subscribe("flood/#", qos=1)
    pub = clients(client_id=unique("flood"))
    reader = EventReader(dash, "/api/watch?filter=flood/%23", rcvbuf=4096)
    reader.read_until(b"event: watching")
    n = 5000
    body = b"x" * 4000  # shown cut to 2 KiB: about 11 MB of events in all
    for i in range(n):
        pub.publish(f"flood/{i}", body, qos=1, wait=False)
    got = sub.get_n(n, timeout=30)
    assert len(got) == n
    # Now read: the viewer reports what it dropped.
    reader.read_until(b"event: dropped", timeout=15)
    dropped = [d["dropped"] for name, d in reader.events() if name == "dropped"]
    assert dropped and dropped[-1] > 0
    shown = sum(1 for name, _ in reader.events() if name == "message")
    assert shown < n
    reader.close()


# ---- authentication -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def secured(tmp_path_factory, certs):
    """A broker with a password file: alice is an admin, bob is not."""
    from auth_files import makelaar_passwd
    d = tmp_path_factory.mktemp("dash-passwords")
    pw = makelaar_passwd(d / "passwd", {"alice": "wonderland", "bob": "builder"})
    b = start_dashboard_broker(tmp_path_factory, certs, "dashboard-auth",
                               dashboard={"admin_users": ["alice"]}, password_file=str(pw))
    yield b
    _stop(b)


def test_dashboard_needs_an_admin_login(secured):
    from auth_files import fresh_source
    src = fresh_source()
    a = request(secured, "GET", "/api/stats", source=src)
    assert a.status == 401
    assert a.headers["www-authenticate"].startswith("Basic realm=")
    assert request(secured, "GET", "/", source=src).status == 401
    assert request(secured, "GET", "/api/stats", "bob", "builder", source=src).status == 403
    ok = request(secured, "GET", "/api/stats", "alice", "wonderland", source=src)
    assert ok.status == 200 and "clients_connected" in ok.json()
    # Health checks and scrapers do not log in.
    assert request(secured, "GET", "/healthz", source=src).status == 200


def test_wrong_passwords_are_slowed_down(secured):
    from auth_files import fresh_source
    src = fresh_source()
    times = []
    for _ in range(3):
        a = request(secured, "GET", "/api/stats", "alice", "wrong", source=src)
        assert a.status == 401
        times.append(a.elapsed)
    # After each failure the address waits longer: 0.2 s, then 0.4 s (auth::throttle).
    assert times[1] >= 0.18, times
    assert times[2] >= 0.38, times
    # Another address is not slowed down by them.
    other = request(secured, "GET", "/api/stats", "alice", "wonderland", source=fresh_source())
    assert other.status == 200
    assert other.elapsed < times[2]


def test_browser_logs_in_with_basic_credentials(secured, chromium, tmp_path):
    mqtt_client = MqttClient(secured, client_id=unique("authed"), username="bob",
                             password="builder")
    mqtt_client.connect()
    context = chromium.new_context(http_credentials={"username": "alice",
                                                     "password": "wonderland"})
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(secured.url + "/")
        r = row(page, mqtt_client.client_id)
        r.wait_for()
        assert r.locator("td.username").inner_text() == "bob"
        # Server-sent events pass the login too.
        expect(page.locator("#live")).to_have_text("live")
        shot = tmp_path / "auth.png"
        page.screenshot(path=str(shot))
        not_blank(image(shot.read_bytes()))
    finally:
        context.close()
        mqtt_client.close()


def test_a_reload_forgets_remembered_logins(tmp_path_factory, certs):
    """Logins are remembered for a while; a new password file (SIGHUP) ends that at once."""
    import signal

    from auth_files import fresh_source, makelaar_passwd
    d = tmp_path_factory.mktemp("dash-reload")
    pw = makelaar_passwd(d / "passwd", {"alice": "before"})
    b = start_dashboard_broker(tmp_path_factory, certs, "dashboard-reload",
                               dashboard={"admin_users": ["alice"]}, password_file=str(pw))
    try:
        src = fresh_source()
        assert request(b, "GET", "/api/stats", "alice", "before", source=src).status == 200
        assert request(b, "GET", "/api/stats", "alice", "before", source=src).status == 200
        makelaar_passwd(d / "passwd", {"alice": "after"})
        b.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded" in b.stderr_tail(5), "the reload")
        assert request(b, "GET", "/api/stats", "alice", "before", source=src).status == 401
        ok = request(b, "GET", "/api/stats", "alice", "after", source=fresh_source())
        assert ok.status == 200
    finally:
        _stop(b)


def test_bridge_panel_shows_state_queue_counts_last_error_and_drops(tmp_path_factory, certs,
                                                                   browser_page):
    from bridge_helpers import bridge_toml
    from brokers import free_port
    dead = free_port()  # the remote is away: the bridge is down and its queue fills
    bridge = bridge_toml("cloud", dead, [{"pattern": "s/#", "qos": 1}],
                         remote_client_id="edge", queue={"max_messages": 2})
    b = start_dashboard_broker(tmp_path_factory, certs, "bridgepanel", extra=bridge)
    try:
        # The bridge's local session (its subscription, the queue) exists once its first
        # notification, a retained 0, is there.
        watch = MqttClient(b, version=5)
        watch.connect()
        watch.subscribe("$SYS/broker/connection/edge/state", 1)
        assert watch.get(timeout=10).payload == b"0"
        watch.close()
        pub = MqttClient(b, version=5)
        pub.connect()
        codes = [getattr(c, "value", c) for c in
                 (pub.publish(f"s/{i}", b"x", qos=1) for i in range(3))]
        assert codes[-1] == 0x97, codes
        pub.close()
        ans = request(b, "GET", "/api/bridges")
        assert ans.status == 200, ans
        [j] = ans.json()
        assert (j["name"], j["queued"], j["dropped"]["queue_full"]) == ("cloud", 2, 1), j
        assert j["state"] in ("down", "connecting") and j["address"] == f"127.0.0.1:{dead}"

        page = browser_page
        page.goto(b.url + "/")
        row = page.locator("#bridges-table tbody tr").filter(
            has=page.locator("td.bridge-name").get_by_text("cloud", exact=True))
        expect(page.locator("#bridges")).to_be_visible()
        expect(row.locator("td.queued")).to_have_text("2")
        expect(row.locator("td.dropped")).to_contain_text("queue_full 1")
        expect(row.locator("td.address")).to_have_text(f"127.0.0.1:{dead}")
        expect(row.locator("td.last-error")).to_contain_text("cannot connect", timeout=15000)
        expect(row.locator("td.state")).to_have_text(re.compile("down|connecting"))
        expect(row.locator("td.oldest")).not_to_have_text("–")
    finally:
        _stop(b)


def test_no_bridge_no_panel(dash, browser_page):
    page = browser_page
    page.goto(dash.url + "/")
    expect(page.locator("#clients-table")).to_be_visible()
    time.sleep(0.5)
    expect(page.locator("#bridges")).to_be_hidden()
    assert request(dash, "GET", "/api/bridges").json() == []
