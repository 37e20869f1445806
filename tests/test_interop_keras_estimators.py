"""Fitted estimators as Keras 3 models and back (issue 12, item 4), torch backend.

- to_keras(estimator).predict equals predict / predict_proba for LSTM and GRU,
  stacked and bidirectional, regressors (one and two outputs, per step) and
  classifiers (binary, multiclass with str labels, per step), float32 and
  float64; from_keras of that model gives back an equal estimator.
- Ragged input through Masking equals the estimator on the ragged list.
- Keras-built models (adapted Normalization, Dropout, sigmoid / softmax
  heads with classes in any order, no Normalization) -> estimators that
  predict what Keras predicts, save/load, and continue training from the
  Keras weights.
- Every refusal message.
"""

import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")   # before keras is imported anywhere

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402

import clstm  # noqa: E402
from clstm import LSTMClassifier, LSTMRegressor  # noqa: E402
from clstm.interop import from_keras, to_keras  # noqa: E402

# Keras 3.15's torch backend warns about numpy 2's __array__(copy=) inside
# its own variable handling: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

N, T, F, H = 24, 6, 3, 4
# Keras 3.15's type promotion computes a float64 Dense / Normalization in
# float32 (keras.ops.matmul of two float64 tensors is float32), so float64
# models agree to float32 precision only
RTOL = {"float32": 1e-5, "float64": 1e-6}
NETS = {"lstm": dict(), "gru-bi-2": dict(cell="gru", bidirectional=True, num_layers=2),
        "lstm-bi": dict(bidirectional=True)}


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def rel_err(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1.0))


def data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, T, F)) * 2.0 + 1.5          # not standardised already
    return X, rng.integers(2, T + 1, size=N)


def targets(kind, X):
    s = X[:, :, 0].mean(axis=1)
    if kind == "reg1":
        return 30.0 * s + 100.0
    if kind == "reg2":
        return np.stack([30.0 * s + 100.0, -s], axis=1)
    if kind == "binary":
        return (s > np.median(s)).astype(int)
    if kind == "multi":
        return np.array(["cat", "dog", "eel"])[np.digitize(s, np.quantile(s, [1 / 3, 2 / 3]))]
    if kind == "reg-seq":
        return np.cumsum(X[:, :, :2], axis=1)
    if kind == "clf-seq":
        return np.where(X[:, :, 0] > 1.5, "hi", "lo")
    raise AssertionError(kind)


def fitted(kind, net, dtype, X):
    cls = LSTMRegressor if kind.startswith("reg") else LSTMClassifier
    return cls(hidden_size=H, max_iter=2, random_state=0, dtype=dtype,
               return_sequences=kind.endswith("-seq"), **NETS[net]).fit(X, targets(kind, X))


def expected(est, X, lengths=None):
    if isinstance(est, LSTMClassifier):
        return est.predict_proba(X, lengths=lengths)
    return est.predict(X, lengths=lengths)


def keras_predict(keras, model, X):
    return keras.ops.convert_to_numpy(model(X.astype(model.inputs[0].dtype)))


def as_predict(est, y):
    """The Keras output shaped as predict: a single-output regressor drops the last axis."""
    return y[..., 0] if getattr(est, "_y_1d", False) else y


# -- estimator -> Keras -> estimator ---------------------------------------------------------

