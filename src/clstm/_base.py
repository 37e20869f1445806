"""The training loop shared by LSTMRegressor and LSTMClassifier.

Shaped like scikit-learn's MLP (``sklearn/neural_network/_multilayer_perceptron.py``):
``__init__`` only assigns; ``fit`` validates, seeds from
``check_random_state(self.random_state)``, trains, and sets the fitted
attributes. Everything specific to regression or classification (targets,
loss, output transform, score) lives in the subclasses.

Input layouts (``X``):

* 3-D array ``(n_samples, n_timesteps, n_features)``;
* 2-D array ``(n_samples, n_timesteps)``: univariate sequences. As in
  scikit-learn, ``n_features_in_`` is then the number of columns, and later
  2-D input must have the same number of columns (pass 3-D ``(n, T, 1)`` or a
  list to use other lengths);
* a list of 2-D ``(T_i, n_features)`` (or 1-D ``(T_i,)``, univariate) arrays
  of different lengths: ragged, handled exactly through the network's
  ``lengths`` (padding never changes a result).

Training is transactional: a fit or partial_fit that raises leaves the
estimator exactly as it was, with two documented exceptions that keep a
consistent, usable model: divergence (a NaN/inf loss keeps the weights of
the last completed epoch and raises ``FloatingPointError`` naming the epoch)
and ``KeyboardInterrupt`` (training stops, the weights of the last completed
epoch are kept, and a warning is issued, as scikit-learn's MLP does).
"""

import copy
import numbers
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight, check_array, check_is_fitted, validate_data

from clstm._model import SequenceModel
from clstm._optimizers import make_optimizer
from clstm._progress import EpochProgress
from clstm._validation import resolve_dtype

__all__ = ["BaseLSTMEstimator"]

# rows per forward pass in predict (bounds the activation memory)
_PREDICT_BATCH = 1024


class _Transaction:
    committed = False


def _is_int(value):
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value):
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(
        value, (bool, np.bool_))


