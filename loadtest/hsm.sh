#!/usr/bin/env bash
# ott enrollments per second with the CA key in a PKCS#11 token (SoftHSM2) against the key in
# memory: the "CA key in a PKCS#11 token" figures of BENCHMARKS.md in one command.
#
# Usage: loadtest/hsm.sh [--count N] [--concurrency C] [--workers W] [--repeat R] [--no-build]
#
# Two gateways made alike on loopback, in a temporary directory: one by `init`, one by
# `init --ca-key pkcs11:...` on a SoftHSM2 token initialised there (its own SOFTHSM2_CONF).
# Each serves with `--workers W` (default 2; each worker's signing thread signs a batch on
# 4 sessions of the token at once), durable commits. For each, in turn
# (R rounds, interleaved), N ott enrollments on fresh TLS connections, C in flight; prints
# throughput, latency p50/p99 and the daemon's CPU (utime + stime, all threads) per
# enrollment. The tool is not pinned: on a 2-CPU machine the daemon and the tool share the
# CPUs, so read the two keys' figures against each other, from one run.
set -euo pipefail

count=3000
concurrency=64
workers=2
repeat=3
build=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --count) count=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "hsm.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
module=/usr/lib/softhsm/libsofthsm2.so
[[ -e $module ]] && command -v softhsm2-util >/dev/null ||
  { echo "hsm.sh: needs softhsm2 (scripts/install-deps)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "hsm.sh: needs python3 (to read the JSON reports)" >&2; exit 1; }

cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
bin="$target/release"
if [[ $build == 1 ]]; then
  cargo build --release -p enrollgate --bin enrollgate -p enrollgate-loadtest --bin enrollgate-loadtest
fi

work=$(mktemp -d /tmp/enrollgate-hsm.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
  "$work/tokens" >"$work/softhsm2.conf"
export SOFTHSM2_CONF="$work/softhsm2.conf"
pin=$(head -c 9 /dev/urandom | base64 | tr -dc 0-9a-zA-Z)
softhsm2-util --init-token --free --label enrollgate --so-pin "$pin" --pin "$pin" >/dev/null
(umask 077 && printf '%s\n' "$pin" >"$work/pin")
uri="pkcs11:token=enrollgate;object=ca?module-path=$module&pin-source=$work/pin"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
declare -A port pid
for key in memory softhsm; do
  port[$key]=$(free_port)
  extra=()
  [[ $key == softhsm ]] && extra=(--ca-key "$uri")
  "$bin/enrollgate" init --data-dir "$work/$key" --listen "127.0.0.1:${port[$key]}" "${extra[@]}" >/dev/null 2>&1
  cfg="$work/$key/enrollgate.toml"
  sed -i 's/^listen = "127.0.0.1:9464".*/listen = "off"/; s/^level = "info"/level = "warn"/' "$cfg"
  "$bin/enrollgate" serve --config "$cfg" --workers "$workers" 2>"$work/$key.log" &
  pid[$key]=$!
  pids+=("$!")
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/${port[$key]}") 2>/dev/null && break
    sleep 0.1
  done
  "$bin/enrollgate-loadtest" prepare-ott --identity "$work/$key/admin.json" \
    --count $((count * repeat)) --out "$work/tok-$key" --prefix "ott-$key" >/dev/null
done

: >"$work/cpu"
for ((r = 0; r < repeat; r++)); do
  for key in memory softhsm; do
    p=${pid[$key]}
    t0=$(awk '{print $14 + $15}' "/proc/$p/stat")
    "$bin/enrollgate-loadtest" run --target "https://127.0.0.1:${port[$key]}" --mode ott \
      --concurrency "$concurrency" --count "$count" --quiet --json "$work/$key.$r.json" \
      --tokens "$work/tok-$key" --token-offset $((r * count)) >&2
    t1=$(awk '{print $14 + $15}' "/proc/$p/stat")
    echo "$key $r $((t1 - t0))" >>"$work/cpu"
  done
done

python3 - "$work" "$(getconf CLK_TCK)" "$repeat" "$workers" "$count" "$concurrency" <<'PY'
import json, sys, statistics
work, hz, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
workers, count, conc = sys.argv[4], sys.argv[5], sys.argv[6]
ticks = {}
for line in open(f"{work}/cpu"):
    key, r, t = line.split()
    ticks[(key, int(r))] = int(t)
print(f"\nott, {count} enrollments x {repeat} rounds, {conc} in flight, serve --workers {workers}, durable commits")
print("| CA key | throughput (median; range) | p50 / p99 | daemon CPU per enrollment (median) |")
print("|---|---|---|---|")
for key, name in (("memory", "in memory (PKCS#8 file)"), ("softhsm", "SoftHSM2 2.6 (PKCS#11)")):
    runs = []
    for r in range(repeat):
        with open(f"{work}/{key}.{r}.json") as f:
            j = json.load(f)
        if j["ok"] != j["requests"]:
            sys.exit(f"hsm.sh: {key} round {r}: {j['errors']} errors")
        cpu = ticks[(key, r)] / hz / j["ok"] * 1e6
        runs.append((j["throughput_per_s"], j["latency_ms"]["p50"], j["latency_ms"]["p99"], cpu))
    runs.sort()
    mid = runs[len(runs) // 2]
    cpu = statistics.median(x[3] for x in runs)
    print(f"| {name} | {mid[0]:,.0f}/s ({runs[0][0]:,.0f}-{runs[-1][0]:,.0f}) | "
          f"{mid[1]:.0f} / {mid[2]:.0f} ms | {cpu:.0f} µs |")
PY
