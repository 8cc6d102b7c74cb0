#!/usr/bin/env python3
"""Cost on a busy node (issue 15): what `podtrail run` with the defaults costs beside Debian's
libbpf-tools `execsnoop` capturing the same exec storm in the same run, and what it holds in
memory with many live processes and open exec sessions.

Session storm (each round): a private containerd runs a busybox container (`sleep`); the real
`podtrail run` (default config plus the containerd socket, OTLP/JSON file sink) and
`execsnoop` both start; after --settle seconds their idle CPU is measured over --idle seconds; then ONE
`ctr task exec` session runs tests/fixtures/exec_storm.c (compiled statically), which runs
`/bin/true storm-arg` --execs times (fork + exec + wait). Measured:
  - agent CPU per exec: the process's CPU clock (all threads, ns: bench/cpuclock.py) from just before the exec
    session starts until the session's root span is in the OTLP file and the export queue is
    empty, minus the tool's idle rate times that wall time, over --execs. The same window for
    execsnoop (which also prints every other exec of the host in that window, as podtrail
    also captures them: the machine is shared).
  - execs counted: podtrail's process spans of that session (its trace) whose argv has
    `storm-arg`, each standing for `podtrail.folded.count` spans (1 when absent), summed;
    execsnoop's output lines with `storm-arg`.
  - podtrail's memory (/proc/PID/status): VmRSS and RssAnon at rest (after start and the idle
    window), VmHWM (peak RSS) and RssAnon after the storm; the ring size (config default)
    and what the BPF maps' mappings hold of RSS (/proc/PID/smaps). execsnoop's VmRSS beside.
The storm's own CPU (getrusage in exec_storm: itself and its children) is printed too.

Host capture (--capture-execs N, 0 to skip): `podtrail capture --kinds exec` against
execsnoop on a shell loop on the host: bench/capture_storm.py's exec part, reused.

Memory with live processes and sessions (--live N --sessions M, 0 to skip): a fresh
`podtrail run`; a container starts N `sleep` processes (busybox sh, `sleep &` N times), then
M `ctr task exec -d` sessions (`sleep`, left running) are opened in another container, in
steps; podtrail's VmRSS / RssAnon is printed at each step, with the per-process and
per-session slopes.

--ring-mib N runs the agent with capture.ring_mib = N (the kernel's drops are printed per
round: the smallest ring that loses nothing).

--set TABLE.KEY=VALUE (repeatable) gives every agent of the run that config value, in TOML
(e.g. --set capture.poll_ms=50: the reader's drain interval while records flow).

--perf FILE records the agent (`perf record --call-graph dwarf -p PID`) during the last round's
storm window, for `perf report -i FILE`.

Usage (root; podtrail built with `cargo build --release`):
  python3 bench/session_storm.py [--execs 20000] [--repeat 3] [--live 10000 --sessions 1000]
  python3 bench/session_storm.py --baseline OTHER_BINARY ...   # A/B: each round runs OTHER_BINARY then
      # the build, each beside its own execsnoop, and prints the per-round CPU ratio of the two
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import capture_storm  # noqa: E402  (reused: Reaped, proc_cpu, exec_capture)
import connect_storm  # noqa: E402  (reused: Containerd, Agent, scrape)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MIB = 1024 * 1024
STORM_ARGV = ["/bin/true", "storm-arg"]


def status(pid):
    """VmRSS, RssAnon, RssFile, RssShmem, VmHWM of a live process, bytes."""
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
    return out


def smaps(pid):
    """Rss and Anonymous bytes per mapping name (anonymous mappings as "[anon]")."""
    by = {}
    name = None
    for line in open(f"/proc/{pid}/smaps"):
        f = line.split()
        if "-" in f[0] and len(f) >= 5 and ":" in f[3]:
            name = " ".join(f[5:]) if len(f) > 5 else "[anon]"
            continue
        if f[0] in ("Rss:", "Anonymous:"):
            d = by.setdefault(name, [0, 0])
            d[0 if f[0] == "Rss:" else 1] += int(f[1]) * 1024
    return by


def bpf_map_rss(pid):
    """RSS of the BPF map mappings (the ring buffer, mapped twice, is the bulk)."""
    return sum(v[0] for k, v in smaps(pid).items() if "bpf" in k)


def malloc_stats(pid, log_path):
    """glibc's malloc_stats() called in the agent with gdb (it prints to the agent's stderr, its
    log file): (bytes the allocator holds from the system, bytes in use), so RssAnon splits into
    live data and freed memory glibc kept. None without gdb."""
    if not shutil.which("gdb"):
        return None
    subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "call (void)malloc_stats()"], capture_output=True)
    time.sleep(0.2)
    text = open(log_path, errors="replace").read()
    at = text.rfind("Total (incl. mmap):")
    if at < 0:
        return None
    nums = [int(l.split("=")[1]) for l in text[at:].splitlines()[1:3]]
    return tuple(nums)


def kernel_dropped(stopped_line):
    """Events the kernel could not put in the ring, from the agent's `stopped` log line."""
    try:
        return json.loads(stopped_line)["fields"]["kernel_dropped"]
    except (ValueError, KeyError):
        return None


