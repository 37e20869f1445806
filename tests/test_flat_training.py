"""The flat parameter buffer of the training loop (clstm._flat): one vectorised
optimizer step per mini-batch must give what the per-array loop gives, bit for
bit; parameters stay views of the buffer through fit / partial_fit / load; copies
never share it; the network's ``grads_into`` adds exactly its gradients."""

import copy
import pickle

import numpy as np
import pytest

import clstm
from clstm._flat import FlatParameters
from clstm._model import TrainableModel
from clstm._optimizers import AdamOptimizer, RMSpropOptimizer, SGDOptimizer

SHAPES = {"w": (4, 3), "u": (4, 4), "b": (4,), "head": (3, 1)}


def _params(rng, dtype=np.float32):
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


# -- FlatParameters --------------------------------------------------------------
def test_flat_parameters_are_views_with_the_values():
    rng = np.random.default_rng(0)
    params = _params(rng)
    flat = FlatParameters(params)
    assert flat.values.shape == (sum(int(np.prod(s)) for s in SHAPES.values()),)
    for name, value in params.items():
        view = flat.params[name]
        assert view.base is flat.values and view.shape == value.shape
        np.testing.assert_array_equal(view, value)
        assert flat.grads[name].base is flat.grad
    assert flat.holds(flat.params)
    assert not flat.holds({**flat.params, "w": params["w"]})      # replaced: stale
    flat.params["u"][0, 0] = 7.0
    assert flat.values[12] == 7.0                                 # w has 12 entries first


def test_flat_gradient_norm_zero_and_gather():
    rng = np.random.default_rng(1)
    flat = FlatParameters(_params(rng))
    grads = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    gathered = flat.gather_grads({**grads, "other": 1})
    assert gathered["other"] == 1
    for k, g in grads.items():
        assert gathered[k] is flat.grads[k]
        np.testing.assert_array_equal(flat.grads[k], g)
    expected = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    assert flat.grad_norm() == pytest.approx(expected, rel=1e-14)
    zeroed = flat.zero_grads()
    assert not flat.grad.any() and zeroed["w"] is flat.grads["w"]


