"""A validation set of the user's choice, the ordered hold-out, and per-epoch callbacks.

Oracles: the score recorded for an epoch equals ``score`` on the validation
set of the model of that epoch; a fit with validation data (not used for
stopping) trains exactly as the fit without it; ``validation_holdout="last"``
is exactly ``fit(X[:-m], y[:-m], validation_data=(X[-m:], y[-m:]))``; a
callback that stops at epoch k leaves exactly the model of ``max_iter=k``.
"""

import pickle
import warnings

import numpy as np
import pytest
import sklearn
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline

import clstm
from clstm import LSTMClassifier, LSTMRegressor

FAST = dict(hidden_size=6, max_iter=4, random_state=0)
quiet = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _data(n=60, T=7, F=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T, F))
    y = X[:, -1, 0] - 0.5 * X[:, 0, 1] + 0.1 * rng.standard_normal(n)
    return X, y


# ----------------------------------------------------------------------------
# validation_data
# ----------------------------------------------------------------------------
@quiet
def test_validation_scores_are_the_score_of_each_epoch_and_do_not_change_training():
    X, y = _data()
    Xv, yv = _data(n=25, seed=1)
    plain = LSTMRegressor(**FAST).fit(X, y)
    records = []
    reg = LSTMRegressor(**FAST).fit(X, y, validation_data=(Xv, yv),
                                    callbacks=lambda r: records.append(
                                        r.estimator().score(Xv, yv)))
    # validation scoring touches neither the weights nor the random stream
    assert reg.loss_curve_ == plain.loss_curve_
    np.testing.assert_array_equal(reg.predict(X), plain.predict(X))
    assert len(reg.validation_scores_) == reg.n_iter_ == 4
    np.testing.assert_allclose(reg.validation_scores_, records, rtol=0, atol=1e-7)
    assert reg.validation_scores_[-1] == pytest.approx(reg.score(Xv, yv), abs=1e-7)
    assert reg.best_validation_score_ == max(reg.validation_scores_)
    assert reg.best_loss_ == min(reg.loss_curve_)       # stopping still on the training loss


@quiet
def test_early_stopping_on_validation_data_trains_on_all_of_X_and_restores_the_best():
    X, y = _data()
    Xv, yv = _data(n=25, seed=1)
    # tol too large to improve by: stops after epoch 1 + n_iter_no_change + 1
    params = dict(FAST, max_iter=30, n_iter_no_change=2, tol=10.0, learning_rate_init=0.02)
    ref = LSTMRegressor(**dict(params, tol=0.0, n_iter_no_change=30)).fit(X, y)   # same draws
    reg = LSTMRegressor(early_stopping=True, **params).fit(X, y, validation_data=(Xv, yv))
    assert reg.n_iter_ == 4
    assert reg.loss_curve_ == ref.loss_curve_[:reg.n_iter_]
    assert reg.best_validation_score_ == max(reg.validation_scores_)
    assert reg.score(Xv, yv) == pytest.approx(reg.best_validation_score_, abs=1e-7)
    assert reg.best_loss_ is None


@quiet
def test_validation_data_forms_lengths_and_sample_weight():
    X, y = _data()
    rng = np.random.default_rng(3)
    lv = rng.integers(2, 8, size=20)
    seqs = [rng.standard_normal((t, 2)) for t in lv]
    yv = np.array([s[-1, 0] for s in seqs])
    padded = np.full((20, 7, 2), np.nan)
    for i, s in enumerate(seqs):
        padded[i, :len(s)] = s
    wv = np.linspace(0.2, 3.0, 20)
    a = LSTMRegressor(**FAST).fit(X, y, validation_data=(seqs, yv))
    b = LSTMRegressor(**FAST).fit(X, y, validation_data=(padded, yv, lv))
    c = LSTMRegressor(**FAST).fit(X, y, validation_data={"X": padded, "y": yv, "lengths": lv})
    assert a.validation_scores_ == b.validation_scores_ == c.validation_scores_
    d = LSTMRegressor(**FAST).fit(X, y, validation_data={"X": seqs, "y": yv,
                                                         "sample_weight": wv})
    assert d.validation_scores_[-1] == pytest.approx(d.score(seqs, yv, sample_weight=wv),
                                                     abs=1e-7)
    assert d.validation_scores_[-1] != pytest.approx(d.score(seqs, yv), abs=1e-6)


@quiet
def test_classifier_validation_accuracy_and_unseen_classes():
    X, _ = _data(n=80)
    labels = np.where(X[:, -1, 0] > 0, "up", "down")
    Xv, _ = _data(n=30, seed=2)
    lv = np.where(Xv[:, -1, 0] > 0, "up", "down")
    clf = LSTMClassifier(**FAST).fit(X, labels, validation_data=(Xv, lv))
    assert clf.validation_scores_[-1] == clf.score(Xv, lv)
    bad = lv.astype(object)
    bad[3] = "sideways"
    with pytest.raises(ValueError, match=r"validation_data: .*'sideways'"):
        LSTMClassifier(**FAST).fit(X, labels, validation_data=(Xv, bad))


