#!/usr/bin/env bash
# Fleet mode's numbers, from one run: markdown on stdout, progress on stderr.
#
# Everything on loopback on this machine, release builds: nginx answering at once (the
# provider), one redis-server (append-only file, fsync every second, as README recommends),
# and FluxRouter gateways:
#   1. What Redis adds to a request: one gateway keeping its ledger itself ("local") against
#      one in fleet mode ("fleet"), same plan, side by side. Two plans: "capped" (a monthly
#      credit and a requests-per-minute limit: a rate check, a reservation and an awaited
#      settlement, three round trips per request) and "open" (no limit: the settlement goes
#      in the background, no round trip before forwarding). Then the fleet gateway's own
#      histogram of each Redis operation.
#   2. Fleet throughput with one, two and three gateways on one Redis, capped plan: wrk against
#      every gateway at once, the connections split between them, requests/s summed.
#   3. What a Redis restart loses: load on two gateways, Redis stopped (SIGTERM) and started
#      again, then killed (SIGKILL) and started again; the fleet's spend in Redis against the
#      sum of the gateways' own ledgers, once the gateways have replayed what Redis missed.
#
# usage: [DURATION=5] [CONNS="1 32"] [FLEET_CONNS=64] bash benches/fleet.sh
# Needs curl, python3; wrk, nginx and redis-server are installed with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 0 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

DURATION=${DURATION:-5}
CONNS=${CONNS:-1 32}
FLEET_CONNS=${FLEET_CONNS:-64}
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 ]] || { echo "DURATION: whole seconds, at least 1" >&2; exit 2; }

# shellcheck source=benches/common.sh
source benches/common.sh
command -v wrk >/dev/null || apt_install wrk || { echo "wrk is missing" >&2; exit 1; }
command -v redis-server >/dev/null || apt_install redis-server || { echo "redis-server is missing" >&2; exit 1; }
find_nginx
bash scripts/bootstrap.sh
log "building the release binary"
cargo build --release --locked --quiet --bin fluxrouter
bin=${CARGO_TARGET_DIR:-target}/release/fluxrouter
util=(python3 benches/load_util.py)
started_at=$(date +%s)

mapfile -t ports < <("${util[@]}" ports 10)
json_port=${ports[0]} redis_port=${ports[1]}
gw_ports=("${ports[2]}" "${ports[3]}" "${ports[4]}" "${ports[5]}")   # local, fleet 1-3
admin_ports=("${ports[6]}" "${ports[7]}" "${ports[8]}" "${ports[9]}")
start_provider nginx "$json_port" "$json_port"

# Tokens of 32 characters at least, or the gateways refuse to start.
export FLUX_ADMIN_TOKEN=bench-admin-token-0123456789abcdef FLUX_METRICS_TOKEN=bench-metrics-token-0123456789abcdef
one_lane "$work/lanes.yaml"
node_config() { # index (0: local, 1-3: fleet) -> path
  local i=$1 dir="$work/node$1" redis=""
  mkdir -p "$dir"
  cp "$work/lanes.yaml" "$dir/"
  [ "$i" = 0 ] || redis="redis: { url: \"redis://127.0.0.1:$redis_port\", key_prefix: \"bench:\" }"
  cat >"$dir/fluxrouter.yaml" <<YAML
listen: ["127.0.0.1:${gw_ports[$i]}"]
server: { threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: "$dir/pid", upgrade_sock: "$dir/upgrade.sock" }
keys_file: "$work/keys.yaml"
lanes_file: lanes.yaml
access_log: "$dir/access.log"
providers:
  bench: { format: openai, base_url: "http://127.0.0.1:$json_port/v1" }
plans:
  capped: { lanes: [express], monthly_credit_usd: 1000000, requests_per_minute: 1000000000 }
  open: { lanes: [express] }
admin: { listen: ["127.0.0.1:${admin_ports[$i]}"], token_env: FLUX_ADMIN_TOKEN, metrics_token_env: FLUX_METRICS_TOKEN }
$redis
YAML
  echo "$dir/fluxrouter.yaml"
}
for i in 0 1 2 3; do node_config "$i" >/dev/null; done
declare -A key
for plan in capped open; do
  key[$plan]=$("$bin" --config "$work/node0/fluxrouter.yaml" keys new --plan "$plan" --name "$plan" 2>/dev/null)
done