def test_flat_parameters_refuse_mixed_dtypes():
    with pytest.raises(ValueError, match="one floating dtype"):
        FlatParameters({"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float64)})


# -- the optimizer: flat step == per-array step ----------------------------------
OPTIMIZERS = [
    ("adam", lambda s: AdamOptimizer(1e-2, schedule=s)),
    ("adam-betas", lambda s: AdamOptimizer(3e-3, beta_1=0.8, beta_2=0.99, epsilon=1e-6,
                                           schedule=s)),
    ("sgd-nesterov", lambda s: SGDOptimizer(0.05, momentum=0.9, nesterov=True, schedule=s)),
    ("sgd-momentum", lambda s: SGDOptimizer(0.05, momentum=0.5, nesterov=False, schedule=s)),
    ("sgd-plain", lambda s: SGDOptimizer(0.05, momentum=0.0, schedule=s)),
    ("rmsprop", lambda s: RMSpropOptimizer(1e-2, rho=0.8, schedule=s)),
]
SCHEDULE_KINDS = [{"kind": "constant"}, {"kind": "invscaling", "power_t": 0.5},
                  {"kind": "adaptive"}, {"kind": "cosine", "period": 3}]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("schedule", SCHEDULE_KINDS, ids=lambda s: s["kind"])
@pytest.mark.parametrize("name,make", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_flat_optimizer_step_equals_per_array_step(name, make, schedule, dtype):
    rng = np.random.default_rng(2)
    start = _params(rng, dtype)
    per_array = {k: v.copy() for k, v in start.items()}
    flat = FlatParameters(start)
    opt_a, opt_f = make(schedule), make(schedule)
    for epoch in range(4):
        assert opt_a.start_epoch() == opt_f.start_epoch()
        if epoch == 2:
            assert opt_a.reduce_on_plateau() == opt_f.reduce_on_plateau()
        for _ in range(3):
            grads = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
            opt_a.update_params(per_array, grads)
            opt_f.update_params(flat.params, grads, flat=flat)     # grads copied in
            for k in SHAPES:
                np.testing.assert_array_equal(flat.params[k], per_array[k], err_msg=k)
    # same state, same format: the flat slots are saved per parameter
    (sa, aa), (sf, af) = opt_a.state_dict(), opt_f.state_dict()
    assert sa == sf and aa.keys() == af.keys()
    for key in aa:
        np.testing.assert_array_equal(aa[key], af[key])
        assert af[key].base is None                                  # copies, not views


def test_flat_optimizer_continues_from_per_array_state_and_copies():
    """Slots made per array (an older run, a loaded file) are gathered into the
    flat buffer; a deep copy (the epoch snapshot) holds separate slots and
    continues exactly like the original."""
    rng = np.random.default_rng(3)
    start = _params(rng)
    ref = {k: v.copy() for k, v in start.items()}
    flat = FlatParameters(start)
    opt_ref, opt = AdamOptimizer(1e-2), AdamOptimizer(1e-2)
    steps = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
             for _ in range(6)]
    for g in steps[:2]:                              # per array on both
        opt_ref.update_params(ref, g)
        opt.update_params(flat.params, g)
    for g in steps[2:4]:                             # then flat
        opt_ref.update_params(ref, g)
        opt.update_params(flat.params, g, flat=flat)
    assert opt.state["m"]["w"].base is opt._flat_state[1]["m"][0]
    snap = copy.deepcopy(opt)
    assert "_flat_state" not in snap.__dict__
    assert snap.state["m"]["w"].base is None         # its own arrays
    assert snap.schedule is not opt.schedule and snap.t == opt.t
    restored = pickle.loads(pickle.dumps(opt))
    values = {k: v.copy() for k, v in flat.params.items()}
    for g in steps[4:]:
        opt_ref.update_params(ref, g)
        opt.update_params(flat.params, g, flat=flat)
    for k in SHAPES:
        np.testing.assert_array_equal(flat.params[k], ref[k])
    # the copy, continued flat from the saved values, takes the same path
    flat2 = FlatParameters(values)
    for copied in (snap, restored):
        for k, v in values.items():
            flat2.params[k][...] = v
        for g in steps[4:]:
            copied.update_params(flat2.params, g, flat=flat2)
        for k in SHAPES:
            np.testing.assert_array_equal(flat2.params[k], ref[k])
        # loading a state dict replaces the slots: gathered again on the next step
    loaded = AdamOptimizer(1e-2)
    loaded.load_state_dict(*opt.state_dict(), params=flat.params)
    assert loaded.state["m"]["w"].base is None


# -- the network adds into caller-provided gradient arrays ------------------------
NETWORKS = [
    ("lstm", lambda: clstm.LSTM(3, 5, dtype="float64", random_state=0)),
    ("lstm-2-bidir", lambda: clstm.LSTM(3, 5, num_layers=2, bidirectional=True,
                                        dtype="float64", random_state=0)),
    ("peephole", lambda: clstm.LSTM(3, 5, peephole=True, dtype="float64", random_state=0)),
    ("layer-norm", lambda: clstm.LSTM(3, 5, layer_norm=True, dtype="float64",
                                      random_state=0)),
    ("proj", lambda: clstm.LSTM(3, 5, proj_size=2, dtype="float64", random_state=0)),
    ("coupled", lambda: clstm.LSTM(3, 5, coupled_gates=True, dtype="float64",
                                   random_state=0)),
    ("gru-bidir", lambda: clstm.GRU(3, 5, bidirectional=True, dtype="float64",
                                    random_state=0)),
]


@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize("name,make", NETWORKS, ids=[n[0] for n in NETWORKS])
def test_backward_grads_into_adds_exactly_the_gradients(name, make, n_jobs):
    rng = np.random.default_rng(4)
    net = make()
    net.n_jobs = n_jobs
    X = rng.standard_normal((24, 6, 3))
    lengths = rng.integers(1, 7, 24)
    out, state = net.run(X, lengths=lengths)
    grad_out = rng.standard_normal(out.shape)
    grad_state = tuple(rng.standard_normal(s.shape) for s in state)
    net.backward_state(grad_out, grad_state)
    plain = {k: v.copy() for k, v in net.grads.items()}
    net.run(X, lengths=lengths)
    start = {k: rng.standard_normal(v.shape) for k, v in net.params.items()}
    into = {k: v.copy() for k, v in start.items()}
    net.backward_state(grad_out, grad_state, grads_into=into)
    assert set(into) == set(net.params)            # nothing added to the caller's dict
    for k in net.params:
        assert net.grads[k] is into[k]
        np.testing.assert_allclose(into[k], start[k] + plain[k], rtol=1e-12, atol=1e-12,
                                   err_msg=k)
    for k in ("h0",):
        np.testing.assert_array_equal(net.grads[k], plain[k])


# -- fits: the flat path gives the per-array path's result -------------------------
def _data(n=40, T=7, F=2, seed=5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T, F)).astype(np.float32)
    y = np.sin(X[:, :, 0].sum(1)) + 0.1 * X[:, -1, 1]
    return X, y


FITS = [
    dict(),                                                         # defaults: clip 5, alpha
    dict(solver="sgd", learning_rate_init=0.05, clip_norm=0.05),   # clipping every batch
    dict(solver="rmsprop", learning_rate="cosine", alpha=1e-2),
    dict(attention="additive", solver="adam", learning_rate="invscaling"),
    dict(tbptt_steps=3, bidirectional=False, num_layers=2, n_jobs=2),
    dict(cell="gru", bidirectional=True, return_sequences=True),
]


def _fit(monkeypatch, flat, params, X, y, classifier=False):
    if not flat:
        monkeypatch.setattr(TrainableModel, "flat_params", lambda self: None)
    cls = clstm.LSTMClassifier if classifier else clstm.LSTMRegressor
    est = cls(hidden_size=6, max_iter=3, batch_size=8, random_state=0, **params)
    with pytest.warns(Warning):                # ConvergenceWarning at max_iter
        est.fit(X, y)
    monkeypatch.undo()
    return est


@pytest.mark.parametrize("params", FITS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items())
                         or "defaults")
