"""The Python client against a real server: feature groups, SQL over Flight and HTTP,
training sets, online features, training jobs, models and aliases, predictions, the audit
trail, typed errors; and clients no one here wrote (ADBC's Flight SQL driver, pyarrow.flight)
checked against DuckDB and the stored Parquet."""

import csv
import hashlib
import importlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pyarrow.parquet as pq
import pytest

import lakeledger
from lakeledger import Client

ROOT = Path(__file__).resolve().parents[3]
WINE = ROOT / "trainer" / "tests" / "data" / "wine.csv"


@pytest.fixture(scope="module")
def ll(server):
    return Client(server.url, server.key, flight_url=server.flight_url)


@pytest.fixture(scope="module")
def rides(ll):
    """`rides`: two versions, written from pandas and from Arrow."""
    import pandas as pd

    ll.create_feature_group(
        "rides",
        entity_keys=[{"name": "driver_id", "type": "int64"}],
        event_time="ts",
        features=[{"name": "trips", "type": "int64"}, {"name": "rating", "type": "float64"}, {"name": "city", "type": "string"}],
        tags={"team": "mobility"},
    )
    v1 = pd.DataFrame(
        {
            "driver_id": [1, 2, 3],
            "ts": pd.to_datetime(["2026-01-01T00:00:00Z"] * 3),
            "trips": [10, 20, 30],
            "rating": [4.5, 4.8, 3.9],
            "city": ["Oslo", "Bergen", "Oslo"],
        }
    )
    first = ll.ingest("rides", v1)
    v2 = pa.table(
        {
            "driver_id": pa.array([4], pa.int64()),
            "ts": pa.array([pd.Timestamp("2026-01-02T00:00:00Z")], pa.timestamp("us", tz="UTC")),
            "trips": pa.array([40], pa.int64()),
            "rating": pa.array([4.1]),
            "city": pa.array(["Trondheim"]),
        }
    )
    second = ll.ingest("rides", v2, idempotency_key="rides-v2")
    return first, second


def test_feature_groups_round_trip_through_pandas_and_arrow(ll, rides):
    first, second = rides
    assert (first["version"], second["version"]) == (1, 2)
    # A retried ingest with the same key commits nothing new.
    again = ll.ingest("rides", [{"driver_id": 4, "ts": "2026-01-02T00:00:00Z", "trips": 40, "rating": 4.1, "city": "Trondheim"}], idempotency_key="rides-v2")
    assert again["version"] == 2
    assert ll.feature_group("rides")["tags"] == {"team": "mobility"}
    assert [g["name"] for g in ll.feature_groups()] == ["rides"]

    assert sorted(ll.read("rides").column("driver_id").to_pylist()) == [1, 2, 3, 4]
    assert sorted(ll.read("rides", version=1).column("driver_id").to_pylist()) == [1, 2, 3]
    first_commit = ll.history("rides")[1]["committed_at"]
    assert sorted(ll.read("rides", as_of=first_commit).column("driver_id").to_pylist()) == [1, 2, 3]
    df = ll.read_pandas("rides", keys={"driver_id": [2, 4]})
    assert sorted(df["city"].tolist()) == ["Bergen", "Trondheim"]
    versions = [h["version"] for h in ll.history("rides")]
    assert versions[-2:] == [1, 2]


def test_errors_are_typed_and_carry_the_servers_code_and_error_id(ll, rides, server):
    with pytest.raises(lakeledger.NotFound) as e:
        ll.feature_group("nope")
    assert e.value.code == "feature_group_not_found" and e.value.status == 404 and e.value.error_id
    with pytest.raises(lakeledger.Unprocessable) as e:
        ll.ingest("rides", [{"driver_id": "not a number", "ts": "2026-01-01T00:00:00Z"}])
    assert e.value.code in ("invalid_rows", "unprocessable")
    with pytest.raises(lakeledger.Unauthenticated):
        Client(server.url, "llk_wrong").feature_groups()
    with pytest.raises(lakeledger.Conflict):
        ll.create_feature_group("rides", entity_keys=[{"name": "driver_id", "type": "int64"}], event_time="ts")


def test_sql_over_flight_and_http_agree_and_refuse_alike(ll, rides, server):
    q = "SELECT driver_id, trips FROM rides VERSION AS OF 1 ORDER BY driver_id"
    over_flight = ll.sql(q, via="flight")
    over_http = ll.sql(q, via="http")
    assert over_flight.equals(over_http)
    assert over_flight.column("trips").to_pylist() == [10, 20, 30]
    assert ll.sql("SELECT count(*) AS n FROM rides").column("n").to_pylist() == [4]  # Flight, since it is reachable

    for via in ("flight", "http"):
        with pytest.raises(lakeledger.PermissionDenied) as e:
            ll.sql("DELETE FROM rides", via=via)
        assert e.value.code == "sql_not_allowed", via
        with pytest.raises(lakeledger.NotFound) as e:
            ll.sql("SELECT * FROM rides VERSION AS OF 42", via=via)
        assert e.value.code == "version_not_found", via
        with pytest.raises(lakeledger.Unauthenticated):
            Client(server.url, "llk_wrong", flight_url=server.flight_url).sql("SELECT 1", via=via)

    # Without a reachable Flight port, HTTP answers.
    fallback = Client(server.url, server.key, flight_url="grpc://127.0.0.1:1")
    assert fallback.sql(q).equals(over_http)


