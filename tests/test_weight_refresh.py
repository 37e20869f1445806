"""Weights edited in place (an optimizer step) refresh the kept packed weights
in place, so the compiled forward plan built over them is reused: the results
must still follow every edit, bit for bit as a fresh network with the same
parameters, and the checks that guard a pending backward must still see the
edits."""

import numpy as np
import pytest

import clstm
import clstm._rnn as rnn

pytestmark = pytest.mark.kernel    # fast: also run against the bounds-checked build

CELLS = {
    "lstm": (clstm.LSTM, {}),
    "peephole": (clstm.LSTM, {"peephole": True}),
    "cifg": (clstm.LSTM, {"coupled_gates": True}),
    "proj": (clstm.LSTM, {"proj_size": 3}),
    "layernorm": (clstm.LSTM, {"layer_norm": True}),
    "gru": (clstm.GRU, {}),
}


def _net(cell, dtype, n_in=3, **extra):
    cls, kwargs = CELLS[cell]
    return cls(n_in, 5, dtype=dtype, random_state=0, **kwargs, **extra)


def _fresh_twin(net):
    """A new network of the same configuration holding copies of net's parameters."""
    twin = type(net)(**net.get_config(), **_cell_options(net))
    twin.load_state_dict(net.state_dict())
    return twin


def _cell_options(net):
    options = {}
    for name in ("peephole", "coupled_gates", "proj_size", "layer_norm"):
        if name in vars(net) and name not in net.get_config():
            options[name] = getattr(net, name)
    return options


def _plan_entry(net):
    entry = rnn._last_plan_entry(net._workspace)
    return None if entry is None else entry[2]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("n_in", [3, 40])     # thin: [W_ih | W_hh] packed as one; wide
def test_optimizer_steps_reuse_the_plan_and_follow_the_weights(cell, dtype, train, n_in):
    rng = np.random.default_rng(1)
    net = _net(cell, dtype, n_in, num_layers=2)
    net.train(train)                    # training mode without dropout: no masks
    X = rng.standard_normal((6, 5, n_in)).astype(dtype)
    plans = set()
    for step in range(4):
        out, state = net.run(X)
        grad_out = np.cos(out).astype(dtype)
        grad_X = net.backward_state(grad_out)
        plans.add(id(_plan_entry(net)))
        twin = _fresh_twin(net)
        twin.train(train)
        t_out, t_state = twin.run(X)
        t_grad_X = twin.backward_state(grad_out)
        np.testing.assert_array_equal(out, t_out)
        for a, b in zip(state, t_state):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(grad_X, t_grad_X)
        for name, g in twin.grads.items():
            np.testing.assert_array_equal(net.grads[name], g, err_msg=name)
        # inference (the fused cell at these few rows) follows the edits too
        np.testing.assert_array_equal(net.run(X, keep_cache=False)[0],
                                      twin.run(X, keep_cache=False)[0])
        for name, value in net.params.items():        # an optimizer step, in place
            value -= (0.05 * np.sign(net.grads[name] + 1e-30)).astype(dtype)
    assert len(plans) == 1, "a step that only changed weight values rebuilt the plan"


@pytest.mark.parametrize("cell", ["lstm", "proj", "gru"])
def test_alternating_batch_shapes_keep_a_plan_each(cell):
    """A training loop whose last mini-batch is smaller alternates between
    two shapes: each keeps its plan (and its buffers) through optimizer
    steps, and every step equals a fresh network's, bit for bit; a third
    shape drops the least recently used plan (rnn.KEPT_PLANS = 2)."""
    rng = np.random.default_rng(3)
    net = _net(cell, "float32", num_layers=2)
    net.train()
    batches = [rng.standard_normal((b, 5, 3)).astype(np.float32) for b in (8, 3)] * 3
    plans = {}
    for X in batches:
        out, _ = net.run(X)
        grad_out = np.cos(out)
        grad_X = net.backward_state(grad_out)
        plans.setdefault(X.shape[0], []).append(_plan_entry(net))
        twin = _fresh_twin(net)
        twin.train()
        np.testing.assert_array_equal(out, twin.run(X)[0])
        np.testing.assert_array_equal(grad_X, twin.backward_state(grad_out))
        for name, g in twin.grads.items():
            np.testing.assert_array_equal(net.grads[name], g, err_msg=name)
        for name, value in net.params.items():        # an optimizer step, in place
            value -= 0.05 * np.sign(net.grads[name] + 1e-30).astype(np.float32)
    assert rnn.KEPT_PLANS == 2
    for kept in plans.values():
        assert all(plan is kept[0] for plan in kept), "a shape rebuilt its plan"
    net.run(batches[1][:2])                  # a third shape: the 8-row plan goes
    net.run(batches[0])
    assert _plan_entry(net) is not plans[8][0]
    # inference keeps one plan: a large batch's buffers go with the next shape
    for X in batches[:2]:
        net.run(X, keep_cache=False)
    assert len(net._inference_ws.chunk(0).sets["network_plans"]) == 1


