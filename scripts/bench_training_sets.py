#!/usr/bin/env python3
"""Training-set benchmark, side by side with DuckDB's ASOF LEFT JOIN.

Data: a feature group of F rows (two int64 entity keys, a timestamp, three features) and a
spine of S label rows (the same keys, a timestamp, a label), both ingested into the server
as Arrow IPC. Event times are unique, so the as-of result has no ties and both engines
must produce exactly the same rows.

- lakeledger: `POST /v1/training-sets` (spine by SQL, all features of the group). The
  time covers reading both tables, the join, writing the Parquet result with its SHA-256
  and the audit records. The server is restarted after ingest, so its peak RSS (VmHWM)
  covers the build alone. Fetching the result as Arrow IPC is timed separately.
- DuckDB: `ASOF LEFT JOIN` over the same Parquet files the server wrote, to an Arrow table.

The two take turns, round by round, so a change in the machine's speed hits both alike.

    cargo build --release -p lakeledger
    python3 scripts/bench_training_sets.py [--spine 1000000] [--features 10000000] [--keep DIR]

`--keep DIR` keeps the ingested data in DIR and reuses it on later runs.
`LAKELEDGER_BENCH_SERVER_LOG=FILE` keeps the server's log, with each build's phase times.

Needs pyarrow and duckdb. Prints seconds, the ratio and the server's peak RSS.
"""

import argparse
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(__file__))
from bench_feature_groups import Server, ipc_bytes  # noqa: E402

BASE = 1_767_225_600_000_000  # 2026-01-01 in microseconds


def feature_table(n, keys1, keys2, rng):
    # Unique event times (one per microsecond step), shuffled across keys.
    ts = BASE + rng.permutation(n).astype(np.int64) * 1000
    return pa.table({
        "k1": pa.array(rng.integers(0, keys1, n), pa.int64()),
        "k2": pa.array(rng.integers(0, keys2, n), pa.int64()),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "f1": pa.array(rng.random(n)),
        "f2": pa.array(rng.integers(0, 1_000_000, n), pa.int64()),
        "f3": pa.array(rng.random(n)),
    })


def spine_table(n, keys1, keys2, span, rng):
    # Spine times fall between feature times (odd offsets), so no equal times either.
    ts = BASE + rng.integers(0, span, n).astype(np.int64) * 1000 + 500
    return pa.table({
        "k1": pa.array(rng.integers(0, keys1, n), pa.int64()),
        "k2": pa.array(rng.integers(0, keys2, n), pa.int64()),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "label": pa.array(rng.integers(0, 2, n), pa.int64()),
    })


