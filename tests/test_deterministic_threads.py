"""Training is bit-identical for every n_jobs.

A forward that keeps a cache splits the batch into parts fixed by the shape
(clstm._parallel.fixed_part_count), the threads take the parts in turn, and
the parts' parameter-gradient sums are added in part order: outputs, states,
grad_X and every gradient must be equal bit for bit (np.array_equal, no
tolerance) whatever the thread count.
"""

import threading

import numpy as np
import pytest

import clstm
import clstm._parallel as parallel
import clstm._rnn as rnn
from clstm import _scan
from clstm._parallel import fixed_part_count, run_parts

from _one_call import CELLS


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of 4 rows with any amount of work, so small batches split as large ones."""
    monkeypatch.setattr(parallel, "ROWS_PER_FIXED_PART", 4)
    monkeypatch.setattr(rnn, "FIXED_PART_MIN_WORK", 0)


def _train_step(net, X, lengths, seed=1):
    """Forward + backward in training mode with every state gradient non-zero."""
    net.train()
    out, state = net.run(X, None, lengths)
    rng = np.random.default_rng(seed)
    grad_state = tuple(rng.standard_normal(s.shape) for s in state)
    grad_X = net.backward_state(np.cos(out), grad_state)
    return {"out": out, "grad_X": grad_X,
            **{f"final_{k}": s for k, s in enumerate(state)},
            **{f"grad:{name}": g.copy() for name, g in net.grads.items()}}


def _assert_bit_identical(results):
    first = results[0]
    for other in results[1:]:
        assert other.keys() == first.keys()
        for name, value in first.items():
            assert other[name].dtype == value.dtype
            assert np.array_equal(other[name], value), name


def test_fixed_part_count_depends_on_the_shape_only():
    assert fixed_part_count(1, 100) == 1
    assert fixed_part_count(31, 100) == 1
    assert fixed_part_count(32, 100) == 2      # batch 32: two halves (the old 2-thread split)
    assert fixed_part_count(64, 100) == 2
    assert fixed_part_count(96, 100) == 3
    assert fixed_part_count(256, 100) == 8     # about 32 rows a part
    assert fixed_part_count(256, 3) == 3       # capped by the work
    assert fixed_part_count(256, 0) == 1
    # the benchmark shapes split in two; below FIXED_PART_MIN_WORK a batch stays whole
    assert rnn._fixed_parts(32, 50, 50) == 2
    assert rnn._fixed_parts(32, 20, 16) == 1
    assert rnn._fixed_parts(64, 100, 128) == 2
    assert rnn._fixed_parts(64, 100, 512) == 2
    assert rnn._fixed_parts(32, 100, 128) == 2


def test_run_parts_gives_each_thread_a_contiguous_run_in_order(monkeypatch):
    groups = []
    original = parallel.run_tasks

    def spy(tasks):                  # each task is one thread's run of parts
        groups.append([[] for _ in tasks])
        original([lambda g=g, task=task: (ran.append(g), task())
                  for g, task in enumerate(tasks)])

    monkeypatch.setattr(parallel, "run_tasks", spy)
    lock = threading.Lock()
    for n_threads, n_tasks in ((1, 5), (2, 5), (3, 4), (4, 2)):
        groups.clear()
        order = []

        def part(k):
            with lock:
                order.append((threading.get_ident(), k))

        ran = []
        run_parts(n_threads, [lambda k=k: part(k) for k in range(n_tasks)])
        assert len(groups) == 1 and len(groups[0]) == min(n_threads, n_tasks)
        assert sorted(ran) == list(range(min(n_threads, n_tasks)))
        assert sorted(k for _, k in order) == list(range(n_tasks))
        by_thread = {}
        for ident, k in order:
            by_thread.setdefault(ident, []).append(k)
        for run in by_thread.values():           # each thread's parts in increasing order
            assert run == sorted(run)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_stacked_bidirectional_ragged_dropout_bit_identical(small_parts, cell, dtype):
    cls, options = CELLS[cell]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((23, 9, 5))
    lengths = rng.integers(1, 10, size=23)
    results = []
    for n_jobs in (1, 2, 3, 4):
        net = cls(5, 7, num_layers=2, bidirectional=True, dtype=dtype, random_state=0,
                  dropout=0.3, recurrent_dropout=0.2, n_jobs=n_jobs, **options)
        results.append(_train_step(net, X, lengths))
        assert len(net._cache["chunks"]) == 5        # 23 rows in parts of about 4
    _assert_bit_identical(results)


@pytest.mark.parametrize("cell", list(CELLS))
def test_unidirectional_float32_bit_identical(small_parts, cell):
    """float32 with the packed kernels (wide inputs: the input projection runs
    packed over all steps) and no dropout."""
    cls, options = CELLS[cell]
    rng = np.random.default_rng(3)
    X = rng.standard_normal((17, 6, 40)).astype(np.float32)
    results = []
    for n_jobs in (1, 2, 4):
        net = cls(40, 12, random_state=1, n_jobs=n_jobs, **options)
        results.append(_train_step(net, X, None))
    _assert_bit_identical(results)


def test_default_rule_splits_and_is_bit_identical(monkeypatch):
    """Without patching: a batch of 64 splits in two, at any n_jobs; and the
    gradients differ in the last bits from one part over the whole batch
    (so this test can fail: a split-dependent sum shows)."""
    rng = np.random.default_rng(5)
    B, T, I, H = 64, 20, 8, 64                   # B*T*H^2 = 5.2e6: enough work for two parts
    X = rng.standard_normal((B, T, I)).astype(np.float32)
    lengths = rng.integers(1, T + 1, size=B)
    results = []
    for n_jobs in (1, 2, 3, 4, None):
        net = clstm.LSTM(I, H, random_state=2, n_jobs=n_jobs)
        results.append(_train_step(net, X, lengths))
        assert len(net._cache["chunks"]) == 2
    _assert_bit_identical(results)
    # another split (one part) changes the rounding of the summed gradients:
    # the equality above is not vacuous
    monkeypatch.setattr(parallel, "ROWS_PER_FIXED_PART", 128)
    whole = _train_step(clstm.LSTM(I, H, random_state=2, n_jobs=1), X, lengths)
    assert np.array_equal(whole["out"], results[0]["out"])
    for name in ("grad_X", "grad:h0", "grad:c0"):     # per-row: split-independent
        assert np.array_equal(whole[name], results[0][name]), name
    assert not np.array_equal(whole["grad:weight_hh_l0"], results[0]["grad:weight_hh_l0"])
    np.testing.assert_allclose(whole["grad:weight_hh_l0"], results[0]["grad:weight_hh_l0"],
                               rtol=1e-4, atol=1e-5)


def test_inference_split_gives_the_training_split_outputs():
    """Inference (no cache) splits by the thread count; per-row results do
    not depend on the split, so they equal the fixed split's bit for bit."""
    rng = np.random.default_rng(6)
    X = rng.standard_normal((64, 20, 8)).astype(np.float32)
    lengths = rng.integers(1, 21, size=64)
    net = clstm.LSTM(8, 64, num_layers=2, random_state=0, n_jobs=4)
    out_fixed, state_fixed = net.run(X, None, lengths)
    assert len(net._cache["chunks"]) == 2
    for n_jobs in (1, 4):
        net.n_jobs = n_jobs
        out, state = net.run(X, None, lengths, keep_cache=False)
        assert np.array_equal(out, out_fixed)
        assert all(np.array_equal(a, b) for a, b in zip(state, state_fixed))


