"""The models the ONNX tests register: each trained here on one of the datasets in
`shared/data` (copied into `trainer/tests/data`), converted to ONNX with the converters users
run (skl2onnx, onnxmltools), or built with `onnx.helper` as a PyTorch export of an MLP would
be. Each entry gives the ONNX bytes, the columns it reads and the rows to score."""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "trainer" / "tests" / "data"

# Operator sets the converters are asked for: what onnxruntime and the server both know.
OPSETS = {"": 15, "ai.onnx.ml": 3}


@dataclass
class Zoo:
    name: str
    onnx: bytes
    columns: list  # feature columns in the order of the input tensor
    features: np.ndarray  # float32 rows to score
    classifier: bool


def load(name, target):
    with open(DATA / f"{name}.csv") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c not in ("id", target)]
    x = np.array([[float(r[c]) for c in columns] for r in rows], dtype=np.float32)
    y = np.array([float(r[target]) for r in rows])
    return columns, x, y


def sklearn_pipeline():
    """SimpleImputer + StandardScaler on the measurements (some missing), Binarizer on one,
    OneHotEncoder on a binned one, then LogisticRegression: Imputer, Scaler, Binarizer,
    ArrayFeatureExtractor, OneHotEncoder, Concat, LinearClassifier, Normalizer, ZipMap."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Binarizer, OneHotEncoder, StandardScaler
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    columns, x, y = load("wine", "cultivar")
    xs = x.copy()
    ash = columns.index("ash")
    xs[:, ash] = np.round(xs[:, ash])
    measurements = [i for i in range(x.shape[1]) if i != ash]
    # Every seventh row misses a measurement, as real inputs do.
    gaps = [i for i in measurements if i != columns.index("alcohol")]
    for r in range(0, len(xs), 7):
        xs[r, gaps[r % len(gaps)]] = np.nan
    pre = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer(strategy="mean")), ("scale", StandardScaler())]), measurements),
        ("high_alcohol", Binarizer(threshold=13.0), [columns.index("alcohol")]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), [ash]),
    ])
    model = Pipeline([("pre", pre), ("lr", LogisticRegression(max_iter=2000))]).fit(xs, y.astype(np.int64))
    onx = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))], target_opset=OPSETS)
    return Zoo("wine_pipeline", onx.SerializeToString(), columns, xs, True)


def random_forest():
    from sklearn.ensemble import RandomForestClassifier
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    columns, x, y = load("breast_cancer", "benign")
    model = RandomForestClassifier(n_estimators=50, max_depth=8, random_state=0).fit(x, y.astype(np.int64))
    onx = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))], target_opset=OPSETS)
    return Zoo("cancer_forest", onx.SerializeToString(), columns, x, True)


def gradient_boosting_regressor():
    from sklearn.ensemble import GradientBoostingRegressor
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    columns, x, y = load("diabetes", "progression")
    model = GradientBoostingRegressor(n_estimators=100, max_depth=3, random_state=0).fit(x, y)
    onx = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))], target_opset=OPSETS)
    return Zoo("diabetes_gbr", onx.SerializeToString(), columns, x, False)


def xgboost_classifier(trees=50):
    import xgboost
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    columns, x, y = load("breast_cancer", "benign")
    model = xgboost.XGBClassifier(n_estimators=trees, max_depth=4, random_state=0, n_jobs=1).fit(x, y.astype(np.int64))
    onx = convert_xgboost(model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))], target_opset=OPSETS[""])
    return Zoo("cancer_xgboost", onx.SerializeToString(), columns, x, True)


def lightgbm_classifier():
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    columns, x, y = load("wine", "cultivar")
    model = lightgbm.LGBMClassifier(n_estimators=40, num_leaves=8, random_state=0, verbose=-1).fit(x, y.astype(np.int64))
    onx = convert_lightgbm(model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))], target_opset=OPSETS[""], zipmap=True)
    return Zoo("wine_lightgbm", onx.SerializeToString(), columns, x, True)


def mlp():
    """What `torch.onnx.export` writes for a 13→16→8→3 MLP with a softmax head: Gemm, Relu,
    MatMul + Add, Sigmoid, Softmax, with a dynamic batch axis."""
    from onnx import TensorProto, helper, numpy_helper

    columns, x, _ = load("wine", "cultivar")
    mean, std = x.mean(axis=0), x.std(axis=0)
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 13)) * 0.4).astype(np.float32)  # Gemm with transB=1
    b1 = (rng.standard_normal(16) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((16, 8)) * 0.4).astype(np.float32)
    b2 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w3 = (rng.standard_normal((8, 3)) * 0.4).astype(np.float32)
    b3 = (rng.standard_normal(3) * 0.1).astype(np.float32)
    inits = [
        numpy_helper.from_array(mean.astype(np.float32), "mean"),
        numpy_helper.from_array((1.0 / std).astype(np.float32), "inv_std"),
        numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2"),
        numpy_helper.from_array(w3, "w3"), numpy_helper.from_array(b3, "b3"),
    ]
    nodes = [
        helper.make_node("Sub", ["input", "mean"], ["centered"]),
        helper.make_node("Mul", ["centered", "inv_std"], ["scaled"]),
        helper.make_node("Gemm", ["scaled", "w1", "b1"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["h2b"]),
        helper.make_node("Sigmoid", ["h2b"], ["a2"]),
        helper.make_node("MatMul", ["a2", "w3"], ["h3"]),
        helper.make_node("Add", ["h3", "b3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 13])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], producer_name="pytorch", producer_version="2.9.0")
    return Zoo("wine_mlp", model.SerializeToString(), columns, x, True)


ALL = [sklearn_pipeline, random_forest, gradient_boosting_regressor, xgboost_classifier, lightgbm_classifier, mlp]
