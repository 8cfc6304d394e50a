#!/usr/bin/env python3
"""Peak memory of the server on its two biggest paths, measured from /proc (VmHWM, reset
before each phase through /proc/<pid>/clear_refs).

1. An upsert of N rows (sent as one Arrow IPC stream) into a feature group already holding
   N rows, half of them matched and replaced: peak RSS while it is received, spooled and
   merged, against the body's size.
2. Five concurrent SQL queries that each hash every distinct entity key of the group
   (`count(DISTINCT user_id)` over all rows, 1.5 N keys): peak RSS against the server's SQL
   memory pool (`sql_memory_limit_bytes`, 1 GiB by default, shared by all queries).

    cargo build --release -p lakeledger
    python3 scripts/bench_memory.py [--rows 20000000] [--bin target/release/lakeledger] [--baseline OTHER_BINARY]

With --baseline, the same phases run against another build (e.g. one from before a change)
side by side. Needs pyarrow.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench_feature_groups import SCHEMA, Server, ipc_bytes, make_table  # noqa: E402

J = {"Content-Type": "application/json"}
ARROW = {"Content-Type": "application/vnd.apache.arrow.stream"}


def status_mb(pid, field):
    """A memory figure of /proc/<pid>/status (VmHWM: peak resident, VmRSS: resident now)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def run(binary, rows):
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        s = Server(binary, tmp)
        pid = s.proc.pid
        try:
            s.request("POST", "/v1/feature-groups", json.dumps({"name": "events", **SCHEMA}), J)
            first = ipc_bytes(make_table(rows, 0))
            s.request("POST", "/v1/feature-groups/events/data", first, ARROW)
            del first
            # Half the rows match existing keys and event times, half are new.
            table = make_table(rows, 0).slice(rows // 2)
            second = ipc_bytes(pa_concat(table, make_table(rows // 2, 2)))
            out["upsert_body_mb"] = len(second) / 2**20
            time.sleep(1)
            out["idle_mb"] = status_mb(pid, "VmRSS")
            reset_peak(pid)
            t = time.perf_counter()
            s.request("POST", "/v1/feature-groups/events/data?mode=upsert", second, ARROW)
            out["upsert_s"] = time.perf_counter() - t
            out["upsert_peak_mb"] = status_mb(pid, "VmHWM")
            del second

            sql = json.dumps({"sql": "SELECT count(DISTINCT user_id) AS n FROM events", "format": "json"})
            errors = []

            def query():
                try:
                    s.request("POST", "/v1/sql", sql, J)
                except Exception as e:  # a refusal is reported, not hidden
                    errors.append(str(e)[:200])

            time.sleep(1)
            reset_peak(pid)
            t = time.perf_counter()
            threads = [threading.Thread(target=query) for _ in range(5)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            out["queries_s"] = time.perf_counter() - t
            out["queries_peak_mb"] = status_mb(pid, "VmHWM")
            out["query_errors"] = errors
        finally:
            s.stop()
    return out


def pa_concat(a, b):
    import pyarrow as pa

    return pa.concat_tables([a, b.cast(a.schema)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/lakeledger")
    ap.add_argument("--baseline")
    ap.add_argument("--rows", type=int, default=20_000_000)
    args = ap.parse_args()
    binaries = [("this build", args.bin)] + ([("baseline", args.baseline)] if args.baseline else [])
    for label, binary in binaries:
        r = run(binary, args.rows)
        print(f"{label}: {args.rows:,} rows")
        print(f"  upsert: body {r['upsert_body_mb']:.0f} MB, idle RSS before {r['idle_mb']:.0f} MB, "
              f"peak RSS {r['upsert_peak_mb']:.0f} MB ({r['upsert_peak_mb'] / r['upsert_body_mb']:.2f}x the body), {r['upsert_s']:.1f} s")
        print(f"  five concurrent count(DISTINCT) queries: peak RSS {r['queries_peak_mb']:.0f} MB, {r['queries_s']:.1f} s, "
              f"refused: {len(r['query_errors'])} {r['query_errors'][:1]}")


if __name__ == "__main__":
    main()
