#!/usr/bin/env bash
# Checks the unit's SystemCallFilter against the system calls enrollgate really makes:
# runs the daemon under strace (io_uring driver) through a burst of enrollments and
# management calls, then compares every system call seen with the filter's sets.
# Needs: strace, systemd-analyze, a built enrollgate (ENROLLGATE=path, default target/release).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${ENROLLGATE:-$here/../target/release/enrollgate}"
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin" init --data-dir "$work/data" --listen 127.0.0.1:0 >/dev/null
strace -f -qq -o "$work/trace" "$bin" serve --config "$work/data/enrollgate.toml" 2>"$work/log" &
pid=$!
for _ in $(seq 100); do grep -q "enrollgate ready" "$work/log" && break; sleep 0.1; done
port="$(grep -o 'listen=[^ ]*' "$work/log" | head -1 | sed 's/.*://')"
sed -i "s#https://127.0.0.1:0#https://127.0.0.1:$port#" "$work/data/admin.json"
export ENROLLGATE_IDENTITY="$work/data/admin.json"
for i in $(seq 20); do
    "$bin" identity create device "dev-$i" -o "$work/dev-$i.jwt" 2>/dev/null
    "$bin" enroll --jwt "$work/dev-$i.jwt" --out "$work/dev-$i.json" 2>/dev/null
done
"$bin" identity list >/dev/null
# strace blocks fatal signals when it starts the program: signal the daemon itself.
daemon="$(pgrep -P "$pid" | head -1)"
kill -TERM "$daemon"
for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
grep -q 'driver="io_uring"\|driver=io_uring' "$work/log" || { echo "the daemon did not use io_uring here"; exit 1; }

# Expands a systemd syscall group (groups nest) into system call names.
expand() {
    systemd-analyze syscall-filter "$1" | tail -n +2 | sed 's/^ *//' | grep -v '^#' | grep -v '^$' |
    while read -r item; do
        case "$item" in
            @*) expand "$item" ;;
            *) echo "$item" ;;
        esac
    done
}
used="$( (grep -oE '^[0-9]+ +[a-z_0-9]+\(' "$work/trace" || true) | awk '{print $2}' | tr -d '(' | sort -u)"
allowed="$( (expand @system-service; printf '%s\n' io_uring_setup io_uring_enter io_uring_register) | sort -u)"
denied="$( (expand @privileged; expand @resources) | sort -u)"
fail=0
for s in $used; do
    # execve of the daemon itself happens before the filter applies.
    [ "$s" = execve ] && continue
    if ! grep -qx "$s" <<<"$allowed"; then echo "NOT ALLOWED: $s"; fail=1; fi
    if grep -qx "$s" <<<"$denied"; then echo "DENIED: $s"; fail=1; fi
done
echo "system calls used: $(wc -w <<<"$used")"
echo "$used" | tr '\n' ' '; echo
[ "$fail" = 0 ] && echo "SystemCallFilter allows every system call enrollgate made" || exit 1