def test_dropout_draws_masks_and_no_dropout_draws_none():
    net = clstm.LSTM(3, 4, num_layers=2, random_state=0)
    assert net._draw_masks(5, 2) is None
    net = clstm.LSTM(3, 4, num_layers=2, dropout=0.5, random_state=0)
    masks = net._draw_masks(5, 2)
    assert masks[0][0] is None and masks[1][0].shape == (5, 2, 4)
    net = clstm.LSTM(3, 4, recurrent_dropout=0.5, random_state=0)
    assert net._draw_masks(5, 2)[0][1][0].shape == (2, 4)


@pytest.mark.parametrize("cell", list(CELLS))
def test_an_inference_call_between_forward_and_backward_keeps_the_edit_check(cell):
    """The inference call refreshes the kept packs in place; the pending
    backward must still refuse the edited weights."""
    net = _net(cell, "float32")
    X = np.random.default_rng(2).standard_normal((4, 6, 3)).astype(np.float32)
    out, _ = net.run(X)
    net.params["weight_hh_l0"][0, 0] += 0.25
    net.run(X, keep_cache=False)
    net.run(X[:1], keep_cache=False)           # (batch 1: the fused cell's packs)
    with pytest.raises(RuntimeError, match="modified in place"):
        net.backward_state(np.ones_like(out))


@pytest.mark.parametrize("cell", list(CELLS))
def test_edit_undone_before_backward_gives_the_forwards_gradients(cell):
    """Edited, run (packs refreshed in place to the edit), edited back: the
    backward of the first forward reads none of the refreshed forward packs."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5, 6, 3)).astype(np.float32)
    net, ref = _net(cell, "float32"), _net(cell, "float32")
    out, _ = net.run(X)
    ref_out, _ = ref.run(X)
    grad_out = np.sin(out)
    w = net.params["weight_ih_l0"]
    saved = w.copy()
    w *= 3.0
    net.run(X, keep_cache=False)
    net.run(X[:2], keep_cache=False)
    w[...] = saved
    grad_X = net.backward_state(grad_out)
    np.testing.assert_array_equal(grad_X, ref.backward_state(grad_out))
    for name, g in ref.grads.items():
        np.testing.assert_array_equal(net.grads[name], g, err_msg=name)


@pytest.mark.parametrize("cell", list(CELLS))
def test_replaced_parameter_arrays_are_never_written(cell):
    """A parameter replaced by a new array: the kept packs are rebuilt, and
    the old array (which the caller may still hold) is left as it was."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((3, 4, 3)).astype(np.float32)
    net = _net(cell, "float32")
    net.run(X)
    net.run(X, keep_cache=False)
    old = net.params["weight_hh_l0"]
    old_copy = old.copy()
    net.params["weight_hh_l0"] = old * 0.5 + 0.1
    out = net.run(X, keep_cache=False)[0]
    np.testing.assert_array_equal(old, old_copy)
    np.testing.assert_array_equal(out, _fresh_twin(net).run(X, keep_cache=False)[0])
    # edited in place afterwards: the new array is followed
    net.params["weight_hh_l0"] += 0.25
    np.testing.assert_array_equal(net.run(X)[0], _fresh_twin(net).run(X)[0])
    np.testing.assert_array_equal(old, old_copy)


