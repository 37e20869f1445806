"""Scale out on Dask: lazy prediction of Dask arrays and data-parallel training.

Imported only when a Dask array reaches an estimator (``import clstm`` never
imports Dask); needs ``pip install "clstm-learn[dask]"``.

Prediction (:func:`predict_blocks`): ``predict`` / ``predict_proba`` /
``predict_log_proba`` / ``decision_function`` of a Dask array chunked along
samples return a lazy Dask array with one task per block. The fitted
estimator is one key of the graph, shared by every task (shipped once per
worker, not once per task). Each task calls the in-memory method on its
block, so the result equals the in-memory one (a sequence's output does not
depend on the other rows of its batch).

Training (:func:`prepare_training_data`): ``fit`` / ``partial_fit`` of a
Dask array chunked along samples run the estimator's own training loop
(``BaseLSTMEstimator._fit``) on a :class:`_DaskTrainingData` whose
sequences stay on the workers:

* the blocks are validated and encoded on the workers; the client gathers
  only what is per sample and small: which rows have a positive weight, the
  digests of each row (``clstm._base._row_digests``, 32 bytes, given the data
  set's per-column powers of two, one more reduction) and its weight.
  From those it takes the single-process fit's decisions itself: the merged
  duplicates and their canonical order (``_merge_by_digest``, the function
  the in-memory fit uses), hence the same mini-batches from the same
  generator;
* the standardisation statistics are reductions on the workers, in the
  three passes of ``clstm._base._location_scale`` (scale by a power of two,
  mean around the first sample, deviation around the mean);
* each mini-batch: the weights are broadcast to the workers once
  (``client.scatter(broadcast=True)``), every block holding rows of the batch
  computes the weighted SUM of their loss and gradient with
  ``SequenceModel.loss_and_grad`` (its weighted mean times its weight), the
  client adds the blocks' sums in block order (fixed, whichever worker
  computed them), divides by the batch's weight, adds the L2 term once and
  the optimizer steps once. The result equals the in-memory gradient up to
  the order of the float additions: the fitted weights agree to 1e-10 in
  float64 (tested; ~1e-15 measured after 3 epochs), float32 to float rounding.

Faults: every stage is a Dask task of the blocks' lineage, so a worker lost in
the middle of a fit costs recomputation, not correctness: its blocks are
recomputed on the remaining workers, the step is retried and the result is
the undisturbed one (the block sums are added in block order). When Dask
gives up (``KilledWorker``, no worker left) the error propagates and the
estimator is left as it was before the call (fit is transactional).

Not supported on Dask arrays (a ``ValueError`` says so): ``lengths``,
``early_stopping=True`` (the validation set would be scored on the workers;
fit in memory), and ``dropout`` / ``recurrent_dropout`` (their masks come
from one generator per network, which the workers cannot share).

Where it pays (``benchmarks/bench_dask.py``, "Dask scaling" in
``benchmarks/RESULTS.md``, 2-core machine): a step costs a scatter of the
weights, one task per block and a gather (24-70 ms there) on top of the
blocks' forward/backward. 2 workers beat 1 (1.31x) and match the in-process
fit (1.02x) from hidden 128 with mini-batches of 1024 (~0.25 s per step in
process); at hidden 32 no Dask configuration beat the in-process fit up to
mini-batches of 1024. So it pays for large models and mini-batches (a step
computing for well over 100 ms), with cores of its own per worker, or for
data that does not fit on one machine; otherwise fit in memory. Chunk X into about one block per worker.
"""

import copy
import threading
import uuid
from concurrent.futures import CancelledError

import numpy as np
from sklearn.base import is_classifier, is_regressor
from sklearn.utils.validation import check_array, check_is_fitted

from clstm._base import (
    _bad_ndim_message,
    _merge_by_digest,
    _power_of_two,
    _refuse_complex,
    _row_digests,
    _standardize,
    _to_dtype,
)
from clstm._model import SequenceModel

__all__ = ["predict_blocks", "prepare_training_data"]