def otlp_spans(path):
    """(span, resource attributes) of every span in an OTLP/JSON lines file; a line still being
    written is skipped."""
    out = []
    try:
        data = open(path).read()
    except FileNotFoundError:
        return out
    for line in data.split("\n")[:-1]:
        if not line.strip():
            continue
        req = json.loads(line)
        for rs in req.get("resourceSpans", []):
            res = rs.get("resource", {}).get("attributes", [])
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    out.append((s, res))
    return out


def attr(span, res, key):
    for kv in span.get("attributes", []) + res:
        if kv["key"] == key:
            v = kv["value"]
            if "intValue" in v:
                return int(v["intValue"])
            if "stringValue" in v:
                return v["stringValue"]
            if "arrayValue" in v:
                return [x.get("stringValue") for x in v["arrayValue"].get("values", [])]
            return v
    return None


def rootfs(dest, storm):
    os.makedirs(os.path.join(dest, "bin"))
    for d in ["proc", "sys", "dev", "tmp", "etc", "root"]:
        os.makedirs(os.path.join(dest, d))
    shutil.copy("/bin/busybox", os.path.join(dest, "bin/busybox"))
    for a in ["sh", "sleep", "true", "echo"]:
        os.symlink("busybox", os.path.join(dest, "bin", a))
    if storm:
        shutil.copy(storm, os.path.join(dest, "bin/exec_storm"))


def new_agent(a, tmp, name, cd, binary=None):
    """`podtrail run` with the default config plus the private containerd (connect_storm.py's
    Agent: OTLP/JSON file, JSON log, /metrics), its state directory (the disk queue, on by
    default) in its own scratch directory instead of /var/lib/podtrail."""
    state = os.path.join(tmp, name + "-state")
    # the config's last table: [process.activity] keeps its defaults
    tables = {}
    if a.ring_mib:
        tables.setdefault("capture", []).append(f"ring_mib = {a.ring_mib}")
    for kv in a.set or []:
        key, _, value = kv.partition("=")
        table, _, field = key.rpartition(".")
        if not table or not field or not value:
            sys.exit(f"--set {kv!r}: give TABLE.KEY=VALUE in TOML, e.g. capture.poll_ms=50")
        tables.setdefault(table, []).append(f"{field} = {value}")
    extra_config = "".join(f"\n[{t}]\n" + "\n".join(lines) + "\n" for t, lines in tables.items())
    return connect_storm.Agent(binary or a.podtrail, tmp, name, cd, extra_config, extra=("--state-dir", state))


