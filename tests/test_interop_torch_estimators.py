"""Fitted estimators as torch modules and back (issue 12, item 5).

- to_torch(estimator) is an EstimatorModule whose forward(x, lengths) equals
  predict / predict_proba on padded batches (pack_padded_sequence
  semantics) for LSTM, LSTM with projection and GRU, stacked and
  bidirectional, regressors (one and two outputs, per step) and classifiers
  (binary, multiclass, per step), float32 and float64; from_torch gives the
  same estimator back, bit for bit.
- Fine-tuned in torch, the module comes back as an estimator that predicts
  what the module predicts; it saves, loads and trains on.
- A user's own (LSTM / GRU, Linear) pair: regressor, sigmoid and softmax
  classifiers with classes in any order, per-step heads.
- torch.save / torch.load of the module; refusals; import clstm.interop
  imports no framework.
"""

import io
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import clstm
from clstm import LSTMClassifier, LSTMRegressor
from clstm.interop import from_torch, to_torch

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

N, T, F, H = 20, 6, 3, 4
RTOL = {"float32": 1e-5, "float64": 1e-12}
NETS = {"lstm": dict(), "lstmp-2": dict(proj_size=2, num_layers=2),
        "gru-bi-2": dict(cell="gru", bidirectional=True, num_layers=2),
        "lstm-bi": dict(bidirectional=True)}
KINDS = ["reg1", "reg2", "binary", "multi", "reg-seq", "clf-seq"]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


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
    X = rng.standard_normal((N, T, F)) * 2.0 + 1.5
    lengths = rng.integers(1, T + 1, size=N)
    lengths[0] = T
    return X, lengths


def targets(kind, X):
    s = X[:, :, 0].mean(axis=1)
    if kind == "reg1":
        return 30.0 * s + 100.0
    if kind == "reg2":
        return np.stack([30.0 * s + 100.0, -s], axis=1)
    if kind == "binary":
        return np.where(s > np.median(s), "yes", "no")
    if kind == "multi":
        return np.digitize(s, np.quantile(s, [1 / 3, 2 / 3])) * 10 - 5
    if kind == "reg-seq":
        return np.cumsum(X[:, :, :2], axis=1)
    if kind == "clf-seq":
        return (X[:, :, 0] > 1.5).astype(int)
    raise AssertionError(kind)


def fitted(kind, net, dtype, X):
    cls = LSTMRegressor if kind.startswith("reg") else LSTMClassifier
    return cls(hidden_size=H, max_iter=2, random_state=0, dtype=dtype,
               return_sequences=kind.endswith("-seq"), **NETS[net]).fit(X, targets(kind, X))


def expected(est, X, lengths=None):
    if isinstance(est, LSTMClassifier):
        return est.predict_proba(X, lengths=lengths)
    return est.predict(X, lengths=lengths)


def run(torch, module, X, lengths=None):
    with torch.no_grad():
        return module(torch.from_numpy(X), lengths).numpy()


def valid_steps(A, lengths):
    """The valid steps of a padded (n, T, ...) array or a list of (T_i, ...) arrays."""
    if isinstance(A, list):
        return np.concatenate(A)
    return np.concatenate([A[i, :n] for i, n in enumerate(lengths)])


# -- estimator -> torch -> estimator ---------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("net", ["lstm", "lstmp-2", "gru-bi-2"])
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(torch, kind, net, dtype):
    X, lengths = data()
    est = fitted(kind, net, dtype, X)
    module = to_torch(est)
    assert not module.training and module.head.weight.dtype == getattr(torch, dtype)
    assert isinstance(module, clstm.interop.EstimatorModule)
    assert isinstance(module.rnn, torch.nn.GRU if est.cell == "gru" else torch.nn.LSTM)
    # equal-length batches, and padded ones with lengths (garbage in the padding)
    assert rel_err(run(torch, module, X), expected(est, X)) <= RTOL[dtype]
    padded = X.copy()
    for i, n in enumerate(lengths):
        padded[i, n:] = 1e3
    got, want = run(torch, module, padded, lengths), expected(est, padded, lengths)
    if est.return_sequences:
        got, want = valid_steps(got, lengths), valid_steps(want, lengths)
    assert rel_err(got, want) <= RTOL[dtype]
    back = from_torch(module)
    assert type(back) is type(est)
    assert back.get_params() == {**est.get_params(), "max_iter": back.max_iter,
                                 "random_state": None}
    for name, value in est._model.params.items():
        np.testing.assert_array_equal(back._model.params[name], value, err_msg=name)
    for ours, theirs in zip(back._x_stats, est._x_stats):
        np.testing.assert_array_equal(ours, theirs)
    if isinstance(est, LSTMClassifier):
        np.testing.assert_array_equal(back.classes_, est.classes_)
    else:
        for ours, theirs in zip(back._y_stats, est._y_stats):
            np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(expected(back, X), expected(est, X))


