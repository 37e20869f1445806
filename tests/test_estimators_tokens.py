"""Token inputs in the estimators: an embedding table before the network.

Oracles: central finite differences of the model loss in float64 (embedding +
network + head), the ragged == padded-with-lengths identity, the lazy row
update semantics written out by hand, and round trips through clone, pickle
and save/load.
"""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

import clstm
from clstm._model import SequenceModel
from clstm._tokens import Embedding, RowGradient
from clstm._validation import InvalidParameterError

V = 12
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _token_data(n=60, seed=0, low=1):
    """Label: does token 3 occur? Ragged lengths 2..9."""
    rng = np.random.RandomState(seed)
    X = [rng.randint(low, V, size=rng.randint(2, 10)) for _ in range(n)]
    y = np.array([int(3 in x) for x in X])
    return X, y


# ----------------------------------------------------------------------
# gradients: embedding + network + head, central differences in float64
# ----------------------------------------------------------------------
CONFIGS = [
    dict(cell="lstm"),
    dict(cell="gru"),
    dict(cell="lstm", num_layers=2, bidirectional=True),
    dict(cell="lstm", proj_size=2, peephole=True),
    dict(cell="lstm", return_sequences=True),
]


def _model(config, padding_idx=None, seed=0):
    rng = np.random.RandomState(seed)
    config = dict(config)
    return_sequences = config.pop("return_sequences", False)
    config.pop("tbptt_steps", None)
    params = {"hidden_size": 3, "dtype": "float64", **config}
    layer = Embedding.create(7, 4, np.float64, rng, padding_idx=padding_idx)
    loss = "softmax"
    return SequenceModel.create(4, params, 5, loss, return_sequences, rng, input_layer=layer)


@pytest.mark.parametrize("config", CONFIGS,
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_model_gradient_finite_differences(config):
    padding_idx = 2
    model = _model(config, padding_idx=padding_idx)
    model.train()
    rng = np.random.RandomState(1)
    B, T = 3, 5
    ids = rng.randint(0, 6, size=(B, T)).astype(np.int64)     # row 6 never used
    ids[0, 1] = padding_idx
    lengths = np.array([5, 3, 4], dtype=np.int64)
    if model.return_sequences:
        Y = rng.randint(0, 5, size=(B, T))
        W = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float64)
    else:
        Y = rng.randint(0, 5, size=B)
        W = np.ones(B)
    tbptt = config.get("tbptt_steps")

    def loss():
        return model.loss_and_grad(ids, lengths, Y, W, tbptt_steps=tbptt, need_grad=False)[0]

    _, grads = model.loss_and_grad(ids, lengths, Y, W, tbptt_steps=tbptt)
    g_emb = grads["embedding.weight"]
    assert isinstance(g_emb, RowGradient)
    valid = np.arange(T)[None, :] < lengths[:, None]
    expected_rows = np.setdiff1d(np.unique(ids[valid]), [padding_idx])
    np.testing.assert_array_equal(g_emb.rows, expected_rows)
    dense = {k: (g.toarray() if isinstance(g, RowGradient) else g) for k, g in grads.items()}
    eps = 1e-6
    checked = 0
    for name, param in model.params.items():
        idx_all = list(np.ndindex(*param.shape))
        picks = rng.choice(len(idx_all), size=min(12, len(idx_all)), replace=False)
        if name == "embedding.weight":
            # every used row and an unused one; the padding row has no gradient
            # by definition (its forward value is its stored zero row)
            picks = [i for i, ix in enumerate(idx_all) if ix[1] == 0 and ix[0] != padding_idx]
            assert np.all(dense[name][padding_idx] == 0)
        for p in picks:
            ix = idx_all[p]
            w0 = param[ix]
            param[ix] = w0 + eps
            up = loss()
            param[ix] = w0 - eps
            down = loss()
            param[ix] = w0
            num = (up - down) / (2 * eps)
            assert dense[name][ix] == pytest.approx(num, rel=1e-5, abs=1e-8), (name, ix)
            checked += 1
    assert checked > 20


# ----------------------------------------------------------------------
# the estimators on tokens
# ----------------------------------------------------------------------
@pytest.mark.parametrize("config", [dict(), dict(cell="gru", bidirectional=True),
                                    dict(num_layers=2, layer_norm=True)])
