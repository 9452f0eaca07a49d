#!/usr/bin/env python3
"""CPU per second while a bench runs: the machine's idle and steal time, nats-server,
the bench process and its projector thread, in percent of one core (the machine
has nproc x 100). Start it, then the bench; it stops when the bench does.

    python3 scripts/cpu-sample.py canopy-bench > cpu.txt &
    target/release/canopy-bench --only B

The argument is the bench's process name as /proc shows it (its file name, cut
to 15 characters). BENCHMARKS.md, Profiles, says what it showed.
"""
import os
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def comm(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def pid_of(name):
    return next((p for p in os.listdir("/proc") if p.isdigit() and comm(f"/proc/{p}/comm") == name), None)


def ticks(stat_path):
    # utime and stime, after the parenthesised command name (which may hold spaces).
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def projector_tid(pid):
    tasks = f"/proc/{pid}/task"
    return next((t for t in os.listdir(tasks) if (comm(f"{tasks}/{t}/comm") or "").startswith("canopy-project")), None)


def machine():
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:]))
    return sum(v), v[3] + v[4], v[7] if len(v) > 7 else 0  # total, idle + iowait, steal


def main():
    bench_name = sys.argv[1] if len(sys.argv) > 1 else "canopy-bench"
    cores = os.cpu_count() or 1
    while not (pid_of("nats-server") and pid_of(bench_name)):
        time.sleep(0.1)
    bench, nats = pid_of(bench_name), pid_of("nats-server")
    print(f"t_s  idle%  steal%  nats%  bench%  projector%   (of {cores * 100})", flush=True)
    t0, prev = time.time(), None
    while True:
        try:
            tid = projector_tid(bench)
            now = (
                machine(),
                ticks(f"/proc/{nats}/stat"),
                ticks(f"/proc/{bench}/stat"),
                ticks(f"/proc/{bench}/task/{tid}/stat") if tid else 0,
            )
        except OSError:
            return  # the bench (or its nats-server) has exited
        if prev:
            share = cores * 100 / ((now[0][0] - prev[0][0]) or 1)
            print(
                f"{time.time() - t0:4.0f} {(now[0][1] - prev[0][1]) * share:6.0f} {(now[0][2] - prev[0][2]) * share:7.0f}"
                f" {(now[1] - prev[1]) * 100 / HZ:6.0f} {(now[2] - prev[2]) * 100 / HZ:7.0f} {(now[3] - prev[3]) * 100 / HZ:11.0f}",
                flush=True,
            )
        prev = now
        time.sleep(1)


if __name__ == "__main__":
    main()
