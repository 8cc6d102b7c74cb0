#!/usr/bin/env python3
"""The cost of the DNS answer hook (issue 17: cgroup_skb/ingress, `ebpf/dns.bpf.c`), beside the
same traffic captured without it (`podtrail capture --no-dns`) and with no capture at all, in
one run.

Two kinds of traffic, each received by a socket on loopback: ordinary UDP datagrams (what
every packet that is not a DNS answer costs the hook: a header read and a few compares) and
real DNS answers (a UDP socket bound to port 53 of 127.0.0.2 answering a resolver's queries
with a CNAME and two A records: the hook copies each into the ring). Per packet it prints the
wall time, the hook's own BPF run time (`kernel.bpf_stats_enabled=1`, pt_dns_ingress only),
the BPF time of all of podtrail's programs, and podtrail's CPU time (which includes parsing
the answers). Compare the ratios: the machine is shared and noisy.

Usage (root, after `cargo build --release`): bench/dns_ingress.py [--packets N] [--podtrail PATH]
"""
import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from cpuclock import proc_cpu  # noqa: F401  (the per-process CPU clock, ns)

SERVER = ("127.0.0.2", 53)


def bpf_progs():
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True).stdout
    return {p["id"]: p for p in json.loads(out)}




def qname(n):
    return b"".join(bytes([len(l)]) + l.encode() for l in n.split(".")) + b"\0"


def answer(query):
    """www.bench.test CNAME api.bench.test, two A records: what a CDN'd name looks like."""
    rid = query[:2]
    q = qname("www.bench.test")
    m = rid + struct.pack(">HHHHH", 0x8180, 1, 3, 0, 0) + q + struct.pack(">HH", 1, 1)
    target = qname("api.bench.test")
    m += b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 60, len(target)) + target
    at = 12 + len(q) + 4 + 12  # the CNAME's target
    for a in (b"\xcb\x00\x71\x50", b"\xcb\x00\x71\x51"):
        m += struct.pack(">HHHIH", 0xC000 | at, 1, 1, 60, 4) + a
    return m


def serve(srv):
    while True:
        try:
            q, peer = srv.recvfrom(512)
        except OSError:
            return
        srv.sendto(answer(q), peer)


def plain(n):
    """n datagrams received by a socket that is not a resolver's: the hook's common path."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    t0 = time.time()
    for i in range(n):
        tx.send(b"x" * 64)
        rx.recv(128)
    el = time.time() - t0
    rx.close()
    tx.close()
    return el


def dns(n):
    """n answers from port 53 received by a resolver's socket: the hook's copying path."""
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.connect(SERVER)
    c.settimeout(5)
    query = b"\x12\x34" + struct.pack(">HHHHH", 0x0100, 1, 0, 0, 0) + qname("www.bench.test") + b"\0\x01\0\x01"
    t0 = time.time()
    for _ in range(n):
        c.send(query)
        c.recv(512)
    el = time.time() - t0
    c.close()
    return el


def measure(podtrail, args, n):
    """(wall s, hook ns, hook runs, all BPF ns, CPU s) for each of the two phases."""
    proc = None
    owned = set()
    if podtrail is not None:
        ids0 = set(bpf_progs())
        log = open("/tmp/dns_bench.log", "w+")
        proc = subprocess.Popen([podtrail, "capture", *args, "--log-level", "info"], stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 120
        while "capturing" not in open("/tmp/dns_bench.log").read():
            if time.time() > deadline:
                sys.exit("podtrail capture did not start")
            time.sleep(0.2)
        time.sleep(1)
        owned = set(bpf_progs()) - ids0
    out = []
    for phase, count in ((plain, n), (dns, n // 10)):
        before = bpf_progs()
        c0 = proc_cpu(proc.pid) if proc else 0
        el = phase(count)
        time.sleep(0.5)
        after = bpf_progs()
        cpu = (proc_cpu(proc.pid) - c0) if proc else 0

        def delta(ids, key):
            return sum(after[i].get(key, 0) - before.get(i, {}).get(key, 0) for i in ids if i in after)

        hook = {i for i in owned if after.get(i, {}).get("name") == "pt_dns_ingress"}
        out.append((count, el, delta(hook, "run_time_ns"), delta(hook, "run_cnt"), delta(owned, "run_time_ns"), cpu))
    if proc:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--podtrail", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "podtrail"))
    a = ap.parse_args()
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(SERVER)
    threading.Thread(target=serve, args=(srv,), daemon=True).start()
    subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"], check=True)
    rows = [
        ("no capture", measure(None, [], a.packets)),
        ("capture --no-dns", measure(a.podtrail, ["--no-dns"], a.packets)),
        ("capture (DNS hook)", measure(a.podtrail, [], a.packets)),
    ]
    subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=0"], check=False)
    srv.close()
    for p, what in enumerate(("plain UDP datagram received", "DNS answer received (query sent, answer read)")):
        print(f"per {what}:")
        print(f"  {'configuration':20} {'wall us':>8} {'hook ns':>8} {'hook runs':>10} {'BPF ns':>8} {'CPU us':>8}")
        for name, phases in rows:
            n, el, hook, runs, bpf, cpu = phases[p]
            print(f"  {name:20} {el * 1e6 / n:8.1f} {hook / n:8.0f} {runs:10d} {bpf / n:8.0f} {cpu * 1e6 / n:8.2f}")
        n, e0 = rows[0][1][p][0], rows[0][1][p][1]
        e1, b1, c1 = rows[1][1][p][1], rows[1][1][p][4], rows[1][1][p][5]
        e2, b2, c2 = rows[2][1][p][1], rows[2][1][p][4], rows[2][1][p][5]
        cpu = f"{c2 / c1:.2f}x" if c1 > 0 else "n/a (under a clock tick)"
        print(f"  DNS hook / --no-dns: wall {e2 / e1:.2f}x  BPF {b2 / max(b1, 1):.2f}x  CPU {cpu};"
              f"  DNS hook / no capture: wall {e2 / e0:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
