#!/usr/bin/env python3
"""Helpers for benches/load.sh: free ports, process-tree CPU and memory from /proc, and the
markdown table.

usage:
  load_util.py ports N            N free loopback TCP ports, one a line
  load_util.py ticks PID...       utime+stime (+ reaped children's) clock ticks of the trees
  load_util.py reset-peak PID...  reset VmHWM (peak RSS) of every process in the trees
  load_util.py peak-kb PID...     sum of VmHWM over the trees, kB
  load_util.py rss-kb PID...      sum of VmRSS over the trees, kB
  load_util.py settle PID...      wait (at most 10 s) until the trees stop using CPU
  load_util.py table RESULTS      render the results file written by load.sh
"""
import os
import re
import socket
import sys
import time


def children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def tree(roots):
    kids = children_map()
    seen, todo = [], [int(p) for p in roots]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(kids.get(pid, []))
    return seen


def ticks(roots):
    total = 0
    for pid in tree(roots):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # utime, stime, cutime, cstime are fields 14-17 of stat(5); here index 11-14.
        total += sum(int(x) for x in fields[11:15])
    return total


def status_kb(roots, key):
    total = 0
    for pid in tree(roots):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def reset_peak(roots):
    for pid in tree(roots):
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def settle(roots):
    deadline = time.monotonic() + 10
    last = ticks(roots)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = ticks(roots)
        if now - last <= 1:
            return
        last = now


def ports(n):
    socks, out = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        out.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return out


# --- the table -------------------------------------------------------------------------

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def wrk_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def parse_wrk(path):
    out = {"rps": None, "p50": None, "p99": None, "requests": 0, "non2xx": 0, "sockerr": 0,
           "timeouts": 0}
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return out
    for line in text.splitlines():
        w = line.split()
        if line.startswith("Requests/sec:"):
            out["rps"] = float(w[1])
        elif len(w) == 2 and w[0] == "50%":
            out["p50"] = wrk_ms(w[1])
        elif len(w) == 2 and w[0] == "99%":
            out["p99"] = wrk_ms(w[1])
        elif "requests in" in line:
            out["requests"] = int(w[0])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            out["non2xx"] = int(w[-1])
        elif line.strip().startswith("Socket errors:"):
            nums = [int(x) for x in re.findall(r"(\d+)", line)]
            out["sockerr"] = sum(nums)
            out["timeouts"] = nums[-1] if nums else 0
    return out


def fmt_ms(v):
    if v is None:
        return ""
    if v < 1:
        return f"{v:.2f} ms"
    if v < 100:
        return f"{v:.1f} ms"
    return f"{v:,.0f} ms"