def create(server, name, features):
    body = {
        "name": name,
        "entity_keys": [{"name": "k1", "type": "int64"}, {"name": "k2", "type": "int64"}],
        "event_time": "ts",
        "features": features,
    }
    server.request("POST", "/v1/feature-groups", json.dumps(body), {"Content-Type": "application/json"})


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def ingest(args, data_dir, keys1, keys2):
    rng = np.random.default_rng(7)
    feats = feature_table(args.features, keys1, keys2, rng)
    spine = spine_table(args.spine, keys1, keys2, args.features, rng)
    server = Server(args.bin, data_dir)
    try:
        create(server, "feats", [{"name": f, "type": t} for f, t in [("f1", "float64"), ("f2", "int64"), ("f3", "float64")]])
        create(server, "spine", [{"name": "label", "type": "int64"}])
        for name, table in [("feats", feats), ("spine", spine)]:
            server.request("POST", f"/v1/feature-groups/{name}/data", ipc_bytes(table),
                           {"Content-Type": "application/vnd.apache.arrow.stream"})
    finally:
        server.stop()
    return server.key


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spine", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=10_000_000)
    ap.add_argument("--bin", default="target/release/lakeledger")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", help="a folder to keep the ingested data in and reuse on later runs")
    args = ap.parse_args()
    keys1, keys2 = 100_000, 10
    print(f"spine {args.spine} rows, features {args.features} rows ({keys1 * keys2} entities)")

    with tempfile.TemporaryDirectory(dir=os.environ.get("LAKELEDGER_BENCH_DIR")) as tmp:
        data_dir = args.keep or os.path.join(tmp, "server")
        key_file = os.path.join(data_dir, "bench-key")
        if os.path.exists(key_file):
            with open(key_file) as f:
                key = f.read().strip()
        else:
            key = ingest(args, data_dir, keys1, keys2)
            with open(key_file, "w") as f:
                f.write(key)

        import duckdb

        root = os.path.join(data_dir, "tables", "tenants", "default", "feature-groups")
        ffiles = glob.glob(os.path.join(root, "feats", "*.parquet"))
        sfiles = glob.glob(os.path.join(root, "spine", "*.parquet"))
        con = duckdb.connect()
        query = (f"SELECT s.k1, s.k2, s.ts, s.label, f.f1, f.f2, f.f3 FROM read_parquet({sfiles!r}) s "
                 f"ASOF LEFT JOIN read_parquet({ffiles!r}) f ON s.k1 = f.k1 AND s.k2 = f.k2 AND s.ts >= f.ts")

        # A fresh process, so its peak RSS is the build's. The key is shown only at first start.
        server = Server(args.bin, data_dir)
        server.key = key
        request = json.dumps({"name": "bench", "spine_sql": "SELECT k1, k2, ts, label FROM spine", "spine_time": "ts",
                              "features": ["feats"]})
        # The two engines take turns, so a change in the machine's speed hits both alike.
        ours, fetch, theirs = [], [], []
        try:
            for _ in range(args.repeat):
                t = time.perf_counter()
                _, body = server.request("POST", "/v1/training-sets", request, {"Content-Type": "application/json"})
                ours.append(time.perf_counter() - t)
                manifest = json.loads(body)
                t = time.perf_counter()
                _, data = server.request("GET", f"/v1/training-sets/{manifest['id']}/data?format=arrow")
                result = pa.ipc.open_stream(data).read_all()
                fetch.append(time.perf_counter() - t)
                t = time.perf_counter()
                duck = con.sql(query).to_arrow_table()
                theirs.append(time.perf_counter() - t)
                print(f"  round: lakeledger {ours[-1]:.2f} s, DuckDB {theirs[-1]:.2f} s")
            rss = peak_rss_mb(server.proc.pid)
        finally:
            server.stop()

        # Same rows: counts and sums over the matched features agree.
        assert result.num_rows == duck.num_rows == args.spine, (result.num_rows, duck.num_rows)
        for ours_col, duck_col in [("feats__f2", "f2"), ("feats__f1", "f1")]:
            a, b = result.column(ours_col), duck.column(duck_col)
            assert a.null_count == b.null_count, (ours_col, a.null_count, b.null_count)
            sa, sb = pa.compute.sum(a).as_py(), pa.compute.sum(b).as_py()
            assert abs(sa - sb) <= 1e-6 * max(1.0, abs(sb)), (ours_col, sa, sb)

        o, f, d = min(ours), min(fetch), min(theirs)
        print(f"matched {args.spine - result.column('feats__f1').null_count} of {args.spine} spine rows")
        print(f"lakeledger build (SQL spine, join, Parquet + SHA-256, audit): {o:.2f} s (best of {args.repeat})")
        print(f"lakeledger fetch of the result as Arrow IPC: {f:.2f} s")
        threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
        print(f"DuckDB {duckdb.__version__} ASOF LEFT JOIN to Arrow: {d:.2f} s (best of {args.repeat}, {threads} threads)")
        ratios = sorted(x / y for x, y in zip(ours, theirs))
        print(f"ratio build / DuckDB: best {o / d:.2f}, median of rounds {ratios[len(ratios) // 2]:.2f}   goal <= 1.0;  "
              f"peak RSS of the server: {rss:.0f} MB   goal <= 4096")


if __name__ == "__main__":
    main()
