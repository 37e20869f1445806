"""The one-call forward (_scan.forward_network: every sub-batch through every
layer direction in one compiled call, sub-batches on POSIX threads) against
the per-layer path it replaced (one compiled call per layer direction, Python
threads), which stays as the oracle: bit for bit, for every cell kind."""

import threading

import numpy as np
import pytest

import clstm
import clstm._rnn as rnn

from _one_call import CELLS, split_small_batches  # noqa: F401  (a fixture)

pytestmark = pytest.mark.kernel    # fast: also run against the bounds-checked build


def _run(cls, kwargs, one_call, n_jobs, X, lengths, dtype, train=False, seed=3, n_parts=None):
    """forward then backward on a fresh network, the batch in n_parts
    sub-batches (default n_jobs) on n_jobs threads; everything they return."""
    saved = rnn.ONE_CALL_FORWARD, rnn._fixed_parts
    rnn.ONE_CALL_FORWARD = one_call
    rnn._fixed_parts = lambda *shape: n_parts or n_jobs      # training's split by shape
    try:
        net = cls(X.shape[2], 5, random_state=seed, dtype=dtype, n_jobs=n_jobs, **kwargs)
        net.train(train)
        out, state = net.run(X, lengths=lengths)
        assert len(net._cache["chunks"]) == min(n_parts or n_jobs, X.shape[0])
        grad_X = net.backward_state(np.cos(out).astype(dtype))
        return [out, *state, grad_X, *[net.grads[k] for k in sorted(net.grads)]]
    finally:
        rnn.ONE_CALL_FORWARD, rnn._fixed_parts = saved


