#!/usr/bin/env python3
"""The cost of the file hooks that follow the file (issue 18: every successful open judged
again at its exit by the file its descriptor names, creat, io_uring submissions, the exec's
cwd walk), beside the cost of podtrail's other programs on the same work, in one run.

A "session" here: 20 execs, 400 opens of ordinary files (what a build or a package manager
does), 20 opens of a watched file through a symlink (the case the exit judgement exists for).
One `podtrail capture` runs; per program, the kernel's own BPF statistics
(kernel.bpf_stats_enabled=1) give runs and run time. The open-exit programs run on every
open on the host: their cost per open is the number to watch.

Usage (root, after `cargo build --release`): bench/file_hooks.py [--sessions N] [--podtrail PATH]
"""
import argparse
import json
import os
import subprocess
import sys
import signal
import tempfile
import time

NEW = {"pt_exit_open", "pt_exit_openat", "pt_exit_openat2", "pt_exit_creat", "pt_uring_submit"}


def bpf_progs():
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True).stdout
    return {p["id"]: p for p in json.loads(out)}


def session(d):
    for i in range(20):
        subprocess.run(["/bin/true", f"s-{i}"], check=True)
    for i in range(400):
        with open(os.path.join(d, f"f{i % 20}"), "a"):
            pass
    for _ in range(20):
        with open(os.path.join(d, "link"), "a"):
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=30)
    ap.add_argument("--podtrail", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "podtrail"))
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    open(os.path.join(d, ".bash_history"), "w").close()
    os.symlink(os.path.join(d, ".bash_history"), os.path.join(d, "link"))
    subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"], check=True)
    ids0 = set(bpf_progs())
    log = open("/tmp/file_hooks_bench.log", "w+")
    p = subprocess.Popen([a.podtrail, "capture", "--log-level", "info"], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 120
    while "capturing" not in open("/tmp/file_hooks_bench.log").read():
        if time.time() > deadline:
            sys.exit("podtrail capture did not start")
        time.sleep(0.2)
    time.sleep(1)
    owned = set(bpf_progs()) - ids0
    before = bpf_progs()
    t0 = time.time()
    for _ in range(a.sessions):
        session(d)
    el = time.time() - t0
    time.sleep(1)
    after = bpf_progs()
    p.send_signal(signal.SIGINT)
    p.wait(timeout=60)
    subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=0"], check=False)
    rows = []
    for i in owned:
        if i not in after:
            continue
        name = after[i].get("name", "?")
        runs = after[i].get("run_cnt", 0) - before.get(i, {}).get("run_cnt", 0)
        ns = after[i].get("run_time_ns", 0) - before.get(i, {}).get("run_time_ns", 0)
        rows.append((name, runs, ns))
    n = a.sessions
    print(f"{n} sessions in {el:.1f} s, each: 20 execs, 400 ordinary opens, 20 opens of a watched file by a symlink")
    print(f"{'program':24} {'runs/session':>13} {'BPF us/session':>15} {'ns/run':>8}")
    for name, runs, ns in sorted(rows, key=lambda r: -r[2]):
        if runs:
            print(f"{name:24} {runs / n:13.0f} {ns / 1000 / n:15.1f} {ns / runs:8.0f}")
    new = sum(ns for name, _, ns in rows if name in NEW)
    old = sum(ns for name, _, ns in rows if name not in NEW)
    print(f"new hooks {new / 1000 / n:.1f} us/session, the others {old / 1000 / n:.1f} us/session: "
          f"new / others {new / max(old, 1):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
