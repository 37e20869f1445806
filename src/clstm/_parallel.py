"""Threads for one forward/backward: how many, how to split, and BLAS control.

clstm parallelises itself instead of relying on a threaded BLAS: the batch
is split into contiguous sub-batches, and each thread runs every layer,
forward and backward, on its own sub-batch with single-threaded BLAS (no
per-step synchronisation; the model, clstm._lstm, does the splitting).
Nesting a threaded BLAS inside per-step parallel work oversubscribes the
cores badly, so while clstm's threads run, BLAS is held at one thread
(threadpoolctl, reference-counted across concurrent callers and restored
afterwards; where OpenBLAS has a limit per thread, the compiled plans hold
their own threads by it instead: hand_over_blas_limit).

The rule for n_jobs=None: use as many threads as BLAS is currently allowed
(so joblib/loky workers, which lower that limit, are never oversubscribed),
capped by the usable cores and by the batch: each thread gets at least
MIN_ROWS_PER_THREAD sequences. Inside a task of a Dask worker, also by the
task's share of the cores (cores // the worker's nthreads): a worker runs
nthreads tasks at once, and the BLAS limit does not say so when the worker
is a thread of the same process (``LocalCluster(processes=False)``; worker
processes that a nanny starts get ``OPENBLAS_NUM_THREADS=1`` anyway).

Calls that keep activations for a backward (training) split the batch into
parts fixed by its shape alone (`fixed_part_count`), never by the thread
count, and the threads take the parts in turn (`run_parts`): each part sums
its parameter gradients over its own rows and the parts' sums are added in
part order, so the gradients are bit-identical for every n_jobs. Inference
calls split by the thread count, as their per-row results do not depend on
the split."""

import ctypes
import importlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

__all__ = ["resolve_n_threads", "split_rows", "run_tasks", "run_parts", "fixed_part_count",
           "blas_single_threaded"]

# Below this many rows per thread the recurrent product gets too thin for a
# thread to pay for itself (a chosen threshold, with the work thresholds of
# clstm._rnn the rule that keeps small calls on one thread).
MIN_ROWS_PER_THREAD = 8

# Rows of a fixed training part (see fixed_part_count): at 32 rows a step's
# products stay wide enough that one thread running the parts one after the
# other loses little against one product over the whole batch.
ROWS_PER_FIXED_PART = 32


def available_cores():
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    global _cores
    if _cores is None:
        try:
            _cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - macOS, Windows
            _cores = os.cpu_count() or 1
    return _cores


_cores = None


_controller = None
_controller_lock = threading.Lock()


def _blas_controller():
    """threadpoolctl controller for the BLAS that clstm's kernels call.

    That is SciPy's (the kernels link scipy.linalg.cython_blas); where NumPy
    bundles its own copy, that one is left alone: limiting it would only add
    cost to every call. Created once, lazily.
    """
    global _controller
    with _controller_lock:
        if _controller is None:
            # threadpoolctl finds only loaded libraries: load SciPy's BLAS first
            importlib.import_module("scipy.linalg.cython_blas")
            from threadpoolctl import ThreadpoolController
            blas = ThreadpoolController().select(user_api="blas")
            # scipy wheels vendor their BLAS under site-packages/scipy.libs
            scipy_libs = [lib for lib in blas.lib_controllers
                          if "scipy.libs" in str(lib.filepath).replace("\\", "/").split("/")]
            if scipy_libs:
                blas.lib_controllers = scipy_libs
            _controller = blas
        return _controller


# OpenBLAS core types whose SGEMM has a kernel for small products (at most
# 10^6 multiply-adds, no packing), faster than its packing GEMM at the
# weight gradients' shapes: measured with SciPy's OpenBLAS 0.3.30 (SkylakeX
# kernels on a Zen 4). Under the Haswell kernels the same blocks were
# 1.02-1.06x slower than one call, so other core types get one call.
SMALL_GEMM_CORETYPES = {"skylakex": 1_000_000}


def blas_small_gemm_volume():
    """The multiply-adds per call up to which the BLAS that clstm's kernels
    call has its small-product kernel (0 where it has none or is not known):
    _scan sums float32 weight gradients in row blocks of that size."""
    try:
        libs = _blas_controller().lib_controllers
    except Exception:          # no threadpoolctl view of the BLAS: one call
        return 0
    volumes = [SMALL_GEMM_CORETYPES.get(str(getattr(lib, "architecture", "")).lower(), 0)
               for lib in libs if getattr(lib, "internal_api", None) == "openblas"]
    return volumes[0] if len(volumes) == 1 else 0


_local_setters = None


