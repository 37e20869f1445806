"""Threads: n_jobs, batch splitting, BLAS limits, concurrent callers."""

import os
import select
import signal
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import clstm
from clstm._parallel import blas_single_threaded, resolve_n_threads, split_rows
from clstm._reference import reference_lstm_backward, reference_lstm_forward


def _blas_threads():
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def _kernel_blas_threads():
    """Thread counts of the BLAS the kernels call (SciPy's)."""
    from clstm._parallel import _blas_controller
    return [lib.get_num_threads() for lib in _blas_controller().lib_controllers]


@pytest.mark.parametrize("n_rows, n_parts", [(1, 1), (1, 4), (7, 2), (64, 3), (5, 5)])
def test_split_rows_covers_every_row_once(n_rows, n_parts):
    for weights in (None, np.arange(n_rows, 0, -1)):
        parts = split_rows(n_rows, n_parts, weights)
        assert parts[0][0] == 0 and parts[-1][1] == n_rows
        assert all(a < b for a, b in parts)
        assert all(parts[k][1] == parts[k + 1][0] for k in range(len(parts) - 1))
        assert len(parts) == min(n_parts, n_rows)


def test_split_rows_balances_weights():
    lengths = np.array([100] * 4 + [10] * 36)        # sorted, decreasing
    (a0, a1), (b0, b1) = split_rows(len(lengths), 2, lengths)
    left, right = lengths[a0:a1].sum(), lengths[b0:b1].sum()
    assert abs(left - right) <= 100


def test_resolve_n_threads():
    assert resolve_n_threads(1, 1000) == 1
    assert resolve_n_threads(3, 1000) == 3
    assert resolve_n_threads(-1) >= 1
    assert resolve_n_threads(None, 1) == 1          # one sequence: nothing to split
    with threadpool_limits(limits=1, user_api="blas"):
        assert resolve_n_threads(None, 1000) == 1   # joblib-style limit respected
    for bad in (0, 1.5, "2", True):
        with pytest.raises((TypeError, ValueError), match="n_jobs"):
            resolve_n_threads(bad, 10)


@pytest.fixture
def split_small_batches(monkeypatch):
    """Make tiny test batches split across threads as large ones do."""
    import clstm._rnn as lstm_module
    monkeypatch.setattr(lstm_module, "FIXED_PART_MIN_WORK", 0)
    monkeypatch.setattr(lstm_module, "MIN_ROWS_PER_THREAD", 1)
    monkeypatch.setattr(clstm._parallel, "ROWS_PER_FIXED_PART", 4)   # training parts