# ----------------------------------------------------------------------
# Dask arrays in
# ----------------------------------------------------------------------
def _dask_array(X, name):
    """X as a dask.array.Array (a TypeError for other Dask collections)."""
    import dask.array as da
    if isinstance(X, da.Array):
        return X
    hint = (" (a Dask DataFrame: X.to_dask_array(lengths=True))"
            if hasattr(X, "to_dask_array") else "")
    raise TypeError(f"{name} is a {type(X).__module__}.{type(X).__name__}; clstm takes Dask "
                    f"arrays of sequences{hint}")


def _check_sample_chunks(X, name):
    """A ValueError unless X (2-D or 3-D) is chunked along samples only, with known sizes."""
    if X.ndim not in (2, 3):
        raise ValueError(_bad_ndim_message("the estimator", X, X.ndim))
    if any(np.isnan(c) for c in X.chunks[0]):
        raise ValueError(f"{name} has blocks of unknown size; call {name} = "
                         f"{name}.compute_chunk_sizes() first")
    split = [axis for axis in range(1, X.ndim) if len(X.chunks[axis]) > 1]
    if split:
        what = {1: "time", 2: "features"}
        axes = ", ".join(f"{a} ({what[a]})" for a in split)
        whole = ", ".join(f"{a}: -1" for a in range(1, X.ndim))
        raise ValueError(
            f"{name} is chunked along axis {axes}: a sequence must lie in one block. Chunk "
            f"along samples only: {name} = {name}.rechunk({{{whole}}}) (this moves data "
            "between workers, so clstm does not do it for you)")


def _along_samples(a, X, name):
    """``a`` (numpy, list or Dask) as a Dask array chunked like X along samples."""
    import dask.array as da
    n = X.shape[0]
    if hasattr(a, "__dask_graph__"):
        a = _dask_array(a, name)
    else:
        _refuse_complex(a, name)
        a = np.asarray(a)
    if a.ndim == 0 or a.shape[0] != n:
        got = "a scalar" if a.ndim == 0 else f"{a.shape[0]} rows"
        raise ValueError(f"Found input variables with inconsistent numbers of samples: X has "
                         f"{n}, {name} has {got}")
    chunks = (X.chunks[0],) + tuple((d,) for d in a.shape[1:])
    if isinstance(a, da.Array):
        return a.rechunk(chunks)
    return da.from_array(a, chunks=chunks)


def _client():
    try:
        from distributed import default_client
        return default_client()
    except ImportError:
        raise ImportError("fitting on a Dask array needs distributed: pip install "
                          "'clstm-learn[dask]'") from None
    except ValueError:
        raise ValueError("fitting on a Dask array runs on a distributed.Client: create one "
                         "first (distributed.Client(LocalCluster()) or Client(address)), or "
                         "fit on X.compute()") from None


# ----------------------------------------------------------------------
# prediction
# ----------------------------------------------------------------------
def predict_blocks(est, method, X, lengths=None):
    """``est.<method>(X)`` of a Dask array X, lazily: a Dask array with one task per block.

    X must be chunked along samples only (3-D ``(n, T, F)`` or 2-D univariate
    ``(n, T)``); the output is chunked like it along samples. The estimator is
    one key of the graph (``dask.delayed``), a dependency of every task.

    Examples
    --------
    >>> import numpy as np, dask.array as da, clstm
    >>> X = np.random.default_rng(0).normal(size=(64, 10, 1))
    >>> reg = clstm.LSTMRegressor(max_iter=2, random_state=0).fit(X, X[:, -1, 0])
    >>> lazy = reg.predict(da.from_array(X, chunks=(16, 10, 1)))
    >>> lazy.numblocks, bool(np.array_equal(lazy.compute(), reg.predict(X)))
    ((4,), True)
    """
    import dask
    import dask.array as da
    check_is_fitted(est)
    X = _dask_array(X, "X")
    if lengths is not None:
        raise ValueError(f"{type(est).__name__}.{method}: lengths is not supported with a Dask "
                         "X (pad and pass equal lengths, or predict X.compute())")
    _check_sample_chunks(X, "X")
    # the output's trailing shape and dtype, and any error about X's layout, now
    probe = getattr(est, method)(np.zeros((1,) + X.shape[1:]))
    tail = probe.shape[1:]
    model = dask.delayed(est, name=f"clstm-{type(est).__name__}-{uuid.uuid4().hex}")
    x_index = "itf"[:X.ndim]
    out_index = "i" + "pqr"[:len(tail)]
    return da.blockwise(_predict_block, out_index, model, None, X, x_index, method, None,
                        tail, None, concatenate=True, new_axes=dict(zip(out_index[1:], tail)),
                        dtype=probe.dtype, meta=np.empty((0,) * len(out_index), probe.dtype),
                        name=f"clstm-{method}-{uuid.uuid4().hex}")


