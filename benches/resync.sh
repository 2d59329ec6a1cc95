#!/usr/bin/env bash
# benches/resync.sh - resync against full copies: one sync peer over TCP+TLS
# on loopback, a VOL_SIZE (default 1GiB) volume with 50 % data in random
# 1 MiB extents, REPS interleaved rounds (default 3), medians:
#  (a) 1 % of the 64 KiB regions dirty (written while the peer is down, over
#      and over until the primary's small journal folds the peer): the bitmap
#      resync's time and bytes, vs nbdcopy of the whole volume to an nbdkit
#      file export over loopback TCP, and vs rsync --inplace --no-whole-file
#      onto a copy taken before the writes;
#  (b) initial sync of a new, empty peer vs that nbdcopy;
#  (c) fio randwrite 4k QD32 IOPS on the primary: peer up to date, and while
#      a `resync --full` runs (resync_max_rate 100MiB/s, which fio's writes
#      count against).
# Usage: benches/resync.sh [-r REPS] [-t FIO_SECS] [-n]   (-n: do not build)
# Needs nbdkit, libnbd-bin (nbdcopy), fio, rsync, jq, python3.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
REPS=3 FIO_SECS=10 BUILD=1
while getopts "r:t:nh" opt; do
  case $opt in
    r) REPS=$OPTARG ;; t) FIO_SECS=$OPTARG ;; n) BUILD=0 ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
  esac
done
for tool in nbdkit nbdcopy fio rsync jq python3; do
  command -v "$tool" >/dev/null || { echo "resync.sh: needs $tool" >&2; exit 2; }