start_redis() {
  start redis redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work" \
    --appendonly yes --appendfsync everysec --save ""
  for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  log "redis did not start"; exit 1
}
start_node() { # index
  start "node$1" "$bin" --config "$work/node$1/fluxrouter.yaml"
  wait_http "node$1" "http://127.0.0.1:${gw_ports[$1]}/healthz"
}
wrk_run() { # node plan conns seconds out
  local threads=2
  [ "$3" -gt 1 ] || threads=1
  MODEL=flux-pinned-bench KEY=${key[$2]} BODY_KB=1 wrk -t"$threads" -c"$3" -d"$4"s --timeout 10s \
    --latency -s benches/chat.lua "http://127.0.0.1:${gw_ports[$1]}/v1/chat/completions" >"$5" 2>&1
}
field() { # wrk output, rps|p50|p99|non2xx|sockerr
  python3 -c "import sys; sys.path.insert(0, 'benches'); from load_util import parse_wrk; print(parse_wrk(sys.argv[1])[sys.argv[2]])" "$1" "$2"
}
metrics() { # node
  curl -s -H "Authorization: Bearer $FLUX_METRICS_TOKEN" "http://127.0.0.1:${admin_ports[$1]}/metrics"
}
redis_version=$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')
flux_rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo +dirty)"
echo "# Fleet mode on this machine"
echo
echo "- machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r); load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- FluxRouter $flux_rev, Redis $redis_version (appendonly yes, appendfsync everysec), $provider_version; wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}')"
echo "- every gateway, Redis, nginx and wrk share the same $(nproc) cores; each cell ${DURATION} s of wrk after 1 s of warm-up (section 1: the better of two alternating rounds); 1 KB non-streamed chat completions"
echo

# --- 1. what Redis adds ---------------------------------------------------------------------
log "1. local vs fleet"
start_redis
start_node 0
start_node 1
echo "## 1. What a round trip to Redis adds"
echo
echo "| plan | conns | local req/s | local p50 | local p99 | fleet req/s | fleet p50 | fleet p99 | added p50 | added p99 | fleet ÷ local |"
echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
for plan in capped open; do
  for c in $CONNS; do
    # Two rounds, alternating, each side's better one kept: the order of runs on a shared
    # machine otherwise decides more than Redis does.
    for round in 1 2; do
      for i in 0 1; do
        wrk_run "$i" "$plan" "$c" 1 "$work/warm.txt"
        wrk_run "$i" "$plan" "$c" "$DURATION" "$work/lat-$plan-$c-$i-$round.txt"
      done
    done
    python3 - "$plan" "$c" "$work/lat-$plan-$c" <<'PY'
import sys
sys.path.insert(0, "benches")
from load_util import parse_wrk
plan, c, prefix = sys.argv[1:4]
best = lambda i: max((parse_wrk(f"{prefix}-{i}-{r}.txt") for r in (1, 2)), key=lambda w: w["rps"] or 0)
a, b = best(0), best(1)
ms = lambda v: f"{v:.3f} ms"
bad = a["non2xx"] + a["sockerr"] + b["non2xx"] + b["sockerr"]
print(f"| {plan} | {c} | {a['rps']:,.0f} | {ms(a['p50'])} | {ms(a['p99'])} | {b['rps']:,.0f} | "
      f"{ms(b['p50'])} | {ms(b['p99'])} | {ms(b['p50'] - a['p50'])} | {ms(b['p99'] - a['p99'])} | "
      f"{b['rps'] / a['rps']:.2f}{' (errors: %d)' % bad if bad else ''} |")
PY
    log "  $plan c$c done"
  done
done
echo
echo "The fleet gateway's own view of each operation (\`flux_redis_op_duration_seconds\`, the bucket holding the quantile):"
echo
metrics 1 | python3 -c '
import re, sys
buckets = {}
for line in sys.stdin:
    m = re.match(r"flux_redis_op_duration_seconds_bucket\{op=\"(\w+)\",le=\"([^\"]+)\"\} (\d+)", line)
    if m:
        buckets.setdefault(m.group(1), []).append((float(m.group(2)), int(m.group(3))))
def q(bs, p):
    total = bs[-1][1]
    for le, n in bs:
        if n >= p * total:
            return "≤ %g ms" % (le * 1000)
print("| operation | count | p50 | p99 |")
print("|---|--:|--:|--:|")
for op, bs in buckets.items():
    if bs[-1][1]:
        print(f"| {op} | {bs[-1][1]:,} | {q(bs, 0.5)} | {q(bs, 0.99)} |")
'
stop node0
echo

# --- 2. fleet throughput --------------------------------------------------------------------
log "2. throughput with 1, 2, 3 gateways"
start_node 2
start_node 3
echo "## 2. Fleet throughput (capped plan, $FLEET_CONNS connections split between the gateways)"
echo
echo "Redis CPU per request: the redis-server process's CPU time over the cell ÷ requests served; one Redis core bounds the fleet at about 1 s ÷ that."
echo
echo "| gateways | req/s (sum) | per gateway | worst p99 | Redis CPU per request | errors |"
echo "|--:|--:|--:|--:|--:|--:|"
for n in 1 2 3; do
  c=$((FLEET_CONNS / n))
  # (`wait` on the wrk runs only: the gateways are this shell's children too.)
  runs=()
  for i in $(seq 1 "$n"); do wrk_run "$i" capped "$c" 1 "$work/warm-$i.txt" & runs+=($!); done
  wait "${runs[@]}"
  runs=()
  t0=$("${util[@]}" ticks "${procs[redis]}")
  for i in $(seq 1 "$n"); do wrk_run "$i" capped "$c" "$DURATION" "$work/fleet-$n-$i.txt" & runs+=($!); done
  wait "${runs[@]}"
  t1=$("${util[@]}" ticks "${procs[redis]}")
  REDIS_TICKS=$((t1 - t0)) python3 - "$n" "$work"/fleet-"$n"-*.txt <<'PY'
