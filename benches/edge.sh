#!/usr/bin/env bash
# The edge benchmark: what TLS and HTTP/2 cost on FluxRouter's listeners, side by side with
# the bare Pingora passthrough under the same TLS settings. One run, one markdown table
# (stdout; progress goes to stderr).
#
# On loopback, release builds: nginx answering at once (plaintext), and in front of it
#   pingora   examples/pingora_passthrough.rs: plaintext and TLS (rustls, ALPN h2, http/1.1)
#   flux      FluxRouter, a pinned model, with a plaintext and a TLS listener
# Rows, each at CONNS connections (non-streamed 1 KiB chat completions):
#   h1        plaintext HTTP/1.1, wrk
#   tls-h1    TLS HTTP/1.1 on kept-alive connections, wrk
#   tls-h2    TLS HTTP/2, oha --http2: H2_CONNS connections carrying CONNS streams in all
# Columns: requests/s, p50, p99, ratio to pingora in the same row, CPU per request (utime +
# stime of the target's process ÷ requests), errors.
# Then: the median TLS adds on a kept-alive connection (tls-h1 minus h1, at 1 connection),
# and full handshakes per second (oha --disable-keepalive on GET /healthz: a new TLS
# connection per request), per core of the target's CPU time.
#
# usage: [KNOB=value ...] bash benches/edge.sh        e.g. DURATION=3 bash benches/edge.sh
# Knobs:
#   DURATION=5     seconds per cell
#   WARMUP=2       seconds of warm-up per target and row
#   CONNS=32       connections (h1 rows) and streams in flight (h2 row)
#   H2_CONNS=4     HTTP/2 connections in the tls-h2 row
# Needs curl, python3, openssl, wrk (apt-get), nginx (apt-get) and oha (`cargo install oha
# --locked`, installed when missing: about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 0 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
H2_CONNS=${H2_CONNS:-4}
for n in DURATION WARMUP CONNS H2_CONNS; do
  [[ ${!n} =~ ^[0-9]+$ ]] && [ "${!n}" -ge 1 ] || { echo "$n must be a whole number, at least 1" >&2; exit 2; }
done
[ $((CONNS % H2_CONNS)) -eq 0 ] || { echo "CONNS must be a multiple of H2_CONNS" >&2; exit 2; }
# shellcheck source=benches/common.sh
source benches/common.sh

load_tools nginx
command -v openssl >/dev/null || apt_install openssl
if ! command -v oha >/dev/null; then
  log "installing oha with cargo (about 10 minutes on 2 cores)"
  cargo install oha --locked --quiet
fi

bash scripts/bootstrap.sh
log "building the release binaries"
cargo build --release --locked --quiet --bin fluxrouter --example pingora_passthrough
bin=${CARGO_TARGET_DIR:-target}/release/fluxrouter
passthrough=${CARGO_TARGET_DIR:-target}/release/examples/pingora_passthrough
util=(python3 benches/load_util.py)

mapfile -t ports < <("${util[@]}" ports 6)
provider_port=${ports[0]} pt_port=${ports[1]} pt_tls=${ports[2]} gw_port=${ports[3]} gw_tls=${ports[4]}
start_provider nginx "$provider_port" "$provider_port"

# One certificate for both (ECDSA P-256, as most public certificates now are).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

one_lane "$work/lanes.yaml"
config=$work/fluxrouter.yaml
cat >"$config" <<YAML
listen:
  - 127.0.0.1:$gw_port
  - { address: "127.0.0.1:$gw_tls", tls: { certificate: "$work/cert.pem", key: "$work/key.pem" } }
server: { threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: "$work/flux.pid", upgrade_sock: "$work/flux.sock" }
keys_file: keys.yaml
lanes_file: lanes.yaml
access_log: "$work/flux-access.log"
providers:
  bench: { format: openai, base_url: "http://127.0.0.1:$provider_port/v1" }
plans:
  payg: { lanes: [express] }
