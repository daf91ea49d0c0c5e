#!/usr/bin/env bash
# The load benchmark: one run, one markdown table (stdout; progress goes to stderr).
#
# Everything runs on loopback on this machine, release builds: a provider that answers at
# once, and in front of it, side by side:
#   direct       wrk straight to the provider
#   pingora      the bare Pingora passthrough (examples/pingora_passthrough.rs), the floor
#   flux-pinned  FluxRouter, a pinned model
#   flux-auto    FluxRouter, model flux-auto (the routing decision on every request)
#   litellm      LiteLLM proxy (PyPI, one worker, no database)
#   portkey      Portkey gateway (npm @portkey-ai/gateway, node)
# Rows: non-streamed and streamed (stream_options.include_usage), 1 KB and 50 KB bodies,
# 1, 32 and 128 connections. Columns: requests/s, p50, p99, ratio to pingora at the same
# load, CPU per request (utime+stime of the target's process tree, children included),
# peak RSS during the cell, errors (non-2xx and socket errors from wrk).
# After the table: idle RSS, the delay FluxRouter adds to the first SSE chunk, run time.
#
# usage: [KNOB=value ...] bash benches/load.sh            e.g. DURATION=2 PEERS=0 bash benches/load.sh
# Knobs:
#   DURATION=5          seconds per cell (whole seconds)
#   WARMUP=2            seconds of warm-up per target, per streaming mode
#   PROVIDER=nginx      nginx: fixed OpenAI answers (apt-get install nginx when missing)
#                       sim: `fluxrouter simulate`
#   PEERS=1             0 skips LiteLLM and Portkey
#   TARGETS="direct pingora flux-pinned flux-auto litellm portkey"
#   STREAMS="0 1"       0 non-streamed, 1 streamed
#   BODIES="1 50"       request body sizes, KiB
#   CONNS="1 32 128"    wrk connections
#   WRK_TIMEOUT=10      seconds after which wrk counts a request as a timeout
#   FIRST_CHUNK_N=200   requests for the first-SSE-chunk delay (0 skips it)
#   STAGES=0            1: build FluxRouter with the `stage-timing` feature and print, after
#                       the table, the mean wall time per request of each stage (read body,
#                       parse, auth, route, admit, …) in each FluxRouter cell (src/stages.rs)
#   LITELLM_VERSION=1.108.7  PORTKEY_VERSION=1.15.2   the peers installed in .bench-peers/
# Needs curl, python3 (with venv, for LiteLLM), node and npm (for Portkey); wrk and nginx are
# installed with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 0 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
PROVIDER=${PROVIDER:-nginx}
PEERS=${PEERS:-1}
TARGETS=${TARGETS:-direct pingora flux-pinned flux-auto litellm portkey}
STREAMS=${STREAMS:-0 1}
BODIES=${BODIES:-1 50}
CONNS=${CONNS:-1 32 128}
WRK_TIMEOUT=${WRK_TIMEOUT:-10}
FIRST_CHUNK_N=${FIRST_CHUNK_N:-200}
STAGES=${STAGES:-0}
LITELLM_VERSION=${LITELLM_VERSION:-1.108.7}
PORTKEY_VERSION=${PORTKEY_VERSION:-1.15.2}
# Portkey's package asks for @hono/node-server ^1.3.3; from 1.14 on, a Response built from a
# fetch() response shares its immutable headers and every streamed request fails with 500
# ("TypeError: immutable"). Portkey's own lockfile pins 1.13.5, so the install does too.
PORTKEY_HONO_NODE_SERVER=1.13.5

for n in DURATION WARMUP WRK_TIMEOUT FIRST_CHUNK_N; do
  [[ ${!n} =~ ^[0-9]+$ ]] || { echo "$n must be a whole number of seconds/requests" >&2; exit 2; }
done
[ "$DURATION" -ge 1 ] || { echo "DURATION must be at least 1" >&2; exit 2; }
case $PROVIDER in nginx | sim) ;; *) echo "PROVIDER must be nginx or sim" >&2; exit 2 ;; esac
if [ "$PEERS" = 0 ]; then
  TARGETS=$(tr ' ' '\n' <<<"$TARGETS" | grep -Evx 'litellm|portkey' | tr '\n' ' ')