done
target=${CARGO_TARGET_DIR:-$root/target}
[ $BUILD = 0 ] || cargo build --release -q -p driftless --manifest-path "$root/Cargo.toml"
bin=$target/release/driftless
export DRIFTLESS=$bin VOL_SIZE=${VOL_SIZE:-1GiB}
dir=$(mktemp -d /tmp/driftless-resync.XXXXXX)
file=$dir/primary.img sock=$dir/pri.sock
tsv=$dir/results.tsv
cleanup() {
  for f in "$dir"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
  sleep 1
  [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT

python3 - "$file" "$VOL_SIZE" <<'EOF'
import os, random, sys
path, size = sys.argv[1], sys.argv[2]
units = {"MiB": 1 << 20, "GiB": 1 << 30}
n = int(size[:-3]) * units[size[-3:]]
slots = n >> 20
random.seed(1)
with open(path, "wb") as f:
    f.truncate(n)
    for s in random.sample(range(slots), slots // 2):
        f.seek(s << 20)
        f.write(os.urandom(1 << 20))
EOF
PRIMARY_EXTRA=$(printf '%s\n' 'journal_size = "48MiB"' 'journal_segment_size = "16MiB"' \
  'max_write = "4MiB"' 'checkpoint_interval = "1s"' 'on_sync_peer_loss = "degrade"')
export PRIMARY_EXTRA
"$root/benches/cluster-wrap.sh" config sync-tcp "$file" "$sock" "$dir" >/dev/null
# (c) runs the primary with a resync cap; (a) and (b) without one.
cp "$dir/primary.toml" "$dir/primary-nocap.toml"
sed 's/^role = "primary"$/role = "primary"\nresync_max_rate = "100MiB\/s"/' "$dir/primary.toml" >"$dir/primary-cap.toml"

start_node() { # config name: runs it, its pid in $dir/name.pid
  "$bin" run --config "$1" >"$dir/$2.out" 2>>"$dir/$2.log" &
  local pid=$!
  echo "$pid" >"$dir/$2.pid"
  for _ in $(seq 400); do
    grep -q "ready; control socket" "$dir/$2.out" && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "resync.sh: node $1 did not start:" >&2; tail -20 "$dir/$2.log" >&2; exit 1
}
stop_node() { # name: SIGTERM, then wait until it has exited
  local pid; pid=$(cat "$dir/$1.pid")
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$dir/$1.pid"
}
secs_since() { python3 -c "import time,sys; print(time.time() - float(sys.argv[1]))" "$1"; }
peer_json() { "$bin" status --socket "$dir/pri.ctl" --json | jq -c '.volumes[0].peers[0]'; }
# Waits until the peer is up to date with a last resync report other than
# $1 (JSON; "any" for any state); prints the report.
wait_resync() {
  local since=$1 deadline=$((SECONDS + 600)) p
  while [ $SECONDS -lt $deadline ]; do
    p=$(peer_json 2>/dev/null) || { sleep 0.1; continue; }
    if [ "$(jq -r --arg s "$since" '(.connection == "connected" and .disk == "up-to-date"
          and .job == null and .dirty_regions == 0
          and ($s == "any" or (.last_resync | tojson) != $s))' <<<"$p")" = true ]; then
      jq -c '.last_resync' <<<"$p"; return 0
    fi
    sleep 0.1
  done
  echo "resync.sh: the peer did not get up to date: $p" >&2; exit 1
}
last_job() { peer_json | jq -c '.last_resync'; }
fresh_secondary() {
  rm -rf "$dir/secondary.img" "$dir/secondary.img.journal"
  truncate -s "$(stat -c %s "$file")" "$dir/secondary.img"
}
nbdcopy_secs() {
  local port=$((20000 + RANDOM % 30000))
  rm -f "$dir/copy.img"; truncate -s "$(stat -c %s "$file")" "$dir/copy.img"
  nbdkit -f -i 127.0.0.1 -p "$port" file "$dir/copy.img" 2>/dev/null &
  local kit=$!
  for _ in $(seq 100); do nbdinfo "nbd://127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.05; done
  local t0; t0=$(date +%s.%N)
  nbdcopy "$file" "nbd://127.0.0.1:$port"
  secs_since "$t0"
  kill "$kit"; wait "$kit" 2>/dev/null || true
}
fio_iops() {
  fio --name=w --ioengine=nbd --uri="nbd+unix:///vol0?socket=$sock" --rw=randwrite --bs=4k \
    --iodepth=32 --time_based --runtime="$FIO_SECS" --size="$VOL_SIZE" --output-format=json 2>/dev/null |
    sed -n '/^{/,$p' | jq '.jobs[0].write.iops'
}

regions=$(( $(stat -c %s "$file") / 65536 ))
dirty=$((regions / 100))
fresh_secondary
start_node "$dir/secondary.toml" secondary
start_node "$dir/primary-nocap.toml" primary
wait_resync null >/dev/null
for rep in $(seq "$REPS"); do
  echo "# round $rep/$REPS" >&2
  # (b) a new, empty peer; then the same volume copied by nbdcopy.
  stop_node secondary; fresh_secondary
  before=$(last_job)
  start_node "$dir/secondary.toml" secondary
  r=$(wait_resync "$before")
  printf 'b-initial\t%s\t%s\n' "$(jq .seconds <<<"$r")" "$(jq .bytes_sent <<<"$r")" >>"$tsv"
  printf 'nbdcopy\t%s\t%s\n' "$(nbdcopy_secs)" "$(du -B1 --apparent-size "$file" | cut -f1)" >>"$tsv"
  # (a) 1 % of the regions written while the peer is down, until folded.
  stop_node secondary
  cp --sparse=always "$file" "$dir/stale.img"
  offsets=$(python3 -c "import random; random.seed($rep); print(' '.join(str(r*65536) for r in random.sample(range($regions), $dirty)))")
  # Pass after pass over the same regions until the journal folds the peer.
  owed=0 pass=0
  while [ "$owed" = 0 ]; do
    pass=$((pass + 1))
    [ $pass -le 64 ] || { echo "resync.sh: the peer was never folded" >&2; exit 1; }
    args=()
    for o in $offsets; do args+=(-c "write -P $pass $o 64k"); done
    qemu-io -f raw "${args[@]}" "nbd+unix:///vol0?socket=$sock" >/dev/null
    owed=$(peer_json | jq .dirty_regions)
  done
  before=$(last_job)
  start_node "$dir/secondary.toml" secondary
  r=$(wait_resync "$before")
  printf 'a-bitmap\t%s\t%s\t%s\n' "$(jq .seconds <<<"$r")" "$(jq .bytes_sent <<<"$r")" "$owed" >>"$tsv"
  t0=$(date +%s.%N)
  rsync --inplace --no-whole-file "$file" "$dir/stale.img"
  printf 'rsync\t%s\n' "$(secs_since "$t0")" >>"$tsv"
  # (c) fio with the peer up to date, then during a full resync (capped).
  stop_node primary
  start_node "$dir/primary-cap.toml" primary
  wait_resync any >/dev/null
  printf 'c-idle\t%s\n' "$(fio_iops)" >>"$tsv"
  before=$(last_job)
  "$bin" resync vol0 --peer sec --full --socket "$dir/pri.ctl" >/dev/null
  iops=$(fio_iops)
  during=$(peer_json | jq -r '.disk')
  printf 'c-resync\t%s\t%s\n' "$iops" "$during" >>"$tsv"
  wait_resync "$before" >/dev/null
  stop_node primary
  start_node "$dir/primary-nocap.toml" primary
done
stop_node primary; stop_node secondary
cmp "$file" "$dir/secondary.img" && echo "# primary and peer identical at the end" >&2

python3 - "$tsv" "$dirty" <<'EOF'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    rows[f[0]].append(f[1:])
med = lambda k, i=0: statistics.median(float(r[i]) for r in rows[k])
n = lambda k: len(rows[k])
dirty = int(sys.argv[2])
MiB = 1 << 20
a_s, a_b = med("a-bitmap"), med("a-bitmap", 1)
owed = med("a-bitmap", 2)
copy_s, rsync_s = med("nbdcopy"), med("rsync")
b_s, b_b = med("b-initial"), med("b-initial", 1)
c0, c1 = med("c-idle"), med("c-resync")
syncing = sum(1 for r in rows["c-resync"] if r[1] == "syncing")
print(f"| measure (median of {n('a-bitmap')}) | driftless | peer | ratio |")
print("|---|---|---|---|")
print(f"| (a) 1 % dirty ({dirty} regions written, {owed:.0f} owed): bitmap resync s vs nbdcopy of the whole volume | {a_s:.2f} s | {copy_s:.2f} s | {copy_s / a_s:.1f}x faster |")
print(f"| (a) same, vs rsync --inplace --no-whole-file | {a_s:.2f} s | {rsync_s:.2f} s | {rsync_s / a_s:.1f}x faster |")
print(f"| (a) resync bytes vs owed regions x 64 KiB | {a_b / MiB:.2f} MiB | {owed * 65536 / MiB:.2f} MiB | {a_b / (owed * 65536):.2f}x |")
print(f"| (b) initial sync of 50 % data: throughput (data / s) vs nbdcopy | {b_b / MiB / b_s:.0f} MiB/s ({b_s:.2f} s) | {b_b / MiB / copy_s:.0f} MiB/s ({copy_s:.2f} s) | {copy_s / b_s:.2f}x |")
print(f"| (c) fio randwrite 4k QD32 IOPS during a full resync vs peer up to date | {c1:.0f} | {c0:.0f} | {c1 / c0:.2f}x (resync still running at the end of fio in {syncing}/{n('c-resync')}) |")
EOF
