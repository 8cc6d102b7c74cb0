#!/usr/bin/env python3
"""The terminal transcript's cost (issue 18), with it and without it, in one run.

Each round runs the real `podtrail run` twice on a private containerd with a busybox container:
once with `[transcript] enabled = false` (the reference: the tty programs are not attached) and
once with the defaults (transcript on). In each:
  - host read storm: `dd if=/dev/zero of=/dev/null bs=1 count=N` on the host (N read(2) calls,
    none on a traced terminal: what every read on a busy node pays for the sys_exit_read hook):
    dd's CPU per read, and the tty programs' own BPF run time per call (kernel BPF statistics,
    `kernel.bpf_stats_enabled=1`, programs named pt_tty_*);
  - one interactive session: `ctr task exec -t ... sh` on a pseudo-terminal, typing --lines
    lines (`echo line-K`), then `exit`: the agent's CPU (utime+stime, all threads) from just
    before the session until its root span is in the OTLP file and the export queue is empty,
    minus its idle rate over that window; the transcript lines found in the file.

Usage (root; podtrail built with `cargo build --release`):
  python3 bench/transcript_cost.py [--reads 2000000] [--lines 1000] [--rounds 2]
"""
import argparse
import os
import pty
import resource
import select
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import capture_storm  # noqa: E402  (bpf_prog_stats, proc_cpu)
import connect_storm  # noqa: E402  (Containerd, Agent)
import session_storm  # noqa: E402  (start_container, otlp_spans, attr)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def tty_bpf_ns():
    """Run time and calls of the loaded pt_tty_* programs (summed)."""
    t = n = 0
    for p in capture_storm.bpf_prog_stats().values():
        if str(p.get("name", "")).startswith("pt_tty"):
            t += p.get("run_time_ns", 0)
            n += p.get("run_cnt", 0)
    return t, n


def read_storm(n):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={n}"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def typed_session(cd, cid, lines):
    """`ctr task exec -t` of sh on a pty, typing `lines` lines, each once the previous echoed."""
    master, slave = pty.openpty()
    p = subprocess.Popen(["ctr", "--address", cd.sock, "--namespace", "default", "task", "exec", "-t", "--exec-id", f"tty{time.monotonic_ns()}", cid, "sh"],
                         stdin=slave, stdout=slave, stderr=slave, close_fds=True, start_new_session=True)
    os.close(slave)
    out = b""

    def until(marker, secs=10):
        nonlocal out
        end = time.time() + secs
        while marker not in out and time.time() < end:
            r, _, _ = select.select([master], [], [], 0.1)
            if r:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    return
        if marker not in out:
            raise SystemExit(f"the session never printed {marker!r}: {out[-500:]!r}")

    until(b"#")
    for k in range(lines):
        os.write(master, f"echo line-$(({k}+0))\r".encode())
        until(f"line-{k}\r".encode())
        out = out[-200:]
    os.write(master, b"exit\r")
    p.wait(timeout=60)
    os.close(master)


def one(a, cd, cid, tmp, mode):
    extra = "" if mode == "on" else "\n[transcript]\nenabled = false\n"
    name = f"{mode}-{time.monotonic_ns()}"
    agent = connect_storm.Agent(a.podtrail, tmp, name, cd, extra,
                                extra=("--state-dir", os.path.join(tmp, name + "-state")))
    pid = agent.p.pid
    c0 = capture_storm.proc_cpu(pid)
    time.sleep(a.idle)
    idle = (capture_storm.proc_cpu(pid) - c0) / a.idle

    b0 = tty_bpf_ns()
    dd_cpu = read_storm(a.reads)
    b1 = tty_bpf_ns()

    traces = os.path.join(agent.dir, "traces.jsonl")
    t0 = time.time()
    c0 = capture_storm.proc_cpu(pid)
    typed_session(cd, cid, a.lines)
    deadline = time.time() + 120
    while time.time() < deadline:
        spans = session_storm.otlp_spans(traces)
        roots = [s for s, res in spans if not s.get("parentSpanId") and s["name"] == "exec"
                 and session_storm.attr(s, res, "container.id") == cid]
        if roots and agent.scrape().get("podtrail_export_queue_spans", 1) == 0:
            break
        time.sleep(0.25)
    else:
        raise SystemExit(f"no session root in {traces}")
    wall = time.time() - t0
    raw = capture_storm.proc_cpu(pid) - c0
    cpu = max(raw - idle * wall, 0.0)
    trace = roots[-1]["traceId"]
    lines = sum(len(s.get("events") or []) for s, _ in spans if s["traceId"] == trace and s["name"] == "transcript")
    agent.stop()
    return {"mode": mode, "dd_ns": dd_cpu / a.reads * 1e9, "bpf_calls": b1[1] - b0[1],
            "bpf_ns": (b1[0] - b0[0]) / max(b1[1] - b0[1], 1), "cpu_ms": cpu * 1e3, "raw_ms": raw * 1e3,
            "wall_s": wall, "lines": lines}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--podtrail", default=os.path.join(ROOT, "target/release/podtrail"))
    ap.add_argument("--reads", type=int, default=2_000_000)
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--idle", type=float, default=3.0)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("root needed (BPF, containerd)")
    subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
    tmp = tempfile.mkdtemp(prefix="transcript-cost-")
    cd = connect_storm.Containerd(tmp)
    try:
        cid, _ = session_storm.start_container(cd, tmp, None, "exec sleep 100000")
        rows = []
        for r in range(a.rounds):
            for mode in ("off", "on"):
                row = one(a, cd, cid, tmp, mode)
                row["round"] = r + 1
                rows.append(row)
                print(row, flush=True)
        print(f"\n{'round':>5} {'transcript':>10} {'dd ns/read':>10} {'tty BPF calls':>13} {'tty BPF ns/call':>15} "
              f"{'agent CPU ms/session':>20} {'(raw, wall s)':>14} {'lines kept':>10}")
        for x in rows:
            print(f"{x['round']:>5} {x['mode']:>10} {x['dd_ns']:>10.0f} {x['bpf_calls']:>13} {x['bpf_ns']:>15.0f} "
                  f"{x['cpu_ms']:>20.1f} {x['raw_ms']:>7.1f} {x['wall_s']:>6.1f} {x['lines']:>10}")
        for r in range(1, a.rounds + 1):
            off = next(x for x in rows if x["round"] == r and x["mode"] == "off")
            on = next(x for x in rows if x["round"] == r and x["mode"] == "on")
            print(f"round {r}: on/off dd CPU per read {on['dd_ns'] / max(off['dd_ns'], 1e-9):.2f}x, "
                  f"agent CPU per session (raw, idle not subtracted) {on['raw_ms'] / max(off['raw_ms'], 1e-9):.2f}x, "
                  f"+{(on['raw_ms'] - off['raw_ms']) / max(a.lines, 1) * 1e3:.0f} µs per typed line")
    finally:
        cd.stop()


if __name__ == "__main__":
    main()