fi
wants() { [[ " $TARGETS " == *" $1 "* ]]; }
# shellcheck source=benches/common.sh
source benches/common.sh

load_tools "$PROVIDER"

bash scripts/bootstrap.sh
log "building the release binaries"
features=()
[ "$STAGES" = 1 ] && features=(--features stage-timing)
cargo build --release --locked --quiet --bin fluxrouter --example pingora_passthrough "${features[@]}"
bin=${CARGO_TARGET_DIR:-target}/release/fluxrouter
passthrough=${CARGO_TARGET_DIR:-target}/release/examples/pingora_passthrough
util=(python3 benches/load_util.py)

declare -A skip=() # target -> why it has no numbers (all modes)

# --- peers --------------------------------------------------------------------------------
peers=.bench-peers
litellm_version="" portkey_version="" hono_version=""
if wants litellm; then
  venv=$peers/litellm
  installed=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null || true)
  if [ "$installed" != "$LITELLM_VERSION" ]; then
    log "installing LiteLLM $LITELLM_VERSION into $venv (a few minutes the first time)"
    mkdir -p "$peers"
    if ! { python3 -m venv "$venv" &&
      "$venv/bin/pip" install -q --disable-pip-version-check --retries 1 --timeout 30 \
        "litellm[proxy]==$LITELLM_VERSION"; } >"$work/litellm-install.log" 2>&1; then
      skip[litellm]="not installed: pip install litellm[proxy]==$LITELLM_VERSION failed ($(grep -v '^\s*$' "$work/litellm-install.log" | tail -n 1 | cut -c1-120))"
    fi
  fi
  [ -n "${skip[litellm]:-}" ] || litellm_version=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')
fi
if wants portkey; then
  pk=$peers/portkey
  pkg_version() { node -p "require('./$pk/node_modules/$1/package.json').version" 2>/dev/null || true; }
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    skip[portkey]="not installed: node and npm are needed"
  elif [ "$(pkg_version @portkey-ai/gateway)" != "$PORTKEY_VERSION" ] ||
    [ "$(pkg_version @hono/node-server)" != "$PORTKEY_HONO_NODE_SERVER" ]; then
    log "installing Portkey gateway $PORTKEY_VERSION into $pk"
    # Into a fresh folder, swapped in on success: a failed install keeps the old one, and npm
    # does not get to keep a nested @hono/node-server from an earlier tree.
    rm -rf "$pk.new"
    mkdir -p "$pk.new"
    cat >"$pk.new/package.json" <<JSON
{
  "private": true,
  "dependencies": { "@portkey-ai/gateway": "$PORTKEY_VERSION" },
  "overrides": { "@hono/node-server": "$PORTKEY_HONO_NODE_SERVER" }
}
JSON
    if npm install --prefix "$pk.new" --no-audit --no-fund --loglevel=error \
      --fetch-retries=1 --fetch-timeout=30000 >"$work/portkey-install.log" 2>&1; then
      rm -rf "$pk"
      mv "$pk.new" "$pk"
    else
      rm -rf "$pk.new"
      skip[portkey]="not installed: npm install @portkey-ai/gateway@$PORTKEY_VERSION failed ($(grep -m 1 -E 'npm (error|ERR!)' "$work/portkey-install.log" | cut -c1-120))"
    fi
  fi
  if [ -z "${skip[portkey]:-}" ]; then
    portkey_version=$(pkg_version @portkey-ai/gateway)
    hono_version=$(pkg_version @hono/node-server)
  fi
fi

# --- ports, provider ------------------------------------------------------------------------
mapfile -t ports < <("${util[@]}" ports 11)
json_port=${ports[0]} sse_port=${ports[1]} ll_port=${ports[2]} pk_port=${ports[3]}
pt_ports=("${ports[4]}" "${ports[5]}") gw_ports=("${ports[6]}" "${ports[7]}")
admin_ports=("${ports[9]}" "${ports[10]}")

[ "$PROVIDER" = sim ] && sse_port=$json_port
start_provider "$PROVIDER" "$json_port" "$sse_port"
provider_port() { if [ "$1" = 1 ]; then echo "$sse_port"; else echo "$json_port"; fi; }

