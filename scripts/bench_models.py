#!/usr/bin/env python3
"""Model benchmarks.

1. Training: lakeledger's MLP (burn, CPU) against scikit-learn's MLPClassifier with the same
   layer sizes (64x64), Adam at 1e-3, batch 32, 20% validation and early stopping after 10
   epochs without improvement, on the breast cancer data: epochs, ms per epoch, validation
   accuracy and the time until validation accuracy first reaches 0.95.
2. Registry writes: registering a model version (POST /v1/models/{name}/versions with an
   artifact: stored, hashed, signed, catalogued, with its durable audit records) and moving
   an alias, one request at a time over keep-alive HTTP; p50 and p99.

    cargo build --release -p lakeledger
    python3 scripts/bench_models.py [--writes 1000] [--bin target/release/lakeledger]

Needs scikit-learn, numpy and pyarrow.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench_feature_groups import Server  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "trainer", "tests", "data")


def sklearn_mlp(seeds):
    import warnings

    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    raw = np.genfromtxt(os.path.join(DATA, "breast_cancer.csv"), delimiter=",", names=True)
    names = [n for n in raw.dtype.names if n not in ("id", "benign")]
    x = np.column_stack([raw[n] for n in names])
    y = raw["benign"].astype(int)
    x = StandardScaler().fit_transform(x)
    for seed in seeds:
        clf = MLPClassifier(hidden_layer_sizes=(64, 64), solver="adam", learning_rate_init=1e-3, batch_size=32,
                            max_iter=200, early_stopping=True, validation_fraction=0.2, n_iter_no_change=10,
                            random_state=seed)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(x, y)
        secs = time.perf_counter() - t
        per_epoch = secs * 1000 / clf.n_iter_
        first = next((i + 1 for i, s in enumerate(clf.validation_scores_) if s >= 0.95), None)
        print(f"  seed {seed}: {clf.n_iter_} epochs in {secs:.2f} s ({per_epoch:.1f} ms/epoch), "
              f"best validation accuracy {clf.best_validation_score_:.4f}, first >= 0.95 after "
              f"{'-' if first is None else f'{first * per_epoch:.0f} ms'}")


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def registry_writes(binary, writes):
    with tempfile.TemporaryDirectory(dir=os.environ.get("LAKELEDGER_BENCH_DIR")) as tmp:
        server = Server(binary, os.path.join(tmp, "server"))
        try:
            j = {"Content-Type": "application/json"}
            # A real artifact: the wine data, a short training job.
            raw = open(os.path.join(DATA, "wine.csv")).read().splitlines()
            header = raw[0].split(",")
            feats = [h for h in header if h not in ("id", "cultivar")]
            for name, fs in [("wine_features", [{"name": f, "type": "float64"} for f in feats]),
                             ("wine_labels", [{"name": "cultivar", "type": "int64"}])]:
                server.request("POST", "/v1/feature-groups", json.dumps(
                    {"name": name, "entity_keys": [{"name": "id", "type": "int64"}], "event_time": "ts", "features": fs}), j)
            fcsv = ",".join(h for h in header if h != "cultivar") + ",ts\n"
            lcsv = "id,ts,cultivar\n"
            for line in raw[1:]:
                cells = line.split(",")
                fcsv += ",".join(cells[:-1]) + ",2026-01-01T00:00:00Z\n"
                lcsv += f"{cells[0]},2026-01-02T00:00:00Z,{int(float(cells[-1]))}\n"
            server.request("POST", "/v1/feature-groups/wine_features/data", fcsv, {"Content-Type": "text/csv"})
            server.request("POST", "/v1/feature-groups/wine_labels/data", lcsv, {"Content-Type": "text/csv"})
            _, body = server.request("POST", "/v1/training-jobs", json.dumps({
                "model": "wine", "label": "cultivar", "config": {"task": "classification", "hidden_layers": [], "max_epochs": 5},
                "training_set": {"name": "wine", "spine_sql": "SELECT id, ts, cultivar FROM wine_labels", "spine_time": "ts",
                                 "features": ["wine_features"]}}), j)
            job = json.loads(body)["id"]
            while json.loads(server.request("GET", f"/v1/training-jobs/{job}")[1])["state"] in ("queued", "running"):
                time.sleep(0.1)
            _, artifact = server.request("GET", "/v1/models/wine/versions/1/artifact")
            print(f"  artifact: {len(artifact)} bytes")

            import http.client
            conn = http.client.HTTPConnection(server.host, server.port)
            auth = {"Authorization": f"Bearer {server.key}"}

            def timed(method, path, body, headers):
                t = time.perf_counter()
                conn.request(method, path, body=body, headers={**auth, **headers})
                r = conn.getresponse()
                r.read()
                assert r.status < 300, r.status
                return (time.perf_counter() - t) * 1000

            for label, method, path, make_body in [
                ("register a model version", "POST", "/v1/models/wine/versions", lambda i: artifact),
                ("move an alias", "PUT", "/v1/models/wine/aliases/champion",
                 lambda i: json.dumps({"version": 1 + i % 2, "reason": f"bench {i}"})),
            ]:
                for i in range(20):  # warm up
                    timed(method, path, make_body(i), j)
                ms = [timed(method, path, make_body(i), j) for i in range(writes)]
                print(f"  {label}: p50 {percentile(ms, 50):.2f} ms, p99 {percentile(ms, 99):.2f} ms, "
                      f"max {max(ms):.2f} ms over {writes} sequential requests")
        finally:
            server.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/lakeledger")
    ap.add_argument("--writes", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    print("lakeledger MLP 64x64 (cargo bench -p lakeledger-trainer --bench mlp):")
    out = subprocess.run(["cargo", "bench", "-q", "-p", "lakeledger-trainer", "--bench", "mlp", "--", str(args.seeds)],
                         capture_output=True, text=True, check=True)
    print("".join(f"  {line}\n" for line in out.stdout.splitlines() if line.startswith("seed")), end="")
    print("scikit-learn MLPClassifier 64x64:")
    sklearn_mlp(range(args.seeds))
    print("registry writes (release server, SQLite catalog, audit ledger on):")
    registry_writes(args.bin, args.writes)


if __name__ == "__main__":
    main()