def _predict_block(est, block, method, tail):
    if block.shape[0] == 0:
        return np.empty((0,) + tuple(tail), dtype=getattr(est, method)(
            np.zeros((1,) + block.shape[1:])).dtype)
    return getattr(est, method)(block)


# ----------------------------------------------------------------------
# training: the data on the workers
# ----------------------------------------------------------------------
def prepare_training_data(est, X, y, sample_weight, first, incremental, classes, lengths):
    """The training data of ``est._fit`` for a Dask array X, its sequences on the workers.

    Takes every decision of ``BaseLSTMEstimator._prepare_data`` (validation,
    zero weights dropped, duplicates merged in the canonical order, input
    attributes, classes, standardisation statistics) from per-block results.
    """
    name = type(est).__name__
    if y is None:
        raise ValueError(f"{name} requires y to be passed, but the target y is None")
    if est._model_type is not SequenceModel:
        raise ValueError(f"{name} does not train on Dask arrays (its {est._model_type.__name__} "
                         "has targets the workers do not encode); fit it in memory "
                         "(X.compute(), y.compute()). Its predict takes Dask arrays.")
    if lengths is not None:
        raise ValueError(f"{name}: lengths is not supported with a Dask X (pad the sequences "
                         "to equal lengths, or fit in memory)")
    if est.early_stopping and not incremental:
        raise ValueError(f"{name}: early_stopping=True is not supported with a Dask X (the "
                         "validation score is not computed on the workers); set "
                         "early_stopping=False or fit in memory")
    if est.dropout or est.recurrent_dropout:
        raise ValueError(f"{name}: dropout and recurrent_dropout are not supported with a "
                         "Dask X (their masks come from one generator that the workers "
                         "cannot share); set them to 0 or fit in memory")
    X = _dask_array(X, "X")
    _check_sample_chunks(X, "X")
    client = _client()
    n, T = X.shape[:2]
    F = X.shape[2] if X.ndim == 3 else 1
    if n == 0 or T < 1 or F < 1:
        raise ValueError(f"X has shape {X.shape}: every sequence needs at least one timestep "
                         "and one feature")
    _set_input_attributes(est, X, first)
    # every sequence of a Dask X has all T steps: the window length forecast slides
    if first:
        est.n_timesteps_in_ = T
    elif getattr(est, "n_timesteps_in_", None) != T:
        est.n_timesteps_in_ = None
    Y = _along_samples(y, X, "y")
    SW = None if sample_weight is None else _along_samples(sample_weight, X, "sample_weight")
    # targets' layout (and the regressor's n_outputs_) from a one-sample probe
    est._validate_targets(np.zeros((1,) + Y.shape[1:], dtype=Y.dtype), np.array([T]), T, 1,
                          first)
    return _DaskTrainingData.build(est, client, X, Y, SW, first, incremental, classes)


def _set_input_attributes(est, X, first):
    """n_features_in_, input_size_ and the input layout, as _validate_X sets or checks them."""
    name = type(est).__name__
    F = X.shape[2] if X.ndim == 3 else 1
    if first:
        est._input_layout = "3d" if X.ndim == 3 else "2d"
        est.n_features_in_ = F if X.ndim == 3 else X.shape[1]
        est.input_size_ = F
        est.__dict__.pop("feature_names_in_", None)
    elif X.ndim == 3 and F != est.input_size_:
        raise ValueError(f"X has {F} features per timestep, but {name} is expecting "
                         f"{est.input_size_} features per timestep as input")
    elif X.ndim == 2 and est._input_layout == "2d" and X.shape[1] != est.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features, but {name} is expecting "
                         f"{est.n_features_in_} features as input")
    elif X.ndim == 2 and est.input_size_ != 1:
        raise ValueError(f"X has {X.shape[1]} features, but {name} is expecting "
                         f"{est.input_size_} features per timestep as input (2-D X means "
                         "univariate sequences (n_samples, n_timesteps))")


