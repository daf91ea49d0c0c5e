#!/usr/bin/env bash
# The key store under load: does creating keys at 1,000 a second disturb the requests the
# gateway serves? One run, one markdown table (stdout; progress goes to stderr).
#
# On loopback, release build: a provider that answers at once, FluxRouter in front of it
# with its key store (accounts.sqlite), and wrk sending chat completions with a key of the
# keys file. Two rows, one after the other in the same run:
#   without creations   wrk alone for DURATION seconds
#   with creations      wrk again, while benches/create_keys.py (a separate process) creates
#                       keys through the admin API at RATE a second on a fixed schedule
# Columns: wrk's requests/s, p50, p99 and errors; for the second row, the creations per
# second achieved and the p50 / p99 / slowest of one creation.
#
# usage: [KNOB=value ...] bash benches/keystore_load.sh      e.g. DURATION=5 bash benches/keystore_load.sh
# Knobs:
#   DURATION=20      seconds per row (whole seconds)
#   WARMUP=3         seconds of wrk before the first row
#   RATE=1000        key creations per second in the second row
#   CREATORS=4       threads (keep-alive connections) of the creating process
#   CONNS=32         wrk (or oha) connections
#   REQ_RATE=0       0: wrk sends as fast as it can; N: oha sends N requests a second, with
#                    latency measured from when each was due (needs oha)
#   PROVIDER=nginx   nginx: fixed OpenAI answers (apt-get install nginx when missing)
#                    sim: `fluxrouter simulate`
# Needs curl, python3 and wrk (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 0 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
RATE=${RATE:-1000}
CREATORS=${CREATORS:-4}
CONNS=${CONNS:-32}
PROVIDER=${PROVIDER:-nginx}
REQ_RATE=${REQ_RATE:-0}
[[ $REQ_RATE =~ ^[0-9]+$ ]] || { echo "REQ_RATE must be a whole number (0: wrk, as fast as it can)" >&2; exit 2; }
[ "$REQ_RATE" = 0 ] || command -v oha >/dev/null || { echo "REQ_RATE needs oha (cargo install oha --locked)" >&2; exit 2; }
for n in DURATION WARMUP RATE CREATORS CONNS; do
  [[ ${!n} =~ ^[0-9]+$ ]] && [ "${!n}" -ge 1 ] || { echo "$n must be a whole number, at least 1" >&2; exit 2; }
done
case $PROVIDER in nginx | sim) ;; *) echo "PROVIDER must be nginx or sim" >&2; exit 2 ;; esac
# shellcheck source=benches/common.sh
source benches/common.sh

load_tools "$PROVIDER"

bash scripts/bootstrap.sh
log "building the release binary"
cargo build --release --locked --quiet --bin fluxrouter
bin=${CARGO_TARGET_DIR:-target}/release/fluxrouter
util=(python3 benches/load_util.py)

mapfile -t ports < <("${util[@]}" ports 3)
provider_port=${ports[0]} gw_port=${ports[1]} admin_port=${ports[2]}
start_provider "$PROVIDER" "$provider_port" "$provider_port"

one_lane "$work/lanes.yaml"
config=$work/fluxrouter.yaml
cat >"$config" <<YAML
listen: ["127.0.0.1:$gw_port"]
server: { threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: "$work/flux.pid", upgrade_sock: "$work/flux.sock" }
admin: { listen: ["127.0.0.1:$admin_port"], token_env: FLUX_BENCH_ADMIN_TOKEN }
keys_file: keys.yaml
lanes_file: lanes.yaml
access_log: "$work/flux-access.log"
providers:
  bench: { format: openai, base_url: "http://127.0.0.1:$provider_port/v1" }
plans:
  payg: { lanes: [express] }
YAML
FLUX_BENCH_ADMIN_TOKEN="bench-admin-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export FLUX_BENCH_ADMIN_TOKEN
key=$("$bin" --config "$config" keys new --plan payg --name bench 2>"$work/keys.log") ||
  { cat "$work/keys.log" >&2; exit 1; }
start flux "$bin" --config "$config"
wait_http flux "http://127.0.0.1:$gw_port/healthz"
admin="http://127.0.0.1:$admin_port"
account=$(curl -sf -H "Authorization: Bearer $FLUX_BENCH_ADMIN_TOKEN" "$admin/admin/v1/accounts" \
  -d '{"name":"bench","plan":"payg"}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')