def start_container(cd, tmp, storm, script):
    cid = f"ss-{os.getpid()}-{time.monotonic_ns()}"
    rfs = os.path.join(tmp, "rootfs", cid)
    rootfs(rfs, storm)
    r = cd.ctr("run", "-d", "--env", "PATH=/bin", "--rootfs", rfs, cid, "sh", "-c", script)
    if r.returncode != 0:
        raise SystemExit(f"ctr run: {r.stderr}")
    return cid, rfs


def cpu_per_exec(cpu, n):
    return cpu / n * 1e6


def session_round(cd, tmp, storm, a, perf_out, binary=None):
    cid, _ = start_container(cd, tmp, storm, "exec sleep 100000")
    agent = new_agent(a, tmp, f"run-{time.monotonic_ns()}", cd, binary)
    traces = os.path.join(agent.dir, "traces.jsonl")
    # ready once its BPF programs are loaded: its header goes through stdio, block-buffered
    # into our pipe, so waiting for the header alone timed out ("execsnoop did not start");
    # running it line-buffered would change what it costs
    snoop, _ = capture_storm.start_tool(["execsnoop"])
    pid, spid = agent.p.pid, snoop.p.pid
    rest = status(pid)
    rest_bpf = bpf_map_rss(pid)
    rest_malloc = malloc_stats(pid, agent.log_path) if a.malloc_stats else None
    # the agent's first seconds after it is ready are not rest (it read 5-9 ms/s in them against
    # 1.5-3 later): the idle window starts after --settle seconds
    time.sleep(a.settle)
    c0 = (capture_storm.proc_cpu(pid), capture_storm.proc_cpu(spid))
    time.sleep(a.idle)
    c1 = (capture_storm.proc_cpu(pid), capture_storm.proc_cpu(spid))
    idle = ((c1[0] - c0[0]) / a.idle, (c1[1] - c0[1]) / a.idle)

    perf = None
    if perf_out:
        perf = subprocess.Popen(["perf", "record", "-q", "--call-graph", "dwarf,32768", "-F", "1999", "-p", str(pid),
                                 "-o", perf_out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
    t0 = time.time()
    c0 = (capture_storm.proc_cpu(pid), capture_storm.proc_cpu(spid))
    w0 = (switches(pid), switches(spid))
    f0 = (minor_faults(pid), minor_faults(spid))
    r = cd.ctr("task", "exec", "--exec-id", f"storm{time.monotonic_ns()}", cid, "/bin/exec_storm", str(a.execs),
               *STORM_ARGV)
    if r.returncode != 0:
        raise SystemExit(f"exec_storm: {r.returncode} {r.stdout} {r.stderr}")
    out = dict(kv.split("=") for kv in r.stdout.split())
    assert int(out["ok"]) == a.execs, out
    storm_wall = time.time() - t0
    # the session's root span in the file and nothing left in the export queue
    deadline = time.time() + 300
    root = None
    while time.time() < deadline:
        spans = otlp_spans(traces)
        root = next(((s, res) for s, res in spans if not s.get("parentSpanId") and s["name"] == "exec"
                     and attr(s, res, "container.id") == cid), None)
        if root and agent.scrape().get("podtrail_export_queue_spans", 1) == 0:
            break
        time.sleep(0.25)
    else:
        raise SystemExit(f"no session root in {traces}")
    c1 = (capture_storm.proc_cpu(pid), capture_storm.proc_cpu(spid))
    w1 = (switches(pid), switches(spid))
    f1 = (minor_faults(pid), minor_faults(spid))
    wall = time.time() - t0
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=120)
    after = status(pid)
    smap = smaps(pid)
    after_malloc = malloc_stats(pid, agent.log_path) if a.malloc_stats else None
    time.sleep(8)  # the agent trims on its first calm tick after the burst and again 5 ticks later
    settled = status(pid)
    trace = root[0]["traceId"]
    mine = [(s, res) for s, res in spans if s["traceId"] == trace]
    # the `true` images (a child's span for its fork image, a copy of exec_storm's argv, is not one)
    storm_spans = [(s, res) for s, res in mine if attr(s, res, "process.command_args") == STORM_ARGV]
    counted = sum(attr(s, res, "podtrail.folded.count") or 1 for s, res in storm_spans)
    # execsnoop: until its count is stable (it prints every exec, perf buffer)
    seen = -1
    while True:
        now = sum(1 for l in snoop.out if l.startswith(b"true ") and l.rstrip().endswith(b" /bin/true storm-arg"))
        if now == seen:
            break
        seen = now
        time.sleep(0.5)
    snoop_rss = status(spid)["VmRSS"]
    if a.keep:
        open(os.path.join(agent.dir, "execsnoop.out"), "wb").write(b"".join(snoop.out))
    snoop.stop()
    stopped = agent.stop()
    cd.remove(cid)
    n = a.execs
    return {
        "storm_s": int(out["ns"]) / 1e9, "storm_cpu": int(out["cpu_ns"]) / 1e9, "storm_wall": storm_wall, "wall": wall,
        "idle": idle,
        "pt_cpu": max(c1[0] - c0[0] - idle[0] * wall, 0.0), "pt_cpu_raw": c1[0] - c0[0],
        "snoop_cpu": max(c1[1] - c0[1] - idle[1] * wall, 0.0), "snoop_cpu_raw": c1[1] - c0[1],
        "pt_counted": counted, "pt_spans": len(storm_spans), "session_spans": len(mine),
        "session_processes": attr(*root, "podtrail.session.processes"),
        "snoop_counted": seen, "n": n,
        "switches": (w1[0] - w0[0], w1[1] - w0[1]),
        "faults": (f1[0] - f0[0], f1[1] - f0[1]),
        "rest": rest, "rest_bpf": rest_bpf, "after": after, "settled": settled, "after_bpf": sum(v[0] for k, v in smap.items() if "bpf" in k), "smaps": smap, "snoop_rss": snoop_rss,
        "malloc": (rest_malloc, after_malloc),
        "kernel_dropped": kernel_dropped(stopped),
        "stopped": stopped,
    }


def minor_faults(pid):
    """Minor page faults of the whole process so far (exited threads included): each is a page
    the kernel had to map, most of them zeroed first, as the allocator takes back memory it gave
    away."""
    # /proc/PID/stat: the command is in parentheses and may hold spaces; minflt is field 10
    stat = open(f"/proc/{pid}/stat").read()
    return int(stat[stat.rindex(")") + 2:].split()[7])


def switches(pid):
    """Context switches (voluntary and not) of the live threads of `pid` so far: how often the
    tool's threads slept and woke (a thread that exited takes its count with it)."""
    n = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in open(f"/proc/{pid}/task/{t}/status"):
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    n += int(line.split()[1])
        except FileNotFoundError:
            pass  # exited meanwhile
    return n


def memory_figure(cd, tmp, a, binary=None):
    """podtrail run's memory with --live processes in one container and --sessions open exec
    sessions in another, measured in steps."""
    agent = new_agent(a, tmp, f"mem-{time.monotonic_ns()}", cd, binary)
    pid = agent.p.pid
    time.sleep(2)
    steps = [("at rest", 0, 0, status(pid))]
    script = (f"i=0; while [ $i -lt {a.live} ]; do sleep 100000 & i=$((i+1)); done; echo started > /tmp/ok; "
              "exec sleep 100000")
    t0 = time.time()
    live_cid, live_rfs = start_container(cd, tmp, None, script)
    while not os.path.exists(os.path.join(live_rfs, "tmp/ok")):
        time.sleep(0.5)
        if time.time() - t0 > 1200:
            raise SystemExit("the live processes did not start")
    time.sleep(3)  # the agent catches up with the ring
    print(f"# {a.live} live processes started in {time.time() - t0:.0f} s", flush=True)
    steps.append((f"{a.live} live processes", a.live, 0, status(pid)))
    sess_cid, _ = start_container(cd, tmp, None, "exec sleep 100000")
    time.sleep(1)
    opened = 0
    marks = sorted({m for m in (a.sessions // 4, a.sessions // 2, a.sessions) if m > 0})
    t0 = time.time()
    for mark in marks:
        while opened < mark:
            r = cd.ctr("task", "exec", "-d", "--exec-id", f"s{opened}", sess_cid, "sleep", "100000")
            if r.returncode != 0:
                raise SystemExit(f"ctr task exec -d (session {opened}): {r.stderr}")
            opened += 1
        time.sleep(3)
        print(f"# {opened} sessions open after {time.time() - t0:.0f} s", flush=True)
        steps.append((f"+ {opened} open sessions", a.live, opened, status(pid)))
    m = agent.scrape()
    sessions_metric = {k: v for k, v in m.items() if "session" in k and "bucket" not in k}
    smap = smaps(pid)
    agent.stop()
    cd.remove(sess_cid)
    cd.remove(live_cid)
    return steps, sessions_metric, smap


def mib(b):
    return f"{b / MIB:.1f}"


def print_storm(rows, a, ring_mib):
    n = a.execs
    med = lambda f: statistics.median(f(r) for r in rows)
    print(f"\nsession storm: {n} x `/bin/true storm-arg` (fork + exec + wait) in one `ctr task exec`, "
          f"{len(rows)} rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    hdr = ("round", "storm s", "storm µs/exec", "idle ms/s pt / snoop", "podtrail µs/exec", "execsnoop µs/exec",
           "ratio", "podtrail counted (spans)", "execsnoop lines", "kernel dropped")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "|".join("---" for _ in hdr) + "|")
    for i, r in enumerate(rows):
        print("| " + " | ".join(str(x) for x in (
            i + 1, f"{r['storm_s']:.1f}", f"{r['storm_cpu'] / n * 1e6:.0f}",
            f"{r['idle'][0] * 1e3:.1f} / {r['idle'][1] * 1e3:.1f}", f"{cpu_per_exec(r['pt_cpu'], n):.1f}",
            f"{cpu_per_exec(r['snoop_cpu'], n):.1f}", f"{r['pt_cpu'] / max(r['snoop_cpu'], 1e-9):.2f}x",
            f"{r['pt_counted']} ({r['pt_spans']})", r["snoop_counted"], r["kernel_dropped"])) + " |")
    print("\ncontext switches in the storm's window (the threads' sleeps and wakeups), per 1 000 execs: " +
          ", ".join(f"round {i + 1} podtrail {r['switches'][0] * 1000 / n:.1f}, execsnoop {r['switches'][1] * 1000 / n:.1f}"
                    for i, r in enumerate(rows)))
    print("minor page faults in the storm's window, per 1 000 execs: " +
          ", ".join(f"round {i + 1} podtrail {r['faults'][0] * 1000 / n:.1f}, execsnoop {r['faults'][1] * 1000 / n:.1f}"
                    for i, r in enumerate(rows)))
    print("\nmemory of podtrail run (MiB): rest VmRSS / RssAnon / BPF map mappings, peak VmHWM, after VmRSS / "
          "RssAnon (as the root span is exported, and 8 s later); execsnoop VmRSS")
    for i, r in enumerate(rows):
        print(f"  round {i + 1}: rest {mib(r['rest']['VmRSS'])} / {mib(r['rest']['RssAnon'])} / {mib(r['rest_bpf'])}, "
              f"peak {mib(r['after']['VmHWM'])}, after {mib(r['after']['VmRSS'])} / {mib(r['after']['RssAnon'])}, "
              f"8 s later {mib(r['settled']['VmRSS'])} / {mib(r['settled']['RssAnon'])}; execsnoop {mib(r['snoop_rss'])}")
    for i, r in enumerate(rows):
        ms = r["malloc"]
        if ms[0] and ms[1]:
            print(f"  round {i + 1}: glibc malloc holds / has in use: rest {mib(ms[0][0])} / {mib(ms[0][1])}, "
                  f"after {mib(ms[1][0])} / {mib(ms[1][1])}")
    top = sorted(rows[-1]["smaps"].items(), key=lambda kv: -kv[1][0])[:8]
    print("  last round, after the storm, RSS by mapping (MiB, Rss / Anonymous): " +
          ", ".join(f"{k} {mib(v[0])} / {mib(v[1])}" for k, v in top))
    ring = [l for l in ring_mib.splitlines() if l.strip().startswith("ring_mib")]
    if a.ring_mib:
        print(f"  ring: ring_mib = {a.ring_mib} (--ring-mib)")
    else:
        print(f"  ring: {ring[0].strip() if ring else '(see podtrail.example.toml)'} (default config)")

    pt, sn = med(lambda r: r["pt_cpu"]), med(lambda r: r["snoop_cpu"])
    print(f"\nmedians: agent CPU per exec podtrail {pt / n * 1e6:.1f} µs, execsnoop {sn / n * 1e6:.1f} µs "
          f"({pt / max(sn, 1e-9):.2f}x; median of the rounds' ratios "
          f"{med(lambda r: r['pt_cpu'] / max(r['snoop_cpu'], 1e-9)):.2f}x); counted podtrail {med(lambda r: r['pt_counted']):.0f} / {n}, execsnoop "
          f"{med(lambda r: r['snoop_counted']):.0f} / {n}; RSS rest {mib(med(lambda r: r['rest']['VmRSS']))} MiB "
          f"(RssAnon {mib(med(lambda r: r['rest']['RssAnon']))}), peak {mib(med(lambda r: r['after']['VmHWM']))}, "
          f"after {mib(med(lambda r: r['after']['VmRSS']))} (RssAnon {mib(med(lambda r: r['after']['RssAnon']))}; "
          f"8 s later {mib(med(lambda r: r['settled']['RssAnon']))})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--execs", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--idle", type=float, default=3.0, help="seconds of idle CPU measured before each storm")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds the agent and execsnoop run before the idle window (their start-up is not rest)")
    ap.add_argument("--capture-execs", type=int, default=5000, help="host storm for podtrail capture (0: skip)")
    ap.add_argument("--live", type=int, default=10000, help="live processes for the memory figure (0: skip it)")
    ap.add_argument("--sessions", type=int, default=1000, help="open exec sessions for the memory figure")
    ap.add_argument("--perf", help="perf record the agent during the last round's storm into this file")
    ap.add_argument("--ring-mib", type=int, default=0, help="capture.ring_mib for the agent (0: the default)")
    ap.add_argument("--set", action="append", metavar="TABLE.KEY=VALUE",
                    help="a config value for every agent of the run, in TOML (e.g. capture.poll_ms=50); repeatable")
    ap.add_argument("--malloc-stats", action="store_true",
                    help="glibc malloc_stats() in the agent (gdb) at rest and after the storm: held vs in use")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (traces, logs)")
    ap.add_argument("--podtrail", default=os.path.join(ROOT, "target", "release", "podtrail"))
    ap.add_argument("--baseline", help="another podtrail binary (e.g. main's) run in the same invocation: each "
                    "round runs it, then --podtrail, each beside its own execsnoop; every figure is printed for both")
    a = ap.parse_args()
    a.podtrail = os.path.abspath(a.podtrail)
    variants = [("baseline", os.path.abspath(a.baseline)), ("podtrail", a.podtrail)] if a.baseline else [("", a.podtrail)]
    # each binary's own defaults (a baseline may have another default ring)
    configs = {b: subprocess.run([b, "config"], capture_output=True, text=True).stdout for _, b in variants}
    tmp = tempfile.mkdtemp(prefix="pt-sstorm-")
    storm = os.path.join(tmp, "exec_storm")
    subprocess.run(["cc", "-static", "-O2", "-o", storm, os.path.join(ROOT, "tests/fixtures/exec_storm.c")], check=True)
    cd = connect_storm.Containerd(tmp)
    rows = {v: [] for v, _ in variants}
    mems, caps = {}, {}
    try:
        for rep in range(a.repeat):
            for v, binary in variants:
                perf = a.perf if a.perf and rep == a.repeat - 1 and v != "baseline" else None
                row = session_round(cd, tmp, storm, a, perf, binary)
                brief = {k: v for k, v in row.items() if k not in ("smaps",)}
                print(f"# round {rep + 1} {v}: {brief}", flush=True)
                rows[v].append(row)
        if a.live:
            for v, binary in variants:
                mems[v] = memory_figure(cd, tmp, a, binary)
    finally:
        cd.stop()
    if a.capture_execs:
        subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"], check=True)
        try:
            for _ in range(a.repeat):
                for v, binary in variants:
                    caps.setdefault(v, []).append(capture_storm.exec_capture(binary, a.capture_execs))
        finally:
            subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=0"], check=False)
    for v, binary in variants:
        if v:
            print(f"\n======== {v}: {binary}")
        report(rows[v], caps.get(v), mems.get(v), a, configs[binary])
    if a.baseline:
        b, p = rows["baseline"], rows["podtrail"]
        ratios = [y["pt_cpu"] / max(x["pt_cpu"], 1e-9) for x, y in zip(b, p)]
        print(f"\npodtrail / baseline agent CPU per exec, per round (same invocation): "
              + ", ".join(f"{r:.2f}x" for r in ratios) + f"; median {statistics.median(ratios):.2f}x")
    if a.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def report(rows, cap, mem, a, ring_mib):
    if rows:
        print_storm(rows, a, ring_mib)
    if cap:
        print(f"\nhost storm, `podtrail capture --kinds exec` against execsnoop ({a.capture_execs} execs, "
              "bench/capture_storm.py's exec part):")
        ratios = []
        for rs in cap:
            p, s = rs
            pu, su = p[7] * 1e6 / max(p[4], 1), s[7] * 1e6 / max(s[4], 1)
            ratios.append(pu / max(su, 1e-9))
            print(f"  received podtrail {p[4]} execsnoop {s[4]}; CPU µs/exec podtrail {pu:.1f} execsnoop {su:.1f} "
                  f"({ratios[-1]:.2f}x)")
        print(f"  median ratio {statistics.median(ratios):.2f}x")

    if mem:
        steps, metrics, smap = mem
        print("\nmemory with live processes and open sessions (podtrail run, defaults):")
        print("| step | live processes | open sessions | VmRSS MiB | RssAnon MiB | VmHWM MiB |")
        print("|---|---|---|---|---|---|")
        for name, live, sess, st in steps:
            print(f"| {name} | {live} | {sess} | {mib(st['VmRSS'])} | {mib(st['RssAnon'])} | {mib(st['VmHWM'])} |")
        rest, live_st = steps[0][3], steps[1][3]
        print(f"  per live process: {(live_st['RssAnon'] - rest['RssAnon']) / max(a.live, 1):.0f} bytes of RssAnon")
        if len(steps) > 2:
            last = steps[-1]
            print(f"  per open session: {(last[3]['RssAnon'] - live_st['RssAnon']) / max(last[2], 1):.0f} bytes of "
                  "RssAnon")
        print(f"  session metrics: {metrics}")
        top = sorted(smap.items(), key=lambda kv: -kv[1][0])[:8]
        print("  RSS by mapping (MiB, Rss / Anonymous): " + ", ".join(f"{k} {mib(v[0])} / {mib(v[1])}" for k, v in top))


if __name__ == "__main__":
    main()
