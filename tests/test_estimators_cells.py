"""The estimators with every cell: cell="gru" and the LSTM options, through
scikit-learn's checks, fitting, truncated BPTT, ragged data and save/load."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

import clstm
from clstm import LSTMClassifier, LSTMRegressor
from clstm._model import SequenceModel

VARIANTS = [
    {"cell": "gru"},
    {"proj_size": 32},
    {"peephole": True, "coupled_gates": True},
    {"layer_norm": True},
]
IDS = ["gru", "proj", "peephole-cifg", "layernorm"]


@parametrize_with_checks([cls(**kw) for kw in VARIANTS for cls in (LSTMRegressor,
                                                                     LSTMClassifier)])
def test_sklearn_checks_for_every_cell(estimator, check):
    check(estimator)


def _series_task(n=120, T=12, seed=0):
    """y sums one feature over the window and reads the other's last step."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T, 2))
    return X, X[:, :, 0].mean(axis=1) + 0.5 * X[:, -1, 1]


def _small(kw, hidden_size):
    """The variant at a smaller width (proj_size must stay below hidden_size)."""
    return {**kw, "proj_size": hidden_size // 2} if "proj_size" in kw else kw


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_every_cell_learns_and_round_trips_through_save(tmp_path, kw):
    X, y = _series_task()
    reg = LSTMRegressor(hidden_size=24, max_iter=60, random_state=0, **_small(kw, 24)).fit(X, y)
    assert reg.score(X, y) > 0.95
    net = reg._model.network
    assert isinstance(net, clstm.GRU if kw.get("cell") == "gru" else clstm.LSTM)
    path = tmp_path / "model.npz"
    reg.save(path)
    loaded = clstm.load(path)
    np.testing.assert_array_equal(loaded.predict(X), reg.predict(X))
    assert loaded.get_params() == reg.get_params()
    # warm start continues the same cell
    reg.set_params(warm_start=True, max_iter=2).fit(X, y)
    assert type(reg._model.network) is type(net)


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_truncated_bptt_and_ragged_sequences_with_every_cell(kw):
    X, y = _series_task(n=40, T=10)
    lengths = np.random.default_rng(1).integers(3, 11, size=40)
    ragged = [x[:n] for x, n in zip(X, lengths)]
    reg = LSTMRegressor(hidden_size=8, max_iter=3, tbptt_steps=4, random_state=0, dtype="float64",
                        **_small(kw, 8)).fit(ragged, y)
    pred = reg.predict(ragged)
    # padding never changes a sequence's prediction: each alone gives the same
    alone = np.array([reg.predict([seq])[0] for seq in ragged[:5]])
    np.testing.assert_allclose(alone, pred[:5], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
@pytest.mark.parametrize("return_sequences", [False, True])
def test_model_gradient_and_truncated_bptt_with_every_cell(kw, return_sequences):
    """Head + network + L2 in float64: central differences of the loss; and
    truncated BPTT carries the states exactly (same loss for any chunking)."""
    rng = np.random.default_rng(1)
    B, T, F = 4, 6, 2
    params = dict(hidden_size=4, num_layers=2, bidirectional=False, dropout=0.0,
                  recurrent_dropout=0.0, dtype="float64", n_jobs=None, **_small(kw, 4))
    model = SequenceModel.create(F, params, 2, "squared_error", return_sequences,
                                 np.random.RandomState(0))
    X = rng.normal(size=(B, T, F))
    lengths = np.array([6, 3, 5, 1])
    lead = (B, T) if return_sequences else (B,)
    W = rng.uniform(0.5, 2, size=lead)
    if return_sequences:
        W[np.arange(T)[None] >= lengths[:, None]] = 0
    Y = rng.normal(size=lead + (2,))
    loss0, grads = model.loss_and_grad(X, lengths, Y, W, alpha=0.3)
    for k in (1, 2, 4):
        chunked, _ = model.loss_and_grad(X, lengths, Y, W, alpha=0.3, tbptt_steps=k,
                                         need_grad=False)
        assert chunked == pytest.approx(loss0, rel=1e-13)
    eps = 1e-6
    for name, p in model.params.items():
        flat = p.reshape(-1)
        for i in rng.choice(flat.size, size=min(4, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + eps
            lp, _ = model.loss_and_grad(X, lengths, Y, W, alpha=0.3, need_grad=False)
            flat[i] = old - eps
            lm, _ = model.loss_and_grad(X, lengths, Y, W, alpha=0.3, need_grad=False)
            flat[i] = old
            num = (lp - lm) / (2 * eps)
            assert abs(grads[name].reshape(-1)[i] - num) <= 1e-7 + 1e-5 * abs(num), (name, i)


def test_classifier_with_a_gru_learns():
    X, y = _series_task(n=150)
    clf = LSTMClassifier(hidden_size=16, max_iter=40, cell="gru", random_state=0).fit(X, y > 0)
    assert clf.score(X, y > 0) > 0.75
    assert clf.predict_proba(X).shape == (150, 2)


@pytest.mark.parametrize("kw,match", [
    ({"cell": "gru", "peephole": True}, "peephole applies to cell='lstm' only"),
    ({"cell": "gru", "proj_size": 4, "layer_norm": True}, "proj_size, layer_norm apply"),
    ({"cell": "rnn"}, "cell must be one of"),
    ({"cell": None}, "cell must be one of"),
    ({"proj_size": 8}, "proj_size must be in"),
    ({"coupled_gates": "yes"}, "coupled_gates must be a bool"),
])
def test_bad_cell_options_are_clear_errors(kw, match):
    X, y = _series_task(n=10, T=4)
    with pytest.raises(ValueError, match=match) as info:
        LSTMRegressor(hidden_size=8, max_iter=1, **kw).fit(X, y)
    assert "LSTMRegressor" in str(info.value)


@pytest.mark.parametrize("change", [{"cell": "gru"}, {"peephole": True}, {"proj_size": 2},
                                    {"layer_norm": True}, {"coupled_gates": True}])
def test_continuing_a_fit_refuses_a_different_cell(change):
    X, y = _series_task(n=20, T=4)
    reg = LSTMRegressor(hidden_size=8, max_iter=1, warm_start=True).fit(X, y)
    reg.set_params(**change)
    with pytest.raises(ValueError, match="differs from the fitted model"):
        reg.fit(X, y)
    with pytest.raises(ValueError, match="differs from the fitted model"):
        reg.partial_fit(X, y)