def _assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), np.abs(x - y).max()


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_jobs, n_parts", [(1, 1), (2, 2), (3, 3), (2, 3)])
def test_equals_per_layer_path_bit_for_bit(split_small_batches, cell, dtype, n_jobs, n_parts):
    cls, kwargs = CELLS[cell]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((7, 6, 4)).astype(dtype)
    lengths = np.array([6, 2, 5, 1, 6, 3, 4])
    for extra in ({}, {"num_layers": 2, "bidirectional": True}):
        for lens in (None, lengths):
            new = _run(cls, {**kwargs, **extra}, True, n_jobs, X, lens, dtype, n_parts=n_parts)
            old = _run(cls, {**kwargs, **extra}, False, n_jobs, X, lens, dtype, n_parts=n_parts)
            _assert_identical(new, old)
    # and the one-call path does not depend on how many threads take the parts
    ones = _run(cls, kwargs, True, 1, X, lengths, dtype, n_parts=n_parts)
    _assert_identical(ones, _run(cls, kwargs, True, n_jobs, X, lengths, dtype, n_parts=n_parts))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_training_dropout_equals_per_layer_path(split_small_batches, dtype):
    """Input dropout between layers is applied in C, recurrent dropout in the scan."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((9, 5, 3)).astype(dtype)
    lengths = rng.integers(1, 6, size=9)
    kwargs = {"num_layers": 3, "bidirectional": True, "dropout": 0.4,
              "recurrent_dropout": 0.3}
    for n_jobs in (1, 2, 3):
        new = _run(clstm.LSTM, kwargs, True, n_jobs, X, lengths, dtype, train=True)
        old = _run(clstm.LSTM, kwargs, False, n_jobs, X, lengths, dtype, train=True)
        _assert_identical(new, old)
        ones = _run(clstm.LSTM, kwargs, True, 1, X, lengths, dtype, train=True)
        if dtype == "float64":      # the masks do not depend on the split
            np.testing.assert_allclose(new[0], ones[0], rtol=0, atol=1e-13)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_reused_plan_follows_inputs_states_lengths_and_weights(split_small_batches, n_jobs):
    """A plan is kept per shape: each call's X, states, lengths (same shape)
    and any change of the weights still reach the scan."""
    rng = np.random.default_rng(8)
    kwargs = {"num_layers": 2, "bidirectional": True, "dtype": "float64", "random_state": 0}
    net = clstm.LSTM(3, 4, n_jobs=n_jobs, **kwargs)
    ref = clstm.LSTM(3, 4, n_jobs=1, **kwargs)
    for call in range(6):
        X = rng.standard_normal((8, 5, 3))
        lengths = None if call % 3 == 0 else rng.integers(1, 6, size=8)
        h0 = rng.standard_normal((4, 8, 4))
        if call == 4:                 # weights edited in place: a new plan
            net.params["weight_hh_l1"] *= 0.5
            ref.params["weight_hh_l1"] *= 0.5
        for keep_cache in (True, False):
            out, state = net.run(X, (h0, None), lengths, keep_cache=keep_cache)
            rnn.ONE_CALL_FORWARD = False
            try:
                expected, expected_state = ref.run(X, (h0, None), lengths)
            finally:
                rnn.ONE_CALL_FORWARD = True
            np.testing.assert_allclose(out, expected, rtol=0, atol=1e-14)
            for a, b in zip(state, expected_state):
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


def test_equals_numpy_reference(split_small_batches):
    """An independent oracle too: the pure-NumPy network (float64)."""
    from clstm._reference import reference_lstm_forward
    rng = np.random.default_rng(2)
    X = rng.standard_normal((11, 7, 3))
    lengths = rng.integers(1, 8, size=11)
    net = clstm.LSTM(3, 4, num_layers=2, bidirectional=True, dtype="float64",
                     random_state=0, n_jobs=3)
    out, (h_n, c_n) = net.run(X, lengths=lengths, keep_cache=False)   # 3 parts
    ref, (rh, rc), _ = reference_lstm_forward(net.params, X, None, None, lengths, 2, True)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-13)
    np.testing.assert_allclose(h_n, rh, rtol=0, atol=1e-13)
    np.testing.assert_allclose(c_n, rc, rtol=0, atol=1e-13)


@pytest.mark.parametrize("B", [1, 2, rnn.STEPWISE_MIN_BATCH - 1, rnn.STEPWISE_MIN_BATCH, 9])
@pytest.mark.parametrize("keep_cache", [True, False])
@pytest.mark.parametrize("n_in, hidden, stepwise_from", [
    (rnn.MIN_PACKED_INPUT_SIZE + 8, 7, rnn.STEPWISE_MIN_BATCH),       # wide inputs
    (rnn.HOISTED_ROW_INPUT_SIZE + 2, rnn.HOISTED_ROW_MIN_WIDTH, 2),   # one row: hoisted
], ids=["wide", "row"])
def test_wide_inputs_in_both_input_modes_equal_numpy(split_small_batches, B, keep_cache, n_in,
                                                     hidden, stepwise_from):
    """Float32 inputs, stacked and bidirectional, ragged: wide ones under
    STEPWISE_MIN_BATCH rows, and 16-31 of them into 64 units or more in a
    batch of one row, run the projection hoisted over all steps, the others
    inside each step's [x | h] product; both agree with the float64 NumPy
    network to float32 rounding."""
    from clstm._reference import reference_lstm_forward
    rng = np.random.default_rng(12)
    X = rng.standard_normal((B, 6, n_in)).astype(np.float32)
    lengths = rng.integers(1, 7, size=B)
    lengths[0] = 6
    net = clstm.LSTM(n_in, hidden, num_layers=2, bidirectional=True, random_state=0, n_jobs=2)
    weights, _ = net._forward_weights(mode=rnn._input_mode(B))
    assert ("packed_xh_t" in weights[0]) == (B >= stepwise_from)
    assert ("packed_ih_t" in weights[0]) == (B < stepwise_from)
    params64 = {k: v.astype(np.float64) for k, v in net.params.items()}
    for lens in (None, lengths):
        out, (h_n, c_n) = net.run(X, lengths=lens, keep_cache=keep_cache)
        ref, (rh, rc), _ = reference_lstm_forward(params64, X.astype(np.float64), None, None,
                                                  lens, 2, True)
        for got, want in ((out, ref), (h_n, rh), (c_n, rc)):
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_which_layers_keep_both_input_packs():
    """Both packs of the input product (so a batch may hoist the projection)
    only for wide inputs, or 16-31 inputs into a recurrent width of 64 or
    more; thin inputs keep [x | h]'s alone."""
    for n_in, hidden, both in ((rnn.MIN_PACKED_INPUT_SIZE, 8, True),
                               (rnn.MIN_PACKED_INPUT_SIZE - 1, rnn.HOISTED_ROW_MIN_WIDTH, True),
                               (rnn.HOISTED_ROW_INPUT_SIZE, rnn.HOISTED_ROW_MIN_WIDTH, True),
                               (rnn.HOISTED_ROW_INPUT_SIZE - 1, 128, False),
                               (rnn.HOISTED_ROW_INPUT_SIZE, rnn.HOISTED_ROW_MIN_WIDTH - 1, False)):
        net = clstm.LSTM(n_in, hidden)
        weights, _ = net._forward_weights(mode=rnn._input_mode(1))
        kept = net._weights_memo[1][0]        # (both modes' arrays, before the view)
        assert "packed_xh_t" in kept and ("packed_ih_t" in kept) == both, (n_in, hidden)
        assert ("packed_xh_t" in weights[0]) != both, (n_in, hidden)   # one row: hoisted


