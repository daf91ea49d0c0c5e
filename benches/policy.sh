#!/usr/bin/env bash
# The policy hook's cost: median and p99 latency of FluxRouter without a hook and with one on
# loopback (the simulator's `/_sim/policy`, which allows everything), side by side in one
# run, at one connection and at CONNS. One markdown table (stdout; progress on stderr).
#
# usage: [KNOB=value ...] bash benches/policy.sh      Knobs: DURATION=10 CONNS=16
# Needs oha (cargo install oha --locked).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 0 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
DURATION=${DURATION:-10}
CONNS=${CONNS:-16}
command -v oha >/dev/null || { echo "needs oha (cargo install oha --locked)" >&2; exit 2; }
# shellcheck source=benches/common.sh
source benches/common.sh

build_release
mapfile -t ports < <(python3 benches/load_util.py ports 3)
sim_port=${ports[0]} plain_port=${ports[1]} hook_port=${ports[2]}
start_sim "$sim_port"

one_lane "$work/lanes.yaml"
for name in plain hook; do
  port_var=${name}_port
  mkdir -p "$work/$name"
  cp "$work/lanes.yaml" "$work/$name/lanes.yaml"
  {
    cat <<YAML
listen: ["127.0.0.1:${!port_var}"]
server: { threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: "$work/$name/flux.pid", upgrade_sock: "$work/$name/flux.sock" }
keys_file: keys.yaml
lanes_file: lanes.yaml
access_log: "off"
ledger: { path: "$work/$name/ledger.sqlite" }
providers:
  bench: { format: openai, base_url: "http://127.0.0.1:$sim_port/v1" }
plans:
  payg: { lanes: [express] }
YAML
    [ "$name" = plain ] || echo "policy: { url: \"http://127.0.0.1:$sim_port/_sim/policy\", timeout_ms: 200 }"
  } >"$work/$name/fluxrouter.yaml"
  "$bin" --config "$work/$name/fluxrouter.yaml" keys new --plan payg --name bench >"$work/$name/key" 2>"$work/$name/keys.log" ||
    { cat "$work/$name/keys.log" >&2; exit 1; }
  start "flux-$name" "$bin" --config "$work/$name/fluxrouter.yaml"
  wait_http "flux-$name" "http://127.0.0.1:${!port_var}/healthz"
done
body='{"model":"flux-fast","max_tokens":16,"messages":[{"role":"user","content":"summarise the quarterly review in one line"}]}'
run() { # name conns -> "p50 p99 rps"
  local port_var=${1}_port
  oha --no-tui --output-format json -z "${DURATION}s" -c "$2" -m POST \
    -H "Authorization: Bearer $(cat "$work/$1/key")" -H "Content-Type: application/json" -d "$body" \
    "http://127.0.0.1:${!port_var}/v1/chat/completions" |
    python3 -c 'import json, sys; r = json.load(sys.stdin); p = r["latencyPercentiles"]; print("%.3f %.3f %.0f" % (p["p50"] * 1000, p["p99"] * 1000, r["summary"]["requestsPerSec"]))'
}
echo "| connections | p50 without hook (ms) | p50 with hook (ms) | p50 added (ms) | p99 without | p99 with | req/s without | req/s with |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in 1 "$CONNS"; do
  log "$c connection(s): ${DURATION} s each, without then with the hook"
  run plain "$c" >/dev/null # warm-up
  read -r p50a p99a rpsa < <(run plain "$c")
  read -r p50b p99b rpsb < <(run hook "$c")
  added=$(python3 -c "print(f'{$p50b - $p50a:.3f}')")
  echo "| $c | $p50a | $p50b | $added | $p99a | $p99b | $rpsa | $rpsb |"
done