@quiet
def test_per_step_validation_targets_score_like_score():
    rng = np.random.default_rng(4)
    X, Xv = rng.standard_normal((40, 6, 1)), rng.standard_normal((15, 6, 1))
    Y, Yv = (np.cumsum(X[..., 0], 1) > 0), (np.cumsum(Xv[..., 0], 1) > 0)
    clf = LSTMClassifier(return_sequences=True, **FAST).fit(X, Y, validation_data=(Xv, Yv))
    assert clf.validation_scores_[-1] == clf.score(Xv, Yv)
    reg = LSTMRegressor(return_sequences=True, **FAST).fit(X, Y * 1.0,
                                                           validation_data=(Xv, Yv * 1.0))
    assert reg.validation_scores_[-1] == pytest.approx(reg.score(Xv, Yv * 1.0), abs=1e-7)


@pytest.mark.parametrize("validation_data, error, match", [
    ("oops", TypeError, "validation_data must be"),
    ((1, 2, 3, 4), TypeError, "of length 4"),
    ({"X": 1}, TypeError, "needs the keys 'X' and 'y'"),
    ({"X": np.zeros((5, 7, 2)), "y": np.zeros(5), "weights": 1}, TypeError, "needs the keys"),
    ((np.zeros((5, 7, 3)), np.zeros(5)), ValueError,
     "validation_data: X has 3 features per timestep, but LSTMRegressor is expecting 2"),
    ((np.zeros((5, 7, 2)), np.zeros(4)), ValueError, "validation_data: .*X has 5, y has 4"),
    ((np.zeros((5, 7, 2)), np.zeros((5, 2))), ValueError, "validation_data: y has 2 outputs"),
    ((np.zeros((5, 7, 2)), None), ValueError, "validation_data: y is None"),
    ((np.full((5, 7, 2), np.nan), np.zeros(5)), ValueError, "validation_data: .*NaN"),
    ((np.zeros((5, 7, 2)), np.zeros(5), [1, 2, 3, 4, 9]), ValueError,
     r"validation_data: lengths must be in \[1, 7\]"),
    ((np.zeros((5, 7, 2)), np.zeros(5), np.full(5, 0.5)), ValueError,      # Keras' (x, y, w)
     r"lengths must be a 1-D array of ints.*the third item of validation_data is lengths_val"),
])
def test_bad_validation_data_is_refused_and_leaves_the_estimator_unfitted(
        validation_data, error, match):
    X, y = _data()
    reg = LSTMRegressor(**FAST)
    with pytest.raises(error, match=match):
        reg.fit(X, y, validation_data=validation_data)
    with pytest.raises(NotFittedError):
        reg.predict(X)


@quiet
def test_validation_data_continues_over_warm_start_and_persists(tmp_path):
    X, y = _data()
    Xv, yv = _data(n=25, seed=1)
    reg = LSTMRegressor(warm_start=True, **FAST).fit(X, y, validation_data=(Xv, yv))
    first = list(reg.validation_scores_)
    reg.fit(X, y, validation_data=(Xv, yv))
    assert reg.validation_scores_[:4] == first and len(reg.validation_scores_) == 8
    reg.save(tmp_path / "m.npz")
    back = clstm.load(tmp_path / "m.npz")
    assert back.validation_scores_ == reg.validation_scores_
    assert back.best_validation_score_ == reg.best_validation_score_
    assert pickle.loads(pickle.dumps(reg)).validation_scores_ == reg.validation_scores_


# ----------------------------------------------------------------------------
# validation_holdout="last"
# ----------------------------------------------------------------------------
@quiet
@pytest.mark.parametrize("shuffle", [True, False])
def test_holdout_last_is_the_fit_on_the_first_part_validated_on_the_last(shuffle):
    X, y = _data(n=50)
    params = dict(FAST, max_iter=6, early_stopping=True, validation_fraction=0.2,
                  shuffle=shuffle)
    last = LSTMRegressor(validation_holdout="last", **params).fit(X, y)
    ref = LSTMRegressor(**params).fit(X[:40], y[:40], validation_data=(X[40:], y[40:]))
    assert last.loss_curve_ == ref.loss_curve_
    assert last.validation_scores_ == ref.validation_scores_
    np.testing.assert_array_equal(last.predict(X), ref.predict(X))
    rand = LSTMRegressor(validation_holdout="random", **params).fit(X, y)
    assert rand.validation_scores_ != last.validation_scores_


