#!/usr/bin/env bash
# Lane strategies when a target slows down: p50/p99 and the slow target's share of traffic,
# per time window, for failover, weighted and latency lanes over the same three simulated
# targets. One run, one markdown table (stdout; progress on stderr).
#
# On loopback, release build: `fluxrouter simulate` with three named targets (a, b, c: 50 ms
# to first byte), FluxRouter with three lanes over them (each lane its own three models, so
# each strategy learns on its own). benches/strategies.py sends RATE requests a second to one
# lane at a time, open loop; target a slows to 2 s at SLOW_AT seconds and recovers at
# RECOVER_AT. a is each lane's first target (failover sends it everything).
#
# usage: [KNOB=value ...] bash benches/strategies.sh
# Knobs: RATE=40  SLOW_AT=10  RECOVER_AT=40  END=70  STRATEGIES="failover weighted latency"
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 0 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
RATE=${RATE:-40}
SLOW_AT=${SLOW_AT:-10}
RECOVER_AT=${RECOVER_AT:-40}
END=${END:-70}
STRATEGIES=${STRATEGIES:-failover weighted latency}
# shellcheck source=benches/common.sh
source benches/common.sh

build_release
mapfile -t ports < <(python3 benches/load_util.py ports 2)
sim_port=${ports[0]} gw_port=${ports[1]}
start_sim "$sim_port"

{
  echo "lanes:"
  for s in $STRATEGIES; do
    cat <<YAML
  $s:
    alias: flux-$s
    title: $s over a, b, c
    price: { input_per_mtok: 1.0, output_per_mtok: 1.0 }
    strategy: $s
    affinity: false
    default: flux-pinned-$s-a
    fallbacks: [flux-pinned-$s-b, flux-pinned-$s-c]
YAML
  done
  echo "models:"
  for s in $STRATEGIES; do
    for t in a b c; do
      echo "  flux-pinned-$s-$t: { upstream: $s-$t, provider: t_$t, lane: $s, context_window: 100000, max_output_tokens: 4096, capabilities: [streaming] }"
    done
  done
  echo "auto:"
  echo "  rules: [{ name: default, lane: $(echo "$STRATEGIES" | cut -d' ' -f1) }]"
} >"$work/lanes.yaml"
lanes=$(echo "$STRATEGIES" | tr ' ' ',')
cat >"$work/fluxrouter.yaml" <<YAML
listen: ["127.0.0.1:$gw_port"]
server: { threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: "$work/flux.pid", upgrade_sock: "$work/flux.sock" }
keys_file: keys.yaml
lanes_file: lanes.yaml
access_log: "$work/flux-access.log"
providers:
  t_a: { format: openai, base_url: "http://127.0.0.1:$sim_port/_sim/target=a/v1" }
  t_b: { format: openai, base_url: "http://127.0.0.1:$sim_port/_sim/target=b/v1" }
  t_c: { format: openai, base_url: "http://127.0.0.1:$sim_port/_sim/target=c/v1" }
traffic: { total_deadline_ms: 30000 }
plans:
  payg: { lanes: [$lanes] }
YAML
key=$("$bin" --config "$work/fluxrouter.yaml" keys new --plan payg --name bench 2>"$work/keys.log") ||
  { cat "$work/keys.log" >&2; exit 1; }
start flux "$bin" --config "$work/fluxrouter.yaml"
wait_http flux "http://127.0.0.1:$gw_port/healthz"

echo "| lane strategy | window | requests | errors | p50 ms | p99 ms | share on the slowed target |"
echo "|---|---|---:|---:|---:|---:|---:|"
for s in $STRATEGIES; do
  log "$s: ${END} s at ${RATE}/s (target a slow from ${SLOW_AT} s to ${RECOVER_AT} s)"
  python3 benches/strategies.py "http://127.0.0.1:$gw_port" "http://127.0.0.1:$sim_port" "$key" \
    "flux-$s" "$s" "$RATE" "$SLOW_AT" "$RECOVER_AT" "$END"
done
