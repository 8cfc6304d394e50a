"""The lakeledger client: feature groups, time-travel SQL, training sets, online features,
predictions, models, training jobs and the audit trail, over HTTP and Arrow Flight SQL.

Every call goes through the server's public API with the caller's key, so each one is
recorded in the audit ledger and scoped to the key's tenant, as any other client's is.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet

from . import errors
from .verify import VerifyError, verify as _verify_files

ARROW_STREAM = "application/vnd.apache.arrow.stream"
Tabular = Union[pa.Table, pa.RecordBatch, "pandas.DataFrame", Sequence[Mapping[str, Any]]]  # noqa: F821


def _as_table(data: Any) -> pa.Table:
    """Arrow tables and batches as they are; pandas frames and lists of dicts converted."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if hasattr(data, "to_dict") and hasattr(data, "columns"):
        return pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, (list, tuple)):
        return pa.Table.from_pylist(list(data))
    raise TypeError(f"expected a pyarrow Table or RecordBatch, a pandas DataFrame or a list of dicts, got {type(data).__name__}")


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _statement_command(sql: str) -> bytes:
    """Flight SQL's ``CommandStatementQuery`` packed in a protobuf ``Any``."""
    inner = _field(1, sql.encode("utf-8"))
    return _field(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") + _field(2, inner)


class TrainingSet:
    """A training set: its manifest (spine, features, pinned versions, rows, SHA-256) and
    its rows, checked against the manifest's SHA-256 before they are returned."""

    def __init__(self, client: "Client", manifest: Dict[str, Any]):
        self._client = client
        self.manifest = manifest

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @property
    def rows(self) -> int:
        return self.manifest["rows"]

    def __repr__(self) -> str:
        return f"TrainingSet(id={self.id!r}, rows={self.rows}, sha256={self.sha256[:12]}...)"

    def to_arrow(self, via: str = "parquet") -> pa.Table:
        """The rows. ``via="parquet"`` downloads the stored file and checks its SHA-256 here;
        ``via="flight"`` streams them over Arrow Flight (the server checks the hash)."""
        if via == "flight":
            return self._client._flight_get(json.dumps({"training_set": self.id}).encode())
        if via != "parquet":
            raise ValueError("via is 'parquet' or 'flight'")
        data = self._client._request("GET", f"/v1/training-sets/{_q(self.id)}/data", query={"format": "parquet"})
        got = hashlib.sha256(data).hexdigest()
        if got != self.sha256:
            raise errors.Conflict(409, "integrity_check_failed", f"training set {self.id}: the data's SHA-256 is {got}, the manifest says {self.sha256}")
        return pa.parquet.read_table(pa.BufferReader(data))

    def to_pandas(self, via: str = "parquet"):
        return self.to_arrow(via).to_pandas()


class OnlineFeatures:
    """Feast's online response: feature names, and per feature the values, statuses and
    event timestamps, one per entity row."""

    def __init__(self, response: Dict[str, Any]):
        self.response = response

    @property
    def feature_names(self) -> List[str]:
        return list(self.response["metadata"]["feature_names"])

    def to_dict(self, include_status: bool = False) -> Dict[str, List[Any]]:
        """``{feature: [values...]}`` like Feast's ``to_dict()``; with ``include_status``,
        also ``{feature}__status`` and ``{feature}__event_timestamp`` columns."""
        out: Dict[str, List[Any]] = {}
        for name, result in zip(self.feature_names, self.response["results"]):
            out[name] = list(result["values"])
            if include_status:
                out[f"{name}__status"] = list(result["statuses"])
                out[f"{name}__event_timestamp"] = list(result["event_timestamps"])
        return out

    def to_pandas(self, include_status: bool = False):
        import pandas as pd

        return pd.DataFrame(self.to_dict(include_status))


def _q(part: str) -> str:
    return urllib.parse.quote(str(part), safe="")


class Client:
    """A connection to one lakeledger server.

    ``url`` is the HTTP address; ``key`` an API key (``llk_...``) or an OIDC bearer token.
    ``flight_url`` (``grpc://host:8815`` or ``grpc+tls://...``) enables Arrow Flight SQL for
    :meth:`sql` and bulk pulls; without it, or when it cannot be reached, HTTP is used.
    """

    def __init__(self, url: str = "http://127.0.0.1:8080", key: Optional[str] = None, *, flight_url: Optional[str] = None, timeout: float = 300.0):
        self.url = url.rstrip("/")
        self.key = key
        self.flight_url = flight_url
        self.timeout = timeout
        self._flight = None
        self._flight_failed = False

    # ---- transport --------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Optional[bytes] = None,
        content_type: Optional[str] = None,
        query: Optional[Mapping[str, Any]] = None,
        headers: Optional[Mapping[str, str]] = None,
        accept: str = "application/json",
        stream: bool = False,
    ):
        url = self.url + path
        if query:
            pairs = [(k, v) for k, v in query.items() if v is not None]
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs, doseq=True)
        h = {"Accept": accept, "User-Agent": "lakeledger-python/0.1"}
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        if json_body is not None:
            data = json.dumps(json_body).encode("utf-8")
            content_type = "application/json"
        if content_type:
            h["Content-Type"] = content_type
        h.update(headers or {})
        req = urllib.request.Request(url, data=data, method=method, headers=h)
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise errors.from_http(e.code, e.read(), e.headers.get("Retry-After")) from None
        except urllib.error.URLError as e:
            raise errors.Unavailable(503, "unreachable", f"cannot reach {self.url}: {e.reason}") from None
        if stream:
            return resp
        with resp:
            return resp.read()

    def _json(self, method: str, path: str, **kw) -> Any:
        body = self._request(method, path, **kw)
        return json.loads(body) if body else None

    def _arrow(self, method: str, path: str, **kw) -> pa.Table:
        resp = self._request(method, path, accept=ARROW_STREAM, stream=True, **kw)
        with resp:
            return pa.ipc.open_stream(resp).read_all()

    def _flight_client(self):
        """The Flight client, or None when Flight is not configured or was found unreachable
        (connecting is lazy: the first call finds out)."""
        if self.flight_url is None or self._flight_failed:
            return None
        if self._flight is None:
            import pyarrow.flight as fl

            self._flight = fl.FlightClient(self.flight_url)
        return self._flight

    def _flight_options(self):
        import pyarrow.flight as fl

        headers = [(b"authorization", f"Bearer {self.key}".encode())] if self.key else []
        return fl.FlightCallOptions(headers=headers, timeout=self.timeout)

    def _flight_get(self, ticket: bytes) -> pa.Table:
        import pyarrow.flight as fl

        c = self._flight_client()
        if c is None:
            raise errors.Unavailable(503, "flight_unavailable", f"Arrow Flight is not reachable at {self.flight_url}")
        try:
            return c.do_get(fl.Ticket(ticket), self._flight_options()).read_all()
        except pa.ArrowException as e:
            raise errors.from_flight(e) from None

    # ---- identity ---------------------------------------------------------------------

    def whoami(self) -> Dict[str, Any]:
        """The key's tenant, role and name."""
        return self._json("GET", "/v1/whoami")

    # ---- tenants and keys (admins) -------------------------------------------------------

    def create_tenant(self, name: str) -> Dict[str, Any]:
        return self._json("POST", "/v1/tenants", json_body={"name": name})

    def tenants(self) -> List[Dict[str, Any]]:
        return self._json("GET", "/v1/tenants")

    def create_key(self, name: str, role: str, *, tenant: Optional[str] = None) -> Dict[str, Any]:
        """Mints a key (``admin``, ``writer``, ``reader`` or ``auditor``); its ``secret`` is
        shown only in this answer."""
        body: Dict[str, Any] = {"name": name, "role": role}
        if tenant is not None:
            body["tenant"] = tenant
        return self._json("POST", "/v1/keys", json_body=body)

    def keys(self) -> List[Dict[str, Any]]:
        return self._json("GET", "/v1/keys")

    def revoke_key(self, id: str) -> Dict[str, Any]:
        return self._json("DELETE", f"/v1/keys/{_q(id)}")

    def key_limits(self, id: str, *, tenant: Optional[str] = None) -> Dict[str, Any]:
        """A key's own limits (``None``: nothing beyond its tenant's)."""
        return self._json("GET", f"/v1/keys/{_q(id)}/limits", query={"tenant": tenant})

    def set_key_limits(
        self,
        id: str,
        *,
        requests_per_second: Optional[float] = None,
        burst: Optional[int] = None,
        max_concurrent_requests: Optional[int] = None,
        tenant: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Holds one key to its own request rate (a token bucket across replicas, with
        ``burst``) and requests in flight (per replica), within its tenant's limits. Every
        call replaces all of the key's limits; none given lifts them. A call over a limit
        raises :class:`TooManyRequests`."""
        body = {"requests_per_second": requests_per_second, "burst": burst, "max_concurrent_requests": max_concurrent_requests}
        return self._json("PUT", f"/v1/keys/{_q(id)}/limits", query={"tenant": tenant}, json_body={k: v for k, v in body.items() if v is not None})

    # ---- feature groups ---------------------------------------------------------------

    def create_feature_group(
        self,
        name: str,
        *,
        entity_keys: Sequence[Mapping[str, str]],
        event_time: str,
        features: Sequence[Mapping[str, str]] = (),
        description: Optional[str] = None,
        owner: Optional[str] = None,
        tags: Optional[Mapping[str, str]] = None,
        online: Optional[bool] = None,
        online_max_age_seconds: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Creates a feature group; ``entity_keys`` and ``features`` are
        ``[{"name": ..., "type": "int64" | "float64" | "string" | "list<float32>" ...}]``."""
        body: Dict[str, Any] = {"name": name, "entity_keys": list(entity_keys), "event_time": event_time, "features": list(features)}
        for k, v in (("description", description), ("owner", owner), ("tags", tags), ("online", online), ("online_max_age_seconds", online_max_age_seconds)):
            if v is not None:
                body[k] = v
        return self._json("POST", "/v1/feature-groups", json_body=body)

    def feature_groups(self, include_archived: bool = False) -> List[Dict[str, Any]]:
        return self._json("GET", "/v1/feature-groups", query={"include_archived": "true" if include_archived else None})

    def feature_group(self, name: str) -> Dict[str, Any]:
        """Schema, current version, row count, tags."""
        return self._json("GET", f"/v1/feature-groups/{_q(name)}")

    def update_feature_group(self, name: str, **fields: Any) -> Dict[str, Any]:
        """Changes description, owner, tags, ``online`` or ``online_max_age_seconds``."""
        return self._json("PATCH", f"/v1/feature-groups/{_q(name)}", json_body=fields)

    def evolve_schema(self, name: str, features: Sequence[Mapping[str, str]]) -> Dict[str, Any]:
        """Adds features (existing ones listed unchanged); a new table version records it."""
        return self._json("PUT", f"/v1/feature-groups/{_q(name)}/schema", json_body={"features": list(features)})

    def ingest(self, name: str, data: Tabular, *, mode: str = "append", idempotency_key: Optional[str] = None) -> Dict[str, Any]:
        """Writes rows (a pyarrow Table or RecordBatch, a pandas DataFrame or a list of
        dicts), sent as Arrow IPC. ``mode`` is ``append``, ``upsert`` or ``overwrite``. With
        an ``idempotency_key`` a retried call commits at most once."""
        table = _as_table(data)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._json("POST", f"/v1/feature-groups/{_q(name)}/data", data=_ipc_bytes(table), content_type=ARROW_STREAM, query={"mode": mode}, headers=headers)

    def read(
        self,
        name: str,
        *,
        version: Optional[int] = None,
        as_of: Optional[str] = None,
        limit: Optional[int] = None,
        keys: Optional[Mapping[str, Sequence[Any]]] = None,
    ) -> pa.Table:
        """One version of a group: the latest, ``version=n`` or ``as_of="<RFC 3339>"``;
        ``keys={"user_id": [1, 2]}`` keeps only those entities."""
        query: Dict[str, Any] = {"version": version, "as_of": as_of, "limit": limit}
        for column, values in (keys or {}).items():
            query[f"key.{column}"] = ",".join(str(v) for v in values)
        return self._arrow("GET", f"/v1/feature-groups/{_q(name)}/data", query=query)

    def read_pandas(self, name: str, **kw):
        return self.read(name, **kw).to_pandas()

    def history(self, name: str) -> List[Dict[str, Any]]:
        """Every version: operation, rows, time, actor and the audit record of the commit."""
        return self._json("GET", f"/v1/feature-groups/{_q(name)}/versions")

    def feature_group_lineage(self, name: str, version: Optional[int] = None) -> Dict[str, Any]:
        """The training sets and models that used the group (at a version)."""
        return self._json("GET", f"/v1/feature-groups/{_q(name)}/lineage", query={"version": version})

    # ---- SQL --------------------------------------------------------------------------

    def sql(self, query: str, *, via: Optional[str] = None) -> pa.Table:
        """Runs a read-only, time-travel SELECT (``FROM g VERSION AS OF 3``, ``FROM g
        TIMESTAMP AS OF '2026-01-01T00:00:00Z'``). Over Flight SQL when ``flight_url`` is
        set and reachable (or ``via="flight"``), else over HTTP (``via="http"``)."""
        if via not in (None, "flight", "http"):
            raise ValueError("via is 'flight', 'http' or None")
        if via == "flight" or (via is None and self._flight_client() is not None):
            import pyarrow.flight as fl

            c = self._flight_client()
            if c is None:
                raise errors.Unavailable(503, "flight_unavailable", f"Arrow Flight is not reachable at {self.flight_url}")
            try:
                info = c.get_flight_info(fl.FlightDescriptor.for_command(_statement_command(query)), self._flight_options())
                tables = [c.do_get(ep.ticket, self._flight_options()).read_all() for ep in info.endpoints]
                return pa.concat_tables(tables) if len(tables) != 1 else tables[0]
            except fl.FlightUnavailableError as e:
                if via == "flight" or "error_id" in str(e):
                    raise errors.from_flight(e) from None
                # Nothing listens there: remember, and use HTTP from now on.
                self._flight_failed = True
            except pa.ArrowException as e:
                raise errors.from_flight(e) from None
        return self._arrow("POST", "/v1/sql", json_body={"sql": query, "format": "arrow"})

    def sql_pandas(self, query: str, **kw):
        return self.sql(query, **kw).to_pandas()

    # ---- spines and training sets ------------------------------------------------------

    def upload_spine(self, data: Tabular, *, time: str) -> Dict[str, Any]:
        """Uploads label rows (entity keys, a time column, labels) for training sets."""
        return self._json("POST", "/v1/spines", data=_ipc_bytes(_as_table(data)), content_type=ARROW_STREAM, query={"time": time})

    def create_training_set(
        self,
        name: str,
        *,
        features: Sequence[str],
        spine_time: str,
        spine_sql: Optional[str] = None,
        spine: Optional[Union[str, Tabular]] = None,
        versions: Optional[Mapping[str, int]] = None,
        ttl_seconds: Optional[Mapping[str, int]] = None,
        as_known_at_spine_time: Optional[bool] = None,
    ) -> TrainingSet:
        """Builds a point-in-time training set: the spine (``spine_sql``, an uploaded
        spine's id, or rows given here) joined, as of each spine row's time, with
        ``features`` (``["group:feature", ...]``) from pinned versions."""
        body: Dict[str, Any] = {"name": name, "features": list(features), "spine_time": spine_time}
        if spine_sql is not None:
            body["spine_sql"] = spine_sql
        if spine is not None:
            body["spine_upload"] = spine if isinstance(spine, str) else self.upload_spine(spine, time=spine_time)["id"]
        for k, v in (("versions", versions), ("ttl_seconds", ttl_seconds), ("as_known_at_spine_time", as_known_at_spine_time)):
            if v is not None:
                body[k] = v
        return TrainingSet(self, self._json("POST", "/v1/training-sets", json_body=body))

    def training_set(self, id: str) -> TrainingSet:
        return TrainingSet(self, self._json("GET", f"/v1/training-sets/{_q(id)}"))

    def training_sets(self) -> List[TrainingSet]:
        return [TrainingSet(self, m) for m in self._json("GET", "/v1/training-sets")]

    def delete_training_set(self, id: str) -> Dict[str, Any]:
        return self._json("DELETE", f"/v1/training-sets/{_q(id)}")

    # ---- online features and predictions -------------------------------------------------

    def online_features(self, features: Sequence[str], entities: Mapping[str, Sequence[Any]], *, full_feature_names: bool = False) -> OnlineFeatures:
        """Feast-shaped lookup: ``features=["user_clicks:clicks"]``,
        ``entities={"user_id": [1, 2]}``."""
        body = {"features": list(features), "entities": {k: list(v) for k, v in entities.items()}, "full_feature_names": full_feature_names}
        return OnlineFeatures(self._json("POST", "/v1/online/features", json_body=body))

    def predict(
        self,
        model: str,
        data: Optional[Tabular] = None,
        *,
        version: Optional[int] = None,
        alias: Optional[str] = None,
        entities: Optional[Sequence[Mapping[str, Any]]] = None,
    ) -> Dict[str, Any]:
        """Scores rows (sent as MLflow ``dataframe_split``) or entity keys looked up online,
        with a version (``version=2``), an alias (``alias="champion"``) or ``"name@alias"``."""
        if version is not None and alias is not None:
            raise ValueError("give either version or alias, not both")
        if version is not None:
            path = f"/v1/models/{_q(model)}/versions/{version}/invocations"
        else:
            target = f"{model}@{alias}" if alias else model
            path = f"/v1/models/{_q(target)}/invocations"
        if (data is None) == (entities is None):
            raise ValueError("give either data or entities")
        if entities is not None:
            body: Dict[str, Any] = {"entities": [dict(e) for e in entities]}
        else:
            table = _as_table(data)
            body = {"dataframe_split": {"columns": table.column_names, "data": [list(r.values()) for r in table.to_pylist()]}}
        return self._json("POST", path, json_body=body)

    # ---- models ---------------------------------------------------------------------------

    def models(self) -> List[Dict[str, Any]]:
        return self._json("GET", "/v1/models")

    def create_model(self, name: str, *, description: str = "", owner: str = "", tags: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
        return self._json("POST", "/v1/models", json_body={"name": name, "description": description, "owner": owner, "tags": dict(tags or {})})

    def import_model(
        self,
        name: str,
        artifact: Union[bytes, str],
        *,
        columns: Optional[Sequence[str]] = None,
        training_set_id: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Registers a model trained elsewhere as a new version of ``name``: ONNX bytes (or a
        path to a ``.onnx`` file) or this server's artifact JSON. ``columns`` names the
        features of the graph's 2-D input, in order; ``training_set_id`` is recorded as
        declared lineage. The server checks the upload against the SHA-256 sent with it."""
        data = artifact if isinstance(artifact, bytes) else open(artifact, "rb").read()
        query = {"columns": ",".join(columns) if columns else None, "training_set_id": training_set_id}
        headers = {"x-lakeledger-artifact-sha256": hashlib.sha256(data).hexdigest()}
        return self._json("POST", f"/v1/models/{_q(name)}/versions", data=data, content_type="application/octet-stream", query=query, headers=headers)

    def model(self, name: str) -> Dict[str, Any]:
        return self._json("GET", f"/v1/models/{_q(name)}")

    def model_versions(self, name: str) -> List[Dict[str, Any]]:
        return self._json("GET", f"/v1/models/{_q(name)}/versions")

    def model_version(self, name: str, version: int) -> Dict[str, Any]:
        """Metrics, hyperparameters, lineage, SHA-256 and signature of one version."""
        return self._json("GET", f"/v1/models/{_q(name)}/versions/{version}")

    def model_lineage(self, name: str, version: int) -> Dict[str, Any]:
        """Training set, feature-group versions and aliases of one version."""
        return self._json("GET", f"/v1/models/{_q(name)}/versions/{version}/lineage")

    def set_alias(self, name: str, alias: str, version: int, *, reason: Optional[str] = None) -> Dict[str, Any]:
        body: Dict[str, Any] = {"version": version}
        if reason is not None:
            body["reason"] = reason
        return self._json("PUT", f"/v1/models/{_q(name)}/aliases/{_q(alias)}", json_body=body)

    def alias(self, name: str, alias: str, *, at: Optional[str] = None) -> Dict[str, Any]:
        """Where the alias points now, or ``at="<RFC 3339>"``: where it pointed then."""
        return self._json("GET", f"/v1/models/{_q(name)}/aliases/{_q(alias)}", query={"at": at})

    def alias_history(self, name: str, alias: str) -> List[Dict[str, Any]]:
        """Every move: who, when, from, to, why."""
        return self._json("GET", f"/v1/models/{_q(name)}/aliases/{_q(alias)}/history")

    # ---- training jobs ----------------------------------------------------------------------

    def start_training_job(
        self,
        model: str,
        *,
        label: str,
        config: Mapping[str, Any],
        training_set_id: Optional[str] = None,
        training_set: Optional[Mapping[str, Any]] = None,
        inputs: Optional[Sequence[str]] = None,
        backend: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Queues a training job on a training set (by id, or built from ``training_set``)."""
        body: Dict[str, Any] = {"model": model, "label": label, "config": dict(config)}
        for k, v in (("training_set_id", training_set_id), ("training_set", training_set), ("inputs", inputs), ("backend", backend)):
            if v is not None:
                body[k] = v
        return self._json("POST", "/v1/training-jobs", json_body=body)

    def job(self, id: str) -> Dict[str, Any]:
        return self._json("GET", f"/v1/training-jobs/{_q(id)}")

    def jobs(self) -> List[Dict[str, Any]]:
        return self._json("GET", "/v1/training-jobs")

    def cancel_job(self, id: str) -> Dict[str, Any]:
        return self._json("POST", f"/v1/training-jobs/{_q(id)}/cancel")

    def follow_job(self, id: str) -> Iterator[Dict[str, Any]]:
        """The job as it changes (state, epoch, loss, validation metrics), from the
        server's event stream, until it ends."""
        resp = self._request("GET", f"/v1/training-jobs/{_q(id)}/events", accept="text/event-stream", stream=True)
        with resp:
            data: List[str] = []
            for raw in resp:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif line == "" and data:
                    yield json.loads("\n".join(data))
                    data = []

    def wait_for_job(self, id: str, *, on_progress: Optional[Callable[[Dict[str, Any]], None]] = None, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Follows the job until it ends and returns its final state; ``on_progress`` sees
        each update."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for event in self.follow_job(id):
            if on_progress:
                on_progress(event)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {id} did not end within {timeout} s")
        final = self.job(id)
        if final.get("state") in ("queued", "running"):
            raise errors.Unavailable(503, "stream_ended", f"the event stream of job {id} ended while it is {final.get('state')}")
        return final

    # ---- audit ------------------------------------------------------------------------------

    def audit_records(self, **filters: Any) -> Dict[str, Any]:
        """A page of records; filters: from_seq, to_seq, since, until, actor, action,
        resource, tenant, limit."""
        return self._json("GET", "/v1/audit/records", query=filters)

    def audit_public_key(self) -> Dict[str, Any]:
        return self._json("GET", "/v1/audit/public-key")

    def export_audit(self, path: Optional[str] = None, **filters: Any) -> Dict[str, Any]:
        """A self-contained package (records, proofs, signed checkpoints) to verify offline;
        written to ``path`` as JSON when given. Filters as for :meth:`audit_records`, plus
        ``since_size`` (a checkpoint size you kept)."""
        package = self._json("POST", "/v1/audit/export", json_body={k: v for k, v in filters.items() if v is not None})
        if path:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(package, f)
        return package

    def verify_audit(self, package: Union[str, Mapping[str, Any]], *, keys: Optional[Sequence[str]] = None, trusted_checkpoint: Optional[str] = None):
        """Verifies a package offline with the independent verifier (every record against
        the signed checkpoints, proofs, hashes): returns ``(records, log_size)`` or raises
        :class:`lakeledger.VerifyError`. ``keys`` default to the server's public key."""
        if isinstance(package, str):
            with open(package, encoding="utf-8") as f:
                package = json.load(f)
        if keys is None:
            keys = [self.audit_public_key()["key"]]
        return _verify_files(package["files"], list(keys), trusted_checkpoint)


__all__ = ["Client", "TrainingSet", "OnlineFeatures", "VerifyError"]