def table(path):
    hz = os.sysconf("SC_CLK_TCK")
    rows = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                rows.append(line.split("\t"))
    # stream kb conns target kind(run|note) wrk_file|note ticks peak_kb
    base = {}
    parsed = []
    for r in rows:
        stream, kb, conns, target, kind, what = r[:6]
        rec = {"stream": stream, "kb": kb, "conns": conns, "target": target, "kind": kind}
        if kind == "run":
            rec.update(parse_wrk(what))
            rec["ticks"] = int(r[6]) if r[6] else None
            rec["peak_kb"] = int(r[7]) if r[7] else None
            if target == "pingora" and rec["rps"]:
                base[(stream, kb, conns)] = rec["rps"]
        else:
            rec["note"] = what.replace("|", "/")
        parsed.append(rec)

    print("| load | target | req/s | p50 | p99 | × pingora | CPU/req | peak RSS | errors |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    last_group = None
    flagged = few = 0
    for rec in parsed:
        group = (rec["stream"], rec["kb"], rec["conns"])
        label = ""
        if group != last_group:
            mode = "streamed" if rec["stream"] == "1" else "non-streamed"
            conns = "1 conn" if rec["conns"] == "1" else f"{rec['conns']} conns"
            label = f"**{mode}, {rec['kb']} KB, {conns}**"
            last_group = group
        if rec["kind"] != "run":
            print(f"| {label} | {rec['target']} | {rec['note']} | | | | | | |")
            continue
        rps = rec["rps"]
        ratio = ""
        b = base.get(group)
        if rps is not None and b:
            r = rps / b
            ratio = f"{r:.2f}" if r >= 0.1 else f"{r:.3f}"
        cpu = ""
        if rec["ticks"] is not None and rec["requests"]:
            cpu = f"{rec['ticks'] / hz / rec['requests'] * 1e6:,.0f} µs"
        peak = f"{rec['peak_kb'] / 1024:.0f} MB" if rec["peak_kb"] else ""
        errs = rec["non2xx"] + rec["sockerr"]
        err = "0"
        if errs:
            flagged += 1
            parts = []
            if rec["non2xx"]:
                parts.append(f"{rec['non2xx']} non-2xx")
            if rec["sockerr"]:
                parts.append(f"{rec['sockerr']} socket" +
                             (f" ({rec['timeouts']} timeouts)" if rec["timeouts"] else ""))
            err = "**" + ", ".join(parts) + "**"
        rps_s = f"{rps:,.0f}" if rps is not None else "no result"
        p50, p99 = fmt_ms(rec["p50"]), fmt_ms(rec["p99"])
        if not rec["requests"]:
            flagged += 1
            p50 = p99 = ratio = ""
            err = "**none completed**" if not errs else err
        elif rec["requests"] < 2 * int(rec["conns"]):
            # One wave of requests per connection at most: the count is quantized, not a rate.
            few += 1
            rps_s += " †"
        if errs:
            rps_s += " ⚠"
        print(f"| {label} | {rec['target']} | {rps_s} | {p50} | "
              f"{p99} | {ratio} | {cpu} | {peak} | {err} |")
    if flagged:
        print(f"\n⚠ {flagged} cell(s) had errors or no completed request: "
              "req/s counts failed requests too.")
    if few:
        print("\n† fewer than two requests per connection completed in the cell: the rate is "
              "quantized by the first wave (a longer DURATION measures it better).")


def stage_totals(path):
    """flux_stage_* samples of a /metrics scrape: ({stage: seconds}, requests)."""
    spent, requests = {}, 0
    for line in open(path):
        if line.startswith("flux_stage_seconds_total{"):
            name = line.split('stage="', 1)[1].split('"', 1)[0]
            spent[name] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("flux_stage_requests_total "):
            requests = int(float(line.split()[1]))
    return spent, requests


def stage_table(cells):
    """Markdown: µs per request in each stage (rows) for each cell (label=before:after)."""
    columns, order = [], []
    for cell in cells:
        label, files = cell.split("=", 1)
        before, after = files.split(":")
        (b, nb), (a, na) = stage_totals(before), stage_totals(after)
        n = na - nb
        per = {k: (a[k] - b.get(k, 0)) / n * 1e6 for k in a} if n > 0 else {}
        order = order or list(a)
        columns.append((label, per, n))
    print("| stage (µs per request, wall) | " + " | ".join(c[0] for c in columns) + " |")
    print("|---|" + "--:|" * len(columns))
    for stage in order:
        if all(c[1].get(stage, 0) < 0.05 for c in columns):
            continue
        print(f"| {stage} | " + " | ".join(f"{c[1].get(stage, 0):.1f}" for c in columns) + " |")
    print("| **total** | " + " | ".join(f"{sum(c[1].values()):.1f}" for c in columns) + " |")
    print("| requests counted | " + " | ".join(f"{c[2]:,}" for c in columns) + " |")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ports":
        print("\n".join(str(p) for p in ports(int(args[0]))))
    elif cmd == "ticks":
        print(ticks(args))
    elif cmd == "reset-peak":
        reset_peak(args)
    elif cmd == "peak-kb":
        print(status_kb(args, "VmHWM"))
    elif cmd == "rss-kb":
        print(status_kb(args, "VmRSS"))
    elif cmd == "settle":
        settle(args)
    elif cmd == "table":
        table(args[0])
    elif cmd == "stage-table":
        stage_table(args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
