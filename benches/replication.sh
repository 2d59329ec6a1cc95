#!/usr/bin/env bash
# benches/replication.sh - the fio ioengine=nbd suite (../shared/bench) through
# the primary's NBD export (export vol0) in three set-ups, interleaved in one
# run: (a) primary with no peer, (b) one sync peer over TCP+TLS, (c) one async
# peer over QUIC (secondary on loopback, started by benches/cluster-wrap.sh).
# Prints the median table and the ratios (b)/(a) and (c)/(a) per job.
#
# Usage: benches/replication.sh [-r REPS] [-t SECS] [-R RAMP_SECS] [-o TSV] [-n]
#   -n  do not build (use the existing release binary)
# Env: CARGO_TARGET_DIR (binary at $CARGO_TARGET_DIR/release/driftless),
#      SHARED_BENCH (default ../shared/bench). Needs fio, libnbd-bin, jq, python3.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${SHARED_BENCH:-$root/../shared/bench}
REPS=3 RT=10 RAMP=2 TSV="" BUILD=1
while getopts "r:t:R:o:nh" opt; do
  case $opt in
    r) REPS=$OPTARG ;; t) RT=$OPTARG ;; R) RAMP=$OPTARG ;; o) TSV=$OPTARG ;; n) BUILD=0 ;;
    *) sed -n '2,11p' "$0"; exit 2 ;;
  esac
done
[ -n "$TSV" ] || TSV=$(mktemp /tmp/driftless-replication.XXXXXX.tsv)
target=${CARGO_TARGET_DIR:-$root/target}
[ $BUILD = 0 ] || cargo build --release -q -p driftless --manifest-path "$root/Cargo.toml"
export DRIFTLESS=$target/release/driftless
wrap=$root/benches/cluster-wrap.sh

run_tsv=$(mktemp /tmp/driftless-replication-run.XXXXXX.tsv)
export PEER_LOG
PEER_LOG=$(mktemp /tmp/driftless-replication-peers.XXXXXX.log)
trap 'rm -f "$run_tsv" "$PEER_LOG"' EXIT
"$bench/peers-compare.sh" -r "$REPS" -t "$RT" -R "$RAMP" -o "$run_tsv" \
  "a-solo@vol0=$wrap serve none {FILE} {SOCK} {DIR}" \
  "b-sync-tcp@vol0=$wrap serve sync-tcp {FILE} {SOCK} {DIR}" \
  "c-async-quic@vol0=$wrap serve async-quic {FILE} {SOCK} {DIR}"
cat "$run_tsv" >>"$TSV"
echo
python3 - "$run_tsv" <<'EOF'
import collections, statistics, sys
rows = collections.defaultdict(list)
jobs = []
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if f[1] not in jobs:
        jobs.append(f[1])
    if f[2] != "FAILED":
        rows[(f[0], f[1])].append((float(f[2]), float(f[3])))
def med(label, job, i):
    v = [r[i] for r in rows.get((label, job), [])]
    return (statistics.median(v), len(v)) if v else (None, 0)
targets = {"randwrite4k-qd32": 0.8, "seqwrite1m-qd8": 0.8}
print("| job | (a) solo IOPS | (b) sync TCP IOPS | (c) async QUIC IOPS | (a) MB/s | (b)/(a) | (c)/(a) |")
print("|---|---|---|---|---|---|---|")
for job in jobs:
    if job == "fill":
        continue
    (a, na), (b, nb), (c, nc) = (med(l, job, 0) for l in ("a-solo", "b-sync-tcp", "c-async-quic"))
    amb = med("a-solo", job, 1)[0]
    def cell(x, n): return "FAILED" if x is None else f"{x:.0f} (n={n})"
    def ratio(x, tgt):
        if x is None or not a:
            return "-"
        r = x / a
        return f"{r:.2f}x" + ("" if tgt is None else (" ok" if r >= tgt else f" MISS(<{tgt})"))
    print(f"| {job} | {cell(a, na)} | {cell(b, nb)} | {cell(c, nc)} | {'-' if amb is None else f'{amb:.1f}'} | "
          f"{ratio(b, targets.get(job))} | {ratio(c, 0.95)} |")
print("\nMedians of interleaved reps; ratios of medians from this run. Targets: (b) >= 0.8x on"
      " randwrite4k-qd32 and seqwrite1m-qd8, (c) >= 0.95x on every job.")
EOF
echo
echo "# peer connection/disk changes per server run (an async peer that falls past"
echo "# the journal cap goes outdated, then syncing: those jobs shipped regions, not records):"
sed 's/^/#   /' "$PEER_LOG"
if grep -qE "/(outdated|syncing|inconsistent)" "$PEER_LOG"; then
  echo "# WARNING: some runs' peer fell behind past the journal and was resynced from its bitmap"
fi
echo "# raw rows appended to $TSV"
