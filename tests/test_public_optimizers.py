"""clstm.optimizers: the public optimizers of the network API.

Oracles: the textbook formulas in float64 NumPy (Keras's Adam and RMSprop,
scikit-learn's SGD with momentum), a hand-rescaled gradient for clipping,
and a training run whose loss must fall. Every error must leave parameters,
slots and the step count as they were.
"""

import pickle

import numpy as np
import pytest

import clstm
from clstm.optimizers import SGD, Adam, RMSprop

pytestmark = pytest.mark.kernel    # fast: also run against the bounds-checked build


def _net(dtype="float64", seed=0):
    return clstm.LSTM(3, 5, dtype=dtype, random_state=seed)


def _backward(net, seed=1):
    X = np.random.default_rng(seed).standard_normal((4, 6, 3))
    out, _ = net.forward(X)
    net.backward(2 * out / out.size)
    return {k: v.copy() for k, v in net.grads.items()}


def _ref_adam(p, gs, lr, b1, b2, eps):
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(gs, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
    return p


def _ref_sgd(p, gs, lr, momentum, nesterov):
    v = np.zeros_like(p)
    for g in gs:
        v = momentum * v - lr * g
        p = p + (momentum * v - lr * g if nesterov else v)
    return p


def _ref_rmsprop(p, gs, lr, rho, eps):
    s = np.zeros_like(p)
    for g in gs:
        s = rho * s + (1 - rho) * g * g
        p = p - lr * g / (np.sqrt(s) + eps)
    return p


CASES = [
    (lambda: Adam(0.01, 0.8, 0.95, 1e-6), lambda p, gs: _ref_adam(p, gs, 0.01, 0.8, 0.95, 1e-6)),
    (lambda: SGD(0.05), lambda p, gs: _ref_sgd(p, gs, 0.05, 0.0, False)),
    (lambda: SGD(0.05, momentum=0.7), lambda p, gs: _ref_sgd(p, gs, 0.05, 0.7, False)),
    (lambda: SGD(0.05, momentum=0.7, nesterov=True),
     lambda p, gs: _ref_sgd(p, gs, 0.05, 0.7, True)),
    (lambda: RMSprop(0.01, 0.8, 1e-6), lambda p, gs: _ref_rmsprop(p, gs, 0.01, 0.8, 1e-6)),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("make, ref", CASES)
def test_three_steps_match_the_formula(make, ref, dtype):
    rng = np.random.default_rng(0)
    shapes = {"w": (4, 3), "b": (4,)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    start = {k: v.astype(np.float64) for k, v in params.items()}
    grads = [{k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
             for _ in range(3)]
    ids = {k: id(v) for k, v in params.items()}
    opt = make()
    for g in grads:
        opt.step(params, g)
    assert opt.iterations == 3
    tol = 1e-12 if dtype == "float64" else 2e-6
    for k in shapes:
        assert id(params[k]) == ids[k] and params[k].dtype == dtype   # in place
        want = ref(start[k], [g[k].astype(np.float64) for g in grads])
        np.testing.assert_allclose(params[k], want, rtol=tol, atol=tol)
        assert not np.allclose(params[k], start[k])


def test_step_on_a_network_updates_its_arrays_in_place():
    net, twin = _net(), _net()
    opt, opt2 = Adam(0.01), Adam(0.01)
    arrays = dict(net.params)
    grads = _backward(net)
    _backward(twin)
    opt.step(net)                                    # the network: params and grads
    opt2.step(twin.params, twin.grads)               # the same as two dicts ("h0", "c0" ignored)
    for k, v in net.params.items():
        assert v is arrays[k]
        np.testing.assert_array_equal(v, twin.params[k])
        want = _ref_adam(_net().params[k], [grads[k]], 0.01, 0.9, 0.999, 1e-7)
        np.testing.assert_allclose(v, want, rtol=1e-12, atol=1e-15)
    # the network's next forward sees the new weights (its compiled plan is refreshed)
    X = np.random.default_rng(5).standard_normal((2, 4, 3))
    fresh = _net()
    fresh.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(net.forward(X)[0], fresh.forward(X)[0])


def test_global_clipnorm_rescales_all_gradients_together():
    rng = np.random.default_rng(2)
    params = {"a": rng.standard_normal(5), "b": rng.standard_normal((2, 2))}
    grads = {"a": 3 * rng.standard_normal(5), "b": 3 * rng.standard_normal((2, 2))}
    norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
    clipped = {k: v.copy() for k, v in params.items()}
    SGD(0.1, global_clipnorm=norm / 4).step(clipped, grads)
    for k in params:
        np.testing.assert_allclose(clipped[k], params[k] - 0.1 * grads[k] / 4, rtol=1e-12)
    unclipped = {k: v.copy() for k, v in params.items()}
    SGD(0.1, global_clipnorm=norm * 2).step(unclipped, grads)    # below the bound: untouched
    for k in params:
        np.testing.assert_array_equal(unclipped[k], params[k] - 0.1 * grads[k])
    assert np.sqrt(sum(np.sum(g * g) for g in grads.values())) == norm   # grads not edited


def test_training_a_network_with_a_head_lowers_the_loss():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 10, 2)).astype(np.float32)
    y = X[:, :, 0].sum(axis=1, keepdims=True) * 0.3          # a sum over time: needs memory
    net = clstm.LSTM(2, 16, dtype="float32", random_state=0)
    head = {"w": np.zeros((16, 1), np.float32), "b": np.zeros(1, np.float32)}
    opt = Adam(0.02)

    def loss_and_grads():
        out, _ = net.forward(X)
        last = out[:, -1]
        err = last @ head["w"] + head["b"] - y
        d = 2 * err / err.size
        grad_out = np.zeros_like(out)
        grad_out[:, -1] = d @ head["w"].T
        net.backward(grad_out)
        return float(np.mean(err ** 2)), {"w": last.T @ d, "b": d.sum(axis=0)}

    first, _ = loss_and_grads()
    for _ in range(150):
        _, head_grads = loss_and_grads()
        opt.step({**net.params, **head}, {**net.grads, **head_grads})
    last, _ = loss_and_grads()
    assert last < 0.1 * first, (first, last)


def _snapshot(params, opt):
    return ({k: v.copy() for k, v in params.items()}, pickle.dumps(opt.state_dict()),
            opt.iterations)


def _assert_unchanged(params, opt, snap):
    for k, v in snap[0].items():
        np.testing.assert_array_equal(params[k], v)
    assert pickle.dumps(opt.state_dict()) == snap[1] and opt.iterations == snap[2]


@pytest.mark.parametrize("bad, match", [
    (lambda g: g.pop("w"), "no gradient for parameter 'w'"),
    (lambda g: g.__setitem__("w", np.ones((3, 4))), r"gradient of 'w' has shape \(3, 4\)"),
    (lambda g: g["b"].__setitem__(1, np.nan), "gradient of 'b' is not finite"),
    (lambda g: g["w"].__setitem__((0, 0), -np.inf), "gradient of 'w' is not finite"),
])
def test_bad_gradients_raise_and_change_nothing(bad, match):
    rng = np.random.default_rng(3)
    params = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(4)}
    opt = Adam(0.1)
    opt.step(params, {k: np.ones_like(v) for k, v in params.items()})    # slots exist now
    grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    bad(grads)
    snap = _snapshot(params, opt)
    with pytest.raises(ValueError, match=match):
        opt.step(params, grads)
    _assert_unchanged(params, opt, snap)


def test_read_only_or_wrong_type_parameters_raise_before_any_update():
    params = {"a": np.zeros(3), "b": np.zeros(2)}
    params["b"].flags.writeable = False
    grads = {"a": np.ones(3), "b": np.ones(2)}
    opt = SGD(0.1)
    with pytest.raises(ValueError, match="parameter 'b' is read-only"):
        opt.step(params, grads)
    np.testing.assert_array_equal(params["a"], 0)            # 'a' came first: still untouched
    with pytest.raises(TypeError, match="parameter 'a' must be a float NumPy array"):
        opt.step({"a": [0.0, 1.0]}, {"a": np.ones(2)})
    with pytest.raises(TypeError, match="parameter 'a' must be a float NumPy array"):
        opt.step({"a": np.zeros(2, dtype=np.int64)}, {"a": np.ones(2)})
    with pytest.raises(TypeError, match="gradient of 'a' must be a float array"):
        opt.step({"a": np.zeros(2)}, {"a": np.array(["x", "y"])})
    with pytest.raises(TypeError, match="two dicts"):
        opt.step([np.zeros(2)], [np.ones(2)])
    with pytest.raises(ValueError, match="no parameters"):
        opt.step({}, {"a": np.ones(2)})
    assert opt.iterations == 0


def test_a_network_before_its_backward_says_to_run_backward():
    net = _net()
    with pytest.raises(ValueError, match="run the network's backward before step"):
        Adam().step(net)
    net.forward(np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="run the network's backward before step"):
        Adam().step(net)


@pytest.mark.parametrize("make, match", [
    (lambda: Adam(learning_rate=0), "learning_rate must be a finite number > 0"),
    (lambda: Adam(learning_rate=float("nan")), "learning_rate"),
    (lambda: Adam(beta_1=1.0), r"beta_1 must be a number in \[0, 1\)"),
    (lambda: Adam(beta_2=-0.1), "beta_2"),
    (lambda: Adam(epsilon=0), "epsilon must be a finite number > 0"),
    (lambda: SGD(momentum=1.5), "momentum"),
    (lambda: SGD(learning_rate="0.1"), "learning_rate"),
    (lambda: RMSprop(rho=True), "rho"),
    (lambda: RMSprop(global_clipnorm=-1), "global_clipnorm"),
])
def test_bad_hyperparameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_learning_rate_can_be_changed_between_steps():
    params = {"a": np.zeros(2)}
    opt = SGD(0.1)
    opt.step(params, {"a": np.ones(2)})
    opt.learning_rate = 0.5
    opt.step(params, {"a": np.ones(2)})
    np.testing.assert_allclose(params["a"], -0.6)
    with pytest.raises(ValueError, match="learning_rate"):
        opt.learning_rate = -1.0
    assert opt.learning_rate == 0.5


@pytest.mark.parametrize("make", [lambda: Adam(0.01), lambda: SGD(0.1, momentum=0.9),
                                  lambda: RMSprop(0.01)])
def test_state_round_trip_continues_exactly(make):
    rng = np.random.default_rng(4)
    grads = [{"w": rng.standard_normal((3, 2)).astype(np.float32)} for _ in range(4)]
    p1 = {"w": np.ones((3, 2), np.float32)}
    opt1 = make()
    for g in grads:
        opt1.step(p1, g)
    # two steps, then a copy through state_dict and another through pickle
    p2 = {"w": np.ones((3, 2), np.float32)}
    opt2 = make()
    for g in grads[:2]:
        opt2.step(p2, g)
    restored = make()
    restored.load_state_dict(opt2.state_dict(), params=p2)
    pickled = pickle.loads(pickle.dumps(opt2))
    p3, p4 = {"w": p2["w"].copy()}, {"w": p2["w"].copy()}
    for g in grads[2:]:
        restored.step(p3, g)
        pickled.step(p4, g)
    np.testing.assert_array_equal(p3["w"], p1["w"])
    np.testing.assert_array_equal(p4["w"], p1["w"])
    assert restored.iterations == pickled.iterations == 4
    assert type(opt1)(**opt1.get_config()).get_config() == opt1.get_config()


def test_load_state_dict_checks_what_it_is_given():
    opt = Adam()
    params = {"w": np.zeros((2, 2))}
    opt.step(params, {"w": np.ones((2, 2))})
    state = opt.state_dict()
    with pytest.raises(ValueError, match="'iterations' and 'slots'"):
        Adam().load_state_dict({"slots": {}})
    with pytest.raises(ValueError, match="shape"):
        Adam().load_state_dict(state, params={"w": np.zeros(3)})
    with pytest.raises(ValueError, match="step count"):
        Adam().load_state_dict({"iterations": -1, "slots": {}})


def test_row_sparse_gradients_move_only_their_rows():
    from clstm._tokens import RowGradient
    table = np.arange(12, dtype=np.float64).reshape(4, 3)
    before = table.copy()
    SGD(0.5).step({"emb": table}, {"emb": RowGradient(np.array([1, 3]), np.ones((2, 3)),
                                                      (4, 3))})
    np.testing.assert_array_equal(table[[0, 2]], before[[0, 2]])
    np.testing.assert_array_equal(table[[1, 3]], before[[1, 3]] - 0.5)
    with pytest.raises(ValueError, match="rows outside"):
        SGD(0.5).step({"emb": table}, {"emb": RowGradient(np.array([4]), np.ones((1, 3)),
                                                          (4, 3))})


@pytest.mark.parametrize("make", [lambda: Adam(0.01), lambda: SGD(0.1, momentum=0.9),
                                  lambda: RMSprop(0.01)])
def test_loading_a_state_into_a_used_optimizer_replaces_its_slots(make):
    """A step keeps 1-D views of each parameter's slots; a loaded state (new slot
    arrays) must be what the next steps read and write, not the kept views."""
    rng = np.random.default_rng(6)
    grads = [{"w": rng.standard_normal((3, 4)).astype(np.float32),
              "b": rng.standard_normal(4).astype(np.float32)} for _ in range(4)]
    params = {"w": np.ones((3, 4), np.float32), "b": np.zeros(4, np.float32)}
    opt = make()
    for g in grads[:2]:
        opt.step(params, g)
    state, at_two = opt.state_dict(), {k: v.copy() for k, v in params.items()}
    for g in grads[2:]:
        opt.step(params, g)
    expected = {k: v.copy() for k, v in params.items()}
    opt.load_state_dict(state, params=params)      # back to step two, same optimizer
    for k in params:
        params[k][...] = at_two[k]
    for g in grads[2:]:
        opt.step(params, g)
    for k in params:
        np.testing.assert_array_equal(params[k], expected[k])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("clipnorm", [None, 0.5])
def test_the_checked_common_case_steps_as_the_general_path(dtype, clipnorm):
    # C-contiguous gradients of the parameters' dtype take one compiled check
    # and norm (dense_sum_of_squares); Fortran-ordered views of the same
    # values take the general loop: the same bits, clipped by the same norm
    rng = np.random.default_rng(9)
    start = {"w": rng.standard_normal((4, 3)).astype(dtype),
             "b": rng.standard_normal(4).astype(dtype)}
    results = []
    for layout in ("C", "F"):
        params = {k: v.copy() for k, v in start.items()}
        opt = Adam(0.05, global_clipnorm=clipnorm)
        for step in range(3):
            grads = {k: np.asarray(rng_v, order=layout) for k, rng_v in
                     ((k, np.random.default_rng(step).standard_normal(v.shape).astype(dtype))
                      for k, v in start.items())}
            if layout == "F":
                assert not grads["w"].flags.c_contiguous
            opt.step(params, grads)
        results.append(params)
    for name in start:
        np.testing.assert_array_equal(results[0][name], results[1][name])
        assert not np.array_equal(results[0][name], start[name])
