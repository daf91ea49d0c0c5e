"""Drive the prompt-cache affinity benchmark (benches/affinity.sh): CONVERSATIONS agent
conversations of TURNS turns each, interleaved (turn 1 of every conversation, then turn 2, ...),
each turn sending the whole history, through flux-auto; print one markdown row.

usage: affinity.py GATEWAY_URL SIM_URL KEY LABEL CONVERSATIONS TURNS

The cached share is read from the simulator's targets (cached input tokens over the tokens
that were cacheable: what a previous request at the same target had already sent); the
customer's cost is the sum of X-Flux-Cost-Usd.
"""

import concurrent.futures
import decimal
import http.client
import json
import sys
import urllib.parse
import urllib.request

gateway, sim, key, label = sys.argv[1:5]
conversations, turns = int(sys.argv[5]), int(sys.argv[6])
g = urllib.parse.urlsplit(gateway)

# About 1,700 tokens of instructions and tool descriptions, different per conversation (as
# different agents or repositories would be), so each conversation's prefix is its own.
def system(c):
    return (f"Agent {c}: you work in repository r{c}. Read files before editing them, run the "
            "tests after each change, and explain what you changed in one paragraph. ") * 45


def call(body):
    c = http.client.HTTPConnection(g.hostname, g.port, timeout=60)
    c.request("POST", "/v1/chat/completions", json.dumps(body),
              {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    cost = r.getheader("x-flux-cost-usd") or "0"
    lane = r.getheader("x-flux-lane") or ""
    c.close()
    if r.status != 200:
        raise SystemExit(f"{r.status}: {data[:300]!r}")
    answer = json.loads(data)["choices"][0]["message"]["content"] or ""
    return decimal.Decimal(cost), lane, answer


urllib.request.urlopen(urllib.request.Request(f"{sim}/_sim/targets", method="DELETE"), timeout=5).read()
history = [[{"role": "system", "content": system(c)}] for c in range(conversations)]
total = decimal.Decimal(0)
lanes = {}
with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
    for t in range(turns):
        for h in history:
            h.append({"role": "user", "content": f"Step {t + 1}: look at module m{t} and fix the failing test "
                      "it names; keep the change small and run the suite again. " * 3})
        bodies = [{"model": "flux-auto", "max_tokens": 200, "messages": list(h)} for h in history]
        for h, (cost, lane, answer) in zip(history, pool.map(call, bodies)):
            total += cost
            lanes[lane] = lanes.get(lane, 0) + 1
            h.append({"role": "assistant", "content": answer})

stats = json.load(urllib.request.urlopen(f"{sim}/_sim/targets", timeout=5))["targets"]
cached = sum(s["cached_tokens"] for s in stats.values())
cacheable = sum(s["cacheable_tokens"] for s in stats.values())
inputs = sum(s["input_tokens"] for s in stats.values())
share = 100 * cached / cacheable if cacheable else 0
by_lane = ", ".join(f"{k} {v}" for k, v in sorted(lanes.items()))
print(f"| {label} | {conversations * turns} | {inputs:,} | {cacheable:,} | {cached:,} | {share:.1f}% | "
      f"${total:.4f} | {by_lane} |", flush=True)
