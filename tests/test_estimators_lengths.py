"""``lengths`` for padded arrays: exactly the ragged-list semantics.

Every method that takes ``lengths`` on a padded X whose padding holds
garbage (NaN, huge values) gives bit for bit what it gives on the ragged
list ``[X[i, :lengths[i]]]``; ``lengths`` passes through scikit-learn's
metadata routing into a Pipeline and GridSearchCV.
"""

import numpy as np
import pytest
import sklearn
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from clstm import LSTMClassifier, LSTMRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

FAST = dict(hidden_size=6, max_iter=3, random_state=0)


def _ragged(n=30, T=9, F=2, seed=0):
    """Ragged sequences, the same padded with garbage (NaN and 1e300), and lengths."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, T + 1, size=n)
    lengths[0] = T
    seqs = [rng.standard_normal((t, F)) for t in lengths]
    padded = np.full((n, T, F), np.nan)
    padded[:, ::2] = 1e300
    for i, s in enumerate(seqs):
        padded[i, :len(s)] = s
    return seqs, padded, lengths


def _garbage_like(A, lengths):
    """Per-step targets A (n, T, ...) with garbage past each length."""
    out = np.array(A, dtype=np.float64)
    out[np.arange(A.shape[1])[None, :] >= lengths[:, None]] = -7e200
    return out


def _equal(a, b):
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    else:
        np.testing.assert_array_equal(a, b)


def test_regressor_fit_predict_score_with_lengths_equal_the_ragged_list():
    seqs, padded, lengths = _ragged()
    y = np.array([s[:, 0].sum() for s in seqs])
    sw = np.linspace(0.5, 2.0, len(seqs))
    ref = LSTMRegressor(**FAST).fit(seqs, y, sample_weight=sw)
    reg = LSTMRegressor(**FAST).fit(padded, y, sample_weight=sw, lengths=lengths)
    assert reg.loss_curve_ == ref.loss_curve_
    _equal(reg.predict(padded, lengths=lengths), ref.predict(seqs))
    assert reg.score(padded, y, lengths=lengths) == ref.score(seqs, y)
    assert (reg.score(padded, y, sample_weight=sw, lengths=lengths)
            == ref.score(seqs, y, sample_weight=sw))
    ref.partial_fit(seqs, y)
    reg.partial_fit(padded, y, lengths=lengths)
    assert reg.loss_curve_ == ref.loss_curve_
    _equal(reg.predict(padded, lengths=lengths), ref.predict(seqs))


def test_per_step_targets_padded_like_X():
    seqs, padded, lengths = _ragged()
    y_seqs = [np.cumsum(s, axis=0) for s in seqs]                 # (T_i, 2) per step
    Y = np.zeros(padded.shape)
    for i, t in enumerate(y_seqs):
        Y[i, :len(t)] = t
    Y = _garbage_like(Y, lengths)
    ref = LSTMRegressor(return_sequences=True, **FAST).fit(seqs, y_seqs)
    reg = LSTMRegressor(return_sequences=True, **FAST).fit(padded, Y, lengths=lengths)
    assert reg.loss_curve_ == ref.loss_curve_
    pred = reg.predict(padded, lengths=lengths)
    assert isinstance(pred, list) and [len(p) for p in pred] == list(lengths)
    _equal(pred, ref.predict(seqs))
    assert reg.score(padded, Y, lengths=lengths) == ref.score(seqs, y_seqs)

    labels = [np.where(s[:, 0] > 0, "pos", "neg") for s in seqs]
    L = np.full(padded.shape[:2], "junk", dtype=object)
    for i, lab in enumerate(labels):
        L[i, :len(lab)] = lab
    ref = LSTMClassifier(return_sequences=True, **FAST).fit(seqs, labels)
    clf = LSTMClassifier(return_sequences=True, **FAST).fit(padded, L, lengths=lengths)
    np.testing.assert_array_equal(clf.classes_, ["neg", "pos"])
    assert clf.loss_curve_ == ref.loss_curve_
    _equal(clf.predict_proba(padded, lengths=lengths), ref.predict_proba(seqs))
    _equal(clf.predict(padded, lengths=lengths), ref.predict(seqs))
    assert clf.score(padded, L, lengths=lengths) == ref.score(seqs, labels)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_classifier_methods_with_lengths_equal_the_ragged_list(n_classes):
    seqs, padded, lengths = _ragged()
    y = np.array([int(abs(s[:, 1].sum()) * 7) % n_classes for s in seqs])
    ref = LSTMClassifier(**FAST).fit(seqs, y)
    clf = LSTMClassifier(**FAST).fit(padded, y, lengths=lengths)
    assert clf.loss_curve_ == ref.loss_curve_
    for method in ("predict", "predict_proba", "predict_log_proba", "decision_function"):
        _equal(getattr(clf, method)(padded, lengths=lengths), getattr(ref, method)(seqs))
    assert clf.score(padded, y, lengths=lengths) == ref.score(seqs, y)
    ref.partial_fit(seqs, y)
    clf.partial_fit(padded, y, lengths=lengths)
    assert clf.loss_curve_ == ref.loss_curve_


def test_univariate_padded_2d_with_lengths():
    seqs, padded, lengths = _ragged(F=1)
    y = np.array([s.sum() for s in seqs])
    ref = LSTMRegressor(**FAST).fit([s[:, 0] for s in seqs], y)
    reg = LSTMRegressor(**FAST).fit(padded[:, :, 0], y, lengths=lengths)
    assert reg.n_features_in_ == ref.n_features_in_ == 1
    _equal(reg.predict(padded[:, :, 0], lengths=lengths), ref.predict(seqs))
    # lengths all full: the same as the plain 3-D array
    full = np.full(len(seqs), padded.shape[1])
    X = np.where(np.abs(padded) < 1e10, padded, 0.5)          # NaN, 1e300 -> 0.5
    _equal(reg.predict(X, lengths=full), reg.predict(X))


def test_bad_lengths_are_refused():
    seqs, padded, lengths = _ragged()
    y = np.arange(len(seqs), dtype=float)
    reg = LSTMRegressor(**FAST)
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 9\]"):
        reg.fit(padded, y, lengths=np.where(lengths == 9, 10, lengths))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 9\]"):
        reg.fit(padded, y, lengths=np.zeros(len(seqs), dtype=int))
    with pytest.raises(ValueError, match="lengths has 29 entries"):
        reg.fit(padded, y, lengths=lengths[:-1])
    with pytest.raises(ValueError, match="ints"):
        reg.fit(padded, y, lengths=lengths + 0.5)
    with pytest.raises(ValueError, match="already a list"):
        reg.fit(seqs, y, lengths=lengths)
    with pytest.raises(ValueError):        # without lengths the garbage is data
        reg.fit(padded, y)


def test_lengths_are_routed_through_a_pipeline():
    seqs, padded, lengths = _ragged()
    y = np.array([s[:, 0].sum() for s in seqs])
    double = FunctionTransformer(lambda X: X * 2.0)
    ref = LSTMRegressor(**FAST).fit([2.0 * s for s in seqs], y)
    with sklearn.config_context(enable_metadata_routing=True):
        reg = (LSTMRegressor(**FAST).set_fit_request(lengths=True, sample_weight=False)
               .set_predict_request(lengths=True)
               .set_score_request(lengths=True))
        pipe = make_pipeline(double, reg).fit(padded, y, lengths=lengths)
        _equal(pipe.predict(padded, lengths=lengths), ref.predict([2.0 * s for s in seqs]))
        assert pipe.score(padded, y, lengths=lengths) == ref.score([2.0 * s for s in seqs], y)


def test_lengths_are_routed_through_grid_search():
    seqs, padded, lengths = _ragged()
    y = np.array([s[:, 0].sum() for s in seqs])
    grid = {"hidden_size": [3, 5]}
    ref = GridSearchCV(LSTMRegressor(**FAST), grid, cv=KFold(3)).fit(seqs, y)
    with sklearn.config_context(enable_metadata_routing=True):
        est = (LSTMRegressor(**FAST).set_fit_request(lengths=True, sample_weight=False)
               .set_score_request(lengths=True))
        search = GridSearchCV(est, grid, cv=KFold(3)).fit(padded, y, lengths=lengths)
    np.testing.assert_array_equal(search.cv_results_["mean_test_score"],
                                  ref.cv_results_["mean_test_score"])
    assert search.best_params_ == ref.best_params_
    _equal(search.best_estimator_.predict(padded, lengths=lengths), ref.predict(seqs))
