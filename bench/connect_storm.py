#!/usr/bin/env python3
"""Outbound benchmark (issue 6): the agent's CPU per connect in the default scope under a
connect storm from a real container, with and without folding, beside the storm's own CPU
per connect with no agent running, all measured in the same invocation.

The storm: tests/fixtures/connect_flood.c (compiled statically here) runs as the init's child
of a busybox container (a private containerd, `ctr run --net-host`) and connects ADDRS x PORTS
destinations ROUNDS times each, one blocking socket per connect. The destinations are a /24
of 198.18.0.0/15 (external to the cluster) routed to this host as local addresses with nothing
listening, so every connect is refused at once and the count is exact.

Modes, each a fresh `podtrail run` (OTLP/JSON file sink on /tmp, default config otherwise):
  none       no agent: the reference (the storm's own CPU per connect)
  fold       the defaults: fold_window_ms = 10000, rate_per_s = 20, burst = 100
  nofold     fold_window_ms = 0 (one record per connect), the default rate limit
  nofold-nl  fold_window_ms = 0 and rate_per_s = 0: every connect its own trace (3 spans)

Agent CPU is the agent process's CPU clock (all threads, in ns: bench/cpuclock.py) from just
before the container starts until /metrics says every connect is accounted for (counted,
folded or suppressed), no record is open and the export queue is empty. The agent's idle CPU,
measured over 3 s before each storm, is subtracted at its rate over the storm's duration
(shown as "idle"). The storm's own CPU (getrusage in connect_flood: user + system, which
includes the BPF programs that run in its connect(2) calls) is shown for every mode.

Usage (root, after `cargo build --release`):
  python3 bench/connect_storm.py [--addrs 10 --ports 10 --rounds 1000] [--repeat 2]
"""
import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time

from cpuclock import proc_cpu  # noqa: F401  (the per-process CPU clock, ns)
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def scrape(url):
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    m = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        k, v = line.rsplit(" ", 1)
        try:
            m[k] = float(v)
        except ValueError:
            pass
    return m


class Containerd:
    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "cd")
        os.makedirs(self.dir)
        self.sock = os.path.join(self.dir, "c.sock")
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(
                f'version = 2\nroot = "{self.dir}/root"\nstate = "{self.dir}/state"\n'
                'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", '
                '"io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", '
                '"io.containerd.snapshotter.v1.aufs"]\n'
                f'[grpc]\n  address = "{self.sock}"\n[ttrpc]\n  address = "{self.sock}.ttrpc"\n'
                '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
            )
        self.log = open(os.path.join(self.dir, "containerd.log"), "w")
        self.p = subprocess.Popen(["containerd", "--config", cfg], stdout=self.log, stderr=self.log)
        deadline = time.time() + 20
        while not (os.path.exists(self.sock) and self.ctr("version").returncode == 0):
            if time.time() > deadline:
                raise SystemExit("containerd did not come up")
            time.sleep(0.1)

    def ctr(self, *args):
        return subprocess.run(["ctr", "--address", self.sock, "--namespace", "default", *args], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)

    def remove(self, cid):
        self.ctr("task", "kill", "-s", "SIGKILL", cid)
        for _ in range(100):
            if self.ctr("task", "delete", "-f", cid).returncode == 0:
                break
            time.sleep(0.05)
        self.ctr("container", "delete", cid)

    def stop(self):
        self.p.terminate()
        self.p.wait(timeout=30)


def rootfs(dest, flood):
    os.makedirs(os.path.join(dest, "bin"))
    for d in ["proc", "sys", "dev", "tmp", "etc", "root"]:
        os.makedirs(os.path.join(dest, d))
    shutil.copy("/bin/busybox", os.path.join(dest, "bin/busybox"))
    for a in ["sh", "sleep", "echo"]:
        os.symlink("busybox", os.path.join(dest, "bin", a))
    shutil.copy(flood, os.path.join(dest, "bin/connect_flood"))


