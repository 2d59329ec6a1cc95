#!/usr/bin/env bash
# benches/cluster-wrap.sh - a primary (and optionally one secondary) of volume
# "vol0" on loopback, for the fio harness in ../shared/bench and for
# benches/quic-ship.sh.
#
# Usage:
#   cluster-wrap.sh serve  MODE FILE SOCK DIR   SERVER_CMD for peers-compare.sh:
#       writes certs+configs in DIR, starts the secondary in the background,
#       waits for it, then execs the primary (NBD on unix SOCK, volume FILE) in
#       the foreground; a watchdog kills the secondary once the primary's PID
#       is gone. Export name: vol0.
#   cluster-wrap.sh config MODE FILE SOCK DIR   only write DIR/{certs,primary.toml,
#       secondary.toml} and print "tcp=ADDR quic=ADDR" (for scripts that start
#       the nodes themselves).
# MODE: none (no peer) | sync-tcp (one sync peer, TCP+TLS) | async-quic (one
#       async peer over QUIC).
# Env: DRIFTLESS=path to the binary (default $CARGO_TARGET_DIR/release/driftless
#      or target/release/driftless), VOL_SIZE (default 1GiB),
#      PRIMARY_EXTRA / SECONDARY_EXTRA: extra TOML lines for the [[volume]] table,
#      QUIC_EXTRA: lines for a [quic] section written into both configs,
#      PEER_LOG: file the watchdog appends the peer's state changes to.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:?usage: cluster-wrap.sh serve|config MODE FILE SOCK DIR}
mode=${2:?MODE} file=${3:?FILE} sock=${4:?SOCK} dir=${5:?DIR}
bin=${DRIFTLESS:-${CARGO_TARGET_DIR:-$root/target}/release/driftless}
size=${VOL_SIZE:-1GiB}
uuid=6c1b7e0a-4d2f-4a51-9a7e-0b5d2c3e4f10
[ -x "$bin" ] || { echo "cluster-wrap: no driftless binary at $bin" >&2; exit 2; }
case $mode in none|sync-tcp|async-quic) ;; *) echo "cluster-wrap: bad MODE $mode" >&2; exit 2 ;; esac

free_port() { # $1 = t (tcp) or u (udp)
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    ss -Hln"$1" "sport = :$p" | grep -q . || { echo "$p"; return 0; }
  done
  echo "cluster-wrap: no free port" >&2; return 1
}

mkdir -p "$dir/certs"
if [ ! -f "$dir/certs/ca.pem" ]; then
  "$bin" cert ca --dir "$dir/certs" >/dev/null
  "$bin" cert node --name pri --ca-dir "$dir/certs" --dir "$dir/certs" >/dev/null
  "$bin" cert node --name sec --ca-dir "$dir/certs" --dir "$dir/certs" >/dev/null
fi
tcp=127.0.0.1:$(free_port t) quic=127.0.0.1:$(free_port u)
quic_section=""
[ -z "${QUIC_EXTRA:-}" ] || quic_section=$'[quic]\n'"$QUIC_EXTRA"
node_head() { # name
  cat <<EOF
[node]
name = "$1"
control_socket = "$dir/$1.ctl"

[tls]
cert = "$dir/certs/$1.pem"
key = "$dir/certs/$1.key"
ca = "$dir/certs/ca.pem"

$quic_section
EOF
}
{
  node_head pri
  cat <<EOF
[[volume]]
name = "vol0"
uuid = "$uuid"
path = "$file"
size = "$size"
role = "primary"
${PRIMARY_EXTRA:-}

[volume.nbd]
unix = "$sock"
EOF
  case $mode in
    sync-tcp) printf '\n[[volume.peer]]\nname = "sec"\nmode = "sync"\ntransport = "tcp"\naddress = "%s"\n' "$tcp" ;;
    async-quic) printf '\n[[volume.peer]]\nname = "sec"\nmode = "async"\ntransport = "quic"\naddress = "%s"\n' "$quic" ;;
  esac
} >"$dir/primary.toml"
{
  node_head sec
  cat <<EOF
[[volume]]
name = "vol0"
uuid = "$uuid"
path = "$dir/secondary.img"
size = "$size"
role = "secondary"
listen_tcp = "$tcp"
listen_quic = "$quic"
${SECONDARY_EXTRA:-}
EOF
} >"$dir/secondary.toml"

if [ "$cmd" = config ]; then
  echo "tcp=$tcp quic=$quic"
  exit 0
fi
[ "$cmd" = serve ] || { echo "cluster-wrap: bad command $cmd" >&2; exit 2; }

if [ "$mode" != none ]; then
  [ -f "$dir/secondary.img" ] || truncate -s "$(stat -c %s "$file")" "$dir/secondary.img"
  "$bin" run --config "$dir/secondary.toml" >"$dir/secondary.out" 2>"$dir/secondary.log" &
  spid=$!
  ok=0
  for _ in $(seq 200); do # 10 s
    if ! kill -0 "$spid" 2>/dev/null; then
      echo "cluster-wrap: secondary exited early:" >&2; cat "$dir/secondary.log" >&2; exit 1
    fi
    if grep -q "ready; control socket" "$dir/secondary.out"; then ok=1; break; fi
    sleep 0.05
  done
  if [ $ok = 0 ]; then
    kill "$spid" 2>/dev/null || true
    echo "cluster-wrap: secondary not ready after 10 s" >&2; cat "$dir/secondary.log" >&2; exit 1
  fi
  # Watchdog: $$ becomes the primary after exec; when it is gone, stop the
  # secondary (TERM, then KILL after 5 s). With PEER_LOG set, it also appends
  # every change of the peer's state ("MODE STATE", e.g. connected/outdated after a
  # fold) to that file, so a benchmark can tell which runs shipped throughout.
  me=$$
  (
    trap '' TERM INT HUP
    last="" n=0
    [ -z "${PEER_LOG:-}" ] || echo "$(date +%T) $mode run-start" >>"$PEER_LOG"
    while kill -0 "$me" 2>/dev/null; do
      sleep 0.2
      n=$((n + 1))
      if [ -n "${PEER_LOG:-}" ] && [ $((n % 5)) = 0 ]; then
        st=$("$bin" status --socket "$dir/pri.ctl" --json 2>/dev/null |
          jq -r '.volumes[0].peers[0] | "\(.connection)/\(.disk)"' 2>/dev/null) || st=""
        if [ -n "$st" ] && [ "$st" != "$last" ]; then
          echo "$(date +%T) $mode $st" >>"$PEER_LOG"
          last=$st
        fi
      fi
    done
    kill "$spid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$spid" 2>/dev/null || exit 0; sleep 0.1; done
    kill -9 "$spid" 2>/dev/null || true
  ) </dev/null >/dev/null 2>&1 &
fi
exec "$bin" run --config "$dir/primary.toml"
