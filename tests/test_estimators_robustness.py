"""No silent failure: every finite input trains to finite weights or stops with a clear error.

Targets and inputs near the float limits, divergence (finite or not, first
seen in the loss, a gradient or a carried state), sample weights as exact
repetitions, messages that speak of the user's input, the progress line.
Saving and loading are in test_persistence.py.
"""

import io
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from clstm import LSTMClassifier, LSTMRegressor
from clstm._progress import EpochProgress

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

TINY = dict(hidden_size=4, max_iter=2, random_state=0)
FEW = settings(max_examples=12, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])


def _data(n=40, T=6, F=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F))
    return X, X[:, 0, 0] + 0.5 * X[:, -1, F - 1]


def _weights(est):
    return {k: v.copy() for k, v in est.lstm_.state_dict().items()}


def _same_weights(a, b):
    return all(np.array_equal(v, b[k]) for k, v in a.items())


# ----------------------------------------------------------------------------
# values near the float limits
# ----------------------------------------------------------------------------
@FEW
@given(k=st.integers(-990, 990))
def test_targets_of_any_magnitude_give_the_same_model(k):
    """Standardising y by a power of two is exact: the fit on y * 2**k is the
    fit on y, scaled (no overflow in the statistics, finite predictions)."""
    X, y = _data(n=20, T=4, F=1)
    scale = 2.0 ** k
    ref = LSTMRegressor(**TINY).fit(X, y)
    big = LSTMRegressor(**TINY).fit(X, y * scale)
    pred = big.predict(X)
    assert np.isfinite(pred).all()
    np.testing.assert_array_equal(pred / scale, ref.predict(X))
    assert big.score(X, y * scale) == pytest.approx(ref.score(X, y), rel=1e-12)


@FEW
@given(k=st.integers(-990, 990))
def test_inputs_of_any_magnitude_give_the_same_model(k):
    X, y = _data(n=20, T=4, F=2)
    scale = 2.0 ** k
    ref = LSTMRegressor(**TINY).fit(X, y)
    big = LSTMRegressor(**TINY).fit(X * scale, y)
    np.testing.assert_array_equal(big.predict(X * scale), ref.predict(X))


def test_targets_near_the_float_limit():
    """The issue's case: targets ~1e200 fitted 'successfully', predicted -inf."""
    X, y = _data()
    reg = LSTMRegressor(hidden_size=8, max_iter=5, random_state=0).fit(X, y * 1e200)
    pred = reg.predict(X)
    assert np.isfinite(pred).all()
    assert np.isfinite(reg.score(X, y * 1e200))
    # constant huge targets, constant huge features: exactly reproduced / no overflow
    flat = LSTMRegressor(**TINY).fit(X, np.full(40, 1e300))
    np.testing.assert_array_equal(flat.predict(X), np.full(40, 1e300))
    Xc = X.copy()
    Xc[:, :, 1] = -1e305
    assert np.isfinite(LSTMRegressor(**TINY).fit(Xc, y).predict(Xc)).all()


def test_values_the_dtype_cannot_hold_are_refused_clearly():
    X, y = _data()
    with pytest.raises(ValueError, match=r"y has values of magnitude up to 2\..*e\+200, beyond "
                                         r"the range of float32.*standardize=True"):
        LSTMRegressor(standardize=False, **TINY).fit(X, y * 1e200)
    with pytest.raises(ValueError, match="X has values .* beyond the range of float32"):
        LSTMRegressor(standardize=False, **TINY).fit(X * 1e200, y)
    # float64 holds them: no error, finite weights
    reg = LSTMRegressor(standardize=False, dtype="float64", **TINY).fit(X * 1e200, y)
    assert all(np.isfinite(v).all() for v in _weights(reg).values())
    # predict: standardised far outside the training range
    reg = LSTMRegressor(**TINY).fit(X, y)
    with pytest.raises(ValueError, match="X has values .* after standardisation, beyond"):
        reg.predict(X * 1e300)


