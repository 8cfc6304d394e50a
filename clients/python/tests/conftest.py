"""The session's server for the client tests (see servers.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import start_server, stop_server  # noqa: E402


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    proc, running = start_server(tmp_path_factory.mktemp("lakeledger-data"))
    try:
        yield running
    finally:
        stop_server(proc)