class Agent:
    def __init__(self, podtrail, tmp, name, cd, activity, extra=()):
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir)
        cfg = os.path.join(self.dir, "podtrail.toml")
        with open(cfg, "w") as f:
            f.write(f'[process]\ncontainerd_socket = "{cd.sock}"\ncontainerd_namespaces = ["default"]\n\n'
                    f"[process.activity]\n{activity}\n")
        self.metrics = f"127.0.0.1:{free_port()}"
        self.log_path = os.path.join(self.dir, "podtrail.log")
        self.p = subprocess.Popen(
            [podtrail, "--log-json", "run", "--config", cfg, "--metrics-listen", self.metrics, "--otlp-file",
             os.path.join(self.dir, "traces.jsonl"), *extra],
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"), stdin=subprocess.DEVNULL)
        deadline = time.time() + 60
        while "podtrail is running" not in open(self.log_path).read():
            if self.p.poll() is not None or time.time() > deadline:
                raise SystemExit(f"podtrail did not start:\n{open(self.log_path).read()}")
            time.sleep(0.1)

    def scrape(self):
        return scrape(f"http://{self.metrics}/metrics")

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=120)
        log = open(self.log_path).read()
        stopped = [l for l in log.splitlines() if '"stopped"' in l]
        return stopped[-1] if stopped else log[-2000:]


def outbound(m):
    g = lambda k: int(m.get(k, 0))
    return {
        "records": g("podtrail_outbound_records_total"),
        "recorded": g('podtrail_outbound_connects_total{how="recorded"}'),
        "folded": g('podtrail_outbound_connects_total{how="folded"}'),
        "suppressed": g('podtrail_events_lost_total{reason="rate_limit"}'),
        "open": g('podtrail_outbound_pending{what="open"}'),
        "queue": g("podtrail_export_queue_spans"),
        "spans": g("podtrail_spans_exported_total"),
        "spans_lost": sum(int(v) for k, v in m.items() if k.startswith("podtrail_spans_lost_total")),
        "ring_lost": g('podtrail_events_lost_total{reason="ring_buffer"}'),
    }


