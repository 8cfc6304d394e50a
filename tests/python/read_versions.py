"""Reads every version of a Delta table with the Python `deltalake` package (and DuckDB
through Arrow when installed) and prints, per version, the sorted entity keys it holds.

Usage: read_versions.py <table path> <latest version> <key column>
"""
import json
import sys

from deltalake import DeltaTable


def main() -> None:
    path, latest, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    out = {}
    for version in range(latest + 1):
        dt = DeltaTable(path, version=version)
        assert dt.version() == version, (dt.version(), version)
        table = dt.to_pyarrow_table()
        keys = sorted(table.column(key).to_pylist())
        try:
            import duckdb

            ds = dt.to_pyarrow_dataset()
            count = duckdb.sql("SELECT count(*) FROM ds").fetchall()[0][0]
            assert count == len(keys), (count, len(keys))
        except ImportError:
            pass
        out[str(version)] = keys
    print(json.dumps(out))


if __name__ == "__main__":
    main()