@quiet
def test_holdout_last_rounds_up_and_keeps_ragged_lists_weights_and_lengths():
    rng = np.random.default_rng(5)
    lengths = rng.integers(2, 6, size=21)
    seqs = [rng.standard_normal((t, 1)) for t in lengths]
    y = np.array([s.sum() for s in seqs])
    w = rng.uniform(0.5, 2, size=21)
    params = dict(FAST, early_stopping=True, validation_fraction=0.1)   # ceil(2.1) = 3
    last = LSTMRegressor(validation_holdout="last", **params).fit(seqs, y, sample_weight=w)
    ref = LSTMRegressor(**params).fit(seqs[:18], y[:18], sample_weight=w[:18],
                                      validation_data={"X": seqs[18:], "y": y[18:],
                                                       "sample_weight": w[18:]})
    assert last.validation_scores_ == ref.validation_scores_
    padded = np.zeros((21, 5, 1))
    for i, s in enumerate(seqs):
        padded[i, :len(s)] = s
    pad = LSTMRegressor(validation_holdout="last", **params).fit(
        padded, y, sample_weight=w, lengths=lengths)
    assert pad.validation_scores_ == last.validation_scores_


def test_holdout_last_errors_name_the_held_out_block():
    X, _ = _data(n=40)
    labels = np.r_[np.zeros(18, int), np.ones(18, int), 2 * np.ones(4, int)]
    clf = LSTMClassifier(early_stopping=True, validation_holdout="last", **FAST)
    with pytest.raises(ValueError, match=r"held-out last validation_fraction.*\[2\]"):
        clf.fit(X, labels)
    with pytest.raises(ValueError, match="cannot hold out the last"):
        LSTMRegressor(early_stopping=True, validation_holdout="last", validation_fraction=0.5,
                      **FAST).fit(X[:1], np.zeros(1))


@pytest.mark.parametrize("param, value, match", [
    ("validation_holdout", "first", "'random' or 'last'"),
    ("learning_rate", 0.01, "learning_rate_init"),
    ("learning_rate", "step", "'constant', 'invscaling', 'adaptive', 'cosine'"),
    ("power_t", -1.0, "power_t"),
])
def test_new_parameters_are_validated(param, value, match):
    X, y = _data(n=10)
    with pytest.raises(ValueError, match=match):
        LSTMRegressor(**{param: value}, **FAST).fit(X, y)


def test_new_parameters_survive_clone_get_set_params_and_pickle():
    for cls in (LSTMRegressor, LSTMClassifier):
        est = cls(learning_rate="cosine", power_t=0.25, validation_holdout="last")
        for copy in (clone(est), pickle.loads(pickle.dumps(est))):
            p = copy.get_params()
            assert (p["learning_rate"], p["power_t"], p["validation_holdout"]) == (
                "cosine", 0.25, "last")
        assert est.set_params(learning_rate="adaptive").learning_rate == "adaptive"


# ----------------------------------------------------------------------------
# callbacks
# ----------------------------------------------------------------------------
def test_callback_records_match_the_fitted_curves():
    X, y = _data()
    Xv, yv = _data(n=25, seed=1)
    records = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg = LSTMRegressor(learning_rate="invscaling", **FAST).fit(
            X, y, validation_data=(Xv, yv), callbacks=[records.append])
        scores = reg.validation_scores_
        reg.set_params(warm_start=True).fit(X, y, callbacks=records.append)
    assert [r.epoch for r in records] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert [r.n_iter for r in records] == list(range(1, 9))
    assert [r.loss for r in records] == reg.loss_curve_
    assert [r.learning_rate for r in records] == reg.learning_rate_curve_
    assert [r.validation_score for r in records[:4]] == scores
    # the second fit had no validation set: no scores (they would not line up)
    assert records[-1].validation_score is None and reg.validation_scores_ is None
    assert records[-1].t == reg.t_ and all(r.time >= 0 for r in records)
    with pytest.raises(AttributeError):
        records[0].loss = 0.0                        # read-only


def test_a_callback_stops_training_with_the_model_of_that_epoch_and_no_warning():
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg = LSTMRegressor(**dict(FAST, max_iter=50)).fit(
            X, y, callbacks=[lambda r: None, lambda r: r.epoch == 3])
    assert reg.n_iter_ == 3
    with pytest.warns(ConvergenceWarning):
        ref = LSTMRegressor(**dict(FAST, max_iter=3)).fit(X, y)
    np.testing.assert_array_equal(reg.predict(X), ref.predict(X))
    assert reg.loss_curve_ == ref.loss_curve_