class _OnWorkers:
    """Stands for the sequences, which stay on the workers: only their shape is here."""

    def __init__(self, shape):
        self.shape = shape

    def __getitem__(self, key):
        raise TypeError("the sequences of a Dask fit stay on the workers; this step of the "
                        "training loop is not supported with a Dask X")


class _DaskTrainingData:
    """clstm._base._TrainingData for sequences on Dask workers.

    The client holds one entry per (merged) sample: its block and position
    there, length and weight. Each block's future holds its samples in model
    units (``X``, ``lengths``, ``Y``, loss weights ``W``), in the merged order.
    """

    @classmethod
    def build(cls, est, client, X, Y, SW, first, incremental, classes):
        import dask
        T = X.shape[1]
        per_step = bool(est.return_sequences)
        est_key = dask.delayed(_shipped(est), name=f"clstm-est-{uuid.uuid4().hex}")
        blocks = [dask.delayed(_validate_block)(est_key, x, yb, swb, T)
                  for x, yb, swb in zip(X.to_delayed().ravel(), Y.to_delayed().ravel(),
                                        [None] * X.numblocks[0] if SW is None
                                        else SW.to_delayed().ravel())]
        validated = client.compute(blocks)
        summaries = client.gather(client.map(_block_summary, validated,
                                             classifier=is_classifier(est), pure=False))
        if not any(s["n_keep"] for s in summaries):
            raise ValueError("Sample weights must contain at least one non-zero number "
                             "(all weights are zero)")
        labels = [s["labels"] for s in summaries if s["labels"] is not None and s["n_keep"]]
        if labels:       # classes_ (and the label checks) by the estimator's own code
            union = np.unique(np.concatenate(labels))
            shaped = union[:, None] if per_step else union
            est._encode_targets(shaped, np.ones(union.size, dtype=np.int64), first,
                                incremental, classes)
        sw_unit = float(_power_of_two(max(s["sw_max"] for s in summaries)))
        # the estimator goes into each task, not scatter: scattered data has no
        # lineage, and the blocks must be recomputable when a worker is lost
        shipped = _shipped(est)
        encoded = [client.submit(_encode_block, shipped, v, sw_unit, pure=False)
                   for v in validated]
        del validated
        extents = [e for e in client.gather(client.map(_block_extent, encoded, pure=False))
                   if e is not None]
        units = tuple(_power_of_two(np.max([e[i] for e in extents], axis=0)) for i in (0, 1))
        parts = client.gather(client.map(_block_digests, encoded, units=units, pure=False))
        # the in-memory merge, on the digests of every kept row in block order
        counts = np.array([p[0].shape[0] for p in parts])
        digests = np.concatenate([p[0] for p in parts])
        sw_kept = np.concatenate([p[1] for p in parts])
        first_rows, sw = _merge_by_digest(digests, sw_kept, keep_order=not est.shuffle)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        block = np.searchsorted(offsets, first_rows, side="right") - 1
        local = first_rows - offsets[block]
        position = np.empty(sw.size, dtype=np.int64)
        selected = []          # per block: its kept rows, in the merged order
        for b in range(len(encoded)):
            mine = np.flatnonzero(block == b)
            position[mine] = np.arange(mine.size)
            selected.append(local[mine])
        data = cls(client, est, encoded, selected, block, position, sw, sw_unit, X.shape,
                   per_step)
        data._class_factors(est, incremental)
        if first:
            data._statistics(est)
        return data

    def __init__(self, client, est, encoded, selected, block, position, sw, sw_unit, shape,
                 per_step):
        n = sw.size
        T = shape[1]
        F = shape[2] if len(shape) == 3 else 1
        self.client, self._encoded, self._selected = client, encoded, selected
        self._block, self._position, self._per_step = block, position, per_step
        self.X = _OnWorkers((n, T, F))
        self.lengths = np.full(n, T, dtype=np.int64)
        self.steps = None
        self.Y = self.W_loss = self.W_score = None
        self.sw, self.sw_unit = sw, sw_unit
        self.train_idx = self.val_idx = None
        self._ready = None
        self._factors = 1.0
        self._template = None

    def _live(self):
        """(block, future, kept rows) of the blocks that hold merged samples."""
        return [(b, f, s) for b, (f, s) in enumerate(zip(self._encoded, self._selected))
                if s.size]

    def _weights_of(self, b):
        return self.sw[self._block == b]

    def _class_factors(self, est, incremental):
        """The classifier's class weights, per class, from per-class totals on the workers."""
        if not is_classifier(est) or est.class_weight is None:
            return
        K = est.classes_.size
        totals = self.client.gather([
            self.client.submit(_class_totals, f, s, self._weights_of(b), K, self._per_step,
                               pure=False) for b, f, s in self._live()])
        codes = np.arange(K)
        summary = codes[:, None].astype(np.float64) if K == 2 else codes
        self._factors = np.asarray(
            est._class_weight_factors(summary, np.sum(totals, axis=0), incremental))

    def _statistics(self, est):
        """_x_stats (and the regressor's _y_stats) as _location_scale computes them, in
        three reductions over the blocks (sums added in block order)."""
        if not est.standardize:
            est._x_stats = (None, None)
            if is_regressor(est):
                est._y_stats = (None, None)
            return
        targets = is_regressor(est)
        live = self._live()
        submit = self.client.submit

        def over_blocks(fn, *args):
            return self.client.gather([submit(fn, f, s, self._weights_of(b), targets,
                                              self._per_step, *args, pure=False)
                                       for b, f, s in live])

        first = over_blocks(_stats_extent)
        units = [_power_of_two(np.max([r[i][0] for r in first], axis=0))
                 for i in range(1 + targets)]
        # the first row (of the first merged sample) is where the means are taken around
        ref_block = self._block[0]
        head = next(r for (b, _, _), r in zip(live, first) if b == ref_block)
        refs = [head[i][1] / units[i] for i in range(1 + targets)]
        second = over_blocks(_stats_offsets, units, refs)
        means = []
        for i in range(1 + targets):
            total = sum(r[i][1] for r in second)
            offset = second[0][i][0].copy()
            for r in second[1:]:
                offset += r[i][0]
            means.append(refs[i] + offset / total)
        third = over_blocks(_stats_squares, units, means)
        stats = []
        for i in range(1 + targets):
            total = sum(r[i][1] for r in second)
            squares = third[0][i].copy()
            for r in third[1:]:
                squares += r[i]
            std_s = np.sqrt(squares / total)
            mean, scale = means[i] * units[i], std_s * units[i]
            varies = (std_s > 1e-12 * np.abs(means[i])) & (scale >= np.finfo(np.float64).tiny)
            stats.append((mean, np.where(varies, scale, 1.0)))
        est._x_stats = stats[0]
        if targets:
            est._y_stats = stats[1]

    # -- the training loop's two entry points (see clstm._base._TrainingData) -----
    def to_model_units(self, est, dtype):
        """Each block's samples standardised and cast on its worker; the null loss."""
        shipped = _shipped(est)      # in each task: see build
        live = self._live()
        self._ready = {b: self.client.submit(_ready_block, shipped, f, s, self._weights_of(b),
                                             self._factors, dtype, self._per_step, pure=False)
                       for b, f, s in live}
        self._encoded = None          # the ready blocks keep their lineage
        parts = self.client.gather([self.client.submit(_null_part, shipped, self._ready[b],
                                                       pure=False) for b, _, _ in live])
        weight = sum(w for _, w in parts if w > 0)
        return float(sum(loss * w for loss, w in parts if w > 0) / weight) if weight else 0.0

    def _block_steps(self, model, rows, tbptt_steps):
        """Each block's (loss, grads, weight) of the mini-batch ``rows``, in block order."""
        client = self.client
        if self._template is None or self._template[0] is not model:
            self._template = (model, client.scatter(model, broadcast=True, hash=False))
        # (a list: scatter would take a dict's keys as Dask keys)
        [params] = client.scatter([{k: v.copy() for k, v in model.params.items()}],
                                  broadcast=True, hash=False)
        blocks = self._block[rows]
        futures = [client.submit(_block_step, self._ready[b], self._template[1], params,
                                 self._position[rows[blocks == b]], tbptt_steps, pure=False)
                   for b in np.unique(blocks)]
        return client.gather(futures)

    def loss_and_grad(self, model, rows, alpha, tbptt_steps):
        """(loss, grads, weight) of the mini-batch ``rows``, as
        ``_TrainingData.loss_and_grad``: block sums added in block order."""
        try:
            parts = self._block_steps(model, rows, tbptt_steps)
        except CancelledError:
            # A worker lost while the step ran can take the scattered model and
            # weights with it (they have no lineage to recompute from), and the
            # scheduler then cancels the step's tasks: scatter again and retry
            # once; the blocks themselves are recomputed from their lineage.
            self._template = None
            parts = self._block_steps(model, rows, tbptt_steps)
        parts = [p for p in parts if p[2] > 0]
        if not parts:
            return None
        weight = sum(p[2] for p in parts)
        loss = sum(p[0] for p in parts) / weight
        grads = {}
        for name, value in model.params.items():
            total = parts[0][1][name].copy()
            for p in parts[1:]:
                total += p[1][name]
            grads[name] = (total / weight).astype(value.dtype)
        # the L2 term once, as SequenceModel.loss_and_grad adds it
        if alpha:
            loss = model.add_penalty(loss, grads, alpha)
        return loss, grads, weight


