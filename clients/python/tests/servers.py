"""Runs the real server (the `lakeledger` binary) for tests: HTTP and Flight on free ports
over a data dir; the first admin key comes from its start-up banner."""

import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


class ServerDidNotStart(RuntimeError):
    pass


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
        raise ServerDidNotStart("build the server first (cargo build) or set LAKELEDGER_BIN")
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
        raise ServerDidNotStart("the server did not start:\n" + "".join(seen))
    # The server logs to stdout: keep reading it, or a full pipe would stall the server.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, Running(url=url, flight_url=flight, key=key, data_dir=data)


def stop_server(proc):
    proc.terminate()
    proc.wait(timeout=30)
