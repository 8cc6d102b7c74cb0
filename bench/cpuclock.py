"""The CPU time of another process, for the benches that compare tools' CPU per event.

`/proc/PID/stat`'s utime + stime count in clock ticks (10 ms here): a 3 s idle window read
0 or 1 tick, and that one tick, subtracted as an idle rate over a 20 s storm, moved a
storm's figure by several µs per exec. The kernel's per-process CPU clock
(clock_getcpuclockid(3): clock id `(~pid << 3) | CPUCLOCK_SCHED`) reads the scheduler's
runtime of every thread of the process, the exited ones too, in ns.
"""
import time

CPUCLOCK_SCHED = 2


def proc_cpu(pid):
    """CPU time (user + system, all threads, exited ones too) of process `pid` so far, seconds."""
    return time.clock_gettime_ns(((~pid) << 3) | CPUCLOCK_SCHED) / 1e9
