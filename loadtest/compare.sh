#!/usr/bin/env bash
# Runs the same fleet in `handshake` mode (mutual TLS + one GET per connection) against
# enrollgate and against nginx configured for mTLS with the same server certificate and
# key, one server at a time, and prints the throughput ratio.
#
# Usage: loadtest/compare.sh [--devices N] [--duration D] [--warmup D] [--concurrency C]
#                            [--workers N] [--kx LIST] [--server-cpus LIST]
#                            [--client-cpus LIST] [--keep DIR] [--no-build]
#
# Everything runs on loopback in a temporary directory, removed at the end (unless --keep).
# nginx comes from the distribution (apt-get install nginx if missing); the script starts
# it with a generated config and stops it (by its PID) when its run is over.
#
# Two nginx runs, because the two servers do different work in the handshake:
#   nginx (optional_no_ca)  asks for the client certificate and checks the handshake
#                           signature, but does not verify the chain: what enrollgate does
#                           in its handshake (it verifies chains later, per enrollment).
#   nginx (verify on)       also verifies the chain against the fleet's CA.
set -euo pipefail

devices=2000
duration=10s
warmup=2s
concurrency=32
workers=$(nproc)
# Debian 12's OpenSSL 3.0 has no ML-KEM: offer X25519 to both servers, so both do the
# same key exchange. Pass --kx x25519mlkem768,x25519 to see rustls' default.
kx=x25519
server_cpus=""
client_cpus=""
keep=""
build=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices) devices=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --kx) kx=$2; shift 2 ;;
    --server-cpus) server_cpus=$2; shift 2 ;;
    --client-cpus) client_cpus=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release"
if [[ $build == 1 ]]; then
  cargo build --release -p enrollgate --bin enrollgate -p enrollgate-loadtest --bin enrollgate-loadtest
fi
for b in enrollgate enrollgate-loadtest; do
  [[ -x "$bin/$b" ]] || { echo "compare.sh: $bin/$b is missing (build it, or drop --no-build)" >&2; exit 1; }
done
if ! command -v nginx >/dev/null; then
  echo "compare.sh: installing nginx from the distribution" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >/dev/null; }
fi
nginx_bin=$(command -v nginx)
command -v python3 >/dev/null || { echo "compare.sh: needs python3 (to read the JSON reports)" >&2; exit 1; }

if [[ -n $keep ]]; then
  work=$(realpath -m "$keep"); mkdir -p "$work"
else
  work=$(mktemp -d /tmp/enrollgate-compare.XXXXXX)
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

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "compare.sh: nothing listens on port $1" >&2
  return 1
}
# The command prefix that pins a server (taskset execs the server, so $! is its PID).
pin=()
if [[ -n $server_cpus ]]; then pin=(taskset -c "$server_cpus"); fi
stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

gw_port=$(free_port)
"$bin/enrollgate" init --data-dir "$work/gw" --listen "127.0.0.1:$gw_port" >/dev/null
sed -i 's/^listen = "127.0.0.1:9464".*/listen = "off"/; s/^level = "info"/level = "warn"/' "$work/gw/enrollgate.toml"
"$bin/enrollgate-loadtest" fleet --ca-out "$work/fleet" --devices "$devices" 2>&1 | tail -1

client_args=(--mode handshake --fleet "$work/fleet" --ca-file "$work/gw/pki/ca.crt"
  --server-name localhost --concurrency "$concurrency" --duration "$duration" --warmup "$warmup"
  --kx "$kx" --max-error-rate 0.001 --quiet)
if [[ -n $client_cpus ]]; then client_args+=(--cpus "$client_cpus"); fi

measure() { # name port
  echo "== $1" >&2
  "$bin/enrollgate-loadtest" run --target "https://127.0.0.1:$2" "${client_args[@]}" \
    --json "$work/$1.json" --plot "$work/$1.svg" >&2
}

# 1. enrollgate
"${pin[@]}" "$bin/enrollgate" serve --config "$work/gw/enrollgate.toml" --workers "$workers" \
  2>"$work/enrollgate.log" &
server_pid=$!
wait_port "$gw_port"
measure enrollgate "$gw_port"
stop_server

# 2. nginx, twice
nginx_conf() { # verify-mode port
  mkdir -p "$work/nginx-tmp"
  cat >"$work/nginx.conf" <<EOF
worker_processes $workers;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/nginx-tmp/body;
  proxy_temp_path $work/nginx-tmp/proxy;
  fastcgi_temp_path $work/nginx-tmp/fastcgi;
  uwsgi_temp_path $work/nginx-tmp/uwsgi;
  scgi_temp_path $work/nginx-tmp/scgi;
  server {
    listen 127.0.0.1:$2 ssl;
    ssl_certificate $work/gw/pki/server.crt;
    ssl_certificate_key $work/gw/pki/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    ssl_client_certificate $work/fleet/ca-root.pem;
    ssl_verify_client $1;
    ssl_verify_depth 2;
    keepalive_timeout 0;
    location / {
      default_type application/json;
      return 200 '{"data":{"version":"nginx"},"meta":{}}';
    }
  }
}
EOF
}
for mode in optional_no_ca on; do
  port=$(free_port)
  nginx_conf "$mode" "$port"
  "${pin[@]}" "$nginx_bin" -c "$work/nginx.conf" -p "$work" 2>>"$work/nginx-error.log" &
  server_pid=$!
  wait_port "$port"
  measure "nginx-$mode" "$port"
  stop_server
done

python3 - "$work" <<'EOF'
import json, sys
work = sys.argv[1]
rows = []
for name in ["enrollgate", "nginx-optional_no_ca", "nginx-on"]:
    with open(f"{work}/{name}.json") as f:
        j = json.load(f)
    rows.append((name, j))
print()
print(f"{'server':<24}{'handshakes/s':>14}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'client CPU/req':>16}")
for name, j in rows:
    cpu = j["cpu"]["perRequest_us"]
    print(f"{name:<24}{j['throughput_per_s']:>14.1f}{j['latency_ms']['p50']:>10.2f}"
          f"{j['latency_ms']['p99']:>10.2f}{j['errors']:>8}{(f'{cpu:.0f} us' if cpu else '-'):>16}")
eg = rows[0][1]["throughput_per_s"]
for name, j in rows[1:]:
    other = j["throughput_per_s"]
    ratio = eg / other if other else float("nan")
    print(f"enrollgate / {name}: {ratio:.2f}")
tls = {k for _, j in rows for k in j["tls"]}
print("negotiated:", ", ".join(sorted(tls)))
EOF
