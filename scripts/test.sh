#!/usr/bin/env bash
# The whole test suite on a fresh Debian/Ubuntu machine: installs the real
# NBD clients the tests drive, builds driftless, runs every test, builds
# every fuzz target and runs each briefly (FUZZ_SECONDS, default 10).
# Tests that cannot run here (root-only ones when not root) are reported as
# skipped, with their reasons, in the closing summary line's count.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nbdkit libnbd-bin nbdfuse fuse3 fio nbd-server e2fsprogs qemu-utils jq util-linux prometheus iproute2)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "# installing test tools: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Release profile: the tests move hundreds of MiB through real clients.
cargo build --release --workspace --bins
log=$(mktemp /tmp/driftless-test.XXXXXX.log)
# Tests that could not run here (no root, no io_uring, ...) say so in this
# file (crates/skip); cargo counts them as passed, the summary does not.
skips=$(mktemp /tmp/driftless-skips.XXXXXX.log)
export DRIFTLESS_SKIP_LOG=$skips
trap 'rm -f "$log" "$skips"' EXIT
set +e
cargo test --release --workspace --no-fail-fast -- --test-threads=2 "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Every fuzz target builds and survives a bounded run (FUZZ_SECONDS each).
fuzz_log=$(mktemp /tmp/driftless-fuzz.XXXXXX.log)
if [ $# -eq 0 ]; then
  ./scripts/fuzz.sh "${FUZZ_SECONDS:-10}" >"$fuzz_log" 2>&1
  fuzz_status=$?
  grep -E '^(fuzz|error)' "$fuzz_log"
  if [ "$fuzz_status" != 0 ]; then
    tail -40 "$fuzz_log"
    echo "fuzz: FAILED"
    status=1
  fi
fi
rm -f "$fuzz_log"
set -e
if [ -s "$skips" ]; then
  echo "# tests and parts of tests that did not run, and why:"
  sed 's/^/#   /' "$skips"
fi
# One closing line for the whole suite (cargo's last line is a doc-test run).
ran_skipped=$(grep -c '^SKIPPED ' "$skips" || true)
awk -v s="$ran_skipped" '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p - s, f, i + s }' "$log"
if grep -q "^error: could not compile" "$log"; then
  echo "summary: BUILD FAILED (see 'error: could not compile' above); those tests did not run"
fi
exit "$status"