def test_classifier_learns_from_tokens(config):
    X, y = _token_data(n=120)
    clf = clstm.LSTMClassifier(vocab_size=V, embedding_dim=6, hidden_size=12, max_iter=40,
                               learning_rate_init=1e-2, random_state=0, **config).fit(X, y)
    assert clf.score(X, y) > 0.9
    assert clf._input_layout == "tokens" and clf.n_features_in_ == 1 and clf.input_size_ == 6


def test_regressor_per_step_on_padded_tokens():
    """Per-step target: running count of token 3; padded array + lengths == ragged list."""
    X, _ = _token_data(n=80, seed=3)
    y = [np.cumsum(x == 3).astype(float) for x in X]
    T = max(len(x) for x in X)
    lengths = np.array([len(x) for x in X])
    padded = np.full((len(X), T), -7)                # garbage padding: never read
    for i, x in enumerate(X):
        padded[i, :len(x)] = x
    kw = dict(vocab_size=V, embedding_dim=5, hidden_size=10, max_iter=5, return_sequences=True,
              random_state=0)
    a = clstm.LSTMRegressor(**kw).fit(X, y)
    b = clstm.LSTMRegressor(**kw).fit(padded, y, lengths=lengths)
    np.testing.assert_array_equal(a.loss_curve_, b.loss_curve_)
    pa = a.predict(X)
    pb = b.predict(padded, lengths=lengths)
    for u, v in zip(pa, pb):
        np.testing.assert_array_equal(u, v)


def test_lazy_rows_and_padding_row_do_not_move():
    X, y = _token_data(n=40, low=2)          # ids 0 and 1 never occur
    X = [np.concatenate([[0], x]) for x in X]          # the padding id inside the sequences
    clf = clstm.LSTMClassifier(vocab_size=V, embedding_dim=4, hidden_size=6, max_iter=3,
                               padding_idx=0, random_state=0).fit(X, y)
    # the first fit draws the table first from RandomState(random_state)
    init = Embedding.create(V, 4, np.float32, np.random.RandomState(0), padding_idx=0).weight
    table = clf._model.input_layer.weight
    np.testing.assert_array_equal(table[0], 0)                 # padding row
    np.testing.assert_array_equal(table[1], init[1])           # never in a batch: untouched
    assert not np.array_equal(table[5], init[5])               # used: trained
    assert np.all(clf._optimizer.state["m"]["embedding.weight"][[0, 1]] == 0)


@pytest.mark.parametrize("solver", ["adam", "sgd", "rmsprop"])
def test_lazy_row_update_equals_dense_update_of_those_rows(solver):
    """A RowGradient step == the dense step on the gathered rows with their own
    slots; other rows and slots stay exactly as they were."""
    from clstm._optimizers import AdamOptimizer, RMSpropOptimizer, SGDOptimizer
    make = {"adam": lambda: AdamOptimizer(0.1), "sgd": lambda: SGDOptimizer(0.1, 0.9),
            "rmsprop": lambda: RMSpropOptimizer(0.1)}[solver]
    rng = np.random.RandomState(0)
    table = rng.randn(6, 3)
    sparse_opt, dense_opt = make(), make()
    sparse_param = {"w": table.copy()}
    rows_seen = set()
    dense_rows = {}
    for step, rows in enumerate([np.array([1, 4]), np.array([0, 4]), np.array([4])]):
        values = rng.randn(rows.size, 3)
        sparse_opt.update_params(sparse_param, {"w": RowGradient(rows, values, table.shape)})
        rows_seen.update(rows.tolist())
        # oracle: each row is its own dense parameter, stepped only when present,
        # with the optimizer's global step count
        dense_opt.t = step
        for r, v in zip(rows, values):
            p = dense_rows.setdefault(r, {f"r{r}": table[r].copy()})
            dense_opt.update_params(p, {f"r{r}": v})
            dense_opt.t = step
    for r in range(6):
        expected = dense_rows[r][f"r{r}"] if r in rows_seen else table[r]
        np.testing.assert_allclose(sparse_param["w"][r], expected, rtol=1e-12, atol=1e-15)


def test_pretrained_embeddings_frozen_and_not_mutated():
    X, y = _token_data(n=40)
    E = np.random.RandomState(5).randn(V, 3)
    E_copy = E.copy()
    clf = clstm.LSTMClassifier(embeddings=E, freeze_embeddings=True, hidden_size=5,
                               max_iter=3, random_state=0).fit(X, y)
    np.testing.assert_array_equal(E, E_copy)
    np.testing.assert_array_equal(clf._model.input_layer.weight, E.astype(np.float32))
    assert "embedding.weight" not in clf._model.params
    assert clf.input_size_ == 3
    trained = clstm.LSTMClassifier(embeddings=E, hidden_size=5, max_iter=3,
                                   random_state=0).fit(X, y)
    np.testing.assert_array_equal(E, E_copy)
    w = trained._model.input_layer.weight
    assert not np.array_equal(w, E.astype(np.float32))
    np.testing.assert_array_equal(w[0], E[0].astype(np.float32))    # id 0 never occurs