def test_head_outputs_are_the_decision_function(torch):
    X, _ = data()
    clf = fitted("binary", "lstm", "float64", X)
    with torch.no_grad():
        z = to_torch(clf).head_outputs(torch.from_numpy(X)).numpy()
    assert rel_err(z[:, 0], clf.decision_function(X)) <= 1e-12


def test_fine_tuned_module_comes_back(torch, tmp_path):
    X, lengths = data()
    y = targets("reg1", X)
    reg = fitted("reg1", "lstm", "float32", X)
    module = to_torch(reg).train()
    # fine-tune in torch on the standardised targets, as clstm trains
    y_std = torch.from_numpy(((y - reg._y_stats[0]) / reg._y_stats[1]).astype(np.float32))
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    Xt = torch.from_numpy(X)
    for _ in range(20):
        opt.zero_grad()
        loss = torch.mean((module.head_outputs(Xt, lengths)[:, 0] - y_std) ** 2)
        loss.backward()
        opt.step()
    module.eval()
    tuned = from_torch(module)
    assert rel_err(tuned.predict(X, lengths=lengths), run(torch, module, X, lengths)) <= 1e-5
    changed = np.abs(tuned.lstm_.params["weight_hh_l0"] - reg.lstm_.params["weight_hh_l0"])
    assert changed.max() > 1e-3
    # it saves, loads, and trains on from the tuned weights (fresh Adam)
    tuned.save(tmp_path / "tuned.clstm")
    loaded = clstm.load(tmp_path / "tuned.clstm")
    np.testing.assert_array_equal(loaded.predict(X), tuned.predict(X))
    loaded.set_params(learning_rate_init=1e-12).partial_fit(X, y)
    assert loaded.n_iter_ == 1 and loaded._optimizer.t == 1
    assert rel_err(loaded.predict(X), tuned.predict(X)) <= 1e-6


def test_random_state_makes_further_training_reproducible(torch):
    X, _ = data()
    y = targets("reg1", X)
    module = to_torch(fitted("reg1", "lstm", "float64", X))
    runs = []
    for _ in range(2):
        reg = from_torch(module, random_state=3).set_params(batch_size=4)
        assert reg.random_state == 3
        runs.append(reg.partial_fit(X, y).predict(X))
    np.testing.assert_array_equal(runs[0], runs[1])
    other = from_torch(module, random_state=4).set_params(batch_size=4)  # another shuffle
    assert not np.array_equal(other.partial_fit(X, y).predict(X), runs[0])


def test_module_pickles_with_torch_save(torch):
    X, lengths = data()
    module = to_torch(fitted("multi", "gru-bi-2", "float32", X))
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    assert type(again) is type(module)
    np.testing.assert_array_equal(run(torch, again, X, lengths), run(torch, module, X, lengths))
    np.testing.assert_array_equal(again.classes, module.classes)


# -- a user's own (rnn, Linear) pair ---------------------------------------------------------

def pair(torch, n_out, *, gru=False, bidirectional=False, dtype=None, seed=0):
    torch.manual_seed(seed)
    cls = torch.nn.GRU if gru else torch.nn.LSTM
    rnn = cls(F, H, num_layers=2, bidirectional=bidirectional, batch_first=True, dtype=dtype)
    return rnn, torch.nn.Linear(H * (2 if bidirectional else 1), n_out, dtype=dtype)


def pair_outputs(torch, rnn, head, X, per_step=False):
    """The pair's head on the top layer's last h (or every step): the oracle."""
    with torch.no_grad():
        out, state = rnn(torch.from_numpy(X))
        if per_step:
            return head(out).numpy()
        h_n = state[0] if isinstance(state, tuple) else state
        D = 2 if rnn.bidirectional else 1
        return head(torch.cat(list(h_n[-D:]), dim=-1)).numpy()


