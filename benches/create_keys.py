"""Create keys through the admin API at a steady rate, from a process of its own.

usage: python3 benches/create_keys.py ADMIN_URL ACCOUNT_ID RATE SECONDS [THREADS]
The admin token is read from FLUX_BENCH_ADMIN_TOKEN. Each thread keeps one keep-alive
connection and its share of RATE on a fixed schedule (a late creation does not push the
next ones back, and none is sent early), so the rate is held whatever one creation costs,
as long as the gateway keeps up. Prints one JSON line: creations made, refused or failed,
the seconds taken, creations per second achieved, and the p50 / p99 / max of one creation.
"""

import http.client
import json
import os
import sys
import threading
import time
import urllib.parse


def creator(url, token, account, rate, seconds, index, out):
    host = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    path = f"/admin/v1/accounts/{account}/keys"
    start = time.monotonic()
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        body = json.dumps({"name": f"bench-{index}-{i}"})
        sent = time.monotonic()
        try:
            conn.request("POST", path, body, headers)
            r = conn.getresponse()
            r.read()
            status = r.status
        except (OSError, http.client.HTTPException):
            status = 0
            conn.close()
            conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
        out.append((status, time.monotonic() - sent))


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    url, account = sys.argv[1], sys.argv[2]
    rate, seconds = float(sys.argv[3]), float(sys.argv[4])
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    token = os.environ["FLUX_BENCH_ADMIN_TOKEN"]
    results = [[] for _ in range(threads)]
    started = time.monotonic()
    workers = [
        threading.Thread(
            target=creator,
            args=(url, token, account, rate / threads, seconds, i, results[i]),
        )
        for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    took = time.monotonic() - started
    every = [r for part in results for r in part]
    made = sorted(t for s, t in every if s == 201)
    pick = lambda q: round(made[min(len(made) - 1, int(q * len(made)))] * 1000, 2) if made else None
    print(json.dumps({
        "created": len(made),
        "refused": sum(1 for s, _ in every if s not in (0, 201)),
        "failed": sum(1 for s, _ in every if s == 0),
        "seconds": round(took, 2),
        "per_second": round(len(made) / took, 1),
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "max_ms": round(made[-1] * 1000, 2) if made else None,
        # This process's own CPU: it shares the machine with the gateway it measures.
        "cpu_s": round(sum(os.times()[:2]), 2),
    }))


if __name__ == "__main__":
    main()
