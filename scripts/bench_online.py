#!/usr/bin/env python3
"""Online store and scale-out benchmark, every configuration on this machine side by side.

1. Lookups (`POST /v1/online/features`, every request audited) of 1 and of 100 entities x 3
   features, at 1 and 16 connections: the embedded store vs Redis (the same server with
   `--online-store redis://…`), 10,000 entities loaded.
2. Lookups of 100 entities at 16 connections through 1, 2 and 3 replicas sharing one
   Postgres catalog, one table root and one Redis (one wrk per replica, run at once; the
   sum), against one replica with the embedded store. All on the same cores, so the
   ratios say what sharing costs, not how replicas scale on separate machines.
3. Ingest commit latency (one 100-row append per request, sequential): Postgres + S3
   (moto) vs SQLite + local disk.

    cargo build --release -p lakeledger
    python3 scripts/bench_online.py [--duration 10] [--bin target/release/lakeledger]

Needs wrk, Redis on 127.0.0.1:6379, Postgres on 127.0.0.1:5432 (user postgres, database
test) and moto_server (pip install 'moto[server]').
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(__file__))
from bench_feature_groups import Server  # noqa: E402
from bench_serving import wrk  # noqa: E402

ENTITIES = 10_000
FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]
REDIS = "redis://127.0.0.1:6379/0"
PG = "postgres://postgres@127.0.0.1:5432/test"
J = {"Content-Type": "application/json"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, tmp, name, config, key=None):
    data = os.path.join(tmp, name)
    os.makedirs(data, exist_ok=True)
    path = os.path.join(tmp, f"{name}.toml")
    with open(path, "w") as f:
        f.write(config)
    os.environ["LAKELEDGER_CONFIG"] = path
    try:
        server = Server(binary, data)
    finally:
        del os.environ["LAKELEDGER_CONFIG"]
    server.key = server.key or key
    return server


def load(server):
    server.request("POST", "/v1/feature-groups", json.dumps({
        "name": "drivers", "entity_keys": [{"name": "driver_id", "type": "int64"}], "event_time": "ts",
        "features": [{"name": "conv_rate", "type": "float32"}, {"name": "acc_rate", "type": "float32"},
                     {"name": "avg_daily_trips", "type": "int64"}], "online": True}), J)
    stamp = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    csv = "driver_id,ts,conv_rate,acc_rate,avg_daily_trips\n" + "".join(
        f"{i},{stamp},{(i * 37) % 100 / 100},{(i * 53) % 100 / 100},{i % 40}\n" for i in range(1, ENTITIES + 1))
    server.request("POST", "/v1/feature-groups/drivers/data", csv, {"Content-Type": "text/csv"})


def body(entities):
    ids = [1 + (i * 97) % ENTITIES for i in range(entities)]
    return json.dumps({"features": [f"drivers:{f}" for f in FEATURES], "entities": {"driver_id": ids}})


def drive(server, entities, conns, duration):
    url = f"http://{server.host}:{server.port}/v1/online/features"
    headers = {**J, "Authorization": f"Bearer {server.key}"}
    _, answer = server.request("POST", "/v1/online/features", body(entities), J)
    assert all(s == "PRESENT" for s in json.loads(answer)["results"][1]["statuses"]), answer[:300]
    return wrk(url, body(entities), conns, duration, headers)


def lookups(binary, duration):
    rows = {}
    for store, config in [("embedded", ""), ("redis", f'online_store = "{REDIS}"\n')]:
        with tempfile.TemporaryDirectory() as tmp:
            server = start(binary, tmp, "server", config)
            try:
                load(server)
                drive(server, 1, 1, 2)  # warm up
                for entities in (1, 100):
                    for conns in (1, 16):
                        rows[(store, entities, conns)] = drive(server, entities, conns, duration)
            finally:
                server.stop()
    print("1. Online lookups (audited), 3 features, 10,000 entities loaded")
    for entities in (1, 100):
        for conns in (1, 16):
            e, r = rows[("embedded", entities, conns)], rows[("redis", entities, conns)]
            print(f"  {entities:>3} entities, {conns:>2} conn: embedded {e[0]:>7.0f} req/s p50 {e[1]:5.2f} ms p99 {e[2]:6.2f} ms | "
                  f"redis {r[0]:>7.0f} req/s p50 {r[1]:5.2f} ms p99 {r[2]:6.2f} ms | redis/embedded {r[0] / e[0]:.2f}x, "
                  f"Redis adds {r[1] - e[1]:+.2f} ms at p50")
    return rows


def fresh_schema():
    schema = f"bench_{uuid.uuid4().hex}"
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc", f"CREATE SCHEMA {schema}"], check=True)
    return f"{PG}?options=-c%20search_path%3D{schema}"


def replicas(binary, duration, embedded_rps):
    print("2. 100-entity lookups at 16 connections per replica, replicas sharing Postgres + Redis")
    base = embedded_rps
    for n in (1, 2, 3):
        with tempfile.TemporaryDirectory() as tmp:
            config = (f'catalog = "{fresh_schema()}"\ndata_root = "{tmp}/tables"\nonline_store = "{REDIS}"\n'
                      f'model_key_path = "{tmp}/shared/model.key"\nentity_hash_key_path = "{tmp}/shared/entity.key"\n')
            servers = [start(binary, tmp, "r0", config)]
            try:
                for i in range(1, n):
                    servers.append(start(binary, tmp, f"r{i}", config, servers[0].key))
                load(servers[0])
                for s in servers:
                    drive(s, 100, 1, 1)  # warm up; each sees the group
                results = [None] * n

                def run(i):
                    results[i] = drive(servers[i], 100, 16, duration)

                threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                total = sum(r[0] for r in results)
                p99 = max(r[2] for r in results)
                print(f"  {n} replica(s): {total:>7.0f} req/s in all (worst p99 {p99:6.2f} ms) = {total / base:.2f}x one embedded replica")
            finally:
                for s in servers:
                    s.stop()


def ingest_latency(binary, requests=40):
    moto_port = free_port()
    moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(moto_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{moto_port}", timeout=1)
                break
            except Exception:
                time.sleep(0.2)
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{moto_port}/bench", method="PUT"))
        print("3. Ingest commit latency, one 100-row append per request, sequential")
        shared = None
        for label, config in [
            ("SQLite + local disk", ""),
            ("Postgres + S3 (moto)", f'catalog = "{fresh_schema()}"\ndata_root = "s3://bench/{uuid.uuid4().hex}/"\n'
                                     f'[storage_options]\naws_endpoint = "http://127.0.0.1:{moto_port}"\naws_allow_http = "true"\n'
                                     'aws_access_key_id = "x"\naws_secret_access_key = "x"\naws_region = "us-east-1"\n'),
        ]:
            with tempfile.TemporaryDirectory() as tmp:
                server = start(binary, tmp, "server", config)
                try:
                    server.request("POST", "/v1/feature-groups", json.dumps({
                        "name": "events", "entity_keys": [{"name": "id", "type": "int64"}], "event_time": "ts",
                        "features": [{"name": "x", "type": "float64"}]}), J)
                    times = []
                    for r in range(requests):
                        rows = "".join(f'{{"id":{r * 100 + i},"ts":"2026-01-01T00:00:00Z","x":{i}}}\n' for i in range(100))
                        t = time.perf_counter()
                        server.request("POST", "/v1/feature-groups/events/data", rows, {"Content-Type": "application/x-ndjson"})
                        times.append((time.perf_counter() - t) * 1000)
                    times = times[5:]
                    p50, p99 = statistics.median(times), sorted(times)[int(len(times) * 0.99) - 1]
                    shared = shared or p50
                    print(f"  {label:<22} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  ({p50 / shared:.2f}x SQLite + disk at p50)")
                finally:
                    server.stop()
    finally:
        moto.terminate()
        moto.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/lakeledger")
    ap.add_argument("--duration", type=int, default=10)
    args = ap.parse_args()
    rows = lookups(args.bin, args.duration)
    replicas(args.bin, args.duration, rows[("embedded", 100, 16)][0])
    ingest_latency(args.bin)


if __name__ == "__main__":
    main()