# The served load: wrk as fast as it can (REQ_RATE=0), or oha at a fixed rate (requests a
# second, latency measured from when each request was due, so a stall is not hidden).
python3 - "$work/body.json" <<'PY'
import json, sys
words = ("the quarterly review covered revenue churn hiring and the roadmap " * 20)[:1000]
json.dump({"model": "flux-fast", "messages": [{"role": "user", "content": words}]}, open(sys.argv[1], "w"))
PY
wrk_for() { # seconds out
  if [ "$REQ_RATE" -gt 0 ]; then
    oha --no-tui --output-format json -z "$1"s -q "$REQ_RATE" --latency-correction -c "$CONNS" \
      -m POST -H "Authorization: Bearer $key" -H "Content-Type: application/json" -D "$work/body.json" \
      "http://127.0.0.1:$gw_port/v1/chat/completions" >"$2" 2>"$2.err" || true
    return
  fi
  KEY=$key MODEL=flux-fast BODY_KB=1 STREAM=0 \
    wrk -t2 -c"$CONNS" -d"$1"s --timeout 10s --latency -s benches/chat.lua \
    "http://127.0.0.1:$gw_port/v1/chat/completions" >"$2" 2>&1 || true
}
row() { # label load-output creations-json
  python3 - "$1" "$2" "$3" "$DURATION" <<'PY'
import json, sys
sys.path.insert(0, "benches")
from load_util import parse_wrk, fmt_ms
label, out, made, duration = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
try:
    r = json.load(open(out))  # oha
    codes = r.get("statusCodeDistribution", {})
    pct = r.get("latencyPercentiles", {})
    ok = int(codes.get("200", 0))
    w = {"rps": ok / duration, "p50": float(pct.get("p50") or 0) * 1000,
         "p99": float(pct.get("p99") or 0) * 1000}
    errors = sum(int(v) for k, v in codes.items() if k != "200") + sum(
        int(v) for k, v in r.get("errorDistribution", {}).items() if "deadline" not in k)
except ValueError:
    w = parse_wrk(out)
    errors = w["non2xx"] + w["sockerr"]
c = json.loads(made) if made else None
creations = (f"{c['per_second']:,.0f} ({c['created']:,} made, {c['refused'] + c['failed']} refused or failed)"
             if c else "")
one = f"{c['p50_ms']} / {c['p99_ms']} / {c['max_ms']} ms" if c else ""
print(f"| {label} | {w['rps'] or 0:,.0f} | {fmt_ms(w['p50'])} | {fmt_ms(w['p99'])} | {errors} | {creations} | {one} |")
PY
}

log "warm-up: ${WARMUP} s"
wrk_for "$WARMUP" "$work/warmup.txt"
log "without creations: ${DURATION} s"
cpu0=$("${util[@]}" ticks "${procs[flux]}")
wrk_for "$DURATION" "$work/without.txt"
cpu1=$("${util[@]}" ticks "${procs[flux]}")
log "with ${RATE} creations a second: ${DURATION} s"
python3 benches/create_keys.py "$admin" "$account" "$RATE" "$DURATION" "$CREATORS" \
  >"$work/created.json" 2>"$work/created.log" &
creating=$!
wrk_for "$DURATION" "$work/with.txt"
wait "$creating" || { cat "$work/created.log" >&2; exit 1; }
cpu2=$("${util[@]}" ticks "${procs[flux]}")
stored=$(curl -sf -H "Authorization: Bearer $FLUX_BENCH_ADMIN_TOKEN" "$admin/admin/v1/accounts/$account" |
  python3 -c 'import json, sys; print(len(json.load(sys.stdin)["keys"]))')

echo "## Key store under load ($(date -u +%Y-%m-%d), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
echo
if [ "$REQ_RATE" -gt 0 ]; then load="oha -c${CONNS} at ${REQ_RATE} req/s"; else load="wrk -t2 -c${CONNS}"; fi
echo "| ${DURATION} s of $load, 1 KiB chat completions | req/s | p50 | p99 | errors | key creations/s (admin API, separate process) | one creation p50 / p99 / max |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
row "without creations" "$work/without.txt" ""
row "with ${RATE} creations/s" "$work/with.txt" "$(cat "$work/created.json")"
echo
echo "- provider: $provider_version; the gateway (2 threads), the provider, wrk and the creating process share this machine's cores"
echo "- keys in the account after the run: $stored"
hz=$(getconf CLK_TCK)
python3 - "$cpu0" "$cpu1" "$cpu2" "$hz" "$DURATION" "$work/created.json" <<'PY'
import json, sys
c0, c1, c2, hz, d = (float(x) for x in sys.argv[1:6])
made = json.load(open(sys.argv[6]))
extra = (c2 - c1 - (c1 - c0)) / hz
print(f"- the gateway's CPU: {(c1 - c0) / hz:.1f} s without creations, {(c2 - c1) / hz:.1f} s with "
      f"({extra:+.1f} s, {extra / max(made['created'], 1) * 1e6:+.0f} µs per creation); the creating "
      f"process's own: {made.get('cpu_s', 0):.1f} s of the {d:.0f} s")
PY
