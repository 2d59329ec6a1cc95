#!/usr/bin/env bash
# The whole test suite on a fresh Debian/Ubuntu machine: installs the real
# NBD clients the tests drive, builds driftless, runs every test.
# Root-only tests (losetup, mount) print SKIPPED when not run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nbdkit libnbd-bin nbdfuse fuse3 fio nbd-server e2fsprogs qemu-utils jq util-linux)
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
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace --no-fail-fast -- --test-threads=2 "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo's last line is a doc-test run).
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
if grep -q "^error: could not compile" "$log"; then
  echo "summary: BUILD FAILED (see 'error: could not compile' above); those tests did not run"
fi
exit "$status"