def _ring_buffers(net):
    """(gates, c_seq) of every layer direction of the last inference's first sub-batch."""
    sets = net._inference_ws.chunk(0).sets
    return [(key[2], found[1]["gates"], found[1]["c_seq"]) for key, found in sets.items()
            if key[0] == "buffers" and not key[1]]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize("n_inputs", [3, rnn.MIN_PACKED_INPUT_SIZE])
def test_inference_holds_two_steps_and_equals_the_training_forward(
        split_small_batches, cell, n_jobs, n_inputs):
    """An inference forward keeps the cell states (and, where each step's one
    product takes the inputs, the gates) of two steps, not T, as no backward
    reads them: every row, every length, every final state equals the
    training forward's (full buffers) bit for bit."""
    cls, kwargs = CELLS[cell]
    rng = np.random.default_rng(6)
    lstm = cls is clstm.LSTM
    for extra in ({}, {"num_layers": 2, "bidirectional": True}):
        # fused steps (<= 8 rows) and the two passes; under STEPWISE_MIN_BATCH
        # rows, wide inputs' projection hoisted out of the steps
        for B in (3, 5, 11):
            X = rng.standard_normal((B, 9, n_inputs)).astype(np.float32)
            lengths = rng.integers(1, 10, size=B)
            lengths[0] = 9
            net = cls(n_inputs, 5, random_state=1, n_jobs=n_jobs, **kwargs, **extra)
            for lens in (None, lengths):
                expected, expected_state = net.run(X, lengths=lens)
                out, state = net.run(X, lengths=lens, keep_cache=False)
                _assert_identical([out, *state], [expected, *expected_state])
                for layer, gates, c_seq in _ring_buffers(net):
                    n_in = n_inputs if layer == 0 else net.num_directions * net.output_size
                    stepwise = (n_in < rnn.MIN_PACKED_INPUT_SIZE or B >= rnn.STEPWISE_MIN_BATCH
                                ) and lstm and cell != "layernorm"
                    assert gates.shape[0] == (2 if stepwise else 9)
                    assert c_seq is None if not lstm else c_seq.shape[0] == 2


def _recording_plan(real, seen, index, default):
    """A NetworkPlan stand-in that records run's positional argument `index`
    (`default` where the call leaves it out) in `seen`, then runs the plan."""
    class Recording:
        def __init__(self, specs):
            self.plan = real(specs)

        def run(self, *args):
            seen.append(args[index] if len(args) > index else default)
            return self.plan.run(*args)

    return Recording


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_inference_reads_thin_inputs_in_place(split_small_batches, monkeypatch, n_jobs):
    """A float32 inference over thin inputs reads X batch-first where it is
    (NetworkPlan.run's x), never copied: the same bits as the copying path, for
    both directions, stacked layers, the fused steps of few rows and a
    non-contiguous X (which is copied)."""
    scan = rnn._kernels()
    real = scan.NetworkPlan
    seen = []
    Recording = _recording_plan(real, seen, 4, None)      # run's x
    rng = np.random.default_rng(11)
    for extra in ({}, {"num_layers": 2, "bidirectional": True}, {"peephole": True}):
        for B in (3, 10):
            net = clstm.LSTM(4, 6, random_state=2, n_jobs=n_jobs, **extra)
            X = rng.standard_normal((B, 7, 4)).astype(np.float32)
            expected, expected_state = net.run(X)        # training forward: X copied
            monkeypatch.setattr(scan, "NetworkPlan", Recording)
            del seen[:]
            out, state = net.run(X, keep_cache=False)
            assert len(seen) == 1 and seen[0] is X       # read in place
            _assert_identical([out, *state], [expected, *expected_state])
            strided = np.asfortranarray(X)               # not C-contiguous: copied
            out, state = net.run(strided, keep_cache=False)
            assert seen[-1] is None
            _assert_identical([out, *state], [expected, *expected_state])
            monkeypatch.setattr(scan, "NetworkPlan", real)


