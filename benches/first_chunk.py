#!/usr/bin/env python3
"""Median and p90 time to the first SSE `data:` event, through the gateway and direct.

usage: first_chunk.py GATEWAY_URL UPSTREAM_URL KEY [N] [GATEWAY_MODEL] [UPSTREAM_MODEL]
Both are measured alternately on fresh connections, so they see the same machine state.
The models default to flux-fast (gateway) and sim-model (upstream).
"""
import http.client
import json
import statistics
import sys
import time
import urllib.parse


def first_event_ms(url, body, headers):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    start = time.perf_counter()
    conn.request("POST", u.path, body=body, headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    while True:
        line = resp.fp.readline()
        if not line:
            raise RuntimeError("stream ended without an event")
        if line.startswith(b"data:"):
            elapsed = (time.perf_counter() - start) * 1e3
            break
    # The rest of the stream is not needed: reading the raw socket above bypassed the chunked
    # decoder, so the connection is simply closed.
    conn.close()
    return elapsed


def main():
    gateway, upstream, key = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    gateway_model = sys.argv[5] if len(sys.argv) > 5 else "flux-fast"
    upstream_model = sys.argv[6] if len(sys.argv) > 6 else "sim-model"
    body = lambda model: json.dumps({"model": model, "stream": True,
                                     "stream_options": {"include_usage": True},
                                     "messages": [{"role": "user", "content": "ping"}]})
    results = {"gateway": [], "direct": []}
    for _ in range(n):
        results["gateway"].append(first_event_ms(
            gateway, body(gateway_model),
            {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}))
        results["direct"].append(first_event_ms(
            upstream, body(upstream_model), {"Content-Type": "application/json"}))
    for name, xs in results.items():
        xs.sort()
        print(f"first-chunk {name}: median {statistics.median(xs):.3f} ms, "
              f"p90 {xs[int(len(xs) * 0.9)]:.3f} ms (n={n})")
    added = statistics.median(results["gateway"]) - statistics.median(results["direct"])
    print(f"first-chunk added by the gateway (median): {added:.3f} ms")


if __name__ == "__main__":
    main()
