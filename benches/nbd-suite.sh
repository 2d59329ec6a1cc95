#!/usr/bin/env bash
# benches/nbd-suite.sh - the fio ioengine=nbd suite against `driftless serve`
# and, in the same run and interleaved, nbdkit's file plugin, nbd-server and
# qemu-nbd on the same kind of sparse 1 GiB backing file; prints the median
# table and the ratio of driftless to the best peer per job.
#
# Usage: benches/nbd-suite.sh [-r REPS] [-t SECS] [-R RAMP_SECS] [-o TSV] ['LABEL=CMD' ...]
# Extra LABEL=CMD arguments (nbd-peers.sh placeholders {FILE} {SOCK}) are
# measured too; labels starting with "driftless" are ours, the rest are peers.
# Needs: fio nbdkit libnbd-bin nbd-server qemu-utils jq python3, and
# ../shared/bench (or SHARED_BENCH=DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${SHARED_BENCH:-$root/../shared/bench}
REPS=3 RT=10 RAMP=2 TSV=""
while getopts "r:t:R:o:h" opt; do
  case $opt in
    r) REPS=$OPTARG ;; t) RT=$OPTARG ;; R) RAMP=$OPTARG ;; o) TSV=$OPTARG ;;
    *) sed -n '2,11p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ -n "$TSV" ] || TSV=$(mktemp /tmp/driftless-bench.XXXXXX.tsv)

cargo build --release -q -p driftless --manifest-path "$root/Cargo.toml"
bin=$root/target/release/driftless
extra=("$@")
"$bench/peers-compare.sh" -r "$REPS" -t "$RT" -R "$RAMP" -o "$TSV" \
  "driftless=$bin serve --volume {FILE} --size 1GiB --unix {SOCK}" \
  "nbdkit-file=nbdkit -f -U {SOCK} file file={FILE}" \
  "nbd-server@export=$bench/nbd-server-wrap.sh {SOCK} {FILE}" \
  "qemu-nbd=qemu-nbd -f raw -t -k {SOCK} {FILE}" \
  "${extra[@]}"
echo
python3 "$root/benches/ratios.py" "$TSV"