def test_persistence_clone_pickle_save_load(tmp_path):
    X, y = _token_data(n=40)
    E = np.random.RandomState(5).randn(V, 4)
    clf = clstm.LSTMClassifier(embeddings=E, padding_idx=0, hidden_size=5, max_iter=2,
                               random_state=0).fit(X, y)
    p = clf.predict_proba(X)
    c = clone(clf)
    assert c.embeddings is clf.embeddings or np.array_equal(c.embeddings, E)
    assert c.get_params()["padding_idx"] == 0
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X), p)
    clf.save(tmp_path / "m.npz")
    loaded = clstm.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.predict_proba(X), p)
    np.testing.assert_array_equal(loaded.embeddings, E)
    np.testing.assert_array_equal(loaded._model.input_layer.weight, clf._model.input_layer.weight)
    # continued training from the file equals continued training of the original
    a = clf.set_params(warm_start=True, max_iter=1).fit(X, y)
    b = loaded.set_params(warm_start=True, max_iter=1).fit(X, y)
    np.testing.assert_array_equal(a._model.input_layer.weight, b._model.input_layer.weight)


def test_predict_step_on_tokens_equals_predict():
    X, y = _token_data(n=30)
    clf = clstm.LSTMClassifier(vocab_size=V, hidden_size=6, max_iter=2, random_state=0).fit(X, y)
    Xs = np.array([x[:2] for x in X[:4]])
    state = None
    for t in range(2):
        proba, state = clf.predict_proba_step(Xs[:, t], state)
    np.testing.assert_allclose(proba, clf.predict_proba(Xs), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="token id 99"):
        clf.predict_step(np.array([1, 99]))


def test_bad_token_input_and_parameters():
    X, y = _token_data(n=20)
    clf = clstm.LSTMClassifier(vocab_size=V, hidden_size=4, max_iter=1, random_state=0)
    with pytest.raises(ValueError, match=r"X\[1\]: token id 12 at position 0 is outside"):
        clf.fit([np.array([1, 2]), np.array([12])], [0, 1])
    with pytest.raises(ValueError, match="must be integers, got 1.5"):
        clf.fit([np.array([1, 2]), np.array([1.5])], [0, 1])
    clf.fit(X, y)
    with pytest.raises(ValueError, match="token id -3"):
        clf.predict([np.array([-3, 1])])
    for params, match in [(dict(vocab_size=0), "vocab_size"),
                          (dict(vocab_size=5, padding_idx=5), "padding_idx"),
                          (dict(embedding_dim=8), "token input only"),
                          (dict(vocab_size=5, embeddings=np.zeros((4, 2))), "4 rows"),
                          (dict(vocab_size=5, freeze_embeddings=True), "pretrained"),
                          (dict(embeddings=np.full((3, 2), np.nan)), "NaN")]:
        with pytest.raises(InvalidParameterError, match=match):
            clstm.LSTMRegressor(**params).fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="token input"):
        clf.set_params(warm_start=True, vocab_size=V + 1).fit(X, y)