def _thread_local_limiters():
    """`openblas_set_num_threads_local` of the BLAS the kernels call, where
    it has one (OpenBLAS >= 0.3.27; [] otherwise).

    The process-wide limit (threadpoolctl's setter) does not reach BLAS calls
    from a thread other than the one that set it: measured with SciPy's
    OpenBLAS 0.3.30, a limit entered in a worker thread left that thread's
    SGEMM threaded, and the threaded SGEMM sums the weight gradients in
    another order, so the bits depended on the calling thread (and, with
    concurrent callers, on the call). The thread-local setter limits the
    calling thread itself, whichever it is.
    """
    global _local_setters
    if _local_setters is None:
        found = []
        for lib in _blas_controller().lib_controllers:
            dynlib = getattr(lib, "dynlib", None)
            for name in ("openblas_set_num_threads_local",
                         "scipy_openblas_set_num_threads_local64_",
                         "scipy_openblas_set_num_threads_local"):
                setter = getattr(dynlib, name, None) if dynlib is not None else None
                if setter is not None:
                    setter.restype, setter.argtypes = ctypes.c_int, [ctypes.c_int]
                    found.append(setter)
                    break
        _local_setters = found
    return _local_setters


def _one_blas_thread_here():
    """Hold this thread's BLAS calls at one thread (the clstm pool's threads
    run only clstm's kernels); returns what to restore."""
    return [(setter, setter(1)) for setter in _thread_local_limiters()]


def hand_over_blas_limit(module):
    """Give a compiled module (its ``set_blas_thread_limiter``) the BLAS's
    limit for the calling thread, where the BLAS the kernels call is one
    OpenBLAS on POSIX threads that has one (`_thread_local_limiters`).
    True if handed over: the module's plans then hold the threads of their
    calls at one BLAS thread themselves (_threads.h, clstm_blas_hold), so
    their callers need not enter `blas_single_threaded` (~3 us a call) for
    them. Under OpenMP or another BLAS, False: the callers enter it."""
    try:
        libs = _blas_controller().lib_controllers
        setters = _thread_local_limiters()
    except Exception:          # no threadpoolctl view of the BLAS
        return False
    if not (len(libs) == 1 and len(setters) == 1
            and getattr(libs[0], "internal_api", None) == "openblas"
            and getattr(libs[0], "threading_layer", None) == "pthreads"):
        return False
    module.set_blas_thread_limiter(ctypes.cast(setters[0], ctypes.c_void_p).value)
    return True


def _blas_thread_limit():
    saved = blas_single_threaded.outer_limit
    if saved is not None:      # our own limit of 1 is in force: report the user's
        return saved
    counts = [lib.get_num_threads() for lib in _blas_controller().lib_controllers]
    return max(1, min(counts)) if counts else available_cores()


