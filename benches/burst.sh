#!/usr/bin/env bash
# Memory after a burst of 40 concurrent 30 MB uploads (default limits: 256 MiB in flight), then
# throughput (wrk -c64, 1 KB chat), for one release binary: how the allocators were compared
# (README "Memory, slow clients and broken HTTP").
#
# usage: bash benches/burst.sh BINARY [LABEL]
#   e.g. cargo build --release --no-default-features && cp target/release/fluxrouter /tmp/fr-glibc
#        bash benches/burst.sh /tmp/fr-glibc glibc
# Needs wrk, curl, bc and python3.
set -euo pipefail
bin=$(realpath "$1"); label=${2:-$(basename "$1")}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
sim_port=${SIM_PORT:-19190}; gw_port=${GW_PORT:-18180}
cleanup() { kill "${sim_pid:-}" "${gw_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$bin" simulate --listen 127.0.0.1:$sim_port 2>"$work/sim.log" &
sim_pid=$!
cat >"$work/fluxrouter.yaml" <<YAML
listen: ["127.0.0.1:$gw_port"]
server: { threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: "$work/pid", upgrade_sock: "$work/upgrade.sock" }
keys_file: keys.yaml
lanes_file: lanes.yaml
access_log: off
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
  flux-pinned-sim: { upstream: sim-model, provider: sim, lane: express, context_window: 20000000, max_output_tokens: 4096, capabilities: [tools, vision, streaming] }
auto:
  rules:
    - { name: default, lane: express }
YAML
key=$("$bin" --config "$work/fluxrouter.yaml" keys new --plan payg --name bench 2>/dev/null)
RUST_LOG=warn "$bin" --config "$work/fluxrouter.yaml" 2>"$work/gateway.log" &
gw_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$gw_port/healthz" >/dev/null && break; sleep 0.1; done
rss() { awk "/^$1/ {print int(\$2/1024)}" "/proc/$gw_pid/status"; }
cd "$repo"
MODEL=flux-fast KEY=$key wrk -t2 -c64 -d3s -s benches/chat.lua "http://127.0.0.1:$gw_port/v1/chat/completions" >/dev/null
sleep 2
idle=$(rss VmRSS)
python3 - "$work/body.json" <<'PY'
import json, sys
open(sys.argv[1], "w").write(json.dumps({"model": "flux-fast", "messages": [{"role": "user", "content": "a" * 30_000_000}]}))
PY
start=$(date +%s.%N)
pids=()
for i in $(seq 40); do
  curl -s -o /dev/null -w "%{http_code}\n" -H "Authorization: Bearer $key" -H "Content-Type: application/json" \
    --data-binary @"$work/body.json" "http://127.0.0.1:$gw_port/v1/chat/completions" >>"$work/codes" &
  pids+=($!)
done
wait "${pids[@]}" || true
end=$(date +%s.%N)
peak=$(rss VmHWM)
sleep 5
after=$(rss VmRSS)
codes=$(sort "$work/codes" | uniq -c | tr '\n' ' ')
out=$(MODEL=flux-fast KEY=$key wrk -t2 -c64 -d10s --latency -s benches/chat.lua "http://127.0.0.1:$gw_port/v1/chat/completions")
rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
printf '%-9s idle %4d MiB | 40x30MB: %s in %.1fs, peak %4d MiB, 5s after %4d MiB | wrk %s req/s p99 %s\n' \
  "$label" "$idle" "$codes" "$(echo "$end - $start" | bc)" "$peak" "$after" "$rps" "$p99"
