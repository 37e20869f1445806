"""The training loop shared by LSTMRegressor and LSTMClassifier.

Shaped like scikit-learn's MLP (``sklearn/neural_network/_multilayer_perceptron.py``):
``__init__`` only assigns; ``fit`` validates, seeds from
``check_random_state(self.random_state)``, trains, and sets the fitted
attributes. Everything specific to regression or classification (targets,
loss, output transform, score) lives in the subclasses. A fit runs in named
steps: :meth:`~BaseLSTMEstimator._prepare_data`,
:meth:`~BaseLSTMEstimator._build_or_resume`, :meth:`~BaseLSTMEstimator._run_epoch`
(repeated, each followed by :meth:`~BaseLSTMEstimator._end_epoch`, which
scores the validation set, applies the learning-rate schedule's plateau rule
and calls the callbacks), and :meth:`~BaseLSTMEstimator._commit`.

Input layouts (``X``):

* 3-D array ``(n_samples, n_timesteps, n_features)``;
* 2-D array ``(n_samples, n_timesteps)``: univariate sequences. As in
  scikit-learn, ``n_features_in_`` is then the number of columns, and later
  2-D input must have the same number of columns (pass 3-D ``(n, T, 1)`` or a
  list to use other lengths);
* a list of 2-D ``(T_i, n_features)`` (or 1-D ``(T_i,)``, univariate) arrays
  of different lengths: ragged, handled exactly through the network's
  ``lengths`` (padding never changes a result).

Sample weights: a sample of weight k is exactly k copies of it. Identical
samples (same sequence and targets) are merged into one whose weight is the
sum of theirs, and with ``shuffle=True`` the samples are put in an order
given by their content (a digest of each sample's bytes, see
``_row_digests``) before the epoch permutations are drawn, so a fit depends
only on the weighted set of samples, not on how it was written down
(repetitions, weights, order). A mini-batch counts distinct samples. The
digests are per sample, so a Dask fit computes them where the data lives
and takes the same decisions without gathering the sequences (clstm._dask).

Training is transactional: a fit or partial_fit that raises leaves the
estimator exactly as it was, with two documented exceptions that keep a
consistent, usable model:

* divergence: a non-finite loss, gradient or weight, or an epoch loss more
  than 10^4 times the lowest loss of the call and 10 times the loss of a
  constant prediction, raises ``FloatingPointError`` naming the epoch. The
  estimator keeps the weights of the last completed epoch; if the call
  completed none, it stays as it was before the call (a first ``fit`` that
  diverges in its first epoch leaves the estimator unfitted; ``warm_start``
  and ``partial_fit`` keep the previous weights);
* ``KeyboardInterrupt``: training stops, the weights of the last completed
  epoch are kept and a warning is issued, as scikit-learn's MLP does (with
  no completed epoch in the call, the estimator stays as it was and the
  interrupt propagates).

A ``fit`` callback that returns a truthy value ends training normally; an
exception raised by a callback propagates and follows the rule above (the
estimator stays as it was before the call).
"""

import copy
import dataclasses
import difflib
import functools
import hashlib
import importlib
import inspect
import math
import numbers
import time
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import _safe_indexing, check_random_state
from sklearn.utils.validation import _check_sample_weight, check_array, check_is_fitted, validate_data

from clstm import _persistence
from clstm._attention import ATTENTION_KINDS
from clstm._model import (
    NETWORK_PARAMS,
    RESUMABLE_NETWORK_PARAMS,
    NonFiniteError,
    SequenceModel,
    network_params,
)
from clstm._optimizer_steps import sum_of_squares
from clstm._optimizers import SCHEDULES, make_optimizer, optimizer_from_state
from clstm._parallel import blas_single_threaded
from clstm._progress import EpochProgress
from clstm._tokens import (
    EMBEDDING_PARAMS,
    Embedding,
    check_embedding_params,
    check_token_ids,
    embedding_shape,
    token_sequences,
)
from clstm._validation import InvalidParameterError

__all__ = ["BaseLSTMEstimator", "EpochRecord", "load"]

# rows per forward pass in predict (bounds the activation memory)
_PREDICT_BATCH = 1024

# Divergence: an epoch loss above DIVERGENCE_GROWTH times the lowest loss of
# the call and above DIVERGENCE_SCALE times the larger of the call's first
# mini-batch loss and the loss of a constant prediction.
DIVERGENCE_GROWTH = 1e4
DIVERGENCE_SCALE = 10.0

# Names from Keras / PyTorch / other libraries -> the parameter meant here.
_OTHER_NAMES = {
    "epochs": "max_iter", "n_epochs": "max_iter", "num_epochs": "max_iter",
    "units": "hidden_size", "hidden_dim": "hidden_size", "n_hidden": "hidden_size",
    "n_layers": "num_layers", "layers": "num_layers",
    "lr": "learning_rate_init", "lr_schedule": "learning_rate", "schedule": "learning_rate",
    "optimizer": "solver", "validation_split": "validation_fraction",
    "patience": "n_iter_no_change", "min_delta": "tol", "seed": "random_state",
    "clipnorm": "clip_norm", "gradient_clip": "clip_norm", "weight_decay": "alpha",
    "l2": "alpha", "n_threads": "n_jobs", "num_threads": "n_jobs", "workers": "n_jobs",
}

# class name -> estimator class, for load()
_ESTIMATORS = {}
# estimators defined outside clstm._estimators: where load() finds them
_ESTIMATOR_MODULES = {"LSTMSeq2SeqRegressor": "clstm._seq2seq",
                      "ConvLSTMRegressor": "clstm._nowcast"}


def _is_int(value):
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value):
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(
        value, (bool, np.bool_))


@functools.lru_cache(maxsize=None)
def _init_parameter_names(cls):
    return tuple(p.name for p in inspect.signature(cls.__init__).parameters.values()
                 if p.name != "self" and p.kind != p.VAR_KEYWORD)


def _constructor_signature(cls):
    """__init__'s signature without self: what inspect, help() and scikit-learn's
    checks see for the class (instead of __new__'s *args, **kwargs)."""
    sig = inspect.signature(cls.__init__)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def _check_constructor_arguments(cls, args, kwargs):
    """A TypeError naming the estimator (and the parameter probably meant) for
    an unknown keyword, before Python's names the base class's __init__."""
    names = _init_parameter_names(cls)
    if len(args) > len(names):
        raise TypeError(f"{cls.__name__}() takes at most {len(names)} positional arguments "
                        f"but {len(args)} were given")
    for key in kwargs:
        if key in names:
            continue
        hint = _OTHER_NAMES.get(key)
        if hint not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = close[0] if close else None
        msg = f"{cls.__name__}.__init__() got an unexpected keyword argument {key!r}"
        if hint:
            msg += f"; did you mean {hint!r}?"
        raise TypeError(msg + f" (the parameters are listed in help({cls.__name__}))")