@pytest.fixture(scope="module")
def wine(ll):
    """`wine` (online) and `wine_labels`, and a training set joining them."""
    rows = list(csv.DictReader(WINE.open()))
    features = [c for c in rows[0] if c not in ("id", "cultivar")]
    ll.create_feature_group(
        "wine",
        entity_keys=[{"name": "id", "type": "int64"}],
        event_time="ts",
        features=[{"name": f, "type": "float64"} for f in features],
        online=True,
    )
    ll.create_feature_group("wine_labels", entity_keys=[{"name": "id", "type": "int64"}], event_time="ts", features=[{"name": "cultivar", "type": "int64"}])
    ts = pa.array([1767225600_000_000] * len(rows), pa.timestamp("us", tz="UTC"))
    wine = {"id": pa.array([int(r["id"]) for r in rows], pa.int64()), "ts": ts}
    wine.update({f: pa.array([float(r[f]) for r in rows]) for f in features})
    ll.ingest("wine", pa.table(wine))
    later = pa.array([1767312000_000_000] * len(rows), pa.timestamp("us", tz="UTC"))
    ll.ingest("wine_labels", pa.table({"id": wine["id"], "ts": later, "cultivar": pa.array([int(r["cultivar"]) for r in rows], pa.int64())}))
    ts = ll.create_training_set("wine-v1", features=[f"wine:{f}" for f in features], spine_sql="SELECT id, ts, cultivar FROM wine_labels", spine_time="ts")
    return rows, features, ts


def test_training_sets_jobs_models_aliases_and_predictions(ll, wine):
    rows, features, ts = wine
    assert ts.rows == len(rows) and len(ts.sha256) == 64
    table = ts.to_arrow()
    assert table.num_rows == len(rows)
    assert ts.to_arrow(via="flight").equals(table)
    assert ll.training_set(ts.id).manifest == ts.manifest
    assert ts.id in [t.id for t in ll.training_sets()]

    # Online features, Feast-shaped.
    online = ll.online_features(["wine:alcohol", "wine:proline"], {"id": [0, 1, 9999]})
    d = online.to_dict(include_status=True)
    assert d["alcohol"][:2] == [float(rows[0]["alcohol"]), float(rows[1]["alcohol"])]
    assert d["alcohol__status"][2] == "NOT_FOUND"
    assert list(online.to_pandas().columns)[:3] == ["id", "alcohol", "proline"]

    job = ll.start_training_job("wine", training_set_id=ts.id, label="cultivar", config={"task": "classification", "hidden_layers": [16], "max_epochs": 40, "seed": 7})
    seen = []
    done = ll.wait_for_job(job["id"], on_progress=seen.append)
    assert done["state"] == "succeeded", done
    assert any(e.get("progress") for e in seen), "progress was reported while it ran"
    assert [v["version"] for v in ll.model_versions("wine")] == [1]
    assert ll.model_lineage("wine", 1)["training_set"]["sha256"] == ts.sha256

    ll.set_alias("wine", "champion", 1, reason="first")
    assert ll.alias("wine", "champion")["version"] == 1
    with pytest.raises(lakeledger.NotFound):
        ll.alias("wine", "champion", at="2000-01-01T00:00:00Z")
    assert [m["reason"] for m in ll.alias_history("wine", "champion")] == ["first"]

    columns = [f"wine__{f}" for f in features]
    data = pa.table({c: [float(rows[i][f]) for i in range(5)] for c, f in zip(columns, features)})
    by_rows = ll.predict("wine", data, alias="champion")
    by_entities = ll.predict("wine", entities=[{"id": i} for i in range(5)], version=1)
    assert by_rows["predictions"] == by_entities["predictions"]
    assert len(by_rows["predictions"]) == 5


def test_a_key_over_its_own_limit_is_refused_while_its_tenant_goes_on(ll):
    batch = ll.create_key("py-batch", "reader")
    assert ll.key_limits(batch["id"]) == {"requests_per_second": None, "burst": None, "max_concurrent_requests": None}
    ll.set_key_limits(batch["id"], requests_per_second=0.0001, burst=1)
    limited = Client(ll.url, batch["secret"])
    limited.whoami()
    with pytest.raises(lakeledger.TooManyRequests) as refused:
        limited.whoami()
    assert refused.value.code == "quota_exceeded" and batch["id"] in refused.value.message
    assert refused.value.retry_after and refused.value.retry_after >= 1
    ll.whoami()  # the tenant's other keys are not held up
    ll.set_key_limits(batch["id"])  # lifted
    with pytest.raises(lakeledger.Unprocessable):
        ll.set_key_limits(batch["id"], burst=0)


