"""Latency probe for benches/soak.sh: a few keep-alive connections sending the same chat
request back to back, each answer recorded as `t_seconds latency_ms status` (status 0 = a
socket error), so p99 can be cut by phase (steady, lanes reloads, binary upgrade)."""
import http.client
import json
import sys
import threading
import time

host, port, key, seconds, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
conns = int(sys.argv[6]) if len(sys.argv) > 6 else 2
body = json.dumps({"model": "flux-fast", "messages": [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "lorem ipsum dolor sit amet " * 36 + "ping"}]})
headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
start = time.monotonic()
records = []
lock = threading.Lock()


def worker():
    conn = None
    local = []
    while time.monotonic() - start < seconds:
        t0 = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("POST", "/v1/chat/completions", body, headers)
            r = conn.getresponse()
            r.read()
            status = r.status
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except Exception:
            status = 0
            if conn is not None:
                conn.close()
            conn = None
        t1 = time.monotonic()
        local.append((t0 - start, (t1 - t0) * 1e3, status))
    with lock:
        records.extend(local)


threads = [threading.Thread(target=worker) for _ in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
with open(out_path, "w") as f:
    for r in sorted(records):
        f.write(f"{r[0]:.4f} {r[1]:.3f} {r[2]}\n")
