#!/usr/bin/env python3
"""Serving an imported model: a 200-tree XGBoost classifier on the breast-cancer inputs,
one row per request through `/invocations` (audited), at 1, 16 and 64 connections, against
`mlflow models serve` with the same booster (xgboost flavor, 2 workers) and against
onnxruntime in-process (the floor: no network, no audit). At 64 connections the server is
also run with batching off (`serving_max_batch_rows = 1`) to show what batching changes.
All side by side in one run, driven by one load generator.

    cargo build --release -p lakeledger
    cargo bench -p lakeledger-tests --bench http_load --no-run
    pip install mlflow xgboost onnxmltools onnxruntime
    python3 tests/benches/onnx_serving.py --bin target/release/lakeledger [--seconds 10]

Prints requests/s and p50/p99 latency for each, and the ratios.
"""

import argparse
import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))
sys.path.insert(0, str(ROOT / "clients" / "python" / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "onnx"))
import zoo  # noqa: E402
from lakeledger import Client  # noqa: E402
from servers import start_server, stop_server  # noqa: E402


def load_generator():
    found = sorted((p for p in glob.glob(str(ROOT / "target" / "release" / "deps" / "http_load-*")) if os.access(p, os.X_OK) and not p.endswith(".d")), key=os.path.getmtime)
    if not found:
        sys.exit("build the load generator first: cargo bench -p lakeledger-tests --bench http_load --no-run")
    return found[-1]


def drive(url, body, connections, seconds, authorization=None):
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        f.write(body)
    args = [load_generator(), url, f.name, "application/json", str(connections), str(seconds)]
    if authorization:
        args.append(authorization)
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    os.unlink(f.name)
    return json.loads(out.strip().splitlines()[-1])


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(url, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def onnxruntime_floor(onnx_bytes, x, seconds):
    """Rows scored one at a time in this process, as fast as onnxruntime goes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    rows = [x[i : i + 1] for i in range(len(x))]
    latencies = []
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        sess.run(None, {name: rows[i % len(rows)]})
        latencies.append(time.perf_counter() - t)
        i += 1
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50_ms": latencies[len(latencies) // 2] * 1000, "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000, "failures": 0}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=str(ROOT / "target" / "release" / "lakeledger"))
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    os.environ["LAKELEDGER_BIN"] = args.bin

    import xgboost

    z = zoo.xgboost_classifier(trees=200)
    columns, x, y = zoo.load("breast_cancer", "benign")
    body = json.dumps({"dataframe_split": {"columns": columns, "data": [[float(v) for v in x[0]]]}}).encode()
    results = {}

    results["onnxruntime in-process, c=1"] = onnxruntime_floor(z.onnx, x, args.seconds)

    for label, batch_rows in (("lakeledger", None), ("lakeledger, batching off", 1)):
        data = Path(tempfile.mkdtemp())
        extra = []
        if batch_rows:
            (data / "bench.toml").write_text(f"serving_max_batch_rows = {batch_rows}\n")
            extra = ["--config", str(data / "bench.toml")]
        proc, s = start_server(data, *extra)
        try:
            ll = Client(s.url, s.key)
            ll.create_model("cancer")
            v = ll.import_model("cancer", z.onnx, columns=columns)
            url = f"{s.url}/v1/models/cancer/versions/{v['version']}/invocations"
            drive(url, body, 4, 1, f"Bearer {s.key}")  # warm: load and verify the model
            for c in ((1, 16, 64) if batch_rows is None else (64,)):
                results[f"{label}, c={c}"] = drive(url, body, c, args.seconds, f"Bearer {s.key}")
        finally:
            stop_server(proc)

    model_dir = Path(tempfile.mkdtemp()) / "model"
    booster = xgboost.XGBClassifier(n_estimators=200, max_depth=4, random_state=0, n_jobs=1).fit(x, y.astype(np.int64))
    import mlflow.xgboost
    import pandas as pd

    mlflow.xgboost.save_model(booster, str(model_dir), input_example=pd.DataFrame(x[:1], columns=columns))
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    mlflow_proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir), "-h", "127.0.0.1", "-p", str(port), "-w", "2", "--env-manager", "local"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_until(f"http://127.0.0.1:{port}/ping")
        url = f"http://127.0.0.1:{port}/invocations"
        drive(url, body, 4, 1)
        for c in (1, 16, 64):
            results[f"mlflow models serve (2 workers), c={c}"] = drive(url, body, c, args.seconds)
    finally:
        mlflow_proc.terminate()
        mlflow_proc.wait(timeout=30)

    print(f"200-tree XGBoost classifier, breast cancer, one row per request, {args.seconds:.0f} s per run")
    print(f"{'':48} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'failed':>7}")
    for name, r in results.items():
        print(f"{name:48} {r['rps']:>10.0f} {r['p50_ms']:>9.2f} {r['p99_ms']:>9.2f} {r['failures']:>7}")
    for c in (1, 16, 64):
        ours, theirs = results[f"lakeledger, c={c}"], results[f"mlflow models serve (2 workers), c={c}"]
        print(f"c={c}: lakeledger / mlflow throughput {ours['rps'] / theirs['rps']:.2f}x, p50 {theirs['p50_ms'] / ours['p50_ms']:.2f}x lower")
    print(f"c=1: lakeledger / onnxruntime in-process throughput {results['lakeledger, c=1']['rps'] / results['onnxruntime in-process, c=1']['rps']:.4f}")
    print(f"c=64: batching on / off throughput {results['lakeledger, c=64']['rps'] / results['lakeledger, batching off, c=64']['rps']:.2f}")


if __name__ == "__main__":
    main()
