"""Dask: searches on a cluster, lazy prediction of Dask arrays, data-parallel training, faults.

Runs on a real LocalCluster (2 worker processes, 1 thread each) and compares
with the in-memory results.
"""

import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import cloudpickle  # noqa: E402
import dask  # noqa: E402
import joblib  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_validate  # noqa: E402

import clstm  # noqa: E402
from clstm import _dask, _parallel  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# the workers cannot import this file: send its functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    with cluster, Client(cluster) as c:
        yield c


def _data(n=120, T=6, F=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F))
    y = X[:, -1, 0] - 0.5 * X[:, 0, -1] + 3.0
    X[7], y[7] = X[3], y[3]                     # a duplicate: merged into one sample
    return X, y


def _max_weight_diff(a, b):
    pa, pb = a._model.params, b._model.params
    assert pa.keys() == pb.keys()
    return max(float(np.max(np.abs(pa[k].astype(np.float64) - pb[k]))) for k in pa)


_SMALL = dict(hidden_size=4, max_iter=3, batch_size=32, dtype="float64", random_state=0)


def _kill(pid):
    os.kill(pid, signal.SIGKILL)


def _worker_pids(client):
    return client.run(os.getpid)


def _die_in_the_next_step():
    """(Run on a worker) its next training step kills its process, mid-task."""
    def dying(*args, **kwargs):
        os._exit(1)
    _dask._block_step = dying


# =====================================================================================
# import isolation
# =====================================================================================

def test_import_clstm_does_not_import_dask():
    """Nor does fitting and predicting NumPy arrays; fitting a Dask array without a
    distributed.Client says what to do."""
    src = os.path.dirname(os.path.dirname(clstm.__file__))
    code = ("import sys, numpy as np, clstm; X = np.zeros((8, 3, 1)); "
            "reg = clstm.LSTMRegressor(hidden_size=2, max_iter=1).fit(X, X[:, 0, 0]); "
            "reg.predict(X); "
            "loaded = {'dask', 'distributed'} & {m.split('.')[0] for m in sys.modules}; "
            "assert not loaded, loaded; "
            "import dask.array as da\n"
            "try:\n"
            "    reg.fit(da.from_array(X, chunks=4), X[:, 0, 0])\n"
            "except ValueError as e:\n"
            "    assert 'distributed.Client' in str(e), e\n"
            "else:\n"
            "    raise AssertionError('no error')")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True, env=env)


# =====================================================================================
# 1. searches on the cluster; threads inside a worker
# =====================================================================================

def _threads_in_a_fit():
    """In a worker task: the thread counts clstm resolves during a fit (n_jobs=None),
    the BLAS limit in force, and the worker's task slots."""
    from threadpoolctl import threadpool_info
    seen = []
    original = _parallel.resolve_n_threads

    def recording(n_jobs, batch_size=None):
        n = original(n_jobs, batch_size)
        seen.append(n)
        return n

    X = np.random.default_rng(0).normal(size=(128, 5, 2))
    import clstm._rnn as rnn_module
    rnn_module.resolve_n_threads, saved = recording, rnn_module.resolve_n_threads
    try:
        clstm.LSTMRegressor(hidden_size=8, max_iter=1, batch_size=128).fit(X, X[:, 0, 0])
    finally:
        rnn_module.resolve_n_threads = saved
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    return {"used": sorted(set(seen)), "blas": blas,
            "slots": distributed.get_worker().state.nthreads,
            "cores": _parallel.available_cores()}


def test_worker_process_threads_are_respected(client):
    """Nanny-started workers get OPENBLAS_NUM_THREADS=1; clstm then uses one thread."""
    results = [client.submit(_threads_in_a_fit, pure=False, workers=[w]).result()
               for w in client.scheduler_info()["workers"]]
    for r in results:
        assert r["slots"] == 1
        assert r["used"] == [1], r
        assert max(r["blas"]) == 1, r