import sys
sys.path.insert(0, "benches")
from load_util import parse_wrk
n, runs = sys.argv[1], [parse_wrk(p) for p in sys.argv[2:]]
total = sum(r["rps"] for r in runs)
errors = sum(r["non2xx"] + r["sockerr"] for r in runs)
import os
each = " / ".join(f"{r['rps']:,.0f}" for r in runs)
requests = sum(r["requests"] for r in runs)
redis_us = int(os.environ["REDIS_TICKS"]) / os.sysconf("SC_CLK_TCK") * 1e6 / max(requests, 1)
print(f"| {n} | {total:,.0f} | {each} | {max(r['p99'] for r in runs):.2f} ms | {redis_us:.0f} µs | {errors} |")
PY
  log "  $n gateway(s) done"
done
echo

# --- 3. what a Redis restart loses ----------------------------------------------------------
log "3. Redis restarts under load"
stop node3
echo "## 3. What a Redis restart loses (two gateways under load, open and capped keys)"
echo
echo "| restart | served (2xx) | refused while down (503) | fleet's ledger (Redis) | gateways' own ledgers | lost |"
echo "|---|--:|--:|--:|--:|--:|"
for how in TERM KILL; do
  # A fresh month of spend for this round: new keys.
  for plan in capped open; do
    key[$plan]=$("$bin" --config "$work/node0/fluxrouter.yaml" keys new --plan "$plan" --name "$plan-$how" 2>/dev/null)
  done
  sleep 1 # the gateways reload the keys file
  secs=$((DURATION + 4))
  wrk_run 1 open 8 "$secs" "$work/restart-$how-open.txt" &
  runs=($!)
  wrk_run 2 capped 8 "$secs" "$work/restart-$how-capped.txt" &
  runs+=($!)
  sleep 2
  kill -"$how" -- "-${procs[redis]}"
  wait "${procs[redis]}" 2>/dev/null || true
  unset "procs[redis]"
  sleep 1
  start_redis
  wait "${runs[@]}"
  # Until the gateways have replayed what Redis missed.
  for _ in $(seq 100); do
    pending=$( (metrics 1; metrics 2) | awk '/^flux_fleet_settlements_pending/ {s += $2} END {print s + 0}')
    [ "$pending" = 0 ] && break
    sleep 0.1
  done
  sleep 1 # the gateways' ledger writers commit within 50 ms
  python3 - "$how" "$bin" "$work" "${key[open]}" <<'PY'
import json, subprocess, sys
from decimal import Decimal
sys.path.insert(0, "benches")
from load_util import parse_wrk
how, binary, work = sys.argv[1], sys.argv[2], sys.argv[3]
def usage(config, *extra):
    out = subprocess.run([binary, "--config", config, "usage", "--json", *extra],
                         capture_output=True, text=True, check=True).stdout
    rows = [r for r in json.loads(out)["rows"] if r["key_name"] in (f"open-{how}", f"capped-{how}")]
    return sum(r["requests"] for r in rows), sum(Decimal(r["cost_usd"]) for r in rows)
fleet = usage(f"{work}/node1/fluxrouter.yaml")
own = [usage(f"{work}/node{i}/fluxrouter.yaml", "--node") for i in (1, 2)]
own = (sum(o[0] for o in own), sum(o[1] for o in own))
runs = [parse_wrk(f"{work}/restart-{how}-{k}.txt") for k in ("open", "capped")]
served = sum(r["requests"] - r["non2xx"] for r in runs)
refused = sum(r["non2xx"] for r in runs)
lost = (own[0] - fleet[0], own[1] - fleet[1])
name = "SIGTERM (graceful)" if how == "TERM" else "SIGKILL (crash)"
print(f"| {name} | {served:,} | {refused:,} | {fleet[0]:,} requests, ${fleet[1]} | "
      f"{own[0]:,} requests, ${own[1]} | {lost[0]:,} requests, ${lost[1]} |")
PY
  log "  restart by SIG$how done"
done
echo
echo "- served: wrk's requests minus non-2xx; every served request is in its gateway's own ledger."
echo "- load average at end $(cut -d' ' -f1-3 /proc/loadavg); total run time $(( $(date +%s) - started_at )) s"
