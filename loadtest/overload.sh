#!/usr/bin/env bash
# Overload: what a gateway held to a fraction of one core does when offered a multiple of
# the rate it sustains. Prints the sustained rate (closed loop), then the outcome of an
# open-loop run at FACTOR times that rate: successes, 429s, other answers, connections
# closed or reset, timeouts, and the daemon's peak RSS sampled every 50 ms.
#
# Usage: loadtest/overload.sh [--mode ott|ca] [--factor 4] [--rate N] [--quota 25]
#                             [--duration 10s] [--concurrency 4096]
#                             [--limits "key = value; ..."] [--keep DIR] [--no-build]
#
# --rate offers N requests/s instead of FACTOR times the sustained rate (which moves with
# this VM's speed from run to run): to compare two builds or settings at one rate.
# The daemon (`serve --workers 1`) runs pinned to CPU 0 in a cgroup v1 cpu controller
# group with cpu.cfs_quota_us = QUOTA% of one core (needs root and /sys/fs/cgroup/cpu), so
# that the load tool, on CPU 1, can offer several times what the daemon sustains.
# --limits adds settings to the [limits] table of the daemon's config.
set -euo pipefail

mode=ott
factor=4
fixed_rate=""
quota=25
duration=10s
concurrency=4096
limits=""
keep=""
build=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --mode) mode=$2; shift 2 ;;
    --factor) factor=$2; shift 2 ;;
    --rate) fixed_rate=$2; shift 2 ;;
    --quota) quota=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --limits) limits=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "overload.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
cg=/sys/fs/cgroup/cpu/enrollgate-overload-$$
[[ -w /sys/fs/cgroup/cpu ]] || { echo "overload.sh: needs a writable /sys/fs/cgroup/cpu (cgroup v1, root)" >&2; exit 1; }

cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release"
if [[ $build == 1 ]]; then
  cargo build --release -p enrollgate --bin enrollgate -p enrollgate-loadtest --bin enrollgate-loadtest
fi
if [[ -n $keep ]]; then
  work=$(realpath -m "$keep"); mkdir -p "$work"
else
  work=$(mktemp -d /tmp/enrollgate-overload.XXXXXX)
fi
server_pid=""
sampler_pid=""
cleanup() {
  [[ -n $sampler_pid ]] && kill "$sampler_pid" 2>/dev/null || true
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rmdir "$cg" 2>/dev/null || true
  [[ -n $keep ]] || rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin/enrollgate" init --data-dir "$work/gw" --listen "127.0.0.1:$port" >/dev/null
cfg="$work/gw/enrollgate.toml"
mport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -i "s/^listen = \"127.0.0.1:9464\".*/listen = \"127.0.0.1:$mport\"/; s/^level = \"info\"/level = \"warn\"/" "$cfg"
if [[ -n $limits ]]; then
  python3 - "$cfg" "$limits" <<'PY'
import sys
path, extra = sys.argv[1], sys.argv[2]
lines = open(path).read().split("\n")
i = lines.index("[limits]")
add = [s.strip() for s in extra.split(";") if s.strip()]
keys = {a.split("=")[0].strip() for a in add}
lines = [l for l in lines if l.split("=")[0].strip() not in keys or not l.strip() or l.startswith("#")]
i = lines.index("[limits]")
lines[i + 1:i + 1] = add
open(path, "w").write("\n".join(lines))
PY
fi

mkdir "$cg"
echo $((quota * 1000)) >"$cg/cpu.cfs_quota_us"
echo 100000 >"$cg/cpu.cfs_period_us"
taskset -c 0 "$bin/enrollgate" serve --config "$cfg" --workers 1 2>"$work/enrollgate.log" &
server_pid=$!
echo "$server_pid" >"$cg/cgroup.procs"
for t in /proc/$server_pid/task/*; do echo "${t##*/}" >"$cg/tasks" 2>/dev/null || true; done
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
# Threads started later (signing thread, committer) inherit the group from the process.
admin="$work/gw/admin.json"
gw="https://127.0.0.1:$port"

