#!/usr/bin/env bash
# Soak: sustained load through the gateway (release build) in front of the simulated provider,
# on loopback only, while lanes.yaml is rewritten every second and one zero-downtime binary
# upgrade (`-u` + SIGQUIT) happens in the middle. Bounded in time (DURATION + ~15 s).
#
# Reports requests, failures (non-2xx and socket errors, from wrk and from a latency probe)
# and p99 latency: overall (wrk), and from the probe, cut by phase: steady (the first 10 s,
# no reloads), during reloads (after that, outside the upgrade), during the upgrade (from the
# new process's start to the old one's exit). Exits non-zero if any request failed.
#
# usage: bash benches/soak.sh [DURATION_SECONDS (60)] [CONNECTIONS (32)]
# Needs wrk (apt-get install -y wrk), curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-60}
conns=${2:-32}
(( duration >= 30 )) || { echo "DURATION must be at least 30 s" >&2; exit 2; }
command -v wrk >/dev/null || { echo "install wrk: apt-get install -y wrk" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --quiet --bin fluxrouter
bin=$target/release/fluxrouter

work=$(mktemp -d)
sim_port=${SOAK_SIM_PORT:-19290}
gw_port=${SOAK_PORT:-18280}
pids=()
cleanup() {
  for p in "${pids[@]}" $(cat "$work/pid" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" simulate --listen 127.0.0.1:$sim_port 2>"$work/sim.log" &
pids+=($!)
cat >"$work/fluxrouter.yaml" <<YAML
listen: ["127.0.0.1:$gw_port"]
server: { threads: 2, grace_period_seconds: 1, graceful_shutdown_timeout_seconds: 5, pid_file: "$work/pid", upgrade_sock: "$work/upgrade.sock" }
keys_file: keys.yaml
lanes_file: lanes.yaml
access_log: off
providers:
  sim: { format: openai, base_url: "http://127.0.0.1:$sim_port/v1" }
plans:
  payg: { lanes: [express] }
YAML
lanes() { # the title changes each time, so every rewrite is a real reload
  cat <<YAML
lanes:
  express:
    alias: flux-fast
    title: Express Lane $1
    price: { input_per_mtok: 1.0, output_per_mtok: 4.0 }
    default: flux-pinned-sim
models:
  flux-pinned-sim: { upstream: sim-model, provider: sim, lane: express, context_window: 128000, max_output_tokens: 4096, capabilities: [tools, vision, streaming] }
auto:
  rules:
    - { name: default, lane: express }
YAML
}
lanes 0 >"$work/lanes.yaml"
key=$("$bin" --config "$work/fluxrouter.yaml" keys new --plan payg --name soak 2>/dev/null)
RUST_LOG=info "$bin" --config "$work/fluxrouter.yaml" 2>"$work/gateway-old.log" &
old_pid=$!
pids+=($old_pid)
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$gw_port/healthz" >/dev/null && break
  sleep 0.1
done
url="http://127.0.0.1:$gw_port/v1/chat/completions"
MODEL=flux-fast KEY=$key wrk -t2 -c"$conns" -d2s -s benches/soak.lua "$url" >/dev/null # warm-up

t0=$(date +%s.%N)
now() { echo "$(date +%s.%N) - $t0" | bc; }
MODEL=flux-fast KEY=$key wrk -t2 -c"$conns" -d"${duration}s" --timeout 5s --latency \
  -s benches/soak.lua "$url" >"$work/wrk.out" 2>&1 &
wrk_pid=$!
python3 benches/soak_probe.py 127.0.0.1 "$gw_port" "$key" "$duration" "$work/probe.txt" 2 &
probe_pid=$!

# Lanes rewritten every second from t=10 s to the end; the upgrade at the middle.
rewrites=0
upgrade_at=$(( duration / 2 ))
up_start=""; up_end=""; new_pid=""
for (( s = 1; s < duration; s++ )); do
  sleep_until=$(echo "$t0 + $s" | bc)
  while (( $(echo "$(date +%s.%N) < $sleep_until" | bc) )); do sleep 0.05; done
  if (( s >= 10 )); then
    lanes "$s" >"$work/lanes.yaml.tmp" && mv "$work/lanes.yaml.tmp" "$work/lanes.yaml"
    rewrites=$((rewrites + 1))
  fi
  if (( s == upgrade_at )); then
    up_start=$(now)
    RUST_LOG=info "$bin" --config "$work/fluxrouter.yaml" -u 2>"$work/gateway-new.log" &
    new_pid=$!
    pids+=($new_pid)
    sleep 0.7 # the new process waits on the upgrade socket
    kill -QUIT "$old_pid"
  fi
  if [[ -n "$up_start" && -z "$up_end" ]] && ! kill -0 "$old_pid" 2>/dev/null; then
    up_end=$(now)
  fi
done
wait "$wrk_pid" "$probe_pid"
if [[ -z "$up_end" ]]; then
  wait "$old_pid" 2>/dev/null || true
  up_end=$(now)
fi
old_status=0; wait "$old_pid" 2>/dev/null || old_status=$?
reloads=$(cat "$work"/gateway-*.log | grep -c "reloaded .*lanes.yaml" || true)

python3 - "$work/wrk.out" "$work/probe.txt" "$up_start" "$up_end" "$duration" "$rewrites" "$reloads" "$old_status" "$conns" <<'PY'
import re, sys
wrk_out, probe, up_start, up_end, duration, rewrites, reloads, old_status, conns = sys.argv[1:]
up_start, up_end = float(up_start), float(up_end)
w = open(wrk_out).read()
reqs = int(re.search(r"(\d+) requests in", w).group(1))
non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", w)) else 0
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", w)
sock = [int(x) for x in sock.groups()] if sock else [0, 0, 0, 0]
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 1e-3, "ms": 1, "s": 1e3, "m": 6e4}[unit]
p99 = ms(re.search(r"^\s+99%\s+(\S+)", w, re.M).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", w).group(1))
rows = [l.split() for l in open(probe)]
rows = [(float(t), float(lat), int(st)) for t, lat, st in rows]
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")
phases = {
    "steady (0-10 s, no reloads)": [r for r in rows if r[0] < 10],
    "during lanes reloads": [r for r in rows if r[0] >= 10 and not (up_start <= r[0] <= up_end)],
    "during the upgrade": [r for r in rows if up_start <= r[0] <= up_end],
}
probe_fail = sum(1 for r in rows if not 200 <= r[2] < 300)
failed = non2xx + sum(sock) + probe_fail
print(f"soak: {duration} s, wrk -t2 -c{conns} (~1 KB chat) + a 2-connection latency probe, loopback, release build")
print(f"  lanes.yaml rewritten {rewrites} times ({reloads} reloads logged); binary upgrade from "
      f"t={up_start:.1f} s to the old process's exit at t={up_end:.1f} s (exit status {old_status})")
print(f"  wrk:   {reqs} requests, {rps:.0f} req/s, p99 {p99:.2f} ms; non-2xx {non2xx}, socket errors "
      f"connect {sock[0]} read {sock[1]} write {sock[2]} timeout {sock[3]}")
print(f"  probe: {len(rows)} requests, {probe_fail} failed")
for name, rs in phases.items():
    lats = [r[1] for r in rs]
    print(f"    p99 {name:<28} {pct(lats, 0.99):8.2f} ms  (p50 {pct(lats, 0.5):.2f} ms, {len(rs)} requests)")
print(f"  failed requests: {failed}")
sys.exit(1 if failed else 0)
PY
