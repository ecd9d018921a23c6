#!/usr/bin/env bash
# Resident memory of idle TLS connections, and of replacing them: the per-connection figure
# and the fragmentation figures of BENCHMARKS.md ("The memory cap").
#
# Usage: loadtest/idle-churn.sh [--hold N] [--rounds R] [--max-memory SIZE] [--no-build]
#
# Starts `enrollgate serve --workers 1` on loopback in a temporary directory, opens N idle
# TLS connections (Python's ssl, no client certificate), then R times closes the oldest
# 2,000 one by one, each replaced by a new one, printing the daemon's RSS
# (/proc/PID/statm) at each step. --max-memory sets limits.max_memory (default "off", so
# that the figures are the allocator's, not the cap's).
set -euo pipefail

hold=1000
rounds=8
max_memory=off
build=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --hold) hold=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --max-memory) max_memory=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "idle-churn.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release"
[[ $build == 1 ]] && cargo build --release -p enrollgate --bin enrollgate
command -v python3 >/dev/null || { echo "idle-churn.sh: needs python3" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d /tmp/enrollgate-idle-churn.XXXXXX)
server_pid=""
cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin/enrollgate" init --data-dir "$work/gw" --listen "127.0.0.1:$port" >/dev/null
sed -i "s/^listen = \"127.0.0.1:9464\".*/listen = \"off\"/; s/^max_memory = .*/max_memory = \"$max_memory\"/" "$work/gw/enrollgate.toml"
"$bin/enrollgate" serve --config "$work/gw/enrollgate.toml" --workers 1 2>"$work/log" &
server_pid=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

python3 - "$server_pid" "$port" "$hold" "$rounds" <<'PY'
import collections, socket, ssl, sys, time
pid, port, hold, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
page = 4096
def rss_mib():
    return int(open(f"/proc/{pid}/statm").read().split()[1]) * page / 2**20
def conn():
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
start = rss_mib()
print(f"at rest: {start:.1f} MiB")
q = collections.deque(conn() for _ in range(hold))
held = rss_mib()
print(f"{hold} idle TLS connections: {held:.1f} MiB ({(held - start) * 1024 / max(hold, 1):.1f} KiB each)")
for r in range(rounds):
    for _ in range(2000):
        q.popleft().close()
        q.append(conn())
    time.sleep(0.3)
    print(f"after {(r + 1) * 2000} replacements: {rss_mib():.1f} MiB")
PY
