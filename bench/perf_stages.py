#!/usr/bin/env python3
"""Where the agent's CPU goes, per pipeline stage, from a `perf record --call-graph dwarf` of
`podtrail run` (bench/session_storm.py --perf FILE makes one).

Each sample is billed to the stage of its outermost podtrail task frame (the ring reader, the
process stage, the rules stage, the span stage, export, metrics); samples with none (the tokio
scheduler parking, the kernel switching tasks) are "runtime". Per stage it prints the hottest
leaf functions and the innermost podtrail function of its samples; then the share of samples
in the allocator (malloc/free/memmove leaves) with the podtrail function that called it.

Usage: python3 bench/perf_stages.py perf.data
"""
import collections
import re
import subprocess
import sys

STAGES = [
    ("capture (ring reader, decode)", ("podtrail::capture::",)),
    ("process stage (table, sessions)", ("podtrail::process::",)),
    ("rules stage (alerts)", ("podtrail::rules::",)),
    ("span stage (span building, budgets, hold)", ("podtrail::spans::",)),
    ("export (redaction, OTLP/JSON, queue, file)", ("podtrail::export::", "podtrail::redact::")),
    ("metrics", ("podtrail::metrics", "prometheus_client::")),
    ("enrich, attribute", ("podtrail::enrich::", "podtrail::attribute::")),
]
ALLOC = {"malloc", "_int_malloc", "cfree@GLIBC_2.2.5", "_int_free", "malloc_consolidate", "unlink_chunk.constprop.0",
         "realloc", "_int_realloc", "__libc_calloc", "__memmove_avx_unaligned_erms", "_int_free_merge_chunk",
         "_int_free_create_chunk", "__memset_avx2_unaligned_erms"}
GENERIC = ("alloc::", "core::", "<alloc", "<core", "hashbrown", "__rust", "_RN", "std::")


def samples(perf_data):
    out = subprocess.run(["perf", "script", "-i", perf_data, "-F", "comm,tid,period,ip,sym", "--no-inline"],
                         capture_output=True, text=True, check=True).stdout
    cur = None
    for line in out.splitlines():
        if not line.strip():
            if cur:
                yield cur
            cur = None
        elif not line.startswith(("\t", " ")):
            cur = []
        elif cur is not None:
            parts = line.strip().split(None, 1)
            cur.append(re.sub(r"::h[0-9a-f]{16}$", "", parts[1]) if len(parts) > 1 else "?")
    if cur:
        yield cur


def stage_of(stack):
    for frame in reversed(stack):  # outermost first
        for name, prefixes in STAGES:
            if frame.startswith(prefixes):
                return name
    return "runtime (scheduler, task switches)"


def main():
    all_ = list(samples(sys.argv[1]))
    total = len(all_)
    by = collections.defaultdict(list)
    for s in all_:
        by[stage_of(s)].append(s)
    print(f"{total} samples")
    for stage, ss in sorted(by.items(), key=lambda kv: -len(kv[1])):
        leaf = collections.Counter(s[0] for s in ss)
        ours = collections.Counter(next((f for f in s if f.startswith("podtrail::")), "-") for s in ss)
        alloc = sum(1 for s in ss if s[0] in ALLOC)
        print(f"\n{stage}: {len(ss)} samples ({100 * len(ss) / total:.1f}%), allocator/memmove leaves "
              f"{100 * alloc / len(ss):.0f}%")
        print("  leaves: " + "; ".join(f"{k[:70]} {v}" for k, v in leaf.most_common(8)))
        print("  podtrail functions: " + "; ".join(f"{k[:80]} {v}" for k, v in ours.most_common(10)))
    al = [s for s in all_ if s[0] in ALLOC]
    print(f"\nallocator/memmove leaves: {len(al)} of {total} samples ({100 * len(al) / total:.1f}%), by caller:")
    callers = collections.Counter(
        next((f for f in s[1:] if f not in ALLOC and not f.startswith(GENERIC + ("malloc", "_int", "cfree"))), "?")
        for s in al)
    for k, v in callers.most_common(15):
        print(f"  {v:5d} {k[:100]}")


if __name__ == "__main__":
    main()