@pytest.mark.parametrize("bidirectional, lengths", [(False, None), (True, "ragged")])
def test_threaded_matches_reference(split_small_batches, bidirectional, lengths):
    rng = np.random.default_rng(0)
    B, T, I, H, L = 37, 6, 3, 5, 2
    lens = rng.integers(1, T + 1, size=B) if lengths else None
    X = rng.standard_normal((B, T, I))
    for n_jobs in (1, 2, 3, 8):
        net = clstm.LSTM(I, H, num_layers=L, bidirectional=bidirectional, dtype="float64",
                         random_state=1, n_jobs=n_jobs)
        out, (h_n, c_n) = net.forward(X, lengths=lens)
        ref, (rh, rc), cache = reference_lstm_forward(net.params, X, None, None, lens, L,
                                                       bidirectional)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-13)
        np.testing.assert_allclose(h_n, rh, rtol=0, atol=1e-13)
        g = rng.standard_normal(out.shape)
        grad_X = net.backward(g)
        rgx, rgrads = reference_lstm_backward(g, np.zeros_like(h_n), np.zeros_like(c_n), cache)
        np.testing.assert_allclose(grad_X, rgx, rtol=0, atol=1e-12)
        for name, value in rgrads.items():
            np.testing.assert_allclose(net.grads[name], value, rtol=0, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_training_mode_identical_across_thread_counts(split_small_batches, dtype):
    """Dropout masks are drawn for the whole batch before it is split."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((23, 9, 3))
    lengths = rng.integers(1, 10, size=23)
    results = []
    for n_jobs in (1, 2, 3):
        net = clstm.LSTM(3, 6, num_layers=2, bidirectional=True, dtype=dtype, random_state=0,
                         dropout=0.3, recurrent_dropout=0.2, n_jobs=n_jobs).train()
        out, (h_n, c_n) = net.forward(X, lengths=lengths)
        grad_X = net.backward(np.cos(out), np.sin(h_n), c_n)
        results.append((out, h_n, c_n, grad_X, net.grads))
    for other in results[1:]:          # bit-identical (tests/test_deterministic_threads.py)
        for a, b in zip(results[0][:4], other[:4]):
            assert np.array_equal(a, b)
        for name in results[0][4]:
            assert np.array_equal(results[0][4][name], other[4][name]), name


def test_useful_threads_rule():
    from clstm._rnn import _useful_threads
    assert _useful_threads(2, 1, 200, 64) == 1          # one sequence: nothing to split
    assert _useful_threads(2, 32, 50, 50) == 2          # ts-small: ~0.2 ms each on C threads
    assert _useful_threads(2, 16, 20, 32) == 1          # ~30 us of work: not worth a thread
    assert _useful_threads(2, 8, 50, 50) == 1           # 8 rows: one thread's minimum
    assert _useful_threads(2, 64, 100, 128) == 2
    assert _useful_threads(8, 64, 100, 512) == 8
    assert _useful_threads(8, 20, 100, 512) == 2        # at least 8 rows per thread


def test_forward_bit_identical_across_thread_counts(split_small_batches):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((48, 20, 4)).astype(np.float32)
    outs = []
    for n_jobs in (1, 2, 4):
        net = clstm.LSTM(4, 16, num_layers=2, bidirectional=True, random_state=3, n_jobs=n_jobs)
        outs.append(net.forward(X)[0])
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_concurrent_forward_calls_are_bit_identical_to_serial(split_small_batches):
    rng = np.random.default_rng(4)
    net = clstm.LSTM(3, 24, num_layers=2, random_state=5, n_jobs=2)
    batches = [rng.standard_normal((16, 30, 3)).astype(np.float32) for _ in range(8)]
    serial = [net.run(X, keep_cache=False)[0] for X in batches]
    results = [None] * len(batches)

    def work(k):
        for _ in range(3):
            results[k] = net.run(batches[k], keep_cache=False)[0]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(serial, results):
        assert np.array_equal(a, b)


def test_blas_limit_is_restored():
    net = clstm.LSTM(2, 4, random_state=0)
    net.forward(np.ones((8, 3, 2)))      # (loads SciPy's BLAS: threadpool_info lists it)
    before = _blas_threads()
    with blas_single_threaded:
        assert set(_kernel_blas_threads()) == {1}
        with blas_single_threaded:            # re-entrant
            assert set(_kernel_blas_threads()) == {1}
        assert set(_kernel_blas_threads()) == {1}
    assert _blas_threads() == before


def _plans_limit_blas():
    """The scan, where its plans hold their threads' BLAS limit themselves."""
    from clstm import _rnn
    scan = _rnn._kernels()
    _rnn._plan_blas_limit()               # (asks the BLAS on first use)
    if not _rnn.PLANS_LIMIT_BLAS:
        pytest.skip("the BLAS has no limit per thread: calls enter blas_single_threaded")
    return scan


def test_plans_hold_their_threads_at_one_blas_thread():
    # the calling thread while a plan's call runs, and the pool's helpers
    scan = _plans_limit_blas()
    for _ in range(50):
        limits, on_helpers = scan.blas_limits_seen(4)
        assert limits == [1, 1, 1, 1]
        if on_helpers > 0 or not scan.HAVE_THREADS:
            break
    assert on_helpers > 0 or not scan.HAVE_THREADS


def test_forward_and_backward_hold_and_restore_the_callers_blas_limit():
    # a spy in place of OpenBLAS's per-thread setter: each plan's call sets
    # one thread, then puts back the caller's own limit
    import ctypes

    from clstm._parallel import _thread_local_limiters
    scan = _plans_limit_blas()
    real = _thread_local_limiters()[0]
    calls = []

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)
    def spy(n):
        calls.append(n)
        return real(n)

    net = clstm.LSTM(16, 64, random_state=0, n_jobs=1)
    X = np.random.default_rng(0).standard_normal((1, 50, 16)).astype(np.float32)
    previous = real(3)
    scan.set_blas_thread_limiter(ctypes.cast(spy, ctypes.c_void_p).value)
    try:
        out, _ = net.forward(X)
        net.backward(np.ones_like(out))
        net.run(X, keep_cache=False)
    finally:
        scan.set_blas_thread_limiter(ctypes.cast(real, ctypes.c_void_p).value)
        assert real(previous) == 3
    assert calls == [1, 3] * 3


