"""A team of threads splitting each step of a training scan by rows
(_scan.pyx's row team: NetworkPlan.run for the forward, _scan.backward for
BPTT). A training batch whose shape gives one fixed part keeps one set of
weight-gradient sums, so its steps split by rows instead of by parts: the
outputs, states, grad_X and every gradient must be the same bits as on one
thread, for every cell the team takes, with ragged lengths, initial states,
dropout masks, late or missing helpers, thin and wide inputs."""

import numpy as np
import pytest

import clstm
from clstm import _scan

from _team import team_at_any_size  # noqa: F401  (a fixture)

pytestmark = pytest.mark.kernel    # fast: also run against the bounds-checked build

needs_team = pytest.mark.skipif(not (_scan.HAVE_THREADS and _scan.HAVE_PACKED_GEMM),
                                reason="a build without threads or the small GEMM has no team")


@pytest.fixture
def backward_teams(monkeypatch):
    """The team sizes of every compiled backward (BackwardPlan.run: the
    largest of its stages'; _scan.backward on the per-layer path), in order."""
    sizes = []
    original = _scan.backward

    def recording(arrays, cfg, team_threads=1):
        sizes.append(original(arrays, cfg, team_threads))
        return sizes[-1]

    class Recording(_scan.BackwardPlan):
        def run(self, grad_out, targets, n_threads=None, team_threads=1, grad_x=True):
            sizes.append(super().run(grad_out, targets, n_threads, team_threads, grad_x))
            return sizes[-1]

    monkeypatch.setattr(_scan, "backward", recording)
    monkeypatch.setattr(_scan, "BackwardPlan", Recording)
    return sizes


@pytest.fixture
def forward_teams(monkeypatch):
    """The team sizes of every compiled forward (NetworkPlan.run), in order."""
    sizes = []

    class Recording(_scan.NetworkPlan):
        def run(self, out, finals, n_threads=None, team_threads=1, x=None, out_in_place=False):
            sizes.append(self.team_threads(team_threads))
            return super().run(out, finals, n_threads, team_threads, x, out_in_place)

    monkeypatch.setattr(_scan, "NetworkPlan", Recording)
    return sizes


def _train_step(net, X, lengths=None, state=None, seed=1):
    """Forward + backward in training mode, every gradient reaching the
    outputs and the final states non-zero."""
    net.train()
    out, final = net.run(X, state, lengths)
    rng = np.random.default_rng(seed)
    grad_state = tuple(rng.standard_normal(s.shape).astype(s.dtype) for s in final)
    grad_X = net.backward_state(np.cos(out), grad_state)
    return {"out": out, "grad_X": grad_X,
            **{f"final_{k}": s for k, s in enumerate(final)},
            **{f"grad:{name}": g.copy() for name, g in net.grads.items()}}


def _assert_identical(expected, got):
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        assert np.array_equal(got[name], value), (name, np.abs(got[name] - value).max())


TEAM_CELLS = {
    "lstm": (clstm.LSTM, {}),
    "coupled": (clstm.LSTM, {"coupled_gates": True}),
    "gru": (clstm.GRU, {}),
    "stacked-bidirectional": (clstm.LSTM, {"num_layers": 2, "bidirectional": True}),
    "gru-stacked-bidirectional": (clstm.GRU, {"num_layers": 2, "bidirectional": True}),
}


@pytest.fixture(params=["by-size", "kernel"])
def weight_gradients(request):
    """Weight gradients where their size puts them (these shapes: the BLAS),
    or all on clstm's kernel, split by rows across the team (no blocks of
    the BLAS's small-product kernel to keep them on it)."""
    previous = _scan.set_small_gemm_volume(0) if request.param == "kernel" else None
    yield request.param
    if previous is not None:
        _scan.set_small_gemm_volume(previous)