@FEW
@given(k=st.integers(-1000, 1019))
@example(k=1019)        # the sum of the weights would overflow
@example(k=-1000)
def test_sample_weights_of_any_magnitude(k):
    """Without the L2 term only relative weights matter, exactly, at any scale."""
    X, y = _data(n=20, T=4, F=1)
    sw = np.arange(1.0, 21.0)
    ref = LSTMRegressor(alpha=0.0, **TINY).fit(X, y, sample_weight=sw)
    scaled = LSTMRegressor(alpha=0.0, **TINY).fit(X, y, sample_weight=sw * 2.0 ** k)
    np.testing.assert_array_equal(scaled.predict(X), ref.predict(X))


# ----------------------------------------------------------------------------
# divergence
# ----------------------------------------------------------------------------
def test_divergence_that_stays_finite_is_detected():
    """The issue's case: the loss climbs by orders of magnitude without NaN."""
    X, y = _data(n=64, T=10)
    reg = LSTMRegressor(solver="sgd", learning_rate_init=10.0, clip_norm=5.0, max_iter=30,
                        hidden_size=50, random_state=0)
    with pytest.raises(FloatingPointError, match=r"diverged in epoch \d+: the loss grew") as info:
        reg.fit(X, y)
    epoch = int(re.search(r"epoch (\d+)", str(info.value)).group(1))
    assert 1 < epoch < 10 and reg.n_iter_ == len(reg.loss_curve_) == epoch - 1
    assert all(np.isfinite(v).all() for v in _weights(reg).values())
    assert np.isfinite(reg.predict(X)).all()


def test_first_fit_diverging_in_its_first_epoch_stays_unfitted():
    X, y = _data(n=64, T=10)
    reg = LSTMRegressor(learning_rate_init=100.0, max_iter=30, random_state=0)
    with pytest.raises(FloatingPointError, match="epoch 1.*left unfitted"):
        reg.fit(X, y)
    with pytest.raises(NotFittedError):
        reg.predict(X)


def test_warm_start_and_partial_fit_keep_the_last_good_weights():
    X, y = _data(n=64, T=10)
    reg = LSTMRegressor(hidden_size=8, max_iter=3, random_state=0).fit(X, y)
    good, n_iter = _weights(reg), reg.n_iter_
    # partial_fit: its one epoch diverges: the weights from before the call
    reg.set_params(learning_rate_init=100.0)
    with pytest.raises(FloatingPointError, match="epoch 4.*keeps its previous weights"):
        reg.partial_fit(X, y)
    assert reg.n_iter_ == n_iter and _same_weights(_weights(reg), good)
    # warm_start: the epochs completed before the divergence are kept
    reg = LSTMRegressor(solver="sgd", learning_rate_init=1.0, max_iter=2, clip_norm=None,
                        random_state=0).fit(X, y)
    before = _weights(reg)
    reg.set_params(warm_start=True, max_iter=30, learning_rate_init=10.0)
    with pytest.raises(FloatingPointError, match=r"epoch (\d+).*last completed epoch") as info:
        reg.fit(X, y)
    epoch = int(re.search(r"epoch (\d+)", str(info.value)).group(1))
    assert epoch > 3 and reg.n_iter_ == epoch - 1 and len(reg.loss_curve_) == epoch - 1
    assert not _same_weights(_weights(reg), before)
    assert all(np.isfinite(v).all() for v in _weights(reg).values())


def _blow_up_head(est, value):
    """Huge (finite) head weights: the loss stays finite in float64, but the
    gradient sent back into the network overflows float32."""
    est._model.head_weight[...] = value


@pytest.mark.parametrize("return_sequences", [False, True])
def test_non_finite_gradient_is_a_floating_point_error_not_an_internal_message(
        return_sequences):
    """The issue's case: `ValueError: grad_h_n contains NaN` reached the user."""
    X, y = _data()
    Y = X[:, :, 0] if return_sequences else y
    reg = LSTMRegressor(return_sequences=return_sequences, **TINY).fit(X, Y)
    _blow_up_head(reg, 1e25)
    before = _weights(reg)
    with pytest.raises(FloatingPointError) as info:
        reg.partial_fit(X, Y)
    message = str(info.value)
    assert "epoch 3" in message and "gradient is not finite" in message
    assert "grad_h_n" not in message and "grad_out" not in message
    assert _same_weights(_weights(reg), before) and reg.n_iter_ == 2