def _inference_plan(net, X, lengths):
    """A fresh NetworkPlan over the specs of net's inference call on X, and
    what that call returned."""
    scan = rnn._kernels()
    real, captured = scan.NetworkPlan, []
    scan.NetworkPlan = lambda specs: captured.append(specs) or real(specs)
    try:
        result = net.run(X, lengths=lengths, keep_cache=False)
    finally:
        scan.NetworkPlan = real
    return real(captured[-1]), result


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_inference_writes_the_output_in_place(split_small_batches, monkeypatch, n_jobs):
    """An inference over full-length rows has its top layer write h into the
    batch-first output (NetworkPlan.run's out_in_place), not into a time-major
    buffer then copied; training forwards (whose backward reads that buffer)
    and ragged batches keep the copy. The same bits either way: every cell,
    both directions of a stacked network, one row (a units team at 2
    threads), few rows (fused steps), many (a row team, or several parts)."""
    scan = rnn._kernels()
    real = scan.NetworkPlan
    seen = []
    Recording = _recording_plan(real, seen, 5, False)     # run's out_in_place
    rng = np.random.default_rng(12)
    for cell, (cls, kwargs) in CELLS.items():
        for extra in ({}, {"num_layers": 2, "bidirectional": True}):
            for B in (1, 3, 12):
                net = cls(4, 20, random_state=2, n_jobs=n_jobs, **kwargs, **extra)
                X = rng.standard_normal((B, 30, 4)).astype(np.float32)
                lengths = np.full(B, 30)
                lengths[-1] = 17
                monkeypatch.setattr(scan, "NetworkPlan", Recording)
                del seen[:]
                expected, expected_state = net.run(X)               # training forward
                out, state = net.run(X, keep_cache=False)
                assert seen == [False, True], (cell, extra, B)
                _assert_identical([out, *state], [expected, *expected_state])
                if B > 1:
                    del seen[:]
                    expected, expected_state = net.run(X, lengths=lengths)
                    out, state = net.run(X, lengths=lengths, keep_cache=False)
                    assert seen == [False, False]                 # ragged: copied
                    _assert_identical([out, *state], [expected, *expected_state])
                monkeypatch.setattr(scan, "NetworkPlan", real)


def test_plan_refuses_an_output_it_cannot_write_in_place(split_small_batches):
    """out in place only for rows of full length in the caller's order and a
    C-contiguous out of the plan's dtype; refused before any thread runs,
    and a refused call leaves the plan usable (its own buffers kept)."""
    net = clstm.LSTM(3, 5, random_state=0, n_jobs=1)
    X = np.random.default_rng(0).standard_normal((4, 6, 3)).astype(np.float32)
    for lengths in (None, [6, 2, 3, 6]):
        plan, (expected, (h_n, c_n)) = _inference_plan(net, X, lengths)
        out = np.empty_like(expected)
        if lengths is not None:
            with pytest.raises(ValueError, match="out in place: rows"):
                plan.run(out, [h_n, c_n], None, 1, None, True)
            continue
        for bad in (np.empty_like(expected, dtype=np.float64), np.asfortranarray(out),
                    out.astype(">f4")):
            with pytest.raises(ValueError, match="out in place"):
                plan.run(bad, [h_n, c_n], None, 1, X, True)
        # (X read in place, as the network's call read it: the plan's x buffer never had it)
        plan.run(out, [h_n, c_n], None, 1, X, True)
        _assert_identical([out], [expected])
        out2 = np.full_like(expected, np.nan)
        plan.run(out2, [h_n, c_n], None, 1, X, False)      # the plan's own buffer again
        _assert_identical([out2], [expected])


def test_plan_refuses_inputs_it_cannot_read_in_place(split_small_batches):
    """x in place only for full-length contiguous rows and float32 stages
    whose steps take the inputs (thin ones; wide ones from
    STEPWISE_MIN_BATCH rows on)."""
    wide, few = 40, rnn.STEPWISE_MIN_BATCH - 1
    for dtype, n_in, B, lengths in (("float32", 2, 4, None), ("float32", wide, 4, None),
                                    ("float32", wide, few, None), ("float64", 2, 4, None),
                                    ("float32", 2, 4, [4, 2, 3, 4])):
        net = clstm.LSTM(n_in, 3, random_state=0, dtype=dtype, n_jobs=2)
        X = np.ones((B, 4, n_in), dtype=dtype)
        plan, (out, (h_n, c_n)) = _inference_plan(net, X, lengths)
        x = np.ones((B, 4, n_in), np.float32)
        if dtype == "float32" and B == 4 and lengths is None:
            plan.run(out, [h_n, c_n], None, 1, x)                   # allowed
            with pytest.raises(ValueError, match="x in place"):
                plan.run(out, [h_n, c_n], None, 1, x[:, :3].copy())  # fewer steps than T
            with pytest.raises(ValueError, match="x in place"):
                plan.run(out, [h_n, c_n], None, 1, x[:3])           # rows missing
            with pytest.raises(ValueError, match="x in place"):
                plan.run(out, [h_n, c_n], None, 1, x.astype(">f4"))  # byte-swapped
            continue
        with pytest.raises(ValueError, match="x in place"):
            plan.run(out, [h_n, c_n], None, 1, x.astype(dtype))


