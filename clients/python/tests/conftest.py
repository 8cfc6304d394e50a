"""Starts the real server (the `lakeledger` binary, HTTP and Flight on free ports, a fresh
data dir) once for the session; the first admin key comes from its start-up banner."""

import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "clients" / "python"))


@dataclass
class Running:
    url: str
    flight_url: str
    key: str
    data_dir: Path


def _binary() -> str:
    given = os.environ.get("LAKELEDGER_BIN")
    if given:
        return given
    built = ROOT / "target" / "debug" / "lakeledger"
    if not built.exists():
        pytest.fail("build the server first (cargo build) or set LAKELEDGER_BIN")
    return str(built)


def start_server(data: Path, *extra: str):
    """Starts the binary on free ports over `data`; returns the process and where it listens."""
    proc = subprocess.Popen(
        [_binary(), "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0", "--flight-listen", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    key = flight = url = None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        s = line.strip()
        if s.startswith("llk_"):
            key = s
        elif m := re.match(r"flight\s*:\s*(grpc(?:\+tls)?://\S+)", s):
            flight = m.group(1)
        elif m := re.match(r"listening:\s*(http://\S+)", s):
            url = m.group(1)
            break
    if not (key and flight and url):
        proc.kill()
        pytest.fail("the server did not start:\n" + "".join(seen))
    # The server logs to stdout: keep reading it, or a full pipe would stall the server.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, Running(url=url, flight_url=flight, key=key, data_dir=data)


def stop_server(proc):
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    proc, running = start_server(tmp_path_factory.mktemp("lakeledger-data"))
    try:
        yield running
    finally:
        stop_server(proc)