def test_non_finite_carried_state_is_a_floating_point_error():
    """Truncated BPTT carries states between chunks; a NaN there is reported as
    such, before the network's own check (`h0 contains NaN`) sees it."""
    from clstm._model import NonFiniteError, SequenceModel

    network_params = dict(hidden_size=3, num_layers=1, bidirectional=False, dropout=0.0,
                          recurrent_dropout=0.0, dtype="float32", n_jobs=None)
    model = SequenceModel.create(2, network_params, 1, "squared_error", False,
                                 np.random.RandomState(0))
    model.network.params["weight_hh_l0"][0, 0] = np.nan
    X, y = _data(n=4, T=8)
    with pytest.raises(NonFiniteError, match="the state is not finite"):
        model.loss_and_grad(X.astype(np.float32), np.full(4, 8), y[:, None].astype(np.float32),
                            np.ones(4), tbptt_steps=3)


def test_weights_edited_to_nan_are_refused_before_training():
    X, y = _data()
    reg = LSTMRegressor(**TINY).fit(X, y)
    reg.lstm_.params["weight_hh_l0"][0, 0] = np.nan
    with pytest.raises(FloatingPointError, match="fitted weights .* not finite"):
        reg.partial_fit(X, y)


def test_divergence_check_does_not_fire_on_healthy_training():
    """Near-zero losses (constant targets, separable classes) are not divergence."""
    X, y = _data()
    LSTMRegressor(hidden_size=8, max_iter=60, random_state=0).fit(X, np.full(40, 3.0))
    LSTMClassifier(hidden_size=8, max_iter=60, learning_rate_init=0.05,
                   random_state=0).fit(X, X[:, 0, 0] > 0)
    # partial_fit on data far from what was learned: a high loss, not divergence
    reg = LSTMRegressor(hidden_size=8, max_iter=30, random_state=0).fit(X, y)
    reg.partial_fit(X, y + 1e3)


def test_failed_call_leaves_the_shuffling_generator_untouched(monkeypatch):
    """A call that fails is rolled back completely, the RandomState included."""
    from clstm._model import SequenceModel

    X, y = _data()
    a = LSTMRegressor(**TINY).fit(X, y)
    b = LSTMRegressor(**TINY).fit(X, y)
    real = SequenceModel.loss_and_grad

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SequenceModel, "loss_and_grad", interrupted)
    with pytest.raises(KeyboardInterrupt):
        a.partial_fit(X, y)          # no epoch completed: rolled back, interrupt propagates
    monkeypatch.setattr(SequenceModel, "loss_and_grad", real)
    a.partial_fit(X, y)
    b.partial_fit(X, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


# ----------------------------------------------------------------------------
# sample weights are repetitions, exactly
# ----------------------------------------------------------------------------
def _repeat(X, y, counts):
    if isinstance(X, list):
        Xr = [x for x, c in zip(X, counts) for _ in range(c)]
    else:
        Xr = np.repeat(X, counts, axis=0)
    yr = ([t for t, c in zip(y, counts) for _ in range(c)] if isinstance(y, list)
          else np.repeat(y, counts, axis=0))
    return Xr, yr


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 16), batch_size=st.sampled_from([3, 8, 32]),
       kind=st.sampled_from(["reg", "clf", "clf3", "seq", "ragged"]),
       early_stopping=st.booleans())
