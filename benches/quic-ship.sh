#!/usr/bin/env bash
# benches/quic-ship.sh - QUIC shipping throughput of driftless against raw quinn,
# and steady-state lag of an async QUIC peer, interleaved per rep:
#   raw:  crates/transport/examples/quic_bulk (one stream, N MiB, same QuicTuning
#         and the same TLS identities, loopback) -> MB/s
#   ship: primary + one async QUIC peer; the secondary is stopped, a backlog of
#         N MiB is written through NBD (fio seq write 1M QD8), the secondary is
#         restarted and `status` is polled every 100 ms until lag_records = 0;
#         backlog bytes / (ready line of the restarted secondary -> lag 0) -> MB/s
#   lag:  (unless -L) with the peer connected, fio rate-limited writes for
#         LAG_SECS each: 4k randwrite QD8 at 20 MB/s, then 1M write QD4 at
#         100 MB/s; lag_seconds sampled every 200 ms -> median and max
# Prints per-rep rows, then medians and the ship/raw ratio (target >= 0.8) and
# lag (target < 1 s).
#
# Usage: benches/quic-ship.sh [-r REPS] [-m MIB] [-s LAG_SECS] [-L] [-n] [-o TSV]
#   -r reps (default 3), -m backlog and raw transfer size in MiB (default 512),
#   -s seconds per lag workload (default 20), -L skip the lag part,
#   -n do not build, -o append per-rep rows to TSV.
# Env: CARGO_TARGET_DIR; QUIC_EXTRA (lines of a [quic] section for both nodes,
#      see cluster-wrap.sh); RAW_ARGS (extra quic_bulk arguments).
# Needs fio (ioengine=nbd), jq, python3.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
REPS=3 MIB=512 LAGS=20 LAG=1 BUILD=1 TSV=""
while getopts "r:m:s:Lno:h" opt; do
  case $opt in
    r) REPS=$OPTARG ;; m) MIB=$OPTARG ;; s) LAGS=$OPTARG ;; L) LAG=0 ;; n) BUILD=0 ;;
    o) TSV=$OPTARG ;; *) sed -n '2,25p' "$0"; exit 2 ;;
  esac
done
target=${CARGO_TARGET_DIR:-$root/target}
if [ $BUILD = 1 ]; then
  cargo build --release -q -p driftless --manifest-path "$root/Cargo.toml"
  cargo build --release -q -p transport --example quic_bulk --manifest-path "$root/Cargo.toml"
fi
export DRIFTLESS=$target/release/driftless
bulk=$target/release/examples/quic_bulk
for t in fio jq python3 "$DRIFTLESS" "$bulk"; do
  command -v "$t" >/dev/null || { echo "quic-ship: missing $t" >&2; exit 2; }
done

work=$(mktemp -d /tmp/driftless-quic-ship.XXXXXX)
rows=$work/rows.tsv
: >"$rows"
PPID_PRI="" PPID_SEC=""
stop() { # pid: TERM, then KILL after 10 s
  local pid=$1
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }; sleep 0.1; done
  echo "quic-ship: pid $pid ignored TERM for 10 s; killing" >&2
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  stop "$PPID_PRI"; stop "$PPID_SEC"
  if [ $rc = 0 ]; then rm -rf "$work"; else echo "quic-ship: logs kept in $work" >&2; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_line() { # file pattern pid what
  for _ in $(seq 300); do # 15 s
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { echo "quic-ship: $4 exited early:" >&2; tail -20 "${1%.out}.log" >&2; return 1; }
    sleep 0.05
  done
  echo "quic-ship: $4 not ready after 15 s" >&2; tail -20 "${1%.out}.log" >&2; return 1
}
start_node() { # dir which -> sets PPID_PRI / PPID_SEC
  local d=$1 which=$2
  "$DRIFTLESS" run --config "$d/$which.toml" >"$d/$which.out" 2>>"$d/$which.log" &
  local pid=$!
  if [ "$which" = primary ]; then PPID_PRI=$pid; else PPID_SEC=$pid; fi
  wait_line "$d/$which.out" "ready; control socket" "$pid" "$which"
}
peer() { # dir -> "state acked lag_records lag_bytes lag_seconds throughput written"
  "$DRIFTLESS" status --config "$1/primary.toml" --json 2>/dev/null | jq -r \
    '.volumes[0] as $v | $v.peers[0] | "\(.state) \(.acked_lsn) \(.lag_records) \(.lag_bytes) \(.lag_seconds) \(.throughput_bytes_per_sec) \($v.written_lsn)"'
}
now() { date +%s.%N; }