@needs_team
@pytest.mark.parametrize("cell", list(TEAM_CELLS))
@pytest.mark.parametrize("input_size", [3, 40])    # thin: [x | h] per step; wide: projection
@pytest.mark.parametrize("n_jobs", [2, 3, 7])
def test_training_team_equals_one_thread(team_at_any_size, forward_teams, backward_teams,
                                         weight_gradients, cell, input_size, n_jobs):
    cls, kwargs = TEAM_CELLS[cell]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((29, 17, input_size)).astype(np.float32)
    make = lambda n: cls(input_size, 21, n_jobs=n, random_state=3, dtype="float32", **kwargs)
    expected = _train_step(make(1), X)
    assert set(forward_teams) == set(backward_teams) == {1}
    forward_teams.clear(), backward_teams.clear()
    net = make(n_jobs)
    got = _train_step(net, X)
    expected_team = min(n_jobs, 29 // 8)          # at least 8 rows a thread
    assert forward_teams == [expected_team]
    assert backward_teams and set(backward_teams) == {expected_team}
    _assert_identical(expected, got)
    _assert_identical(expected, _train_step(net, X))       # the reused plan, a new team


@needs_team
@pytest.mark.parametrize("cell", ["lstm", "gru", "stacked-bidirectional"])
def test_full_length_steps_run_as_one_slice_a_member(team_at_any_size, cell):
    """A full-length batch: once the team has arrived, each member runs its
    rows through the remaining steps without a wait between them (forward
    and BPTT; reverse directions too), with the bits of one thread, whether
    the helper arrived at the first step or some later one."""
    cls, kwargs = TEAM_CELLS[cell]
    rng = np.random.default_rng(8)
    X = rng.standard_normal((24, 40, 3)).astype(np.float32)
    make = lambda n: cls(3, 20, n_jobs=n, random_state=2, dtype="float32",
                         recurrent_dropout=0.2, **kwargs)
    expected = _train_step(make(1), X)
    before = _scan.row_team_scans()
    for _ in range(20):
        _assert_identical(expected, _train_step(make(2), X))     # (the same dropout masks)
        if _scan.row_team_scans() > before:
            break
    assert _scan.row_team_scans() > before      # (a helper that never came in 20 calls: none)


@needs_team
@pytest.mark.parametrize("cell", ["lstm", "gru", "stacked-bidirectional"])
@pytest.mark.parametrize("input_size", [3, 40])
def test_ragged_lengths_states_and_dropout(team_at_any_size, forward_teams, backward_teams,
                                           cell, input_size):
    """Rows that end early (the steps shrink; reverse directions start rows
    from h0 mid-sequence), initial states, input and recurrent dropout (the
    masked h_prev, its copy for the weight gradients)."""
    cls, kwargs = TEAM_CELLS[cell]
    rng = np.random.default_rng(1)
    X = rng.standard_normal((26, 19, input_size)).astype(np.float32)
    lengths = rng.integers(1, 20, size=26)
    lengths[3] = 19
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    units = 18
    state = tuple(rng.standard_normal((layers, 26, units)).astype(np.float32)
                  for _ in range(2 if cls is clstm.LSTM else 1))
    extra = dict(dropout=0.3, recurrent_dropout=0.2) if layers > 1 else \
        dict(recurrent_dropout=0.25)

    def make(n):
        return cls(input_size, units, n_jobs=n, random_state=5, dtype="float32",
                   **kwargs, **extra)

    expected = _train_step(make(1), X, lengths, state)
    net = make(3)
    got = _train_step(net, X, lengths, state)
    assert forward_teams[-1] == 3 and backward_teams[-1] == 3
    _assert_identical(expected, got)


@needs_team
def test_more_threads_than_cores_still_identical(team_at_any_size, forward_teams,
                                                 backward_teams):
    """Members the OS does not schedule promptly: helpers join late or never,
    the leader takes over their rows."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((128, 7, 8)).astype(np.float32)
    expected = _train_step(clstm.LSTM(8, 16, random_state=0, n_jobs=1), X)
    net = clstm.LSTM(8, 16, random_state=0, n_jobs=16)      # one fixed part: little work
    for _ in range(3):
        _assert_identical(expected, _train_step(net, X))
    assert forward_teams[-1] == 16 and set(backward_teams) == {1, 16}


@needs_team
@pytest.mark.parametrize("cls, kwargs", [
    (clstm.LSTM, {"peephole": True}),          # the cell sums peephole gradients over rows
    (clstm.LSTM, {"layer_norm": True}),
    (clstm.LSTM, {"proj_size": 5}),
])
def test_cells_the_team_leaves_alone(team_at_any_size, forward_teams, backward_teams, cls,
                                     kwargs):
    """Cells whose backward sums over rows inside the step (or whose products
    are not all on the small-GEMM kernel) run each part on one thread: the
    same bits, no team."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((24, 11, 6)).astype(np.float32)
    expected = _train_step(cls(6, 16, random_state=1, n_jobs=1, **kwargs), X)
    net = cls(6, 16, random_state=1, n_jobs=2, **kwargs)
    _assert_identical(expected, _train_step(net, X))
    assert set(forward_teams) == set(backward_teams) == {1}


@needs_team
def test_when_a_training_team_is_used(forward_teams, backward_teams):
    """The default thresholds: one fixed part (several parts split the
    batch already), float32, at least 8 rows and enough work per thread."""
    rng = np.random.default_rng(4)

    def team_size(net, B, T, I):
        _train_step(net, rng.standard_normal((B, T, I)).astype(np.float32))
        return forward_teams[-1], backward_teams[-1]

    ts_small = clstm.LSTM(1, 50, random_state=0, n_jobs=2)
    assert team_size(ts_small, 24, 50, 1) == (2, 2)              # fewer than 32 rows: one part
    assert team_size(ts_small, 15, 50, 1) == (1, 1)              # fewer than 8 rows a thread
    narrow = clstm.LSTM(1, 20, random_state=0, n_jobs=2)
    assert team_size(narrow, 24, 50, 1) == (2, 2)
    assert team_size(narrow, 24, 3, 1) == (1, 1)                 # too little a call
    assert team_size(clstm.LSTM(1, 4, n_jobs=2), 24, 50, 1) == (1, 1)     # too little a step
    assert team_size(clstm.LSTM(1, 50, n_jobs=1), 24, 50, 1) == (1, 1)
    assert team_size(clstm.LSTM(1, 50, dtype="float64", n_jobs=2), 24, 50, 1) == (1, 1)
    # two fixed parts (batch 32 and enough work: the ts-small config, and
    # more): the parts take the threads
    assert team_size(ts_small, 32, 50, 1) == (1, 1)
    big = clstm.LSTM(16, 128, random_state=0, n_jobs=2)
    _train_step(big, rng.standard_normal((32, 100, 16)).astype(np.float32))
    assert backward_teams[-1] == 1


@needs_team
def test_estimator_fit_with_a_team_is_bit_identical(forward_teams, backward_teams):
    """The estimators' fit (one fixed part at batch 24) gives the same weights,
    loss curve and predictions at n_jobs 1 and 2, the second with a team."""
    import warnings
    rng = np.random.default_rng(5)
    X = rng.standard_normal((96, 20, 2)).astype(np.float32)
    y = X[:, -5:, 0].sum(axis=1)
    fits = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # max_iter reached
        for n in (1, 2):
            fits.append(clstm.LSTMRegressor(hidden_size=32, max_iter=3, batch_size=24,
                                            random_state=0, n_jobs=n).fit(X, y))
    assert 2 in forward_teams and 2 in backward_teams
    one, two = fits
    assert one.loss_curve_ == two.loss_curve_
    for name, value in one.lstm_.params.items():
        assert np.array_equal(two.lstm_.params[name], value), name
    assert np.array_equal(one.predict(X), two.predict(X))
