#!/usr/bin/env python3
"""Where a steady-load run's latency goes, stage by stage.

Joins loadgen's --samples-file (notification id, its reference time -- the row's created_at
with --producer pgbench --, and when the emulator accepted it) with the relay's JSON log (its
`enqueued` and `dequeued` lines, by notification_id) and prints, per stage, p50/p90/p99/p99.9/max:

  ref->enqueued       commit, NOTIFY, the listener's drain (claim transaction) and the XADD
  enqueued->dequeued  the stream reader's XREADGROUP and the dispatcher's screen
  dequeued->provider  the sender's buffer (flush_after_ms) and the HTTP request

then, for the slowest 1 % end to end, the mean of each stage: what the tail is made of.

Log times are stamped by the relay's log thread (slog-async) when it writes the line, a little
after the event; the stages are accurate to that lag (microseconds when the thread keeps up).

  bench/latency/stages.py SAMPLES.csv RELAY_LOG
"""
import csv
import datetime
import json
import sys


def unix_us(ts):
    # "2026-12-02T00:42:48.245455026Z": nanoseconds, which datetime does not take.
    head, frac = ts.rstrip("Z").split(".")
    base = datetime.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return int(base.timestamp()) * 1_000_000 + int((frac + "000000")[:6])


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[round((len(values) - 1) * p)]


def main(samples_path, log_path):
    events = {}
    with open(log_path) as log:
        for line in log:
            if '"notification_id"' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("msg") in ("enqueued", "dequeued"):
                events.setdefault(rec["notification_id"], {}).setdefault(rec["msg"], unix_us(rec["ts"]))
    rows = []
    with open(samples_path) as f:
        for r in csv.DictReader(f):
            e = events.get(r["notification_id"], {})
            if "enqueued" in e and "dequeued" in e:
                ref, got = int(r["reference_unix_us"]), int(r["received_unix_us"])
                rows.append((got - ref, e["enqueued"] - ref, e["dequeued"] - e["enqueued"], got - e["dequeued"]))
    if not rows:
        sys.exit("no receipt of the samples file has both an enqueued and a dequeued line in the log")
    names = ["end to end", "ref->enqueued", "enqueued->dequeued", "dequeued->provider"]
    print(f"{len(rows)} notifications (ms)")
    print(f"| stage | p50 | p90 | p99 | p99.9 | max |")
    print("|---|---|---|---|---|---|")
    for i, name in enumerate(names):
        col = [r[i] / 1000 for r in rows]
        print(f"| {name} | " + " | ".join(f"{pct(col, p):.1f}" for p in (0.5, 0.9, 0.99, 0.999, 1.0)) + " |")
    tail = sorted(rows)[-max(1, len(rows) // 100):]
    print(f"slowest 1 % ({len(tail)}), mean ms: " +
          ", ".join(f"{name} {sum(r[i] for r in tail) / len(tail) / 1000:.1f}" for i, name in enumerate(names)))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