for rep in $(seq "$REPS"); do
  # --- raw quinn
  echo "## rep $rep/$REPS: raw quinn $MIB MiB" >&2
  d=$work/rep$rep
  mkdir -p "$d"
  # shellcheck disable=SC2086
  raw=$("$bulk" --mib "$MIB" ${RAW_ARGS:-})
  echo "#   $raw" >&2
  raw_mbps=$(sed -n 's/.* MBps=\([0-9.]*\).*/\1/p' <<<"$raw")
  printf 'raw\t%s\t%s\n' "$rep" "$raw_mbps" >>"$rows"

  # --- driftless shipping of a backlog
  echo "## rep $rep/$REPS: driftless catch-up of $MIB MiB" >&2
  truncate -s 1G "$d/primary.img"
  truncate -s 1G "$d/secondary.img"
  PRIMARY_EXTRA=$'reconnect_min = "100ms"\nreconnect_max = "200ms"' \
    "$root/benches/cluster-wrap.sh" config async-quic "$d/primary.img" "$d/nbd.sock" "$d" >/dev/null
  start_node "$d" secondary
  start_node "$d" primary
  uri="nbd+unix:///vol0?socket=$d/nbd.sock"
  st=""
  for _ in $(seq 100); do st=$(peer "$d"); [[ $st == connected* ]] && break; sleep 0.1; done
  [[ $st == connected* ]] || { echo "quic-ship: peer never connected: $st" >&2; exit 1; }
  stop "$PPID_SEC"; PPID_SEC=""
  fio --name=backlog --ioengine=nbd "--uri=$uri" --rw=write --bs=1M --iodepth=8 \
      --size="${MIB}M" --output-format=terse >"$d/fio-backlog.log" 2>&1 \
    || { echo "quic-ship: backlog fio failed" >&2; cat "$d/fio-backlog.log" >&2; exit 1; }
  before=$(peer "$d")
  echo "#   backlog written; peer: $before" >&2
  read -r _ acked0 lagrec0 lagbytes0 _ _ written0 <<<"$before"
  t0=$(now)
  start_node "$d" secondary
  t_ready=$(now)
  t_conn="" done_at="" st=""
  for _ in $(seq 3000); do # 300 s
    st=$(peer "$d")
    read -r state _ lagrec _ <<<"$st"
    [ -n "$t_conn" ] || [ "$state" != connected ] || t_conn=$(now)
    if [ "$state" = connected ] && [ "$lagrec" = 0 ]; then done_at=$(now); break; fi
    sleep 0.1
  done
  [ -n "$done_at" ] || { echo "quic-ship: no catch-up within 300 s: $st" >&2; exit 1; }
  read -r ship_mbps ship_secs conn_secs < <(python3 -c "
b=$lagbytes0; t0=$t_ready; t1=$done_at; tc=${t_conn:-$t_ready}
print(f'{b/1e6/(t1-t0):.1f} {t1-t0:.3f} {tc-t0:.3f}')")
  echo "#   caught up: $lagbytes0 bytes ($lagrec0 records) in $ship_secs s after the secondary's ready line (connected after $conn_secs s) = $ship_mbps MB/s; restart took $(python3 -c "print(f'{$t_ready-$t0:.2f}')") s" >&2
  printf 'ship\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$ship_mbps" "$ship_secs" "$lagbytes0" "$conn_secs" >>"$rows"

  # --- steady-state lag
  if [ $LAG = 1 ]; then
    for w in "randwrite4k-20MBps:--rw=randwrite --bs=4k --iodepth=8 --rate=20m" \
             "write1m-100MBps:--rw=write --bs=1M --iodepth=4 --rate=100m"; do
      name=${w%%:*} args=${w#*:}
      echo "## rep $rep/$REPS: lag under $name for $LAGS s" >&2
      # shellcheck disable=SC2086
      fio --name="$name" --ioengine=nbd "--uri=$uri" $args --size=1G --time_based \
          --runtime="$LAGS" --output-format=json --output="$d/fio-$name.json" \
          >"$d/fio-$name.log" 2>&1 &
      fpid=$!
      samples=$d/lag-$name.txt
      : >"$samples"
      sleep 1 # fio connect + start
      while kill -0 "$fpid" 2>/dev/null; do
        peer "$d" >>"$samples" || true
        sleep 0.2
      done
      wait "$fpid" || { echo "quic-ship: fio $name failed" >&2; cat "$d/fio-$name.log" >&2; exit 1; }
      bw=$(jq '.jobs[0].write.bw_bytes/1e6*10|round/10' "$d/fio-$name.json")
      read -r med mx n < <(python3 -c "
import statistics,sys
v=[float(l.split()[4]) for l in open('$samples') if len(l.split())>=5 and l.split()[0]=='connected']
print(f'{statistics.median(v):.3f} {max(v):.3f} {len(v)}' if v else '- - 0')")
      echo "#   $name: client $bw MB/s, lag_seconds median $med max $mx (n=$n samples)" >&2
      printf 'lag\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$name" "$med" "$mx" "$n" "$bw" >>"$rows"
    done
  fi
  stop "$PPID_PRI"; PPID_PRI=""
  stop "$PPID_SEC"; PPID_SEC=""
  rm -f "$d"/*.img
done
[ -z "$TSV" ] || cat "$rows" >>"$TSV"

python3 - "$rows" "$MIB" <<'EOF'
import collections, statistics, sys
raw, ship, ship_conn, lag = [], [], [], collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if f[0] == "raw": raw.append(float(f[2]))
    elif f[0] == "ship":
        ship.append(float(f[2]))
        # rate counted from the first status poll that saw the peer connected
        ship_conn.append(float(f[4]) / 1e6 / max(float(f[3]) - float(f[5]), 1e-3))
    elif f[0] == "lag": lag[f[2]].append((float(f[3]), float(f[4]), float(f[6])))
m = statistics.median
print(f"\n| measure ({sys.argv[2]} MiB) | n | median MB/s | min-max |")
print("|---|---|---|---|")
for name, v in (("raw quinn, 1 stream", raw), ("driftless catch-up (async QUIC)", ship),
                ("driftless catch-up, from connect", ship_conn)):
    print(f"| {name} | {len(v)} | {m(v):.1f} | {min(v):.1f}-{max(v):.1f} |")
r = m(ship) / m(raw)
print(f"\nship/raw = {r:.2f} (target >= 0.8: {'ok' if r >= 0.8 else 'MISS'})")
if lag:
    print("\n| workload | n | client MB/s | lag_seconds median (of per-rep medians) | max over all samples | target < 1 s |")
    print("|---|---|---|---|---|---|")
    for name, v in lag.items():
        med = m([x[0] for x in v]); mx = max(x[1] for x in v)
        print(f"| {name} | {len(v)} | {m([x[2] for x in v]):.1f} | {med:.3f} | {mx:.3f} | {'ok' if mx < 1 else 'MISS'} |")
EOF
