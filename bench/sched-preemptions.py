#!/usr/bin/env python3
"""Who takes the core from a request thread while it could run.

Reads `perf sched timehist --state` output of one core and, for every time the thread named
THREAD was switched out while still runnable (state R: preempted, not waiting for work), adds up
what ran on the core until it was back: how often, for how long in all and at most, per task.

    perf sched record -C 0 -o sched.data -- sleep 7      # during a latency run, proxy on core 0
    perf sched timehist -i sched.data -C 0 --state | tail -n +4 > timehist.txt
    bench/sched-preemptions.py timehist.txt ["gateway proxy"]

bench/results/2026-12-07-stop37-steal-and-idle.md has its output for the full pipeline.
"""
import collections
import sys


def rows(path):
    """(time s, task, runtime ms, state at switch-out) per line; task names may hold spaces."""
    for line in open(path):
        fields = line.split()
        if len(fields) < 7:
            continue
        try:
            time = float(fields[0])
            runtime = float(fields[-2])
        except ValueError:
            continue
        yield time, " ".join(fields[2:-4]), runtime, fields[-1]


def main():
    path = sys.argv[1]
    thread = sys.argv[2] if len(sys.argv) > 2 else "gateway proxy"
    switches = list(rows(path))
    ran = sum(r[2] for r in switches if r[1].startswith(thread))
    waits = []
    total = collections.Counter()
    stretches = collections.Counter()
    longest = collections.Counter()
    i = 0
    while i < len(switches):
        time, task, _, state = switches[i]
        if not (task.startswith(thread) and state == "R"):
            i += 1
            continue
        j = i + 1
        while j < len(switches) and not switches[j][1].startswith(thread):
            j += 1
        if j == len(switches):
            break
        back = switches[j][0] - switches[j][2] / 1000
        others = [(t.split("[")[0], r) for _, t, r, _ in switches[i + 1 : j]]
        waits.append(((back - time) * 1000, others))
        for name, runtime in others:
            total[name] += runtime
            stretches[name] += 1
            longest[name] = max(longest[name], runtime)
        i = j
    waits.sort(key=lambda w: -w[0])
    print(
        f"{thread}: ran {ran:.0f} ms; preempted {len(waits)} times, "
        f"{sum(w for w, _ in waits):.1f} ms waiting; "
        f"waits over 1 ms: {sum(1 for w, _ in waits if w > 1)}, "
        f"over 0.5 ms: {sum(1 for w, _ in waits if w > 0.5)}"
    )
    for wait, others in waits[:5]:
        print(f"  {wait:6.2f} ms:", ", ".join(f"{n} {r:.2f}" for n, r in others[:4]))
    print("  ran meanwhile: ms in all, stretches, longest ms, task")
    for name, ms in total.most_common(8):
        print(f"  {ms:8.2f} {stretches[name]:6d} {longest[name]:7.3f}  {name}")


if __name__ == "__main__":
    main()