def test_thread_workers_do_not_oversubscribe():
    """A worker thread in the client's process (processes=False): the BLAS limit says
    nothing, so clstm caps itself at the task's share of the cores."""
    cores = _parallel.available_cores()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                               dashboard_address=None)
    with cluster, Client(cluster, set_as_default=False) as c:
        r = c.submit(_threads_in_a_fit, pure=False).result()
    assert r["slots"] == 2
    # the task's share, unless this process's BLAS limit is lower still
    assert r["used"] == [min(max(1, cores // 2), _parallel._blas_thread_limit())], r
    assert _parallel._dask_task_share() is None          # outside a task: no cap


def _search_data():
    X, y = _data(n=48, T=5, F=1, seed=1)
    return X, y


def test_searches_under_the_dask_backend_equal_the_sequential_ones(client):
    X, y = _search_data()
    est = clstm.LSTMRegressor(hidden_size=3, max_iter=2, dtype="float64", random_state=0,
                              n_jobs=1)
    grid = {"hidden_size": [2, 3], "learning_rate_init": [1e-3, 1e-2]}
    seq = GridSearchCV(est, grid, cv=2).fit(X, y)
    with joblib.parallel_backend("dask"):
        par = GridSearchCV(est, grid, cv=2, n_jobs=-1).fit(X, y)
    np.testing.assert_array_equal(par.cv_results_["mean_test_score"],
                                  seq.cv_results_["mean_test_score"])
    assert par.best_params_ == seq.best_params_
    np.testing.assert_array_equal(par.predict(X), seq.predict(X))

    dist = {"hidden_size": [2, 3, 4], "alpha": [1e-4, 1e-2]}
    seq = RandomizedSearchCV(est, dist, n_iter=3, cv=2, random_state=0).fit(X, y)
    with joblib.parallel_backend("dask"):
        par = RandomizedSearchCV(est, dist, n_iter=3, cv=2, random_state=0, n_jobs=-1).fit(X, y)
    np.testing.assert_array_equal(par.cv_results_["mean_test_score"],
                                  seq.cv_results_["mean_test_score"])

    seq = cross_validate(est, X, y, cv=3)
    with joblib.parallel_backend("dask"):
        par = cross_validate(est, X, y, cv=3, n_jobs=-1)
    np.testing.assert_array_equal(par["test_score"], seq["test_score"])


def _kill_a_busy_worker(client, done, record):
    """Kill the process of the first worker seen running a task (the search goes on)."""
    pids = _worker_pids(client)
    while not done.is_set():
        busy = [w for w, tasks in client.processing().items() if tasks]
        if busy:
            _kill(pids[busy[0]])
            record["at"] = time.perf_counter()
            return
        time.sleep(0.01)


@pytest.mark.slow
def test_search_survives_a_killed_worker(client):
    """scatter=[X, y] puts the data on every worker: joblib otherwise scatters large
    arguments to one worker, without lineage, and loses them with it."""
    X, y = _search_data()
    est = clstm.LSTMRegressor(hidden_size=3, max_iter=3, dtype="float64", random_state=0,
                              n_jobs=1)
    grid = {"hidden_size": [2, 3, 4], "alpha": [1e-4, 1e-3]}
    seq = GridSearchCV(est, grid, cv=2).fit(X, y)
    done, record = threading.Event(), {}
    killer = threading.Thread(target=_kill_a_busy_worker, args=(client, done, record))
    killer.start()
    try:
        with joblib.parallel_backend("dask", scatter=[X, y]):
            par = GridSearchCV(est, grid, cv=2, n_jobs=-1).fit(X, y)
        end = time.perf_counter()
    finally:
        done.set()
        killer.join()
        client.wait_for_workers(2, timeout=60)
    assert "at" in record and record["at"] < end            # killed during the search
    np.testing.assert_array_equal(par.cv_results_["mean_test_score"],
                                  seq.cv_results_["mean_test_score"])


# =====================================================================================
# 2. batch prediction of Dask arrays
# =====================================================================================

@pytest.fixture(scope="module")
def fitted():
    X, y = _data()
    reg = clstm.LSTMRegressor(**_SMALL).fit(X, y)
    labels = np.array(["lo", "mid", "hi"])[np.digitize(y, [2.5, 3.5])]
    clf = clstm.LSTMClassifier(**_SMALL).fit(X, labels)
    return X, reg, clf


def test_prediction_is_lazy_one_task_per_block_and_ships_the_model_once(client, fitted):
    X, reg, _ = fitted
    calls = []

    def load(i):
        calls.append(i)
        return X[i * 40:(i + 1) * 40]

    Xd = da.concatenate([da.from_delayed(dask.delayed(load)(i), (40,) + X.shape[1:], X.dtype)
                         for i in range(3)])
    out = reg.predict(Xd)
    assert isinstance(out, da.Array) and calls == []        # nothing computed yet
    assert out.numblocks == (3,) and out.chunks == ((40, 40, 40),)
    graph = dict(out.__dask_graph__())
    model_keys = [k for k in graph if isinstance(k, str) and k.startswith("clstm-LSTMRegressor")]
    assert len(model_keys) == 1                              # the model: one key ...
    tasks = [graph[k] for k in out.__dask_keys__()]
    assert all(model_keys[0] in t.dependencies for t in tasks)  # ... that every task reads
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(out.compute(), reg.predict(X))
    assert sorted(calls) == [0, 1, 2]


def test_predictions_equal_the_in_memory_ones(client, fitted):
    X, reg, clf = fitted
    Xd = da.from_array(X, chunks=(50, -1, -1))                # uneven blocks: 50, 50, 20
    np.testing.assert_array_equal(reg.predict(Xd).compute(), reg.predict(X))
    for method in ("predict", "predict_proba", "predict_log_proba", "decision_function"):
        lazy = getattr(clf, method)(Xd)
        assert isinstance(lazy, da.Array)
        np.testing.assert_array_equal(lazy.compute(), getattr(clf, method)(X))
    proba = clf.predict_proba(Xd)
    assert proba.shape == (X.shape[0], 3) and proba.chunks == ((50, 50, 20), (3,))


def test_prediction_of_univariate_and_per_step_models(client):
    X, y = _data(n=60, T=5, F=1)
    X2 = X[:, :, 0]
    reg = clstm.LSTMRegressor(**_SMALL).fit(X2, y)
    np.testing.assert_array_equal(reg.predict(da.from_array(X2, chunks=(25, -1))).compute(),
                                  reg.predict(X2))
    seq = clstm.LSTMRegressor(**dict(_SMALL, return_sequences=True)).fit(
        X, np.cumsum(X[:, :, 0], 1))
    out = seq.predict(da.from_array(X, chunks=(25, -1, -1)))
    assert out.shape == (60, 5)
    np.testing.assert_array_equal(out.compute(), seq.predict(X))


def test_prediction_refuses_what_it_cannot_do(client, fitted):
    X, reg, _ = fitted
    with pytest.raises(ValueError, match=r"rechunk\(\{1: -1, 2: -1\}\)"):
        reg.predict(da.from_array(X, chunks=(40, 3, -1)))
    with pytest.raises(ValueError, match="lengths is not supported"):
        reg.predict(da.from_array(X, chunks=(40, -1, -1)), lengths=np.full(len(X), 6))
    with pytest.raises(ValueError, match="features per timestep"):
        reg.predict(da.zeros((10, 6, 5), chunks=(5, -1, -1)))


# =====================================================================================
# 3. data-parallel training
# =====================================================================================

def _check_same_fit(est, ref, tol=1e-10):
    assert _max_weight_diff(est, ref) <= tol
    np.testing.assert_allclose(est.loss_curve_, ref.loss_curve_, rtol=tol, atol=0)
    assert est.t_ == ref.t_ and est.n_iter_ == ref.n_iter_
    assert est.n_features_in_ == ref.n_features_in_
    _check_same_stats(est._x_stats, ref._x_stats)


def _check_same_stats(a, b):
    """Statistics from reductions on the blocks: equal up to the order of the sums."""
    if b[0] is None:
        assert a == (None, None)
        return
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("params", [
    {},
    {"shuffle": False},
    {"standardize": False, "solver": "sgd", "clip_norm": 0.5},
    {"num_layers": 2, "cell": "gru", "tbptt_steps": 4},
    {"attention": "additive"},
], ids=["default", "no-shuffle", "sgd-clipped", "gru-stacked-tbptt", "attention"])
def test_fit_equals_the_in_memory_fit(client, params):
    X, y = _data()
    est_params = dict(_SMALL, **params)
    ref = clstm.LSTMRegressor(**est_params).fit(X, y)
    est = clstm.LSTMRegressor(**est_params).fit(da.from_array(X, chunks=(50, -1, -1)), y)
    _check_same_fit(est, ref)
    _check_same_stats(est._y_stats, ref._y_stats)
    assert est.predict(X).shape == (len(X),)


def test_fit_does_not_depend_on_order_weights_as_copies_or_blocks(client):
    """Duplicates and the canonical order come from per-row digests: a permuted X with
    a duplicated row written as weight 2, in other blocks, gives the in-memory fit."""
    X, y = _data()
    sw = np.ones(len(X))
    sw[[5, 11]] = 0.0                                        # left out, exactly
    ref = clstm.LSTMRegressor(**_SMALL).fit(X, y, sample_weight=sw)
    keep = np.flatnonzero(np.arange(len(X)) != 7)            # 7 duplicates 3: weight 2
    w2 = sw[keep].copy()
    w2[keep == 3] = 2.0
    perm = np.random.default_rng(3).permutation(keep.size)
    Xd = da.from_array(X[keep][perm], chunks=(30, -1, -1))
    est = clstm.LSTMRegressor(**_SMALL).fit(Xd, da.from_array(y[keep][perm], chunks=30),
                                            sample_weight=w2[perm])
    _check_same_fit(est, ref)
    sw[:40] = 0.0                                            # a block without weight
    ref = clstm.LSTMRegressor(**_SMALL).fit(X, y, sample_weight=sw)
    est = clstm.LSTMRegressor(**_SMALL).fit(da.from_array(X, chunks=(40, -1, -1)), y,
                                            sample_weight=da.from_array(sw, chunks=40))
    _check_same_fit(est, ref)


def test_classifier_fit_with_class_weights_equals_the_in_memory_fit(client):
    X, y = _data()
    labels = np.array(["lo", "mid", "hi"])[np.digitize(y, [2.5, 3.5])]
    for class_weight in ("balanced", {"lo": 2.0, "mid": 1.0, "hi": 0.5}):
        p = dict(_SMALL, class_weight=class_weight)
        ref = clstm.LSTMClassifier(**p).fit(X, labels)
        est = clstm.LSTMClassifier(**p).fit(da.from_array(X, chunks=(40, -1, -1)), labels)
        _check_same_fit(est, ref)
        np.testing.assert_array_equal(est.classes_, ref.classes_)
    binary = clstm.LSTMClassifier(**_SMALL)
    ref = clstm.LSTMClassifier(**_SMALL).fit(X, y > 3)
    _check_same_fit(binary.fit(da.from_array(X, chunks=(64, -1, -1)), y > 3), ref)


def test_univariate_per_step_and_partial_fit_equal_the_in_memory_fits(client):
    X, y = _data(n=80, T=5, F=1)
    X2 = X[:, :, 0]
    ref = clstm.LSTMRegressor(**_SMALL).fit(X2, y)
    _check_same_fit(clstm.LSTMRegressor(**_SMALL).fit(da.from_array(X2, chunks=(40, -1)), y),
                    ref)
    Y = np.cumsum(X, axis=1)
    p = dict(_SMALL, return_sequences=True, max_iter=2)
    ref = clstm.LSTMRegressor(**p).fit(X, Y)
    _check_same_fit(clstm.LSTMRegressor(**p).fit(da.from_array(X, chunks=(40, -1, -1)), Y),
                    ref)
    ref, est = clstm.LSTMRegressor(**_SMALL), clstm.LSTMRegressor(**_SMALL)
    Xd = da.from_array(X, chunks=(40, -1, -1))
    for _ in range(2):
        ref.partial_fit(X, y)
        est.partial_fit(Xd, y)
    _check_same_fit(est, ref)


def test_float32_fit_equals_the_in_memory_fit_to_rounding(client):
    X, y = _data()
    p = dict(_SMALL, dtype="float32")
    ref = clstm.LSTMRegressor(**p).fit(X, y)
    est = clstm.LSTMRegressor(**p).fit(da.from_array(X, chunks=(50, -1, -1)), y)
    assert _max_weight_diff(est, ref) <= 1e-5
    np.testing.assert_allclose(est.loss_curve_, ref.loss_curve_, rtol=1e-5)


def test_fit_refuses_what_it_cannot_do(client):
    X, y = _data(n=40)
    Xd = da.from_array(X, chunks=(20, -1, -1))
    for params, match in (({"early_stopping": True}, "early_stopping"),
                          ({"dropout": 0.1, "num_layers": 2}, "dropout")):
        est = clstm.LSTMRegressor(**dict(_SMALL, **params))
        with pytest.raises(ValueError, match=match):
            est.fit(Xd, y)
        assert not hasattr(est, "n_iter_")
    with pytest.raises(ValueError, match="lengths"):
        clstm.LSTMRegressor(**_SMALL).fit(Xd, y, lengths=np.full(40, 6))
    seq2seq = clstm.LSTMSeq2SeqRegressor(hidden_size=3, max_iter=1)
    with pytest.raises(ValueError, match="LSTMSeq2SeqRegressor does not train on Dask arrays"):
        seq2seq.fit(Xd, np.stack([y, y], axis=1))
    with pytest.raises(ValueError, match="chunked along axis 1"):
        clstm.LSTMRegressor(**_SMALL).fit(da.from_array(X, chunks=(20, 2, -1)), y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        clstm.LSTMRegressor(**_SMALL).fit(Xd, y[:30])
    bad = X.copy()
    bad[25, 2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clstm.LSTMRegressor(**_SMALL).fit(da.from_array(bad, chunks=(20, -1, -1)), y)


def test_per_step_classifier_partial_fit_and_warm_start_equal_the_in_memory_fits(client):
    X, _ = _data(n=80, T=5)
    Xd = da.from_array(X, chunks=(30, -1, -1))
    steps = np.where(np.cumsum(X[:, :, 0], axis=1) > 0, "up", "down")
    p = dict(_SMALL, return_sequences=True, class_weight="balanced", max_iter=2)
    ref = clstm.LSTMClassifier(**p).fit(X, steps)
    est = clstm.LSTMClassifier(**p).fit(Xd, da.from_array(steps, chunks=(30, -1)))
    _check_same_fit(est, ref)
    np.testing.assert_array_equal(est.predict(Xd).compute(), est.predict(X))
    labels = (X[:, 0, 0] > 0).astype(int)
    ref, est = clstm.LSTMClassifier(**_SMALL), clstm.LSTMClassifier(**_SMALL)
    ref.partial_fit(X[:40], labels[:40], classes=[0, 1, 2])
    est.partial_fit(Xd[:40], labels[:40], classes=[0, 1, 2])
    _check_same_fit(est, ref)
    np.testing.assert_array_equal(est.classes_, [0, 1, 2])
    p = dict(_SMALL, warm_start=True, max_iter=2)
    ref, est = clstm.LSTMRegressor(**p), clstm.LSTMRegressor(**p)
    for _ in range(2):
        ref.fit(X, X[:, -1, 0])
        est.fit(Xd, X[:, -1, 0])
    _check_same_fit(est, ref)


def test_digests_of_blocks_are_the_digests_of_the_whole():
    """What the distributed merge relies on: a row's digest depends on the row and the
    data set's units only, and the merge on the digests and weights only."""
    from clstm._base import _digest_units, _merge_by_digest, _merge_duplicates, _row_digests
    X, y = _data(n=30, T=4, F=2)
    Y = y[:, None]
    lengths = np.full(30, 4)
    units = _digest_units(X, Y)
    whole = _row_digests(X, lengths, Y, units)
    parts = np.concatenate([_row_digests(X[s:s + 7], lengths[s:s + 7], Y[s:s + 7], units)
                            for s in range(0, 30, 7)])
    np.testing.assert_array_equal(parts, whole)
    assert np.unique(whole[:, :16], axis=0).shape[0] == 29        # rows 3 and 7 are equal
    # canonical: any order, any split of a weight into copies, any power-of-two scale
    sw = np.ones(30)
    arr, _, Ym, merged = _merge_duplicates(X, lengths, Y, sw, False, keep_order=False)
    perm = np.random.default_rng(0).permutation(30)
    arr2, _, Ym2, merged2 = _merge_duplicates(X[perm] * 2.0 ** -40, lengths, Y[perm] * 8.0,
                                              sw, False, keep_order=False)
    np.testing.assert_array_equal(arr2, arr * 2.0 ** -40)
    np.testing.assert_array_equal(Ym2, Ym * 8.0)
    np.testing.assert_array_equal(merged2, merged)
    assert merged.max() == 2.0
    first, merged3 = _merge_by_digest(whole, sw, keep_order=True)
    np.testing.assert_array_equal(first, np.delete(np.arange(30), 7))


# =====================================================================================
# 4. faults during a distributed fit
# =====================================================================================

def test_fit_survives_a_worker_killed_mid_fit(client, monkeypatch):
    """A worker process dies in the middle of a step: its blocks are recomputed from
    their lineage on the other worker, the step is retried there, and the fit equals
    the undisturbed one."""
    X, y = _data()
    ref = clstm.LSTMRegressor(**_SMALL).fit(X, y)
    pids_before = set(_worker_pids(client).values())
    original = _dask._DaskTrainingData.loss_and_grad
    steps = []

    def killing(self, model, rows, alpha, tbptt_steps):
        steps.append(1)
        if len(steps) == 5:           # the worker holding the first block dies in step 5
            address = next(iter(self.client.who_has([self._ready[0]]).values()))[0]
            self.client.run(_die_in_the_next_step, workers=[address])
        return original(self, model, rows, alpha, tbptt_steps)

    monkeypatch.setattr(_dask._DaskTrainingData, "loss_and_grad", killing)
    try:
        est = clstm.LSTMRegressor(**_SMALL).fit(da.from_array(X, chunks=(40, -1, -1)), y)
    finally:
        client.wait_for_workers(2, timeout=60)
    assert len(steps) == ref.t_ > 5
    assert set(_worker_pids(client).values()) != pids_before   # one died, was replaced
    _check_same_fit(est, ref)


def test_a_cancelled_step_is_scattered_again_and_retried_once(client, monkeypatch):
    """The scheduler cancels a step's tasks (their scattered model went with a lost
    worker): the model is scattered again, the step retried, and the fit equals the
    undisturbed one; a second cancellation in the same step propagates."""
    from concurrent.futures import CancelledError
    X, y = _data()
    ref = clstm.LSTMRegressor(**_SMALL).fit(X, y)
    original = _dask._DaskTrainingData._block_steps
    calls = []

    def cancelled_once(self, model, rows, tbptt_steps):
        calls.append(self._template)
        if len(calls) == 3:
            raise CancelledError("forgotten")
        return original(self, model, rows, tbptt_steps)

    monkeypatch.setattr(_dask._DaskTrainingData, "_block_steps", cancelled_once)
    est = clstm.LSTMRegressor(**_SMALL).fit(da.from_array(X, chunks=(40, -1, -1)), y)
    assert calls[3] is None                 # the retry scattered the model again
    _check_same_fit(est, ref)

    def always_cancelled(self, model, rows, tbptt_steps):
        raise CancelledError("forgotten")

    monkeypatch.setattr(_dask._DaskTrainingData, "_block_steps", always_cancelled)
    with pytest.raises(CancelledError):
        clstm.LSTMRegressor(**_SMALL).fit(da.from_array(X, chunks=(40, -1, -1)), y)


@pytest.mark.slow
def test_fit_that_dask_gives_up_on_raises_and_keeps_the_last_good_weights():
    """With no retries allowed, a worker dying mid-step fails the fit: the error
    propagates and the warm-started estimator keeps the weights it had."""
    X, y = _data(n=60)
    Xd = da.from_array(X, chunks=(30, -1, -1))
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    with cluster, Client(cluster, set_as_default=False) as c, c.as_current():
        est = clstm.LSTMRegressor(**dict(_SMALL, warm_start=True)).fit(Xd, y)
        before = {k: v.copy() for k, v in est._model.params.items()}
        n_iter, t, curve = est.n_iter_, est.t_, list(est.loss_curve_)
        c.run(_die_in_the_next_step)
        with pytest.raises(distributed.KilledWorker):
            est.fit(Xd, y)
    assert (est.n_iter_, est.t_, est.loss_curve_) == (n_iter, t, curve)
    for k, v in est._model.params.items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.slow
def test_scaling_benchmark_runs_and_checks_the_fit(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = os.path.dirname(os.path.dirname(clstm.__file__))
    out = tmp_path / "dask.json"
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, os.path.join(root, "benchmarks", "bench_dask.py"),
                    "--hidden", "4", "--batch", "16", "--n", "32", "--steps", "3",
                    "--features", "2", "--epochs", "1", "--rounds", "1", "--json", str(out)],
                   check=True, env=env, capture_output=True)
    import json
    doc = json.loads(out.read_text())
    [row] = doc["results"]
    assert row["max_weight_diff_2w_vs_in_process"] < 1e-5
    assert all(row[m]["median_ms_per_step"] > 0 for m in ("in-process", "dask-1w", "dask-2w"))
    assert set(doc["crossover"]["4"]) == {"2w_beats_1w_from_batch",
                                          "2w_beats_in_process_from_batch"}


def test_validation_data_callbacks_and_forecast_after_a_dask_fit(client):
    """The conveniences of the training loop work on a Dask X as in memory: the
    validation scores, the epoch records, and forecast's window length."""
    series = np.random.default_rng(5).standard_normal((90, 2)).cumsum(axis=0)
    X, y = clstm.make_windows(series, lookback=6)
    params = dict(_SMALL, max_iter=3)
    records = []
    est = clstm.LSTMRegressor(**params).fit(
        da.from_array(X[:-20], chunks=(35, -1, -1)), y[:-20], validation_data=(X[-20:], y[-20:]),
        callbacks=lambda record: records.append(record.validation_score))
    ref = clstm.LSTMRegressor(**params).fit(X[:-20], y[:-20], validation_data=(X[-20:], y[-20:]))
    _check_same_fit(est, ref)
    np.testing.assert_allclose(est.validation_scores_, ref.validation_scores_, rtol=1e-10)
    assert records == est.validation_scores_
    assert est.n_timesteps_in_ == ref.n_timesteps_in_ == 6
    np.testing.assert_allclose(est.forecast(series, 4), ref.forecast(series, 4), rtol=1e-9)
