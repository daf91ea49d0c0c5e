#!/usr/bin/env bash
# Prompt-cache affinity on an agent workload: the cached share of what was cacheable, and the
# customer's cost, for per-turn routing, affinity, and affinity with cache-aware flux-auto.
# One run, one markdown table (stdout; progress on stderr).
#
# On loopback, release build: `fluxrouter simulate` with named targets (each keeps its own
# prompt cache, as providers do), FluxRouter with two lanes of three targets each (`daily`
# at the shipped Daily Driver prices, `express` at the Express Lane's) and flux-auto sending a
# conversation's first turn to daily and later turns to express. benches/affinity.py plays
# CONVERSATIONS conversations of TURNS turns through flux-auto, three times:
#   per-turn routing   weighted lanes, affinity off, auto.cache_aware off
#   affinity           affinity on (the default), cache_aware off
#   cache-aware        affinity on, cache_aware on (the default)
#
# usage: [KNOB=value ...] bash benches/affinity.sh
# Knobs: CONVERSATIONS=50 TURNS=20 EXPRESS_CACHED=0.25 (express's cached input price per M;
#        1.00: its provider has no cache discount, so moving down never pays)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 0 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
CONVERSATIONS=${CONVERSATIONS:-50}
TURNS=${TURNS:-20}
EXPRESS_CACHED=${EXPRESS_CACHED:-0.25}
# shellcheck source=benches/common.sh
source benches/common.sh

build_release
mapfile -t ports < <(python3 benches/load_util.py ports 2)
sim_port=${ports[0]} gw_port=${ports[1]}
start_sim "$sim_port"

lanes_yaml() { # affinity cache_aware
  cat <<YAML
lanes:
  daily:
    alias: flux-standard
    title: Daily Driver
    price: { input_per_mtok: 2.00, cached_input_per_mtok: 0.50, output_per_mtok: 8.00 }
    strategy: weighted
    affinity: $1
    default: flux-pinned-daily-a
    fallbacks: [flux-pinned-daily-b, flux-pinned-daily-c]
  express:
    alias: flux-fast
    title: Express Lane
    price: { input_per_mtok: 1.00, cached_input_per_mtok: $EXPRESS_CACHED, output_per_mtok: 4.00 }
    strategy: weighted
    affinity: $1
    default: flux-pinned-express-a
    fallbacks: [flux-pinned-express-b, flux-pinned-express-c]
models:
YAML
  for l in daily express; do
    for t in a b c; do
      echo "  flux-pinned-$l-$t: { upstream: $l-$t, provider: t_$l$t, lane: $l, context_window: 1000000, max_output_tokens: 4096, capabilities: [tools, streaming] }"
    done
  done
  cat <<YAML
auto:
  cache_aware: $2
  rules:
    - { name: later-turns, when: { min_messages: 3 }, lane: express }
    - { name: first-turn, lane: daily }
YAML
}
providers=""
for l in daily express; do
  for t in a b c; do
    providers+="  t_$l$t: { format: openai, base_url: \"http://127.0.0.1:$sim_port/_sim/target=$l-$t/v1\" }"$'\n'
  done
done
cat >"$work/fluxrouter.yaml" <<YAML
listen: ["127.0.0.1:$gw_port"]
server: { threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: "$work/flux.pid", upgrade_sock: "$work/flux.sock" }
keys_file: keys.yaml
lanes_file: lanes.yaml
access_log: "$work/flux-access.log"
providers:
$providers
plans:
  payg: { lanes: [daily, express] }
YAML
lanes_yaml true true >"$work/lanes.yaml"
key=$("$bin" --config "$work/fluxrouter.yaml" keys new --plan payg --name bench 2>"$work/keys.log") ||
  { cat "$work/keys.log" >&2; exit 1; }

echo "| routing | requests | input tokens | cacheable | cached | cached share of cacheable | customer cost | turns by lane |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for row in "per-turn routing:false:false" "affinity:true:false" "affinity + cache-aware flux-auto:true:true"; do
  IFS=: read -r label affinity aware <<<"$row"
  lanes_yaml "$affinity" "$aware" >"$work/lanes.yaml"
  start flux "$bin" --config "$work/fluxrouter.yaml"
  wait_http flux "http://127.0.0.1:$gw_port/healthz"
  log "$label: $CONVERSATIONS conversations x $TURNS turns"
  python3 benches/affinity.py "http://127.0.0.1:$gw_port" "http://127.0.0.1:$sim_port" "$key" \
    "$label" "$CONVERSATIONS" "$TURNS"
  stop flux
done
