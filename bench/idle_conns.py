#!/usr/bin/env python3
"""Opens N idle MQTT 3.1.1 connections with one subscription each against a running broker and
reports the broker's resident memory per connection (from /proc/PID/status) and the connect rate.

    python3 bench/idle_conns.py --port 1883 --pid $(pidof makelaar) -n 10000

Raise the open-files limit first (`ulimit -n 65536`). Loopback only; bounded in time.
"""
import argparse
import asyncio
import struct
import sys
import time


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def utf8(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(cid):
    body = utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 600) + utf8(cid)
    return bytes([0x10]) + varint(len(body)) + body


def subscribe_packet(topic):
    body = struct.pack("!H", 1) + utf8(topic) + bytes([1])
    return bytes([0x82]) + varint(len(body)) + body


async def one(host, port, i, conns):
    r, w = await asyncio.open_connection(host, port)
    w.write(connect_packet(f"idle-{i}"))
    await r.readexactly(4)  # CONNACK
    w.write(subscribe_packet(f"idle/{i}/cmd"))
    await r.readexactly(5)  # SUBACK
    conns.append((r, w))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--pid", type=int, required=True, help="broker process id")
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--parallel", type=int, default=100)
    a = ap.parse_args()
    before = rss_kb(a.pid)
    conns = []
    sem = asyncio.Semaphore(a.parallel)

    async def guarded(i):
        async with sem:
            await asyncio.wait_for(one(a.host, a.port, i, conns), 30)

    t0 = time.monotonic()
    await asyncio.gather(*(guarded(i) for i in range(a.n)))
    elapsed = time.monotonic() - t0
    await asyncio.sleep(1)
    after = rss_kb(a.pid)
    per = (after - before) * 1024 / a.n
    print(f"connections={a.n} rss_before_kb={before} rss_after_kb={after} "
          f"bytes_per_conn={per:.0f} connect_rate={a.n / elapsed:.0f}/s")
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