def test_initial_states_and_row_order(split_small_batches):
    """h0/c0 per row and the unsorting of ragged rows, through the C writes."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((6, 5, 2)).astype(np.float32)
    lengths = np.array([2, 5, 1, 5, 3, 4])
    h0 = rng.standard_normal((2, 6, 3)).astype(np.float32)
    c0 = rng.standard_normal((2, 6, 3)).astype(np.float32)
    net = clstm.LSTM(2, 3, num_layers=2, random_state=0, n_jobs=2)
    out, (h_n, c_n) = net.run(X, (h0, c0), lengths, keep_cache=False)     # 2 parts
    for b in range(6):         # each row alone: same values (float32 rounding aside)
        o, (h, c) = net.forward(X[b:b + 1, :lengths[b]], h0[:, b:b + 1], c0[:, b:b + 1])
        np.testing.assert_allclose(out[b, :lengths[b]], o[0], rtol=0, atol=1e-6)
        assert not out[b, lengths[b]:].any()           # zero past the length
        np.testing.assert_allclose(h_n[:, b], h[:, 0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(c_n[:, b], c[:, 0], rtol=0, atol=1e-6)


def test_concurrent_inference_calls_are_bit_identical(split_small_batches):
    """Python threads each calling forward(keep_cache=False), each call split
    across C threads, give exactly the serial results."""
    rng = np.random.default_rng(5)
    net = clstm.LSTM(3, 8, num_layers=2, bidirectional=True, random_state=0, n_jobs=2)
    batches = [rng.standard_normal((5 + k, 9, 3)).astype(np.float32) for k in range(4)]
    lengths = [rng.integers(1, 10, size=5 + k) for k in range(4)]
    serial = [net.run(X, lengths=n, keep_cache=False) for X, n in zip(batches, lengths)]
    results, errors = {}, []

    def worker(k):
        try:
            for _ in range(20):
                out, state = net.run(batches[k], lengths=lengths[k], keep_cache=False)
                results.setdefault(k, []).append((out, state))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k, (out, state) in enumerate(serial):
        for got_out, got_state in results[k]:
            assert np.array_equal(got_out, out)
            for a, b in zip(got_state, state):
                assert np.array_equal(a, b)


@pytest.mark.filterwarnings("ignore:.*maximum iterations")
def test_concurrent_predict_is_bit_identical():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((40, 8, 2)).astype(np.float32)
    y = X[:, -3:, 0].sum(axis=1)
    reg = clstm.LSTMRegressor(hidden_size=6, max_iter=2, random_state=0, n_jobs=2).fit(X, y)
    expected = reg.predict(X)
    got, errors = [], []

    def worker():
        try:
            for _ in range(10):
                got.append(reg.predict(X))
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 30
    assert all(np.array_equal(g, expected) for g in got)


def test_bad_input_raises_before_the_call(monkeypatch):
    built = []
    monkeypatch.setattr(rnn._kernels(), "NetworkPlan", lambda specs: built.append(specs))
    net = clstm.LSTM(2, 3, n_jobs=2)
    X = np.ones((4, 3, 2), dtype=np.float32)
    X[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        net.forward(X)
    with pytest.raises(ValueError, match="lengths"):
        net.forward(np.ones((4, 3, 2)), lengths=[1, 2, 4, 1])
    with pytest.raises(ValueError, match="h0"):
        net.forward(np.ones((4, 3, 2)), h0=np.ones((1, 4, 4)))
    assert built == []
    # a NaN past its row's length is ignored: this call gets as far as the
    # plan (the fake has no run)
    with pytest.raises(AttributeError):
        net.forward(X, lengths=[3, 2, 3, 3])
    assert len(built) == 1


def test_bad_plan_raises_before_any_thread_runs(split_small_batches, monkeypatch):
    """NetworkPlan checks every part when built and at every run, with the
    GIL held: a bad second part leaves even the first part's output untouched."""
    scan = rnn._kernels()
    captured = []
    real = scan.NetworkPlan
    monkeypatch.setattr(scan, "NetworkPlan", lambda specs: captured.append(specs) or
                        real(specs))
    net = clstm.LSTM(2, 3, num_layers=2, random_state=0, n_jobs=2)
    X = np.random.default_rng(0).standard_normal((6, 4, 2)).astype(np.float32)
    expected, (h_n, c_n) = net.run(X, keep_cache=False)
    (specs,) = captured
    assert len(specs) == 2
    for spec in specs:      # (the call read X in place: the plan's own buffers get it here)
        np.copyto(spec["stages"][0][0]["x"], X[spec["rows"]].transpose(1, 0, 2))
    plan = real(specs)
    out = np.full_like(expected, np.nan)
    finals = [np.full_like(h_n, np.nan), np.full_like(c_n, np.nan)]
    plan.run(out, finals)                   # a plan reruns on its buffers
    assert np.array_equal(out, expected) and np.array_equal(finals[1], c_n)

    def refused(*args):
        out.fill(np.nan)
        with pytest.raises(ValueError, match="internal layout error"):
            plan.run(*(args or (out, finals)))
        assert np.isnan(out).all()          # part 0 never ran

    for name, bad in (("lengths", 5), ("rows", 6), ("rows", -1)):
        buf = specs[1][name]
        saved = buf[2]
        buf[2] = bad
        refused()
        buf[2] = saved
    batch_sizes = specs[1]["stages"][0][0]["batch_sizes"]
    batch_sizes[0] = 4                      # more active rows than the part has
    refused()
    batch_sizes[0] = 3
    refused(out, finals[:1])                                       # c missing
    refused(out, [finals[0], np.empty((2, 6, 4), np.float32)])     # c too wide
    refused(out, [finals[0], finals[1].astype(np.float64)])        # c of another dtype
    with pytest.raises(ValueError, match="internal layout error"):
        plan.run(np.empty((6, 3, 3), np.float32), finals)          # fewer steps than T
    plan.run(out, finals)
    assert np.array_equal(out, expected)
    with pytest.raises(ValueError, match="no parts"):
        real([])
    with pytest.raises(ValueError, match="lengths"):
        real([specs[0], dict(specs[1], lengths=specs[1]["lengths"].astype(np.int32))])
    arrays, cfg, drop = specs[1]["stages"][1]
    with pytest.raises(ValueError, match="dtype"):                   # a float64 stage
        real([specs[0], dict(specs[1], stages=[specs[1]["stages"][0], (
            dict(arrays, x=arrays["x"].astype(np.float64)), cfg, drop)])])


