#!/usr/bin/env python3
"""Online serving benchmarks, each server on its own on 127.0.0.1, driven by wrk.

1. Online features, 1 entity x 3 features, 10,000 entities loaded:
   lakeledger `POST /v1/online/features` (every request audited: durable intent record
   before the lookup, outcome after) against Feast's feature server (`feast serve`,
   2 workers, SQLite online store) with its `POST /get-online-features`.
2. Model scoring, a logistic regression on the 30 breast-cancer inputs, one row per
   request in MLflow's `dataframe_split` shape: lakeledger
   `POST /v1/models/bc@champion/invocations` (audited) against `mlflow models serve`
   (scikit-learn LogisticRegression, 2 workers).
3. Batching: lakeledger scoring at 64 and 256 connections with dynamic batching as
   configured (greedy: whatever is queued) and with batches capped at one row, for the
   logistic regression and for an MLP with three 512-wide hidden layers.

    cargo build --release -p lakeledger
    python3 scripts/bench_serving.py [--duration 10] [--bin target/release/lakeledger] [--skip-feast] [--skip-mlflow]

Needs wrk, pyarrow, scikit-learn, and for the baselines feast and mlflow.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(__file__))
from bench_feature_groups import Server  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "trainer", "tests", "data")
FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]
ENTITIES = 10_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def to_ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url, body, connections, duration, headers):
    lua = "wrk.method = 'POST'\n" + f"wrk.body = {json.dumps(body)}\n"
    for k, v in headers.items():
        lua += f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
        script = f.name
    threads = min(connections, 2)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} failed responses\n{out}")
    return rps, p50, p99


def baseline(command, port, ping, path, body, expect, duration, conns):
    """Starts a baseline server, checks one answer holds `expect`, then drives it with wrk."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}{ping}")
        url = f"http://127.0.0.1:{port}{path}"
        headers = {"Content-Type": "application/json"}
        answer = urllib.request.urlopen(urllib.request.Request(url, body.encode(), headers)).read()
        assert expect in answer, answer
        wrk(url, body, 1, 2, headers)  # warm up
        return [(c, wrk(url, body, c, duration, headers)) for c in conns]
    finally:
        proc.terminate()
        proc.wait()


def report(label, rows):
    print(label)
    for conns, (rps, p50, p99) in rows:
        print(f"  {conns:>3} conn: {rps:>8.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:7.2f} ms")


def driver_rows():
    now = datetime.now(timezone.utc) - timedelta(hours=1)
    ids = list(range(1001, 1001 + ENTITIES))
    return ids, now, [((i * 37) % 100) / 100 for i in ids], [((i * 53) % 100) / 100 for i in ids], [i % 40 for i in ids]


def lakeledger_features(binary, duration, conns):
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(binary, os.path.join(tmp, "server"))
        try:
            j = {"Content-Type": "application/json"}
            server.request("POST", "/v1/feature-groups", json.dumps({
                "name": "driver_hourly_stats", "entity_keys": [{"name": "driver_id", "type": "int64"}], "event_time": "ts",
                "features": [{"name": "conv_rate", "type": "float32"}, {"name": "acc_rate", "type": "float32"},
                             {"name": "avg_daily_trips", "type": "int64"}], "online": True}), j)
            ids, ts, conv, acc, trips = driver_rows()
            stamp = ts.strftime("%Y-%m-%dT%H:%M:%SZ")
            csv = "driver_id,ts,conv_rate,acc_rate,avg_daily_trips\n" + "".join(
                f"{i},{stamp},{c},{a},{t}\n" for i, c, a, t in zip(ids, conv, acc, trips))
            server.request("POST", "/v1/feature-groups/driver_hourly_stats/data", csv, {"Content-Type": "text/csv"})
            body = json.dumps({"features": [f"driver_hourly_stats:{f}" for f in FEATURES], "entities": {"driver_id": [1001]}})
            _, answer = server.request("POST", "/v1/online/features", body, j)
            assert json.loads(answer)["results"][1]["statuses"] == ["PRESENT"], answer
            url = f"http://{server.host}:{server.port}/v1/online/features"
            headers = {**j, "Authorization": f"Bearer {server.key}"}
            wrk(url, body, 1, 2, headers)  # warm up
            return [(c, wrk(url, body, c, duration, headers)) for c in conns]
        finally:
            server.stop()