def test_blas_limit_restored_after_error():
    before = _blas_threads()
    net = clstm.LSTM(2, 4, random_state=0)
    with pytest.raises(ValueError):
        net.forward(np.ones((8, 3, 5)))
    assert _blas_threads() == before


def test_concurrent_estimator_predict_is_bit_identical_to_serial():
    from concurrent.futures import ThreadPoolExecutor

    from clstm import LSTMRegressor

    rng = np.random.default_rng(6)
    X = rng.standard_normal((64, 12, 2)).astype(np.float32)
    y = X[:, 0, 0] - X[:, -1, 1]
    reg = LSTMRegressor(hidden_size=8, max_iter=2, random_state=0).fit(X, y)
    batches = [rng.standard_normal((20, 12, 2)).astype(np.float32) for _ in range(12)]
    serial = [reg.predict(b) for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(reg.predict, batches * 3))
    for k, pred in enumerate(concurrent):
        assert np.array_equal(pred, serial[k % len(batches)])


def test_run_tasks_does_not_wait_for_a_pool_thread_that_never_starts(monkeypatch):
    # a pool whose threads are all busy: the caller must run every task itself
    from clstm import _parallel

    class StuckPool:
        def __init__(self):
            self.submitted = []

        def submit(self, fn):
            self.submitted.append(fn)       # never run until the test says so

    pool = StuckPool()
    monkeypatch.setattr(_parallel, "_get_pool", lambda n: pool)
    ran = []
    _parallel.run_tasks([lambda k=k: ran.append(k) for k in range(3)])
    assert ran == [0, 1, 2] and len(pool.submitted) == 2
    for fn in pool.submitted:               # late starters find nothing left
        fn()
    assert ran == [0, 1, 2]


def test_run_tasks_raises_the_first_failing_task_in_order():
    from clstm._parallel import run_tasks

    def fail(k):
        raise ValueError(f"task {k}")

    ran = []
    with pytest.raises(ValueError, match="task 1"):
        run_tasks([lambda: ran.append(0), lambda: fail(1), lambda: fail(2),
                   lambda: ran.append(3)])
    assert sorted(ran) == [0, 3]            # the others still ran


def test_run_tasks_runs_each_task_once_on_several_threads():
    from clstm._parallel import run_tasks
    lock, counts = threading.Lock(), [0] * 16

    def task(k):
        with lock:
            counts[k] += 1

    for _ in range(20):
        run_tasks([lambda k=k: task(k) for k in range(16)])
    assert counts == [20] * 16


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_threaded_forwards_in_a_forked_child():
    """The compiled forward's helper threads are kept for the process; a
    fork's child has none of them (pthread_atfork resets the pool), so its
    threaded calls must start their own and give the same values, not hang."""
    rng = np.random.default_rng(7)
    batch = rng.standard_normal((64, 40, 8)).astype(np.float32)    # split by rows
    single = rng.standard_normal((1, 200, 8)).astype(np.float32)   # split by units (a team)
    net = clstm.LSTM(8, 64, random_state=0, n_jobs=2)
    expected = [net.run(X, keep_cache=False)[0] for X in (batch, single)]   # the pool starts
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                            # the child
        ok = False
        try:
            for _ in range(3):
                got = [net.run(X, keep_cache=False)[0] for X in (batch, single)]
                ok = all(np.array_equal(a, b) for a, b in zip(expected, got))
        finally:
            os.write(write_end, b"1" if ok else b"0")
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 120)
        answer = os.read(read_end, 1) if ready else b"timeout"
    finally:
        os.close(read_end)
        if answer == b"timeout":
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert answer == b"1", answer