class BaseLSTMEstimator(BaseEstimator):
    """Base class; see LSTMRegressor / LSTMClassifier for the parameters."""

    _loss = None          # set by subclasses

    def __init__(self, hidden_size=50, num_layers=1, bidirectional=False, dropout=0.0,
                 recurrent_dropout=0.0, return_sequences=False, dtype="float32",
                 solver="adam", learning_rate_init=1e-3, batch_size=32, max_iter=200,
                 shuffle=True, alpha=1e-4, clip_norm=5.0, momentum=0.9,
                 nesterovs_momentum=True, beta_1=0.9, beta_2=0.999, rho=0.9, epsilon=1e-8,
                 tol=1e-4, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, tbptt_steps=None, standardize=True,
                 random_state=None, n_jobs=None, verbose=0, warm_start=False):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.return_sequences = return_sequences
        self.dtype = dtype
        self.solver = solver
        self.learning_rate_init = learning_rate_init
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.alpha = alpha
        self.clip_norm = clip_norm
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.rho = rho
        self.epsilon = epsilon
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tbptt_steps = tbptt_steps
        self.standardize = standardize
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.warm_start = warm_start

    # ------------------------------------------------------------------
    # tags
    # ------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = True
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        tags.target_tags.required = True
        tags.non_deterministic = False
        return tags

    # ------------------------------------------------------------------
    # hyperparameters
    # ------------------------------------------------------------------
    def _validate_hyperparameters(self):
        name = type(self).__name__

        def bad(param, expected):
            value = getattr(self, param)
            return ValueError(f"{name}: parameter {param!r} must be {expected}, got {value!r}")

        for p in ("hidden_size", "num_layers", "max_iter", "n_iter_no_change"):
            if not _is_int(getattr(self, p)) or getattr(self, p) < 1:
                raise bad(p, "an int >= 1")
        if self.batch_size != "auto" and (not _is_int(self.batch_size) or self.batch_size < 1):
            raise bad("batch_size", "an int >= 1 or 'auto'")
        if self.tbptt_steps is not None and (not _is_int(self.tbptt_steps) or self.tbptt_steps < 1):
            raise bad("tbptt_steps", "None or an int >= 1")
        if self.tbptt_steps is not None and self.bidirectional:
            raise ValueError(f"{name}: tbptt_steps needs a unidirectional network (the reverse "
                             "direction of bidirectional=True reads the whole sequence); "
                             "set tbptt_steps=None or bidirectional=False")
        for p in ("bidirectional", "return_sequences", "shuffle", "nesterovs_momentum",
                  "early_stopping", "standardize", "warm_start"):
            if not isinstance(getattr(self, p), (bool, np.bool_)):
                raise bad(p, "a bool")
        for p in ("dropout", "recurrent_dropout"):
            v = getattr(self, p)
            if not _is_real(v) or not 0.0 <= v < 1.0:
                raise bad(p, "a float in [0, 1)")
        for p in ("beta_1", "beta_2", "rho"):
            v = getattr(self, p)
            if not _is_real(v) or not 0.0 <= v < 1.0:
                raise bad(p, "a float in [0, 1)")
        if not _is_real(self.momentum) or not 0.0 <= self.momentum <= 1.0:
            raise bad("momentum", "a float in [0, 1]")
        for p in ("learning_rate_init", "epsilon"):
            v = getattr(self, p)
            if not _is_real(v) or not v > 0 or not np.isfinite(v):
                raise bad(p, "a positive float")
        for p in ("alpha", "tol"):
            v = getattr(self, p)
            if not _is_real(v) or not v >= 0 or not np.isfinite(v):
                raise bad(p, "a float >= 0")
        if self.clip_norm is not None and (not _is_real(self.clip_norm) or not self.clip_norm > 0):
            raise bad("clip_norm", "None or a positive float")
        v = self.validation_fraction
        if not _is_real(v) or not 0.0 < v < 1.0:
            raise bad("validation_fraction", "a float in (0, 1)")
        if self.solver not in ("adam", "sgd", "rmsprop"):
            raise bad("solver", "one of 'adam', 'sgd', 'rmsprop'")
        if not _is_int(self.verbose) and not isinstance(self.verbose, (bool, np.bool_)):
            raise bad("verbose", "an int")
        if self.n_jobs is not None and (not _is_int(self.n_jobs) or self.n_jobs == 0):
            raise bad("n_jobs", "None, -1 or a positive int")
        try:
            resolve_dtype(self.dtype)
        except ValueError:
            raise bad("dtype", "'float32' or 'float64'") from None
        check_random_state(self.random_state) if not isinstance(
            self.random_state, np.random.Generator) else None

    # ------------------------------------------------------------------
    # input validation
    # ------------------------------------------------------------------
    def _validate_X(self, X, reset):
        """Standardised, padded float array (n, T, F), lengths (n,) and whether X was ragged.

        With ``reset`` the input layout, ``n_features_in_``, ``input_size_``
        (and ``feature_names_in_`` for DataFrames) are (re)set.
        """
        name = type(self).__name__
        if sp.issparse(X):
            raise TypeError(f"{name} does not accept sparse input: pass a dense array "
                            "(sequences are dense)")
        ragged = False
        if isinstance(X, (list, tuple)) or (isinstance(X, np.ndarray) and X.dtype == object
                                             and X.ndim == 1):
            ragged = _is_ragged(X)
        if ragged:
            seqs = _check_ragged(X)
            ndim = 3
        else:
            ndim = getattr(X, "ndim", None)
            if ndim is None:
                try:
                    ndim = np.asarray(X).ndim
                except (ValueError, TypeError):
                    ndim = 2      # let check_array produce the message
        if ndim == 3 and not ragged:
            arr = check_array(X, allow_nd=True, ensure_2d=False, dtype=np.float64,
                              ensure_all_finite=True, input_name="X")
            if arr.shape[1] < 1 or arr.shape[2] < 1:
                raise ValueError(f"X has shape {arr.shape}: every sequence needs at least one "
                                 "timestep and one feature")
            seqs = None
        if ndim == 3:
            if ragged:
                F = seqs[0].shape[1]
                T = max(s.shape[0] for s in seqs)
                arr = np.zeros((len(seqs), T, F))
                lengths = np.array([s.shape[0] for s in seqs], dtype=np.int64)
                for i, s in enumerate(seqs):
                    arr[i, :s.shape[0]] = s
            else:
                lengths = np.full(arr.shape[0], arr.shape[1], dtype=np.int64)
            F = arr.shape[2]
            if reset:
                self._input_layout = "3d"
                self.n_features_in_ = F
                self.input_size_ = F
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
            elif F != self.input_size_:
                raise ValueError(f"X has {F} features per timestep, but {name} is expecting "
                                 f"{self.input_size_} features per timestep as input")
        else:
            if reset or getattr(self, "_input_layout", None) == "2d":
                arr = validate_data(self, X, reset=reset, dtype=np.float64,
                                    ensure_all_finite=True)
            else:
                arr = check_array(X, dtype=np.float64, ensure_all_finite=True, input_name="X")
                if self.input_size_ != 1:
                    raise ValueError(
                        f"X has {arr.shape[1]} features, but {name} is expecting "
                        f"{self.input_size_} features per timestep as input (2-D X means "
                        "univariate sequences (n_samples, n_timesteps))")
            if reset:
                self._input_layout = "2d"
                self.input_size_ = 1
            arr = arr[:, :, None]
            lengths = np.full(arr.shape[0], arr.shape[1], dtype=np.int64)
        return arr, lengths, ragged

    def _check_sample_weight(self, sample_weight, n):
        sw = _check_sample_weight(sample_weight, np.empty((n, 0)), dtype=np.float64,
                                  ensure_non_negative=True)
        return sw

    # ------------------------------------------------------------------
    # fit / partial_fit
    # ------------------------------------------------------------------
    def fit(self, X, y, sample_weight=None):
        """Fit the model to sequences ``X`` and targets ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps, n_features) or (n_samples, n_timesteps), or list of arrays
            Sequences: 3-D, 2-D (univariate), or a list of (T_i, n_features)
            / (T_i,) arrays of different lengths.
        y : array-like
            Targets; see the class docstring for the shapes.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights; the loss is the weighted mean. A sample of
            weight 0 is the same as leaving it out.

        Returns
        -------
        self
        """
        return self._transaction(X, y, sample_weight, incremental=False)

    def _transaction(self, X, y, sample_weight, incremental, classes=None):
        saved = dict(self.__dict__)
        txn = _Transaction()
        try:
            return self._fit(X, y, sample_weight, incremental, classes, txn)
        except BaseException:
            if not txn.committed:
                self.__dict__.clear()
                self.__dict__.update(saved)
            raise

    def _first_pass(self, incremental):
        if not hasattr(self, "_model"):
            return True
        return not (incremental or self.warm_start)

    def _fit(self, X, y, sample_weight, incremental, classes, txn):
        self._validate_hyperparameters()
        self._pending_classes = classes
        first = self._first_pass(incremental)
        if first:
            for attr in ("_model", "lstm_"):
                self.__dict__.pop(attr, None)
        arr, lengths, ragged = self._validate_X(X, reset=first)
        n = arr.shape[0]
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the "
                             "target y is None")
        targets = self._validate_targets(y, lengths, arr.shape[1], n, first, classes)
        sw = self._check_sample_weight(sample_weight, n)
        if not np.any(sw > 0):
            raise ValueError("Sample weights must contain at least one non-zero number "
                             "(all weights are zero)")
        keep = np.flatnonzero(sw > 0)
        if keep.size < n:          # weight 0 == the sample left out, exactly
            arr, lengths, sw = arr[keep], lengths[keep], sw[keep]
            targets = self._subset_targets(targets, keep)
            T = int(lengths.max())
            arr = arr[:, :T]
            targets = self._trim_targets(targets, T)
        # targets -> (Y, W_loss, W_score), class weights applied; classifier classes_
        Y, W_loss, W_score = self._encode_targets(targets, lengths, sw, first, incremental)

        rng = check_random_state(self.random_state) if first else self._rng
        if first:
            stats_x = _feature_stats(arr, lengths, sw) if self.standardize else (None, None)
            self._x_stats = stats_x
            self._init_target_stats(Y, W_score)
        Y = self._scale_targets(Y)
        if first:
            dtype = resolve_dtype(self.dtype)
            model = SequenceModel(self.input_size_, self.hidden_size, self.num_layers,
                                  self.bidirectional, self.dropout, self.recurrent_dropout,
                                  dtype, self.n_jobs, self._n_head_outputs(), self._loss,
                                  self.return_sequences, rng)
            optimizer = make_optimizer(self)
            history = {"n_iter_": 0, "t_": 0, "loss_curve_": []}
        else:
            self._check_architecture()
            model = copy.deepcopy(self._model)
            optimizer = copy.deepcopy(self._optimizer)
            self._sync_optimizer(optimizer)
            history = {"n_iter_": self.n_iter_, "t_": self.t_,
                       "loss_curve_": list(self.loss_curve_)}
        model.lstm.dropout = float(self.dropout)
        model.lstm.recurrent_dropout = float(self.recurrent_dropout)
        model.lstm.n_jobs = self.n_jobs
        Xp = np.ascontiguousarray(
            _standardize(arr, lengths, self._x_stats), dtype=model.dtype)
        del arr

        early_stopping = self.early_stopping and not incremental
        idx = np.arange(Xp.shape[0])
        if early_stopping:
            stratify = self._stratify(Y) if hasattr(self, "_stratify") else None
            try:
                train_idx, val_idx = train_test_split(
                    idx, random_state=rng, test_size=self.validation_fraction, stratify=stratify)
            except ValueError as exc:
                if stratify is None:
                    raise ValueError(f"early_stopping: cannot hold out validation_fraction="
                                     f"{self.validation_fraction} of {idx.size} samples: "
                                     f"{exc}") from None
                train_idx, val_idx = train_test_split(
                    idx, random_state=rng, test_size=self.validation_fraction)
        else:
            train_idx, val_idx = idx, None

        n_epochs = 1 if incremental else self.max_iter
        progress = EpochProgress(self.verbose, history["n_iter_"] + n_epochs)
        batch_size = (min(32, train_idx.size) if self.batch_size == "auto"
                      else min(self.batch_size, train_idx.size))
        n_no_improve = 0
        best_loss = np.inf if first or not hasattr(self, "best_loss_") or self.best_loss_ is None \
            else self.best_loss_
        best_score, best_params = -np.inf, None
        validation_scores = [] if not early_stopping or first or not hasattr(
            self, "validation_scores_") or self.validation_scores_ is None \
            else list(self.validation_scores_)
        converged = False
        interrupted = False
        floatX = model.dtype
        for epoch_i in range(n_epochs):
            epoch = history["n_iter_"] + 1
            order = rng.permutation(train_idx) if self.shuffle else train_idx
            batches = [order[s:s + batch_size] for s in range(0, order.size, batch_size)]
            snapshot = (model.snapshot(), copy.deepcopy(optimizer), history["t_"])
            progress.start_epoch(epoch, len(batches))
            model.lstm.train()
            try:
                total, weight = 0.0, 0.0
                for b, rows in enumerate(batches):
                    T_b = int(lengths[rows].max())
                    Wb = _take(W_loss, rows, T_b, self.return_sequences)
                    w_sum = float(Wb.sum())
                    if w_sum == 0.0:
                        continue
                    Xb = Xp[rows, :T_b]
                    Yb = _take(Y, rows, T_b, self.return_sequences)
                    # L2 as scikit-learn's MLP: alpha / 2 * ||W||^2 / (samples in the
                    # batch), samples counted by their weights
                    loss, grads = model.loss_and_grad(Xb, lengths[rows], Yb, Wb,
                                                      alpha=float(self.alpha) / sw[rows].sum(),
                                                      tbptt_steps=self.tbptt_steps)
                    grad_norm = _global_norm(grads)
                    if not (np.isfinite(loss) and np.isfinite(grad_norm)):
                        raise _Diverged(epoch, b, loss)
                    if self.clip_norm is not None and grad_norm > self.clip_norm:
                        scale = floatX(self.clip_norm / grad_norm)
                        for g in grads.values():
                            g *= scale
                    optimizer.update_params(model.params, grads)
                    history["t_"] += 1
                    total += loss * w_sum
                    weight += w_sum
                    progress.batch_done(b, total / weight)
                if not model.all_finite():
                    raise _Diverged(epoch, len(batches) - 1, float("nan"))
            except _Diverged as exc:
                model.restore(snapshot[0])
                model.lstm.eval()
                optimizer, history["t_"] = snapshot[1], snapshot[2]
                self._commit(model, optimizer, rng, history, best_loss, validation_scores,
                             early_stopping, best_score)
                txn.committed = True
                raise FloatingPointError(
                    f"{type(self).__name__}: training diverged in epoch {exc.epoch} "
                    f"(mini-batch {exc.batch + 1}): the loss is {exc.loss}. The model keeps "
                    f"the weights of the last completed epoch ({exc.epoch - 1}). Try a lower "
                    f"learning_rate_init (now {self.learning_rate_init}), clip_norm, or "
                    "standardize=True.") from None
            except KeyboardInterrupt:
                model.restore(snapshot[0])
                optimizer, history["t_"] = snapshot[1], snapshot[2]
                interrupted = True
                break
            epoch_loss = total / weight if weight > 0 else 0.0
            history["n_iter_"] = epoch
            history["loss_curve_"].append(epoch_loss)
            model.lstm.eval()
            val_score = None
            if early_stopping:
                val_score = self._internal_score(model, Xp[val_idx], lengths[val_idx],
                                                 _take(Y, val_idx, None, self.return_sequences),
                                                 _take(W_score, val_idx, None,
                                                       self.return_sequences))
                validation_scores.append(val_score)
                if val_score < best_score + self.tol:
                    n_no_improve += 1
                else:
                    n_no_improve = 0
                if val_score > best_score:
                    best_score = val_score
                    best_params = model.snapshot()
            else:
                if epoch_loss > best_loss - self.tol:
                    n_no_improve += 1
                else:
                    n_no_improve = 0
                best_loss = min(best_loss, epoch_loss)
            progress.end_epoch(epoch_loss, val_score, n_epochs - epoch_i - 1)
            if not incremental and n_no_improve > self.n_iter_no_change:
                converged = True
                what = ("Validation score" if early_stopping else "Training loss")
                progress.message(f"{what} did not improve more than tol={self.tol} for "
                                 f"{self.n_iter_no_change} consecutive epochs. Stopping.")
                break
        model.lstm.eval()
        if early_stopping and best_params is not None:
            model.restore(best_params)
        self._commit(model, optimizer, rng, history, best_loss, validation_scores,
                     early_stopping, best_score)
        txn.committed = True
        if interrupted:
            warnings.warn("Training interrupted by user: the model keeps the weights of the "
                          f"last completed epoch ({self.n_iter_}).", UserWarning, stacklevel=3)
        elif not incremental and not converged:
            warnings.warn(f"{type(self).__name__}: maximum iterations ({self.max_iter}) "
                          "reached and the optimization hasn't converged yet.",
                          ConvergenceWarning, stacklevel=3)
        return self

    def _commit(self, model, optimizer, rng, history, best_loss, validation_scores,
                early_stopping, best_score):
        self._model = model
        self._optimizer = optimizer
        self._rng = rng
        self.lstm_ = model.lstm
        self.n_iter_ = history["n_iter_"]
        self.t_ = history["t_"]
        self.loss_curve_ = history["loss_curve_"]
        self.loss_ = self.loss_curve_[-1] if self.loss_curve_ else None
        if early_stopping:
            self.validation_scores_ = validation_scores
            self.best_validation_score_ = (max(validation_scores) if validation_scores
                                           else None)
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = best_loss if np.isfinite(best_loss) else None
        self.__dict__.pop("_pending_classes", None)

    def _check_architecture(self):
        model = self._model
        lstm = model.lstm
        for param, fitted in (("hidden_size", lstm.hidden_size), ("num_layers", lstm.num_layers),
                              ("bidirectional", lstm.bidirectional),
                              ("return_sequences", model.return_sequences)):
            if getattr(self, param) != fitted:
                raise ValueError(
                    f"{type(self).__name__}: {param}={getattr(self, param)!r} differs from the "
                    f"fitted model's {fitted!r}; warm_start and partial_fit continue the fitted "
                    "network, so set it back or fit from scratch (warm_start=False)")
        if resolve_dtype(self.dtype) != model.dtype:
            raise ValueError(f"{type(self).__name__}: dtype={self.dtype!r} differs from the "
                             f"fitted model's {np.dtype(model.dtype).name!r}")

    def _sync_optimizer(self, optimizer):
        """Carry the current hyperparameters into a continued optimizer (same kind)."""
        fresh = make_optimizer(self)
        if type(fresh) is not type(optimizer):
            raise ValueError(f"{type(self).__name__}: solver={self.solver!r} differs from the "
                             "solver of the fitted model; fit from scratch (warm_start=False)")
        for k, v in vars(fresh).items():
            if k not in ("t", "state", "learning_rate"):
                setattr(optimizer, k, v)
        optimizer.learning_rate = fresh.learning_rate

    # ------------------------------------------------------------------
    # prediction
    # ------------------------------------------------------------------
    def _raw_outputs(self, X):
        """Head outputs as float64: (n, K), or (n, T, K) with per-step outputs; lengths; ragged."""
        check_is_fitted(self)
        arr, lengths, ragged = self._validate_X(X, reset=False)
        Xp = np.ascontiguousarray(_standardize(arr, lengths, self._x_stats),
                                  dtype=self._model.dtype)
        return self._model_outputs(self._model, Xp, lengths), lengths, ragged

    @staticmethod
    def _model_outputs(model, Xp, lengths):
        parts = []
        for s in range(0, Xp.shape[0], _PREDICT_BATCH):
            rows = slice(s, s + _PREDICT_BATCH)
            T_b = int(lengths[rows].max())
            Z = model.predict_raw(Xp[rows, :T_b], lengths[rows]).astype(np.float64)
            if Z.ndim == 3 and T_b < Xp.shape[1]:
                Z = np.concatenate(
                    [Z, np.zeros((Z.shape[0], Xp.shape[1] - T_b, Z.shape[2]))], axis=1)
            parts.append(Z)
        return np.concatenate(parts, axis=0)

    def _flat_step_predictions(self, X, y, sample_weight):
        """Per-step targets and predictions over all valid steps, flattened,
        with each sequence's weight repeated over its steps (for score)."""
        pred = self.predict(X)
        arr_lengths = (np.array([len(p) for p in pred]) if isinstance(pred, list)
                       else np.full(len(pred), pred.shape[1]))
        T = int(arr_lengths.max())
        y_flat = collect_step_targets(y, arr_lengths, T)
        p_flat = (np.concatenate(pred) if isinstance(pred, list)
                  else pred[np.ones(pred.shape[:2], bool)])
        sw = None
        if sample_weight is not None:
            sw = np.repeat(self._check_sample_weight(sample_weight, len(arr_lengths)),
                           arr_lengths)
        return y_flat, p_flat, sw

    def save(self, path):
        """Save the fitted estimator to ``path`` (clstm's versioned .npz format; see clstm.load)."""
        from clstm._persistence import save
        save(self, path)

    @classmethod
    def load(cls, path):
        """Load an estimator written by :meth:`save`; it must be of this class."""
        from clstm._persistence import load
        est = load(path)
        if not isinstance(est, cls):
            raise ValueError(f"{path!r} holds a {type(est).__name__}, not a {cls.__name__}")
        return est

    def __getstate__(self):
        state = dict(self.__dict__)
        model = state.get("_model")
        if model is not None:
            model.lstm._cache = None
            model.lstm.grads = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        model = state.get("_model")
        if model is not None:
            # read-only arrays (e.g. joblib memory maps) -> private writable copies:
            # prediction accepts them, but further training updates parameters in place
            lstm = model.lstm
            for k, v in list(lstm.params.items()):
                if not v.flags.writeable:
                    lstm.params[k] = np.array(v)
            for attr in ("head_weight", "head_bias"):
                v = getattr(model, attr)
                if not v.flags.writeable:
                    setattr(model, attr, np.array(v))
            opt = state.get("_optimizer")
            if opt is not None:
                for buf in opt.state.values():
                    for k, v in list(buf.items()):
                        if not v.flags.writeable:
                            buf[k] = np.array(v)
            if "lstm_" in state:
                self.lstm_ = lstm