def test_pair_regressor(torch):
    X, _ = data()
    rnn, head = pair(torch, 2, gru=True, bidirectional=True, dtype=torch.float64)
    reg = from_torch((rnn, head))
    assert isinstance(reg, LSTMRegressor) and not reg.standardize and reg.dtype == "float64"
    assert rel_err(reg.predict(X), pair_outputs(torch, rnn, head, X)) <= 1e-12
    rnn, head = pair(torch, 1)
    reg = from_torch([rnn, head], return_sequences=True)
    want = pair_outputs(torch, rnn, head, X.astype(np.float32), per_step=True)[..., 0]
    assert reg.predict(X).shape == (N, T) and rel_err(reg.predict(X), want) <= 1e-5


def test_pair_classifiers(torch, tmp_path):
    X, _ = data()
    rnn, head = pair(torch, 3, bidirectional=True)
    clf = from_torch((rnn, head), classes=["c", "a", "b"])        # column k: classes[k]
    logits = pair_outputs(torch, rnn, head, X.astype(np.float32))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(clf.classes_, ["a", "b", "c"])
    assert rel_err(clf.predict_proba(X), p[:, [1, 2, 0]]) <= 1e-5
    clf.save(tmp_path / "clf.clstm")
    loaded = clstm.load(tmp_path / "clf.clstm")
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(loaded.classes_, ["a", "b", "c"])
    # one logit: the probability of classes[1] (here the smaller label)
    rnn, head = pair(torch, 1, seed=1)
    clf = from_torch((rnn, head), classes=[7, 3])
    z = pair_outputs(torch, rnn, head, X.astype(np.float32))[:, 0]
    assert rel_err(clf.predict_proba(X)[:, 0], 1 / (1 + np.exp(-z))) <= 1e-5
    # two softmax columns for two classes become one logit
    rnn, head = pair(torch, 2, seed=2)
    clf = from_torch((rnn, head), classes=[0, 1])
    assert clf._model.n_outputs == 1
    z = pair_outputs(torch, rnn, head, X.astype(np.float32))
    assert rel_err(clf.decision_function(X), z[:, 1] - z[:, 0]) <= 1e-5


# -- refusals ---------------------------------------------------------------------------

def test_refusals(torch):
    X, _ = data()
    reg = LSTMRegressor(hidden_size=H, max_iter=1, peephole=True).fit(X, X[:, 0, 0])
    with pytest.raises(ValueError, match="torch.nn.LSTM has no peephole option"):
        to_torch(reg)
    module = to_torch(fitted("binary", "lstm", "float32", X))
    with pytest.raises(ValueError, match="an EstimatorModule carries its own classes"):
        from_torch(module, classes=[0, 1])
    rnn, _ = pair(torch, 1)
    with pytest.raises(ValueError, match="the torch.nn.Linear head reads 5 features; on the "
                                         "network's output it should read 4"):
        from_torch((rnn, torch.nn.Linear(5, 1)))
    with pytest.raises(TypeError, match="from_torch takes \\(rnn, head\\) with a "
                                        "torch.nn.Linear head, got ReLU"):
        from_torch((rnn, torch.nn.ReLU()))
    with pytest.raises(ValueError, match="sigmoid output of 1 columns and classes has 3"):
        from_torch(pair(torch, 1), classes=[0, 1, 2])
    with pytest.raises(ValueError, match="classes and return_sequences apply to estimators"):
        from_torch(rnn, classes=[0, 1])


@pytest.mark.parametrize("make, message", [
    (lambda: LSTMRegressor(hidden_size=H, max_iter=1, attention="additive"),
     "has attention='additive', which Keras' and torch's LSTM modules do not include"),
    (lambda: clstm.LSTMSeq2SeqRegressor(hidden_size=H, max_iter=1),
     "its model is Seq2SeqModel"),
    (lambda: LSTMRegressor(hidden_size=H, max_iter=1),
     "predicts \\(n, 2, 2\\) targets"),
])
def test_models_beyond_network_and_head_are_refused(make, message):
    # to_torch / to_keras would silently drop the attention or the decoder
    from clstm.interop._estimator_parts import estimator_parts
    X, _ = data()
    y = {"attention": X[:, 0, 0], "Seq2Seq": X[:, :2, 0], "targets": X[:, :2, :2]}[
        next(k for k in ("attention", "Seq2Seq", "targets") if k in message)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = make().fit(X, y)
    with pytest.raises(ValueError, match=message):
        estimator_parts(est)


def test_importing_interop_imports_no_framework():
    code = ("import sys, clstm.interop; from clstm.interop import to_torch, to_keras; "
            "print(sorted(m for m in ('torch', 'keras', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
