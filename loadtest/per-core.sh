#!/usr/bin/env bash
# Daemon CPU per enrollment, end to end, for each method, against its crypto floor: the
# "End to end" table of BENCHMARKS.md in one command.
#
# Usage: loadtest/per-core.sh [--count N] [--concurrency C] [--modes "handshake ott ottca ca"]
#                             [--repeat R] [--relaxed] [--keep DIR] [--no-build]
#                             [--cached-floors]
#
# One gateway (`serve --workers 1`, pinned to CPU 0, durable commits unless --relaxed) and
# the load tool (pinned to CPU 1) on loopback, in a temporary directory. For each mode it
# reads the daemon's utime + stime (all threads: worker, signing thread, committer) from
# /proc/PID/stat before and after N fresh-connection requests and divides by the
# successes. The floors are measured in the same run, just before, on the same CPU (the
# crypto benches of `benches/enroll.rs`, criterion medians): the server's share of a mutual
# handshake for handshake mode; of a server-only handshake (an ott device has no
# certificate yet) + CSR check + signing for ott; of a mutual handshake + a chain with an
# intermediate for ottca and ca. This VM's speed drifts by 10-20% from hour to hour, so a
# ratio is only read from floors and CPU figures of one run. --cached-floors reads
# criterion's last results in $CARGO_TARGET_DIR/criterion instead (faster, less exact).
# --repeat R runs the modes R times, interleaved (mode after mode, then again), each time on
# fresh tokens and devices, and prints per mode the median CPU per enrollment (the ratio is
# taken from it) with the lowest and highest: one noisy run no longer makes the headline.
# Then, for that run, the CPU per request by thread: the worker, its signing thread, the
# committer, and RocksDB's background threads (store bg: memtable flushes, compactions).
# Last, each mode's CPU against the crypto floor plus the transport floor (the same
# segments to a plain TCP server on the gateway's runtime, `enrollgate-loadtest transport`):
# the rest is the daemon's own.
set -euo pipefail

count=5000
repeat=1
concurrency=64
modes="handshake ott ottca ca"
relaxed=0
keep=""
build=1
cached_floors=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --count) count=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --relaxed) relaxed=1; shift ;;
    --keep) keep=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --cached-floors) cached_floors=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "per-core.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "per-core.sh: --repeat takes a positive integer" >&2; exit 2; }
[[ $(nproc) -ge 2 ]] || { echo "per-core.sh: needs 2 CPUs (daemon on 0, tool on 1)" >&2; exit 1; }

cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
bin="$target/release"
if [[ $build == 1 ]]; then
  cargo build --release -p enrollgate --bin enrollgate -p enrollgate-loadtest --bin enrollgate-loadtest
  [[ $cached_floors == 1 ]] || cargo bench --bench enroll --no-run
fi
command -v python3 >/dev/null || { echo "per-core.sh: needs python3 (to read the JSON reports)" >&2; exit 1; }

if [[ -n $keep ]]; then
  work=$(realpath -m "$keep"); mkdir -p "$work"
else
  work=$(mktemp -d /tmp/enrollgate-per-core.XXXXXX)
fi
server_pid=""
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  [[ -n $keep ]] || rm -rf "$work"
}
trap cleanup EXIT

