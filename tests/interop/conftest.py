"""Fixtures for the interop suite: the broker under test (Makelaar by default, Mosquitto with
MAKELAAR_TEST_BROKER=mosquitto), test certificates, paho and raw-socket client factories."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mqtt_raw  # noqa: E402
from brokers import BROKER_KIND, DEFAULT_CONFIG, REPO_ROOT, Broker, merge_config  # noqa: E402
from clients import MqttClient, unique  # noqa: E402

# Headless Chromium fixtures (`chromium`, `browser_page`) for the browser tests.
pytest_plugins = ["browser"]

# Any single test that runs longer than this is stopped (a hung test must not hang the suite).
TEST_WATCHDOG_SECONDS = 60

_active_brokers: list[Broker] = []


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "xfail_mosquitto(reason): expected to fail against Mosquitto (a Mosquitto bug or missing "
        "feature); a normal test against Makelaar")
    config.addinivalue_line("markers", "slow: takes several seconds")


def pytest_report_header(config):
    return f"broker under test: {BROKER_KIND}"


def pytest_collection_modifyitems(config, items):
    if BROKER_KIND != "mosquitto":
        return
    for item in items:
        m = item.get_closest_marker("xfail_mosquitto")
        if m is not None:
            reason = m.kwargs.get("reason") or (m.args[0] if m.args else "Mosquitto limitation")
            item.add_marker(pytest.mark.xfail(reason=f"Mosquitto: {reason}", strict=False))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call_failed = rep.failed  # read by fixtures' teardown (browser.py)
    if rep.failed and not hasattr(rep, "wasxfail"):
        for b in list(_active_brokers):
            state = "running" if b.alive() else f"EXITED with code {b.proc.returncode}"
            rep.sections.append((f"{b.kind} {b.name} output ({state})", b.stderr_tail()))


@pytest.fixture(autouse=True)
def _watchdog():
    """Fail any test that runs longer than TEST_WATCHDOG_SECONDS."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"test still running after {TEST_WATCHDOG_SECONDS}s (watchdog)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_WATCHDOG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(autouse=True)
def _brokers_survive():
    """After every test, each broker it used must still be running: nothing may crash it."""
    yield
    dead = [b for b in _active_brokers if not b.alive() and not b.expected_exit]
    if dead:
        b = dead[0]
        _active_brokers.remove(b)
        pytest.fail(f"{b!r} died (exit code {b.proc.returncode}):\n{b.stderr_tail()}")


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    subprocess.run(["sh", str(REPO_ROOT / "scripts" / "gen-certs.sh"), str(d)], check=True,
                   stdout=subprocess.DEVNULL, timeout=60)
    return d


def _start(tmp_path_factory, certs, config, name) -> Broker:
    b = Broker(tmp_path_factory.mktemp(name), certs, config, name=name)
    b.start()
    _active_brokers.append(b)
    return b


def _stop(b: Broker):
    if b in _active_brokers:
        _active_brokers.remove(b)
    b.stop()


@pytest.fixture(scope="module")
def broker(request, tmp_path_factory, certs) -> Broker:
    """One broker per test module. A module may set BROKER_CONFIG = {"sys_interval": 1,
    "limits": {...}} to change its settings."""
    cfg = merge_config(DEFAULT_CONFIG, getattr(request.module, "BROKER_CONFIG", None))
    name = request.module.__name__.rsplit(".", 1)[-1]
    b = _start(tmp_path_factory, certs, cfg, name)
    yield b
    _stop(b)


@pytest.fixture
def make_broker(request, tmp_path_factory, certs):
    """Factory for a fresh broker with special settings: make_broker(limits={...},
    sys_interval=1). Stopped at the end of the test."""
    started = []

    def make(limits=None, **settings):
        cfg = merge_config(DEFAULT_CONFIG, settings, {"limits": limits or {}})
        b = _start(tmp_path_factory, certs, cfg, request.node.name[:40].replace("[", "_"))
        started.append(b)
        return b

    yield make
    for b in started:
        _stop(b)


@pytest.fixture
def topic(request) -> str:
    """A topic prefix no other test uses."""
    return unique(request.node.name.split("[")[0][:30])


@pytest.fixture
def client(broker):
    """Factory for paho clients: client(version=5, clean=True, client_id=None, on=None,
    connect=True, keepalive=60, properties=None, tls=False, will=None). Closed at the end."""
    made = []

    def make(version=5, clean=True, client_id=None, on=None, connect=True, keepalive=60,
             properties=None, tls=False, will=None, manual_ack=False, **kw):
        c = MqttClient(on or broker, client_id=client_id, version=version, clean=clean,
                       tls=tls, manual_ack=manual_ack, **kw)
        if will is not None:
            c.will_set(**will)
        made.append(c)
        if connect:
            c.connect(keepalive=keepalive, properties=properties)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def raw(broker):
    """Factory for raw-socket clients: raw(version=4, on=None, timeout=5)."""
    made = []

    def make(version=4, on=None, timeout=5.0, tls_context=None, port=None):
        b = on or broker
        r = mqtt_raw.RawClient(port or b.port, b.host, version=version, timeout=timeout,
                               tls_context=tls_context)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()