# ----------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------
class _Diverged(Exception):
    def __init__(self, epoch, batch, loss):
        super().__init__(epoch, batch, loss)
        self.epoch, self.batch, self.loss = epoch, batch, loss


def _is_ragged(X):
    """True if X is a sequence of arrays that numpy cannot stack (different lengths)."""
    if len(X) == 0:
        return False
    if isinstance(X, np.ndarray):
        return all(hasattr(x, "__len__") and not isinstance(x, str) for x in X)
    try:
        arr = np.asarray(X)
    except ValueError:
        return True
    return arr.dtype == object and arr.ndim == 1


def _check_ragged(X):
    """List of float64 (T_i, F) arrays, all with the same F, each with T_i >= 1."""
    seqs = []
    ndim = None
    for i, x in enumerate(X):
        if sp.issparse(x):
            raise TypeError("sparse sequences are not supported; pass dense arrays")
        try:
            a = check_array(x, ensure_2d=False, allow_nd=True, dtype=np.float64,
                            ensure_all_finite=True, ensure_min_samples=1, input_name=f"X[{i}]")
        except ValueError as exc:
            raise ValueError(f"X[{i}]: {exc}") from None
        if a.ndim not in (1, 2):
            raise ValueError(f"X[{i}] must be 1-D (T_i,) or 2-D (T_i, n_features), got shape "
                             f"{a.shape}")
        if ndim is None:
            ndim = a.ndim
        elif a.ndim != ndim:
            raise ValueError(f"X[{i}] is {a.ndim}-D but X[0] is {ndim}-D; all sequences need "
                             "the same layout")
        a = a[:, None] if a.ndim == 1 else a
        if a.shape[1] < 1:
            raise ValueError(f"X[{i}] has 0 features")
        if seqs and a.shape[1] != seqs[0].shape[1]:
            raise ValueError(f"X[{i}] has {a.shape[1]} features per timestep but X[0] has "
                             f"{seqs[0].shape[1]}")
        seqs.append(a)
    return seqs


