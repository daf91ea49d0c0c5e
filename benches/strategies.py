"""Drive one lane of the strategies benchmark (benches/strategies.sh) at a fixed rate while one
of its three targets slows down and recovers; print one markdown row per time window.

usage: strategies.py GATEWAY_URL SIM_URL KEY MODEL LABEL RATE SLOW_AT RECOVER_AT END

Open loop: requests are sent on a fixed schedule (RATE a second) whatever the answers take,
and each one's latency is measured from when it was due, so a slow target shows in the
percentiles instead of slowing the load down. Target `a` answers its first byte after 50 ms
until SLOW_AT seconds, after 2 s until RECOVER_AT, then after 50 ms again until END; `b` and
`c` after 50 ms throughout.
"""

import concurrent.futures
import http.client
import json
import sys
import threading
import time
import urllib.parse
import urllib.request

gateway, sim, key, model, label = sys.argv[1:6]
rate, slow_at, recover_at, end = (float(x) for x in sys.argv[6:10])
TARGETS = ("a", "b", "c")
FAST_MS, SLOW_MS = 50, 2000


def set_first_byte(target, ms):
    req = urllib.request.Request(f"{sim}/_sim/targets/{target}", method="PUT",
                                 data=json.dumps({"first_byte_ms": ms}).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


g = urllib.parse.urlsplit(gateway)
body = json.dumps({"model": model, "max_tokens": 16,
                   "messages": [{"role": "user", "content": "summarise the quarterly review in one line"}]})
results = []  # (due, latency_s, served model, status)
lock = threading.Lock()


def one(due):
    served, status = "", 0
    try:
        c = http.client.HTTPConnection(g.hostname, g.port, timeout=30)
        c.request("POST", "/v1/chat/completions", body,
                  {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        status = r.status
        served = r.getheader("x-flux-model") or ""
        c.close()
    except OSError:
        pass
    with lock:
        results.append((due, time.monotonic() - due, served, status))


for t in TARGETS:
    set_first_byte(t, FAST_MS)
start = time.monotonic()
phase = 0
with concurrent.futures.ThreadPoolExecutor(max_workers=512) as pool:
    i = 0
    while True:
        due = start + i / rate
        if due - start >= end:
            break
        now = time.monotonic()
        if phase == 0 and now - start >= slow_at:
            set_first_byte("a", SLOW_MS)
            phase = 1
        if phase == 1 and now - start >= recover_at:
            set_first_byte("a", FAST_MS)
            phase = 2
        if due > now:
            time.sleep(due - now)
        pool.submit(one, due)
        i += 1


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else float("nan")


windows = [("before", 0, slow_at), ("first 10 s of the slowdown", slow_at, slow_at + 10),
           ("rest of the slowdown", slow_at + 10, recover_at),
           ("first 10 s after recovery", recover_at, recover_at + 10),
           ("later", recover_at + 10, end)]
for name, lo, hi in windows:
    rows = [r for r in results if lo <= r[0] - start < hi]
    if not rows:
        continue
    ok = [r for r in rows if r[3] == 200]
    on_a = sum(1 for r in ok if r[2].endswith("-a"))
    lat = [r[1] * 1000 for r in ok]
    print(f"| {label} | {name} | {len(rows)} | {len(rows) - len(ok)} | "
          f"{sorted(lat)[len(lat) // 2] if lat else float('nan'):.0f} | {p99(lat):.0f} | "
          f"{100 * on_a / max(1, len(ok)):.0f}% |", flush=True)
