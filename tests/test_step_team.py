"""A team of threads splitting each step of a batch-1 forward by units
(_threads.h's clstm_team, NetworkPlan.run's team_threads): bit for bit the
one-thread forward, whatever the number of threads, the cell variant, the
layers and directions, ragged lengths or dropout masks, and whether the
helper threads arrive on time or at all."""

import os

import numpy as np
import pytest

import clstm
import clstm._rnn as rnn
from clstm import _scan

from _team import team_at_any_size  # noqa: F401  (a fixture)

pytestmark = pytest.mark.kernel    # fast: also run against the bounds-checked build

needs_team = pytest.mark.skipif(not (_scan.HAVE_THREADS and _scan.HAVE_FUSED_CELL),
                                reason="a build without threads or the fused cell has no team")


def _outputs(net, X, lengths=None, state=None):
    out, states = net.run(X, state=state, lengths=lengths, keep_cache=False)
    return [out, *states]


def _assert_identical(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), np.abs(x - y).max()


def _plan_of(net):
    """The NetworkPlan of the network's last inference call."""
    return rnn._last_plan_entry(net._inference_ws)[2]


VARIANTS = {
    "lstm": {},
    "peephole": {"peephole": True},
    "cifg": {"coupled_gates": True},
    "peephole-cifg": {"peephole": True, "coupled_gates": True},
    "stacked-bidirectional": {"num_layers": 2, "bidirectional": True},
}