def test_integer_weights_equal_repetition_bit_for_bit(seed, batch_size, kind, early_stopping):
    """Over several mini-batches, shuffled, with early stopping, per-step and
    ragged targets, class weights: weights == repeated rows, in any order."""
    rng = np.random.default_rng(seed)
    n, T = 12, 5
    X = rng.normal(size=(n, T, 2))
    counts = rng.integers(0, 4, size=n)
    counts[:3] = np.maximum(counts[:3], 1)      # every class of np.arange(n) % 3 kept
    kw = dict(hidden_size=3, max_iter=3, batch_size=batch_size, random_state=seed,
              early_stopping=early_stopping, validation_fraction=0.3)
    if kind == "reg":
        est, y = LSTMRegressor(**kw), X[:, 0, 0]
    elif kind == "clf":
        est, y = LSTMClassifier(class_weight="balanced", **kw), np.arange(n) % 2 == 0
    elif kind == "clf3":
        est, y = LSTMClassifier(**kw), np.arange(n) % 3
    elif kind == "seq":
        est, y = LSTMRegressor(return_sequences=True, **kw), X[:, :, 0].cumsum(1)
    else:
        lengths = rng.integers(1, T + 1, size=n)
        X = [X[i, :lengths[i]] for i in range(n)]
        est, y = LSTMRegressor(**kw), np.array([x[0, 0] for x in X])
    Xr, yr = _repeat(X, y, counts)
    perm = rng.permutation(len(Xr))
    Xr = [Xr[i] for i in perm] if isinstance(Xr, list) else Xr[perm]
    yr = yr[perm]
    weighted = est.fit(X, y, sample_weight=counts)
    repeated = type(est)(**est.get_params()).fit(Xr, yr)
    np.testing.assert_array_equal(_outputs(weighted, X), _outputs(repeated, X))
    assert weighted.n_iter_ == repeated.n_iter_


def _outputs(est, X):
    if isinstance(est, LSTMClassifier):
        return est.predict_proba(X)
    out = est.predict(X)
    return np.concatenate(out) if isinstance(out, list) else out


def test_without_shuffling_weights_equal_repetitions_in_place():
    """shuffle=False visits the samples in the order given; a weight of k is k
    copies at the sample's place."""
    X, y = _data()
    counts = np.random.default_rng(3).integers(0, 4, size=40)
    kw = dict(TINY, shuffle=False, batch_size=7)
    a = LSTMRegressor(**kw).fit(X, y, sample_weight=counts)
    b = LSTMRegressor(**kw).fit(np.repeat(X, counts, axis=0), np.repeat(y, counts))
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    c = LSTMRegressor(**kw).fit(X[::-1], y[::-1], sample_weight=counts[::-1])
    assert not np.array_equal(a.predict(X), c.predict(X))      # the order is the user's


def test_fit_does_not_depend_on_the_order_of_the_samples():
    X, y = _data()
    perm = np.random.default_rng(1).permutation(40)
    a = LSTMRegressor(**TINY).fit(X, y)
    b = LSTMRegressor(**TINY).fit(X[perm], y[perm])
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


def test_balanced_class_weight_counts_sample_weights():
    """'balanced' weighs the classes by their total sample weight, so that it
    is the same with weights as with repetitions."""
    X, y = _data()
    labels = (y > 0).astype(int)
    sw = np.where(labels == 1, 3.0, 1.0)
    totals = np.array([sw[labels == 0].sum(), sw[labels == 1].sum()])
    class_weight = dict(enumerate(sw.sum() / (2 * totals)))
    a = LSTMClassifier(class_weight="balanced", alpha=0.0, **TINY).fit(X, labels,
                                                                       sample_weight=sw)
    b = LSTMClassifier(class_weight=class_weight, alpha=0.0, **TINY).fit(X, labels,
                                                                         sample_weight=sw)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-5)


# ----------------------------------------------------------------------------
# messages about the user's input, in the user's words
# ----------------------------------------------------------------------------
def test_x_of_the_wrong_rank_gets_the_sequence_shape_and_make_windows():
    X, y = _data()
    with pytest.raises(ValueError, match=r"X is 4-D \(shape \(40, 6, 2, 1\)\).*\(n_samples, "
                                         r"n_timesteps, n_features\)") as info:
        LSTMRegressor(**TINY).fit(X[..., None], y)
    assert "dim <= 2" not in str(info.value)
    with pytest.raises(ValueError, match=r"X is 1-D.*make_windows") as info:
        LSTMRegressor(**TINY).fit(X[:, 0, 0], y)
    assert "array.reshape(-1, 1) if your data has a single feature" not in str(info.value)
    reg = LSTMRegressor(**TINY).fit(X, y)
    with pytest.raises(ValueError, match=r"X is 1-D.*make_windows"):
        reg.predict(X[0, :, 0])
    with pytest.raises(ValueError, match="X is a scalar"):
        reg.predict(3.0)


