# Shared by the benchmark scripts (sourced, from the repository's root, under set -euo
# pipefail): logging, apt installs, processes in their own groups (stopped on exit), and the
# provider that answers at once.

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

apt_install() { # packages...
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  log "installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 ||
    { $sudo apt-get update -qq >/dev/null 2>&1 &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; }
}
find_nginx() { # -> nginx_bin (installed with apt-get when missing)
  nginx_bin=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
  if [ -z "$nginx_bin" ]; then
    apt_install nginx || { echo "could not install nginx; try PROVIDER=sim" >&2; exit 1; }
    nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
  fi
}

load_tools() { # provider: wrk, and nginx (-> nginx_bin) for the nginx provider, installed when missing
  command -v wrk >/dev/null || apt_install wrk || { echo "wrk is missing (apt-get install wrk)" >&2; exit 1; }
  nginx_bin=""
  if [ "$1" = nginx ]; then find_nginx; fi
}

one_lane() { # path: lanes.yaml with one lane (flux-fast) and one model on provider `bench`
  cat >"$1" <<'YAML'
lanes:
  express:
    alias: flux-fast
    title: Express Lane
    price: { input_per_mtok: 1.0, cached_input_per_mtok: 0.25, output_per_mtok: 4.0 }
    default: flux-pinned-bench
models:
  flux-pinned-bench: { upstream: gpt-4o-mini, provider: bench, lane: express, context_window: 128000, max_output_tokens: 16384, capabilities: [tools, vision, streaming] }
auto:
  rules:
    - { name: default, lane: express }
YAML
}

work=$(mktemp -d)
declare -A procs=()
stop() { # name: the process group started by `start`
  local pid=${procs[$1]:-}
  [ -n "$pid" ] || return 0
  # SIGINT is a fast shutdown for Pingora and nginx, and a clean exit for uvicorn and node.
  kill -INT -- "-$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "procs[$1]"
}
cleanup() {
  local name
  for name in "${!procs[@]}"; do stop "$name"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start() { # name command...: in its own process group, so stop() takes its children too
  local name=$1
  shift
  setsid "$@" >"$work/$name.log" 2>&1 &
  procs[$name]=$!
}
wait_http() { # name url: until it answers at all (any status)
  for _ in $(seq 1200); do
    curl -s -o /dev/null --max-time 2 "$2" && return 0
    kill -0 "${procs[$1]}" 2>/dev/null || break
    sleep 0.1
  done
  log "$1 did not start; the end of its log:"
  tail -n 20 "$work/$1.log" >&2
  return 1
}

# Fixed answers in the shape of OpenAI's: a chat completion with usage, and a stream of
# chunks ending with the usage chunk and [DONE].
completion='{"id":"chatcmpl-bench","object":"chat.completion","created":1760000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_bench","choices":[{"index":0,"message":{"role":"assistant","content":"The review covered revenue, churn and hiring; exports are slow since March; pricing page before the conference.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":260,"completion_tokens":24,"total_tokens":284}}'
sse_chunk() { # delta finish_reason
  printf 'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1760000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_bench","choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]}\\n\\n' "$1" "$2"
}
sse_body=$(sse_chunk '{"role":"assistant","content":"","refusal":null}' null)
for word in "The review" " covered revenue," " churn and hiring;" " exports are slow" " since March;" " pricing page" " before the conference."; do
  sse_body+=$(sse_chunk "{\"content\":\"$word\"}" null)
done
sse_body+=$(sse_chunk '{}' '"stop"')
sse_body+='data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1760000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_bench","choices":[],"usage":{"prompt_tokens":260,"completion_tokens":24,"total_tokens":284}}\n\ndata: [DONE]\n\n'

start_provider() { # nginx|sim json_port sse_port -> provider_version (sim: one port for both)
  local kind=$1 json_port=$2 sse_port=$3
  provider_version=""
  if [ "$kind" = nginx ]; then
    mkdir -p "$work/nginx"
    # One worker: the provider should not take the gateways' cores. POST answered with 200
    # by `return`, which reads and discards the request body.
    cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  keepalive_requests 10000000;
  client_max_body_size 10m;
  server {
    listen 127.0.0.1:$json_port;
    location / { default_type application/json; return 200 '$completion'; }
  }
  server {
    listen 127.0.0.1:$sse_port;
    location / { default_type text/event-stream; add_header Cache-Control no-cache; return 200 '$sse_body'; }
  }
}
NGINX
    start provider "$nginx_bin" -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf"
    provider_version="nginx $("$nginx_bin" -v 2>&1 | sed 's/.*nginx\///'), 1 worker, fixed answers"
  else
    start provider "$bin" simulate --listen "127.0.0.1:$json_port"
    provider_version="fluxrouter simulate"
  fi
  wait_http provider "http://127.0.0.1:$json_port/"
  [ "$kind" = sim ] || wait_http provider "http://127.0.0.1:$sse_port/"
}

build_release() { # -> bin: the release binary, built now
  bash scripts/bootstrap.sh
  log "building the release binary"
  cargo build --release --locked --quiet --bin fluxrouter
  bin=${CARGO_TARGET_DIR:-target}/release/fluxrouter
}
start_sim() { # port: `fluxrouter simulate` on loopback (named targets, /_sim/policy), until it answers
  start provider "$bin" simulate --listen "127.0.0.1:$1"
  wait_http provider "http://127.0.0.1:$1/healthz"
}
