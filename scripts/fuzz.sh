#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ with libFuzzer's coverage instrumentation
# (stable rustc flags, as cargo-fuzz passes them, without a sanitizer) and
# runs each for a bounded time. Fails on a build error or a crash; a crash
# input is left in fuzz/artifacts/TARGET/.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 10; 0 = build only)
# Longer runs with AddressSanitizer: see fuzz/README.md (cargo fuzz).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-10}
triple=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps RUSTFLAGS off build scripts and proc macros.
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --locked --bins --target "$triple"
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^driftless-fuzz$')
[ "$seconds" = 0 ] && { echo "fuzz: built $(echo $targets | wc -w) targets"; exit 0; }
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  out=$(mktemp /tmp/driftless-fuzz.XXXXXX.log)
  # Checked-in seeds (fuzz/seeds/TARGET) are read too; new finds go to corpus/.
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  if ! "target/$triple/release/$t" "corpus/$t" "${seeds[@]}" -max_total_time="$seconds" \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$out" 2>&1; then
    tail -40 "$out"
    echo "fuzz: $t FAILED (crash input in fuzz/artifacts/$t/)"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out")
  echo "fuzz: $t: ${runs:-?} executions in ${seconds}s, no crash"
  rm -f "$out"
done