KINDS = ["reg1", "reg2", "binary", "multi", "reg-seq", "clf-seq"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("net", ["lstm", "gru-bi-2"])
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(keras, kind, net, dtype):
    X, _ = data()
    est = fitted(kind, net, dtype, X)
    model = to_keras(est)
    names = [type(layer).__name__ for layer in model.layers]
    rnn = "Bidirectional" if est.bidirectional else ("GRU" if est.cell == "gru" else "LSTM")
    tail = ["Normalization"] if kind.startswith("reg") else []
    assert names == ["Normalization", *[rnn] * est.num_layers, "Dense", *tail]
    y = keras_predict(keras, model, X)
    assert y.dtype == np.dtype(dtype)
    assert rel_err(as_predict(est, y), expected(est, X)) <= RTOL[dtype]
    back = from_keras(model, classes=getattr(est, "classes_", None))
    assert type(back) is type(est)
    assert back.get_params() == {**est.get_params(), "max_iter": back.max_iter,
                                 "random_state": None}
    assert rel_err(expected(back, X), expected(est, X)) <= RTOL[dtype]
    if kind in ("multi", "clf-seq"):
        np.testing.assert_array_equal(back.classes_, est.classes_)
        np.testing.assert_array_equal(back.predict(X), est.predict(X))
    # the weights come back as they went (up to the rounding of the
    # statistics through sqrt(variance) and of the LSTM's summed biases)
    # (the Normalization layer holds them in the model's dtype)
    stats_rtol = 1e-12 if dtype == "float64" else 1e-6
    for ours, theirs in zip(back._x_stats, est._x_stats):
        np.testing.assert_allclose(ours, theirs, rtol=stats_rtol)
    np.testing.assert_array_equal(back._model.head_weight, est._model.head_weight)


def test_binary_head_is_two_softmax_columns(keras):
    """softmax([0, z]) == [1 - sigmoid(z), sigmoid(z)]: model.predict is predict_proba."""
    X, _ = data()
    clf = fitted("binary", "lstm", "float64", X)
    kernel, bias = to_keras(clf).get_layer("head").get_weights()
    np.testing.assert_array_equal(kernel[:, 0], 0.0)
    np.testing.assert_array_equal(kernel[:, 1:], clf._model.head_weight)
    np.testing.assert_array_equal(bias, [0.0, clf._model.head_bias[0]])


@pytest.mark.parametrize("kind", ["reg1", "multi", "reg-seq"])
@pytest.mark.parametrize("net", ["lstm", "gru-bi-2"])
def test_masking_gives_the_ragged_result(keras, kind, net):
    X, lengths = data(1)
    est = fitted(kind, net, "float32", X)
    padded = X.copy()
    for i, n in enumerate(lengths):
        padded[i, n:] = -999.0
    model = to_keras(est, mask_value=-999.0)
    assert type(model.layers[0]).__name__ == "Masking"
    y = as_predict(est, keras_predict(keras, model, padded))
    want = expected(est, [x[:n] for x, n in zip(X, lengths)])
    if est.return_sequences:                 # the valid steps of each sequence
        y, want = (np.concatenate([y[i, :n] for i, n in enumerate(lengths)]),
                   np.concatenate(want))
    assert rel_err(y, want) <= 1e-5


def test_masking_for_networks(keras):
    X, lengths = data(2)
    net = clstm.GRU(F, H, num_layers=2, bidirectional=True, random_state=0)
    padded = X.astype(np.float32)
    for i, n in enumerate(lengths):
        padded[i, n:] = 7.0
    out = keras_predict(keras, to_keras(net, mask_value=7.0), padded)
    want, _ = net.run(X.astype(np.float32), lengths=lengths, keep_cache=False)
    for i, n in enumerate(lengths):
        assert rel_err(out[i, :n], want[i, :n]) <= 1e-5


def test_tiny_target_scale_is_folded_into_the_head(keras):
    """A target scale below Keras's epsilon cannot be a Normalization layer."""
    X, _ = data()
    y = 1.0 + 1e-9 * X[:, :, 0].sum(axis=1)
    reg = LSTMRegressor(hidden_size=H, max_iter=1, random_state=0, dtype="float64").fit(X, y)
    assert reg._y_stats[1][0] < 1e-7
    model = to_keras(reg)
    assert [type(layer).__name__ for layer in model.layers][-1] == "Dense"
    got, want = keras_predict(keras, model, X)[:, 0], reg.predict(X)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


# -- Keras-built models -> estimators -------------------------------------------------------

def randomize(model, seed=0, skip=("Normalization",)):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ in skip:
            continue
        layer.set_weights([rng.uniform(-0.7, 0.7, w.shape).astype(w.dtype)
                           for w in layer.get_weights()])
    return model


def keras_classifier(keras, units, activation, X):
    norm = keras.layers.Normalization(axis=-1)
    norm.adapt(X.reshape(-1, F))
    return randomize(keras.Sequential([
        keras.Input((None, F)), norm,
        keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True)),
        keras.layers.Dropout(0.5),
        keras.layers.Bidirectional(keras.layers.LSTM(H)),
        keras.layers.Dense(units, activation=activation)]))


def test_softmax_classifier_with_classes_in_any_order(keras):
    X, _ = data()
    model = keras_classifier(keras, 3, "softmax", X)
    clf = from_keras(model, classes=["eel", "cat", "dog"], random_state=0)   # column k: classes[k]
    assert isinstance(clf, LSTMClassifier) and clf.standardize and clf.num_layers == 2
    np.testing.assert_array_equal(clf.classes_, ["cat", "dog", "eel"])
    p = keras_predict(keras, model, X)
    assert rel_err(clf.predict_proba(X), p[:, [1, 2, 0]]) <= 1e-5
    np.testing.assert_array_equal(clf.predict(X), np.array(["eel", "cat", "dog"])[p.argmax(1)])
    # training continues (labels from classes_, no classes= needed after import)
    y = np.array(["cat", "dog", "eel"])[(X[:, -1, 0] > 1.5).astype(int) + (X[:, 0, 1] > 1.5)]
    before = clf.score(X, y)
    clf.set_params(learning_rate_init=3e-2, alpha=0.0)
    for _ in range(15):
        clf.partial_fit(X, y)
    assert clf.n_iter_ == 15 and clf.score(X, y) > max(before, 0.6)