def test_fit_equals_per_array_fit(monkeypatch, params):
    X, y = _data()
    if params.get("return_sequences"):
        y = np.cumsum(X[:, :, 0], axis=1)
    a = _fit(monkeypatch, False, params, X, y)
    b = _fit(monkeypatch, True, params, X, y)
    assert b._model.flat_params() is not None and a._model.__dict__.get("_flat") is None
    np.testing.assert_allclose(b.loss_curve_, a.loss_curve_, rtol=1e-6)
    np.testing.assert_allclose(b.predict(X), a.predict(X), rtol=1e-5, atol=1e-6)


def test_token_fit_keeps_the_embedding_apart(monkeypatch):
    """The embedding's row-sparse gradient takes the per-array path beside the flat one."""
    rng = np.random.default_rng(6)
    X = rng.integers(1, 12, (30, 5))
    y = (X[:, 0] > 6).astype(int)
    params = dict(vocab_size=12, embedding_dim=3, padding_idx=0)
    a = _fit(monkeypatch, False, params, X, y, classifier=True)
    b = _fit(monkeypatch, True, params, X, y, classifier=True)
    flat = b._model.flat_params()
    assert not any(k.startswith("embedding.") for k in flat.params)
    np.testing.assert_array_equal(b.loss_curve_, a.loss_curve_)
    np.testing.assert_array_equal(b.predict_proba(X), a.predict_proba(X))


def _assert_views(est):
    model = est._model
    flat = model.__dict__["_flat"]
    assert flat.holds(model.params)
    assert model.head_weight.base is flat.values
    assert all(v.base is flat.values for v in model.network.params.values())
    slots = est._optimizer._flat_state[1]
    assert all(est._optimizer.state["m"][k].base is slots["m"][0] for k in flat.params)


def test_params_stay_views_through_fit_partial_fit_and_load(tmp_path, monkeypatch):
    X, y = _data()
    est = clstm.LSTMRegressor(hidden_size=6, max_iter=2, batch_size=8, random_state=0)
    with pytest.warns(Warning):
        est.fit(X, y)
    _assert_views(est)
    est.partial_fit(X, y)
    _assert_views(est)
    # a saved and loaded (or unpickled) copy holds plain arrays, the same values;
    # its next partial_fit gathers them again and continues exactly as the original
    path = tmp_path / "m.npz"
    est.save(path)
    loaded = clstm.load(path)
    unpickled = pickle.loads(pickle.dumps(est))
    for other in (loaded, unpickled):
        assert "_flat" not in other._model.__dict__
        np.testing.assert_array_equal(other.predict(X), est.predict(X))
    est.partial_fit(X, y)
    for other in (loaded, unpickled):
        other.partial_fit(X, y)
        _assert_views(other)
        np.testing.assert_array_equal(other.predict(X), est.predict(X))


def test_model_copies_do_not_share_the_buffer():
    X, y = _data()
    est = clstm.LSTMRegressor(hidden_size=6, max_iter=1, batch_size=8, random_state=0)
    with pytest.warns(Warning):
        est.fit(X, y)
    model = est._model
    twin = copy.deepcopy(model)
    assert "_flat" not in twin.__dict__
    before = model.head_weight.copy()
    twin.head_weight += 1.0
    for v in twin.network.params.values():
        v += 1.0
    np.testing.assert_array_equal(model.head_weight, before)
    flat = twin.flat_params()                      # the copy gathers its own buffer
    assert flat is not model.__dict__["_flat"] and twin.head_weight.base is flat.values
    np.testing.assert_array_equal(twin.head_weight, before + 1.0)


def test_replaced_parameters_are_gathered_again():
    X, y = _data()
    est = clstm.LSTMRegressor(hidden_size=6, max_iter=1, batch_size=8, random_state=0)
    with pytest.warns(Warning):
        est.fit(X, y)
    model = est._model
    old = model.__dict__["_flat"]
    state = model.network.state_dict()
    model.network.load_state_dict({k: v * 0.5 for k, v in state.items()})   # new arrays
    flat = model.flat_params()
    assert flat is not old and flat.holds(model.params)
    for k, v in state.items():
        np.testing.assert_array_equal(model.network.params[k], v * np.float32(0.5))


def test_docstring_examples_run():
    import doctest

    import clstm._flat
    from clstm._rnn import RecurrentNetwork
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    tests = finder.find(clstm._flat) + finder.find(RecurrentNetwork.backward_state,
                                                   "backward_state", globs={})
    assert sum(len(t.examples) for t in tests) >= 8
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
