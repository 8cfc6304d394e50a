#!/usr/bin/env python3
"""The audit ledger under sustained load, as an operator sees it.

`wrk` drives a cheap authenticated read (`GET /v1/whoami`; two audit records per request)
at 64 connections for N minutes against the release server. Every minute the script
prints the server's RSS, the log's size in records and its bytes on disk. Then the
server is stopped (SIGTERM) and started again on the same data, and the time until it
answers /readyz is reported.

    cargo build --release -p lakeledger
    python3 scripts/bench_audit_soak.py [--minutes 30] [--connections 64] [--bin target/release/lakeledger]

Needs `wrk`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from bench_feature_groups import Server  # noqa: E402


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def disk_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def log_size(server):
    _, body = server.request("GET", "/v1/audit/checkpoints/latest")
    return json.loads(body)["size"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--bin", default="target/release/lakeledger")
    args = ap.parse_args()
    data = tempfile.mkdtemp(prefix="lakeledger-soak-")
    server = Server(args.bin, data)
    # The admin key may read the log too; an auditor key is what an operator would use.
    _, body = server.request("POST", "/v1/keys", json.dumps({"name": "soak-auditor", "role": "auditor"}), {"Content-Type": "application/json"})
    admin = server.key
    server.key = json.loads(body)["secret"]
    url = f"http://{server.host}:{server.port}/v1/whoami"
    print(f"GET /v1/whoami, {args.connections} connections, {args.minutes} min; data in {data}")
    print(f"{'min':>4} {'RSS MB':>8} {'records':>12} {'disk MB':>9} {'bytes/rec':>10}")
    script = os.path.join(data, "auth.lua")
    with open(script, "w") as f:
        f.write(f'wrk.headers["Authorization"] = "Bearer {admin}"\n')
    wrk = subprocess.Popen(
        ["wrk", "-t2", f"-c{args.connections}", f"-d{args.minutes * 60}s", "-s", script, url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    start = time.time()
    for minute in range(args.minutes + 1):
        while time.time() < start + minute * 60:
            time.sleep(0.5)
        records = log_size(server)
        disk = disk_bytes(os.path.join(data, "audit"))
        print(f"{minute:>4} {rss_mb(server.proc.pid):>8.0f} {records:>12} {disk / 1e6:>9.0f} {disk / max(records, 1):>10.1f}", flush=True)
    out, _ = wrk.communicate()
    print(out.strip())
    records = log_size(server)
    server.stop()

    t = time.time()
    again = Server(args.bin, data)
    while True:
        try:
            with urllib.request.urlopen(f"http://{again.host}:{again.port}/readyz") as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.01)
    print(f"restart: ready {time.time() - t:.2f} s after start, log of {records} records; RSS {rss_mb(again.proc.pid):.0f} MB")
    again.stop()


if __name__ == "__main__":
    main()