class BaseLSTMEstimator(BaseEstimator):
    """Base class; see LSTMRegressor / LSTMClassifier for the parameters."""

    _loss = None          # set by subclasses

    def __new__(cls, *args, **kwargs):
        _check_constructor_arguments(cls, args, kwargs)
        return super().__new__(cls)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _ESTIMATORS.setdefault(cls.__name__, cls)
        cls.__signature__ = _constructor_signature(cls)

    def __init__(self, hidden_size=50, num_layers=1, bidirectional=False, cell="lstm",
                 proj_size=0, peephole=False, coupled_gates=False, layer_norm=False, dropout=0.0,
                 recurrent_dropout=0.0, return_sequences=False, attention=None, dtype="float32",
                 solver="adam", learning_rate_init=1e-3, learning_rate="constant",
                 power_t=0.5, batch_size=32, max_iter=200,
                 shuffle=True, alpha=1e-4, clip_norm=5.0, momentum=0.9,
                 nesterovs_momentum=True, beta_1=0.9, beta_2=0.999, rho=0.9, epsilon=1e-8,
                 tol=1e-4, early_stopping=False, validation_fraction=0.1,
                 validation_holdout="random",
                 n_iter_no_change=10, tbptt_steps=None, standardize=True,
                 random_state=None, n_jobs=None, verbose=0, warm_start=False,
                 vocab_size=None, embedding_dim=None, padding_idx=None, embeddings=None,
                 freeze_embeddings=False):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.cell = cell
        self.proj_size = proj_size
        self.peephole = peephole
        self.coupled_gates = coupled_gates
        self.layer_norm = layer_norm
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.return_sequences = return_sequences
        self.attention = attention
        self.dtype = dtype
        self.solver = solver
        self.learning_rate_init = learning_rate_init
        self.learning_rate = learning_rate
        self.power_t = power_t
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
        self.validation_holdout = validation_holdout
        self.n_iter_no_change = n_iter_no_change
        self.tbptt_steps = tbptt_steps
        self.standardize = standardize
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.warm_start = warm_start
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.embeddings = embeddings
        self.freeze_embeddings = freeze_embeddings

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
        """The training loop's hyperparameters. The network's (NETWORK_PARAMS)
        are validated by the network's constructor, see _build_or_resume."""
        name = type(self).__name__

        def bad(param, expected):
            value = getattr(self, param)
            return InvalidParameterError(
                f"{name}: parameter {param!r} must be {expected}, got {value!r}")

        for p in ("max_iter", "n_iter_no_change"):
            if not _is_int(getattr(self, p)) or getattr(self, p) < 1:
                raise bad(p, "an int >= 1")
        if self.batch_size != "auto" and (not _is_int(self.batch_size) or self.batch_size < 1):
            raise bad("batch_size", "an int >= 1 or 'auto'")
        if self.tbptt_steps is not None and (not _is_int(self.tbptt_steps) or self.tbptt_steps < 1):
            raise bad("tbptt_steps", "None or an int >= 1")
        if self.tbptt_steps is not None and self.bidirectional:
            raise InvalidParameterError(
                f"{name}: tbptt_steps needs a unidirectional network (the reverse direction "
                "of bidirectional=True reads the whole sequence); set tbptt_steps=None or "
                "bidirectional=False")
        for p in ("return_sequences", "shuffle", "nesterovs_momentum", "early_stopping",
                  "standardize", "warm_start"):
            if not isinstance(getattr(self, p), (bool, np.bool_)):
                raise bad(p, "a bool")
        self._validate_attention()
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
        if self.clip_norm is not None and (not _is_real(self.clip_norm)
                                           or not 0 < self.clip_norm < np.inf):
            raise bad("clip_norm", "None or a positive float")
        v = self.validation_fraction
        if not _is_real(v) or not 0.0 < v < 1.0:
            raise bad("validation_fraction", "a float in (0, 1)")
        if self.solver not in ("adam", "sgd", "rmsprop"):
            raise bad("solver", "one of 'adam', 'sgd', 'rmsprop'")
        if not isinstance(self.learning_rate, str) or self.learning_rate not in SCHEDULES:
            hint = (" (the step size itself is learning_rate_init)"
                    if _is_real(self.learning_rate) else "")
            raise bad("learning_rate", "one of " + ", ".join(map(repr, SCHEDULES)) + hint)
        if not _is_real(self.power_t) or not 0 <= self.power_t < np.inf:
            raise bad("power_t", "a float >= 0")
        if self.validation_holdout not in ("random", "last"):
            raise bad("validation_holdout", "'random' or 'last'")
        if not _is_int(self.verbose) and not isinstance(self.verbose, (bool, np.bool_)):
            raise bad("verbose", "an int")
        rs = self.random_state
        if isinstance(rs, np.random.Generator):
            raise InvalidParameterError(
                f"{name}: parameter 'random_state' must be None, an int in [0, 2**32) or a "
                "numpy RandomState (scikit-learn's convention), got a numpy Generator; pass an "
                "int seed, e.g. random_state=0")
        if not (rs is None or isinstance(rs, np.random.RandomState)
                or (_is_int(rs) and 0 <= rs < 2 ** 32)):
            raise bad("random_state", "None, an int in [0, 2**32) or a numpy RandomState")
        check_embedding_params(self, InvalidParameterError)

    def _validate_attention(self):
        name = type(self).__name__
        if self.attention is not None and (not isinstance(self.attention, str)
                                           or self.attention not in ATTENTION_KINDS):
            raise InvalidParameterError(
                f"{name}: parameter 'attention' must be None, 'additive' or 'dot', got "
                f"{self.attention!r}")
        if self.attention is not None and self.return_sequences:
            raise InvalidParameterError(
                f"{name}: attention pools each sequence into one vector for a "
                "sequence-to-one head; set return_sequences=False or attention=None")
        if self.attention is not None and self.tbptt_steps is not None:
            raise InvalidParameterError(
                f"{name}: attention reads every step of a sequence at once, so it cannot be "
                "trained with truncated BPTT; set tbptt_steps=None or attention=None")

    def _network_params(self):
        return {p: getattr(self, p) for p in NETWORK_PARAMS}

    # ------------------------------------------------------------------
    # input validation
    # ------------------------------------------------------------------
    def _validate_X(self, X, reset, lengths=None):
        """Padded float64 array (n, T, F), lengths (n,) and whether X was ragged.

        With ``reset`` the input layout, ``n_features_in_``, ``input_size_``
        (and ``feature_names_in_`` for DataFrames) are (re)set. ``lengths``
        (for a padded 2-D / 3-D X) turns X into the ragged list
        ``[X[i, :lengths[i]] for i]`` first: the padding is never read.
        """
        name = type(self).__name__
        tokens = (embedding_shape(self) is not None if reset
                  else getattr(self, "_input_layout", None) == "tokens")
        if sp.issparse(X):
            raise TypeError(f"{name} does not accept sparse input: pass a dense array "
                            "(sequences are dense)")
        if tokens:
            return self._validate_tokens(X, reset, lengths)
        ragged = False
        if lengths is not None:
            X = _unpad(X, lengths)
            ragged = True
        elif isinstance(X, (list, tuple)) or (isinstance(X, np.ndarray) and X.dtype == object
                                               and X.ndim == 1):
            ragged = _is_ragged(X)
        if ragged:
            seqs = _check_ragged(X)
            ndim = 3
        else:
            if not hasattr(X, "ndim") and not hasattr(X, "dtypes"):
                try:
                    X = np.asarray(X)
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"X could not be converted to an array: {exc}") from None
            _refuse_complex(X, "X")
            ndim = getattr(X, "ndim", 2)
            if ndim not in (2, 3):
                raise ValueError(_bad_ndim_message(name, X, ndim))
        if ndim == 3 and not ragged:
            arr = check_array(X, allow_nd=True, ensure_2d=False, dtype=np.float64,
                              ensure_all_finite=True, input_name="X")
            if arr.shape[1] < 1 or arr.shape[2] < 1:
                raise ValueError(f"X has shape {arr.shape}: every sequence needs at least one "
                                 "timestep and one feature")
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

    def _validate_tokens(self, X, reset, lengths):
        """Token input: padded int64 ids (n, T), lengths (n,), ragged; with
        ``reset`` the layout "tokens", n_features_in_ = 1 (one id per step) and
        input_size_ = embedding_dim."""
        if reset or "_model" not in self.__dict__:
            # (validation data of a first fit is read before the model is committed)
            vocab_size, dim = embedding_shape(self)
        else:
            vocab_size, dim = self._model.input_layer.vocab_size, self._model.input_layer.dim
        arr, lengths, ragged = token_sequences(X, vocab_size, lengths)
        if reset:
            self._input_layout = "tokens"
            self.n_features_in_ = 1
            self.input_size_ = dim
            self.__dict__.pop("feature_names_in_", None)
        return arr, lengths, ragged

    def _new_input_layer(self, rng):
        """The embedding of a first fit on tokens (None for feature input)."""
        if self._input_layout != "tokens":
            return None
        vocab_size, dim = embedding_shape(self)
        return Embedding.create(vocab_size, dim, np.dtype(self.dtype), rng,
                                padding_idx=self.padding_idx, weight=self.embeddings,
                                frozen=self.freeze_embeddings)

    def _check_sample_weight(self, sample_weight, n):
        _refuse_complex(sample_weight, "sample_weight")
        return _check_sample_weight(sample_weight, np.empty((n, 0)), dtype=np.float64,
                                    ensure_non_negative=True)

    # ------------------------------------------------------------------
    # fit / partial_fit
    # ------------------------------------------------------------------
    def fit(self, X, y, sample_weight=None, lengths=None, validation_data=None, callbacks=None):
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
            integer weight k is the same as k copies of it, and a sample of
            weight 0 the same as leaving it out.
        lengths : array-like of int of shape (n_samples,), default=None
            For a padded 3-D (or 2-D univariate) ``X``: the number of valid
            steps of each sequence (Keras' mask, PyTorch's
            ``pack_padded_sequence`` lengths). The fit is then exactly the fit
            on the ragged list ``[X[i, :lengths[i]] for i in range(n)]``: the
            padding is never read (it may hold anything, even NaN). Per-step
            targets (``return_sequences=True``) may be padded the same way.
            Routed by scikit-learn's metadata routing: inside a ``Pipeline``
            or ``GridSearchCV``, call ``set_fit_request(lengths=True)`` (and
            ``set_predict_request`` / ``set_score_request``) with
            ``sklearn.set_config(enable_metadata_routing=True)``.
        validation_data : tuple or dict, default=None
            A validation set of your choice (Keras' ``validation_data``):
            ``(X_val, y_val)``, ``(X_val, y_val, lengths_val)`` for a padded
            ``X_val`` (the third item is not Keras' sample weights), or a
            dict with keys ``"X"``, ``"y"`` and optionally ``"lengths"`` and
            ``"sample_weight"``. It is checked as ``X`` and
            ``y`` are (same features, targets or known classes) and scored
            after every epoch with :meth:`score`'s measure (R^2 / accuracy)
            into ``validation_scores_``. With ``early_stopping=True`` training
            stops on it and keeps the best epoch's weights, instead of holding
            out ``validation_fraction`` of ``X``; without, it is only
            recorded. Through a ``Pipeline``, pass it as
            ``pipe.fit(X, y, lstmregressor__validation_data=...)`` (its ``X_val``
            does not go through the earlier steps: transform it yourself), or
            with metadata routing ``set_fit_request(validation_data=True)``.
            In ``GridSearchCV`` the same set serves every split; prefer
            ``validation_holdout="last"`` there (each training fold holds out
            its own last block).
        callbacks : callable or list of callables, default=None
            Called after every epoch with an :class:`EpochRecord` (epoch,
            loss, validation score, learning rate, ...; ``record.estimator()``
            gives a fitted copy with that epoch's weights). A truthy return
            value stops training: the fit ends normally (no
            ``ConvergenceWarning``) with that epoch's weights, or the best
            epoch's under early stopping. An exception raised by a callback
            propagates and leaves the estimator as it was before ``fit``.
            A fit parameter, not a constructor one, so the estimator stays
            clonable and picklable. Examples::

                log = []
                reg.fit(X, y, callbacks=lambda r: log.append((r.epoch, r.loss)))

                def checkpoint(record):                 # save every 10th epoch
                    if record.n_iter % 10 == 0:
                        record.estimator().save(f"ckpt-{record.n_iter}.npz")

                def stop_below(record):                 # custom stopping
                    return record.loss < 0.01

        A Dask array ``X`` chunked along samples (with ``y`` and
        ``sample_weight`` as NumPy or Dask arrays) is fitted data-parallel on
        the active ``distributed.Client``, the sequences staying on the
        workers, with the same mini-batches and (up to the order of float
        additions) the same weights as the in-memory fit; see
        ``clstm._dask`` and the README's "Scale out on Dask". Prediction
        methods given a Dask array return a lazy Dask array::

            reg.fit(dask.array.from_array(X, chunks=(10_000, -1, -1)), y)

        Returns
        -------
        self

        Raises
        ------
        FloatingPointError
            If training diverges. The estimator then keeps the weights of the
            last completed epoch; a first fit that diverges in its first epoch
            leaves it unfitted (see the module docstring).
        """
        return self._transaction(X, y, sample_weight, incremental=False, lengths=lengths,
                                 validation_data=validation_data, callbacks=callbacks)

    def _transaction(self, X, y, sample_weight, incremental, classes=None, lengths=None,
                     validation_data=None, callbacks=None):
        saved = dict(self.__dict__)
        txn = _Transaction()
        try:
            return self._fit(X, y, sample_weight, incremental, classes, txn, lengths,
                             validation_data, _check_callbacks(callbacks))
        except BaseException:
            if not txn.committed:
                self.__dict__.clear()
                self.__dict__.update(saved)
            raise

    def _first_pass(self, incremental):
        if not hasattr(self, "_model"):
            return True
        return not (incremental or self.warm_start)

    def _fit(self, X, y, sample_weight, incremental, classes, txn, lengths=None,
             validation_data=None, callbacks=()):
        self._validate_hyperparameters()
        first = self._first_pass(incremental)
        if first:
            for attr in ("_model", "lstm_"):
                self.__dict__.pop(attr, None)
        holdout = None
        if (validation_data is None and self.early_stopping and not incremental
                and self.validation_holdout == "last" and not _is_dask_collection(X)):
            X, y, sample_weight, lengths, validation_data = self._hold_out_last(
                X, y, sample_weight, lengths)
            holdout = (f"the held-out last validation_fraction={self.validation_fraction} of "
                       "the samples (validation_holdout='last')")
        data = self._prepare_data(X, y, sample_weight, first, incremental, classes, lengths)
        run = self._build_or_resume(data, first, incremental, validation_data, holdout)
        run.callbacks = callbacks
        for _ in range(run.n_epochs):
            start = run.snapshot()
            started = time.perf_counter()
            try:
                epoch_loss = self._run_epoch(run, data)
            except _Diverged as exc:
                run.progress.close()
                run.restore(start)
                if run.epochs_done:
                    self._commit(run)
                    txn.committed = True
                raise FloatingPointError(self._divergence_message(exc, run, first)) from None
            except KeyboardInterrupt:
                run.progress.close()
                run.restore(start)
                if not run.epochs_done:
                    raise
                run.interrupted = True
                break
            if self._end_epoch(run, data, epoch_loss, time.perf_counter() - started):
                break
        self._commit(run)
        txn.committed = True
        if run.interrupted:
            warnings.warn("Training interrupted by user: the model keeps the weights of the "
                          f"last completed epoch ({self.n_iter_}).", UserWarning, stacklevel=3)
        elif not incremental and not run.converged and not run.stopped_by_callback:
            warnings.warn(f"{type(self).__name__}: maximum iterations ({self.max_iter}) "
                          "reached and the optimization hasn't converged yet.",
                          ConvergenceWarning, stacklevel=3)
        return self

    # -- step 1: data -----------------------------------------------------------
    def _prepare_data(self, X, y, sample_weight, first, incremental, classes, lengths=None):
        """Validated, merged and (on the first pass) measured training data, float64.

        Sets the input attributes, the classifier's classes_ and, on the first
        pass, the standardisation statistics. A Dask array X is prepared on
        the workers instead (clstm._dask): the sequences stay there.
        """
        if _is_dask_collection(X):
            from clstm import _dask
            return _dask.prepare_training_data(self, X, y, sample_weight, first, incremental,
                                               classes, lengths)
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the "
                             "target y is None")
        y = self._unpad_step_targets(y, lengths)
        arr, lengths, _ = self._validate_X(X, reset=first, lengths=lengths)
        n = arr.shape[0]
        _refuse_complex(y, "y")
        targets = self._validate_targets(y, lengths, arr.shape[1], n, first)
        sw = self._check_sample_weight(sample_weight, n)
        if not np.any(sw > 0):
            raise ValueError("Sample weights must contain at least one non-zero number "
                             "(all weights are zero)")
        keep = np.flatnonzero(sw > 0)
        if keep.size < n:          # weight 0 == the sample left out, exactly
            arr, lengths, sw = arr[keep], lengths[keep], sw[keep]
            T = int(lengths.max())
            arr = arr[:, :T]
            targets = targets[keep]
            if self.return_sequences:
                targets = targets[:, :T]
        Y = self._encode_targets(targets, lengths, first, incremental, classes)
        # exact powers of two: weights near the float limits neither overflow
        # nor underflow, and every result stays bit-identical
        sw_unit = float(_power_of_two(sw.max()))
        sw = sw / sw_unit
        arr, lengths, Y, sw = _merge_duplicates(arr, lengths, Y, sw, self.return_sequences,
                                                keep_order=not self.shuffle)
        T = arr.shape[1]
        steps = np.arange(T)[None, :] < lengths[:, None]
        W_score = sw[:, None] * steps if self.return_sequences else sw.copy()
        W_loss = W_score * self._class_weight_factors(Y, W_score, incremental)
        # the one sequence length of the training windows (what forecast slides), if any
        common = int(lengths[0]) if np.all(lengths == lengths[0]) else None
        if first:
            self.n_timesteps_in_ = common
            self._x_stats = (_input_statistics(arr, steps, sw)
                             if self.standardize and self._input_layout != "tokens"
                             else (None, None))
            self._init_target_stats(Y, W_score)
        elif getattr(self, "n_timesteps_in_", None) != common:
            self.n_timesteps_in_ = None
        return _TrainingData(_standardize(arr, lengths, self._x_stats), lengths, steps, Y,
                             W_loss, W_score, sw, sw_unit)

    # -- step 2: model ------------------------------------------------------------
    def _build_or_resume(self, data, first, incremental, validation_data=None, holdout=None):
        """A new model (first pass) or a copy of the fitted one, with its optimizer
        and history; casts the data to the model's dtype and sets up the
        validation set (the user's, or split off the training data)."""
        name = type(self).__name__
        if first:
            rng = check_random_state(self.random_state)
            try:
                model = self._new_model(rng)
            except (TypeError, ValueError) as exc:   # the network's checks of its parameters
                raise InvalidParameterError(f"{name}: {exc}") from None
            run = _Run(model, make_optimizer(self), rng, n_iter=0, t=0, loss_curve=[],
                       best_loss=np.inf, validation_scores=[], learning_rates=[])
        else:
            self._check_architecture()
            if not self._model.all_finite():
                raise FloatingPointError(
                    f"{name}: the fitted weights are not finite (were they changed in "
                    "place?); fit from scratch (warm_start=False)")
            try:
                model = self._model.resume(**{p: getattr(self, p)
                                              for p in RESUMABLE_NETWORK_PARAMS})
            except (TypeError, ValueError) as exc:
                raise InvalidParameterError(f"{name}: {exc}") from None
            optimizer = make_optimizer(self)
            if type(optimizer) is not type(self._optimizer):
                raise ValueError(f"{name}: solver={self.solver!r} differs from the solver of "
                                 "the fitted model; fit from scratch (warm_start=False)")
            optimizer.load_state_dict(*self._optimizer.state_dict())
            best_loss = self.best_loss_ if self.best_loss_ is not None else np.inf
            run = _Run(model, optimizer, copy.deepcopy(self._rng), n_iter=self.n_iter_,
                       t=self.t_, loss_curve=list(self.loss_curve_), best_loss=best_loss,
                       validation_scores=list(self.validation_scores_ or []),
                       learning_rates=list(self.learning_rate_curve_))
        dtype = model.dtype
        run.null_loss = data.to_model_units(self, dtype)
        run.early_stopping = self.early_stopping and not incremental
        if not run.early_stopping and validation_data is None:
            run.validation_scores = []
        run.incremental = incremental
        run.n_epochs = 1 if incremental else self.max_iter
        if validation_data is not None:
            data.train_idx = np.arange(data.X.shape[0])
            data.val = self._validation_set(validation_data, dtype, holdout)
        else:
            self._split_validation(data, run)
        run.batch_size = min(32 if self.batch_size == "auto" else self.batch_size,
                             data.train_idx.size)
        run.progress = EpochProgress(self.verbose, run.n_iter + run.n_epochs)
        return run

    # the model class (a subclass with another model overrides both)
    _model_type = SequenceModel

    def _new_model(self, rng):
        """A freshly initialised model for this estimator's hyperparameters."""
        return SequenceModel.create(self.input_size_, self._network_params(),
                                    self._n_head_outputs(), self._loss, self.return_sequences,
                                    rng, attention=self.attention,
                                    input_layer=self._new_input_layer(rng))

    def _split_validation(self, data, run):
        """data.train_idx / data.val: the rows held out for early stopping
        (stratified for a classifier where every class has enough samples)."""
        idx = np.arange(data.X.shape[0])
        data.train_idx, data.val = idx, None
        if not run.early_stopping:
            return
        stratify = self._stratify(data.Y)
        try:
            data.train_idx, val_idx = train_test_split(
                idx, random_state=run.rng, test_size=self.validation_fraction,
                stratify=stratify)
        except ValueError as exc:
            if stratify is None:
                raise ValueError(f"early_stopping: cannot hold out validation_fraction="
                                 f"{self.validation_fraction} of {idx.size} samples: "
                                 f"{exc}") from None
            data.train_idx, val_idx = train_test_split(
                idx, random_state=run.rng, test_size=self.validation_fraction)
        data.val = (data.X[val_idx], data.lengths[val_idx],
                    _take(data.Y, val_idx, None, self.return_sequences),
                    _take(data.W_score, val_idx, None, self.return_sequences))

    def _hold_out_last(self, X, y, sample_weight, lengths):
        """validation_holdout='last': the training part and, as validation data,
        the last ``ceil(validation_fraction * n)`` samples in the given order."""
        n = len(X)
        n_val = math.ceil(self.validation_fraction * n)
        if n_val < 1 or n - n_val < 1:
            raise ValueError(f"early_stopping: cannot hold out the last validation_fraction="
                             f"{self.validation_fraction} of {n} samples (both parts need at "
                             "least one sample)")
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the "
                             "target y is None")
        train, val = np.arange(n - n_val), np.arange(n - n_val, n)

        def part(A, rows):
            if A is None:
                return None
            if isinstance(A, tuple):
                A = list(A)
            return _safe_indexing(A, rows)

        validation = {"X": part(X, val), "y": part(y, val),
                      "sample_weight": part(sample_weight, val), "lengths": part(lengths, val)}
        return (part(X, train), part(y, train), part(sample_weight, train),
                part(lengths, train), validation)

    def _validation_set(self, validation_data, dtype, holdout=None):
        """The user's validation data, checked as the training data are and
        prepared as the model reads it: (X, lengths, Y, W_score)."""
        what = holdout or "validation_data"
        Xv, yv, lv, swv = _unpack_validation_data(validation_data)
        try:
            if yv is None:
                raise ValueError("y is None")
            yv = self._unpad_step_targets(yv, lv)
            arr, lv, _ = self._validate_X(Xv, reset=False, lengths=lv)
            n = arr.shape[0]
            _refuse_complex(yv, "y")
            targets = self._validate_targets(yv, lv, arr.shape[1], n, False)
            Y = self._encode_targets(targets, lv, False, False, None)
            sw = self._check_sample_weight(swv, n)
            if not np.any(sw > 0):
                raise ValueError("the sample weights are all zero")
        except ValueError as exc:
            hint = ""
            if (isinstance(validation_data, (tuple, list)) and len(validation_data) == 3
                    and "lengths" in str(exc)):
                hint = (" (the third item of validation_data is lengths_val, for a padded "
                        "X_val; pass validation sample weights as a dict: {'X': X_val, "
                        "'y': y_val, 'sample_weight': w_val})")
            raise ValueError(f"{what}: {exc}{hint}") from None
        T = arr.shape[1]
        W = sw[:, None] * (np.arange(T)[None, :] < lv[:, None]) if self.return_sequences else sw
        Xp = _to_dtype(_standardize(arr, lv, self._x_stats), dtype, "validation X",
                       self._x_stats[0] is not None)
        return Xp, lv, self._targets_in_model_units(Y, dtype), W

    def _check_architecture(self):
        """warm_start / partial_fit continue the fitted network: the parameters
        that fix its weights' shapes must not have changed."""
        name = type(self).__name__
        config = network_params(self._model.network)
        fitted = {p: config[p] for p in NETWORK_PARAMS if p not in RESUMABLE_NETWORK_PARAMS}
        fitted["return_sequences"] = self._model.return_sequences
        fitted["attention"] = (None if self._model.attention is None
                               else self._model.attention.kind)
        layer = self._model.input_layer
        fitted_tokens = None if layer is None else ((layer.vocab_size, layer.dim),
                                                    layer.padding_idx, layer.frozen)
        current = embedding_shape(self)
        if current is not None:
            current = (current, self.padding_idx, self.freeze_embeddings)
        if current != fitted_tokens:
            raise ValueError(
                f"{name}: the token input ({', '.join(EMBEDDING_PARAMS)}) differs from the "
                "fitted model's (vocabulary and embedding size, padding_idx, frozen or not); "
                "warm_start and partial_fit continue the fitted network, so set them back "
                "or fit from scratch (warm_start=False)")
        for param, value in fitted.items():
            current = getattr(self, param)
            same = (_dtype_name(current) == value) if param == "dtype" else current == value
            if not same:
                raise ValueError(
                    f"{name}: {param}={current!r} differs from the fitted model's {value!r}; "
                    "warm_start and partial_fit continue the fitted network, so set it back "
                    "or fit from scratch (warm_start=False)")

    # -- step 3: one epoch -------------------------------------------------------
    def _run_epoch(self, run, data):
        """One pass over the training samples in mini-batches; returns the epoch
        loss. Raises _Diverged on a non-finite loss, gradient or weight."""
        model, optimizer = run.model, run.optimizer
        epoch = run.n_iter + 1
        run.learning_rate = optimizer.start_epoch()
        order = run.rng.permutation(data.train_idx) if self.shuffle else data.train_idx
        bs = run.batch_size
        batches = [order[s:s + bs] for s in range(0, order.size, bs)]
        run.progress.start_epoch(epoch, len(batches))
        model.train()
        floatX = model.dtype
        # every dense parameter a view of one buffer: one vectorised optimizer
        # step, gradient norm and clipping per mini-batch (None: per array)
        # (the training data's loss_and_grad fills its gradient buffer; other
        # data, e.g. Dask's, returns new arrays that are copied in)
        flat = model.flat_params()
        flat_kw = {} if flat is None else {"flat": flat}
        params = model.params              # fixed for the epoch: no rebinding inside
        total, weight = 0.0, 0.0
        # BLAS held at one thread once for the epoch, not per forward/backward
        # (the kernels' own enter is then a counter increment)
        with blas_single_threaded:
            try:
                for b, rows in enumerate(batches):
                    # L2 as scikit-learn's MLP: alpha / 2 * ||W||^2 / (samples in the
                    # batch), samples counted by their weights
                    alpha = (float(self.alpha) / data.sw_unit / float(data.sw[rows].sum())
                             if self.alpha else 0.0)
                    try:
                        step = data.loss_and_grad(model, rows, alpha, self.tbptt_steps)
                    except NonFiniteError as exc:
                        raise _Diverged(epoch, f"the {exc.what} is not finite", b) from None
                    if step is None:             # the batch carries no weight
                        continue
                    loss, grads, w_sum = step
                    if flat is not None:
                        grads = flat.gather_grads(grads)
                    grad_norm = _global_norm(grads, flat)
                    if not math.isfinite(loss):
                        raise _Diverged(epoch, f"the loss is {loss}", b)
                    if not math.isfinite(grad_norm):
                        raise _Diverged(epoch, "the gradient is not finite", b)
                    if run.lowest == np.inf:
                        run.first_loss = loss
                        run.lowest = loss
                    if self.clip_norm is not None and grad_norm > self.clip_norm:
                        scale = floatX(self.clip_norm / grad_norm)
                        if flat is not None:
                            flat.grad *= scale
                        for name, g in grads.items():
                            if flat is None or name not in flat.grads:
                                g *= scale
                    optimizer.update_params(params, grads, **flat_kw)
                    run.t += 1
                    total += loss * w_sum
                    weight += w_sum
                    run.progress.batch_done(b, total / weight)
            finally:
                model.eval()
        if not model.all_finite():
            raise _Diverged(epoch, "the weights are not finite", len(batches) - 1)
        epoch_loss = total / weight if weight > 0 else 0.0
        reference = max(run.first_loss, run.null_loss)
        if (epoch_loss > DIVERGENCE_GROWTH * run.lowest
                and epoch_loss > DIVERGENCE_SCALE * reference):
            raise _Diverged(epoch, f"the loss grew to {epoch_loss:.4g}, more than "
                                   f"{DIVERGENCE_GROWTH:g} times the lowest of this call "
                                   f"({run.lowest:.4g})")
        run.lowest = min(run.lowest, epoch_loss)
        return epoch_loss

    def _divergence_message(self, exc, run, first):
        where = f" (mini-batch {exc.batch + 1})" if exc.batch is not None else ""
        if run.epochs_done:
            kept = f"The model keeps the weights of the last completed epoch ({run.n_iter})."
        elif first:
            kept = "No epoch completed: the estimator is left unfitted."
        else:
            kept = "No epoch of this call completed: the model keeps its previous weights."
        return (f"{type(self).__name__}: training diverged in epoch {exc.epoch}{where}: "
                f"{exc.why}. {kept} Try a lower learning_rate_init (now "
                f"{self.learning_rate_init}), clip_norm (now {self.clip_norm}) or "
                "standardize=True.")

    # -- step 4: stop and commit -------------------------------------------------
    def _end_epoch(self, run, data, epoch_loss, seconds=0.0):
        """Record the epoch, adapt the learning rate, call the callbacks; True when
        training should stop (no improvement, or a callback asked)."""
        run.n_iter += 1
        run.epochs_done += 1
        run.loss_curve.append(epoch_loss)
        run.learning_rates.append(run.learning_rate)
        val_score = None
        if data.val is not None:
            val_score = self._internal_score(run.model, *data.val)
            run.validation_scores.append(val_score)
        if run.early_stopping:
            run.n_no_improve = run.n_no_improve + 1 if val_score < run.best_score + self.tol else 0
            if val_score > run.best_score:
                run.best_score = val_score
                run.best_params = run.model.snapshot()
        else:
            run.n_no_improve = (run.n_no_improve + 1 if epoch_loss > run.best_loss - self.tol
                                else 0)
            run.best_loss = min(run.best_loss, epoch_loss)
        run.progress.end_epoch(epoch_loss, val_score, run.n_epochs - run.epochs_done)
        stop = False
        if not run.incremental and run.n_no_improve > self.n_iter_no_change:
            what = "Validation score" if run.early_stopping else "Training loss"
            what = (f"{what} did not improve more than tol={self.tol} for "
                    f"{self.n_iter_no_change} consecutive epochs.")
            if run.optimizer.reduce_on_plateau():
                run.n_no_improve = 0
                run.progress.message(f"{what} Learning rate set to "
                                     f"{run.optimizer.learning_rate:.3g}.")
            else:
                run.converged = stop = True
                run.progress.message(f"{what} Stopping.")
        if run.callbacks:
            record = EpochRecord(
                epoch=run.epochs_done, n_iter=run.n_iter, loss=float(epoch_loss),
                validation_score=val_score, learning_rate=float(run.learning_rate),
                t=run.t, time=float(seconds),
                estimator=functools.partial(self._committed_copy, run))
            # every callback sees every epoch (as Keras); any truthy answer stops
            answers = [callback(record) for callback in run.callbacks]
            if any(answers) and not stop:
                run.stopped_by_callback = stop = True
                run.progress.message("A callback asked to stop training. Stopping.")
        return stop

    def _committed_copy(self, run):
        """An independent fitted copy of the estimator with the run's current weights."""
        est = copy.copy(self)
        est.__dict__ = {k: v for k, v in self.__dict__.items()}
        frozen = copy.copy(run)
        frozen.model = copy.deepcopy(run.model)
        frozen.optimizer = copy.deepcopy(run.optimizer)
        frozen.rng = copy.deepcopy(run.rng)
        frozen.loss_curve = list(run.loss_curve)
        frozen.learning_rates = list(run.learning_rates)
        frozen.validation_scores = list(run.validation_scores)
        frozen.best_params = None         # this epoch's weights, not the best ones
        est._commit(frozen)
        return est

    def _commit(self, run):
        model = run.model
        model.eval()
        if run.early_stopping and run.best_params is not None:
            model.restore(run.best_params)
        self._model = model
        self._optimizer = run.optimizer
        self._rng = run.rng
        self.lstm_ = model.network
        self.n_iter_ = run.n_iter
        self.t_ = run.t
        self.loss_curve_ = run.loss_curve
        self.learning_rate_curve_ = run.learning_rates
        self.loss_ = run.loss_curve[-1] if run.loss_curve else None
        if run.validation_scores:
            self.validation_scores_ = run.validation_scores
            self.best_validation_score_ = max(run.validation_scores)
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
        if run.early_stopping:
            self.best_loss_ = None
        else:
            self.best_loss_ = run.best_loss if np.isfinite(run.best_loss) else None

    # ------------------------------------------------------------------
    # prediction
    # ------------------------------------------------------------------
    def _unpad_step_targets(self, y, lengths):
        """Per-step targets padded like X (an array (n, T, ...)) -> the list of their
        valid steps, when ``lengths`` is given; y itself otherwise."""
        if lengths is None or not self.return_sequences or isinstance(y, (list, tuple)):
            return y
        y = np.asarray(y)
        if y.ndim < 2:
            return y              # collect_step_targets reports the layout
        lengths = _check_lengths(lengths, y.shape[0], y.shape[1], "y")
        return [y[i, :lengths[i]] for i in range(y.shape[0])]

    def _raw_outputs(self, X, lengths=None):
        """Head outputs as float64: (n, K), or (n, T, K) with per-step outputs; lengths; ragged."""
        check_is_fitted(self)
        arr, lengths, ragged = self._validate_X(X, reset=False, lengths=lengths)
        Xp = _to_dtype(_standardize(arr, lengths, self._x_stats), self._model.dtype, "X",
                       self._x_stats[0] is not None)
        return self._model_outputs(self._model, Xp, lengths), lengths, ragged

    def _raw_step(self, x_t, state):
        """One timestep of the fitted model for a batch of streams: head outputs
        (n_streams, K) as float64 and the new network state."""
        if "_model" not in self.__dict__:     # fit sets it (check_is_fitted costs ~20 us)
            check_is_fitted(self)
        name = type(self).__name__
        if self._model.network.num_directions > 1:
            raise ValueError(f"{name} is bidirectional: its reverse direction reads the whole "
                             "sequence, so it cannot predict one step at a time; use predict "
                             "on the whole window (or fit with bidirectional=False)")
        if self._model.attention is not None:
            raise ValueError(f"{name} has attention={self._model.attention.kind!r}: its "
                             "weights are a softmax over every step of the sequence, so a new "
                             "step changes the weights of all earlier ones and there is no "
                             "state to carry; use predict on the whole window so far (or fit "
                             "with attention=None)")
        if sp.issparse(x_t):
            raise TypeError(f"{name} does not accept sparse input: pass a dense array")
        model = self._model
        if self._input_layout == "tokens":
            ids = check_token_ids(x_t, model.input_layer.vocab_size, "x_t")
            if ids.ndim != 1 or ids.shape[0] == 0:
                raise ValueError(f"x_t must be one token id per stream, shape (n_streams,), "
                                 f"got {ids.shape}")
            h_t, state = model.network.step(model.inputs(ids[:, None])[:, 0], state)
            return model.head(h_t), state
        x = _plain_step_input(x_t)
        if x is None:              # anything else: scikit-learn's checks and messages
            _refuse_complex(x_t, "x_t")
            x = check_array(x_t, ensure_2d=False, dtype=np.float64, ensure_all_finite=True,
                            input_name="x_t")
        F = self.input_size_
        if x.ndim == 1 and F == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != F or x.shape[0] == 0:
            raise ValueError(
                f"x_t must be one timestep of every stream, X[:, t]: shape (n_streams, {F})"
                f"{' or (n_streams,)' if F == 1 else ''}, got {x.shape}"
                f"{' (one stream: x_t[None])' if x.ndim == 1 else ''}")
        xp = _to_dtype(_apply_scaling(x, self._x_stats), self._model.dtype, "x_t",
                       self._x_stats[0] is not None)
        model = self._model
        h_t, state = model.network.step(xp, state)
        Z = model.head(h_t)
        return Z, state

    def attention_weights(self, X, lengths=None):
        """How much each step of each sequence counts in the attention pooling.

        Needs a fitted estimator with ``attention`` set. The weights are the
        softmax ``a_t`` over each sequence's valid steps (see the
        ``attention`` parameter): non-negative, summing to 1 over the steps
        of the sequence, the same ones that :meth:`predict` uses.

        Parameters
        ----------
        X : array-like or list of arrays
            Sequences, as in :meth:`fit`.
        lengths : array-like of int of shape (n_samples,), default=None
            For a padded ``X``, as in :meth:`fit`.

        Returns
        -------
        weights : ndarray of shape (n_samples, n_timesteps) or list of ndarray
            For a ragged ``X`` (a list, or ``lengths`` given), a list of
            ``(T_i,)`` arrays; otherwise one array (every sequence has all
            ``n_timesteps`` steps).

        Examples
        --------
        >>> import numpy as np, clstm
        >>> X = np.random.default_rng(0).normal(size=(64, 10, 1))
        >>> reg = clstm.LSTMRegressor(attention="additive", max_iter=3, random_state=0)
        >>> a = reg.fit(X, X[:, 4, 0]).attention_weights(X)
        >>> a.shape, bool(np.allclose(a.sum(axis=1), 1.0))
        ((64, 10), True)
        """
        check_is_fitted(self)
        if self._model.attention is None:
            raise ValueError(f"{type(self).__name__} was fitted with attention=None: there "
                             "are no attention weights (fit with attention='additive' or "
                             "'dot')")
        arr, lengths, ragged = self._validate_X(X, reset=False, lengths=lengths)
        Xp = _to_dtype(_standardize(arr, lengths, self._x_stats), self._model.dtype, "X",
                       self._x_stats[0] is not None)
        weights = _over_row_batches(Xp, lengths, self._model.attention_weights, time_axis=1)
        return split_steps(weights, lengths) if ragged else weights

    @staticmethod
    def _model_outputs(model, Xp, lengths):
        """The model's float64 outputs for standardised X, per step padded to X's T."""
        return _over_row_batches(
            Xp, lengths, lambda Xb, lb: np.asarray(model.predict_raw(Xb, lb), np.float64),
            time_axis=1 if model.return_sequences else None)

    def _flat_step_predictions(self, X, y, sample_weight, lengths=None):
        """Per-step targets and predictions over all valid steps, flattened,
        with each sequence's weight repeated over its steps (for score)."""
        pred = self.predict(X, lengths=lengths)
        y = self._unpad_step_targets(y, lengths)
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

    # ------------------------------------------------------------------
    # saving and loading: each object hands over its own state
    # ------------------------------------------------------------------
    def save(self, path):
        """Save the fitted estimator to ``path`` (clstm's versioned .npz format; see clstm.load).

        The file is written atomically; the directory must exist.
        """
        meta, arrays = self._get_state()
        _persistence.write(path, meta, arrays)

    @classmethod
    def load(cls, path):
        """Load an estimator written by :meth:`save`; it must be of this class."""
        est = load(path)
        if not isinstance(est, cls):
            raise ValueError(f"{path!r} holds a {type(est).__name__}, not a {cls.__name__}")
        return est

    _FITTED = ("n_features_in_", "input_size_", "_input_layout", "n_iter_", "t_", "loss_",
               "loss_curve_", "best_loss_", "validation_scores_", "best_validation_score_",
               "learning_rate_curve_", "n_timesteps_in_")

    def _get_state(self):
        """(metadata, arrays) of the fitted estimator, in the layout _persistence documents."""
        check_is_fitted(self)
        model_meta, model_arrays = self._model.get_state()
        opt_meta, opt_arrays = self._optimizer.get_state()
        arrays = {f"model/{k}": v for k, v in model_arrays.items()}
        arrays.update({f"optimizer/{k}": v for k, v in opt_arrays.items()})
        x_mean, x_scale = self._x_stats
        if x_mean is not None:
            arrays["scaling/x_mean"], arrays["scaling/x_scale"] = x_mean, x_scale
        fitted = {k: _jsonable(getattr(self, k)) for k in self._FITTED}
        if hasattr(self, "feature_names_in_"):
            fitted["feature_names_in_"] = [str(f) for f in self.feature_names_in_]
        target_meta, target_arrays = self._get_target_state()
        fitted.update(target_meta)
        arrays.update(target_arrays)
        name, keys, pos, has_gauss, cached = self._rng.get_state()
        arrays["rng/mt_keys"] = keys
        if self.embeddings is not None:     # the pretrained vectors given as a parameter
            arrays["params/embeddings"] = np.array(self.embeddings)
        meta = {"estimator": type(self).__name__, "params": self._encode_params(),
                "fitted": fitted, "model": model_meta, "optimizer": opt_meta,
                "rng": {"mt": [name, int(pos), int(has_gauss), float(cached)]}}
        return meta, arrays

    def _encode_params(self):
        params = {}
        for k, v in self.get_params(deep=False).items():
            if k == "random_state" and not _is_int(v):
                v = None
            elif k == "class_weight" and isinstance(v, dict):
                v = {"__dict_items__": [[_jsonable(a), _jsonable(b)] for a, b in v.items()]}
            elif k == "dtype":
                v = _dtype_name(v)
            elif k == "embeddings" and v is not None:
                v = "params/embeddings"       # stored as an array, see _get_state
            params[k] = _jsonable(v)
        return params

    @classmethod
    def _from_state(cls, meta, arrays):
        """The estimator :meth:`_get_state` described, every array and recorded
        size checked against the weights."""
        params = dict(meta["params"])
        cw = params.get("class_weight")
        if isinstance(cw, dict) and "__dict_items__" in cw:
            params["class_weight"] = {a: b for a, b in cw["__dict_items__"]}
        if params.get("embeddings") is not None:
            params["embeddings"] = arrays[params["embeddings"]]
        est = cls(**params)
        est._validate_hyperparameters()
        model = cls._model_type.from_state(meta["model"], {k[len("model/"):]: v
                                                         for k, v in arrays.items()
                                                         if k.startswith("model/")})
        est._model = model
        est._check_architecture()
        est.lstm_ = model.network
        est._optimizer = optimizer_from_state(
            meta["optimizer"], {k[len("optimizer/"):]: v for k, v in arrays.items()
                                if k.startswith("optimizer/")}, model.params)
        if type(est._optimizer) is not type(make_optimizer(est)):
            raise ValueError(f"the optimizer is a {type(est._optimizer).__name__}, but "
                             f"solver={est.solver!r}")
        name, pos, has_gauss, cached = meta["rng"]["mt"]
        keys = arrays["rng/mt_keys"]
        if keys.dtype != np.uint32 or keys.shape != (624,):
            raise ValueError(f"rng/mt_keys has shape {keys.shape} / dtype {keys.dtype}, "
                             "expected (624,) / uint32")
        est._rng = np.random.RandomState()
        est._rng.set_state((name, keys, pos, has_gauss, cached))
        fitted = dict(meta["fitted"])
        est._set_fitted(fitted)
        est._x_stats = _check_scaling(arrays, "x", model.network.input_size)
        est._set_target_state(fitted, arrays, model.n_outputs)
        if model.loss != est._loss:
            raise ValueError(f"the model is trained on the {model.loss!r} loss, but a "
                             f"{cls.__name__} with these targets uses {est._loss!r}")
        if est._optimizer.t != est.t_:
            raise ValueError(f"the optimizer has taken {est._optimizer.t} steps, but t_ is "
                             f"{est.t_}")
        return est

    @classmethod
    def _from_weights(cls, network, head_weight, head_bias, return_sequences, x_stats,
                      target_fitted, target_arrays, random_state=None):
        """A fitted estimator around weights trained elsewhere (clstm.interop's
        Keras and torch imports).

        ``network`` and the head are used as they are; ``x_stats`` is
        (mean, scale) or (None, None) (``standardize`` follows it); the target
        state is what :meth:`_set_target_state` reads from a file (a
        regressor's ``n_outputs_``, ``_y_1d`` and ``scaling/y_*``; a
        classifier's ``classes``). The estimator has no training history
        (``n_iter_ = t_ = 0``, an empty ``loss_curve_``) and a fresh optimizer:
        ``partial_fit`` / ``warm_start`` continue from these weights with a
        new optimizer state. ``random_state`` seeds its shuffling generator, as
        in :meth:`fit`. Every array is checked as :meth:`_from_state` does.
        """
        est = cls(**network_params(network), return_sequences=bool(return_sequences),
                  standardize=x_stats[0] is not None, random_state=random_state)
        est._validate_hyperparameters()
        est._set_target_state(target_fitted, target_arrays, np.shape(head_bias)[0])
        est._model = SequenceModel(network, head_weight, head_bias, est._loss, return_sequences)
        est._check_architecture()
        est.lstm_ = network
        est._optimizer = make_optimizer(est)
        est._rng = copy.deepcopy(check_random_state(est.random_state))
        input_size = network.get_config()["input_size"]
        est._set_fitted({"n_features_in_": input_size, "input_size_": input_size,
                         "_input_layout": "3d", "n_iter_": 0, "t_": 0, "loss_": None,
                         "loss_curve_": [], "best_loss_": None, "validation_scores_": None,
                         "best_validation_score_": None})
        scaling = {}
        if x_stats[0] is not None:
            scaling = {"scaling/x_mean": x_stats[0], "scaling/x_scale": x_stats[1]}
        est._x_stats = _check_scaling(scaling, "x", input_size)
        return est

    def _fitted_input_checks(self, need):
        """Check the recorded input layout against the network; the features per sample."""
        input_size = self._model.network.input_size
        has_embedding = self._model.input_layer is not None
        layout = need("_input_layout",
                      lambda v: v in (("tokens",) if has_embedding else ("2d", "3d")),
                      "'tokens' (the model has an embedding)" if has_embedding else "'2d' or '3d'")
        need("input_size_", lambda v: v == (1 if layout == "2d" else input_size),
             f"the network's input size ({input_size}) for {layout} input")
        return need("n_features_in_",
                    lambda v: _is_int(v) and (v >= 1 if layout == "2d" else
                                              v == 1 if layout == "tokens" else
                                              v == input_size),
                    "the number of features the network reads")

    def _set_fitted(self, fitted):
        def need(key, ok, expected):
            if key not in fitted or not ok(fitted[key]):
                raise ValueError(f"fitted attribute {key} is {fitted.get(key)!r}, expected "
                                 f"{expected}")
            return fitted[key]

        def finite(v):
            return _is_real(v) and np.isfinite(v)

        n_features = self._fitted_input_checks(need)
        n_iter = need("n_iter_", lambda v: _is_int(v) and v >= 0, "an int >= 0")
        need("t_", lambda v: _is_int(v) and v >= 0, "an int >= 0")
        curve = need("loss_curve_", lambda v: isinstance(v, list) and len(v) == n_iter
                     and all(finite(x) for x in v), f"a list of {n_iter} finite losses")
        need("loss_", lambda v: v == (curve[-1] if curve else None), "the last loss of the curve")
        need("best_loss_", lambda v: v is None or finite(v), "None or a finite loss")
        need("validation_scores_", lambda v: v is None or (isinstance(v, list) and all(
            finite(x) for x in v)), "None or a list of scores")
        need("best_validation_score_", lambda v: v is None or finite(v), "None or a score")
        # files written before schedules (always constant) and forecast
        fitted.setdefault("learning_rate_curve_", [float(self.learning_rate_init)] * n_iter)
        fitted.setdefault("n_timesteps_in_", None)
        need("learning_rate_curve_", lambda v: isinstance(v, list) and len(v) == n_iter
             and all(finite(x) and x > 0 for x in v), f"a list of {n_iter} positive rates")
        need("n_timesteps_in_", lambda v: v is None or (_is_int(v) and v >= 1),
             "None or an int >= 1")
        if "feature_names_in_" in fitted:
            need("feature_names_in_", lambda v: isinstance(v, list) and len(v) == n_features
                 and all(isinstance(f, str) for f in v), f"{n_features} column names")
        for key in self._FITTED:
            setattr(self, key, fitted[key])
        if "feature_names_in_" in fitted:
            self.feature_names_in_ = np.asarray(fitted["feature_names_in_"], dtype=object)



def load(path):
    """Load an estimator written by ``save`` (any clstm estimator class).

    Every array is checked (finite, shapes and dtypes against the network's
    configuration) and every recorded size against the weights; a file that
    is not a valid clstm model raises ValueError.
    """
    meta, arrays = _persistence.read(path)
    try:
        cls = _ESTIMATORS.get(meta["estimator"])
        if cls is None and meta["estimator"] in _ESTIMATOR_MODULES:   # not imported yet
            importlib.import_module(_ESTIMATOR_MODULES[meta["estimator"]])
            cls = _ESTIMATORS.get(meta["estimator"])
        if cls is None:
            raise ValueError(f"unknown estimator class {meta['estimator']!r}")
        return cls._from_state(meta, arrays)
    except ValueError as exc:
        raise _persistence.unreadable(path, str(exc)) from None
    except (KeyError, TypeError, IndexError, AttributeError, OverflowError) as exc:
        raise _persistence.unreadable(
            path, f"missing or malformed entry ({type(exc).__name__}: {exc})") from None


BaseLSTMEstimator.__signature__ = _constructor_signature(BaseLSTMEstimator)


# ----------------------------------------------------------------------
# the state of one fit call
# ----------------------------------------------------------------------
class _Transaction:
    committed = False


class _TrainingData:
    """A fit's samples: X (n, T, F) standardised, lengths, the valid-step mask,
    targets Y, entry weights for the loss and the score, sample weights
    (divided by the power of two sw_unit), train/validation rows.

    The training loop reaches the samples through :meth:`to_model_units` and
    :meth:`loss_and_grad`; clstm._dask's data, whose sequences stay on Dask
    workers, provides the same two methods.
    """

    def __init__(self, X, lengths, steps, Y, W_loss, W_score, sw, sw_unit):
        self.X, self.lengths, self.steps, self.Y = X, lengths, steps, Y
        self.W_loss, self.W_score, self.sw, self.sw_unit = W_loss, W_score, sw, sw_unit
        self.train_idx = None
        self.val = None           # (X, lengths, Y, W_score) of the validation set

    def to_model_units(self, est, dtype):
        """Cast X and the targets to the model's dtype (targets standardised);
        returns the loss of a constant prediction (the divergence reference)."""
        self.X = _to_dtype(self.X, dtype, "X", est._x_stats[0] is not None)
        self.Y = est._targets_in_model_units(self.Y, dtype)
        return est._null_loss(self.Y, self.W_loss)

    def loss_and_grad(self, model, rows, alpha, tbptt_steps):
        """(loss, grads, weight) of the mini-batch ``rows``, None if it carries no weight.
        The gradients land in the model's flat gradient buffer when the training
        loop gathered one (:meth:`~clstm._model.TrainableModel.flat_params`)."""
        flat = model.__dict__.get("_flat")
        flat = {} if flat is None else {"flat": flat}
        per_step = self.W_loss.ndim == 2
        lengths = self.lengths[rows]
        T_b = int(lengths.max())
        Wb = _take(self.W_loss, rows, T_b, per_step)
        w_sum = float(Wb.sum())
        if w_sum == 0.0:
            return None
        loss, grads = model.loss_and_grad(self.X[rows, :T_b], lengths,
                                          _take(self.Y, rows, T_b, per_step), Wb,
                                          alpha=alpha, tbptt_steps=tbptt_steps, **flat)
        return loss, grads, w_sum


class _Run:
    """Model, optimizer, generator and history of one fit / partial_fit call."""

    def __init__(self, model, optimizer, rng, n_iter, t, loss_curve, best_loss,
                 validation_scores, learning_rates):
        self.model, self.optimizer, self.rng = model, optimizer, rng
        self.n_iter, self.t, self.loss_curve = n_iter, t, loss_curve
        self.best_loss, self.validation_scores = best_loss, validation_scores
        self.learning_rates = learning_rates
        self.learning_rate = optimizer.learning_rate
        self.callbacks = ()
        self.stopped_by_callback = False
        self.best_score, self.best_params = -np.inf, None
        self.n_no_improve = 0
        self.epochs_done = 0
        self.converged = self.interrupted = False
        # divergence reference: the first mini-batch loss of the call and the
        # lowest loss seen since
        self.first_loss = 0.0
        self.lowest = np.inf

    def snapshot(self):
        return self.model.snapshot(), copy.deepcopy(self.optimizer), self.t

    def restore(self, snapshot):
        params, self.optimizer, self.t = snapshot
        self.model.restore(params)


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """What a ``fit`` callback receives after each epoch (read-only).

    Attributes
    ----------
    epoch : int
        Epochs completed in this ``fit`` call (1 for the first).
    n_iter : int
        Epochs completed in total (``n_iter_`` so far, warm starts included).
    loss : float
        The epoch's training loss (an entry of ``loss_curve_``).
    validation_score : float or None
        The epoch's validation score (R^2 / accuracy) when there is a
        validation set (``validation_data``, or early stopping's held-out
        part), else None.
    learning_rate : float
        The step size used in this epoch (an entry of ``learning_rate_curve_``).
    t : int
        Optimizer steps (mini-batch updates) taken so far.
    time : float
        Seconds the epoch's training took.

    Methods
    -------
    estimator()
        A fitted, independent copy of the estimator with the weights of this
        epoch (not yet the best ones under early stopping): save it for a
        checkpoint (``record.estimator().save(path)``) or evaluate it. It
        costs a copy of the model, so call it only when needed.
    """

    epoch: int
    n_iter: int
    loss: float
    validation_score: object
    learning_rate: float
    t: int
    time: float
    estimator: object = dataclasses.field(repr=False, compare=False)


def _check_callbacks(callbacks):
    """A tuple of callables from None, one callable or a sequence of them."""
    if callbacks is None:
        return ()
    if callable(callbacks):
        return (callbacks,)
    if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks must be a callable or a list of callables, got "
                        f"{type(callbacks).__name__}")
    callbacks = tuple(callbacks)
    for i, cb in enumerate(callbacks):
        if not callable(cb):
            raise TypeError(f"callbacks[{i}] is a {type(cb).__name__}, not a callable (each "
                            "callback is called with the epoch's record)")
    return callbacks


def _unpack_validation_data(validation_data):
    """(X, y, lengths, sample_weight) from the forms ``fit`` accepts."""
    if isinstance(validation_data, dict):
        unknown = set(validation_data) - {"X", "y", "lengths", "sample_weight"}
        if unknown or "X" not in validation_data or "y" not in validation_data:
            raise TypeError(f"validation_data as a dict needs the keys 'X' and 'y' and may have "
                            f"'lengths' and 'sample_weight'; got {sorted(validation_data)}")
        return (validation_data["X"], validation_data["y"], validation_data.get("lengths"),
                validation_data.get("sample_weight"))
    if isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3):
        X, y, *rest = validation_data
        return X, y, (rest[0] if rest else None), None
    raise TypeError("validation_data must be (X_val, y_val), (X_val, y_val, lengths_val) or a "
                    "dict with keys 'X', 'y' and optionally 'lengths', 'sample_weight'; got "
                    f"{type(validation_data).__name__}"
                    + (f" of length {len(validation_data)}"
                       if isinstance(validation_data, (tuple, list)) else ""))


class _Diverged(Exception):
    def __init__(self, epoch, why, batch=None):
        super().__init__(epoch, why, batch)
        self.epoch, self.why, self.batch = epoch, why, batch


# ----------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------
def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _dtype_name(dtype):
    try:
        return np.dtype(dtype).name
    except TypeError:
        return repr(dtype)


def _plain_step_input(x_t):
    """x_t as float64 when it is a non-empty, finite 1-D or 2-D float ndarray
    (what check_array would return for it, without its ~100 us of generic
    checks: a streaming step is a few us); None for anything else."""
    if (type(x_t) is np.ndarray and x_t.dtype.kind == "f" and 1 <= x_t.ndim <= 2
            and x_t.size and np.isfinite(x_t).all()):
        return x_t.astype(np.float64, copy=False)
    return None


def _refuse_complex(value, name):
    """A short ValueError for complex input (scikit-learn's wording, without the array)."""
    if value is None or isinstance(value, str):
        return
    dtypes = getattr(value, "dtypes", None)      # DataFrame
    if dtypes is not None and not hasattr(value, "dtype"):
        kinds = {getattr(d, "kind", "") for d in dtypes}
    else:
        dtype = getattr(value, "dtype", None)
        if dtype is None and isinstance(value, (list, tuple)):
            try:
                dtype = np.asarray(value).dtype
            except (ValueError, TypeError):   # ragged: look at the sequences
                for i, v in enumerate(value):
                    _refuse_complex(v, f"{name}[{i}]")
                return
        kinds = {getattr(dtype, "kind", "")}
    if "c" in kinds:
        shape = getattr(value, "shape", None)
        shape = f" of shape {shape}" if shape is not None else ""
        raise ValueError(f"Complex data not supported: {name}{shape} is complex; clstm needs "
                         "real values (take .real, .imag or abs() first)")


def _bad_ndim_message(name, X, ndim):
    shape = getattr(X, "shape", ())
    layouts = ("X of shape (n_samples, n_timesteps, n_features), (n_samples, n_timesteps) for "
               "univariate sequences, or a list of (n_timesteps_i[, n_features]) arrays")
    if ndim == 0:
        return f"X is a scalar ({X!r}); {name} needs sequences: {layouts}"
    if ndim == 1:
        return (f"X is 1-D (shape {shape}): one series, not a set of sequences. Reshape your "
                f"data into sequences: {name} needs {layouts}. To learn from one series, cut it "
                "into windows: X, y = clstm.make_windows(series, lookback=...) (reshape(-1, 1) "
                "would make each value a sequence of length 1)")
    return f"X is {ndim}-D (shape {shape}); {name} needs {layouts}"


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


def _check_lengths(lengths, n, T, what="X"):
    """``lengths`` as an int64 array (n,) with every entry in [1, T]."""
    _refuse_complex(lengths, "lengths")
    arr = np.asarray(lengths)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"lengths must be a 1-D array of ints (the valid steps of each "
                         f"sequence), got {arr.dtype} of shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"lengths has {arr.shape[0]} entries but {what} has {n} sequences")
    if arr.size and (arr.min() < 1 or arr.max() > T):
        raise ValueError(f"lengths must be in [1, {T}] (the padded length of {what}), got "
                         f"values in [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


def _unpad(X, lengths):
    """The ragged list [X[i, :lengths[i]]] of a padded 2-D (univariate) or 3-D X."""
    if isinstance(X, (list, tuple)) and _is_ragged(X):
        raise ValueError("lengths applies to a padded array X (n_samples, n_timesteps[, "
                         "n_features]); X is already a list of sequences of different "
                         "lengths, pass it without lengths")
    if hasattr(X, "to_numpy"):
        X = X.to_numpy()
    X = np.asarray(X)
    if X.ndim not in (2, 3):
        raise ValueError(f"lengths needs a padded X of shape (n_samples, n_timesteps[, "
                         f"n_features]), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"X has shape {X.shape}: no sequences")
    lengths = _check_lengths(lengths, X.shape[0], X.shape[1])
    if X.ndim == 2:
        return [X[i, :lengths[i], None] for i in range(X.shape[0])]
    return [X[i, :lengths[i]] for i in range(X.shape[0])]


def _check_ragged(X):
    """List of float64 (T_i, F) arrays, all with the same F, each with T_i >= 1."""
    seqs = []
    ndim = None
    for i, x in enumerate(X):
        if sp.issparse(x):
            raise TypeError("sparse sequences are not supported; pass dense arrays")
        _refuse_complex(x, f"X[{i}]")
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


def _is_dask_collection(X):
    """True for a Dask collection (without importing dask)."""
    return (type(X).__module__.split(".")[0] in ("dask", "dask_expr")
            and callable(getattr(X, "__dask_graph__", None)))


def _dask_dispatch(method):
    """Prediction method decorator: a Dask array X goes to clstm._dask (one lazy
    task per block of samples); anything else to the method itself."""
    @functools.wraps(method)
    def dispatch(self, X, *args, **kwargs):
        if _is_dask_collection(X):
            from clstm import _dask
            return _dask.predict_blocks(self, method.__name__, X, *args, **kwargs)
        return method(self, X, *args, **kwargs)
    return dispatch


def _row_keys(A):
    """One bytes key per row of A (n, ...): equal keys <=> bitwise equal rows."""
    flat = np.ascontiguousarray(A).reshape(A.shape[0], -1)
    return flat.view(np.dtype((np.void, flat.shape[1] * flat.itemsize)))[:, 0]


def _digest_units(arr, Y):
    """The powers of two per column (of each row flattened) of the sequences and the
    targets that :func:`_row_digests` divides by before its order key."""
    n = arr.shape[0]
    return tuple(_power_of_two(np.max(np.abs(np.asarray(A, dtype=np.float64).reshape(n, -1)),
                                      axis=0)) for A in (arr, Y))


def _row_digests(arr, lengths, Y, units):
    """Two 128-bit BLAKE2b digests of each sample, (n, 32) uint8.

    The first, the order key, reads the sequence and the targets divided by
    ``units`` (:func:`_digest_units` of the whole data set: powers of two per
    column, so the order and hence the fit do not change when a feature or a
    target is scaled by a power of two); the second, the identity, reads the
    exact float64 bytes. Both also read the length. Equal digests <=>
    identical samples (sequence, padding included, length and targets), up to
    a 2^-128 collision. Computed per row, so wherever the row is (a Dask
    worker, given the data set's units).
    """
    n = arr.shape[0]
    X = np.ascontiguousarray(arr, dtype=np.float64).reshape(n, -1)
    L = np.ascontiguousarray(lengths, dtype=np.int64)
    Yf = np.ascontiguousarray(np.asarray(Y).reshape(n, -1), dtype=np.float64)
    Xs, Ys = X / units[0], Yf / units[1]
    out = bytearray()
    for i in range(n):
        for x, y in ((Xs[i], Ys[i]), (X[i], Yf[i])):
            h = hashlib.blake2b(x, digest_size=16)
            h.update(L[i:i + 1])
            h.update(y)
            out += h.digest()
    return np.frombuffer(bytes(out), dtype=np.uint8).reshape(n, 32)


def _merge_by_digest(digests, sw, keep_order):
    """Groups of identical samples from their digests: (first, merged weights).

    ``first`` holds the index of each group's first sample, the groups sorted
    by digest (canonical: the same for any order of the input and any split of
    a weight into repetitions), or with ``keep_order`` in the order of their
    first occurrence; ``merged`` the sum of each group's weights.
    """
    n = digests.shape[0]
    _, first, group = np.unique(_row_keys(digests), return_index=True, return_inverse=True)
    group = group.reshape(n)
    if keep_order:
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        first, group = first[order], rank[group]
    return first, np.bincount(group, weights=sw, minlength=first.size)


def _merge_duplicates(arr, lengths, Y, sw, per_step, keep_order):
    """Merge identical samples (sequence, length, targets) into one, summing their weights.

    The samples come out in a canonical order, sorted by their digests
    (:func:`_row_digests`; the same for any order of the input and any split
    of a weight into repetitions), or with ``keep_order`` in the order of
    their first occurrence. Targets past each length (padding) are set to 0.
    """
    n = arr.shape[0]
    if per_step:
        Y = Y.copy()
        Y[np.arange(Y.shape[1])[None, :] >= lengths[:, None]] = 0
    if n < 2:
        return arr, lengths, Y, sw
    digests = _row_digests(arr, lengths, Y, _digest_units(arr, Y))
    first, merged = _merge_by_digest(digests, sw, keep_order)
    if keep_order and first.size == n:
        return arr, lengths, Y, sw             # nothing to merge, order kept
    return arr[first], lengths[first], Y[first], merged


def _power_of_two(x):
    """The power of two 2**floor(log2(x)) (elementwise; 1 where x is 0 or not finite)."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x) & (x > 0)
    return np.where(ok, np.ldexp(1.0, np.frexp(np.where(ok, x, 1.0))[1] - 1), 1.0)


def _location_scale(V, w):
    """Weighted mean and standard deviation of each column of V (N, K), for any finite V.

    Computed on V divided by a power of two per column (exact) and around
    one of its rows, so nothing overflows and a constant column gets its
    value as mean exactly. A column that does not vary (std <= 1e-12 |mean|)
    gets scale 1.
    """
    keep = w > 0
    V, w = V[keep], w[keep]
    unit = _power_of_two(np.max(np.abs(V), axis=0))
    Vs = V / unit
    ref = Vs[0]
    total = w.sum()
    mean_s = ref + (w[:, None] * (Vs - ref)).sum(axis=0) / total
    std_s = np.sqrt((w[:, None] * np.square(Vs - mean_s)).sum(axis=0) / total)
    mean, scale = mean_s * unit, std_s * unit
    varies = (std_s > 1e-12 * np.abs(mean_s)) & (scale >= np.finfo(np.float64).tiny)
    return mean, np.where(varies, scale, 1.0)


def _input_statistics(arr, steps, sw):
    """(mean, scale) of each input feature (the last axis of arr) over the valid
    steps (and, for maps, every pixel), each weighted by its sample's weight."""
    V = arr[steps]
    per_step = V.size // (V.shape[0] * V.shape[-1])
    w = np.repeat(np.repeat(sw, steps.sum(axis=1)), per_step)
    return _location_scale(V.reshape(-1, V.shape[-1]), w)


def _apply_scaling(A, stats):
    """(A - mean) / scale over the last axis; A itself for stats (None, None).

    Computed on A, mean and scale divided by a power of two per column: the
    same bits as the plain formula wherever that does not overflow, and no
    overflow for any finite A within the range of the statistics.
    """
    mean, scale = stats
    if mean is None:
        return A
    unit = _power_of_two(np.maximum(np.abs(mean), scale))
    return (A / unit - mean / unit) / (scale / unit)


def _to_dtype(A, dtype, name, standardized):
    """A cast to the model's dtype; a ValueError if a value does not fit in it.
    Token ids (int64) stay as they are."""
    if A.dtype.kind in "iu":
        return A
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(A, dtype=dtype)
    if not np.isfinite(out).all():
        biggest = float(np.max(np.abs(A)))
        hint = ("dtype='float64'" if dtype == np.float32 else "rescale it")
        if not standardized:
            hint = "standardize=True or " + hint
        raise ValueError(f"{name} has values of magnitude up to {biggest:.3g}"
                         f"{' after standardisation' if standardized else ''}, beyond the range "
                         f"of {np.dtype(dtype).name} ({np.finfo(dtype).max:.3g}); use {hint}")
    return out


def _check_scaling(arrays, prefix, size):
    """(mean, scale) of the file's scaling/{prefix}_mean and _scale, checked, or (None, None)."""
    keys = (f"scaling/{prefix}_mean", f"scaling/{prefix}_scale")
    present = [k in arrays for k in keys]
    if not any(present):
        return None, None
    if not all(present):
        raise ValueError(f"only one of {keys} is present")
    mean, scale = (arrays[k] for k in keys)
    for key, value in zip(keys, (mean, scale)):
        if value.shape != (size,) or value.dtype != np.float64 or not np.isfinite(value).all():
            raise ValueError(f"{key} has shape {value.shape} / dtype {value.dtype}, expected "
                             f"{(size,)} / float64, finite")
    if not np.all(scale > 0):
        raise ValueError(f"{keys[1]} has values <= 0")
    return mean, scale


def _standardize(arr, lengths, stats):
    """Standardised sequences (n, T, F), zero past each sequence's length."""
    out = _apply_scaling(arr, stats)
    T = arr.shape[1]
    if stats[0] is not None and lengths.min() < T:
        out[np.arange(T)[None, :] >= lengths[:, None]] = 0.0
    return out


def _take(A, rows, T, per_step):
    out = A[rows]
    if per_step and T is not None:
        out = out[:, :T]
    return out


def _over_row_batches(Xp, lengths, compute, time_axis=None):
    """``compute(X_b, lengths_b)`` over batches of _PREDICT_BATCH sequences, each
    cut to its longest sequence, the results concatenated along the rows; with
    ``time_axis``, each batch's result is zero-padded back to X's n_timesteps on
    that axis (per-step outputs of a batch of shorter sequences)."""
    T = Xp.shape[1]
    parts = []
    for s in range(0, Xp.shape[0], _PREDICT_BATCH):
        rows = slice(s, s + _PREDICT_BATCH)
        T_b = int(lengths[rows].max())
        part = compute(Xp[rows, :T_b], lengths[rows])
        if time_axis is not None and T_b < T:
            pad = [(0, 0)] * part.ndim
            pad[time_axis] = (0, T - T_b)
            part = np.pad(part, pad)
        parts.append(part)
    return np.concatenate(parts, axis=0)


def _global_norm(grads, flat=None):
    """The Euclidean norm of all gradients together, summed in float64; the
    ones in ``flat``'s buffer (a FlatParameters) as one reduction."""
    total = 0.0
    if flat is not None:
        total = float(flat.grad_norm()) ** 2
        if len(grads) == len(flat.grads):       # (a training step: nothing else)
            return math.sqrt(total)
        grads = {k: g for k, g in grads.items() if k not in flat.grads}
    for g in grads.values():
        total += sum_of_squares(np.ascontiguousarray(g.ravel()))   # (a RowGradient: its rows)
    return math.sqrt(total)


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
