#!/usr/bin/env python3
"""The cost of the hooks for the ways out that are not a connect (issue 18: cgroup/sendmsg4|6,
listen, accept, cgroup/sock_create), per busy session, beside the same sessions captured
without them (`podtrail capture --no-sockets`) and with no capture at all, in one run.

A "session" here is what a busy interactive session does to the kernel: 20 execs, 20 TCP
connects to a local listener (each accepted), 400 UDP datagrams sent with sendto to one
address, one raw ICMP socket. Each configuration runs the same sessions; the numbers are per
session: wall time, BPF run time of podtrail's programs (kernel.bpf_stats_enabled=1) and
podtrail's own CPU time. Compare the ratios: the machine is shared and noisy.

Usage (root, after `cargo build --release`): bench/ways_out.py [--sessions N] [--podtrail PATH]
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from cpuclock import proc_cpu  # noqa: F401  (the per-process CPU clock, ns)


def bpf_progs():
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True).stdout
    return {p["id"]: p for p in json.loads(out)}


def session(port):
    for i in range(20):
        subprocess.run(["/bin/true", f"s-{i}"], check=True)
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port))
        s.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(400):
        u.sendto(b"x" * 32, ("127.0.0.1", 9))
    u.close()
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    except PermissionError:
        pass


def run_sessions(n):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)
    port = srv.getsockname()[1]
    done = False

    def accept():
        while not done:
            try:
                c, _ = srv.accept()
                c.close()
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    t0 = time.time()
    for _ in range(n):
        session(port)
    el = time.time() - t0
    done = True
    srv.close()
    return el


def measure(podtrail, args, n):
    if podtrail is None:
        return run_sessions(n), 0, 0
    ids0 = set(bpf_progs())
    log = open("/tmp/ways_out_bench.log", "w+")
    p = subprocess.Popen([podtrail, "capture", *args, "--log-level", "info"], stdout=subprocess.DEVNULL, stderr=log)
    # loading takes seconds on a busy machine: measure only once every program is attached
    deadline = time.time() + 120
    while "capturing" not in open("/tmp/ways_out_bench.log").read():
        if time.time() > deadline:
            sys.exit("podtrail capture did not start")
        time.sleep(0.2)
    time.sleep(1)
    owned = set(bpf_progs()) - ids0
    before = bpf_progs()
    c0 = proc_cpu(p.pid)
    el = run_sessions(n)
    time.sleep(1)
    after = bpf_progs()
    cpu = proc_cpu(p.pid) - c0
    p.send_signal(signal.SIGINT)
    p.wait(timeout=60)
    rt = sum(after[i].get("run_time_ns", 0) - before.get(i, {}).get("run_time_ns", 0) for i in owned if i in after)
    return el, rt, cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--podtrail", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "podtrail"))
    a = ap.parse_args()
    subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"], check=True)
    rows = [
        ("no capture", *measure(None, [], a.sessions)),
        ("capture --no-sockets", *measure(a.podtrail, ["--no-sockets"], a.sessions)),
        ("capture (all hooks)", *measure(a.podtrail, [], a.sessions)),
    ]
    subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=0"], check=False)
    n = a.sessions
    print(f"{n} sessions, each: 20 execs, 20 TCP connects accepted, 400 sendto datagrams, 1 raw socket")
    print(f"{'configuration':22} {'wall ms/session':>16} {'BPF us/session':>15} {'CPU ms/session':>15}")
    for name, el, rt, cpu in rows:
        print(f"{name:22} {el * 1000 / n:16.1f} {rt / 1000 / n:15.1f} {cpu * 1000 / n:15.2f}")
    _, e0, _, _ = rows[0]
    _, e1, r1, c1 = rows[1]
    _, e2, r2, c2 = rows[2]
    print(f"all hooks / --no-sockets: wall {e2 / e1:.2f}x  BPF {r2 / max(r1, 1):.2f}x  CPU {c2 / max(c1, 1e-9):.2f}x")
    print(f"all hooks / no capture: wall {e2 / e0:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