YAML
key=$("$bin" --config "$config" keys new --plan payg --name bench 2>"$work/keys.log") ||
  { cat "$work/keys.log" >&2; exit 1; }
start flux "$bin" --config "$config"
wait_http flux "http://127.0.0.1:$gw_port/healthz"
start pingora "$passthrough" "127.0.0.1:$pt_port" "127.0.0.1:$provider_port" \
  "127.0.0.1:$pt_tls" "$work/cert.pem" "$work/key.pem"
wait_http pingora "http://127.0.0.1:$pt_port/"

# The request body: ~1 KiB, as benches/chat.lua sends it.
python3 - "$work/body.json" <<'PY'
import json, sys
words = ("the quarterly review covered revenue churn hiring and the roadmap " * 20)[:1000]
json.dump({"model": "flux-pinned-bench", "messages": [{"role": "user", "content": words}]},
          open(sys.argv[1], "w"))
PY

url_of() { # target row
  local scheme=http port
  case $1-$2 in
    pingora-h1) port=$pt_port ;;
    pingora-*) port=$pt_tls scheme=https ;;
    flux-h1) port=$gw_port ;;
    flux-*) port=$gw_tls scheme=https ;;
  esac
  echo "$scheme://127.0.0.1:$port/v1/chat/completions"
}

# Each command below prints "requests p50_ms p99_ms errors".
wrk_cell() { # url conns seconds
  local threads=2 out=$work/wrk.txt
  [ "$2" -ge 2 ] || threads=1
  MODEL=flux-pinned-bench KEY=$key HEADERS="" BODY_KB=1 STREAM=0 \
    wrk -t"$threads" -c"$2" -d"$3"s --timeout 10s --latency -s benches/chat.lua "$1" >"$out" 2>&1 || true
  python3 - "$out" <<'PY'
import sys
sys.path.insert(0, "benches")
from load_util import parse_wrk
w = parse_wrk(sys.argv[1])
print(w["requests"], w["p50"] or 0, w["p99"] or 0, w["non2xx"] + w["sockerr"])
PY
}
oha_cell() { # url streams seconds [oha args...]
  local url=$1 streams=$2 seconds=$3 out=$work/oha.json
  shift 3
  oha --no-tui --output-format json --insecure -z "${seconds}s" "$@" "$url" >"$out" 2>"$work/oha.err" || true
  python3 - "$out" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception:
    print(0, 0, 0, "oha-failed"); sys.exit()
codes = r.get("statusCodeDistribution", {})
ok = int(codes.get("200", 0))
# Requests still in flight when the duration ends are cut by oha ("aborted due to deadline"):
# not the target's errors.
errors = sum(int(v) for k, v in codes.items() if k != "200") + sum(
    int(v) for k, v in r.get("errorDistribution", {}).items() if "deadline" not in k)
pct = r.get("latencyPercentiles", {})
ms = lambda k: round(float(pct.get(k) or 0) * 1000, 3)
print(ok, ms("p50"), ms("p99"), errors)
PY
}
h2_cell() { # url seconds
  oha_cell "$1" "$CONNS" "$2" --http2 -c "$H2_CONNS" -p $((CONNS / H2_CONNS)) -m POST \
    -H "Authorization: Bearer $key" -H "Content-Type: application/json" -D "$work/body.json"
}

measure() { # target command...: runs it, prints "requests p50 p99 errors cpu_ticks"
  local t=$1 t0 t1 line
  shift
  t0=$("${util[@]}" ticks "${procs[$t]}")
  line=$("$@")
  t1=$("${util[@]}" ticks "${procs[$t]}")
  "${util[@]}" settle "${procs[$t]}"
  echo "$line $((t1 - t0))"
}