# --- FluxRouter config ------------------------------------------------------------------------
# Minimal on purpose (defaults for everything else), with the access log on, to a file, as in
# production. flux-auto decides with the shipped classifier (flux-auto.classifier.json), as
# in production; every lane is served by the same provider.
cp flux-auto.classifier.json "$work/"
cat >"$work/lanes.yaml" <<'YAML'
lanes:
  express:
    alias: flux-fast
    title: Express Lane
    price: { input_per_mtok: 1.0, cached_input_per_mtok: 0.25, output_per_mtok: 4.0 }
    default: flux-pinned-bench
  daily:
    alias: flux-standard
    title: Daily Driver
    price: { input_per_mtok: 2.0, cached_input_per_mtok: 0.5, output_per_mtok: 8.0 }
    default: flux-pinned-bench-large
  deep:
    alias: flux-reasoning
    title: Deep Thought
    price: { input_per_mtok: 4.0, cached_input_per_mtok: 1.0, output_per_mtok: 16.0 }
    default: flux-pinned-bench-deep
models:
  flux-pinned-bench: { upstream: gpt-4o-mini, provider: bench, lane: express, context_window: 128000, max_output_tokens: 16384, capabilities: [tools, vision, streaming] }
  flux-pinned-bench-large: { upstream: gpt-4o-mini, provider: bench, lane: daily, context_window: 1000000, max_output_tokens: 32768, capabilities: [tools, vision, streaming] }
  flux-pinned-bench-deep: { upstream: gpt-4o-mini, provider: bench, lane: deep, context_window: 1000000, max_output_tokens: 32768, capabilities: [tools, vision, streaming] }
auto:
  classifier: { weights: flux-auto.classifier.json }
  rules:
    - { name: classifier, classifier: true }
YAML
flux_config() { # stream -> path of the config for that mode
  local f="$work/fluxrouter-$1.yaml"
  cat >"$f" <<YAML
listen: ["127.0.0.1:${gw_ports[$1]}"]
server: { threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: "$work/flux-$1.pid", upgrade_sock: "$work/flux-$1.sock" }
keys_file: keys.yaml
lanes_file: lanes.yaml
access_log: "$work/flux-access.log"
admin: { listen: ["127.0.0.1:${admin_ports[$1]}"], token_env: FLUX_BENCH_ADMIN_TOKEN, metrics_token_env: FLUX_BENCH_ADMIN_TOKEN }
providers:
  bench: { format: openai, base_url: "http://127.0.0.1:$(provider_port "$1")/v1" }
# Production-like terms: every request is rate-checked (requests and tokens), reserves and
# settles against credit, ceiling and hourly limit, and is written to the ledger and the
# access log; the limits are high enough that the benchmark never reaches them.
plans:
  payg: { lanes: [express, daily, deep], monthly_credit_usd: 20, overage: true, ceiling_usd: 1000000, hourly_limit_usd: 1000000, requests_per_minute: 100000000, tokens_per_minute: 100000000000 }
YAML
  echo "$f"
}
flux_key=""
FLUX_BENCH_ADMIN_TOKEN="bench-admin-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export FLUX_BENCH_ADMIN_TOKEN
if wants flux-pinned || wants flux-auto; then
  flux_key=$("$bin" --config "$(flux_config 0)" keys new --plan payg --name bench 2>"$work/keys.log") ||
    { cat "$work/keys.log" >&2; exit 1; }
fi

# --- the long-lived peers (one process each for both modes) -------------------------------------
ll_key="sk-bench-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
if wants litellm && [ -z "${skip[litellm]:-}" ]; then
  cat >"$work/litellm.yaml" <<YAML
model_list:
  - model_name: bench-json
    litellm_params: { model: openai/gpt-4o-mini, api_base: "http://127.0.0.1:$json_port/v1", api_key: sk-provider }
  - model_name: bench-sse
    litellm_params: { model: openai/gpt-4o-mini, api_base: "http://127.0.0.1:$sse_port/v1", api_key: sk-provider }
general_settings:
  master_key: $ll_key