@pytest.mark.parametrize("cell", list(CELLS))
def test_per_row_results_do_not_depend_on_the_split(small_parts, cell):
    """Outputs and final states of every cell: 5 fixed parts (a forward with
    a cache), one part and two parts (inference at n_jobs 1 and 4) agree."""
    cls, options = CELLS[cell]
    rng = np.random.default_rng(9)
    X = rng.standard_normal((23, 7, 40)).astype(np.float32)
    lengths = rng.integers(1, 8, size=23)
    net = cls(40, 12, num_layers=2, bidirectional=True, random_state=4, n_jobs=1, **options)
    out_fixed, state_fixed = net.run(X, None, lengths)
    assert len(net._cache["chunks"]) == 5
    for n_jobs in (1, 4):
        net.n_jobs = n_jobs
        out, state = net.run(X, None, lengths, keep_cache=False)
        assert np.array_equal(out, out_fixed)
        assert all(np.array_equal(a, b) for a, b in zip(state, state_fixed))


def test_convlstm_bit_identical(monkeypatch):
    import clstm._convlstm as convlstm
    monkeypatch.setattr(parallel, "ROWS_PER_FIXED_PART", 16)
    monkeypatch.setattr(convlstm, "MIN_WORK_PER_THREAD", 0)
    rng = np.random.default_rng(7)
    X = rng.standard_normal((6, 5, 4, 4, 2))            # 16 pixel rows a sequence
    lengths = [5, 3, 5, 2, 4, 1]
    results = []
    for n_jobs in (1, 2, 3):
        net = clstm.ConvLSTM(2, 8, 3, num_layers=2, dtype="float64", random_state=0,
                             dropout=0.2, n_jobs=n_jobs)
        net.train()
        out, (h, c) = net.forward(X, lengths=lengths)
        assert len(net._cache["chunks"]) > 1
        grad_X = net.backward(np.cos(out), np.sin(h), c)
        results.append({"out": out, "h": h, "c": c, "grad_X": grad_X,
                        **{f"grad:{k}": g.copy() for k, g in net.grads.items()}})
    _assert_bit_identical(results)


