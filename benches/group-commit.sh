#!/usr/bin/env bash
# benches/group-commit.sh - group-commit effectiveness of the journal: N fio
# jobs (N NBD connections), each writing 4 KiB at QD1 with a FLUSH after every
# write (fsync=1), against `driftless serve`. Reports FLUSHes sent, the
# journal's fdatasyncs (from the server's "journal totals" log line at exit),
# fdatasyncs per FLUSH, and FLUSH latency p50/p99 (medians of REPS runs).
# Peers' FLUSH latency at QD1 is in the randwrite4k-fsync job of nbd-suite.sh.
#
# Usage: benches/group-commit.sh [-n FLUSHERS] [-r REPS] [-t SECS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
N=32 REPS=3 RT=10
while getopts "n:r:t:h" opt; do
  case $opt in
    n) N=$OPTARG ;; r) REPS=$OPTARG ;; t) RT=$OPTARG ;;
    *) sed -n '2,10p' "$0"; exit 2 ;;
  esac
done
cargo build --release -q -p driftless --manifest-path "$root/Cargo.toml"
bin=$root/target/release/driftless

run_one() { # label cmd-with-{FILE}{SOCK} export
  local label=$1 cmd=$2 exp=$3 dir
  dir=$(mktemp -d /tmp/gc.XXXXXX)
  truncate -s 1G "$dir/vol.img"
  cmd=${cmd//\{FILE\}/$dir/vol.img}; cmd=${cmd//\{SOCK\}/$dir/nbd.sock}
  bash -c "exec $cmd" </dev/null >"$dir/server.log" 2>&1 &
  local pid=$! uri="nbd+unix:///$exp?socket=$dir/nbd.sock"
  for _ in $(seq 200); do nbdinfo --size "$uri" >/dev/null 2>&1 && break; sleep 0.05; done
  fio --name=flushers --ioengine=nbd "--uri=$uri" --rw=randwrite --bs=4k --iodepth=1 \
      --numjobs="$N" --fsync=1 --time_based "--runtime=$RT" --size=64m --offset_increment=16m \
      --norandommap --randrepeat=0 --group_reporting --lat_percentiles=1 \
      --output-format=json --output="$dir/fio.json" >/dev/null 2>&1
  kill -TERM "$pid"; wait "$pid" || true
  local flushes p50 p99 syncs ratio
  flushes=$(jq '.jobs[0].sync.total_ios' "$dir/fio.json")
  p50=$(jq '.jobs[0].sync.lat_ns.percentile["50.000000"] / 1000 | round' "$dir/fio.json")
  p99=$(jq '.jobs[0].sync.lat_ns.percentile["99.000000"] / 1000 | round' "$dir/fio.json")
  syncs=$(grep -o 'fdatasyncs=[0-9]*' "$dir/server.log" | tail -1 | cut -d= -f2 || true)
  ratio=-
  [ -n "$syncs" ] && ratio=$(awk -v s="$syncs" -v f="$flushes" 'BEGIN { printf "%.3f", s / f }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$flushes" "${syncs:--}" "$ratio" "$p50" "$p99"
  rm -rf "$dir"
}

tsv=$(mktemp /tmp/group-commit.XXXXXX.tsv)
for rep in $(seq "$REPS"); do
  echo "## rep $rep/$REPS" >&2
  run_one driftless "$bin serve --volume {FILE} --unix {SOCK}" "" >>"$tsv"
done
python3 - "$tsv" "$N" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    rows[f[0]].append(f[1:])
print(f"| server ({sys.argv[2]} flushers) | FLUSHes (median) | fdatasyncs | fdatasyncs per FLUSH | FLUSH p50 us | FLUSH p99 us | n |")
print("|---|---|---|---|---|---|---|")
def med(vals):
    v = [float(x) for x in vals if x not in ("-", "", "null")]
    return statistics.median(v) if v else None
for label, rs in rows.items():
    cols = list(zip(*rs))
    fmt = lambda x, nd=0: "-" if x is None else f"{x:.{nd}f}"
    print(f"| {label} | {fmt(med(cols[0]))} | {fmt(med(cols[1]))} | {fmt(med(cols[2]), 3)} | {fmt(med(cols[3]))} | {fmt(med(cols[4]))} | {len(rs)} |")
PY