YAML
  log "starting LiteLLM (about 30 s)"
  LITELLM_LOCAL_MODEL_COST_MAP=True start litellm "$peers/litellm/bin/litellm" --config "$work/litellm.yaml" \
    --host 127.0.0.1 --port "$ll_port" --num_workers 1
  wait_http litellm "http://127.0.0.1:$ll_port/health/liveliness" || skip[litellm]="did not start"
fi
if wants portkey && [ -z "${skip[portkey]:-}" ]; then
  # Portkey's server listens on every interface; this preload keeps it on loopback.
  cat >"$work/loopback.cjs" <<'JS'
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && (args.length < 2 || args[1] === undefined || typeof args[1] === "function")) {
    if (args[1] === undefined && args.length >= 2) args[1] = "127.0.0.1";
    else args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
JS
  start portkey node --require "$work/loopback.cjs" "$peers/portkey/node_modules/@portkey-ai/gateway/build/start-server.js" \
    --port="$pk_port" --headless
  wait_http portkey "http://127.0.0.1:$pk_port/" || skip[portkey]="did not start"
fi

# --- targets ----------------------------------------------------------------------------------
url_of() { # target stream
  case $1 in
    direct) echo "http://127.0.0.1:$(provider_port "$2")/v1/chat/completions" ;;
    pingora) echo "http://127.0.0.1:${pt_ports[$2]}/v1/chat/completions" ;;
    flux-*) echo "http://127.0.0.1:${gw_ports[$2]}/v1/chat/completions" ;;
    litellm) echo "http://127.0.0.1:$ll_port/v1/chat/completions" ;;
    portkey) echo "http://127.0.0.1:$pk_port/v1/chat/completions" ;;
  esac
}
model_of() { # target stream
  case $1 in
    flux-pinned) echo flux-pinned-bench ;;
    flux-auto) echo flux-auto ;;
    litellm) if [ "$2" = 1 ]; then echo bench-sse; else echo bench-json; fi ;;
    *) echo gpt-4o-mini ;;
  esac
}
key_of() {
  case $1 in
    flux-*) echo "$flux_key" ;;
    litellm) echo "$ll_key" ;;
    portkey) echo sk-provider ;;
  esac
}
headers_of() { # target stream
  if [ "$1" = portkey ]; then
    printf 'x-portkey-provider: openai\nx-portkey-custom-host: http://127.0.0.1:%s/v1\n' "$(provider_port "$2")"
  fi
}
pids_of() { # target: the process trees measured for CPU and memory
  case $1 in
    pingora) echo "${procs[pingora]:-}" ;;
    flux-*) echo "${procs[flux]:-}" ;;
    litellm) echo "${procs[litellm]:-}" ;;
    portkey) echo "${procs[portkey]:-}" ;;
  esac
}

check() { # target stream: one request must answer 200 (and a stream must end with [DONE])
  local t=$1 s=$2 code key args=()
  key=$(key_of "$t")
  [ -z "$key" ] || args+=(-H "Authorization: Bearer $key")
  while IFS= read -r h; do [ -z "$h" ] || args+=(-H "$h"); done < <(headers_of "$t" "$s")
  local body
  body="{\"model\":\"$(model_of "$t" "$s")\",\"messages\":[{\"role\":\"user\",\"content\":\"ping\"}]"
  [ "$s" = 0 ] || body+=',"stream":true,"stream_options":{"include_usage":true}'
  code=$(curl -s -o "$work/check.out" -w '%{http_code}' --max-time 30 -H 'Content-Type: application/json' \
    "${args[@]}" -d "$body}" "$(url_of "$t" "$s")" || true)
  if [ "$code" != 200 ]; then
    echo "answers HTTP $code: $(head -c 150 "$work/check.out" 2>/dev/null | tr -d '\n|')"
    return 1
  fi
  if [ "$s" = 1 ] && ! grep -q 'data: \[DONE\]' "$work/check.out"; then
    echo "stream did not end with [DONE]"
    return 1
  fi
  if ! grep -q '"usage"' "$work/check.out"; then
    echo "no usage in the answer"
    return 1
  fi
}