criterion="$target/criterion"
if [[ $cached_floors == 0 ]]; then
  # The bench binary itself (not `cargo bench`, which could rebuild the daemon under test).
  bench_bin=$(ls -t "$target"/release/deps/enroll-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
  [[ -x $bench_bin ]] || { echo "per-core.sh: no bench binary; run without --no-build, or 'cargo bench --bench enroll --no-run'" >&2; exit 1; }
  criterion="$work/criterion"
  echo "measuring the crypto floors on CPU 0 (about a minute)" >&2
  CRITERION_HOME="$criterion" taskset -c 0 "$bench_bin" --bench --measurement-time 3 --warm-up-time 1 \
    'ott_floor/(server_share_mutual_p256|server_share_server_only_p256|csr_accept_p256|issue_client_cert_p256)$|chain_verify/1_with_intermediate(_remembered)?$' \
    >"$work/floors.log" 2>&1 || { cat "$work/floors.log" >&2; exit 1; }
fi

# The transport floor: the same segments over loopback to a plain TCP server on the
# gateway's runtime, no TLS (`enrollgate-loadtest transport`, src/transport.rs): the part of
# each connection's CPU that is the kernel's and the runtime's, measured on the same CPUs.
echo "measuring the transport floor on CPU 0 (a few seconds)" >&2
transport=$("$bin/enrollgate-loadtest" transport --server-cpu 0 --client-cpu 1 --quiet)

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin/enrollgate" init --data-dir "$work/gw" --listen "127.0.0.1:$port" >/dev/null
cfg="$work/gw/enrollgate.toml"
sed -i 's/^listen = "127.0.0.1:9464".*/listen = "off"/; s/^level = "info"/level = "warn"/' "$cfg"
grep -q '^durability = "sync"' "$cfg" || { echo "per-core.sh: no 'durability' key in the generated config" >&2; exit 1; }
if [[ $relaxed == 1 ]]; then sed -i 's/^durability = "sync"/durability = "relaxed"/' "$cfg"; fi

# Devices: in repeat r (from 0), ottca takes [2r*count, (2r+1)*count), ca the next `count`;
# handshake reuses the first ones.
"$bin/enrollgate-loadtest" fleet --ca-out "$work/fleet" --devices $((2 * count * repeat + 100)) 2>&1 | tail -1

taskset -c 0 "$bin/enrollgate" serve --config "$cfg" --workers 1 2>"$work/enrollgate.log" &
server_pid=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
admin="$work/gw/admin.json"
gw="https://127.0.0.1:$port"
"$bin/enrollgate-loadtest" register-ca --fleet "$work/fleet" --identity "$admin" --name fleet --auto --ottca >/dev/null
[[ " $modes " == *" ott "* ]] && "$bin/enrollgate-loadtest" prepare-ott --identity "$admin" --count $((count * repeat)) --out "$work/tok-ott" --prefix ott >/dev/null
[[ " $modes " == *" ottca "* ]] && "$bin/enrollgate-loadtest" prepare-ott --identity "$admin" --count $((count * repeat)) --out "$work/tok-ottca" --method ottca --ca fleet --prefix ottca >/dev/null

cpu_ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }
# utime + stime of the daemon's threads by role: the worker, its signing thread, the
# committer, and RocksDB's background threads (memtable flushes, compactions).
thread_ticks() {
  cat /proc/"$server_pid"/task/*/stat 2>/dev/null | awk '{
    c = $2; gsub(/[()]/, "", c); g = "";
    if (c ~ /^enrollgate-w[0-9]/) g = "worker"; else if (c ~ /^enrollgate-sign/) g = "signer";
    else if (c ~ /^enrollgate-comm/) g = "committer"; else if (c ~ /^rocksdb/) g = "store_bg";
    if (g != "") s[g] += $14 + $15 }
    END { printf "worker=%d signer=%d committer=%d store_bg=%d", s["worker"], s["signer"], s["committer"], s["store_bg"] }'
}
run() { # mode, repeat, extra args...
  local mode=$1 r=$2; shift 2
  local t0 t1 g0 g1
  g0=$(thread_ticks); t0=$(cpu_ticks)
  "$bin/enrollgate-loadtest" run --target "$gw" --mode "$mode" --concurrency "$concurrency" \
    --count "$count" --cpus 1 --quiet --json "$work/$mode.$r.json" "$@" >&2
  t1=$(cpu_ticks); g1=$(thread_ticks)
  echo "$mode $r $((t1 - t0)) $g0 $g1" >>"$work/cpu"
}
: >"$work/cpu"
for ((r = 0; r < repeat; r++)); do
  for mode in $modes; do
    case $mode in
      handshake) run handshake "$r" --fleet "$work/fleet" --ca-file "$work/gw/pki/ca.crt" ;;
      ott) run ott "$r" --tokens "$work/tok-ott" --token-offset $((r * count)) ;;
      ottca) run ottca "$r" --tokens "$work/tok-ottca" --token-offset $((r * count)) \
        --fleet "$work/fleet" --device-offset $((2 * r * count)) ;;
      ca) run ca "$r" --fleet "$work/fleet" --device-offset $(((2 * r + 1) * count)) \
        --ca-file "$work/gw/pki/ca.crt" ;;
      *) echo "per-core.sh: unknown mode '$mode'" >&2; exit 2 ;;
    esac
  done
done

python3 - "$work" "$criterion" "$(getconf CLK_TCK)" "$relaxed" "$cached_floors" "$transport" <<'PY'
import json, os, sys
work, crit, hz, relaxed = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
cached = sys.argv[5] == "1"
transport = float(sys.argv[6])
def est(path):
    try:
        with open(os.path.join(crit, path, "new", "estimates.json")) as f:
            return json.load(f)["median"]["point_estimate"] / 1000.0  # ns -> us
    except OSError:
        return None
# handshake, ottca and ca present a client certificate (mutual handshake: the server also
# checks its CertificateVerify); an ott device has none yet (server-only handshake).
hs = est("ott_floor/server_share_mutual_p256")
hs_plain = est("ott_floor/server_share_server_only_p256")
csr, sign = est("ott_floor/csr_accept_p256"), est("ott_floor/issue_client_cert_p256")
chain = est("chain_verify/1_with_intermediate")
# The daemon remembers a signature it verified (crates/enrollgate-proto/src/ca/memo.rs): from a fleet's second
# device on, only the leaf's signature is checked. Its ratio against that lower floor is
# the second figure for ottca and ca.
remembered = est("chain_verify/1_with_intermediate_remembered")
floors = {
    "handshake": hs,
    "ott": None if None in (hs_plain, csr, sign) else hs_plain + csr + sign,
    "ottca": None if None in (hs, chain) else hs + chain,
    "ca": None if None in (hs, chain) else hs + chain,
}
print(f"\n{'durable' if not relaxed else 'relaxed'} commits, serve --workers 1 on CPU 0, tool on CPU 1")
if None not in (hs, hs_plain, csr, sign, chain):
    print(f"floors ({'criterion, last results' if cached else 'measured in this run'}, median): "
          f"handshake {hs:.0f}us (server-only {hs_plain:.0f}us), CSR check {csr:.0f}us, "
          f"signing {sign:.0f}us, chain with an intermediate {chain:.0f}us "
          f"({remembered or 0:.0f}us with it remembered)")
print(f"transport floor (measured in this run): {transport:.0f}us per connection")
fleet = {m: hs + remembered for m in ("ottca", "ca")} if None not in (hs, remembered) else {}
runs = {}
ROLES = ("worker", "signer", "committer", "store_bg")
for line in open(os.path.join(work, "cpu")):
    mode, r, ticks, *groups = line.split()
    with open(os.path.join(work, f"{mode}.{r}.json")) as f:
        j = json.load(f)
    per = 1 / hz * 1e6 / max(j["ok"], 1)
    cpu = int(ticks) * per
    before = dict(g.split("=") for g in groups[:4])
    after = dict(g.split("=") for g in groups[4:])
    split = {k: (int(after[k]) - int(before[k])) * per for k in ROLES}
    split["other"] = max(cpu - sum(split.values()), 0.0)
    j["split"] = split
    runs.setdefault(mode, []).append((cpu, j))
repeats = max(len(v) for v in runs.values())
if repeats > 1:
    print(f"{repeats} runs of each mode, interleaved; per mode the run of median CPU, and the range")
print(f"{'mode':<10}{'ok':>7}{'errors':>8}{'per s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU/req':>11}{'floor':>9}{'floor/CPU':>11}"
      f"{'remembered':>12}{'floor/CPU':>11}" + (f"{'CPU range':>16}" if repeats > 1 else ""))
for mode, rs in runs.items():
    rs.sort(key=lambda x: x[0])
    cpu, j = rs[(len(rs) - 1) // 2]
    ok = sum(x[1]["ok"] for x in rs)
    errors = sum(x[1]["errors"] for x in rs)
    fl = floors.get(mode)
    ratio = f"{fl / cpu:.0%}" if fl else "-"
    ff = fleet.get(mode)
    second = f"{ff:.0f}us{ff / cpu:>11.0%}" if ff else f"{'-':>4}{'-':>11}"
    spread = f"{rs[0][0]:>9.0f}-{rs[-1][0]:.0f}us" if repeats > 1 else ""
    print(f"{mode:<10}{ok:>7}{errors:>8}{j['throughput_per_s']:>9.0f}{j['latency_ms']['p50']:>9.1f}"
          f"{j['latency_ms']['p99']:>9.1f}{cpu:>9.0f}us{(f'{fl:.0f}us' if fl else '-'):>9}{ratio:>11}"
          f"{second:>23}{spread}")
# Where the CPU of that run went, by thread. store bg is RocksDB flushing memtables and
# compacting: work for whatever was written before, not only by this mode (the tokens
# prepared for ott and ottca are flushed during whichever mode runs when the memtable fills).
print(f"\n{'CPU/req by thread':<18}{'worker':>9}{'signer':>9}{'committer':>11}{'store bg':>10}{'other':>8}")
for mode, rs in runs.items():
    sp = rs[(len(rs) - 1) // 2][1]["split"]
    print(f"{mode:<18}" + "".join(f"{sp[k]:>{w}.0f}us" for k, w in
          (("worker", 7), ("signer", 7), ("committer", 9), ("store_bg", 8), ("other", 6))))
# What is left once the floors are paid: the crypto floor (the issue's), the transport
# floor, and the rest, which is the daemon's own (TLS records and buffers, HTTP, the store,
# allocation, and the same work running colder than in the floors' tight loops).
print(f"\n{'beyond the floors':<18}{'CPU/req':>9}{'crypto':>9}{'transport':>11}{'rest':>8}{'floors/CPU':>12}")
for mode, rs in runs.items():
    cpu = rs[(len(rs) - 1) // 2][0]
    fl = floors.get(mode)
    if fl:
        print(f"{mode:<18}{cpu:>7.0f}us{fl:>7.0f}us{transport:>9.0f}us{cpu - fl - transport:>6.0f}us"
              f"{(fl + transport) / cpu:>12.0%}")
PY