def _shipped(est):
    """A shallow copy of the estimator to send to the workers (without its fitted model:
    the workers only validate, encode and scale)."""
    est = copy.copy(est)
    for attr in ("_model", "lstm_", "_optimizer", "_rng"):
        est.__dict__.pop(attr, None)
    return est


# ----------------------------------------------------------------------
# training: tasks on the workers (each on one block)
# ----------------------------------------------------------------------
def _validate_block(est, Xb, yb, swb, T):
    """A block checked as the in-memory fit checks X, y and sample_weight:
    sequences float64 (n_b, T, F), validated targets, weights."""
    est = copy.copy(est)       # the worker's copy is shared by its tasks
    n_b = Xb.shape[0]
    if n_b == 0:
        return {"X": np.zeros((0, T, Xb.shape[2] if Xb.ndim == 3 else 1)), "targets": None,
                "sw": np.zeros(0)}
    _refuse_complex(Xb, "X")
    arr = check_array(Xb, allow_nd=True, ensure_2d=False, dtype=np.float64,
                      ensure_all_finite=True, input_name="X")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    lengths = np.full(n_b, T, dtype=np.int64)
    _refuse_complex(yb, "y")
    targets = est._validate_targets(yb, lengths, T, n_b, False)
    _refuse_complex(swb, "sample_weight")
    if swb is not None and np.ndim(swb) == 1 and len(swb) == n_b and not np.any(swb):
        sw = np.zeros(n_b)    # a block may carry no weight (the client checks the whole)
    else:
        sw = est._check_sample_weight(swb, n_b)
    return {"X": arr, "targets": targets, "sw": sw}


