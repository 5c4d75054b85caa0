#!/usr/bin/env python3
"""Summarises a kernel timeline (bench/kernel_timeline.cpp) of a run that replays one CUDA graph per
training step: per graph node, the median start offset within the step and the median duration,
in launch order, with its stream; then the step's span, the time no kernel ran, and the gaps."""
import collections
import statistics
import sys


def main(path, top_gaps=12):
    rows = []
    for line in open(path):
        kind, start, end, stream, graph, node, name = line.rstrip("\n").split("\t", 6)
        rows.append((int(start), int(end), int(stream), int(graph), int(node), name))
    nodes, count = collections.defaultdict(set), collections.Counter()
    for r in rows:
        if r[3]:
            nodes[r[3]].add(r[4])
            count[r[3]] += 1
    if not nodes:
        sys.exit("no graph launches in " + path)
    # The step's graph is the one replayed most often (planning replays its small graphs a few dozen times).
    graph = max(nodes, key=lambda g: count[g] / len(nodes[g]))
    per = len(nodes[graph])
    mine = sorted((r for r in rows if r[3] == graph), key=lambda r: r[0])
    launches = [mine[i:i + per] for i in range(0, len(mine) - per + 1, per)]
    launches = [l for l in launches if len({r[4] for r in l}) == per]
    launches = launches[len(launches) // 5:]  # past warm-up
    spans = [max(r[1] for r in l) - l[0][0] for l in launches]
    period = [b[0][0] - a[0][0] for a, b in zip(launches, launches[1:])]
    offsets, durations, info = collections.defaultdict(list), collections.defaultdict(list), {}
    for l in launches:
        t0 = l[0][0]
        for r in l:
            offsets[r[4]].append((r[0] - t0) / 1e3)
            durations[r[4]].append((r[1] - r[0]) / 1e3)
            info[r[4]] = (r[2], r[5])
    streams = {s: i for i, s in enumerate(sorted({v[0] for v in info.values()}))}
    print("graph %d: %d nodes, %d launches used; span median %.1f us; launch-to-launch median %.1f us"
          % (graph, per, len(launches), statistics.median(spans) / 1e3, statistics.median(period) / 1e3 if period else 0))
    print("%8s %8s %8s  %s  %s" % ("start", "dur", "end", "st", "kernel"))
    total = 0.0
    for node in sorted(offsets, key=lambda n: statistics.median(offsets[n])):
        s, d = statistics.median(offsets[node]), statistics.median(durations[node])
        total += d
        print("%8.1f %8.1f %8.1f  %2d  %s" % (s, d, s + d, streams[info[node][0]], info[node][1][:150]))
    # Idle time of the median launch: no kernel of the step running.
    mid = launches[sorted(range(len(launches)), key=lambda i: spans[i])[len(launches) // 2]]
    t0, busy_end, idle, gaps = mid[0][0], mid[0][0], 0, []
    for r in sorted(mid):
        if r[0] > busy_end:
            idle += r[0] - busy_end
            gaps.append(((r[0] - busy_end) / 1e3, (busy_end - t0) / 1e3, r[5][:80]))
        busy_end = max(busy_end, r[1])
    print("sum of kernel times %.1f us; the median launch (span %.1f us) idles %.1f us in %d gaps; largest:"
          % (total, (busy_end - t0) / 1e3, idle / 1e3, len(gaps)))
    for g in sorted(gaps, reverse=True)[:top_gaps]:
        print("  %6.1f us at %7.1f before %s" % g)


if __name__ == "__main__":
    main(sys.argv[1])
