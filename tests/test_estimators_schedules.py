"""Learning-rate schedules: each epoch's rate against its formula, the rate
actually used by the optimizer, reduce-on-plateau's interplay with stopping,
and the schedule's state across warm_start, partial_fit, pickle and save/load."""

import math
import pickle
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import clstm
from clstm import LSTMClassifier, LSTMRegressor
from clstm._optimizers import LearningRateSchedule, make_optimizer

FAST = dict(hidden_size=5, max_iter=6, random_state=0)
quiet = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _data(n=40, T=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T, 2))
    return X, X[:, -1, 0] + 0.5 * X[:, 0, 1]


def _cosine(init, e, period):
    floor = 0.01 * init
    return floor + (init - floor) * 0.5 * (1 + math.cos(math.pi * ((e - 1) % period) / period))


@quiet
@pytest.mark.parametrize("solver", ["adam", "sgd", "rmsprop"])
def test_each_schedule_follows_its_formula_for_every_solver(solver):
    X, y = _data()
    init = 0.004
    expected = {
        "constant": [init] * 6,
        "invscaling": [init / e ** 0.75 for e in range(1, 7)],
        "cosine": [_cosine(init, e, 6) for e in range(1, 7)],
    }
    for kind, rates in expected.items():
        reg = LSTMRegressor(solver=solver, learning_rate=kind, learning_rate_init=init,
                            power_t=0.75, **FAST).fit(X, y)
        np.testing.assert_allclose(reg.learning_rate_curve_, rates, rtol=1e-15)
    assert reg.learning_rate_curve_[-1] > 0.01 * init        # the floor comes after the cycle


@quiet
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_the_optimizer_uses_the_scheduled_rate(solver):
    """A cosine fit of 3 epochs equals three 1-epoch constant fits, warm-started,
    at the rates of its curve (the optimizer state carries over in both)."""
    X, y = _data()
    common = dict(FAST, solver=solver, shuffle=False, batch_size=40)
    cos = LSTMRegressor(learning_rate="cosine", **dict(common, max_iter=3)).fit(X, y)
    rates = cos.learning_rate_curve_
    assert len(set(rates)) == 3
    step = LSTMRegressor(learning_rate_init=rates[0], **dict(common, max_iter=1)).fit(X, y)
    for r in rates[1:]:
        step.set_params(warm_start=True, learning_rate_init=r).fit(X, y)
    np.testing.assert_array_equal(step.predict(X), cos.predict(X))
    assert step.learning_rate_curve_ == rates


def test_adaptive_divides_by_5_on_each_plateau_and_stops_below_1e_minus_6():
    X, y = _data()
    # tol so large that no epoch ever improves: a plateau every n_iter_no_change + 1 epochs
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        reg = LSTMRegressor(learning_rate="adaptive", tol=1e9, n_iter_no_change=1,
                            **dict(FAST, max_iter=100)).fit(X, y)
    # epoch 1 sets the best loss; each later one adds to the count, a plateau
    # when it exceeds n_iter_no_change=1: after epochs 3, 5, 7, ... (scikit-learn's rule)
    expected = [1e-3]
    for k in range(6):                                 # 1e-3, 2e-4, ..., 3.2e-7
        expected += [1e-3 / 5 ** k] * 2
    np.testing.assert_allclose(reg.learning_rate_curve_, expected, rtol=1e-12)
    assert reg.n_iter_ == 13
    assert reg._optimizer.schedule.reductions == 5
    # constant stops at the first plateau instead
    const = LSTMRegressor(tol=1e9, n_iter_no_change=1, **dict(FAST, max_iter=100)).fit(X, y)
    assert const.n_iter_ == 3


@quiet
def test_adaptive_monitors_the_validation_score_under_early_stopping():
    X, y = _data()
    Xv, yv = _data(n=20, seed=1)
    records = []
    reg = LSTMRegressor(learning_rate="adaptive", early_stopping=True, n_iter_no_change=2,
                        tol=0.0, **dict(FAST, max_iter=40, learning_rate_init=0.05)).fit(
        X, y, validation_data=(Xv, yv), callbacks=records.append)
    # replay the rule on the recorded scores: reduce after > 2 epochs without a new best
    best, stale, rate, expected = -np.inf, 0, 0.05, []
    for r in records:
        expected.append(rate)
        stale = stale + 1 if r.validation_score < best else 0
        best = max(best, r.validation_score)
        if stale > 2:
            rate, stale = rate / 5, 0
    np.testing.assert_allclose(reg.learning_rate_curve_, expected, rtol=1e-12)
    assert min(reg.learning_rate_curve_) < 0.05