def _block_summary(block, classifier):
    """Kept rows (weight > 0), the largest weight and (classifier) the kept labels."""
    keep = block["sw"] > 0
    labels = None
    if classifier and keep.any():
        labels = np.unique(block["targets"][keep].ravel())
    return {"n_keep": int(keep.sum()), "sw_max": float(block["sw"].max()) if keep.any() else 0.0,
            "labels": labels}


def _encode_block(est, block, sw_unit):
    """The kept rows (weight > 0), their targets encoded, weights / sw_unit, digests."""
    est = copy.copy(est)
    keep = np.flatnonzero(block["sw"] > 0)
    arr = block["X"][keep]
    T = arr.shape[1]
    lengths = np.full(keep.size, T, dtype=np.int64)
    if keep.size:
        Y = est._encode_targets(block["targets"][keep], lengths, False, False, None)
    else:
        Y = None
    return {"X": arr, "Y": Y, "sw": block["sw"][keep] / sw_unit}


def _block_extent(block):
    """The largest magnitude per column of the kept rows (flattened), X and Y (for
    clstm._base._digest_units)."""
    if block["Y"] is None:
        return None
    n = block["X"].shape[0]
    return tuple(np.max(np.abs(np.asarray(A, dtype=np.float64).reshape(n, -1)), axis=0)
                 for A in (block["X"], block["Y"]))