@pytest.mark.parametrize("units, activation", [(1, "sigmoid"), (2, "softmax")])
def test_binary_classifier_heads(keras, units, activation):
    X, _ = data()
    model = keras_classifier(keras, units, activation, X)
    clf = from_keras(model, classes=[True, False])        # column 1 / the sigmoid: False
    assert clf._model.n_outputs == 1 and list(clf.classes_) == [False, True]
    p = keras_predict(keras, model, X)
    p_false = p[:, 0] if units == 1 else p[:, 1]
    assert rel_err(clf.predict_proba(X)[:, 0], p_false) <= 1e-5


def test_regressor_without_normalization_and_float64(keras):
    X, _ = data()
    model = randomize(keras.Sequential([
        keras.Input((None, F), dtype="float64"),
        keras.layers.GRU(H, return_sequences=True, dtype="float64"),
        keras.layers.Dense(2, dtype="float64")]))
    reg = from_keras(model)
    assert isinstance(reg, LSTMRegressor) and reg.cell == "gru" and reg.return_sequences
    assert not reg.standardize and reg._x_stats == (None, None) and reg.dtype == "float64"
    assert rel_err(reg.predict(X), keras_predict(keras, model, X)) <= RTOL["float64"]
    assert reg.predict(X).shape == (N, T, 2)


def test_regressor_with_input_normalization_only(keras):
    X, _ = data()
    norm = keras.layers.Normalization(axis=-1, mean=[1.0, 2.0, 3.0], variance=[4.0, 0.25, 1.0])
    model = randomize(keras.Sequential([keras.Input((None, F)), norm, keras.layers.LSTM(H),
                                        keras.layers.Dense(1)]))
    reg = from_keras(model)
    np.testing.assert_allclose(reg._x_stats[0], [1, 2, 3])
    np.testing.assert_allclose(reg._x_stats[1], [2, 0.5, 1])
    # the targets' statistics: the identity (predict unchanged, training as Keras)
    assert reg.standardize and reg._y_stats[0].tolist() == [0.0]
    assert reg._y_stats[1].tolist() == [1.0]
    y = keras_predict(keras, model, X)
    assert reg.predict(X).shape == (N,) and rel_err(reg.predict(X), y[:, 0]) <= 1e-5


def test_imported_estimator_saves_and_trains_from_the_keras_weights(keras, tmp_path):
    X, _ = data()
    y = targets("reg1", X)
    norm = keras.layers.Normalization(axis=-1)
    norm.adapt(X.reshape(-1, F))
    out = keras.layers.Normalization(axis=-1, invert=True, mean=[y.mean()],
                                     variance=[y.var()])
    model = randomize(keras.Sequential([keras.Input((None, F)), norm, keras.layers.LSTM(H),
                                        keras.layers.Dense(1), out]))
    reg = from_keras(model)
    start = reg.predict(X)
    assert rel_err(start, keras_predict(keras, model, X)[:, 0]) <= 1e-5
    # save / load keep everything
    reg.save(tmp_path / "reg.clstm")
    loaded = clstm.load(tmp_path / "reg.clstm")
    np.testing.assert_array_equal(loaded.predict(X), start)
    assert loaded.n_iter_ == 0 and loaded.t_ == 0 and loaded.loss_curve_ == []
    # training continues from the Keras weights with a fresh Adam: a tiny
    # step keeps the Keras model's predictions, more epochs reduce the error
    tiny = clstm.load(tmp_path / "reg.clstm").set_params(learning_rate_init=1e-12)
    tiny.partial_fit(X, y)
    assert tiny.n_iter_ == 1 and tiny.t_ == 1 and tiny._optimizer.t == 1
    assert rel_err(tiny.predict(X), start) <= 1e-6
    mse = lambda r: float(np.mean((r.predict(X) - y) ** 2))     # noqa: E731
    before = mse(reg)
    weights = reg.lstm_.state_dict()
    reg.set_params(learning_rate_init=1e-2, warm_start=True, max_iter=30, alpha=0.0)
    reg.fit(X, y)
    assert reg.n_iter_ == 30 and mse(reg) < 0.75 * before
    moved = max(np.abs(reg.lstm_.params[k] - w).max() for k, w in weights.items())
    assert 1e-3 < moved < 1.0          # trained further, not re-initialised


# -- refusals ---------------------------------------------------------------------------

def _seq(k, *layers):
    return k.Sequential([k.Input((None, F)), *layers])


