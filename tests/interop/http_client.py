"""Requests to the broker's HTTP listener (config {"http": True}), and /metrics parsed with
the Prometheus client library's own parser."""

from __future__ import annotations

import http.client
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families


def request(broker, path, method="GET", timeout=5.0):
    """(status, headers, body) of one HTTP request to the broker's HTTP listener."""
    conn = http.client.HTTPConnection(broker.host, broker.http_port, timeout=timeout)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


class Scrape:
    """One /metrics answer, parsed by prometheus_client."""

    def __init__(self, broker):
        status, headers, body = request(broker, "/metrics")
        assert status == 200, body
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        self.text = body.decode()
        self.families = list(text_string_to_metric_families(self.text))
        self.samples = {}
        for f in self.families:
            for s in f.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                assert key not in self.samples, f"sample {key} appears twice"
                self.samples[key] = s.value

    def __call__(self, name, **labels):
        """The value of one sample (0 when absent: e.g. a disconnect reason never seen)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def names(self):
        return {name for name, _ in self.samples}

    def family_names(self):
        """Every family served, with or without samples (a counter's with _total)."""
        return {f.name + "_total" if f.type == "counter" else f.name for f in self.families}


def wait_for(broker, check, timeout=5.0):
    """Scrapes until check(scrape) holds; returns that scrape or fails with the last one."""
    deadline = time.monotonic() + timeout
    while True:
        s = Scrape(broker)
        if check(s):
            return s
        if time.monotonic() > deadline:
            pytest.fail("metrics never reached the expected values; last scrape:\n"
                        + "\n".join(line for line in s.text.splitlines()
                                    if not line.startswith("#")))
        time.sleep(0.1)