def _block_digests(block, units):
    """Digests and weights of the kept rows."""
    X = block["X"]
    if block["Y"] is None:
        return np.zeros((0, 32), np.uint8), block["sw"]
    lengths = np.full(X.shape[0], X.shape[1], dtype=np.int64)
    return _row_digests(X, lengths, block["Y"], units), block["sw"]


def _class_totals(block, rows, sw, K, per_step):
    """Per-class sums of the score weights of the selected rows (class_weight='balanced')."""
    Y = block["Y"][rows]
    codes = Y[..., 0].astype(np.int64) if Y.dtype.kind == "f" else Y
    W = sw[:, None] * np.ones(codes.shape[1]) if per_step else sw
    return np.bincount(codes.ravel(), weights=W.ravel(), minlength=K)


def _stats_rows(block, rows, sw, targets, per_step):
    """(V, w) of _location_scale for X (and the targets): every step of every row."""
    X = block["X"][rows]
    T, F = X.shape[1], X.shape[2]
    out = [(X.reshape(-1, F), np.repeat(sw, T))]
    if targets:
        Y = block["Y"][rows]
        K = Y.shape[-1]
        w = (sw[:, None] * np.ones(T)).reshape(-1) if per_step else sw
        out.append((Y.reshape(-1, K), w))
    return out


def _stats_extent(block, rows, sw, targets, per_step):
    """Per quantity: the largest magnitude of each column, and the block's first row."""
    pairs = _stats_rows(block, rows, sw, targets, per_step)
    return [(np.max(np.abs(V), axis=0), V[0]) for V, _ in pairs]


def _stats_offsets(block, rows, sw, targets, per_step, units, refs):
    return [((w[:, None] * (V / unit - ref)).sum(axis=0), w.sum())
            for (V, w), unit, ref in zip(_stats_rows(block, rows, sw, targets, per_step),
                                         units, refs)]


def _stats_squares(block, rows, sw, targets, per_step, units, means):
    return [(w[:, None] * np.square(V / unit - mean)).sum(axis=0)
            for (V, w), unit, mean in zip(_stats_rows(block, rows, sw, targets, per_step),
                                          units, means)]


def _ready_block(est, block, rows, sw, factors, dtype, per_step):
    """The selected rows in model units: X standardised and cast, targets, loss weights."""
    X = block["X"][rows]
    n_b, T = X.shape[:2]
    lengths = np.full(n_b, T, dtype=np.int64)
    Y = block["Y"][rows]
    W = sw[:, None] * np.ones((n_b, T), dtype=bool) if per_step else sw.copy()
    if np.ndim(factors):
        codes = Y[..., 0].astype(np.int64) if Y.dtype.kind == "f" else Y
        W = W * factors[codes]
    return {"X": _to_dtype(_standardize(X, lengths, est._x_stats), dtype, "X",
                           est._x_stats[0] is not None),
            "lengths": lengths, "Y": est._targets_in_model_units(Y, dtype), "W": W}


def _null_part(est, ready):
    """(null loss, weight) of one block: the weighted-mean null loss and its weight."""
    weight = float(np.sum(ready["W"]))
    return (est._null_loss(ready["Y"], ready["W"]) if weight > 0 else 0.0), weight


_local = threading.local()


def _thread_model(template):
    """This thread's private copy of the scattered model (tasks may run concurrently)."""
    cached = getattr(_local, "model", None)
    if cached is None or cached[0] is not template:
        cached = _local.model = (template, copy.deepcopy(template))
    return cached[1]


def _block_step(ready, template, params, rows, tbptt_steps):
    """(weighted loss sum, weighted gradient sums (float64), weight) of a block's rows."""
    W = ready["W"][rows]
    weight = float(np.sum(W, dtype=np.float64))
    if weight == 0.0:
        return 0.0, None, 0.0
    model = _thread_model(template)
    model.restore(params)
    model.train()
    try:
        loss, grads = model.loss_and_grad(ready["X"][rows], ready["lengths"][rows],
                                          ready["Y"][rows], W, alpha=0.0,
                                          tbptt_steps=tbptt_steps)
    finally:
        model.eval()
    return loss * weight, {k: g.astype(np.float64) * weight for k, g in grads.items()}, weight