@quiet
def test_a_callback_stop_under_early_stopping_keeps_the_best_epoch():
    X, y = _data()
    Xv, yv = _data(n=25, seed=1)
    reg = LSTMRegressor(early_stopping=True, **dict(FAST, max_iter=50,
                                                     learning_rate_init=0.05)).fit(
        X, y, validation_data=(Xv, yv), callbacks=lambda r: r.epoch == 6)
    assert reg.n_iter_ == 6
    assert reg.score(Xv, yv) == pytest.approx(max(reg.validation_scores_), abs=1e-7)


@quiet
def test_checkpoint_callback_saves_the_model_of_that_epoch(tmp_path):
    X, y = _data()

    def checkpoint(record):
        record.estimator().save(tmp_path / f"ckpt-{record.n_iter}.npz")

    LSTMRegressor(**FAST).fit(X, y, callbacks=[checkpoint])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ckpt-{i}.npz" for i in (1, 2, 3, 4)]
    ckpt = clstm.load(tmp_path / "ckpt-2.npz")
    ref = LSTMRegressor(**dict(FAST, max_iter=2)).fit(X, y)
    np.testing.assert_array_equal(ckpt.predict(X), ref.predict(X))
    assert ckpt.loss_curve_ == ref.loss_curve_ and ckpt.n_iter_ == 2
    # a checkpoint resumes: warm-starting it gives the rest of the original fit
    full = LSTMRegressor(**FAST).fit(X, y)
    ckpt.set_params(warm_start=True, max_iter=2).fit(X, y)
    np.testing.assert_array_equal(ckpt.predict(X), full.predict(X))


def test_an_exception_in_a_callback_propagates_and_leaves_the_estimator_as_it_was():
    X, y = _data()

    def boom(record):
        if record.epoch == 2:
            raise RuntimeError("disk full")

    reg = LSTMRegressor(**FAST)
    with pytest.raises(RuntimeError, match="disk full"):
        reg.fit(X, y, callbacks=[boom])
    with pytest.raises(NotFittedError):
        reg.predict(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X, y)
    before = reg.predict(X)
    reg.set_params(warm_start=True)
    with pytest.raises(RuntimeError, match="disk full"):
        reg.fit(X, y, callbacks=boom)
    np.testing.assert_array_equal(reg.predict(X), before)
    assert reg.n_iter_ == 4


@pytest.mark.parametrize("callbacks, match", [
    (3, "callable or a list of callables"),
    ("print", "callable or a list"),
    ([print, None], r"callbacks\[1\] is a NoneType"),
])
def test_bad_callbacks_are_refused(callbacks, match):
    X, y = _data(n=10)
    with pytest.raises(TypeError, match=match):
        LSTMRegressor(**FAST).fit(X, y, callbacks=callbacks)


# ----------------------------------------------------------------------------
# Pipeline and GridSearchCV
# ----------------------------------------------------------------------------
@quiet
def test_validation_data_and_callbacks_through_a_pipeline():
    X, y = _data()
    Xv, yv = _data(n=25, seed=1)
    seen = []
    pipe = make_pipeline(LSTMRegressor(**FAST)).fit(
        X, y, lstmregressor__validation_data=(Xv, yv), lstmregressor__callbacks=seen.append)
    direct = LSTMRegressor(**FAST).fit(X, y, validation_data=(Xv, yv))
    assert pipe[-1].validation_scores_ == direct.validation_scores_
    assert len(seen) == 4


@quiet
def test_validation_data_through_metadata_routing_in_gridsearchcv():
    X, y = _data()
    Xv, yv = _data(n=25, seed=1)
    with sklearn.config_context(enable_metadata_routing=True):
        est = LSTMRegressor(**FAST).set_fit_request(validation_data=True)
        search = GridSearchCV(make_pipeline(est), {"lstmregressor__hidden_size": [3, 6]},
                              cv=KFold(2)).fit(X, y, validation_data=(Xv, yv))
    best = search.best_estimator_[-1]
    ref = clone(best).fit(X, y, validation_data=(Xv, yv))
    assert best.validation_scores_ == ref.validation_scores_


@quiet
def test_token_estimators_take_validation_data_and_schedules():
    from clstm import LSTMLanguageModel
    rng = np.random.default_rng(0)
    X = [rng.integers(0, 5, size=rng.integers(4, 9)) for _ in range(30)]
    y = np.array([s.sum() % 2 for s in X])
    clf = LSTMClassifier(vocab_size=5, **FAST).fit(X[:25], y[:25],
                                                   validation_data=(X[25:], y[25:]))
    assert clf.validation_scores_[-1] == clf.score(X[25:], y[25:])
    lm = LSTMLanguageModel(vocab_size=5, hidden_size=6, max_iter=3, random_state=0,
                           learning_rate="invscaling", power_t=1.0, early_stopping=True,
                           validation_holdout="last").fit(X)
    np.testing.assert_allclose(lm.learning_rate_curve_, [1e-3, 1e-3 / 2, 1e-3 / 3])
    assert len(lm.validation_scores_) == 3