def test_the_audit_trail_exports_and_verifies_and_a_tampered_package_fails(ll, rides, tmp_path):
    auditor = Client(ll.url, ll.create_key("py-auditor", "auditor")["secret"])
    page = auditor.audit_records(action="data.write", limit=10)
    assert page["records"], "writes are recorded"
    path = tmp_path / "pkg.json"
    package = auditor.export_audit(str(path))
    n, size = auditor.verify_audit(str(path))
    assert n > 0 and size >= n
    files = dict(package["files"])
    leaves = files["leaves.jsonl"].splitlines()
    tampered = json.loads(leaves[-1])
    tampered["leaf"] = tampered["leaf"][:-4] + ("AAAA" if not tampered["leaf"].endswith("AAAA") else "BBBB")
    leaves[-1] = json.dumps(tampered)
    files["leaves.jsonl"] = "\n".join(leaves) + "\n"
    with pytest.raises(lakeledger.VerifyError):
        auditor.verify_audit({"files": files})


# ---- clients no one here wrote ---------------------------------------------------------


def need(module: str):
    """The module, or a visible skip (a failure where CI requires every suite)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("LAKELEDGER_REQUIRE_PYTHON") == "1":
            pytest.fail(f"{module} is required (pip install ./clients/python[test])")
        pytest.skip(f"{module} is not installed (pip install ./clients/python[test])")


def test_adbc_flight_sql_driver_lists_tables_and_time_travels_like_duckdb(ll, rides, server):
    adbc = need("adbc_driver_flightsql.dbapi")
    duckdb = need("duckdb")
    deltalake = need("deltalake")
    import adbc_driver_flightsql

    conn = adbc.connect(server.flight_url, db_kwargs={adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {server.key}"}, autocommit=True)
    try:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = [t["table_name"] for c in objects for s in c["catalog_db_schemas"] for t in s["db_schema_tables"]]
        assert "rides" in tables
        q = "SELECT city, sum(trips) AS trips FROM rides VERSION AS OF 1 GROUP BY city ORDER BY city"
        with conn.cursor() as cur:
            cur.execute(q)
            got = cur.fetch_df()
    finally:
        conn.close()

    # DuckDB over the same version's Parquet files, found through the Delta log.
    table = deltalake.DeltaTable(str(server.data_dir / "tables" / "tenants" / "default" / "feature-groups" / "rides"), version=1)
    files = table.file_uris()
    want = duckdb.sql(f"SELECT city, sum(trips) AS trips FROM read_parquet({files!r}) GROUP BY city ORDER BY city").df()
    assert got["city"].tolist() == want["city"].tolist()
    assert got["trips"].tolist() == want["trips"].tolist()


def test_pyarrow_flight_reads_a_training_set_by_ticket_equal_to_its_hashed_parquet(ll, wine, server):
    ts = wine[2]
    client = fl.FlightClient(server.flight_url)
    token = client.authenticate_basic_token(b"anyone", server.key.encode())
    reader = client.do_get(fl.Ticket(json.dumps({"training_set": ts.id}).encode()), fl.FlightCallOptions(headers=[token]))
    over_flight = reader.read_all()
    raw = ll._request("GET", f"/v1/training-sets/{ts.id}/data", query={"format": "parquet"})
    assert hashlib.sha256(raw).hexdigest() == ts.sha256
    assert over_flight.equals(pq.read_table(pa.BufferReader(raw)))


def test_flight_over_tls_with_the_servers_certificate(tmp_path):
    import subprocess

    from servers import start_server, stop_server

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
    )
    if made.returncode != 0:
        if os.environ.get("LAKELEDGER_REQUIRE_PYTHON") == "1":
            pytest.fail(f"openssl could not make a test certificate: {made.stderr.decode()}")
        pytest.skip("openssl is not available to make a test certificate")
    (tmp_path / "data").mkdir()
    proc, running = start_server(tmp_path / "data", "--flight-tls-cert", str(cert), "--flight-tls-key", str(key))
    try:
        assert running.flight_url.startswith("grpc+tls://")
        client = fl.FlightClient(running.flight_url, tls_root_certs=cert.read_bytes())
        token = client.authenticate_basic_token(b"anyone", running.key.encode())
        options = fl.FlightCallOptions(headers=[token])
        ll = Client(running.url, running.key)
        ll.create_feature_group("t", entity_keys=[{"name": "id", "type": "int64"}], event_time="ts", features=[{"name": "x", "type": "int64"}])
        ll.ingest("t", [{"id": 1, "ts": "2026-01-01T00:00:00Z", "x": 7}])
        got = client.do_get(fl.Ticket(b'{"feature_group": "t", "version": 1}'), options).read_all()
        assert got.column("x").to_pylist() == [7]
        # A client that does not trust the certificate is refused.
        untrusting = fl.FlightClient(running.flight_url)
        with pytest.raises(pa.ArrowException):
            untrusting.do_get(fl.Ticket(b'{"feature_group": "t"}'), options).read_all()
    finally:
        stop_server(proc)
