#!/usr/bin/env python3
"""Median IOPS per (server, job) from nbd-peers TSV rows, and the ratio of
each driftless variant to the best peer of the same run.

Usage: ratios.py TSV   (rows: label job iops mbps lat p99 flush flush_p99 stamp)
Labels starting with "driftless" are ours; every other label is a peer.
"""
import collections
import statistics
import sys

rows = collections.defaultdict(list)
labels, jobs = [], []
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    label, job = f[0], f[1]
    if label not in labels:
        labels.append(label)
    if job not in jobs:
        jobs.append(job)
    if f[2] != "FAILED":
        rows[(label, job)].append((float(f[2]), float(f[3]), f[4], f[6]))

def median(label, job, i=0):
    vals = [r[i] for r in rows.get((label, job), [])]
    return statistics.median(vals) if vals else None

ours = [l for l in labels if l.startswith("driftless")]
peers = [l for l in labels if not l.startswith("driftless")]
head = "| job | " + " | ".join(labels) + " | best peer | " + " | ".join(f"{l} / best" for l in ours) + " |"
print(head)
print("|" + "---|" * (head.count("|") - 1))
for job in jobs:
    if job == "fill":
        continue
    cells = []
    for l in labels:
        m = median(l, job)
        n = len(rows.get((l, job), []))
        cells.append("FAILED" if m is None else f"{m:.0f} (n={n})")
    peer_meds = [(median(p, job), p) for p in peers if median(p, job) is not None]
    best, best_label = max(peer_meds) if peer_meds else (None, "-")
    ratios = []
    for l in ours:
        m = median(l, job)
        ratios.append("-" if m is None or not best else f"{m / best:.2f}x")
    print(f"| {job} | " + " | ".join(cells) + f" | {best_label} | " + " | ".join(ratios) + " |")
print("\nIOPS medians of interleaved runs; ratio = driftless median / best peer median.")
