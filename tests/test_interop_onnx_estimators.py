"""ONNX export of fitted estimators: onnxruntime runs the exported graph of the
whole predict / predict_proba (standardisation, network, head, target
scaling or softmax) and equals the estimator."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import clstm
from clstm import LSTMClassifier, LSTMRegressor

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _data(n=40, T=7, F=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T, F)) * 3.0 + 1.5          # not standardised already
    lengths = rng.integers(2, T + 1, size=n)
    return X, lengths


def _run(model, X, lengths=None):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"X": X.astype(np.float32)}
    if lengths is not None:
        feeds["lengths"] = np.asarray(lengths, np.int64)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def _padded(X, lengths):
    """The ragged list and its padded array with garbage in the padding."""
    ragged = [x[:n] for x, n in zip(X, lengths)]
    padded = X.copy()
    for i, n in enumerate(lengths):
        padded[i, n:] = 1e3
    return ragged, padded


def _close(actual, desired, rel=1e-5):
    scale = max(1.0, float(np.max(np.abs(desired))))
    assert np.max(np.abs(np.asarray(actual, np.float64) - desired)) <= rel * scale


NETS = [{}, {"cell": "gru"}, {"bidirectional": True, "num_layers": 2},
        {"peephole": True, "coupled_gates": True}, {"proj_size": 4}, {"layer_norm": True}]
NET_IDS = ["lstm", "gru", "bi-2layers", "peephole-cifg", "proj", "layernorm"]


@pytest.mark.parametrize("kw", NETS, ids=NET_IDS)
@pytest.mark.parametrize("outputs", [1, 2])
def test_regressor_graph_equals_predict(tmp_path, kw, outputs):
    X, lengths = _data()
    y = X[:, :, 0].mean(axis=1) * 4 + 10
    Y = y if outputs == 1 else np.stack([y, -y / 3], axis=1)
    reg = LSTMRegressor(hidden_size=8, max_iter=3, random_state=0, **kw).fit(X, Y)
    path = tmp_path / "reg.onnx"
    model = clstm.export_onnx(reg, path)
    onnx.checker.check_model(str(path), full_check=True)
    got = _run(model, X, np.full(len(X), X.shape[1]))["variable"]
    assert got.shape == reg.predict(X).shape
    _close(got, reg.predict(X))
    ragged, padded = _padded(X, lengths)
    _close(_run(model, padded, lengths)["variable"], reg.predict(ragged))
    no_lengths = clstm.export_onnx(reg, None, lengths=False)
    _close(_run(no_lengths, X)["variable"], reg.predict(X))


@pytest.mark.parametrize("kw", NETS[:3], ids=NET_IDS[:3])
@pytest.mark.parametrize("labels", [np.array([0, 1]), np.array(["cat", "dog", "eel"]),
                                    np.array([-1.0, 2.0, 7.0])], ids=["binary", "str", "float"])
def test_classifier_graph_equals_predict_and_predict_proba(kw, labels):
    X, lengths = _data(n=45)
    codes = (X[:, :, 0].mean(axis=1) > 1.5).astype(int) + (X[:, -1, 1] > 3)
    y = labels[codes % labels.size]
    clf = LSTMClassifier(hidden_size=8, max_iter=3, random_state=0, **kw).fit(X, y)
    ragged, padded = _padded(X, lengths)
    res = _run(clstm.export_onnx(clf, None), padded, lengths)
    _close(res["probabilities"], clf.predict_proba(ragged))
    np.testing.assert_array_equal(res["label"], clf.predict(ragged))
    assert res["probabilities"].shape == (len(X), clf.classes_.size)


def test_per_step_outputs_and_univariate_input():
    rng = np.random.default_rng(3)
    X2 = rng.standard_normal((20, 6))                        # univariate, 2-D
    y = np.cumsum(X2, axis=1)
    reg = LSTMRegressor(hidden_size=6, max_iter=3, return_sequences=True,
                        random_state=0).fit(X2, y)
    res = _run(clstm.export_onnx(reg, None), X2[..., None], np.full(20, 6))
    assert res["variable"].shape == (20, 6)
    _close(res["variable"], reg.predict(X2))


def test_multi_step_multi_column_targets_keep_their_shape():
    # make_windows(horizon=h) on k columns: y (n, h, k), predict (n, h, k)
    series = np.random.default_rng(4).standard_normal((80, 2)).cumsum(axis=0)
    X, y = clstm.make_windows(series, lookback=6, horizon=3)
    reg = LSTMRegressor(hidden_size=5, max_iter=3, random_state=0).fit(X, y)
    res = _run(clstm.export_onnx(reg, None), X, np.full(len(X), 6))
    assert res["variable"].shape == reg.predict(X).shape == (len(X), 3, 2)
    _close(res["variable"], reg.predict(X))


def test_refusals():
    with pytest.raises(Exception, match="not fitted"):
        clstm.export_onnx(LSTMRegressor(), None)
    X, _ = _data(n=10)
    reg = LSTMRegressor(hidden_size=4, max_iter=1).fit(X, X[:, 0, 0])
    with pytest.raises(ValueError, match="initial_states applies to networks"):
        clstm.export_onnx(reg, None, initial_states=True)
    with pytest.raises(TypeError, match="fitted LSTMRegressor"):
        clstm.export_onnx(object(), None)