@pytest.mark.parametrize("make", [
    lambda: clstm.LSTMClassifier(vocab_size=V, hidden_size=4, attention="dot"),
    lambda: clstm.LSTMRegressor(vocab_size=V, hidden_size=4, cell="gru", bidirectional=True),
    lambda: clstm.LSTMLanguageModel(vocab_size=V, hidden_size=4),
], ids=["classifier-attention", "regressor-gru-bi", "language_model"])
def test_onnx_export_of_token_estimators_equals_predict(make):
    """The graph looks the ids up in the embedding (Gather) and equals predict /
    predict_proba on a padded batch whose padding holds ids out of the vocabulary."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    X, y = _token_data(n=24)
    est = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if isinstance(est, clstm.LSTMLanguageModel):
            est.fit(X)
        else:
            est.fit(X, y.astype(float) if isinstance(est, clstm.LSTMRegressor) else y)
    lengths = np.array([len(x) for x in X])
    padded = np.full((len(X), lengths.max()), V + 99, np.int64)      # garbage padding
    for i, x in enumerate(X):
        padded[i, :len(x)] = x
    session = ort.InferenceSession(clstm.export_onnx(est, None).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {"X": padded, "lengths": lengths})))
    if "variable" in out:
        np.testing.assert_allclose(out["variable"], est.predict(X), atol=1e-5)
    elif isinstance(est, clstm.LSTMLanguageModel):
        for i, p in enumerate(est.predict_proba(X)):                   # per step, ragged
            np.testing.assert_allclose(out["probabilities"][i, :lengths[i]], p, atol=1e-6)
    else:
        np.testing.assert_allclose(out["probabilities"], est.predict_proba(X), atol=1e-6)
        np.testing.assert_array_equal(out["label"], est.predict(X))
    for bad_id in (V, -1):              # within a length: onnxruntime refuses, never wraps
        bad = padded.copy()
        bad[0, 0] = bad_id
        with pytest.raises(Exception, match="out of data bounds"):
            session.run(None, {"X": bad, "lengths": lengths})


@pytest.mark.parametrize("make", [lambda: clstm.LSTMClassifier(vocab_size=7),
                                  lambda: clstm.LSTMRegressor(vocab_size=7, embedding_dim=3),
                                  lambda: clstm.LSTMLanguageModel(vocab_size=7)],
                         ids=["classifier", "regressor", "language_model"])
def test_scikit_learn_parameter_checks_on_token_estimators(make):
    """The checks of scikit-learn's that do not feed real-valued X."""
    from sklearn.utils.estimator_checks import (
        check_get_params_invariance,
        check_no_attributes_set_in_init,
        check_parameters_default_constructible,
        check_set_params,
    )
    est = make()
    name = type(est).__name__
    for check in (check_no_attributes_set_in_init, check_get_params_invariance,
                  check_set_params, check_parameters_default_constructible):
        check(name, est)
    # fit leaves every parameter as given (the embeddings array included)
    E = np.random.RandomState(0).randn(7, 3)
    est = make().set_params(embeddings=E, vocab_size=None, embedding_dim=None, max_iter=1,
                            hidden_size=3)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v)
              for k, v in est.get_params().items()}
    X = [np.array([1, 2, 3]), np.array([4, 5])]
    y = np.array([0.0, 1.0]) if name == "LSTMRegressor" else np.array([0, 1])
    est.fit(X) if name == "LSTMLanguageModel" else est.fit(X, y)
    for k, v in est.get_params().items():
        assert np.array_equal(v, before[k]) if isinstance(v, np.ndarray) else v == before[k], k


def test_truncated_bptt_embedding_gradient_by_chunks():
    """With tbptt_steps=3 over 6 steps, chunk 1 reads only ids 0-2 and chunk 2 only
    ids 3-5. No loss of chunk 1 depends on chunk 2's inputs and chunk 2's state
    is detached from chunk 1, so: rows 3-5 get the full loss's gradient, rows
    0-2 the gradient of chunk 1's share of the loss alone (central differences
    of each). One sequence ends inside chunk 1 (the chunk-2 rows are a subset)."""
    model = _model(dict(cell="lstm", return_sequences=True))
    model.train()
    rng = np.random.RandomState(2)
    B, T, k = 3, 6, 3
    ids = np.concatenate([rng.randint(0, 3, size=(B, k)), rng.randint(3, 6, size=(B, k))], 1)
    lengths = np.array([6, 2, 5], dtype=np.int64)
    Y = rng.randint(0, 5, size=(B, T))
    W = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float64)
    _, grads = model.loss_and_grad(ids, lengths, Y, W, tbptt_steps=k)
    g = grads["embedding.weight"].toarray()
    share = W[:, :k].sum() / W.sum()

    def full():
        return model.loss_and_grad(ids, lengths, Y, W, need_grad=False)[0]

    def first_chunk():
        return share * model.loss_and_grad(ids[:, :k], np.minimum(lengths, k), Y[:, :k],
                                           W[:, :k], need_grad=False)[0]

    table = model.input_layer.weight
    eps = 1e-6
    for rows, loss in ((range(0, 3), first_chunk), (range(3, 6), full)):
        for ix in [(r, c) for r in rows for c in range(table.shape[1])]:
            w0 = table[ix]
            table[ix] = w0 + eps
            up = loss()
            table[ix] = w0 - eps
            down = loss()
            table[ix] = w0
            assert g[ix] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8), ix