def _fit(cls, n_jobs, X, y, **params):
    est = cls(hidden_size=16, max_iter=3, batch_size=40, random_state=0, n_jobs=n_jobs,
              dropout=0.1, recurrent_dropout=0.1, num_layers=2, **params)
    return est.fit(X, y)


@pytest.mark.parametrize("kind", ["regressor", "classifier"])
def test_estimators_fit_bit_identical(small_parts, monkeypatch, kind):
    """n_jobs=1 and n_jobs=2 fits: the same loss curve, parameters and predictions."""
    calls = []      # (threads, sub-batches) of each backward

    class Recording(_scan.BackwardPlan):
        def run(self, grad_out, targets, n_threads=None, team_threads=1, grad_x=True):
            calls.append((n_threads, self.n_parts))
            return super().run(grad_out, targets, n_threads, team_threads, grad_x)

    monkeypatch.setattr(_scan, "BackwardPlan", Recording)
    rng = np.random.default_rng(8)
    X = rng.standard_normal((100, 8, 3))
    y = X[:, :, 0].sum(axis=1)
    cls = clstm.LSTMRegressor
    if kind == "classifier":
        y, cls = (y > 0).astype(int), clstm.LSTMClassifier
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # max_iter reached
        one, two = _fit(cls, 1, X, y), _fit(cls, 2, X, y)
    assert (2, 10) in calls                           # two threads on 10 parts did run
    assert one.loss_curve_ == two.loss_curve_
    assert one.lstm_.params.keys() == two.lstm_.params.keys()
    for name, value in one.lstm_.params.items():
        assert np.array_equal(two.lstm_.params[name], value), name
    for attr in ("head_weight", "head_bias"):
        assert np.array_equal(getattr(two._model, attr), getattr(one._model, attr))
    assert np.array_equal(one.predict(X), two.predict(X))


def test_a_worker_thread_gives_the_main_threads_bits():
    """A training step called from a Python thread other than the main one
    (joblib's threading backend, a Dask threaded worker) gives the same bits
    as from the main thread: clstm's BLAS calls run on one thread there too
    (SciPy's OpenBLAS ignores the process-wide one-thread limit in a thread
    other than the one that set it, and its threaded SGEMM sums the weight
    gradients in another order)."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((61, 19, 20)).astype(np.float32)   # long weight-gradient sums
    results = {}

    def step(key):
        results[key] = _train_step(clstm.GRU(20, 13, random_state=0, n_jobs=1, dtype="float32"),
                                   X, None)

    step("main")
    for k in range(3):
        worker = threading.Thread(target=step, args=(k,))
        worker.start()
        worker.join()
    _assert_bit_identical([results["main"], results[0], results[1], results[2]])
