#!/usr/bin/env bash
# Durable `ca` enrollment throughput of a PostgreSQL-backed gateway against a RocksDB-backed
# one, on this machine, in one run: the PostgreSQL row of BENCHMARKS.md.
#
# Usage: loadtest/postgres.sh [--count N] [--concurrency C] [--repeat R] [--no-build]
#
# Starts a throwaway PostgreSQL (initdb as the postgres user into a temporary directory, a
# loopback port; fsync and synchronous_commit on), two gateways (`serve --workers 2`), one
# per store, each with its own fleet CA registered, and runs the load tool's `ca` mode
# against each in turn (R times, interleaved), N fresh-connection enrollments at
# concurrency C. Everything shares the machine: the PostgreSQL server's CPU is part of what
# the PostgreSQL-backed figure pays. Prints each run's rate, the median per store, their
# ratio, the CPU per enrollment of the gateway and of PostgreSQL, and, from the gateway's
# metrics, commands per commit and database round trips per commit.
set -euo pipefail

count=4000
concurrency=256
repeat=3
build=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --count) count=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "postgres.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
bin="$target/release"
if [[ $build == 1 ]]; then
  cargo build --release -p enrollgate --bin enrollgate -p enrollgate-loadtest --bin enrollgate-loadtest
fi
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $pgbin/initdb ]] || { echo "postgres.sh: no PostgreSQL server (scripts/install-deps)" >&2; exit 1; }

work=$(mktemp -d /dev/shm/enrollgate-pgbench.XXXXXX 2>/dev/null || mktemp -d)
chmod 755 "$work"
pids=()
pg_started=0
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [[ $pg_started == 1 ]]; then
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mkdir "$work/pg" && chown postgres "$work/pg"
pgport=$(free_port)
runuser -u postgres -- "$pgbin/initdb" -D "$work/pg/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg/data" -w -l "$work/pg/log" \
  -o "-p $pgport -k $work/pg -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c max_connections=50" start >/dev/null
pg_started=1
runuser -u postgres -- "$pgbin/psql" -h "$work/pg" -p "$pgport" -qc "CREATE DATABASE enrollgate" >/dev/null
pg_pid=$(head -1 "$work/pg/data/postmaster.pid")

"$bin/enrollgate-loadtest" fleet --ca-out "$work/fleet" --devices $((2 * count * repeat + 100)) 2>&1 | tail -1

declare -A port metrics_port gw_pid
for store in rocksdb postgresql; do
  port[$store]=$(free_port)
  metrics_port[$store]=$(free_port)
  extra=()
  [[ $store == postgresql ]] && extra=(--store-url "postgresql://postgres@127.0.0.1:$pgport/enrollgate")
  "$bin/enrollgate" init --data-dir "$work/$store" --listen "127.0.0.1:${port[$store]}" "${extra[@]}" >/dev/null
  "$bin/enrollgate" serve --config "$work/$store/enrollgate.toml" --workers 2 \
    --metrics-listen "127.0.0.1:${metrics_port[$store]}" 2>"$work/$store.log" &
  gw_pid[$store]=$!
  pids+=("$!")
  for _ in $(seq 100); do grep -q "enrollgate ready" "$work/$store.log" && break; sleep 0.1; done
  grep -q "enrollgate ready" "$work/$store.log" || { cat "$work/$store.log" >&2; exit 1; }
  "$bin/enrollgate-loadtest" register-ca --fleet "$work/fleet" --identity "$work/$store/admin.json" --name fleet --auto >/dev/null
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# PostgreSQL: the postmaster and every backend it forked.
pg_ticks() {
  local total=0 p
  for p in $pg_pid $(pgrep -P "$pg_pid" || true); do
    [[ -r /proc/$p/stat ]] && total=$((total + $(ticks "$p")))
  done
  echo "$total"
}
metric() { # store, series
  curl -s "http://127.0.0.1:${metrics_port[$1]}/metrics" | awk -v s="$2" '$1 == s {print $2}' | head -1
}

: >"$work/runs"
for ((r = 0; r < repeat; r++)); do
  for store in rocksdb postgresql; do
    [[ $store == postgresql ]] && offset=$(( (2 * r + 1) * count ))
    [[ $store == rocksdb ]] && offset=$(( 2 * r * count ))
    g0=$(ticks "${gw_pid[$store]}"); p0=$(pg_ticks)
    c0=$(metric "$store" enrollgate_commit_batch_size_count); s0=$(metric "$store" enrollgate_commit_batch_size_sum)
    t0=$(metric "$store" enrollgate_commit_round_trips_sum)
    "$bin/enrollgate-loadtest" run --target "https://127.0.0.1:${port[$store]}" --mode ca \
      --fleet "$work/fleet" --device-offset "$offset" --ca-file "$work/$store/pki/ca.crt" \
      --concurrency "$concurrency" --count "$count" --quiet --json "$work/$store.$r.json" >&2
    g1=$(ticks "${gw_pid[$store]}"); p1=$(pg_ticks)
    c1=$(metric "$store" enrollgate_commit_batch_size_count); s1=$(metric "$store" enrollgate_commit_batch_size_sum)
    t1=$(metric "$store" enrollgate_commit_round_trips_sum)
    echo "$store $r $((g1 - g0)) $((p1 - p0)) ${c0:-0} ${c1:-0} ${s0:-0} ${s1:-0} ${t0:-0} ${t1:-0}" >>"$work/runs"
  done
done

python3 - "$work" "$(getconf CLK_TCK)" "$concurrency" <<'PY'
import json, statistics, sys
work, hz, conc = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = {}
for line in open(f"{work}/runs"):
    store, r, g, p, c0, c1, s0, s1, t0, t1 = line.split()
    j = json.load(open(f"{work}/{store}.{r}.json"))
    ok = j["ok"]
    rate = j["throughput_per_s"]
    commits = float(c1) - float(c0)
    rows.setdefault(store, []).append(dict(
        rate=rate, ok=ok, failures=j.get("errorsByCode", {}),
        gw_us=int(g) / hz * 1e6 / max(ok, 1), pg_us=int(p) / hz * 1e6 / max(ok, 1),
        per_commit=(float(s1) - float(s0)) / commits if commits else 0.0,
        trips=(float(t1) - float(t0)) / commits if commits else 0.0))
print(f"\ndurable `ca` enrollments at concurrency {conc}, fresh connections, serve --workers 2, one machine")
for store, rs in rows.items():
    for i, x in enumerate(rs):
        print(f"  {store:10} run {i}: {x['rate']:7.0f}/s  ({x['ok']} ok, failures {x['failures'] or 'none'}); "
              f"CPU per enrollment: gateway {x['gw_us']:.0f} us, PostgreSQL {x['pg_us']:.0f} us; "
              f"{x['per_commit']:.1f} enrollments per commit, {x['trips']:.1f} round trips per commit")
med = {s: statistics.median(x["rate"] for x in rs) for s, rs in rows.items()}
print(f"median: rocksdb {med['rocksdb']:.0f}/s, postgresql {med['postgresql']:.0f}/s; "
      f"postgresql / rocksdb = {med['postgresql'] / med['rocksdb']:.2f}")
PY
