"""The classifier's decision_function and the scale of the training loss.

decision_function is the head's logits (expit / softmax of it is
predict_proba, its sign / argmax is predict). The loss recorded in
loss_curve_ is checked against its documented formula on the predictions of
the model it was computed with: a partial_fit with one mini-batch records
the loss of the weights before its single update.
"""

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.metrics import log_loss

from clstm import LSTMClassifier, LSTMRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

FAST = dict(hidden_size=6, max_iter=3, dtype="float64", random_state=0)


def _data(n=40, T=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T, 2))
    return X, X[:, :, 0].sum(axis=1) + X[:, -1, 1]


def test_binary_decision_function_is_the_logit_of_classes_1():
    X, y = _data()
    labels = np.where(y > 0, "yes", "no")
    clf = LSTMClassifier(**FAST).fit(X, labels)
    dec = clf.decision_function(X)
    assert dec.shape == (len(X),)
    np.testing.assert_allclose(expit(dec), clf.predict_proba(X)[:, 1], rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[(dec > 0).astype(int)], clf.predict(X))


def test_multiclass_decision_function_is_the_softmax_input():
    X, y = _data()
    codes = np.digitize(y, np.quantile(y, [1 / 3, 2 / 3]))
    clf = LSTMClassifier(**FAST).fit(X, codes)
    dec = clf.decision_function(X)
    assert dec.shape == (len(X), 3)
    np.testing.assert_allclose(softmax(dec, axis=1), clf.predict_proba(X), rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[dec.argmax(axis=1)], clf.predict(X))


def test_per_step_decision_function():
    X, y = _data()
    clf = LSTMClassifier(return_sequences=True, **FAST).fit(X, X[:, :, 0] > 0)
    dec = clf.decision_function(X)
    assert dec.shape == X.shape[:2]
    np.testing.assert_allclose(expit(dec), clf.predict_proba(X)[..., 1], rtol=1e-12)
    ragged = [X[i, :3 + i % 3] for i in range(len(X))]
    dec = clf.decision_function(ragged)
    assert [d.shape for d in dec] == [(len(s),) for s in ragged]
    for d, p in zip(dec, clf.predict_proba(ragged)):
        np.testing.assert_allclose(expit(d), p[:, 1], rtol=1e-12)


def _one_batch_loss(est, X, y, sample_weight=None):
    """The loss partial_fit records for the current weights (one mini-batch)."""
    est.set_params(batch_size=len(X))
    est.partial_fit(X, y, sample_weight=sample_weight)
    return est.loss_curve_[-1]


def _penalty(est, n):
    """alpha / 2 * sum of squared weights / n over the penalised parameters."""
    params = est._model.params
    return 0.5 * est.alpha * sum(float(np.sum(params[k] ** 2))
                                 for k in est._model.weight_names()) / n


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_regressor_loss_is_half_the_mse_of_standardised_targets(alpha):
    X, y = _data()
    y = 500.0 + 80.0 * y                                # far from the standardised scale
    sw = np.linspace(0.5, 1.5, len(X))
    reg = LSTMRegressor(alpha=alpha, **FAST).fit(X, y, sample_weight=sw)
    pred, penalty = reg.predict(X), _penalty(reg, sw.sum())
    mean = np.average(y, weights=sw)
    scale = np.sqrt(np.average((y - mean) ** 2, weights=sw))
    loss = _one_batch_loss(reg, X, y, sw)
    expected = 0.5 * np.average(((pred - y) / scale) ** 2, weights=sw)
    np.testing.assert_allclose(loss, expected + penalty, rtol=1e-9)
    # Keras' MSE on the original targets
    np.testing.assert_allclose(2 * (loss - penalty) * scale ** 2,
                               np.average((pred - y) ** 2, weights=sw), rtol=1e-9)


def test_regressor_loss_without_standardisation_and_with_several_outputs():
    X, y = _data()
    Y = np.stack([y, 3.0 * X[:, 0, 1]], axis=1)
    reg = LSTMRegressor(alpha=0.0, standardize=False, **FAST).fit(X, Y)
    pred = reg.predict(X)
    loss = _one_batch_loss(reg, X, Y)
    np.testing.assert_allclose(loss, 0.5 * np.mean((pred - Y) ** 2), rtol=1e-9)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_classifier_loss_is_the_log_loss(n_classes):
    X, y = _data()
    codes = np.digitize(y, np.quantile(y, [0.5, 0.75])) % n_classes
    clf = LSTMClassifier(alpha=0.0, **FAST).fit(X, codes)
    proba = clf.predict_proba(X)
    loss = _one_batch_loss(clf, X, codes)
    np.testing.assert_allclose(loss, log_loss(codes, proba), rtol=1e-9)
