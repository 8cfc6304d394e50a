#!/usr/bin/env python3
"""Feature-group benchmark, side by side with the Python `deltalake` binding.

1. Ingest: N rows x 6 columns sent to the server over HTTP as one Arrow IPC stream,
   vs `deltalake.write_deltalake` writing the same table to a local path.
2. Time travel: a group with version 1 (N/2 rows) overwritten by version 2 (N/2 other
   rows); reading version 1 vs the latest (same size) as Arrow IPC over HTTP.
3. SQL: a time-travel aggregate over the N-row version through `POST /v1/sql`, vs DuckDB
   over the same Parquet files.

    cargo build --release -p lakeledger
    python3 scripts/bench_feature_groups.py [--rows 10000000] [--bin target/release/lakeledger]

Needs pyarrow, deltalake and duckdb (pip install pyarrow deltalake duckdb). Prints rows/s and the ratios.
"""

import argparse
import http.client
import json
import os
import re
import subprocess
import threading
import tempfile
import time

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake


def make_table(rows, seed):
    ids = pa.array(range(seed * rows, seed * rows + rows), pa.int64())
    base = 1_767_225_600_000_000  # 2026-01-01 in microseconds
    ts = pc.cast(pc.add(pc.cast(ids, pa.int64()), base), pa.timestamp("us", tz="UTC"))
    clicks = pc.cast(pc.bit_wise_and(ids, 1023), pa.int32())
    ctr = pc.divide(pc.cast(clicks, pa.float64()), 1024.0)
    countries = pa.array(["DE", "FR", "US", "BR", "JP", "IN", "NG", "AU"])
    country = pc.take(countries, pc.bit_wise_and(ids, 7))
    score = pc.multiply(ctr, 3.5)
    return pa.table({"user_id": ids, "ts": ts, "clicks": clicks, "ctr": ctr, "country": country, "score": score})


def ipc_bytes(table):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=65536):
            w.write_batch(batch)
    return sink.getvalue().to_pybytes()


class Server:
    def __init__(self, binary, data_dir):
        # LAKELEDGER_BENCH_SERVER_LOG=<file> keeps the server's info log (phase timings).
        log = os.environ.get("LAKELEDGER_BENCH_SERVER_LOG")
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "LAKELEDGER_LOG": "info" if log else "warn"},
        )
        self.key = None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("llk_"):
                self.key = line
            m = re.match(r"listening: http://([\d.]+):(\d+)", line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                break
        # Keep reading the log, so a full pipe never stalls the server.
        threading.Thread(target=self._drain, args=(log,), daemon=True).start()

    def _drain(self, path):
        sink = open(path, "a") if path else None
        for line in self.proc.stdout:
            if sink:
                sink.write(line)
                sink.flush()

    def request(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection(self.host, self.port, timeout=3600)
        h = {"Authorization": f"Bearer {self.key}", **(headers or {})}
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return r, data

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


SCHEMA = {
    "entity_keys": [{"name": "user_id", "type": "int64"}],
    "event_time": "ts",
    "features": [
        {"name": "clicks", "type": "int32"},
        {"name": "ctr", "type": "float64"},
        {"name": "country", "type": "string"},
        {"name": "score", "type": "float64"},
    ],
}


def create(server, name):
    server.request("POST", "/v1/feature-groups", json.dumps({"name": name, **SCHEMA}), {"Content-Type": "application/json"})


def ingest(server, name, body, mode="append"):
    t = time.perf_counter()
    server.request("POST", f"/v1/feature-groups/{name}/data?mode={mode}", body, {"Content-Type": "application/vnd.apache.arrow.stream"})
    return time.perf_counter() - t


def read_arrow(server, name, query):
    t = time.perf_counter()
    _, data = server.request("GET", f"/v1/feature-groups/{name}/data?format=arrow&{query}")
    elapsed = time.perf_counter() - t
    rows = pa.ipc.open_stream(data).read_all().num_rows
    return elapsed, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--bin", default="target/release/lakeledger")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n = args.rows

    table = make_table(n, 0)
    body = ipc_bytes(table)
    print(f"{n} rows x 6 columns; Arrow IPC body {len(body) / 1e6:.0f} MB")

    with tempfile.TemporaryDirectory(dir=os.environ.get("LAKELEDGER_BENCH_DIR")) as tmp:
        server = Server(args.bin, os.path.join(tmp, "server"))
        try:
            ours, theirs = [], []
            for i in range(args.repeat):
                create(server, f"ingest_{i}")
                ours.append(ingest(server, f"ingest_{i}", body))
                t = time.perf_counter()
                write_deltalake(os.path.join(tmp, f"py_{i}"), table)
                theirs.append(time.perf_counter() - t)
            o, p = min(ours), min(theirs)
            print(f"ingest  lakeledger over HTTP : {n / o:>12,.0f} rows/s  (best of {args.repeat}: {o:.2f} s)")
            print(f"ingest  write_deltalake      : {n / p:>12,.0f} rows/s  (best of {args.repeat}: {p:.2f} s)")
            print(f"ingest ratio (ours / deltalake rows/s): {p / o:.2f}   goal >= 0.8")

            half = n // 2
            create(server, "travel")
            ingest(server, "travel", ipc_bytes(make_table(half, 1)))
            ingest(server, "travel", ipc_bytes(make_table(half, 2)), mode="overwrite")
            old, new = [], []
            for _ in range(args.repeat):
                t, rows_old = read_arrow(server, "travel", "version=1")
                old.append(t)
                t, rows_new = read_arrow(server, "travel", "")
                new.append(t)
            assert rows_old == rows_new == half, (rows_old, rows_new)
            o, l = min(old), min(new)
            print(f"read    version 1 ({half} rows) : {o:.2f} s;  latest (version 2, {half} rows): {l:.2f} s")
            print(f"time-travel ratio (version N / latest): {o / l:.2f}   goal <= 1.2")

            import duckdb

            query = "SELECT country, count(*) AS n, avg(ctr) AS ctr, max(score) AS top FROM {t} GROUP BY country ORDER BY country"
            ours, theirs = [], []
            files = os.path.join(tmp, "server", "tables", "tenants", "default", "feature-groups", "ingest_0", "*.parquet")
            con = duckdb.connect()
            for _ in range(args.repeat):
                t = time.perf_counter()
                _, data = server.request("POST", "/v1/sql", json.dumps({"sql": query.format(t="ingest_0 VERSION AS OF 1"), "format": "json"}),
                                         {"Content-Type": "application/json"})
                ours.append(time.perf_counter() - t)
                t = time.perf_counter()
                duck = con.execute(query.format(t=f"read_parquet('{files}')")).fetchall()
                theirs.append(time.perf_counter() - t)
            assert len(json.loads(data)) == len(duck) == 8
            o, d = min(ours), min(theirs)
            print(f"sql     aggregate over {n} rows: lakeledger {o:.3f} s, DuckDB {d:.3f} s; ratio {o / d:.2f}   goal <= 2")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