@needs_team
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("input_size, hidden", [
    (3, 37),      # thin: [x | h] per step
    (40, 37),     # wide: the projection first, split by rows (37: groups off the panels)
    (40, 64),     # ... split by the members' units (AVX-512: 16-unit groups, on panels)
    (20, 64),     # 16-31 inputs into 64 units, one row: the projection first too
])
@pytest.mark.parametrize("n_jobs", [2, 3, 7])
def test_team_equals_one_thread(team_at_any_size, variant, input_size, hidden, n_jobs):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1, 23, input_size)).astype(np.float32)
    kwargs = dict(dtype="float32", random_state=4, **VARIANTS[variant])
    one = clstm.LSTM(input_size, hidden, n_jobs=1, **kwargs)
    team = clstm.LSTM(input_size, hidden, n_jobs=n_jobs, **kwargs)
    expected = _outputs(one, X)
    got = _outputs(team, X)
    groups = -(-hidden // _scan.fused_cell_width())     # 37: 5 of 8 units (AVX2), ...
    assert _plan_of(team).team_threads(n_jobs) == min(n_jobs, groups)
    _assert_identical(expected, got)
    # the reused plan, a new team (its helpers there from the first step, as
    # the first call's may not be) and new inputs: nothing read stale
    for seed in (1, 2):
        X2 = np.random.default_rng(seed).standard_normal(X.shape).astype(np.float32)
        _assert_identical(_outputs(one, X2), _outputs(team, X2))


@needs_team
def test_team_with_ragged_rows_states_and_dropout_masks(team_at_any_size):
    """Few rows (still one sub-batch), rows that end early, initial states,
    and training-mode masks (input and recurrent dropout: the leader masks
    h_prev after the team has finished the previous step)."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5, 19, 6)).astype(np.float32)
    lengths = np.array([19, 4, 19, 1, 11])
    h0 = rng.standard_normal((2, 5, 24)).astype(np.float32)
    c0 = rng.standard_normal((2, 5, 24)).astype(np.float32)
    kwargs = dict(num_layers=2, dropout=0.3, recurrent_dropout=0.2, dtype="float32")
    results = []
    for n_jobs in (1, 2, 4):
        net = clstm.LSTM(6, 24, random_state=5, n_jobs=n_jobs, **kwargs)
        net.train()                 # masks drawn from random_state: the same for each
        results.append(_outputs(net, X, lengths, (h0, c0)))
        net.eval()
        results.append(_outputs(net, X, lengths, (h0, c0)))
    for n in range(2):
        _assert_identical(results[n], results[n + 2])
        _assert_identical(results[n], results[n + 4])


@needs_team
def test_more_threads_than_cores_still_identical(team_at_any_size):
    """More members than cores: helpers arrive late, some after the leader
    has finished (they must leave without touching anything), and members
    wait on ones the OS has not scheduled."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((1, 150, 8)).astype(np.float32)
    expected = _outputs(clstm.LSTM(8, 128, random_state=0, n_jobs=1), X)
    net = clstm.LSTM(8, 128, random_state=0, n_jobs=16)
    for _ in range(5):
        _assert_identical(expected, _outputs(net, X))
    groups = -(-128 // _scan.fused_cell_width())     # 16 of 8 units (AVX2)
    assert _plan_of(net).team_threads(16) == min(16, groups)


@needs_team
def test_team_equals_numpy_reference(team_at_any_size):
    from clstm._reference import reference_lstm_forward
    rng = np.random.default_rng(3)
    X = rng.standard_normal((1, 30, 5))
    net = clstm.LSTM(5, 40, num_layers=2, bidirectional=True, random_state=0, n_jobs=2)
    out, (h_n, c_n) = net.run(X.astype(np.float32), keep_cache=False)
    ref, (rh, rc), _ = reference_lstm_forward(
        {k: v.astype(np.float64) for k, v in net.params.items()}, X, None, None, None, 2, True)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5)
    np.testing.assert_allclose(h_n, rh, rtol=0, atol=2e-5)
    np.testing.assert_allclose(c_n, rc, rtol=0, atol=2e-5)


@needs_team
def test_when_a_team_is_used():
    """The default thresholds: enough work per thread and per call, one
    sub-batch of fused steps (float32 LSTM inference, few rows)."""
    rng = np.random.default_rng(4)

    def team_size(net, B, T, I, n_jobs=2):
        net.run(rng.standard_normal((B, T, I)).astype(np.float32), keep_cache=False)
        return _plan_of(net).team_threads(n_jobs)

    width = _scan.fused_cell_width()
    stream = clstm.LSTM(16, 64, random_state=0, n_jobs=2)
    assert team_size(stream, 1, 200, 16) == min(2, 64 // width)     # the stream config
    assert team_size(stream, 1, 10, 16) == 1                # too few steps for a thread
    assert team_size(clstm.LSTM(16, 16, n_jobs=2), 1, 200, 16) == 1    # too little a step
    assert team_size(stream, 64, 200, 16) == 1          # rows to split instead
    assert team_size(clstm.GRU(16, 64, n_jobs=2), 1, 200, 16) == 1     # no fused GRU step
    assert team_size(clstm.LSTM(16, 64, dtype="float64", n_jobs=2), 1, 200, 16) == 1
    assert team_size(clstm.LSTM(16, 64, proj_size=8, n_jobs=2), 1, 200, 16) == 1
    assert team_size(stream, 1, 200, 16, n_jobs=1) == 1


def test_threshold_setter_checks_its_value():
    with pytest.raises(ValueError, match=">= 0"):
        _scan.set_team_min_work(-1)
    previous = _scan.set_team_min_work(123)
    assert _scan.team_min_work() == 123
    assert _scan.set_team_min_work(previous) == 123


@needs_team
def test_automatic_threads_use_a_team_for_one_sequence(team_at_any_size, monkeypatch):
    """n_jobs=None: batch 1 has no rows for a second thread, but its steps
    can be split; rnn passes the automatic count as team_threads."""
    X = np.random.default_rng(5).standard_normal((1, 9, 4)).astype(np.float32)
    expected = _outputs(clstm.LSTM(4, 32, random_state=0, n_jobs=1), X)
    monkeypatch.setattr(rnn, "resolve_n_threads",
                        lambda n_jobs, batch_size=None: 1 if batch_size is not None else 3)
    seen = []
    original = _scan.NetworkPlan.run

    def spy(self, out, finals, n_threads=None, team_threads=1, x=None, out_in_place=False):
        seen.append((n_threads, team_threads))
        return original(self, out, finals, n_threads, team_threads, x, out_in_place)

    monkeypatch.setattr(_scan, "NetworkPlan", type("Spy", (_scan.NetworkPlan,), {"run": spy}))
    net = clstm.LSTM(4, 32, random_state=0)
    _assert_identical(expected, _outputs(net, X))
    assert seen == [(1, 3)]
    net.forward(X)       # a forward that keeps a cache: offered too (a row team decides:
    assert len(seen) == 2 and seen[-1][1] == 3      # tests/test_row_team.py), none at batch 1


@pytest.fixture
def team_mode():
    """Set how teams judge their probe (_scan.set_team_mode); back to measuring after."""
    yield _scan.set_team_mode
    _scan.set_team_mode(0)


@needs_team
@pytest.mark.parametrize("n_jobs", [2, 3])
def test_a_team_that_does_not_pay_goes_on_alone(team_at_any_size, team_mode, n_jobs):
    """The leader measures its first steps with the whole team; where it waited
    longer than the others' share of its work (forced here: mode 1), it runs
    the rest of the call alone and the next calls start alone (1, then 3,
    ...): the same bits every time, batch-1 inference (a team by units). A
    training team by rows (shared slices) is never probed."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((1, 2000, 6)).astype(np.float32)   # (the helpers in time to probe)
    one = clstm.LSTM(6, 40, n_jobs=1, random_state=2)
    team = clstm.LSTM(6, 40, n_jobs=n_jobs, random_state=2)
    expected = _outputs(one, X)
    team_mode(1)
    before = _scan.team_solo_calls()
    for _ in range(6):   # probed then alone, alone from the start, ... (a late helper: no probe)
        _assert_identical(expected, _outputs(team, X))
    went_alone = _scan.team_solo_calls() - before
    assert went_alone >= 1
    team_mode(2)               # never alone: the team to the end, the same bits
    _assert_identical(expected, _outputs(team, X))
    assert _scan.team_solo_calls() - before == went_alone

    # the projection first (a shared step, published before the probe's
    # steps alone): probed, then alone, the same bits
    Xp = rng.standard_normal((1, 2000, 20)).astype(np.float32)
    one, team = (clstm.LSTM(20, 64, n_jobs=n, random_state=3) for n in (1, n_jobs))
    expected = _outputs(one, Xp)
    team_mode(1)
    before = _scan.team_solo_calls()
    for _ in range(6):
        _assert_identical(expected, _outputs(team, Xp))
    assert _scan.team_solo_calls() > before
    team_mode(0)          # (measured: whichever verdict, the same bits)
    _assert_identical(expected, _outputs(team, Xp))

    team_mode(1)
    before = _scan.team_solo_calls()
    Xr = rng.standard_normal((24, 300, 3)).astype(np.float32)
    lengths = rng.integers(1, 301, size=24)
    lengths[0] = 300
    grads = []
    for n, mode in ((1, 2), (n_jobs, 1)):
        team_mode(mode)
        net = clstm.LSTM(3, 20, n_jobs=n, random_state=1).train()
        out, _ = net.run(Xr, lengths=lengths)
        net.backward(np.cos(out))
        grads.append([out, *(net.grads[k].copy() for k in sorted(net.grads))])
    _assert_identical(grads[0], grads[1])
    assert _scan.team_solo_calls() == before


@needs_team
@pytest.mark.parametrize("variant", ["lstm", "peephole-cifg", "stacked-bidirectional"])
@pytest.mark.parametrize("input_size, hidden", [(3, 37), (20, 64)])
@pytest.mark.parametrize("n_jobs", [2, 3])
def test_the_rest_of_a_long_scan_as_one_slice_a_member(team_at_any_size, team_mode, variant,
                                                       input_size, hidden, n_jobs):
    """After its probe, with every helper there, a units team runs the rest of
    a full-length scan as one slice per member, each waiting only for its
    peers' last step (_scan._units_rest): the one-thread bits, for every
    layer and direction, given states and new inputs on the reused plan.
    Ragged lengths keep a slice a step."""
    rng = np.random.default_rng(5)
    kwargs = dict(dtype="float32", random_state=6, **VARIANTS[variant])
    one = clstm.LSTM(input_size, hidden, n_jobs=1, **kwargs)
    team = clstm.LSTM(input_size, hidden, n_jobs=n_jobs, **kwargs)
    team_mode(2)        # never alone: the probe's 28 steps, then the rest as one slice
    before = _scan.units_team_scans()
    for call in range(20):      # (until a call's helpers come in time, twice)
        X = rng.standard_normal((1, 1500, input_size)).astype(np.float32)
        state = None if call % 2 else tuple(
            rng.standard_normal(s.shape).astype(np.float32) for s in _outputs(one, X)[1:])
        _assert_identical(_outputs(one, X, state=state), _outputs(team, X, state=state))
        if _scan.units_team_scans() - before >= 2:
            break
    if n_jobs <= (os.cpu_count() or 1):      # (more threads than cores: helpers come late)
        assert _scan.units_team_scans() > before
    before = _scan.units_team_scans()
    X = rng.standard_normal((2, 300, input_size)).astype(np.float32)
    lengths = np.array([300, 211])
    for _ in range(3):
        _assert_identical(_outputs(one, X, lengths=lengths), _outputs(team, X, lengths=lengths))
    assert _scan.units_team_scans() == before