def _feature_stats(arr, lengths, sw):
    """Weighted mean and standard deviation of each feature over the valid steps."""
    T = arr.shape[1]
    mask = np.arange(T)[None, :] < lengths[:, None]
    w = (sw[:, None] * mask)[..., None]
    total = w.sum()
    mean = (w * arr).sum(axis=(0, 1)) / total
    var = (w * np.square(arr - mean)).sum(axis=(0, 1)) / total
    scale = np.sqrt(var)
    scale[~(scale > 1e-12 * np.maximum(np.abs(mean), 1.0))] = 1.0
    return mean, scale


def _standardize(arr, lengths, stats):
    mean, scale = stats
    if mean is None:
        return arr
    out = (arr - mean) / scale
    T = arr.shape[1]
    if lengths.min() < T:
        out[np.arange(T)[None, :] >= lengths[:, None]] = 0.0
    return out


def _take(A, rows, T, per_step):
    out = A[rows]
    if per_step and T is not None:
        out = out[:, :T]
    return out


def _global_norm(grads):
    total = 0.0
    for g in grads.values():
        total += float(np.dot(g.ravel().astype(np.float64, copy=False),
                              g.ravel().astype(np.float64, copy=False)))
    return np.sqrt(total)


def collect_step_targets(y, lengths, T):
    """Per-step targets as (flat valid entries, padded-shape tail).

    ``y`` is an array (n, T, ...) (values past each length ignored) or a list of
    n arrays (T_i, ...) matching the sequence lengths. Returns the entries of
    all valid steps concatenated in (sample, step) order.
    """
    n = lengths.shape[0]
    if isinstance(y, (list, tuple)) or (isinstance(y, np.ndarray) and y.dtype == object
                                         and y.ndim == 1 and n and hasattr(y[0], "__len__")
                                         and not isinstance(y[0], str)):
        if len(y) != n:
            raise ValueError(f"y has {len(y)} sequences but X has {n}")
        parts = []
        for i, yi in enumerate(y):
            yi = np.asarray(yi)
            if yi.ndim == 0 or yi.shape[0] != lengths[i]:
                got = "a scalar" if yi.ndim == 0 else f"{yi.shape[0]} steps"
                raise ValueError(f"y[{i}] has {got} but X[{i}] has {lengths[i]} steps "
                                 "(return_sequences=True needs one target per step)")
            parts.append(yi)
        tails = {p.shape[1:] for p in parts}
        if len(tails) > 1:
            raise ValueError(f"per-step targets have inconsistent shapes {sorted(tails)}")
        return np.concatenate(parts, axis=0)
    y = np.asarray(y)
    if y.ndim < 2:
        raise ValueError(f"return_sequences=True needs per-step targets of shape (n_samples, "
                         f"n_timesteps[, n_outputs]) or a list of per-sequence arrays, got "
                         f"shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} sequences but X has {n}")
    if y.shape[1] != T:
        raise ValueError(f"y has {y.shape[1]} steps per sequence but X has {T}")
    mask = np.arange(T)[None, :] < lengths[:, None]
    return y[mask]


def pad_steps(flat, lengths, T, fill=0):
    """Inverse of the (sample, step) concatenation: (n, T, ...) with `fill` past lengths."""
    n = lengths.shape[0]
    out = np.full((n, T) + flat.shape[1:], fill, dtype=flat.dtype)
    out[np.arange(T)[None, :] < lengths[:, None]] = flat
    return out


def split_steps(padded, lengths):
    """List of per-sequence arrays (T_i, ...) from a padded (n, T, ...) array."""
    return [padded[i, :lengths[i]].copy() for i in range(lengths.shape[0])]
