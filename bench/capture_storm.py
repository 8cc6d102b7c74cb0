#!/usr/bin/env python3
"""Capture benchmark: an exec storm and a connect storm, captured at the same time by
`podtrail capture` and by Debian's libbpf-tools (execsnoop for execs, tcpstates for connects),
so every number is printed beside a reference measured in the same run.

For each tool it prints: events generated, events received (goal: all), the BPF run time per
program invocation (kernel BPF statistics, kernel.bpf_stats_enabled=1), and the user-space CPU
time of the tool per event received. Ratios, not absolute times, are what to compare: the
machines are shared and noisy.

Usage (root): bench/capture_storm.py [--execs N] [--connects N] [--podtrail PATH]
"""
import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

from cpuclock import proc_cpu  # noqa: F401  (the per-process CPU clock, ns)


# warnings, and the one line that says the programs are loaded and capture runs
LOG = "warn,podtrail::cli::capture=info"


def bpf_prog_stats():
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True).stdout
    return {p["id"]: p for p in json.loads(out)}


def start(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(p):
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    return out, err


def cpu_of(pid_rusage):
    return pid_rusage.ru_utime + pid_rusage.ru_stime


class Reaped:
    """Run a tool and get its rusage (os.wait4) after it exits."""

    def __init__(self, cmd):
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = []
        self.err = []
        self.t = threading.Thread(target=self._read, args=(self.p.stdout, self.out), daemon=True)
        self.t.start()
        self.te = threading.Thread(target=self._read, args=(self.p.stderr, self.err), daemon=True)
        self.te.start()

    @staticmethod
    def _read(f, into):
        for line in f:
            into.append(line)

    def wait_ready(self, ids0=None, timeout=120):
        """Until the tool captures: a first line on stdout (execsnoop's header), podtrail's
        `capturing` log line, or (tools that buffer their header in a pipe, like tcpstates;
        needs ids0, the BPF program ids before the start) new BPF programs whose set has not
        changed for a second. Loading takes seconds on a loaded machine (the verifier), and a
        storm started before that bills the load to the storm."""
        deadline = time.time() + timeout
        last, since = None, time.time()
        while not (self.out or any(b"capturing" in l for l in self.err)):
            if self.p.poll() is not None or time.time() > deadline:
                raise SystemExit(f"{self.p.args} did not start: {b''.join(self.err).decode(errors='replace')}")
            if ids0 is not None:
                new = set(bpf_prog_stats()) - ids0
                if new != last:
                    last, since = new, time.time()
                elif new and time.time() - since >= 1.0:
                    return
            time.sleep(0.1)

    def stop(self):
        self.p.send_signal(signal.SIGINT)
        _, status, ru = os.wait4(self.p.pid, 0)
        self.t.join(timeout=30)
        self.te.join(timeout=30)
        self.p.returncode = status
        err = b"".join(self.err).decode(errors="replace")
        return self.out, err, ru.ru_utime + ru.ru_stime


def exec_storm(n):
    # dash's loop: fork + exec + exit per iteration, as fast as this machine goes
    t0 = time.time()
    subprocess.run(["/bin/sh", "-c", f'i=0; while [ $i -lt {n} ]; do /bin/true storm-$i; i=$((i+1)); done'], check=True)
    return time.time() - t0


def connect_storm(n):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    port = srv.getsockname()[1]
    stop = False

    def accept():
        while not stop:
            try:
                c, _ = srv.accept()
                c.close()
            except OSError:
                return

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    t0 = time.time()
    for _ in range(n):
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        s.close()
    el = time.time() - t0
    stop = True
    srv.close()
    return el, port




def start_tool(cmd):
    """Starts a tool and returns it with the ids of the BPF programs it loaded (bpftool here
    cannot name a program's owner, so tools start one at a time and the new ids are theirs)."""
    ids0 = set(bpf_prog_stats())
    t = Reaped(cmd)
    t.wait_ready(ids0)
    time.sleep(1.0)
    return t, set(bpf_prog_stats()) - ids0


def ours(before, after, owned, prefix=""):
    """Run time and count, across the run, of the programs in `owned` (optionally only those
    whose name starts with prefix)."""
    rt = cnt = 0
    for pid, p in after.items():
        if pid not in owned:
            continue
        if not p.get("name", "").startswith(prefix):
            continue
        b = before.get(pid, {})
        rt += p.get("run_time_ns", 0) - b.get("run_time_ns", 0)
        cnt += p.get("run_cnt", 0) - b.get("run_cnt", 0)
    return rt, cnt


def exec_capture(podtrail, execs):
    """The exec storm on the host, captured at the same time by `podtrail capture --kinds exec`
    and by execsnoop: two rows (storm, generated, elapsed, tool, received, BPF run time, BPF
    runs, user-space CPU). Needs kernel.bpf_stats_enabled=1. Also used by
    bench/session_storm.py."""
    rows = []
    pt, pt_ids = start_tool([podtrail, "capture", "--kinds", "exec", "--log-level", LOG])
    ref, ref_ids = start_tool(["execsnoop"])
    before = bpf_prog_stats()
    c0 = (proc_cpu(pt.p.pid), proc_cpu(ref.p.pid))
    el = exec_storm(execs)
    time.sleep(1.0)
    after = bpf_prog_stats()
    pt_cpu, ref_cpu = proc_cpu(pt.p.pid) - c0[0], proc_cpu(ref.p.pid) - c0[1]
    pt_out, pt_err, _ = pt.stop()
    ref_out, _, _ = ref.stop()
    pt_seen = sum(1 for l in pt_out if b'"storm-' in l)
    ref_seen = sum(1 for l in ref_out if b"/bin/true storm-" in l)
    pt_rt, pt_cnt = ours(before, after, pt_ids, "pt_sched_exec")
    ref_rt, ref_cnt = ours(before, after, ref_ids)
    rows.append(("exec", execs, el, "podtrail", pt_seen, pt_rt, pt_cnt, pt_cpu))
    # execsnoop runs one program at execve entry and one at exit: per exec is the run time
    # over the busier program's count (other execs on the machine are in both numbers)
    ref_cnt = max([after[i].get("run_cnt", 0) - before.get(i, {}).get("run_cnt", 0) for i in ref_ids] or [1])
    rows.append(("exec", execs, el, "execsnoop", ref_seen, ref_rt, ref_cnt, ref_cpu))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--execs", type=int, default=5000)
    ap.add_argument("--connects", type=int, default=20000)
    ap.add_argument("--podtrail", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "podtrail"))
    a = ap.parse_args()
    subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"], check=True)

    rows = exec_capture(a.podtrail, a.execs)

    # --- connect storm ---
    pt, pt_ids = start_tool([a.podtrail, "capture", "--kinds", "connect,connect_result", "--log-level", LOG])
    ref, ref_ids = start_tool(["tcpstates"])
    before = bpf_prog_stats()
    c0 = (proc_cpu(pt.p.pid), proc_cpu(ref.p.pid))
    el, port = connect_storm(a.connects)
    time.sleep(1.0)
    after = bpf_prog_stats()
    pt_cpu, ref_cpu = proc_cpu(pt.p.pid) - c0[0], proc_cpu(ref.p.pid) - c0[1]
    pt_out, _, _ = pt.stop()
    ref_out, _, _ = ref.stop()
    key = f'"port":{port},'.encode()
    pt_seen = sum(1 for l in pt_out if key in l and b'"kind":"connect"' in l)
    ref_seen = sum(1 for l in ref_out if str(port).encode() in l and b"SYN_SENT" in l and b"ESTABLISHED" in l)
    # per connect: the connect hook, its syscall exit and its handshake end (all of podtrail's
    # network programs that ran), divided by the connects seen by the hook
    rt_all, _ = ours(before, after, pt_ids, "pt_")
    rt_exec, _ = ours(before, after, pt_ids, "pt_sched")
    _, c1 = ours(before, after, pt_ids, "pt_connect4")
    ref_rt, ref_cnt = ours(before, after, ref_ids)
    # tcpstates runs on every TCP state change (several per connection): per connection
    ref_cnt = max(ref_seen, 1)
    rows.append(("connect", a.connects, el, "podtrail", pt_seen, rt_all - rt_exec, c1, pt_cpu))
    rows.append(("connect", a.connects, el, "tcpstates", ref_seen, ref_rt, ref_cnt, ref_cpu))

    print(f"{'storm':8} {'generated':>9} {'rate/s':>8} {'tool':10} {'received':>8} {'lost':>5} {'BPF ns/ev':>9} {'CPU us/ev':>9}")
    for storm, n, el, tool, seen, rt, cnt, cpu in rows:
        ns = rt / max(cnt, 1)
        us = cpu * 1e6 / max(seen, 1)
        print(f"{storm:8} {n:9d} {n / el:8.0f} {tool:10} {seen:8d} {n - seen:5d} {ns:9.0f} {us:9.1f}")
    for storm in ("exec", "connect"):
        p, r = [x for x in rows if x[0] == storm]
        print(f"{storm}: podtrail/reference  BPF time {(p[5] / max(p[6], 1)) / max(r[5] / max(r[6], 1), 1e-9):.2f}x"
              f"  CPU per event {(p[7] / max(p[4], 1)) / max(r[7] / max(r[4], 1), 1e-12):.2f}x")
    subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=0"], check=False)


if __name__ == "__main__":
    sys.exit(main())