def test_copy_into_copies_all_or_nothing():
    a = {"w": np.zeros(3), "p": np.ones(2)}
    p = a["p"]
    assert rnn._copy_into([a], [{"w": np.arange(3.0), "p": p}])
    np.testing.assert_array_equal(a["w"], [0, 1, 2])
    before = a["w"].copy()
    # a shape mismatch anywhere: nothing is copied
    assert not rnn._copy_into([a, {"v": np.zeros(2)}],
                              [{"w": np.full(3, 7.0), "p": p}, {"v": np.zeros(3)}])
    np.testing.assert_array_equal(a["w"], before)
    assert not rnn._copy_into([a], [{"w": np.zeros(3)}])               # other keys
    assert not rnn._copy_into([a], [{"w": np.zeros(3, np.float32), "p": p}])   # dtype


@pytest.mark.parametrize("cell", list(CELLS))
def test_steps_refresh_the_kept_arrays_without_making_new_ones(cell, monkeypatch):
    """After the first step, an in-place edit updates the kept weight arrays
    (the cell's derived ones, then one compiled repack): _scan_arrays is not
    called again and the forward's and backward's lists stay the same."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((4, 5, 3)).astype(np.float32)
    net = _net(cell, "float32", num_layers=2, bidirectional=True)
    net.train()
    out, _ = net.run(X)
    net.backward_state(np.cos(out))
    kept = net._weights_memo[1], net._backward_memo[1]
    calls = []
    original = type(net)._scan_arrays
    monkeypatch.setattr(type(net), "_scan_arrays",
                        lambda self, p, backward: (self is net and calls.append(backward))
                        or original(self, p, backward))
    for step in range(3):
        for value in net.params.values():
            value += np.float32(0.01 * (step + 1))
        out, _ = net.run(X)
        grad_X = net.backward_state(np.cos(out))
        assert (net._weights_memo[1], net._backward_memo[1]) == kept
        assert all(a is b for a, b in zip(net._weights_memo[1], kept[0]))
        twin = _fresh_twin(net)
        twin.train()
        t_out, _ = twin.run(X)
        np.testing.assert_array_equal(out, t_out)
        np.testing.assert_array_equal(grad_X, twin.backward_state(np.cos(t_out)))
    assert calls == []


def test_repack_weights_equals_pack_weight():
    """The compiled repack: each kept packed weight equals pack_weight of
    its weight (transposed or not; two weights side by side), and a size
    that does not fit is refused."""
    from clstm import _scan
    if not _scan.HAVE_PACKED_GEMM:
        pytest.skip("a build without the small-GEMM kernel packs nothing")
    rng = np.random.default_rng(6)
    a = rng.standard_normal((20, 7)).astype(np.float32)
    b = rng.standard_normal((20, 5)).astype(np.float32)
    both = np.concatenate([a, b], axis=1)
    ops = [(np.zeros_like(_scan.pack_weight(a, True)), True, a),
           (np.zeros_like(_scan.pack_weight(a, False)), False, a),
           (np.zeros_like(_scan.pack_weight(both, True)), True, a, b,
            np.empty((20, 12), np.float32))]
    _scan.repack_weights(ops)
    np.testing.assert_array_equal(ops[0][0], _scan.pack_weight(a, True))
    np.testing.assert_array_equal(ops[1][0], _scan.pack_weight(a, False))
    np.testing.assert_array_equal(ops[2][0], _scan.pack_weight(both, True))
    with pytest.raises(ValueError, match="repack size"):
        _scan.repack_weights([(np.zeros(3, np.float32), True, a)])
    with pytest.raises(ValueError, match="repack shapes"):
        _scan.repack_weights([(ops[2][0], True, a, b, np.empty((20, 11), np.float32))])


def test_convlstm_steps_follow_the_weights():
    """ConvLSTM's scan weights are transposed copies of its kernels: refreshed
    in place, they follow each edit bit for bit."""
    rng = np.random.default_rng(7)
    net = clstm.ConvLSTM(2, 3, kernel_size=3, random_state=0)
    X = rng.standard_normal((2, 4, 5, 5, 2)).astype(np.float32)
    for step in range(3):
        out = net.run(X, keep_cache=False)[0]
        twin = clstm.ConvLSTM(2, 3, kernel_size=3, random_state=1)
        twin.load_state_dict(net.state_dict())
        np.testing.assert_array_equal(out, twin.run(X, keep_cache=False)[0])
        for value in net.params.values():
            value *= np.float32(0.9)