@quiet
@pytest.mark.parametrize("kind", ["invscaling", "cosine", "adaptive"])
def test_schedule_state_survives_warm_start_pickle_and_save_load(kind, tmp_path):
    X, y = _data()
    # adaptive: a plateau every other epoch (tol too large to improve by)
    plateaus = dict(tol=1e9, n_iter_no_change=1) if kind == "adaptive" else {}
    params = dict(FAST, learning_rate=kind, max_iter=4, **plateaus)
    a = LSTMRegressor(**params).fit(X, y)
    a.save(tmp_path / "a.npz")
    b = clstm.load(tmp_path / "a.npz")
    c = pickle.loads(pickle.dumps(a))
    for est in (a, b, c):
        est.set_params(warm_start=True).fit(X, y)
    assert a.learning_rate_curve_ == b.learning_rate_curve_ == c.learning_rate_curve_
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    np.testing.assert_array_equal(a.predict(X), c.predict(X))
    if kind == "invscaling":         # the epoch count continues: 5, 6, 7, 8
        np.testing.assert_allclose(a.learning_rate_curve_, [1e-3 / e ** 0.5 for e in range(1, 9)])
    if kind == "cosine":             # period max_iter = 4: a warm restart at epoch 5
        np.testing.assert_allclose(a.learning_rate_curve_,
                                   [_cosine(1e-3, e, 4) for e in range(1, 9)])
    if kind == "adaptive":           # the reductions carry over
        assert a.learning_rate_curve_[4] == a.learning_rate_curve_[3] / 5 or \
            a.learning_rate_curve_[4] == a.learning_rate_curve_[3]
        assert a._optimizer.schedule.reductions == b._optimizer.schedule.reductions >= 2


def test_partial_fit_advances_the_schedule_one_epoch_per_call():
    X, y = _data()
    reg = LSTMRegressor(learning_rate="invscaling", power_t=1.0, **FAST)
    for _ in range(3):
        reg.partial_fit(X, y)
    np.testing.assert_allclose(reg.learning_rate_curve_, [1e-3, 1e-3 / 2, 1e-3 / 3])
    clf = LSTMClassifier(learning_rate="cosine", **FAST)
    for _ in range(2):
        clf.partial_fit(X, y > 0, classes=[False, True])
    np.testing.assert_allclose(clf.learning_rate_curve_, [_cosine(1e-3, e, 6) for e in (1, 2)])


def test_schedule_object_round_trips_and_refuses_bad_state():
    sched = LearningRateSchedule("adaptive", period=3)
    sched.load_state_dict({"epoch": 4, "reductions": 2})
    assert sched.rate(1.0, 5) == pytest.approx(1 / 25)
    with pytest.raises(ValueError, match="reductions must be an int >= 0"):
        sched.load_state_dict({"epoch": 1, "reductions": -1})
    with pytest.raises(ValueError, match="must be one of"):
        LearningRateSchedule("step")
    est = LSTMRegressor(learning_rate="cosine", max_iter=7)
    opt = make_optimizer(est)
    assert opt.get_config()["schedule"] == {"kind": "cosine", "power_t": 0.5, "period": 7}


@quiet
def test_old_files_without_a_schedule_load_as_constant(tmp_path):
    """A file written before schedules: no schedule in the optimizer, no curve."""
    import json
    X, y = _data()
    reg = LSTMRegressor(**FAST).fit(X, y)
    meta, arrays = reg._get_state()
    del meta["fitted"]["learning_rate_curve_"], meta["fitted"]["n_timesteps_in_"]
    for key in ("learning_rate", "power_t", "validation_holdout"):
        del meta["params"][key]
    del meta["optimizer"]["config"]["schedule"]
    del meta["optimizer"]["epoch"], meta["optimizer"]["reductions"]
    from clstm import _persistence
    _persistence.write(tmp_path / "old.npz", json.loads(json.dumps(meta)), arrays)
    old = clstm.load(tmp_path / "old.npz")
    assert old.learning_rate_curve_ == [1e-3] * 6 and old.learning_rate == "constant"
    assert old.n_timesteps_in_ is None
    np.testing.assert_array_equal(old.predict(X), reg.predict(X))


def _run_doctest(text, name):
    import doctest
    test = doctest.DocTestParser().get_doctest(text, {}, name, None, 0)
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert runner.tries > 0 and runner.failures == 0


@quiet
def test_class_docstring_examples_run():
    _run_doctest(LSTMRegressor.__doc__, "LSTMRegressor")
