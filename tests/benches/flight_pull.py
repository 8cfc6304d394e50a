#!/usr/bin/env python3
"""Pulling a training set out of a running server: Arrow Flight DoGet, the HTTP Arrow
stream and the Python client, against reading the same Parquet file locally with pyarrow
(the floor no network path can beat); then a small `VERSION AS OF` query's round trip over
Flight SQL and over HTTP. All side by side, in one run, against one server.

    cargo build --release -p lakeledger
    python3 tests/benches/flight_pull.py --bin target/release/lakeledger --rows 10000000

Prints rows/s for each path, each path's ratio to the local read, and query latencies.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))
sys.path.insert(0, str(ROOT / "clients" / "python" / "tests"))
from lakeledger import Client  # noqa: E402
from servers import start_server, stop_server  # noqa: E402


def start(binary, data_dir):
    os.environ["LAKELEDGER_BIN"] = binary
    (data_dir / "bench.toml").write_text("sql_memory_limit_bytes = 8589934592\nsql_row_limit = 100000000\n")
    return start_server(data_dir, "--config", str(data_dir / "bench.toml"))


def best_of(n, f):
    times = []
    result = None
    for _ in range(n):
        t = time.perf_counter()
        result = f()
        times.append(time.perf_counter() - t)
    return min(times), result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "lakeledger"))
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        data_dir = Path(d)
        proc, running = start(args.bin, data_dir)
        url, flight_url, key = running.url, running.flight_url, running.key
        try:
            ll = Client(url, key, flight_url=flight_url)
            ll.create_feature_group(
                "events",
                entity_keys=[{"name": "id", "type": "int64"}],
                event_time="ts",
                features=[{"name": "x", "type": "float64"}, {"name": "y", "type": "float64"}, {"name": "label", "type": "int64"}],
            )
            chunk = 1_000_000
            t0 = time.perf_counter()
            for start_id in range(0, args.rows, chunk):
                n = min(chunk, args.rows - start_id)
                ids = pa.array(range(start_id, start_id + n), pa.int64())
                ll.ingest(
                    "events",
                    pa.table({
                        "id": ids,
                        "ts": pa.array([1_767_225_600_000_000 + i for i in range(n)], pa.timestamp("us", tz="UTC")),
                        "x": pa.array([float(i % 1000) for i in range(n)]),
                        "y": pa.array([float(i % 7) / 7 for i in range(n)]),
                        "label": pa.array([i % 2 for i in range(n)], pa.int64()),
                    }),
                )
            print(f"ingested {args.rows} rows in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            ts = ll.create_training_set("bench", spine_sql="SELECT id, ts, label FROM events", spine_time="ts", features=["events:x", "events:y"])
            print(f"built training set {ts.id} ({ts.rows} rows, {ts.manifest['bytes'] / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
            path = data_dir / "tables" / "tenants" / "default" / "training-sets" / ts.id / "data.parquet"

            results = {}
            local_s, table = best_of(args.repeat, lambda: pq.read_table(path))
            results["local pyarrow.parquet.read_table"] = local_s
            rows = table.num_rows

            flight = fl.FlightClient(flight_url)
            options = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {key}".encode())])
            ticket = fl.Ticket(json.dumps({"training_set": ts.id}).encode())
            results["Flight DoGet (pyarrow.flight)"], t = best_of(args.repeat, lambda: flight.do_get(ticket, options).read_all())
            assert t.num_rows == rows

            def http_arrow():
                req = urllib.request.Request(f"{url}/v1/training-sets/{ts.id}/data?format=arrow", headers={"Authorization": f"Bearer {key}"})
                with urllib.request.urlopen(req) as r:
                    return pa.ipc.open_stream(r).read_all()

            results["HTTP Arrow stream (urllib + pyarrow)"], t = best_of(args.repeat, http_arrow)
            assert t.num_rows == rows
            results["client .to_arrow(via='flight')"], _ = best_of(args.repeat, lambda: ts.to_arrow(via="flight"))
            results["client .to_arrow() (Parquet, SHA-256 checked)"], _ = best_of(args.repeat, lambda: ts.to_arrow())

            print(f"\n{rows} rows; best of {args.repeat}")
            print(f"{'path':<48} {'seconds':>8} {'Mrows/s':>8} {'vs local':>9}")
            for name, s in results.items():
                print(f"{name:<48} {s:8.2f} {rows / s / 1e6:8.2f} {local_s / s:8.2f}x")

            # A small time-travel query, many times over each protocol.
            q = "SELECT x, y FROM events VERSION AS OF 1 WHERE id < 10"
            lat = {}
            for via in ("flight", "http"):
                ll.sql(q, via=via)
                samples = []
                for _ in range(args.queries):
                    t = time.perf_counter()
                    ll.sql(q, via=via)
                    samples.append((time.perf_counter() - t) * 1000)
                samples.sort()
                lat[via] = (statistics.median(samples), samples[int(len(samples) * 0.99) - 1])
            print(f"\nsmall VERSION AS OF query, {args.queries} round trips each (ms):")
            for via, (p50, p99) in lat.items():
                print(f"  {via:<7} p50 {p50:7.2f}  p99 {p99:7.2f}")
            print(f"  Flight / HTTP p50 ratio: {lat['flight'][0] / lat['http'][0]:.2f}")
        finally:
            stop_server(proc)


if __name__ == "__main__":
    main()
