#!/usr/bin/env bash
# Side-by-side load benchmark on loopback, in one run: the gateway in front of the simulated
# provider, a bare Pingora passthrough proxy in front of it (the floor any Pingora gateway
# pays), and the simulated provider direct. Reports requests/s, p50/p99 (wrk), the gateway's
# CPU time per request, RSS idle and under load, and the delay added to the first SSE chunk.
#
# usage: bash benches/load.sh [DURATION_SECONDS] [CONNECTIONS]
# Needs wrk (apt-get install wrk) and python3. Builds the release binary first.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
conns=${2:-64}
command -v wrk >/dev/null || { echo "install wrk: apt-get install -y wrk" >&2; exit 1; }
bash scripts/bootstrap.sh
cargo build --release --locked --quiet --bin fluxrouter --example pingora_passthrough
bin=target/release/fluxrouter

work=$(mktemp -d)
sim_port=19090
gw_port=18080
pt_port=18090
cleanup() { kill "${sim_pid:-}" "${gw_pid:-}" "${pt_pid:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin" simulate --listen 127.0.0.1:$sim_port 2>"$work/sim.log" &
sim_pid=$!
target/release/examples/pingora_passthrough 127.0.0.1:$pt_port 127.0.0.1:$sim_port 2>"$work/pt.log" &
pt_pid=$!
cat >"$work/fluxrouter.yaml" <<YAML
listen: ["127.0.0.1:$gw_port"]
server: { threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: "$work/pid", upgrade_sock: "$work/upgrade.sock" }
keys_file: keys.yaml
lanes_file: lanes.yaml
providers:
  sim: { format: openai, base_url: "http://127.0.0.1:$sim_port/v1" }
plans:
  payg: { lanes: [express] }
YAML
cat >"$work/lanes.yaml" <<'YAML'
lanes:
  express:
    alias: flux-fast
    title: Express Lane
    price: { input_per_mtok: 1.0, output_per_mtok: 4.0 }
    default: flux-pinned-sim
models:
  flux-pinned-sim: { upstream: sim-model, provider: sim, lane: express, context_window: 128000, max_output_tokens: 4096, capabilities: [tools, vision, streaming] }
auto:
  rules:
    - { name: default, lane: express }
YAML
key=$("$bin" --config "$work/fluxrouter.yaml" keys new --plan payg --name bench 2>/dev/null)
# The access log is on (info), as in production, and goes to a file; FLUX_BENCH_LOG=warn turns it off.
RUST_LOG=${FLUX_BENCH_LOG:-info} "$bin" --config "$work/fluxrouter.yaml" 2>"$work/gateway.log" &
gw_pid=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$gw_port/healthz" >/dev/null && break
  sleep 0.1
done

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Warm the paths (connection pools, allocator) before measuring.
MODEL=flux-fast KEY=$key wrk -t2 -c$conns -d2s -s benches/chat.lua "http://127.0.0.1:$gw_port/v1/chat/completions" >/dev/null
MODEL=sim-model wrk -t2 -c$conns -d2s -s benches/chat.lua "http://127.0.0.1:$pt_port/v1/chat/completions" >/dev/null
echo "gateway RSS idle after warm-up: $(( $(rss_kb $gw_pid) / 1024 )) MB"

run() { # name url model key
  local out
  out=$(MODEL=$3 KEY=$4 wrk -t2 -c$conns -d${duration}s --latency -s benches/chat.lua "$2")
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  local reqs
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  printf '%-8s %10s req/s  p50 %8s  p99 %8s  requests %s  non-2xx %s\n' "$1" "$rps" "$p50" "$p99" "$reqs" "${non2xx:-0}"
  echo "$reqs" >"$work/$1.reqs"
}

cpu_per_request() { # name ticks_before ticks_after
  python3 - "$1" "$2" "$3" "$(getconf CLK_TCK)" "$(cat "$work/$1.reqs")" <<'PY'
import sys
name, t0, t1, hz, reqs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(f"{name} CPU per request: {(t1 - t0) / hz / reqs * 1e6:.1f} us ({(t1 - t0) / hz:.2f} s CPU for {reqs} requests)")
PY
}

echo "wrk -t2 -c$conns -d${duration}s, ~1 KB chat body, all on this machine's cores:"
g0=$(cpu_ticks $gw_pid)
run gateway "http://127.0.0.1:$gw_port/v1/chat/completions" flux-fast "$key"
g1=$(cpu_ticks $gw_pid)
p0=$(cpu_ticks $pt_pid)
run pingora "http://127.0.0.1:$pt_port/v1/chat/completions" sim-model ""
p1=$(cpu_ticks $pt_pid)
run direct "http://127.0.0.1:$sim_port/v1/chat/completions" sim-model ""
cpu_per_request gateway "$g0" "$g1"
cpu_per_request pingora "$p0" "$p1"
echo "gateway peak RSS under load: $(( $(hwm_kb $gw_pid) / 1024 )) MB"
python3 benches/first_chunk.py "http://127.0.0.1:$gw_port/v1/chat/completions" \
  "http://127.0.0.1:$sim_port/v1/chat/completions" "$key" 200
