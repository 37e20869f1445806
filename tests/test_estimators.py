"""LSTMRegressor / LSTMClassifier: API, gradients, persistence, learning, bad input."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

import clstm
from clstm import LSTMClassifier, LSTMRegressor
from clstm._losses import logistic_loss, softmax_cross_entropy, squared_error
from clstm._model import SequenceModel

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

FAST = dict(hidden_size=8, max_iter=3, random_state=0)


def _data(n=40, T=6, F=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F))
    return X, X[:, 0, 0] + 0.5 * X[:, -1, 1]


def _params(est):
    return {k: v.copy() for k, v in est._model.params.items()}


# ----------------------------------------------------------------------------
# losses and the whole-estimator gradient
# ----------------------------------------------------------------------------
def _fd_check(loss_fn, Z, Y, W):
    loss, grad = loss_fn(Z, Y, W, W.sum())
    num = np.zeros_like(Z)
    eps = 1e-6
    for idx in np.ndindex(Z.shape):
        Zp, Zm = Z.copy(), Z.copy()
        Zp[idx] += eps
        Zm[idx] -= eps
        num[idx] = (loss_fn(Zp, Y, W, W.sum())[0] - loss_fn(Zm, Y, W, W.sum())[0]) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


def test_loss_gradients_and_stability():
    rng = np.random.default_rng(0)
    W = rng.uniform(0, 2, size=5)
    _fd_check(squared_error, rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), W)
    _fd_check(logistic_loss, rng.normal(size=(5, 1)), rng.integers(0, 2, (5, 1)) * 1.0, W)
    _fd_check(softmax_cross_entropy, rng.normal(size=(5, 4)), rng.integers(0, 4, 5), W)
    big = np.array([[1e4], [-1e4]])
    loss, grad = logistic_loss(big, np.array([[1.0], [0.0]]), np.ones(2), 2.0)
    assert loss == 0.0 and np.isfinite(grad).all()
    loss, grad = logistic_loss(big, np.array([[0.0], [1.0]]), np.ones(2), 2.0)
    assert np.isclose(loss, 1e4) and np.isfinite(grad).all()
    loss, grad = softmax_cross_entropy(np.array([[1e4, 0.0, -1e4]]), np.array([2]), np.ones(1), 1.0)
    assert np.isclose(loss, 2e4) and np.isfinite(grad).all()


@pytest.mark.parametrize("loss,return_sequences,bidirectional,tbptt",
                         [("squared_error", False, False, None),
                          ("softmax", False, True, None),
                          ("log_loss", True, False, None),
                          ("squared_error", True, False, 5)])
def test_estimator_loss_gradient_finite_differences(loss, return_sequences, bidirectional, tbptt):
    """Head + network (+ lengths) + L2, float64, central differences. (Truncated BPTT
    with chunks shorter than T is, by design, not the gradient of the full loss.)"""
    rng = np.random.default_rng(1)
    B, T, F, n_out = 4, 5, 2, 3 if loss != "log_loss" else 1
    network_params = dict(hidden_size=3, num_layers=2, bidirectional=bidirectional,
                          dropout=0.0, recurrent_dropout=0.0, dtype="float64", n_jobs=None)
    model = SequenceModel.create(F, network_params, n_out, loss, return_sequences,
                                 np.random.RandomState(0))
    X = rng.normal(size=(B, T, F))
    lengths = np.array([5, 3, 4, 1])
    lead = (B, T) if return_sequences else (B,)
    W = rng.uniform(0.5, 2, size=lead)
    if return_sequences:
        W[np.arange(T)[None] >= lengths[:, None]] = 0
    if loss == "squared_error":
        Y = rng.normal(size=lead + (n_out,))
    elif loss == "log_loss":
        Y = rng.integers(0, 2, lead + (1,)).astype(float)
    else:
        Y = rng.integers(0, n_out, lead)
    alpha = 0.3
    loss0, grads = model.loss_and_grad(X, lengths, Y, W, alpha=alpha, tbptt_steps=tbptt)
    params = model.params
    eps = 1e-6
    for name, p in params.items():
        flat = p.reshape(-1)
        for i in rng.choice(flat.size, size=min(6, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + eps
            lp, _ = model.loss_and_grad(X, lengths, Y, W, alpha=alpha, tbptt_steps=tbptt,
                                        need_grad=False)
            flat[i] = old - eps
            lm, _ = model.loss_and_grad(X, lengths, Y, W, alpha=alpha, tbptt_steps=tbptt,
                                        need_grad=False)
            flat[i] = old
            num = (lp - lm) / (2 * eps)
            assert abs(grads[name].reshape(-1)[i] - num) <= 1e-6 + 1e-5 * abs(num), (name, i)


# ----------------------------------------------------------------------------
# inputs and outputs
# ----------------------------------------------------------------------------
def test_input_layouts_and_ragged_exactness():
    X, y = _data()
    reg = LSTMRegressor(**FAST).fit(X, y)
    assert reg.n_features_in_ == 2 and reg.input_size_ == 2
    assert reg.predict(X).shape == (40,) and reg.predict(X).dtype == np.float64
    # ragged: padding never changes a result
    rng = np.random.default_rng(3)
    seqs = [rng.normal(size=(rng.integers(1, 9), 2)) for _ in range(25)]
    yr = np.array([s[0, 0] for s in seqs])
    a = LSTMRegressor(**FAST).fit(seqs, yr)
    pred_ragged = a.predict(seqs)
    pred_single = np.array([a.predict([s])[0] for s in seqs[:5]])
    np.testing.assert_allclose(pred_ragged[:5], pred_single, rtol=1e-5, atol=1e-6)
    # univariate 2-D == 3-D with one feature
    X2 = X[:, :, 0]
    r2 = LSTMRegressor(**FAST).fit(X2, y)
    r3 = LSTMRegressor(**FAST).fit(X2[:, :, None], y)
    np.testing.assert_array_equal(r2.predict(X2), r3.predict(X2[:, :, None]))
    assert r2.predict(X2[:4, :3, None]).shape == (4,)   # 3-D: any length
    with pytest.raises(ValueError, match="expecting 6 features"):
        r2.predict(X2[:, :3])


def test_multioutput_and_per_step_targets():
    X, y = _data()
    Y2 = np.c_[y, -y]
    reg = LSTMRegressor(**FAST).fit(X, Y2)
    assert reg.predict(X).shape == (40, 2)
    seq = LSTMRegressor(return_sequences=True, **FAST).fit(X, X[:, :, 0].cumsum(1))
    assert seq.predict(X).shape == (40, 6)
    seq3 = LSTMRegressor(return_sequences=True, **FAST).fit(X, X.cumsum(1))
    assert seq3.predict(X).shape == (40, 6, 2)
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(rng.integers(2, 7), 1)) for _ in range(20)]
    labels = [np.where(s[:, 0] > 0, "up", "down") for s in seqs]
    clf = LSTMClassifier(return_sequences=True, **FAST).fit(seqs, labels)
    out = clf.predict(seqs)
    assert [len(o) for o in out] == [len(s) for s in seqs]
    assert set(np.concatenate(out)) <= {"up", "down"}
    proba = clf.predict_proba(seqs)
    assert all(p.shape == (len(s), 2) for p, s in zip(proba, seqs))
    assert 0 <= clf.score(seqs, labels) <= 1
    bad = [l[:-1] if i == 3 else l for i, l in enumerate(labels)]
    with pytest.raises(ValueError, match=r"y\[3\] has .* steps but X\[3\] has"):
        LSTMClassifier(return_sequences=True, **FAST).fit(seqs, bad)


def test_classifier_labels_binary_multiclass():
    X, y = _data()
    for labels in (np.where(y > 0, "yes", "no"), np.digitize(y, [-0.5, 0.5]) * 10 + 1,
                   y > 0):
        clf = LSTMClassifier(**FAST).fit(X, labels)
        np.testing.assert_array_equal(clf.classes_, np.unique(labels))
        p = clf.predict_proba(X)
        assert p.shape == (40, len(clf.classes_))
        np.testing.assert_allclose(p.sum(1), 1.0)
        np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), p, rtol=1e-12)
        assert clf.predict(X).dtype == np.asarray(labels).dtype


# ----------------------------------------------------------------------------
# training machinery
# ----------------------------------------------------------------------------
def test_same_seed_bit_identical_and_pickle_save_load(tmp_path):
    X, y = _data()
    kw = dict(hidden_size=8, max_iter=4, dropout=0.2, recurrent_dropout=0.2, num_layers=2)
    a = LSTMRegressor(random_state=7, **kw).fit(X, y)
    b = LSTMRegressor(random_state=7, **kw).fit(X, y)
    c = LSTMRegressor(random_state=8, **kw).fit(X, y)
    for k, v in _params(a).items():
        np.testing.assert_array_equal(v, _params(b)[k])
    assert not np.array_equal(a.predict(X), c.predict(X))
    for est in (a, LSTMClassifier(**FAST).fit(X, np.where(y > 0, "p", "n"))):
        restored = pickle.loads(pickle.dumps(est))
        np.testing.assert_array_equal(restored.predict(X), est.predict(X))
        path = tmp_path / "model.clstm"
        est.save(path)
        loaded = clstm.load(path)
        assert type(loaded) is type(est) and loaded.get_params() == est.get_params()
        np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
        # training continues exactly as the original would
        target = est.predict(X)
        for obj in (est, loaded, restored):
            obj.set_params(warm_start=True, max_iter=2).fit(X, target)
        np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
        np.testing.assert_array_equal(restored.predict(X), est.predict(X))
    assert list(tmp_path.iterdir()) == [tmp_path / "model.clstm"]   # no temp file left


def test_load_rejects_bad_files(tmp_path):
    X, y = _data()
    reg = LSTMRegressor(**FAST).fit(X, y)
    path = tmp_path / "m.npz"
    reg.save(path)
    data = path.read_bytes()
    (tmp_path / "trunc").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk").write_bytes(b"not a model at all")
    np.savez(tmp_path / "foreign.npz", a=np.arange(3))
    for name in ("trunc", "junk", "foreign.npz"):
        with pytest.raises(ValueError, match="not a readable clstm model file"):
            clstm.load(tmp_path / name)
    import json
    with np.load(path) as z:
        arrays = dict(z)
    meta = json.loads(arrays["__metadata__"].tobytes())
    meta["format_version"] = 99
    arrays["__metadata__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "newer.npz", **arrays)
    with pytest.raises(ValueError, match="newer clstm"):
        clstm.load(tmp_path / "newer.npz")
    with pytest.raises(ValueError, match="holds a LSTMRegressor"):
        LSTMClassifier.load(path)


def test_sample_weight_zero_equals_left_out_and_class_weight():
    X, y = _data()
    sw = np.ones(40)
    sw[::3] = 0
    a = LSTMRegressor(**FAST).fit(X, y, sample_weight=sw)
    b = LSTMRegressor(**FAST).fit(X[sw > 0], y[sw > 0])
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    assert a.score(X, y, sample_weight=sw) == pytest.approx(b.score(X[sw > 0], y[sw > 0]))
    labels = (y > 0).astype(int)
    heavy = LSTMClassifier(class_weight={0: 100.0, 1: 0.01}, **dict(FAST, max_iter=20)).fit(
        X, labels)
    assert np.mean(heavy.predict(X) == 0) > 0.9
    LSTMClassifier(class_weight="balanced", **FAST).fit(X, labels)


def test_early_stopping_warm_start_partial_fit_solvers():
    X, y = _data(n=80)
    es = LSTMRegressor(early_stopping=True, n_iter_no_change=2, hidden_size=8, max_iter=30,
                       random_state=0).fit(X, y)
    assert len(es.validation_scores_) == es.n_iter_ and es.best_loss_ is None
    assert es.best_validation_score_ == max(es.validation_scores_)
    ws = LSTMRegressor(warm_start=True, **FAST).fit(X, y)
    ws.fit(X, y)
    assert ws.n_iter_ == 6 and len(ws.loss_curve_) == 6
    clf = LSTMClassifier(**FAST)
    labels = np.where(y > 0, "a", "b")
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, labels)
    clf.partial_fit(X[:40], labels[:40], classes=["a", "b", "c"])
    clf.partial_fit(X[40:], labels[40:])
    assert clf.n_iter_ == 2 and list(clf.classes_) == ["a", "b", "c"]
    before = _params(clf)
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(X, np.where(y > 0, "a", "zzz"))
    for k, v in _params(clf).items():       # failed partial_fit changed nothing
        np.testing.assert_array_equal(v, before[k])
    assert clf.n_iter_ == 2
    for solver in ("sgd", "rmsprop", "adam"):
        reg = LSTMRegressor(solver=solver, hidden_size=8, max_iter=40, random_state=0,
                            learning_rate_init=0.01 if solver != "adam" else 0.003)
        reg.fit(X, y)
        assert reg.loss_curve_[-1] < 0.9 * reg.loss_curve_[0], solver


def test_divergence_and_interrupt_keep_last_epoch(monkeypatch):
    X, y = _data()
    reg = LSTMRegressor(**FAST).fit(X, y)
    good = _params(reg)
    real = SequenceModel.loss_and_grad
    calls = {"n": 0}

    def exploding(self, *args, **kwargs):
        calls["n"] += 1
        loss, grads = real(self, *args, **kwargs)
        return (np.nan if calls["n"] > 3 else loss), grads

    monkeypatch.setattr(SequenceModel, "loss_and_grad", exploding)
    reg.set_params(warm_start=True, max_iter=5)
    with pytest.raises(FloatingPointError, match="diverged in epoch 5"):
        reg.fit(X, y)            # 2 batches per epoch: batch 4 is in epoch 5 (3 + 2)
    assert reg.n_iter_ == 4 and len(reg.loss_curve_) == 4
    assert all(np.isfinite(v).all() for v in _params(reg).values())
    assert any(not np.array_equal(v, good[k]) for k, v in _params(reg).items())

    calls["n"] = 0

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SequenceModel, "loss_and_grad", interrupted)
    fresh = LSTMRegressor(**dict(FAST, max_iter=5))
    with pytest.warns(UserWarning, match="interrupted"):
        fresh.fit(X, y)
    assert fresh.n_iter_ == 1 and len(fresh.loss_curve_) == 1
    monkeypatch.setattr(SequenceModel, "loss_and_grad", real)
    one = LSTMRegressor(**dict(FAST, max_iter=1)).fit(X, y)
    for k, v in _params(one).items():
        np.testing.assert_array_equal(v, _params(fresh)[k])


def test_meta_estimators():
    X, y = _data(n=30)
    X2 = X[:, :, 0]
    reg = LSTMRegressor(**FAST)
    c = clone(reg)
    assert c.get_params() == reg.get_params() and not hasattr(c, "n_iter_")
    pipe = make_pipeline(FunctionTransformer(lambda a: a * 2.0), LSTMRegressor(**FAST))
    pipe.fit(X2, y).predict(X2)
    scores = cross_val_score(LSTMRegressor(**FAST), X, y, cv=3)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    gs = GridSearchCV(LSTMClassifier(**FAST), {"hidden_size": [4, 8]}, cv=2)
    gs.fit(X, y > 0)
    assert gs.best_params_["hidden_size"] in (4, 8)


# ----------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("param,value", [("hidden_size", 0), ("num_layers", 1.5),
                                         ("dropout", 1.0), ("solver", "lbfgs"),
                                         ("learning_rate_init", -1.0), ("batch_size", 0),
                                         ("clip_norm", 0.0), ("validation_fraction", 1.0),
                                         ("tbptt_steps", 0), ("dtype", "float16"),
                                         ("max_iter", 0), ("alpha", -1.0), ("n_jobs", 0),
                                         ("recurrent_dropout", -0.1), ("bidirectional", 1)])
def test_invalid_hyperparameters_named(param, value):
    X, y = _data()
    with pytest.raises(ValueError, match=param):
        LSTMRegressor(**{**FAST, param: value}).fit(X, y)


def test_bad_inputs_clear_errors_and_no_half_update():
    X, y = _data()
    with pytest.raises(NotFittedError):
        LSTMRegressor().predict(X)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        LSTMRegressor(**FAST).fit(X, y[:-1])
    with pytest.raises(ValueError, match="sample_weight"):
        LSTMRegressor(**FAST).fit(X, y, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="[Nn]egative"):
        LSTMRegressor(**FAST).fit(X, y, sample_weight=-np.ones(40))
    with pytest.raises(ValueError, match="NaN"):
        LSTMRegressor(**FAST).fit(np.where(X > 2, np.nan, X), y)
    with pytest.raises(ValueError, match="features per timestep"):
        [x[:, :1] for x in X]
        LSTMRegressor(**FAST).fit(X, y).predict(X[:, :, :1])
    with pytest.raises(ValueError, match="X\\[1\\] has 1 features"):
        LSTMRegressor(**FAST).fit([X[0], X[1][:, :1]], y[:2])
    with pytest.raises(ValueError, match="Unknown label type"):
        LSTMClassifier(**FAST).fit(X, y)
    with pytest.raises(ValueError, match="bidirectional"):
        LSTMRegressor(tbptt_steps=2, bidirectional=True, **FAST).fit(X, y)
    reg = LSTMRegressor(**FAST).fit(X, y)
    snap = (dict(reg.__dict__), _params(reg))
    for bad in ((X[:, :, :1], y), (X, y[:5]), (X, np.full(40, np.inf))):
        reg.set_params(warm_start=True)
        with pytest.raises(ValueError):
            reg.fit(*bad)
        with pytest.raises(ValueError):
            reg.partial_fit(*bad)
    assert reg.__dict__.keys() == snap[0].keys() and reg.n_iter_ == snap[0]["n_iter_"]
    for k, v in _params(reg).items():
        np.testing.assert_array_equal(v, snap[1][k])


# ----------------------------------------------------------------------------
# learning
# ----------------------------------------------------------------------------
@pytest.mark.slow
def test_regressor_learns_long_memory():
    """Target = value at step 0 of a 30-step noisy sequence: needs memory across 30 steps."""
    rng = np.random.default_rng(0)
    n, T = 600, 30
    X = rng.normal(size=(n, T, 1))
    y = X[:, 0, 0].copy()
    reg = LSTMRegressor(hidden_size=32, max_iter=100, learning_rate_init=3e-3,
                        n_iter_no_change=100, random_state=0).fit(X[:500], y[:500])
    r2 = reg.score(X[500:], y[500:])
    assert r2 > 0.9, r2


@pytest.mark.slow
def test_classifier_digits_as_rows():
    digits = load_digits()
    X = digits.images / 16.0           # (1797, 8, 8): 8 steps of 8 pixels
    y = digits.target
    clf = LSTMClassifier(hidden_size=64, max_iter=40, learning_rate_init=3e-3,
                         random_state=0).fit(X[:1400], y[:1400])
    acc = clf.score(X[1400:], y[1400:])
    assert acc >= 0.9, acc
