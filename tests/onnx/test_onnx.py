"""Models trained elsewhere, brought as ONNX: a scikit-learn Pipeline (StandardScaler +
OneHotEncoder + LogisticRegression), a RandomForestClassifier, a GradientBoostingRegressor,
XGBoost and LightGBM classifiers (converted with skl2onnx / onnxmltools here), and an MLP
graph as a PyTorch export writes it, registered over HTTP against a real server and scored
through `/invocations` in every MLflow input format. Predictions and probabilities must
equal onnxruntime's on every row (within 1e-5). Refusals: a tampered upload, an operator the
server cannot run, a column count that does not match, a row of the wrong width."""

import csv
import hashlib
import io
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))
sys.path.insert(0, str(ROOT / "clients" / "python" / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MISSING = []
for module in ("numpy", "onnx", "onnxruntime", "sklearn", "skl2onnx", "onnxmltools", "xgboost", "lightgbm", "tritonclient.http", "tritonclient.grpc", "mlflow", "pyarrow"):
    try:
        __import__(module)
    except ImportError:
        MISSING.append(module)
if MISSING:
    why = "the ONNX tests need " + ", ".join(MISSING) + " (pip install onnx onnxruntime scikit-learn skl2onnx onnxmltools xgboost lightgbm 'tritonclient[http,grpc]' mlflow-skinny)"
    if os.environ.get("LAKELEDGER_REQUIRE_ONNX") == "1":
        raise RuntimeError(why)
    pytest.skip(why, allow_module_level=True)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pyarrow as pa  # noqa: E402

import zoo  # noqa: E402
from lakeledger import Client  # noqa: E402
from lakeledger.errors import LakeledgerError  # noqa: E402
from servers import start_server, stop_server  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, s = start_server(tmp_path_factory.mktemp("onnx-data"))
    try:
        yield s
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def ll(server):
    return Client(server.url, server.key)


def post(server, path, body, content_type="application/json"):
    """A raw POST; returns (status, parsed body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method="POST", headers={"Authorization": f"Bearer {server.key}", "Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def reference(z):
    """onnxruntime's predictions and probabilities (None for regressors) for the zoo rows."""
    sess = ort.InferenceSession(z.onnx, providers=["CPUExecutionProvider"])
    outputs = sess.run(None, {sess.get_inputs()[0].name: z.features})
    names = [o.name for o in sess.get_outputs()]
    if not z.classifier:
        return np.asarray(outputs[0]).reshape(len(z.features)), None
    if len(outputs) == 1:  # the MLP: softmax probabilities only
        probabilities = np.asarray(outputs[0])
        return probabilities.argmax(axis=1), probabilities
    label, probabilities = outputs[0], outputs[1]
    if isinstance(probabilities, list):  # ZipMap: a list of {class: probability}
        classes = sorted(probabilities[0])
        probabilities = np.array([[row[c] for c in classes] for row in probabilities])
    assert names[0].endswith("label")
    return np.asarray(label).reshape(len(z.features)), np.asarray(probabilities)


def check_against_reference(z, answer, expected, expected_p):
    got = np.array(answer["predictions"], dtype=float)
    if z.classifier:
        assert got.tolist() == np.asarray(expected, dtype=float).tolist(), f"{z.name}: labels differ from onnxruntime's"
        p = np.array(answer["probabilities"], dtype=float)
        assert p.shape == expected_p.shape
        assert np.allclose(p, expected_p, rtol=0, atol=1e-5), f"{z.name}: probabilities differ by {np.abs(p - expected_p).max()}"
        assert len(answer["classes"]) == expected_p.shape[1]
    else:
        assert np.allclose(got, expected, rtol=1e-5, atol=1e-5), f"{z.name}: predictions differ by {np.abs(got - expected).max()}"


@pytest.mark.parametrize("make", zoo.ALL, ids=lambda f: f.__name__)
def test_converted_models_score_like_onnxruntime(server, ll, make):
    z = make()
    ll.create_model(z.name)
    v = ll.import_model(z.name, z.onnx, columns=z.columns)
    assert v["source"] == "imported" and v["backend"] == "onnx"
    assert v["artifact_sha256"] == hashlib.sha256(z.onnx).hexdigest()
    assert v["config"]["producer"]["name"] in ("skl2onnx", "OnnxMLTools", "pytorch")
    assert [c["name"] for c in v["config"]["columns"]] == z.columns

    expected, expected_p = reference(z)
    # A missing value is null in JSON (NaN is not JSON) and an empty cell in CSV.
    rows = [[None if np.isnan(x) else float(x) for x in r] for r in z.features]
    path = f"/v1/models/{z.name}/versions/{v['version']}/invocations"
    bodies = {
        "dataframe_split": {"dataframe_split": {"columns": z.columns, "data": rows}},
        "dataframe_records": {"dataframe_records": [dict(zip(z.columns, r)) for r in rows]},
        "instances": {"instances": rows},
        "inputs (tensor)": {"inputs": rows},
        "inputs (named tensor)": {"inputs": {"input": rows}},
    }
    for form, body in bodies.items():
        status, answer = post(server, path, body)
        assert status == 200, f"{z.name} {form}: {answer}"
        check_against_reference(z, answer, expected, expected_p)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(z.columns)
    w.writerows([["" if x is None else x for x in r] for r in rows])
    status, answer = post(server, path, out.getvalue().encode(), "text/csv")
    assert status == 200, answer
    check_against_reference(z, answer, expected, expected_p)

    # Through an alias, as traffic is served: same answers, the version that answered named.
    ll.set_alias(z.name, "champion", v["version"])
    table = pa.table({c: pa.array(z.features[:, i].astype(np.float64), mask=np.isnan(z.features[:, i])) for i, c in enumerate(z.columns)})
    answer = ll.predict(z.name, alias="champion", data=table)
    assert answer["version"] == v["version"]
    check_against_reference(z, answer, expected, expected_p)


def test_a_tampered_upload_is_refused(server, ll):
    z = zoo.random_forest()
    ll.create_model("tampered")
    sent = bytearray(z.onnx)
    sent[len(sent) // 2] ^= 0x40
    req = urllib.request.Request(
        server.url + "/v1/models/tampered/versions",
        data=bytes(sent),
        method="POST",
        headers={"Authorization": f"Bearer {server.key}", "Content-Type": "application/octet-stream", "x-lakeledger-artifact-sha256": hashlib.sha256(z.onnx).hexdigest()},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    assert e.value.code == 422
    body = json.loads(e.value.read())
    assert "SHA-256" in body["error"]["message"], body
    # Bytes that are not a model at all.
    with pytest.raises(LakeledgerError) as e:
        ll.import_model("tampered", b"\x08\x07garbage" * 10)
    assert e.value.status == 422
    assert ll.model_versions("tampered") == []


def test_an_operator_the_server_cannot_run_is_refused_at_registration(ll):
    from sklearn.svm import SVC
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    columns, x, y = zoo.load("wine", "cultivar")
    onx = convert_sklearn(SVC(probability=False).fit(x, y.astype(np.int64)), initial_types=[("input", FloatTensorType([None, x.shape[1]]))], target_opset=zoo.OPSETS, options={"zipmap": False})
    ll.create_model("svm")
    with pytest.raises(LakeledgerError) as e:
        ll.import_model("svm", onx.SerializeToString(), columns=columns)
    assert e.value.status == 422
    assert "ai.onnx.ml.SVMClassifier" in e.value.message, e.value.message
    assert ll.model_versions("svm") == []


def test_shape_mismatches_get_clear_errors(server, ll):
    z = zoo.mlp()
    ll.create_model("shapes")
    with pytest.raises(LakeledgerError) as e:
        ll.import_model("shapes", z.onnx, columns=z.columns[:-1])
    assert e.value.status == 422 and "takes 13" in e.value.message, e.value.message
    v = ll.import_model("shapes", z.onnx, columns=z.columns)
    path = f"/v1/models/shapes/versions/{v['version']}/invocations"
    status, body = post(server, path, {"inputs": [[1.0] * 12]})
    assert status == 422 and "13" in body["error"]["message"], body
    status, body = post(server, path, {"inputs": {"input": [[1.0] * 12]}})
    assert status == 422 and "width" in body["error"]["message"], body
    status, body = post(server, path, {"dataframe_records": [{c: "high" for c in z.columns}]})
    assert status == 422 and "expected a number" in body["error"]["message"], body


def test_open_inference_protocol_over_http_with_tritonclient(server, ll):
    import tritonclient.http as httpclient

    z = zoo.xgboost_classifier()
    ll.create_model("oip_http")
    v = ll.import_model("oip_http", z.onnx, columns=z.columns)
    expected, expected_p = reference(z)
    auth = {"Authorization": f"Bearer {server.key}"}
    c = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("oip_http", headers=auth)
    meta = c.get_model_metadata("oip_http", headers=auth)
    assert meta["platform"] == "onnx" and meta["versions"] == [str(v["version"])]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]

    for binary in (True, False):
        x = httpclient.InferInput("input", list(z.features.shape), "FP32")
        x.set_data_from_numpy(z.features, binary_data=binary)
        wanted = [httpclient.InferRequestedOutput("label", binary_data=binary), httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
        # (the client adds its binary header to the dict it is given: a fresh one per call)
        result = c.infer("oip_http", [x], outputs=wanted, headers=dict(auth), model_version=str(v["version"]))
        assert result.as_numpy("label").tolist() == expected.tolist()
        assert np.allclose(result.as_numpy("probabilities"), expected_p, rtol=0, atol=1e-5)
        assert result.get_response()["model_version"] == str(v["version"])

    # Scoring by tensor is audited like any scoring: the same action, the version read.
    auditor = Client(server.url, ll.create_key("oip-auditor", "auditor")["secret"])
    records = [r["payload"] for r in auditor.audit_records(action="model.invoke", resource="oip_http")["records"]]
    intents = {r["event_id"] for r in records if r["phase"] == "intent" and r["source"]["path"].startswith("/v2/")}
    outcomes = [r for r in records if r["phase"] == "outcome" and r["details"]["intent_event_id"] in intents]
    assert len(outcomes) >= 2 and all(r["resource"]["versions_read"] == [v["version"]] for r in outcomes), outcomes

    # A tensor of the wrong width is refused with the error body, naming what is wrong.
    bad = httpclient.InferInput("input", [2, 29], "FP32")
    bad.set_data_from_numpy(z.features[:2, :29], binary_data=False)
    with pytest.raises(Exception) as e:
        c.infer("oip_http", [bad], headers=dict(auth))
    assert "30" in str(e.value), str(e.value)


def test_open_inference_protocol_over_grpc_with_tritonclient(server, ll):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    z = zoo.lightgbm_classifier()
    ll.create_model("oip_grpc")
    v = ll.import_model("oip_grpc", z.onnx, columns=z.columns)
    ll.set_alias("oip_grpc", "champion", v["version"])
    expected, expected_p = reference(z)
    auth = {"authorization": f"Bearer {server.key}"}
    c = grpcclient.InferenceServerClient(url=server.flight_url.removeprefix("grpc://"))
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("oip_grpc@champion", headers=auth)
    meta = c.get_model_metadata("oip_grpc", headers=auth, as_json=True)
    assert meta["platform"] == "onnx" and meta["inputs"][0]["shape"] == ["-1", "13"]

    x = grpcclient.InferInput("input", list(z.features.shape), "FP32")
    x.set_data_from_numpy(z.features)
    result = c.infer("oip_grpc@champion", [x], headers=auth, outputs=[grpcclient.InferRequestedOutput("label"), grpcclient.InferRequestedOutput("probabilities")])
    assert result.as_numpy("label").reshape(-1).tolist() == expected.tolist()
    assert np.allclose(result.as_numpy("probabilities"), expected_p, rtol=0, atol=1e-5)
    assert result.get_response().model_version == str(v["version"])

    # Without a key the call is refused, and recorded like every call.
    with pytest.raises(InferenceServerException) as e:
        c.infer("oip_grpc", [x])
    assert "unauthenticated" in str(e.value).lower()
    auditor = Client(server.url, ll.create_key("grpc-auditor", "auditor")["secret"])
    records = [r["payload"] for r in auditor.audit_records(action="model.invoke", resource="oip_grpc")["records"]]
    routes = {r["source"]["route"] for r in records if r["phase"] == "intent"}
    assert routes == {"grpc:ModelInfer/ModelInfer"}, routes
    outcomes = [r for r in records if r["phase"] == "outcome"]
    assert sorted(o["outcome"]["status"] for o in outcomes) == [200, 401], outcomes


def train_native(ll, name, data, target, task, band=None):
    """A model trained by the server on a dataset (with `band`, a text column derived from
    one feature, so that one input is categorical); returns its version."""
    columns, x, y = zoo.load(data, target)
    ids = pa.array(range(len(x)), pa.int64())
    t0 = pa.array([1767225600_000_000] * len(x), pa.timestamp("us", tz="UTC"))
    t1 = pa.array([1767312000_000_000] * len(x), pa.timestamp("us", tz="UTC"))
    features = {c: pa.array(x[:, i].astype(np.float64)) for i, c in enumerate(columns)}
    specs = [{"name": c, "type": "float64"} for c in columns]
    if band:
        values = x[:, columns.index(band)]
        cut = np.quantile(values, [1 / 3, 2 / 3])
        features["band"] = pa.array(["low" if v < cut[0] else "mid" if v < cut[1] else "high" for v in values])
        specs.append({"name": "band", "type": "string"})
    ll.create_feature_group(f"{name}_x", entity_keys=[{"name": "id", "type": "int64"}], event_time="ts", features=specs)
    label_type = "int64" if task == "classification" else "float64"
    ll.create_feature_group(f"{name}_y", entity_keys=[{"name": "id", "type": "int64"}], event_time="ts", features=[{"name": target, "type": label_type}])
    ll.ingest(f"{name}_x", pa.table({"id": ids, "ts": t0, **features}))
    labels = pa.array(y.astype(np.int64) if task == "classification" else y)
    ll.ingest(f"{name}_y", pa.table({"id": ids, "ts": t1, target: labels}))
    ts = ll.create_training_set(f"{name}-set", features=[f"{name}_x:{f}" for f in features], spine_sql=f"SELECT id, ts, {target} FROM {name}_y", spine_time="ts")
    job = ll.start_training_job(name, training_set_id=ts.id, label=target, config={"task": task, "hidden_layers": [16], "max_epochs": 60, "seed": 7})
    done = ll.wait_for_job(job["id"], timeout=600)
    assert done["state"] == "succeeded", done
    version = ll.model_versions(name)[-1]
    return version, [f"{name}_x__{f}" for f in features], x, features


@pytest.mark.parametrize("data,target,task,band", [("wine", "cultivar", "classification", "ash"), ("diabetes", "progression", "regression", None)])
def test_native_models_exported_as_onnx_run_in_onnxruntime(server, ll, data, target, task, band):
    name = f"native_{data}"
    v, inputs, x, features = train_native(ll, name, data, target, task, band)
    req = urllib.request.Request(f"{server.url}/v1/models/{name}/versions/{v['version']}/artifact?format=onnx", headers={"Authorization": f"Bearer {server.key}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        exported = r.read()
        assert r.headers["x-lakeledger-artifact-sha256"] == v["artifact_sha256"]

    sess = ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == inputs
    feeds = {}
    for column, values in zip(inputs, features.values()):
        array = np.array(values.to_pylist())
        feeds[column] = array.astype(object if array.dtype.kind in "OU" else np.float32).reshape(-1, 1)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))

    rows = [dict(zip(inputs, r)) for r in zip(*[f.to_pylist() for f in features.values()])]
    status, answer = post(server, f"/v1/models/{name}/versions/{v['version']}/invocations", {"dataframe_records": rows})
    assert status == 200, answer
    if task == "classification":
        assert got["label"].tolist() == answer["predictions"]
        assert np.allclose(got["probabilities"], np.array(answer["probabilities"]), rtol=0, atol=1e-5)
    else:
        assert np.allclose(got["predictions"].reshape(-1), np.array(answer["predictions"]), rtol=1e-5, atol=1e-3)

    # The export is itself a model this server serves: imported back, it answers the same.
    ll.create_model(f"{name}_onnx")
    back = ll.import_model(f"{name}_onnx", exported)
    assert back["config"]["producer"]["name"] == "lakeledger"
    status, again = post(server, f"/v1/models/{name}_onnx/versions/{back['version']}/invocations", {"dataframe_records": rows})
    assert status == 200, again
    assert again["predictions"] == answer["predictions"] if task == "classification" else np.allclose(again["predictions"], answer["predictions"], rtol=1e-5, atol=1e-3)


def test_mlflow_model_directories_with_an_onnx_flavor(server, ll, tmp_path):
    import shutil
    import tarfile

    import mlflow.onnx
    import onnx
    import pandas as pd
    from mlflow.models import infer_signature

    z = zoo.random_forest()
    expected, expected_p = reference(z)
    frame = pd.DataFrame(z.features, columns=z.columns)
    directory = tmp_path / "forest"
    mlflow.onnx.save_model(onnx.load_from_string(z.onnx), str(directory), signature=infer_signature(frame))
    with tarfile.open(tmp_path / "forest.tar.gz", "w:gz") as t:
        t.add(directory, arcname="forest")
    zipped = shutil.make_archive(str(tmp_path / "forest"), "zip", directory)

    ll.create_model("mlflow_forest")
    for archive in (tmp_path / "forest.tar.gz", Path(zipped)):
        v = ll.import_model("mlflow_forest", str(archive))
        assert v["config"]["uploaded_as"]["format"] == "mlflow" and "onnx" in v["config"]["uploaded_as"]["flavors"]
        # The column signature names the inputs; the stored artifact is the ONNX graph.
        assert [c["name"] for c in v["config"]["columns"]] == z.columns
        assert v["artifact_sha256"] == hashlib.sha256((directory / "model.onnx").read_bytes()).hexdigest()
        status, answer = post(server, f"/v1/models/mlflow_forest/versions/{v['version']}/invocations", {"dataframe_split": {"columns": z.columns, "data": z.features.astype(float).tolist()}})
        assert status == 200, answer
        check_against_reference(z, answer, expected, expected_p)

    # A directory without an onnx flavor is refused, naming the flavors it has.
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    plain = tmp_path / "plain"
    # Pickled explicitly: newer MLflow releases default to skops, which is not installed.
    mlflow.sklearn.save_model(LogisticRegression().fit(z.features, (z.features[:, 0] > 14).astype(int)), str(plain),
                              serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE)
    shutil.make_archive(str(tmp_path / "plain"), "zip", plain)
    with pytest.raises(LakeledgerError) as e:
        ll.import_model("mlflow_forest", str(tmp_path / "plain.zip"))
    assert e.value.status == 422 and "no onnx flavor" in e.value.message and "sklearn" in e.value.message, e.value.message


def test_label_encoder_and_casts_in_a_hand_built_graph(server, ll):
    """A category as text, encoded to its index (LabelEncoder), cast to float and scaled:
    what a converter writes for a label-encoded input."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("LabelEncoder", ["band"], ["code"], domain="ai.onnx.ml", keys_strings=["low", "mid", "high"], values_int64s=[0, 1, 2], default_int64=-1),
        helper.make_node("Cast", ["code"], ["code_f"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["code_f", "amount"], ["features"], axis=1),
        helper.make_node("Scaler", ["features"], ["scaled"], domain="ai.onnx.ml", offset=[1.0, 100.0], scale=[0.5, 0.01]),
    ]
    graph = helper.make_graph(
        nodes,
        "label_encoded",
        [helper.make_tensor_value_info("band", TensorProto.STRING, [None, 1]), helper.make_tensor_value_info("amount", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", 2)], producer_name="onnx.helper")
    data = model.SerializeToString()
    bands, amounts = ["low", "high", "unknown", "mid"], [120.0, 80.5, 99.0, 101.0]
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    expected = sess.run(None, {"band": np.array(bands, dtype=object).reshape(-1, 1), "amount": np.array(amounts, dtype=np.float32).reshape(-1, 1)})[0]

    ll.create_model("encoded")
    v = ll.import_model("encoded", data)
    assert [c["name"] for c in v["config"]["columns"]] == ["band", "amount"]
    status, answer = post(server, f"/v1/models/encoded/versions/{v['version']}/invocations", {"dataframe_records": [{"band": b, "amount": a} for b, a in zip(bands, amounts)]})
    assert status == 200, answer
    assert np.allclose(np.array(answer["predictions"], dtype=float), expected, atol=1e-6)