def feast_features(duration, conns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        repo = os.path.join(tmp, "repo")
        os.makedirs(os.path.join(repo, "data"))
        ids, ts, conv, acc, trips = driver_rows()
        table = pa.table({"driver_id": pa.array(ids, pa.int64()), "event_timestamp": pa.array([ts] * len(ids), pa.timestamp("us", "UTC")),
                          "conv_rate": pa.array(conv, pa.float32()), "acc_rate": pa.array(acc, pa.float32()),
                          "avg_daily_trips": pa.array(trips, pa.int64())})
        parquet = os.path.join(repo, "data", "driver_stats.parquet")
        pq.write_table(table, parquet)
        with open(os.path.join(repo, "feature_store.yaml"), "w") as f:
            f.write("project: bench\nregistry: data/registry.db\nprovider: local\nentity_key_serialization_version: 3\n"
                    "online_store:\n  type: sqlite\n  path: data/online_store.db\noffline_store:\n  type: file\n")
        with open(os.path.join(repo, "features.py"), "w") as f:
            f.write(f"""
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource
from feast.types import Float32, Int64
driver = Entity(name="driver", join_keys=["driver_id"])
source = FileSource(path={parquet!r}, timestamp_field="event_timestamp")
driver_hourly_stats = FeatureView(name="driver_hourly_stats", entities=[driver], ttl=timedelta(days=365),
    schema=[Field(name="conv_rate", dtype=Float32), Field(name="acc_rate", dtype=Float32), Field(name="avg_daily_trips", dtype=Int64)],
    online=True, source=source)
""")
        run = lambda *a: subprocess.run(["feast", "-c", repo, *a], check=True, capture_output=True, text=True)  # noqa: E731
        run("apply")
        end = (datetime.now(timezone.utc) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
        start = (datetime.now(timezone.utc) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S")
        run("materialize", start, end)
        port = free_port()
        body = json.dumps({"features": [f"driver_hourly_stats:{f}" for f in FEATURES], "entities": {"driver_id": [1001]}})
        return baseline(["feast", "-c", repo, "serve", "-h", "127.0.0.1", "-p", str(port), "--workers", "2", "--no-access-log"],
                        port, "/health", "/get-online-features", body, b"PRESENT", duration, conns)


def breast_cancer():
    lines = open(os.path.join(DATA, "breast_cancer.csv")).read().splitlines()
    header = lines[0].split(",")
    rows = [[float(c) for c in line.split(",")] for line in lines[1:]]
    return header, rows


def lakeledger_scoring(binary, duration, conns, extra_config="", hidden_layers=()):
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "server")
        os.makedirs(data_dir)
        config = os.path.join(tmp, "lakeledger.toml")
        with open(config, "w") as f:
            f.write(extra_config)
        os.environ["LAKELEDGER_CONFIG"] = config
        server = Server(binary, data_dir)
        del os.environ["LAKELEDGER_CONFIG"]
        try:
            j = {"Content-Type": "application/json"}
            header, rows = breast_cancer()
            feats = [h for h in header if h not in ("id", "benign")]
            for name, fs in [("bc_features", [{"name": f, "type": "float64"} for f in feats]), ("bc_labels", [{"name": "benign", "type": "int64"}])]:
                server.request("POST", "/v1/feature-groups", json.dumps(
                    {"name": name, "entity_keys": [{"name": "id", "type": "int64"}], "event_time": "ts", "features": fs}), j)
            at = header.index("benign")
            fcsv = ",".join(h for h in header if h != "benign") + ",ts\n"
            lcsv = "id,ts,benign\n"
            for r in rows:
                fcsv += ",".join(str(int(v)) if i == 0 else repr(v) for i, v in enumerate(r) if i != at) + ",2026-01-01T00:00:00Z\n"
                lcsv += f"{int(r[0])},2026-01-02T00:00:00Z,{int(r[at])}\n"
            server.request("POST", "/v1/feature-groups/bc_features/data", fcsv, {"Content-Type": "text/csv"})
            server.request("POST", "/v1/feature-groups/bc_labels/data", lcsv, {"Content-Type": "text/csv"})
            _, body = server.request("POST", "/v1/training-jobs", json.dumps({
                "model": "bc", "label": "benign", "config": {"task": "classification", "hidden_layers": list(hidden_layers), "max_epochs": 50},
                "training_set": {"name": "bc", "spine_sql": "SELECT id, ts, benign FROM bc_labels", "spine_time": "ts", "features": ["bc_features"]}}), j)
            job = json.loads(body)["id"]
            while json.loads(server.request("GET", f"/v1/training-jobs/{job}")[1])["state"] in ("queued", "running"):
                time.sleep(0.1)
            server.request("PUT", "/v1/models/bc/aliases/champion", json.dumps({"version": 1}), j)
            columns = [f"bc_features__{f}" for f in feats]
            row = [v for i, v in enumerate(rows[0]) if i not in (0, at)]
            body = json.dumps({"dataframe_split": {"columns": columns, "data": [row]}})
            _, answer = server.request("POST", "/v1/models/bc@champion/invocations", body, j)
            assert "predictions" in json.loads(answer), answer
            url = f"http://{server.host}:{server.port}/v1/models/bc@champion/invocations"
            headers = {**j, "Authorization": f"Bearer {server.key}"}
            wrk(url, body, 1, 2, headers)
            return [(c, wrk(url, body, c, duration, headers)) for c in conns]
        finally:
            server.stop()


def mlflow_scoring(duration, conns):
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    header, rows = breast_cancer()
    at = header.index("benign")
    feats = [h for i, h in enumerate(header) if i not in (0, at)]
    x = np.array([[v for i, v in enumerate(r) if i not in (0, at)] for r in rows])
    y = np.array([int(r[at]) for r in rows])
    import pandas as pd

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(pd.DataFrame(x, columns=feats), y)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model")
        mlflow.sklearn.save_model(model, path, input_example=pd.DataFrame(x[:2], columns=feats))
        port = free_port()
        body = json.dumps({"dataframe_split": {"columns": feats, "data": [list(x[0])]}})
        return baseline(["mlflow", "models", "serve", "-m", path, "-h", "127.0.0.1", "-p", str(port), "--env-manager", "local", "-w", "2"],
                        port, "/ping", "/invocations", body, b"predictions", duration, conns)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/lakeledger")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--skip-features", action="store_true")
    ap.add_argument("--skip-feast", action="store_true")
    ap.add_argument("--skip-mlflow", action="store_true")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install wrk)")
    if not args.skip_features:
        report("lakeledger /v1/online/features (audited):", lakeledger_features(args.bin, args.duration, [1, 16]))
    if not args.skip_feast:
        report("feast serve /get-online-features (2 workers, sqlite online store):", feast_features(args.duration, [1, 16]))
    report("lakeledger /v1/models/bc@champion/invocations (audited, greedy batching):",
           lakeledger_scoring(args.bin, args.duration, [1, 16, 64, 256]))
    report("lakeledger invocations with batches of one row (serving_max_batch_rows = 1):",
           lakeledger_scoring(args.bin, args.duration, [64, 256], "serving_max_batch_rows = 1\n"))
    big = (512, 512, 512)
    report("lakeledger invocations, MLP 512x512x512, greedy batching:",
           lakeledger_scoring(args.bin, args.duration, [1, 64, 256], hidden_layers=big))
    report("lakeledger invocations, MLP 512x512x512, batches of one row:",
           lakeledger_scoring(args.bin, args.duration, [64, 256], "serving_max_batch_rows = 1\n", hidden_layers=big))
    if not args.skip_mlflow:
        report("mlflow models serve /invocations (sklearn LogisticRegression, 2 workers):", mlflow_scoring(args.duration, [1, 16]))


if __name__ == "__main__":
    main()