def test_thread_rule_uses_both_cores_for_small_shapes():
    from clstm._rnn import _useful_threads
    assert _useful_threads(2, 32, 50, 50) == 2             # ts-small
    assert _useful_threads(2, 32, 100, 128, n_scans=2) == 2   # stacked
    assert _useful_threads(2, 1, 200, 64) == 1             # stream: one row
    assert _useful_threads(4, 16, 10, 16, n_scans=1) == 1  # ~40k: not worth a thread
    # the work of every layer direction counts: a deep net splits sooner
    assert _useful_threads(2, 32, 20, 32, n_scans=1) == 1
    assert _useful_threads(2, 32, 20, 32, n_scans=4) == 2


def test_scan_reports_threads():
    assert isinstance(rnn._kernels().HAVE_THREADS, bool)


def test_benchmark_script_runs(tmp_path, capsys):
    """benchmarks/bench_forward_call.py on one config, one short round."""
    import importlib.util
    import json
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_forward_call.py")
    if not os.path.exists(path):       # the installed-wheel check runs tests/ alone
        pytest.skip("benchmarks/ not present")
    spec = importlib.util.spec_from_file_location("bench_forward_call", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "ab.json"
    bench.main(["--configs", "ts-small", "--threads", "1", "2", "--force-split", "--rounds", "1",
                "--round-time", "0.001", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {(r["path"], r["threads"], r["split"]) for r in rows} == {
        (p, n, s) for p in ("one-call", "per-layer") for n, s in ((1, "auto"), (2, "auto"),
                                                                  (2, "forced"))}
    assert all(r["min_us"] > 0 for r in rows)
    assert rnn.ONE_CALL_FORWARD is True and rnn.MIN_WORK_PER_C_THREAD == 1_000_000