def _dask_task_share():
    """Cores per task slot of the Dask worker running the calling task, or None
    outside a Dask task. Never imports distributed (only looks it up)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        worker = distributed.get_worker()
    except (ValueError, AttributeError):
        return None
    nthreads = getattr(getattr(worker, "state", None), "nthreads", None)
    if not nthreads:
        return None
    return max(1, available_cores() // int(nthreads))


def resolve_n_threads(n_jobs, batch_size=None):
    """Threads to use for a batch of `batch_size` sequences.

    n_jobs: None (automatic, see module docstring), a positive int, or a
    negative int counting from the number of cores as joblib does (-1 = all).
    """
    cores = available_cores()
    if n_jobs is None:
        n = min(cores, _blas_thread_limit())
        share = _dask_task_share()
        if share is not None:
            n = min(n, share)
    elif isinstance(n_jobs, (bool, np.bool_)) or not isinstance(n_jobs, (int, np.integer)):
        raise TypeError(f"n_jobs must be None or a non-zero int, got {n_jobs!r}")
    elif n_jobs == 0:
        raise ValueError("n_jobs must be None or a non-zero int, got 0")
    elif n_jobs < 0:
        n = max(1, cores + 1 + int(n_jobs))
    else:
        n = int(n_jobs)
    if batch_size is not None and n_jobs is None:
        n = min(n, max(1, batch_size // MIN_ROWS_PER_THREAD))
    return max(1, n)


def split_rows(n_rows, n_parts, weights=None):
    """Boundaries of `n_parts` contiguous ranges covering range(n_rows).

    With `weights` (one per row, e.g. sequence lengths), the ranges carry
    about equal total weight instead of equal row counts.
    """
    n_parts = max(1, min(n_parts, n_rows))
    if n_parts == 1:
        return [(0, n_rows)]
    if weights is None:
        return [(n_rows * k // n_parts, n_rows * (k + 1) // n_parts) for k in range(n_parts)]
    cum = np.concatenate([[0], np.cumsum(weights, dtype=np.float64)])
    targets = cum[-1] * np.arange(1, n_parts) / n_parts
    cuts = np.searchsorted(cum, targets, side="left")
    bounds = [0] + [int(c) for c in cuts] + [n_rows]
    for k in range(1, len(bounds)):            # keep ranges non-empty and ordered
        bounds[k] = min(max(bounds[k], bounds[k - 1] + 1), n_rows - (len(bounds) - 1 - k))
    return [(bounds[k], bounds[k + 1]) for k in range(n_parts)]


def fixed_part_count(n_rows, max_parts):
    """Parts of a training batch of `n_rows`: a function of the shape only.

    About ROWS_PER_FIXED_PART rows each, but two halves from that many rows
    (at batch 32, the split two threads used before the parts were fixed, so
    they keep their speed-up there), and at most `max_parts` (the parts that
    carry enough work to pay for a thread, from the caller's work estimate).
    """
    parts = max(n_rows // ROWS_PER_FIXED_PART, min(2, 2 * n_rows // ROWS_PER_FIXED_PART))
    return int(max(1, min(parts, max_parts)))


def run_parts(n_threads, tasks):
    """Run the zero-argument callables `tasks` (one per part) on at most
    `n_threads` threads, each taking a contiguous run of parts in order."""
    groups = split_rows(len(tasks), n_threads)
    run_tasks([partial(_run_in_order, tasks[a:b]) for a, b in groups])


def _run_in_order(tasks):
    for task in tasks:
        task()


_pool = None
_pool_size = 0
_pool_lock = threading.Lock()


def _get_pool(n_workers):
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < n_workers:
            old = _pool
            _pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="clstm",
                                       initializer=_one_blas_thread_here)
            _pool_size = n_workers
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def run_tasks(tasks):
    """Run zero-argument callables concurrently; return when all are done,
    re-raising the error of the first task (in list order) that failed.

    This thread and len(tasks) - 1 pool threads claim the tasks in order, one
    at a time (as the compiled forward's threads, _threads.h): a pool thread
    that is not scheduled promptly leaves its task to the threads that run,
    and finds nothing left when it starts, instead of holding the call up.
    """
    if len(tasks) == 1:
        tasks[0]()
        return
    claims = _Claims(tasks)
    pool = _get_pool(len(tasks) - 1)
    for _ in range(len(tasks) - 1):
        pool.submit(claims.work)
    claims.work()
    claims.wait()
    if claims.errors:
        raise claims.errors[min(claims.errors)]


class _Claims:
    """Tasks handed out one at a time to whichever thread asks first."""

    def __init__(self, tasks):
        self.tasks = tasks
        self.next = 0
        self.done = 0
        self.errors = {}
        self.cond = threading.Condition()

    def work(self):
        while True:
            with self.cond:
                k = self.next
                if k >= len(self.tasks):
                    return
                self.next += 1
            try:
                self.tasks[k]()
            except BaseException as exc:  # the others still run: they use our buffers
                self.errors[k] = exc
            with self.cond:
                self.done += 1
                if self.done == len(self.tasks):
                    self.cond.notify_all()

    def wait(self):
        with self.cond:
            while self.done < len(self.tasks):
                self.cond.wait()


class _BlasSingleThreaded:
    """Context manager: BLAS at one thread while any clstm call is inside.

    Reference-counted so that concurrent callers (e.g. several threads calling
    predict) neither fight over the limit nor restore it too early. Talks to
    threadpoolctl's per-library controllers directly: a full
    threadpool_limits() round trip costs ~40 us, too much for small models.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = []
        self.outer_limit = None   # BLAS thread limit in force before ours
        self._here = threading.local()    # this thread's own limit (_thread_local_limiters)

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                libs = _blas_controller().lib_controllers
                counts = [lib.get_num_threads() for lib in libs]
                self.outer_limit = max(1, min(counts)) if counts else available_cores()
                self._saved = [(lib, n) for lib, n in zip(libs, counts) if n != 1]
                for lib, _ in self._saved:
                    lib.set_num_threads(1)
            self._depth += 1
        here = self._here
        depth = getattr(here, "depth", 0)
        if depth == 0:
            here.saved = _one_blas_thread_here()
        here.depth = depth + 1
        return self

    def __exit__(self, *exc):
        here = self._here
        here.depth -= 1
        if here.depth == 0:
            for setter, n in here.saved:
                setter(n)
            here.saved = []
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for lib, n in self._saved:
                    lib.set_num_threads(n)
                self._saved = []
                self.outer_limit = None
        return False


blas_single_threaded = _BlasSingleThreaded()
