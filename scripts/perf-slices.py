#!/usr/bin/env python3
"""Splits a whole-machine profile by benchmark slice.

canopy-bench records when each measured stretch ran (`windows` in its JSON
report, CLOCK_MONOTONIC seconds). This script reads `perf script` output of a
profile taken around the bench and prints, for each scenario and side
(measured, its paired baseline, I's unloaded slices), the CPU each thread
name used per second and per operation, and optionally the inclusive CPU of
functions whose frames match a substring (needs call graphs: `-g`).

    perf record -a -g -e cpu-clock -F 999 -o perf.data -- \\
        target/release/canopy-bench --only B --out bench-results.json
    perf script -i perf.data -F comm,tid,time,ip,sym > perf.txt
    python3 scripts/perf-slices.py perf.txt bench-results.json --freq 999 \\
        --func 'fileStore).StoreMsg' --func syscall.Fsync --func runtime.schedule

A sample stands for 1/freq seconds of one CPU, so at 999 Hz "µs per op" is
samples per 1,000 operations. perf's default clock follows CLOCK_MONOTONIC
closely on the kernels measured here; check that the sample times fall inside
the windows (the script prints how many did).
"""

import argparse
import bisect
import collections
import json
import re
import sys

HEADER = re.compile(r"^(\S.*?)\s+(\d+)\s+(\d+\.\d+):")


def samples(path):
    """Yields (comm, time, frames) for each sample of `perf script` output."""
    comm, t, frames = None, None, []
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if comm is not None:
                    yield comm, t, frames
                comm, frames = None, []
                continue
            m = HEADER.match(line)
            if m and not line[0].isspace():
                if comm is not None:
                    yield comm, t, frames
                comm, t, frames = m.group(1), float(m.group(3)), []
            elif comm is not None:
                frames.append(line.strip())
    if comm is not None:
        yield comm, t, frames


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("perf_text", help="output of `perf script -F comm,tid,time,ip,sym`")
    ap.add_argument("report", help="canopy-bench's JSON report from the same run")
    ap.add_argument("--freq", type=float, default=999.0, help="the -F given to perf record")
    ap.add_argument("--func", action="append", default=[], help="substring of a frame to sum inclusively")
    ap.add_argument("--top", type=int, default=8, help="thread names to show per group")
    args = ap.parse_args()

    report = json.load(open(args.report))
    groups = []  # (label, side, ops_per_sec or None, [(start, end)])
    for r in report["results"]:
        by_side = collections.defaultdict(list)
        for w in r.get("windows", []):
            by_side[w["side"]].append((w["start"], w["end"]))
        for side, spans in by_side.items():
            if side == "measured":
                ops = r["ops_per_sec"]
            elif side == "baseline":
                ops = r["extra"].get("paired_A_ops_per_sec")
            else:
                ops = None
            groups.append((f'{r["scenario"]} @{r["concurrency"]}', side, ops, sorted(spans)))
    if not groups:
        sys.exit("the report has no windows: it was written by a canopy-bench without them")

    spans = sorted((s, e, i) for i, g in enumerate(groups) for s, e in g[3])
    starts = [s for s, _, _ in spans]
    threads = [collections.Counter() for _ in groups]
    funcs = [collections.Counter() for _ in groups]
    inside = outside = 0

    for comm, t, frames in samples(args.perf_text):
        k = bisect.bisect_right(starts, t) - 1
        if k < 0 or t > spans[k][1]:
            outside += 1
            continue
        inside += 1
        g = spans[k][2]
        threads[g][comm] += 1
        for pat in args.func:
            if any(pat in fr for fr in frames):
                funcs[g][pat] += 1

    print(f"{inside} samples inside the report's windows, {outside} outside; 1 sample = {1e6 / args.freq:.0f} µs")
    for g, (label, side, ops, sp) in enumerate(groups):
        secs = sum(e - s for s, e in sp)
        if secs <= 0:
            continue
        rate = f"{ops:,.0f} ops/s" if ops else "ops/s not recorded"
        print(f"\n{label}, {side}: {len(sp)} window(s), {secs:.1f} s, {rate}")
        print(f"  {'thread or function':<44} {'% of a CPU':>10} {'µs per op':>10}")
        rows = [(c, n) for c, n in threads[g].most_common(args.top)] + [(f"[{p}]", funcs[g][p]) for p in args.func]
        for name, n in rows:
            cpu = n / args.freq / secs  # CPU-seconds per second
            per_op = f"{cpu / ops * 1e6:10.1f}" if ops else f"{'-':>10}"
            print(f"  {name[:44]:<44} {100 * cpu:10.1f} {per_op}")


if __name__ == "__main__":
    main()