@pytest.mark.parametrize("make, classes, message", [
    (lambda k: _seq(k, k.layers.LSTM(H), k.layers.Dense(2, activation="relu")), None,
     "has activation='relu'; clstm's head is linear .*softmax or sigmoid .*for the "
     "recurrent layers alone, as a clstm network, pass keras.Sequential\\(model.layers"),
    (lambda k: _seq(k, k.layers.LSTM(H), k.layers.Dense(4), k.layers.Dense(1)), None,
     "has 2 Dense layers .*clstm's head is one Dense layer"),
    (lambda k: _seq(k, k.layers.Dense(4), k.layers.LSTM(H), k.layers.Dense(1)), None,
     "no recurrent layer where one is expected .*'dense.*' \\(Dense\\)"),
    (lambda k: _seq(k, k.layers.LSTM(H, return_sequences=True),
                    k.layers.GlobalAveragePooling1D(), k.layers.Dense(1)), None,
     "'global_average_pooling1d.*' \\(GlobalAveragePooling1D\\) after its recurrent layers "
     "where the Dense head should be"),
    (lambda k: _seq(k, k.layers.LSTM(H), k.layers.Dense(1)), ["a", "b"],
     "is linear, so the model is a regressor; classes applies to softmax / sigmoid"),
    (lambda k: _seq(k, k.layers.LSTM(H), k.layers.Dense(3, activation="softmax")), None,
     "has a softmax output, so it is a classifier: pass classes="),
    (lambda k: _seq(k, k.layers.LSTM(H), k.layers.Dense(3, activation="softmax")), [0, 1],
     "has 3 softmax outputs but classes has 2 labels"),
    (lambda k: _seq(k, k.layers.LSTM(H), k.layers.Dense(1, activation="sigmoid")), [0, 1, 2],
     "sigmoid output of 1 columns and classes has 3 labels"),
    (lambda k: _seq(k, k.layers.LSTM(H), k.layers.Dense(2, activation="softmax")), [1, 1],
     "classes must be distinct labels"),
    (lambda k: _seq(k, k.layers.LSTM(H), k.layers.Dense(2, activation="softmax"),
                    k.layers.Normalization(invert=True, mean=0.0, variance=1.0)), [0, 1],
     "is followed by an inverting Normalization; a classifier's output is its probabilities"),
    (lambda k: _seq(k, k.layers.Normalization(invert=True, mean=0.0, variance=1.0),
                    k.layers.LSTM(H), k.layers.Dense(1)), None,
     "before the recurrent layers must have invert=False"),
], ids=["activation", "two-dense", "dense-first", "pooling", "classes-linear", "no-classes",
        "n-classes", "sigmoid-3", "duplicates", "invert-after-softmax",
        "norm-invert-first"])
def test_from_keras_refusals(keras, make, classes, message):
    with pytest.raises(ValueError, match=message):
        from_keras(make(keras), classes=classes)


def test_from_keras_refuses_layers_after_the_head(keras):
    model = _seq(keras, keras.layers.LSTM(H), keras.layers.Dense(1),
                 keras.layers.Activation("relu"))
    with pytest.raises(ValueError, match="into an estimator; the model also has "
                                         "'dense.*' \\(Dense\\), 'activation.*' \\(Activation\\)"):
        from_keras(model)
    # classes without a head: a network has no classes
    with pytest.raises(ValueError, match="classes applies to a Keras model with a softmax"):
        from_keras(_seq(keras, keras.layers.LSTM(H)), classes=[0, 1])


@pytest.mark.parametrize("options, names", [
    (dict(proj_size=2), "proj_size"), (dict(peephole=True, coupled_gates=True),
                                       "peephole / coupled_gates"),
    (dict(layer_norm=True), "layer_norm"),
])
def test_to_keras_refuses_cells_keras_lacks(keras, options, names):
    X, _ = data()
    reg = LSTMRegressor(hidden_size=H, max_iter=1, **options).fit(X, X[:, 0, 0])
    with pytest.raises(ValueError, match=f"keras.layers.LSTM has no {names} option"):
        to_keras(reg)


def test_to_keras_estimator_refusals(keras):
    with pytest.raises(NotFittedError):
        to_keras(LSTMRegressor())
    X, _ = data()
    reg = LSTMRegressor(hidden_size=H, max_iter=1).fit(X, X[:, 0, 0])
    with pytest.raises(ValueError, match="return_sequences applies to networks"):
        to_keras(reg, return_sequences=False)
    tiny = LSTMRegressor(hidden_size=H, max_iter=1).fit(X * 1e-9 + 5.0, X[:, 0, 0])
    with pytest.raises(ValueError, match="below keras.config.epsilon"):
        to_keras(tiny)