@pytest.mark.parametrize("where", ["X", "X list", "y", "sample_weight"])
def test_complex_input_is_refused_without_printing_it(where):
    X, y = _data(n=500)
    sw = None
    if where == "X":
        X = X + 1j
    elif where == "X list":
        X = [x + 1j for x in X]
    elif where == "y":
        y = y + 1j
    else:
        sw = np.ones(500) + 1j
    with pytest.raises(ValueError, match="Complex data not supported") as info:
        LSTMRegressor(**TINY).fit(X, y, sample_weight=sw)
    assert len(str(info.value)) < 300 and "j," not in str(info.value)


def test_random_state_generator_is_refused_at_fit():
    X, y = _data()
    reg = LSTMRegressor(hidden_size=4, max_iter=1, random_state=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"random_state.*numpy Generator.*int seed"):
        reg.fit(X, y)
    with pytest.raises(TypeError, match="random_state"):
        LSTMRegressor(random_state="seed").fit(X, y)
    LSTMRegressor(hidden_size=4, max_iter=1, random_state=np.random.RandomState(0)).fit(X, y)


@pytest.mark.parametrize("cls", [LSTMRegressor, LSTMClassifier])
@pytest.mark.parametrize("keyword,meant", [("epochs", "max_iter"), ("units", "hidden_size"),
                                           ("lr", "learning_rate_init"),
                                           ("hiden_size", "hidden_size")])
def test_foreign_keyword_names_the_class_and_the_parameter_meant(cls, keyword, meant):
    with pytest.raises(TypeError) as info:
        cls(**{keyword: 5})
    message = str(info.value)
    assert message.startswith(f"{cls.__name__}.__init__() got an unexpected keyword argument "
                              f"{keyword!r}")
    assert f"did you mean {meant!r}" in message and "BaseLSTMEstimator" not in message


def test_network_hyperparameters_are_checked_by_the_network_and_named():
    X, y = _data()
    for param, value in (("dropout", 1.0), ("hidden_size", 0), ("num_layers", 1.5),
                         ("dtype", "float16"), ("bidirectional", "yes")):
        with pytest.raises((ValueError, TypeError), match=f"LSTMRegressor: .*{param}") as info:
            LSTMRegressor(**{**TINY, param: value}).fit(X, y)
        assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    reg = LSTMRegressor(**TINY).fit(X, y).set_params(warm_start=True, recurrent_dropout=2.0)
    with pytest.raises(ValueError, match="LSTMRegressor: recurrent_dropout"):
        reg.fit(X, y)
    assert reg.lstm_.get_config()["recurrent_dropout"] == 0.0


def test_a_changed_dropout_reaches_the_continued_network():
    X, y = _data()
    reg = LSTMRegressor(**TINY).fit(X, y)
    reg.set_params(warm_start=True, dropout=0.25, recurrent_dropout=0.5, n_jobs=1).fit(X, y)
    config = reg.lstm_.get_config()
    assert (config["dropout"], config["recurrent_dropout"], config["n_jobs"]) == (0.25, 0.5, 1)


# ----------------------------------------------------------------------------
# the progress line
# ----------------------------------------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _screen(text):
    """What a terminal shows: carriage return goes back to column 0 and overwrites."""
    lines = []
    for raw in text.split("\n"):
        line = []
        for part in raw.split("\r"):
            line[:len(part)] = list(part)
        lines.append("".join(line))
    return lines


def test_progress_redraw_clears_a_longer_previous_line():
    term = _Terminal()
    progress = EpochProgress(verbose=1, max_iter=5, stream=term)
    progress.start_epoch(1, 3)
    progress.batch_done(0, 0.0164612)
    progress.batch_done(2, 0.016)          # the last batch always redraws
    shown = _screen(term.getvalue())[-1].rstrip()
    assert shown.endswith("3/3 - loss: 0.016"), shown
    progress.end_epoch(0.5)
    assert re.search(r"- loss: 0.5 - \d+s/epoch - time left: \d+s$",
                     _screen(term.getvalue())[-2].rstrip())