[[ $duration =~ ^[0-9]+s$ ]] || { echo "overload.sh: --duration in whole seconds (10s)" >&2; exit 2; }
"$bin/enrollgate-loadtest" fleet --ca-out "$work/fleet" --devices 40000 2>&1 | tail -1
case $mode in
  ott)
    "$bin/enrollgate-loadtest" prepare-ott --identity "$admin" --count 1500 --out "$work/tok-closed" --prefix closed >/dev/null
    args=(--mode ott --tokens "$work/tok-closed") ;;
  ca)
    "$bin/enrollgate-loadtest" register-ca --fleet "$work/fleet" --identity "$admin" --name fleet --auto >/dev/null
    args=(--mode ca --fleet "$work/fleet" --ca-file "$work/gw/pki/ca.crt") ;;
  *) echo "overload.sh: --mode ott or ca" >&2; exit 2 ;;
esac

echo "== sustained: closed loop, 64 connections, 1,500 requests" >&2
"$bin/enrollgate-loadtest" run --target "$gw" "${args[@]}" --concurrency 64 --count 1500 \
  --cpus 1 --quiet --json "$work/closed.json" >&2
rate=$(python3 -c "import json; print(round(json.load(open('$work/closed.json'))['throughput_per_s']))")
offered=$((rate * factor))
[[ -z $fixed_rate ]] || offered=$fixed_rate
extra=()
case $mode in
  ott)
    "$bin/enrollgate-loadtest" prepare-ott --identity "$admin" --count $((offered * ${duration%s} + 100)) \
      --out "$work/tok-open" --prefix open >/dev/null
    args=(--mode ott --tokens "$work/tok-open") ;;
  ca) extra=(--device-offset 1600) ;;
esac

echo "== offered: open loop at ${factor}x = $offered/s for $duration" >&2
rss_base=$(awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status")
( peak=0; while kill -0 "$server_pid" 2>/dev/null; do
    r=$(awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status" 2>/dev/null || echo 0)
    (( r > peak )) && peak=$r && echo "$peak" >"$work/peak"
    sleep 0.05
  done ) &
sampler_pid=$!
"$bin/enrollgate-loadtest" run --target "$gw" "${args[@]}" "${extra[@]}" --rate "$offered" \
  --concurrency "$concurrency" --duration "$duration" --cpus 1 --max-error-rate 1 \
  --json "$work/open.json" >"$work/open.txt" 2>&1 || true
sleep 0.2
kill "$sampler_pid" 2>/dev/null || true
sampler_pid=""
# What the daemon says it did: handshakes, connections it closed to make room, refusals.
curl -s --max-time 5 "http://127.0.0.1:$mport/metrics" >"$work/metrics.txt" || true
grep -E '^enrollgate_(tls_handshakes_total|connections_pushed_out_total|rate_limited_total)' \
  "$work/metrics.txt" | sed 's/^/daemon metric: /' >&2 || true
grep -E "requests|errors|by code|by kind|throughput|latency|start lag|  [A-Z_a-z]+ +[0-9]+" "$work/open.txt" >&2 || true
python3 - "$work" "$rate" "$offered" "$rss_base" "$quota" <<'PY'
import json, sys
work, rate, offered, base, quota = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
j = json.load(open(f"{work}/open.json"))
peak = int(open(f"{work}/peak").read())
print()
print(f"daemon: serve --workers 1, {quota}% of one core; sustained {rate}/s (closed loop, 64)")
print(f"offered {offered}/s open loop: {j['requests']} requests, {j['ok']} ok ({j['throughput_per_s']:.0f}/s), {j['errors']} errors")
for k, v in sorted((j.get("errorsByCode") or {}).items()):
    print(f"  answered {k}: {v}")
for k, v in sorted((j.get("errorsByKind") or {}).items()):
    print(f"  {k}: {v}")
lag = j["startLag_ms"]
print(f"tool start lag: p50 {lag['p50']:.0f} ms, p99 {lag['p99']:.0f} ms (late starts mean the tool, not the daemon, was the limit)")
print(f"latency of successes: p50 {j['latency_ms']['p50']:.0f} ms, p99 {j['latency_ms']['p99']:.0f} ms")
print(f"daemon RSS: {base} KiB before, peak {peak} KiB")
PY