def run_storm(cd, tmp, flood, net, a, agent):
    cid = f"storm-{os.getpid()}-{time.monotonic_ns()}"
    rfs = os.path.join(tmp, "rootfs", cid)
    rootfs(rfs, flood)
    n = a.addrs * a.ports * a.rounds
    idle = 0.0
    if agent:
        c0 = proc_cpu(agent.p.pid)
        time.sleep(3)
        idle = (proc_cpu(agent.p.pid) - c0) / 3
        cpu0 = proc_cpu(agent.p.pid)
    t0 = time.time()
    script = (f"/bin/connect_flood {net}.1 {a.addrs} 20000 {a.ports} {a.rounds} > /tmp/out 2>&1; "
              "echo $? > /tmp/rc; exec sleep 3600")
    r = cd.ctr("run", "-d", "--env", "PATH=/bin", "--net-host", "--rootfs", rfs, cid, "sh", "-c", script)
    if r.returncode != 0:
        raise SystemExit(f"ctr run: {r.stderr}")
    while not os.path.exists(os.path.join(rfs, "tmp/rc")):
        time.sleep(0.05)
    storm_done = time.time()
    out = dict(kv.split("=") for kv in open(os.path.join(rfs, "tmp/out")).read().split())
    assert int(out["connects"]) == n and int(out["refused"]) == n, out
    row = {"connects": n, "storm_s": int(out["ns"]) / 1e9, "storm_cpu": int(out["cpu_ns"]) / 1e9, "idle": idle}
    if agent:
        # until every connect is accounted for, nothing is open and the queue is empty (stable)
        prev = None
        deadline = time.time() + 300
        while time.time() < deadline:
            o = outbound(agent.scrape())
            done = o["recorded"] + o["folded"] + o["suppressed"] >= n and o["open"] == 0 and o["queue"] == 0
            if done and prev == o:
                break
            prev = o if done else None
            time.sleep(0.5)
        cpu1 = proc_cpu(agent.p.pid)
        wall = time.time() - t0
        row.update(o)
        row["agent_cpu_raw"] = cpu1 - cpu0
        row["agent_cpu"] = max(cpu1 - cpu0 - idle * wall, 0.0)
        row["wall"] = wall
    else:
        row["wall"] = storm_done - t0
    cd.remove(cid)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addrs", type=int, default=10)
    ap.add_argument("--ports", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--podtrail", default=os.path.join(ROOT, "target", "release", "podtrail"))
    ap.add_argument("--ring-mib", type=int, default=0, help="capture.ring_mib for the agent (0: the default)")
    a = ap.parse_args()
    modes = [
        ("none", None),
        ("fold", "fold_window_ms = 10000\nrate_per_s = 20\nburst = 100"),
        ("nofold", "fold_window_ms = 0\nrate_per_s = 20\nburst = 100"),
        ("nofold-nl", "fold_window_ms = 0\nrate_per_s = 0"),
    ]
    tmp = tempfile.mkdtemp(prefix="pt-cstorm-")
    flood = os.path.join(tmp, "connect_flood")
    subprocess.run(["cc", "-static", "-O2", "-o", flood, os.path.join(ROOT, "tests/fixtures/connect_flood.c")],
                   check=True)
    net = f"198.18.{50 + os.getpid() % 50}"
    subprocess.run(["ip", "route", "add", "local", f"{net}.0/24", "dev", "lo"], check=True)
    cd = Containerd(tmp)
    rows = []
    try:
        for rep in range(a.repeat):
            order = modes[rep % len(modes):] + modes[:rep % len(modes)]
            for name, activity in order:
                ring = f"\n\n[capture]\nring_mib = {a.ring_mib}\n" if a.ring_mib else ""
                agent = Agent(a.podtrail, tmp, f"{name}-{rep}", cd, activity + ring) if activity else None
                row = run_storm(cd, tmp, flood, net, a, agent)
                if agent:
                    row["stopped"] = agent.stop()
                row["mode"], row["rep"] = name, rep + 1
                rows.append(row)
                print(f"# {name} round {rep + 1}: {row}", flush=True)
    finally:
        cd.stop()
        subprocess.run(["ip", "route", "del", "local", f"{net}.0/24", "dev", "lo"])
    n = a.addrs * a.ports * a.rounds
    print(f"\nstorm: {n} connects ({a.addrs * a.ports} destinations x {a.rounds}), {len(rows)} runs")
    hdr = ("mode", "round", "storm s", "storm µs/conn", "records", "folded", "suppressed", "spans", "lost",
           "idle ms/s", "agent µs/conn")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "|".join("---" for _ in hdr) + "|")
    for r in rows:
        agent = r.get("agent_cpu")
        print("| " + " | ".join(str(x) for x in (
            r["mode"], r["rep"], f"{r['storm_s']:.2f}", f"{r['storm_cpu'] / n * 1e6:.2f}", r.get("records", "-"),
            r.get("folded", "-"), r.get("suppressed", "-"), r.get("spans", "-"), r.get("spans_lost", "-"),
            f"{r['idle'] * 1e3:.1f}" if agent is not None else "-",
            f"{agent / n * 1e6:.2f}" if agent is not None else "-")) + " |")
    med = lambda mode, k: statistics.median(r[k] for r in rows if r["mode"] == mode) / n * 1e6
    ref = med("none", "storm_cpu")
    print(f"\nmedians, µs per connect: storm alone {ref:.2f}")
    for mode in ("fold", "nofold", "nofold-nl"):
        ag = med(mode, "agent_cpu")
        print(f"  {mode:10} agent {ag:.2f} ({ag / ref:.2f}x the storm's own), storm with agent "
              f"{med(mode, 'storm_cpu'):.2f} ({med(mode, 'storm_cpu') / ref:.2f}x)")
    print(f"  nofold / fold agent CPU: {med('nofold', 'agent_cpu') / med('fold', 'agent_cpu'):.2f}x; "
          f"nofold-nl / fold: {med('nofold-nl', 'agent_cpu') / med('fold', 'agent_cpu'):.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