wrk_run() { # target stream kb conns seconds out
  local threads=2
  [ "$4" -ge 2 ] || threads=1
  MODEL=$(model_of "$1" "$2") KEY=$(key_of "$1") HEADERS=$(headers_of "$1" "$2") BODY_KB=$3 STREAM=$2 \
    wrk -t"$threads" -c"$4" -d"$5"s --timeout "${WRK_TIMEOUT}s" --latency -s benches/chat.lua \
    "$(url_of "$1" "$2")" >"$6" 2>&1 || true
}

results=$work/results.tsv
stage_cells=()
: >"$results"
mkdir -p "$work/cells"
run_cell() { # stream kb conns target
  local s=$1 kb=$2 c=$3 t=$4 out="$work/cells/$1-$2-$3-$4.txt" pids t0="" t1="" peak=""
  read -r -a pids <<<"$(pids_of "$t")"
  if [ ${#pids[@]} -gt 0 ]; then
    "${util[@]}" reset-peak "${pids[@]}"
    t0=$("${util[@]}" ticks "${pids[@]}")
  fi
  local scrape="" stage_file="$work/cells/$1-$2-$3-$4.stages"
  [ "$STAGES" = 1 ] && [[ $t == flux-* ]] &&
    scrape=(curl -sf -H "Authorization: Bearer $FLUX_BENCH_ADMIN_TOKEN" "http://127.0.0.1:${admin_ports[$s]}/metrics")
  [ -z "$scrape" ] || "${scrape[@]}" >"$stage_file.before" || true
  wrk_run "$t" "$s" "$kb" "$c" "$DURATION" "$out"
  if [ -n "$scrape" ]; then
    "${util[@]}" settle "${pids[@]}"
    "${scrape[@]}" >"$stage_file.after" || true
    stage_cells+=("$(if [ "$s" = 1 ]; then echo stream; else echo json; fi) ${kb} KB c$c $t=$stage_file.before:$stage_file.after")
  fi
  if [ ${#pids[@]} -gt 0 ]; then
    t1=$("${util[@]}" ticks "${pids[@]}")
    peak=$("${util[@]}" peak-kb "${pids[@]}")
    # Requests wrk gave up on may still be in the gateway: let it finish before the next cell.
    "${util[@]}" settle "${pids[@]}"
  fi
  printf '%s\t%s\t%s\t%s\trun\t%s\t%s\t%s\n' "$s" "$kb" "$c" "$t" "$out" "${t1:+$((t1 - t0))}" "$peak" >>"$results"
  log "  $(if [ "$s" = 1 ]; then echo stream; else echo json; fi) ${kb} KB c$c $t: $(awk '/Requests\/sec/ {print $2}' "$out") req/s$(awk '/Non-2xx/ {print ", " $NF " non-2xx"}' "$out")"
}

# --- header ---------------------------------------------------------------------------------------
cells=0
for _s in $STREAMS; do for _b in $BODIES; do for _c in $CONNS; do for _t in $TARGETS; do
  cells=$((cells + 1))
done; done; done; done
log "$cells cells of ${DURATION} s: about $(((cells * (DURATION + 1) + 60) / 60)) min of load, plus warm-ups and start-ups"
flux_rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo +dirty)"
pingora_version=$(awk '/^name = "pingora"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)
versions="FluxRouter $flux_rev (Pingora $pingora_version), $({ wrk -v 2>&1 || true; } | head -n 1 | awk '{print $1, $2}')"
[ -z "$litellm_version" ] || versions+=", LiteLLM $litellm_version ($(python3 --version))"
[ -z "$portkey_version" ] || versions+=", Portkey gateway $portkey_version (node $(node --version), @hono/node-server $hono_version)"
echo "### FluxRouter load benchmark ($(date -u +%F))"
echo
echo "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r); load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- provider: $provider_version; all targets, the provider and wrk share this machine's cores"
echo "- versions: $versions"
echo "- each cell: wrk -t2 (-t1 at c1) for ${DURATION} s, --timeout ${WRK_TIMEOUT}s, after ${WARMUP} s of warm-up per target and mode; streamed = \"stream\": true with stream_options.include_usage"
echo

# --- the runs ---------------------------------------------------------------------------------------
idle_line="" first_chunk_line=""
for s in $STREAMS; do
  mode=$(if [ "$s" = 1 ]; then echo streamed; else echo non-streamed; fi)
  log "$mode: starting the Pingora passthrough and FluxRouter"
  if wants pingora; then
    start pingora "$passthrough" "127.0.0.1:${pt_ports[$s]}" "127.0.0.1:$(provider_port "$s")"
  fi
  if wants flux-pinned || wants flux-auto; then
    start flux "$bin" --config "$(flux_config "$s")"
    wait_http flux "http://127.0.0.1:${gw_ports[$s]}/healthz"
  fi
  declare -A why=()
  for t in $TARGETS; do
    if [ -n "${skip[$t]:-}" ]; then
      why[$t]=${skip[$t]}
      continue
    fi
    reason=""
    for _ in $(seq 50); do # the passthrough has no health endpoint: retry while it refuses
      reason=$(check "$t" "$s") && break
      [[ $reason == "answers HTTP 000"* ]] || break
      sleep 0.1
    done
    if [ -n "$reason" ]; then
      why[$t]="$mode: $reason"
      log "$t is skipped: ${why[$t]}"
      continue
    fi
    log "warming up $t"
    for kb in $BODIES; do wrk_run "$t" "$s" "$kb" 32 "$WARMUP" "$work/warmup.txt"; done
  done
  if [ -z "$idle_line" ]; then
    idle_line="- idle RSS after warm-up:"
    for t in $TARGETS; do
      read -r -a pids <<<"$(pids_of "$t")"
      [ -n "${why[$t]:-}" ] || [ ${#pids[@]} -eq 0 ] || [ "$t" = flux-auto ] ||
        idle_line+=" ${t%-pinned} $(($("${util[@]}" rss-kb "${pids[@]}") / 1024)) MB,"
    done
    idle_line=${idle_line%,}
  fi
  for kb in $BODIES; do
    for c in $CONNS; do
      for t in $TARGETS; do
        if [ -n "${why[$t]:-}" ]; then
          printf '%s\t%s\t%s\t%s\tnote\t%s\n' "$s" "$kb" "$c" "$t" "${why[$t]}" >>"$results"
        else
          run_cell "$s" "$kb" "$c" "$t"
        fi
      done
    done
  done
  if [ "$s" = 1 ] && [ "$FIRST_CHUNK_N" -gt 0 ] && wants flux-pinned && [ -z "${why[flux-pinned]:-}" ]; then
    log "first SSE chunk, $FIRST_CHUNK_N requests each"
    fc=$(python3 benches/first_chunk.py "$(url_of flux-pinned 1)" "$(url_of direct 1)" "$flux_key" \
      "$FIRST_CHUNK_N" flux-pinned-bench gpt-4o-mini 2>&1) || true
    if grep -q 'added by the gateway' <<<"$fc"; then
      first_chunk_line=$(awk -v n="$FIRST_CHUNK_N" '
        /first-chunk gateway/ {g = $4 " ms (p90 " $7 " ms)"}
        /first-chunk direct/ {d = $4 " ms (p90 " $7 " ms)"}
        /added by the gateway/ {a = $(NF - 1) " ms"}
        END {print "- first SSE chunk, median of " n " on fresh connections: direct " d ", through flux-pinned " g ": " a " added"}' <<<"$fc")
    else
      first_chunk_line="- first SSE chunk: the measurement failed: $(tail -n 1 <<<"$fc")"
    fi
  fi
  stop flux
  stop pingora
  unset why
done

"${util[@]}" table "$results"
echo
if [ ${#stage_cells[@]} -gt 0 ]; then
  echo "Per stage (stage-timing build; wall time, so the waiting stages include the provider and the sockets):"
  echo
  "${util[@]}" stage-table "${stage_cells[@]}"
  echo
fi
echo "$idle_line"
[ -z "$first_chunk_line" ] || echo "$first_chunk_line"
echo "- × pingora: req/s ÷ the bare passthrough's at the same load. CPU/req: utime+stime of the target's process tree (children included) ÷ requests completed. peak RSS: VmHWM summed over the tree, reset before each cell. errors: wrk's non-2xx plus socket errors (timeouts, resets)."
echo "- load average at end $(cut -d' ' -f1-3 /proc/loadavg); total run time $((SECONDS / 60)) min $((SECONDS % 60)) s"
