"""Attention pooling (clstm._attention, the estimators' ``attention=``): the forward
against a per-sequence NumPy oracle, masking by the lengths (garbage padding),
exact gradients by central differences in float64 (module, whole model,
inputs), float32 against float64, the estimator API (ragged input, lengths,
attention_weights, persistence, warm_start / partial_fit, refusals) and the
ONNX export."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError

import clstm
from clstm import LSTMClassifier, LSTMRegressor
from clstm._attention import AttentionPooling, reference_attention
from clstm._model import SequenceModel
from _finite_differences import check_loss_gradient

KINDS = ["additive", "dot"]
FAST = dict(hidden_size=6, max_iter=3, random_state=0)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _pooling(kind, d, dtype=np.float64, seed=0):
    return AttentionPooling(kind, d, dtype, rng=np.random.RandomState(seed))


def _outputs(B=5, T=7, d=4, seed=0):
    rng = np.random.default_rng(seed)
    out = rng.normal(size=(B, T, d))
    lengths = np.array([7, 1, 4, 6, 2])[:B]
    return out, lengths


# ----------------------------------------------------------------------------
# the module
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_forward_equals_the_per_sequence_reference_and_ignores_padding(kind, dtype, tol):
    out, lengths = _outputs()
    att = _pooling(kind, out.shape[2], dtype)
    garbage = out.copy()
    pad = np.arange(out.shape[1])[None, :] >= lengths[:, None]
    garbage[pad] = np.nan                   # padding may hold anything
    context, weights, _ = att.forward(garbage.astype(dtype), lengths)
    ref_context, ref_weights = reference_attention(kind, att.params, out, lengths)
    assert context.dtype == dtype and weights.dtype == dtype
    np.testing.assert_allclose(context, ref_context, rtol=tol, atol=tol)
    np.testing.assert_allclose(weights, ref_weights, rtol=tol, atol=tol)
    assert np.all(weights[pad] == 0)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=tol)
    # a length-1 sequence puts all its weight on its one step
    assert weights[1, 0] == 1 and np.allclose(context[1], out[1, 0], rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", KINDS)
def test_module_backward_equals_central_differences(kind):
    """d sum(R * context) / d (every parameter and every valid output), float64."""
    out, lengths = _outputs()
    att = _pooling(kind, out.shape[2], seed=3)
    # larger parameters than the initialisation: the softmax is far from uniform
    for v in att.params.values():
        v *= 3.0
    R = np.random.default_rng(1).normal(size=(out.shape[0], out.shape[2]))

    def f():
        return float(np.sum(R * att.forward(out, lengths)[0]))

    _, _, cache = att.forward(out, lengths)
    grad_out, grads = att.backward(R, cache)
    eps = 1e-6
    for name, value in list(att.params.items()) + [("out", out)]:
        analytic = grad_out if name == "out" else grads[name]
        flat = value.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up = f()
            flat[i] = old - eps
            down = f()
            flat[i] = old
            num = (up - down) / (2 * eps)
            assert abs(analytic.reshape(-1)[i] - num) <= 1e-8 + 1e-6 * abs(num), (name, i)
    pad = np.arange(out.shape[1])[None, :] >= lengths[:, None]
    assert np.all(grad_out[pad] == 0)


def test_bad_construction_is_refused():
    with pytest.raises(ValueError, match="attention must be None or one of"):
        AttentionPooling("luong", 3, np.float64, rng=np.random.RandomState(0))
    with pytest.raises(ValueError, match="shape"):
        AttentionPooling("dot", 3, np.float64, params={"query": np.zeros(4)})
    with pytest.raises(ValueError, match="dtype"):
        AttentionPooling("dot", 3, np.float64, params={"query": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="NaN"):
        AttentionPooling("dot", 3, np.float64, params={"query": np.full(3, np.nan)})


# ----------------------------------------------------------------------------
# the model: exact gradients through attention and network
# ----------------------------------------------------------------------------
def _model(kind, loss, dtype="float64", bidirectional=True, num_layers=2, n_out=3):
    network_params = dict(hidden_size=3, num_layers=num_layers, bidirectional=bidirectional,
                          dropout=0.0, recurrent_dropout=0.0, dtype=dtype, n_jobs=None)
    return SequenceModel.create(2, network_params, n_out, loss, False,
                                np.random.RandomState(0), attention=kind)


def _batch(loss, n_out, B=4, T=5, F=2, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(B, T, F))
    lengths = np.array([5, 3, 4, 1])
    W = rng.uniform(0.5, 2, size=B)
    if loss == "squared_error":
        Y = rng.normal(size=(B, n_out))
    elif loss == "log_loss":
        Y = rng.integers(0, 2, (B, 1)).astype(float)
    else:
        Y = rng.integers(0, n_out, B)
    return X, lengths, Y, W


@pytest.mark.parametrize("kind,loss,bidirectional", [("additive", "squared_error", True),
                                                     ("dot", "softmax", True),
                                                     ("additive", "log_loss", False),
                                                     ("dot", "squared_error", False)])
def test_model_gradient_equals_central_differences(kind, loss, bidirectional):
    """Every parameter (network, attention, head), with lengths and L2, float64."""
    n_out = 1 if loss == "log_loss" else 3
    model = _model(kind, loss, bidirectional=bidirectional, n_out=n_out)
    for v in model.attention.params.values():
        v *= 3.0
    X, lengths, Y, W = _batch(loss, n_out)
    alpha = 0.3
    loss0, grads = model.loss_and_grad(X, lengths, Y, W, alpha=alpha)
    assert {k for k in grads if k.startswith("attention.")} == {
        "attention." + k for k in model.attention.params}
    rng = np.random.default_rng(2)
    check_loss_gradient(model, grads, ((X, lengths, Y, W), {"alpha": alpha}),
                        lambda name, size: (range(size) if name.startswith("attention.")
                                            else rng.choice(size, min(5, size), replace=False)))


@pytest.mark.parametrize("kind", KINDS)
def test_input_gradient_through_attention_and_network(kind):
    """The per-step gradient the attention hands to the network's backward gives
    d sum(R * context) / dX, by central differences in float64."""
    model = _model(kind, "squared_error")
    net, att = model.network, model.attention
    X, lengths, _, _ = _batch("squared_error", 3)
    R = np.random.default_rng(3).normal(size=(X.shape[0], att.input_size))

    def f(X):
        out, _ = net.run(X, lengths=lengths, keep_cache=False)
        return float(np.sum(R * att.forward(out, lengths)[0]))

    out, _ = net.run(X, lengths=lengths)
    _, _, cache = att.forward(out, lengths)
    grad_X = net.backward_state(att.backward(R, cache)[0])
    net.clear_cache()
    eps = 1e-6
    for index in np.ndindex(X.shape):
        if index[1] >= lengths[index[0]]:
            assert grad_X[index] == 0
            continue
        Xp, Xm = X.copy(), X.copy()
        Xp[index] += eps
        Xm[index] -= eps
        num = (f(Xp) - f(Xm)) / (2 * eps)
        assert abs(grad_X[index] - num) <= 1e-8 + 1e-6 * abs(num), index


@pytest.mark.parametrize("kind", KINDS)
def test_float32_gradients_agree_with_float64(kind):
    m64 = _model(kind, "squared_error", "float64")
    m32 = _model(kind, "squared_error", "float32")
    for name, p in m64.params.items():
        m32.params[name][...] = p.astype(np.float32)
    X, lengths, Y, W = _batch("squared_error", 3)
    l64, g64 = m64.loss_and_grad(X, lengths, Y, W, alpha=0.1)
    l32, g32 = m32.loss_and_grad(X.astype(np.float32), lengths, Y.astype(np.float32), W,
                                 alpha=0.1)
    assert abs(l32 - l64) <= 1e-5 * abs(l64)
    for name in g64:
        assert g32[name].dtype == np.float32
        np.testing.assert_allclose(g32[name], g64[name], rtol=2e-3, atol=2e-5, err_msg=name)


def test_model_refuses_truncated_bptt_and_per_step_heads():
    model = _model("dot", "squared_error", bidirectional=False)
    X, lengths, Y, W = _batch("squared_error", 3)
    with pytest.raises(ValueError, match="truncated BPTT"):
        model.loss_and_grad(X, lengths, Y, W, tbptt_steps=2)
    with pytest.raises(ValueError, match="return_sequences=False"):
        SequenceModel(model.network, model.head_weight, model.head_bias, "squared_error",
                      True, model.attention)


# ----------------------------------------------------------------------------
# estimators
# ----------------------------------------------------------------------------
def _data(n=40, T=8, F=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F)) * 2 + 1
    lengths = rng.integers(1, T + 1, size=n)
    return X, lengths


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("Est", [LSTMRegressor, LSTMClassifier])
def test_padding_never_changes_a_result(kind, Est):
    X, lengths = _data()
    y = X[:, 0, 0] if Est is LSTMRegressor else (X[:, 0, 0] > 1).astype(int)
    ragged = [X[i, :lengths[i]] for i in range(len(X))]
    est = Est(attention=kind, bidirectional=True, **FAST).fit(ragged, y)
    garbage = X.copy()
    garbage[np.arange(X.shape[1])[None, :] >= lengths[:, None]] = np.nan
    same = Est(attention=kind, bidirectional=True, **FAST).fit(garbage, y, lengths=lengths)
    np.testing.assert_array_equal(est.predict(ragged), same.predict(garbage, lengths=lengths))
    a_list = est.attention_weights(ragged)
    a_padded = same.attention_weights(garbage, lengths=lengths)
    assert isinstance(a_list, list) and [a.shape for a in a_list] == [(L,) for L in lengths]
    for a, b in zip(a_list, a_padded):
        np.testing.assert_array_equal(a, b)
        assert np.all(a >= 0) and abs(a.sum() - 1) < 1e-6
    # a sequence alone gives what it gives in a batch
    np.testing.assert_allclose(est.predict(ragged[:1]), est.predict(ragged)[:1],
                               rtol=1e-6, atol=1e-7)


def test_attention_weights_of_an_array_and_predict_use_the_same_pooling():
    X, _ = _data()
    reg = LSTMRegressor(attention="additive", dtype="float64", **FAST).fit(X, X[:, 3, 0])
    a = reg.attention_weights(X)
    assert isinstance(a, np.ndarray) and a.shape == X.shape[:2] and a.dtype == np.float64
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-12)
    # predict by hand: network outputs, the returned weights, the head, de-standardisation
    model = reg._model
    Xs = (X - reg._x_stats[0]) / reg._x_stats[1]
    out, _ = model.network.forward(Xs)
    context = np.einsum("bt,btd->bd", a, out)
    z = context @ model.head_weight + model.head_bias
    pred = z[:, 0] * reg._y_stats[1][0] + reg._y_stats[0][0]
    np.testing.assert_allclose(reg.predict(X), pred, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("Est", [LSTMRegressor, LSTMClassifier])
def test_persistence_clone_and_pickle(Est, tmp_path):
    X, _ = _data()
    y = X[:, 0, 0] if Est is LSTMRegressor else (X[:, 0, 0] > 1).astype(int)
    est = Est(attention="dot", **FAST).fit(X, y)
    assert clone(est).get_params()["attention"] == "dot"
    assert est.set_params(attention="additive").attention == "additive"
    est.set_params(attention="dot")
    path = tmp_path / "m.npz"
    est.save(path)
    for other in (clstm.load(path), pickle.loads(pickle.dumps(est))):
        assert other.attention == "dot" and other._model.attention.kind == "dot"
        np.testing.assert_array_equal(other.predict(X), est.predict(X))
        np.testing.assert_array_equal(other.attention_weights(X), est.attention_weights(X))
    # training continues from the loaded model exactly as from the original
    a = clstm.load(path).partial_fit(X, y)
    b = est.partial_fit(X, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


def test_plain_files_load_without_attention(tmp_path):
    X, _ = _data()
    reg = LSTMRegressor(**FAST).fit(X, X[:, 0, 0])
    reg.save(tmp_path / "plain.npz")
    loaded = clstm.load(tmp_path / "plain.npz")
    assert loaded.attention is None and loaded._model.attention is None
    np.testing.assert_array_equal(loaded.predict(X), reg.predict(X))


def test_warm_start_and_partial_fit_continue_and_refuse_a_changed_attention():
    X, _ = _data()
    y = X[:, 0, 0]
    reg = LSTMRegressor(attention="additive", warm_start=True, **FAST).fit(X, y)
    before = reg._model.attention.params["weight"].copy()
    n_iter = reg.n_iter_
    reg.fit(X, y)
    assert reg.n_iter_ == 2 * n_iter
    assert not np.array_equal(reg._model.attention.params["weight"], before)
    reg.set_params(attention="dot")
    with pytest.raises(ValueError, match="attention='dot' differs from the fitted model's "
                                         "'additive'"):
        reg.fit(X, y)
    reg.set_params(attention=None)
    with pytest.raises(ValueError, match="differs from the fitted model"):
        reg.partial_fit(X, y)


def test_attention_learns_and_the_l2_penalty_covers_its_weights():
    X, _ = _data(n=60)
    reg = LSTMRegressor(attention="additive", alpha=0.0, learning_rate_init=1e-2,
                        **dict(FAST, max_iter=30))
    reg.fit(X, X[:, :, 0].mean(axis=1))
    assert reg.loss_curve_[-1] < 0.5 * reg.loss_curve_[0]
    names = reg._model.weight_names()
    assert "attention.weight" in names and "attention.score_vector" in names
    assert "attention.bias" not in names


def test_bad_parameters_and_unavailable_methods_are_refused_clearly():
    X, _ = _data()
    y = X[:, 0, 0]
    with pytest.raises(ValueError, match="'attention' must be None, 'additive' or 'dot'"):
        LSTMRegressor(attention="bahdanau").fit(X, y)
    with pytest.raises(ValueError, match="'attention' must be None, 'additive' or 'dot'"):
        LSTMRegressor(attention=True).fit(X, y)
    with pytest.raises(ValueError, match="return_sequences=False"):
        LSTMRegressor(attention="dot", return_sequences=True).fit(X, X[..., 0])
    with pytest.raises(ValueError, match="truncated BPTT"):
        LSTMRegressor(attention="dot", tbptt_steps=3).fit(X, y)
    with pytest.raises(NotFittedError):
        LSTMRegressor(attention="dot").attention_weights(X)
    plain = LSTMRegressor(**FAST).fit(X, y)
    with pytest.raises(ValueError, match="attention=None: there are no attention weights"):
        plain.attention_weights(X)
    att = LSTMClassifier(attention="dot", **FAST).fit(X, y > 1)
    with pytest.raises(ValueError, match="use predict on the whole window"):
        att.predict_step(X[:, 0])
    with pytest.raises(ValueError, match="use predict on the whole window"):
        att.predict_proba_step(X[:, 0])
    with pytest.raises(ValueError, match="features per timestep"):
        att.attention_weights(X[..., :1])


# ----------------------------------------------------------------------------
# ONNX export
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind,bidirectional", [("additive", True), ("dot", False)])
@pytest.mark.parametrize("Est", [LSTMRegressor, LSTMClassifier])
def test_onnx_export_equals_predict_on_ragged_batches(kind, bidirectional, Est):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    X, lengths = _data()
    y = X[:, 0, 0] if Est is LSTMRegressor else (X[:, 0, 0] > 1).astype(int)
    est = Est(attention=kind, bidirectional=bidirectional, **FAST).fit(X, y, lengths=lengths)
    session = ort.InferenceSession(clstm.export_onnx(est, None).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    garbage = X.copy()
    garbage[np.arange(X.shape[1])[None, :] >= lengths[:, None]] = 1e3
    got = session.run(None, {"X": garbage.astype(np.float32),
                             "lengths": lengths.astype(np.int64)})
    if Est is LSTMRegressor:
        np.testing.assert_allclose(got[0], est.predict(X, lengths=lengths), rtol=1e-4,
                                   atol=1e-5)
    else:
        np.testing.assert_array_equal(got[0], est.predict(X, lengths=lengths))
        np.testing.assert_allclose(got[1], est.predict_proba(X, lengths=lengths), rtol=1e-4,
                                   atol=1e-5)
    full = ort.InferenceSession(clstm.export_onnx(est, None, lengths=False).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(full.run(None, {"X": X.astype(np.float32)})[-1],
                               est.predict(X) if Est is LSTMRegressor else est.predict_proba(X),
                               rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# where attention matters: find the marked step
# ----------------------------------------------------------------------------
def test_attention_beats_the_last_state_on_the_marked_step_task():
    """Sequences of 100 steps, one of them marked; the label is the sign of the
    value at the marked step. Same hidden size, epochs and seed: the last
    state stays at chance, attention pooling finds the step (about 1.5 s)."""
    from clstm.demo_attention import marked_step_task

    T = 100
    X_train, y_train, _ = marked_step_task(512, T, seed=0)
    X_test, y_test, marks = marked_step_task(512, T, seed=1)
    params = dict(hidden_size=8, max_iter=8, learning_rate_init=1e-2, random_state=0)
    plain = LSTMClassifier(**params).fit(X_train, y_train).score(X_test, y_test)
    scores, near_mark = {}, {}
    for kind in KINDS:
        clf = LSTMClassifier(attention=kind, **params).fit(X_train, y_train)
        scores[kind] = clf.score(X_test, y_test)
        # the weight on the marked step and the two after it (whose outputs
        # still hold its value), against 3 / T for uniform weights
        a = clf.attention_weights(X_test)
        near_mark[kind] = np.mean([a[i, m:m + 3].sum() for i, m in enumerate(marks)])
    assert plain < 0.6, plain
    assert min(scores.values()) > 0.9, scores
    assert near_mark["additive"] > 0.3 and near_mark["dot"] > 2 * 3 / T, near_mark