results=$work/results.tsv
: >"$results"
hz=$(getconf CLK_TCK)
for row in h1 tls-h1 tls-h2; do
  for t in pingora flux; do
    url=$(url_of "$t" "$row")
    log "$row $t: warm-up ${WARMUP} s, then ${DURATION} s"
    case $row in
      tls-h2) h2_cell "$url" "$WARMUP" >/dev/null; line=$(measure "$t" h2_cell "$url" "$DURATION") ;;
      *) wrk_cell "$url" "$CONNS" "$WARMUP" >/dev/null; line=$(measure "$t" wrk_cell "$url" "$CONNS" "$DURATION") ;;
    esac
    printf '%s\t%s\t%s\n' "$row" "$t" "$line" >>"$results"
    log "  $line"
  done
done

# The median TLS adds on a kept-alive connection: one connection, one request at a time.
for t in pingora flux; do
  for row in h1 tls-h1; do
    line=$(wrk_cell "$(url_of "$t" "$row")" 1 "$DURATION")
    printf 'single\t%s-%s\t%s\n' "$t" "$row" "$line" >>"$results"
  done
done

# Full handshakes: a new TLS connection per request (no resumption: oha keeps no session).
for t in pingora flux; do
  case $t in pingora) port=$pt_tls ;; flux) port=$gw_tls ;; esac
  url="https://127.0.0.1:$port/healthz"
  log "handshakes $t: ${DURATION} s"
  oha_cell "$url" 16 "$WARMUP" --disable-keepalive -c 16 >/dev/null
  line=$(measure "$t" oha_cell "$url" 16 "$DURATION" --disable-keepalive -c 16)
  printf 'handshakes\t%s\t%s\n' "$t" "$line" >>"$results"
done

echo "### FluxRouter at the edge: TLS and HTTP/2 ($(date -u +%F))"
echo
echo "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo); load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- FluxRouter $(git rev-parse --short HEAD), $(oha --version 2>/dev/null | head -n 1), $(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}'), nginx provider (1 worker); everything shares this machine's cores"
echo "- each cell ${DURATION} s after ${WARMUP} s of warm-up; h1 rows: wrk -t2 -c$CONNS; tls-h2: oha --http2 -c $H2_CONNS -p $((CONNS / H2_CONNS)) ($CONNS streams in flight); certificate ECDSA P-256"
echo
python3 - "$results" "$DURATION" "$hz" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
duration, hz = float(sys.argv[2]), float(sys.argv[3])
cells = {}
for kind, target, line in rows:
    parts = line.split()
    cells[(kind, target)] = parts
def num(x):
    try:
        return float(x)
    except ValueError:
        return 0.0
print("| row | target | req/s | p50 ms | p99 ms | × pingora | CPU µs/req | errors |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for row in ("h1", "tls-h1", "tls-h2"):
    base = num(cells.get((row, "pingora"), ["0"])[0]) / duration
    for t in ("pingora", "flux"):
        p = cells.get((row, t))
        if not p:
            continue
        n, p50, p99, err = num(p[0]), p[1], p[2], p[3]
        ticks = num(p[4]) if len(p) > 4 else 0
        rps = n / duration
        ratio = f"{rps / base:.2f}" if base else ""
        cpu = f"{ticks / hz / n * 1e6:.0f}" if n else ""
        print(f"| {row} | {t} | {rps:,.0f} | {p50} | {p99} | {ratio} | {cpu} | {err} |")
print()
for t in ("pingora", "flux"):
    h1 = cells.get(("single", f"{t}-h1"))
    tls = cells.get(("single", f"{t}-tls-h1"))
    if h1 and tls:
        add = (num(tls[1]) - num(h1[1])) * 1000
        print(f"- {t}, one kept-alive connection: median {h1[1]} ms plaintext, {tls[1]} ms TLS: TLS adds {add:.0f} µs")
for t in ("pingora", "flux"):
    p = cells.get(("handshakes", t))
    if p:
        n, ticks = num(p[0]), num(p[4])
        cpu_s = ticks / hz
        per_core = n / cpu_s if cpu_s else 0
        print(f"- {t}: {n / duration:,.0f} full TLS handshakes/s (new connection per request, 16 at once), {per_core:,.0f} per second of the target's CPU (per core), errors {p[3]}")
PY
