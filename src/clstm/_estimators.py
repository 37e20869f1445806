"""scikit-learn estimators on the compiled LSTM: LSTMRegressor and LSTMClassifier."""

import numpy as np
from scipy.special import expit, log_expit, log_softmax, softmax
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d

from clstm._base import (
    BaseLSTMEstimator,
    _apply_scaling,
    _check_scaling,
    _dask_dispatch,
    _is_int,
    _location_scale,
    _power_of_two,
    _to_dtype,
    collect_step_targets,
    load,
    pad_steps,
    split_steps,
)
from clstm._validation import InvalidParameterError

__all__ = ["LSTMRegressor", "LSTMClassifier", "load"]

_COMMON_PARAMS = """
    hidden_size : int, default=50
        Hidden units per layer and direction. 50 is the size of the Keras
        examples (``LSTM(50)``): enough capacity for a typical univariate or
        few-feature forecasting or sequence-classification problem while a
        training step stays around a millisecond for batches of 32 x 50 steps.
    num_layers : int, default=1
        Stacked LSTM layers (each reads the full output sequence of the one
        below, as Keras' ``return_sequences=True`` stacking).
    bidirectional : bool, default=False
        Add a reverse-time direction; the head then reads the forward state at
        each sequence's own last step concatenated with the reverse state at
        t = 0.
    dropout : float, default=0.0
        Dropout on the outputs of every layer but the last, in training only.
    recurrent_dropout : float, default=0.0
        Dropout on h_{t-1} in the recurrent product with one mask per sequence
        and layer held over all steps (Gal & Ghahramani; Keras semantics).
        With ``tbptt_steps``, a new mask is drawn per chunk.
    return_sequences : bool, default=False
        Put the Dense head on every timestep; targets are then per step.
    attention : {None, "additive", "dot"}, default=None
        Attention pooling: the head reads ``sum_t a_t h_t`` over the top
        layer's outputs ``h_t`` (both directions for a bidirectional network)
        instead of the last state, with ``a`` a softmax of a score over each
        sequence's valid steps only (padding never counts). "additive":
        ``e_t = v . tanh(W h_t + b)`` (Bahdanau et al. 2015; the
        feed-forward attention of Raffel & Ellis 2016 and Yang et al. 2016);
        "dot": ``e_t = q . h_t / sqrt(d)`` with a learned query ``q``. Helps
        where the information sits at some step of a long sequence rather
        than at its end. :meth:`attention_weights` returns the ``a_t``.
        Needs ``return_sequences=False`` and ``tbptt_steps=None``;
        ``predict_step`` is not available (each new step re-weights all
        earlier ones). ONNX export includes it.
    dtype : {"float32", "float64"}, default="float32"
        Precision of weights and computation; float32 is about twice as fast
        and accurate enough for training (predictions are returned as float64).
    solver : {"adam", "sgd", "rmsprop"}, default="adam"
        Adam needs no tuning of the learning rate on most problems, which is
        why it is the default here, in Keras and in scikit-learn's MLP.
    learning_rate_init : float, default=1e-3
        Step size (Keras' and PyTorch's Adam default); with a schedule, the
        step size of the first epoch.
    learning_rate : {"constant", "invscaling", "adaptive", "cosine"}, default="constant"
        Learning-rate schedule, per epoch, for every solver (scikit-learn's
        MLP names). Epoch ``e`` (1-based, counted over warm starts and
        partial_fit calls) uses:

        - "constant": ``learning_rate_init``;
        - "invscaling": ``learning_rate_init / e ** power_t`` (scikit-learn's
          MLP counts samples seen instead of epochs);
        - "adaptive": reduce on plateau, as scikit-learn's MLP: whenever
          the quantity that decides stopping (the validation score with
          early stopping, else the training loss) has not improved by
          ``tol`` for more than ``n_iter_no_change`` epochs, the rate is
          divided by 5 and the count restarts; training stops only when the
          rate is already at or below 1e-6 (Keras' ``ReduceLROnPlateau``
          with ``factor=0.2``, ``patience=n_iter_no_change``,
          ``min_delta=tol``);
        - "cosine": cosine annealing from ``learning_rate_init`` down to 1%
          of it over ``max_iter`` epochs, then a warm restart (Loshchilov &
          Hutter's SGDR; a warm-started fit continues the cycle).

        The rate of each epoch is recorded in ``learning_rate_curve_``; the
        schedule's position is part of the optimizer's state (it survives
        warm_start, partial_fit, pickling and save/load).

        >>> import numpy as np, clstm
        >>> X = np.random.default_rng(0).normal(size=(32, 5, 1))
        >>> reg = clstm.LSTMRegressor(hidden_size=4, max_iter=3, learning_rate="invscaling",
        ...                           power_t=1.0, random_state=0).fit(X, X[:, 0, 0])
        >>> [round(r, 6) for r in reg.learning_rate_curve_]
        [0.001, 0.0005, 0.000333]

    power_t : float, default=0.5
        Exponent of ``learning_rate="invscaling"``.
    batch_size : int or "auto", default=32
        Sequences per mini-batch (capped at the number of samples); 32 is the
        Keras default, a good trade between gradient noise and speed. "auto"
        means min(32, n_samples), as in scikit-learn. Identical samples
        (same sequence and targets) count once, with their weights summed,
        so that a sample of integer weight k is exactly k copies of it.
    max_iter : int, default=200
        Maximum number of epochs (passes over the data), scikit-learn's MLP
        default. Small problems (a few hundred sequences, a handful of
        mini-batches per epoch) need one to two hundred epochs at Adam's
        1e-3; training stops earlier once the loss stops improving by ``tol``
        for ``n_iter_no_change`` epochs, so larger data sets rarely run them all.
    shuffle : bool, default=True
        Shuffle the samples every epoch. The permutations are drawn over the
        samples in an order given by their content, so the fit does not
        depend on the order of ``X``; with ``shuffle=False`` the samples are
        visited in the order given.
    alpha : float, default=1e-4
        L2 penalty, as scikit-learn's MLP: ``alpha / 2 * sum of squared
        weights / n`` (weight matrices of the LSTM and the head, not biases;
        ``n`` the samples of the mini-batch, counted by their sample weights)
        is added to each mini-batch loss. The MLP default; it never hurts the fit.
    clip_norm : float or None, default=5.0
        Rescale the gradient when its global L2 norm exceeds this value (the
        usual cure for exploding gradients in recurrent networks; with Adam it
        only binds on rare spikes). None disables clipping.
    momentum : float, default=0.9
        Momentum of ``solver="sgd"``.
    nesterovs_momentum : bool, default=True
        Nesterov's momentum for ``solver="sgd"``.
    beta_1, beta_2 : float, default=0.9, 0.999
        Adam's decay rates of the first and second moment estimates.
    rho : float, default=0.9
        RMSprop's decay rate of the squared-gradient average (Keras default).
    epsilon : float, default=1e-8
        Numerical stability term of Adam and RMSprop.
    tol : float, default=1e-4
        Improvement threshold: training stops when the training loss (or the
        validation score with early stopping) has not improved by at least
        ``tol`` for ``n_iter_no_change`` consecutive epochs.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the samples (see
        ``validation_holdout``), or use ``fit``'s ``validation_data``, stop
        when the validation score stops improving, and restore the weights
        of the best epoch. Ignored by partial_fit.
    validation_fraction : float, default=0.1
        Fraction held out for early stopping (``ceil(fraction * n)`` samples).
    validation_holdout : {"random", "last"}, default="random"
        Which samples early stopping holds out when ``fit`` gets no
        ``validation_data``: "random", a random subset (stratified for the
        classifier); "last", the last ``validation_fraction`` of the samples
        in the order given, never shuffled (Keras' ``validation_split``): for
        time series, whose validation block must come after the training
        block in time.
    n_iter_no_change : int, default=10
        Epochs without improvement before stopping.
    tbptt_steps : int or None, default=None
        Truncated backpropagation through time: each mini-batch runs in
        chunks of this many steps that carry the state forward, detached (no
        gradient crosses a chunk boundary); the gradients of all chunks make
        one update. Bounds memory and cost per step for very long sequences;
        with a sequence-to-one head only the last chunk of each sequence gets
        a gradient. Needs ``bidirectional=False``.
    standardize : bool, default=True
        Standardise every input feature (and, for the regressor, every target)
        to zero mean and unit variance with the (weighted) statistics of the
        first fit; predictions are mapped back. LSTM gates saturate on inputs
        of large magnitude and a network starting near 0 needs thousands of
        steps to reach targets in the hundreds, so unscaled series (prices,
        passenger counts) would otherwise need manual scaling, as in the
        Keras examples.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation, dropout, shuffling and the validation
        split. The same seed, data and thread count give bit-identical weights.
        As everywhere in scikit-learn, a numpy ``Generator`` is not accepted.
    n_jobs : int or None, default=None
        Threads of the network's forward/backward (passed to clstm.LSTM).
        None: as many as BLAS may use in the calling context, capped by the
        cores; inside a Dask task, by the task's share of the worker's cores.
        The fit (loss curve, weights) is bit-identical for every value.
    verbose : int, default=0
        Print a per-epoch progress line (bar, loss, validation score, time
        left) to stderr.
    warm_start : bool, default=False
        Continue from the fitted weights and optimizer state on the next fit
        instead of starting over.
    vocab_size : int or None, default=None
        Token input: ``X`` holds integer token ids in ``[0, vocab_size)``
        (a list of 1-D int arrays of any lengths, or a 2-D ``(n_samples,
        n_timesteps)`` int array, padded with ``lengths=``), looked up in a
        trainable embedding table ``(vocab_size, embedding_dim)`` before the
        network. Token ids are not standardised. None (the default): ``X``
        holds real-valued features and nothing below applies. Every cell,
        stacking and bidirectional option works on tokens; ``predict_step``
        then takes one id per stream (``x_t`` of shape ``(n_streams,)``).
        An id outside ``[0, vocab_size)`` or not an integer raises a
        ValueError naming it and its position.
    embedding_dim : int or None, default=None
        Width of the embedding vectors; None means 64, or the width of
        ``embeddings``.
    padding_idx : int or None, default=None
        A token id whose vector is zero and never trained (as in
        ``torch.nn.Embedding``), e.g. for padding inside sequences. Padding
        past each sequence's length needs no id: ``lengths=`` skips it.
    embeddings : array-like of shape (vocab_size, embedding_dim) or None, default=None
        Pretrained vectors (word2vec, GloVe, ...) that initialise the table
        (copied; the array passed is never modified). Without it the table
        starts N(0, 1), as torch's. Implies token input.
    freeze_embeddings : bool, default=False
        Keep ``embeddings`` fixed: the table is then not trained.
        The embedding table is trained by the same ``solver``, with lazy
        row updates: only the rows of the tokens in a mini-batch move, and
        only their optimizer moments (Adam's m and v, SGD's velocity) decay
        and accumulate, as torch's ``SparseAdam``; the bias correction uses
        the optimizer's step count. The table is not under the ``alpha``
        penalty, and counts in ``clip_norm``'s global norm.

    Training that diverges (a NaN or infinite loss, gradient or weight, or an
    epoch loss more than 10^4 times the lowest of the call and 10 times that
    of a constant prediction) raises ``FloatingPointError`` naming the epoch.
    The estimator keeps the weights of the last completed epoch; if the call
    completed none, it stays as before the call: unfitted after a first
    ``fit``, with its previous weights after ``partial_fit`` or a
    ``warm_start`` fit.
"""


def _doc(text):
    """Set a method's docstring from an expression (shared parameter descriptions)."""
    def decorate(f):
        f.__doc__ = text
        return f
    return decorate


_LENGTHS_DOC = """lengths : array-like of int of shape (n_samples,), default=None
            Valid steps of each sequence of a padded 3-D (or 2-D univariate)
            ``X``: the result is exactly that of the ragged list
            ``[X[i, :lengths[i]] for i in range(n_samples)]`` (the padding is
            never read; per-step outputs come back as that list's outputs, a
            list of ``(T_i, ...)`` arrays). See :meth:`fit`."""

_STEP_DOC = """
        Streaming inference: feed the steps of a live series one at a time,
        carrying ``state`` from each call to the next, instead of recomputing
        the whole window. After the steps ``X[:, 0], ..., X[:, t]`` from the
        zero state (``state=None``), the result equals :meth:{method} on
        ``X[:, :t + 1]`` (sequence-to-one), and with ``return_sequences=True``
        step t's result equals :meth:{method}'s output at step t. The input
        standardisation{destd}
        applied as in :meth:{method}.

        Parameters
        ----------
        x_t : array-like of shape (n_streams, n_features) or (n_streams,)
            One timestep of each stream: ``X[:, t]`` of a 3-D ``X``, or of a
            2-D (univariate) ``X`` (shape ``(n_streams,)`` or
            ``(n_streams, 1)``). One stream: ``x_t[None]``.
        state : tuple of ndarray or None, default=None
            The state returned by the previous call for the same streams;
            None starts from the zero state (the start of a sequence).

        Returns
        -------
        {returns}
        state : tuple of ndarray
            The network's state after this step (arrays of shape
            ``(num_layers, n_streams, units)`` in the order of
            ``lstm_.state_names``), to pass to the next call. It is returned,
            never stored on the estimator: independent streams (and threads)
            can step the same fitted estimator, each with its own state.

        Raises
        ------
        ValueError
            For a bidirectional estimator (its reverse direction reads the
            future of the sequence).
"""

_COMMON_ATTRIBUTES = """
    lstm_ : clstm.LSTM
        The fitted network (``lstm_.state_dict()`` gives torch-named weights).
    n_features_in_ : int
        Number of columns of a 2-D ``X``, or features per timestep of 3-D /
        ragged ``X``, seen in fit.
    input_size_ : int
        Features per timestep (1 for 2-D input).
    feature_names_in_ : ndarray of str
        Column names, when fitted on a DataFrame.
    n_iter_ : int
        Epochs run (accumulated over warm starts and partial_fit calls).
    t_ : int
        Optimizer steps (mini-batch updates) taken.
    loss_ : float
        Training loss of the last epoch.
    loss_curve_ : list of float
        Training loss of each epoch: the mean of the mini-batch losses
        (weighted by each batch's total sample weight), each computed
        before that batch's update and including the L2 penalty
        ``alpha / 2 * sum of squared weights / (sample weight of the
        batch)``. The loss itself is described in the class docstring.
    best_loss_ : float or None
        Lowest training loss; None with early stopping.
    validation_scores_ : list of float or None
        Validation score (:meth:`score`'s measure: R^2 / accuracy) of each
        epoch, with ``fit``'s ``validation_data`` or early stopping, else None.
    best_validation_score_ : float or None
        The best of ``validation_scores_``, else None.
    learning_rate_curve_ : list of float
        The step size used in each epoch (see ``learning_rate``), aligned
        with ``loss_curve_``.
    n_timesteps_in_ : int or None
        The one sequence length of the training sequences when they all had
        the same length (e.g. ``make_windows`` windows; the window
        :meth:`LSTMRegressor.forecast` slides by default), else None.
"""


class LSTMRegressor(RegressorMixin, BaseLSTMEstimator):
    __doc__ = """LSTM network with a linear Dense head trained on squared error.

    ``X``: 3-D ``(n_samples, n_timesteps, n_features)``, 2-D
    ``(n_samples, n_timesteps)`` (univariate) or a list of ``(T_i, n_features)``
    arrays of different lengths; with ``vocab_size``, integer token ids
    (see ``vocab_size``). ``y``: ``(n_samples,)``,
    ``(n_samples, n_outputs)``, or ``(n_samples, horizon, n_columns)``
    (multi-step, multi-column targets as ``make_windows(..., horizon=h)``
    returns them; the model predicts their ``horizon * n_columns`` values,
    step-major, and :meth:`predict` returns that shape); with
    ``return_sequences=True`` one target per step:
    ``(n_samples, n_timesteps[, n_outputs])`` or a list of
    ``(T_i[, n_outputs])`` arrays.

    The loss (``loss_curve_``, ``loss_``, the verbose progress line) is
    ``0.5 * mean over outputs of (prediction - y)^2`` in *standardised* target
    units, averaged over samples (and steps) with the sample weights, plus the
    L2 penalty: scikit-learn's MLP convention, not Keras' ``history['loss']``.
    With ``standardize=True`` (the default) and one output, Keras' MSE on the
    original targets is ``2 * (loss - penalty) * y_scale**2``, ``y_scale`` the
    (weighted) standard deviation of the targets of the first fit; with
    ``standardize=False`` it is ``2 * (loss - penalty)``.

    Streaming: :meth:`predict_step` advances a fitted (unidirectional)
    regressor by one timestep, the state carried by the caller::

        state = None
        for x_t in live_observations:            # each of shape (n_features,)
            y_t, state = reg.predict_step(np.reshape(x_t, (1, -1)), state)

    Recursive forecasts: :meth:`forecast` feeds each prediction back as the
    next input (for a model whose inputs are the series' columns and whose
    targets are the next step(s) of the same columns).

    Validation data, schedule and callbacks (see :meth:`fit`)::

        reg = LSTMRegressor(learning_rate="adaptive", early_stopping=True)
        reg.fit(X_train, y_train, validation_data=(X_val, y_val),
                callbacks=[lambda r: print(r.epoch, r.loss, r.validation_score)])

    Parameters
    ----------""" + _COMMON_PARAMS + """
    Attributes
    ----------""" + _COMMON_ATTRIBUTES + """    n_outputs_ : int
        Number of regression targets.

    Examples
    --------
    >>> import numpy as np, clstm
    >>> X = np.random.default_rng(0).normal(size=(64, 10, 1))
    >>> reg = clstm.LSTMRegressor(max_iter=5, random_state=0).fit(X, X[:, 0, 0])
    >>> reg.predict(X).shape
    (64,)
    """

    _loss = "squared_error"

    def partial_fit(self, X, y, sample_weight=None, lengths=None):
        """One epoch over (X, y), continuing from the current model (the first call
        initialises it). ``lengths``: as in :meth:`fit`.

        It takes no ``validation_data`` or ``callbacks``: each call is one
        epoch, so ``score`` on a validation set after the call is that
        epoch's validation score. The learning-rate schedule advances one
        epoch per call."""
        return self._transaction(X, y, sample_weight, incremental=True, lengths=lengths)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    # -- targets ----------------------------------------------------------
    def _validate_targets(self, y, lengths, T, n, first):
        name = type(self).__name__
        if self.return_sequences:
            flat = collect_step_targets(y, lengths, T)
            flat = check_array(flat, ensure_2d=False, dtype=np.float64, input_name="y")
            if flat.ndim not in (1, 2):
                raise ValueError(f"per-step targets must be (n, T) or (n, T, n_outputs), got "
                                 f"{flat.ndim + 1}-D steps")
            one = flat.ndim == 1
            Y = pad_steps(flat[:, None] if one else flat, lengths, T)
            shape = () if one else flat.shape[1:]
        else:
            y = check_array(y, ensure_2d=False, allow_nd=True, dtype=np.float64,
                            input_name="y")
            if y.ndim not in (1, 2, 3) or 0 in y.shape[1:]:
                raise ValueError(f"y must be 1-D (n_samples,), 2-D (n_samples, n_outputs) or "
                                 f"3-D (n_samples, horizon, n_columns), got shape {y.shape} "
                                 "(per-step targets need return_sequences=True)")
            if y.shape[0] != n:
                raise ValueError(f"Found input variables with inconsistent numbers of samples: "
                                 f"X has {n}, y has {y.shape[0]}")
            one = y.ndim == 1
            shape = y.shape[1:]
            # (n, h, k) -> (n, h * k), step-major (make_windows' documented flattening)
            Y = y[:, None] if one else y.reshape(n, -1)
        K = Y.shape[-1]
        if first:
            self._y_1d = one
            self._y_shape = tuple(shape)
            self.n_outputs_ = K
        elif K != self.n_outputs_ or (len(shape) == 2 or len(self._y_shape) == 2) and (
                tuple(shape) != self._y_shape):
            raise ValueError(f"y has {K} outputs of shape {tuple(shape)} per sample, but {name} "
                             f"was fitted with {self.n_outputs_} of shape {self._y_shape}")
        return Y

    def _encode_targets(self, Y, lengths, first, incremental, classes):
        return Y

    def _class_weight_factors(self, Y, W, incremental):
        return 1.0

    def _n_head_outputs(self):
        return self.n_outputs_

    def _init_target_stats(self, Y, W):
        if not self.standardize:
            self._y_stats = (None, None)
            return
        K = Y.shape[-1]
        self._y_stats = _location_scale(Y.reshape(-1, K), W.reshape(-1))

    def _targets_in_model_units(self, Y, dtype):
        return _to_dtype(_apply_scaling(Y, self._y_stats), dtype, "y",
                         self._y_stats[0] is not None)

    def _null_loss(self, Y, W):
        """Loss of the constant prediction 0 (the targets' mean when standardised)."""
        per_entry = 0.5 * np.mean(np.square(Y, dtype=np.float64), axis=-1)
        return float(np.sum(W * per_entry) / np.sum(W))

    def _stratify(self, Y):
        return None

    def _internal_score(self, model, Xv, lv, Yv, Wv):
        Z = self._model_outputs(model, Xv, lv)
        if self.return_sequences:
            mask = np.arange(Z.shape[1])[None, :] < lv[:, None]
            Z, Yv, Wv = Z[mask], Yv[mask], Wv[mask]
        return float(r2_score(Yv.astype(np.float64), Z, sample_weight=Wv))

    # -- saving ---------------------------------------------------------------
    def _get_target_state(self):
        arrays = {}
        mean, scale = self._y_stats
        if mean is not None:
            arrays["scaling/y_mean"], arrays["scaling/y_scale"] = mean, scale
        meta = {"n_outputs_": int(self.n_outputs_), "_y_1d": bool(self._y_1d)}
        if hasattr(self, "_y_shape"):          # (a subclass may shape its targets itself)
            meta["_y_shape"] = [int(d) for d in self._y_shape]
        return meta, arrays

    def _set_target_state(self, fitted, arrays, n_head_outputs):
        n_outputs, one = fitted.get("n_outputs_"), fitted.get("_y_1d")
        if not (_is_int(n_outputs) and n_outputs == n_head_outputs):
            raise ValueError(f"fitted attribute n_outputs_ is {n_outputs!r}, but the head has "
                             f"{n_head_outputs} outputs")
        if not isinstance(one, bool) or (one and n_outputs != 1):
            raise ValueError(f"fitted attribute _y_1d is {one!r} with {n_outputs} outputs")
        # files written before (n, h, k) targets: () or (n_outputs,)
        shape = fitted.get("_y_shape", [] if one else [n_outputs])
        if (not isinstance(shape, list) or not all(_is_int(d) and d >= 1 for d in shape)
                or len(shape) > 2 or (len(shape) == 0) != one
                or int(np.prod(shape, dtype=np.int64)) != n_outputs):
            raise ValueError(f"fitted attribute _y_shape is {shape!r} with {n_outputs} outputs")
        self.n_outputs_, self._y_1d, self._y_shape = n_outputs, one, tuple(shape)
        self._y_stats = _check_scaling(arrays, "y", n_outputs)

    # -- prediction ---------------------------------------------------------
    def _targets_from_outputs(self, Z):
        mean, scale = self._y_stats
        if mean is not None:
            Z = Z * scale + mean
        if self._y_1d:
            Z = Z[..., 0]
        elif len(getattr(self, "_y_shape", ())) == 2:
            Z = Z.reshape(Z.shape[:-1] + self._y_shape)
        return Z

    @_dask_dispatch
    @_doc("""Predicted targets: (n,) / (n, n_outputs); per step (n, T[, n_outputs]),
        or a list of (T_i[, n_outputs]) arrays for ragged X.

        Parameters
        ----------
        X : array-like or list of arrays
            Sequences, as in :meth:`fit`.
        """ + _LENGTHS_DOC + """
        """)
    def predict(self, X, lengths=None):
        Z, lengths, ragged = self._raw_outputs(X, lengths)
        Z = self._targets_from_outputs(Z)
        if self.return_sequences and ragged:
            return split_steps(Z, lengths)
        return Z

    @_doc("""Predicted targets after one more timestep of each stream, and the new state.
""" + _STEP_DOC.format(method="`predict`", destd=" and the targets' de-standardisation are",
                       returns="""y_t : ndarray of shape (n_streams,) or (n_streams, n_outputs)
            The prediction after this step (shaped as one sample of
            :meth:`predict`).""") + """
        Examples
        --------
        >>> import numpy as np, clstm
        >>> X = np.random.default_rng(0).normal(size=(64, 10, 1))
        >>> reg = clstm.LSTMRegressor(max_iter=3, random_state=0).fit(X, X[:, -1, 0])
        >>> state = None
        >>> for t in range(10):
        ...     y_t, state = reg.predict_step(X[:3, t], state)
        >>> bool(np.allclose(y_t, reg.predict(X[:3]), rtol=1e-4, atol=1e-5))
        True
        """)
    def predict_step(self, x_t, state=None):
        Z, state = self._raw_step(x_t, state)
        return self._targets_from_outputs(Z), state

    def forecast(self, history, steps, lookback=None):
        """Recursive multi-step forecast: each prediction is fed back as the next input.

        The model must read the series' columns and predict the next step(s)
        of the same columns, as when it was fitted on
        ``make_windows(series, lookback, horizon=h)`` with every column a
        target (``n_features_in_`` columns in, the same columns out). Each
        round predicts from the window of the last ``lookback`` observations
        (the training windows' length), appends the predicted ``h`` steps to
        the series and slides the window by ``h``, until ``steps`` steps are
        forecast (the last round's surplus is dropped). It equals the loop
        ``window = series[-lookback:]; pred = predict(window[None])[0];
        series = concat(series, pred)`` written by hand.

        The window slides (each round starts from the zero state, as the
        training windows did), which is what a model fitted on fixed-length
        windows expects. To carry the state over the whole history instead
        (a stateful forecast), step the series with :meth:`predict_step` and
        feed its outputs back the same way.

        Parameters
        ----------
        history : array-like of shape (T,), (T, n_columns) or (n_series, T, n_columns)
            The observed series, oldest first: one univariate series, one
            multivariate series, or a batch of series forecast together.
            ``T >= lookback``. (A batch of univariate series: ``(n, T, 1)``.)
        steps : int >= 1
            Number of future steps to forecast.
        lookback : int or None, default=None
            Length of the window the model reads; None uses
            ``n_timesteps_in_``, the length of the training windows (required
            when the training sequences had different lengths).

        Returns
        -------
        forecast : ndarray of shape (steps,), (steps, n_columns) or (n_series, steps, n_columns)
            The forecast, shaped as ``history`` with ``steps`` steps.

        Raises
        ------
        ValueError
            If the model's outputs are not the next step(s) of its inputs
            (e.g. it predicts one column of a multivariate series: its other
            inputs have no forecast to feed back), for per-step models
            (``return_sequences=True``), or for a history shorter than
            ``lookback``.

        Examples
        --------
        >>> import numpy as np, clstm
        >>> series = np.sin(np.arange(200) / 5)
        >>> X, y = clstm.make_windows(series, lookback=12)
        >>> reg = clstm.LSTMRegressor(hidden_size=8, max_iter=5, random_state=0).fit(X, y)
        >>> reg.forecast(series, steps=10).shape
        (10,)
        >>> manual = list(series)                   # the same loop, by hand
        >>> for _ in range(10):
        ...     manual.append(reg.predict(np.reshape(manual[-12:], (1, 12, 1)))[0])
        >>> bool(np.array_equal(reg.forecast(series, 10), manual[200:]))
        True
        """
        check_is_fitted(self)
        name = type(self).__name__
        if self.return_sequences:
            raise ValueError(f"{name}.forecast needs a sequence-to-one model (targets the next "
                             "step(s) after each window); this one has return_sequences=True")
        k = self.input_size_
        h, columns = self._forecast_step_shape(k)
        if columns != k:
            raise ValueError(
                f"{name}.forecast feeds each prediction back as the next input, so the model "
                f"must predict every input column: it reads {k} feature(s) per step but its "
                f"targets are {h} step(s) of {columns} column(s). Fit it on "
                "make_windows(series, lookback, "
                "horizon=h) with all columns as targets (target=None), or forecast the "
                "exogenous inputs yourself and call predict")
        if not _is_int(steps) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if lookback is None:
            lookback = self.n_timesteps_in_
            if lookback is None:
                raise ValueError(f"{name} was fitted on sequences of different lengths, so the "
                                 "window length is unknown: pass lookback=")
        elif not _is_int(lookback) or lookback < 1:
            raise ValueError(f"lookback must be None or an int >= 1, got {lookback!r}")
        series, shape = self._forecast_history(history, k)
        n, T = series.shape[:2]
        if T < lookback:
            raise ValueError(f"history has {T} steps, fewer than lookback={lookback}: the model "
                             "reads windows of lookback steps")
        rounds = -(-int(steps) // h)
        buf = np.empty((n, T + rounds * h, k))
        buf[:, :T] = series
        for r in range(rounds):
            end = T + r * h
            pred = self.predict(buf[:, end - lookback:end])
            buf[:, end:end + h] = np.asarray(pred, dtype=np.float64).reshape(n, h, k)
        out = buf[:, T:T + steps]
        return out.reshape((steps,) + shape[1:]) if shape[0] is None else out

    def _forecast_step_shape(self, k):
        """(steps per prediction h, columns per step) of the model's targets."""
        shape = self._y_shape
        if len(shape) == 0:
            return 1, 1
        if len(shape) == 2:
            return shape
        K = shape[0]
        if k == 1:
            return K, 1                 # (n, h) targets of a univariate series
        if K % k == 0:
            return K // k, k            # (n, k) or flattened (n, h * k), step-major
        return 1, K

    def _forecast_history(self, history, k):
        """history as (n, T, k) float64, and its layout (None for one series)."""
        arr = check_array(history, ensure_2d=False, allow_nd=True, dtype=np.float64,
                          ensure_all_finite=True, input_name="history")
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim == 2:
            arr, layout = arr[None], (None,) + arr.shape[1:]
            if history is not None and np.ndim(history) == 1:
                layout = (None,)
        elif arr.ndim == 3:
            layout = arr.shape
        else:
            raise ValueError(f"history must be (T,), (T, n_columns) or (n_series, T, "
                             f"n_columns), got shape {arr.shape}")
        if arr.shape[2] != k:
            raise ValueError(f"history has {arr.shape[2]} column(s) per step, but the model "
                             f"reads {k}")
        return arr, layout

    def score(self, X, y, sample_weight=None, lengths=None):
        """Coefficient of determination R^2 (per-step targets: over all valid steps).

        (n, horizon, n_columns) targets: scikit-learn's multioutput R^2 (the
        mean over outputs) over the ``horizon * n_columns`` flattened outputs.

        ``lengths``: for a padded ``X`` (and padded per-step ``y``), as in :meth:`fit`.
        """
        if self.return_sequences:
            y_true, y_pred, sw = self._flat_step_predictions(X, y, sample_weight, lengths)
        else:
            y_true, y_pred, sw = y, self.predict(X, lengths=lengths), sample_weight
        y_true = check_array(y_true, ensure_2d=False, allow_nd=True, dtype=np.float64,
                             input_name="y")
        y_pred = np.asarray(y_pred, dtype=np.float64)
        if y_true.ndim == 3 and not self.return_sequences:
            # (n, h, k) targets: multioutput R^2 over the h * k flattened outputs
            y_true, y_pred = y_true.reshape(len(y_true), -1), y_pred.reshape(len(y_pred), -1)
        # R^2 does not change when targets and predictions are divided by the
        # same power of two per output: it keeps the squares finite for any
        # finite targets (and the same bits where they were finite anyway)
        unit = 1.0
        if y_true.shape == y_pred.shape and y_true.size:
            unit = _power_of_two(np.maximum(np.max(np.abs(y_true), axis=0),
                                            np.max(np.abs(y_pred), axis=0)))
        return float(r2_score(y_true / unit, y_pred / unit, sample_weight=sw))


class LSTMClassifier(ClassifierMixin, BaseLSTMEstimator):
    __doc__ = """LSTM network with a Dense head trained on cross-entropy.

    Binary problems use one logistic output (logistic loss), multiclass ones
    a softmax over ``n_classes`` outputs (softmax cross-entropy); both are
    evaluated in a numerically stable form. Labels may be of any type
    (``classes_`` holds them sorted). :meth:`decision_function` gives the
    head's raw outputs (the logits).

    The loss (``loss_curve_``, ``loss_``, the verbose progress line) is the
    cross-entropy in nats (natural log), the mean over samples (and steps)
    weighted by sample weight times class weight, plus the L2 penalty: with
    ``alpha=0`` and no weights, scikit-learn's ``log_loss`` and Keras'
    ``(sparse_)categorical_crossentropy`` / ``binary_crossentropy`` of the
    same predictions.

    Streaming: :meth:`predict_step` / :meth:`predict_proba_step` advance a
    fitted (unidirectional) classifier by one timestep, the state carried by
    the caller.

    ``X``: 3-D ``(n_samples, n_timesteps, n_features)``, 2-D
    ``(n_samples, n_timesteps)`` (univariate) or a list of ``(T_i, n_features)``
    arrays of different lengths; with ``vocab_size``, integer token ids
    (see ``vocab_size``). ``y``: labels ``(n_samples,)``; with
    ``return_sequences=True`` one label per step: ``(n_samples, n_timesteps)``
    or a list of ``(T_i,)`` arrays.

    Parameters
    ----------""" + _COMMON_PARAMS + """    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss (multiplied with sample_weight);
        "balanced" uses n_samples / (n_classes * count(class)). Not
        available with partial_fit.

    Attributes
    ----------""" + _COMMON_ATTRIBUTES + """    classes_ : ndarray of shape (n_classes,)
        The class labels.

    Examples
    --------
    >>> import numpy as np, clstm
    >>> X = np.random.default_rng(0).normal(size=(64, 10, 1))
    >>> clf = clstm.LSTMClassifier(max_iter=5, random_state=0).fit(X, X[:, 0, 0] > 0)
    >>> clf.predict_proba(X).shape
    (64, 2)
    """

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
                 class_weight=None, vocab_size=None, embedding_dim=None, padding_idx=None,
                 embeddings=None, freeze_embeddings=False):
        super().__init__(
            hidden_size=hidden_size, num_layers=num_layers, bidirectional=bidirectional,
            cell=cell, proj_size=proj_size, peephole=peephole, coupled_gates=coupled_gates,
            layer_norm=layer_norm, dropout=dropout, recurrent_dropout=recurrent_dropout,
            return_sequences=return_sequences, attention=attention, dtype=dtype, solver=solver,
            learning_rate_init=learning_rate_init, learning_rate=learning_rate, power_t=power_t,
            batch_size=batch_size, max_iter=max_iter,
            shuffle=shuffle, alpha=alpha, clip_norm=clip_norm, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, beta_1=beta_1, beta_2=beta_2, rho=rho,
            epsilon=epsilon, tol=tol, early_stopping=early_stopping,
            validation_fraction=validation_fraction, validation_holdout=validation_holdout,
            n_iter_no_change=n_iter_no_change,
            tbptt_steps=tbptt_steps, standardize=standardize, random_state=random_state,
            n_jobs=n_jobs, verbose=verbose, warm_start=warm_start, vocab_size=vocab_size,
            embedding_dim=embedding_dim, padding_idx=padding_idx, embeddings=embeddings,
            freeze_embeddings=freeze_embeddings)
        self.class_weight = class_weight

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        tags.classifier_tags.multi_label = False
        tags.target_tags.multi_output = False
        tags.target_tags.single_output = True
        return tags

    @property
    def _loss(self):
        return "log_loss" if len(self.classes_) == 2 else "softmax"

    def partial_fit(self, X, y, classes=None, sample_weight=None, lengths=None):
        """One epoch over (X, y), continuing from the current model.

        ``classes`` (all labels that can ever appear) is required on the first
        call and optional afterwards (it must then be the same). ``lengths``:
        as in :meth:`fit`. No ``validation_data`` or ``callbacks``: each call is
        one epoch (call ``score`` on a validation set after it); the
        learning-rate schedule advances one epoch per call.
        """
        return self._transaction(X, y, sample_weight, incremental=True, classes=classes,
                                 lengths=lengths)

    # -- targets ----------------------------------------------------------
    def _validate_targets(self, y, lengths, T, n, first):
        name = type(self).__name__
        if self.return_sequences:
            flat = collect_step_targets(y, lengths, T)
            if flat.ndim != 1:
                raise ValueError(f"per-step labels must be (n_samples, n_timesteps) or a list "
                                 f"of 1-D arrays, got steps of shape {flat.shape[1:]}")
            check_classification_targets(flat)
            labels = pad_steps(flat, lengths, T, fill=flat[0])
        else:
            y = np.asarray(y) if not hasattr(y, "shape") else y
            if np.ndim(y) == 2 and np.shape(y)[1] != 1:
                raise ValueError(f"y should be a 1d array of labels, got shape {np.shape(y)} "
                                 f"({name} supports one target; per-step labels need "
                                 "return_sequences=True)")
            labels = column_or_1d(y, warn=True)
            if labels.shape[0] != n:
                raise ValueError(f"Found input variables with inconsistent numbers of samples: "
                                 f"X has {n}, y has {labels.shape[0]}")
            check_classification_targets(labels)
        return labels

    def _encode_targets(self, labels, lengths, first, incremental, classes):
        """Class codes: (..., 1) floats 0/1 for two classes, else int codes; sets classes_."""
        name = type(self).__name__
        if self.return_sequences:
            flat = labels[np.arange(labels.shape[1])[None, :] < lengths[:, None]]
        else:
            flat = labels
        if first:
            if incremental:
                if classes is None:
                    raise ValueError("classes must be passed on the first call to partial_fit")
                classes_ = np.unique(np.asarray(classes))
            else:
                classes_ = np.unique(flat)
            if classes_.size < 2:
                raise ValueError(f"{name} needs samples of at least 2 classes in the data, but "
                                 f"the data contains only one class: {classes_[0]!r}")
            self.classes_ = classes_
            self.n_outputs_ = 1
        else:
            classes_ = self.classes_
            if classes is not None and not np.array_equal(np.unique(np.asarray(classes)),
                                                          classes_):
                raise ValueError(f"classes={classes!r} is not the same as on the first call "
                                 f"to partial_fit: {classes_!r}")
        unseen = np.setdiff1d(flat, classes_)
        if unseen.size:
            raise ValueError(f"y contains labels {unseen.tolist()!r} not in classes_ "
                             f"{classes_.tolist()!r}")
        codes = np.searchsorted(classes_, labels)
        if classes_.size == 2:
            return codes[..., None].astype(np.float64)
        return codes.astype(np.int64)

    @staticmethod
    def _codes(Y):
        return Y[..., 0].astype(np.int64) if Y.dtype.kind == "f" else Y

    def _class_weight_factors(self, Y, W, incremental):
        """Each entry's class weight (1 without class_weight)."""
        if self.class_weight is None:
            return 1.0
        name = type(self).__name__
        if isinstance(self.class_weight, str) and self.class_weight == "balanced":
            if incremental:
                raise ValueError("class_weight='balanced' is not supported for partial_fit "
                                 "(the class frequencies of future batches are unknown); "
                                 "pass a dict")
        elif not isinstance(self.class_weight, dict):
            raise InvalidParameterError(f"{name}: parameter 'class_weight' must be None, "
                                        f"'balanced' or a dict, got {self.class_weight!r}")
        codes = self._codes(Y)
        K = self.classes_.size
        if isinstance(self.class_weight, dict):
            cw = compute_class_weight(self.class_weight, classes=self.classes_,
                                      y=self.classes_[codes[W > 0]])
        else:
            # n / (n_classes * count(class)), samples counted by their weights
            valid = W > 0
            counts = np.bincount(codes[valid], weights=W[valid], minlength=K)
            cw = np.divide(counts.sum(), K * counts, out=np.zeros(K), where=counts > 0)
        return cw[codes]

    def _n_head_outputs(self):
        return 1 if self.classes_.size == 2 else self.classes_.size

    def _init_target_stats(self, Y, W):
        pass

    def _targets_in_model_units(self, Y, dtype):
        return np.ascontiguousarray(Y, dtype=dtype) if Y.dtype.kind == "f" else Y

    def _null_loss(self, Y, W):
        """Loss of the uniform prediction: log(n_classes)."""
        return float(np.log(self.classes_.size))

    def _stratify(self, Y):
        if self.return_sequences:
            return None
        return Y[:, 0] if Y.ndim == 2 else Y

    # -- saving ---------------------------------------------------------------
    def _get_target_state(self):
        classes = np.asarray(self.classes_)
        if classes.dtype.kind == "O":
            if all(isinstance(c, str) for c in classes):
                classes = classes.astype(str)
            else:
                raise ValueError("save() stores labels of numeric, bool or str type; classes_ "
                                 f"has object dtype with values {classes.tolist()!r}. Use "
                                 "pickle for such labels")
        if classes.dtype.kind not in "biufU":
            raise ValueError(f"save() cannot store classes_ of dtype {classes.dtype}")
        return {"n_outputs_": 1}, {"classes": classes}

    def _set_target_state(self, fitted, arrays, n_head_outputs):
        classes = arrays["classes"]
        if (classes.ndim != 1 or classes.size < 2 or classes.dtype.kind not in "biufU"
                or not np.array_equal(np.unique(classes), classes)):
            raise ValueError(f"classes must be at least 2 sorted, distinct labels, got "
                             f"{classes.size} of dtype {classes.dtype}")
        if classes.dtype.kind == "f" and not np.isfinite(classes).all():
            raise ValueError("classes contains NaN or infinite labels")
        expected = 1 if classes.size == 2 else classes.size
        if n_head_outputs != expected or fitted.get("n_outputs_") != 1:
            raise ValueError(f"{classes.size} classes need a head with {expected} outputs, the "
                             f"file has {n_head_outputs}")
        self.classes_ = classes
        self.n_outputs_ = 1

    def _codes_from_outputs(self, Z):
        if Z.shape[-1] == 1:
            return (Z[..., 0] > 0).astype(np.int64)
        return np.argmax(Z, axis=-1)

    def _internal_score(self, model, Xv, lv, Yv, Wv):
        Z = self._model_outputs(model, Xv, lv)
        pred = self._codes_from_outputs(Z)
        true = Yv[..., 0].astype(np.int64) if Yv.ndim == pred.ndim + 1 else Yv
        if self.return_sequences:
            mask = np.arange(Z.shape[1])[None, :] < lv[:, None]
            pred, true, Wv = pred[mask], true[mask], Wv[mask]
        return float(accuracy_score(true, pred, sample_weight=Wv))

    # -- prediction ---------------------------------------------------------
    def _proba_from_outputs(self, Z, log=False):
        if Z.shape[-1] == 1:
            z = Z[..., 0]
            if log:
                return np.stack([log_expit(-z), log_expit(z)], axis=-1)
            p = expit(z)
            return np.stack([1.0 - p, p], axis=-1)
        return log_softmax(Z, axis=-1) if log else softmax(Z, axis=-1)

    def _per_sample(self, A, lengths, ragged):
        if self.return_sequences and ragged:
            return split_steps(A, lengths)
        return A

    @_dask_dispatch
    @_doc("""Class probabilities (n, n_classes); per step (n, T, n_classes) or a list
        of (T_i, n_classes) arrays for ragged X.

        Parameters
        ----------
        X : array-like or list of arrays
            Sequences, as in :meth:`fit`.
        """ + _LENGTHS_DOC + """
        """)
    def predict_proba(self, X, lengths=None):
        Z, lengths, ragged = self._raw_outputs(X, lengths)
        return self._per_sample(self._proba_from_outputs(Z), lengths, ragged)

    @_dask_dispatch
    def predict_log_proba(self, X, lengths=None):
        """Log of :meth:`predict_proba`, computed stably. ``lengths``: as in :meth:`fit`."""
        Z, lengths, ragged = self._raw_outputs(X, lengths)
        return self._per_sample(self._proba_from_outputs(Z, log=True), lengths, ragged)

    @staticmethod
    def _decision_from_outputs(Z):
        return Z[..., 0] if Z.shape[-1] == 1 else Z

    @_dask_dispatch
    def decision_function(self, X, lengths=None):
        """The head's raw outputs (logits), as scikit-learn's linear classifiers.

        Binary: shape (n,), the logit of ``classes_[1]`` (positive means
        ``classes_[1]``; ``predict_proba(X)[:, 1] == expit(decision)``).
        Multiclass: shape (n, n_classes), the softmax's inputs
        (``predict_proba == softmax(decision, axis=1)``; the largest wins).
        Per step (``return_sequences=True``): (n, T[, n_classes]), or a list
        of (T_i[, n_classes]) arrays for ragged X. ``lengths``: as in :meth:`fit`.
        """
        Z, lengths, ragged = self._raw_outputs(X, lengths)
        return self._per_sample(self._decision_from_outputs(Z), lengths, ragged)

    @_dask_dispatch
    def predict(self, X, lengths=None):
        """Predicted labels (n,); per step (n, T) or a list of (T_i,) arrays for ragged X.
        ``lengths``: as in :meth:`fit`."""
        Z, lengths, ragged = self._raw_outputs(X, lengths)
        labels = self.classes_[self._codes_from_outputs(Z)]
        return self._per_sample(labels, lengths, ragged)

    @_doc("""Predicted labels after one more timestep of each stream, and the new state.

        :meth:`predict_proba_step` gives the probabilities (call it instead,
        with the same state: each call advances the state by one step).
""" + _STEP_DOC.format(method="`predict`", destd=" is",
                       returns="""y_t : ndarray of shape (n_streams,)
            The predicted label of each stream after this step.""") + """
        Examples
        --------
        >>> import numpy as np, clstm
        >>> X = np.random.default_rng(0).normal(size=(64, 10, 1))
        >>> clf = clstm.LSTMClassifier(max_iter=3, random_state=0).fit(X, X[:, -1, 0] > 0)
        >>> state = None
        >>> for t in range(10):
        ...     label, state = clf.predict_step(X[:3, t], state)
        >>> bool((label == clf.predict(X[:3])).all())
        True
        """)
    def predict_step(self, x_t, state=None):
        Z, state = self._raw_step(x_t, state)
        return self.classes_[self._codes_from_outputs(Z)], state

    @_doc("""Class probabilities after one more timestep of each stream, and the new state.

        As :meth:`predict_step`, with :meth:`predict_proba`'s output: ``proba_t``
        of shape (n_streams, n_classes), equal to ``predict_proba`` on the
        window so far (or its step t with ``return_sequences=True``). The
        labels are ``classes_[proba_t.argmax(axis=1)]``.
""" + _STEP_DOC.format(method="`predict_proba`", destd=" is",
                       returns="""proba_t : ndarray of shape (n_streams, n_classes)
            The class probabilities of each stream after this step."""))
    def predict_proba_step(self, x_t, state=None):
        Z, state = self._raw_step(x_t, state)
        return self._proba_from_outputs(Z), state

    def score(self, X, y, sample_weight=None, lengths=None):
        """Accuracy (per-step labels: over all valid steps).

        ``lengths``: for a padded ``X`` (and padded per-step ``y``), as in :meth:`fit`.
        """
        if not self.return_sequences:
            return float(accuracy_score(y, self.predict(X, lengths=lengths),
                                        sample_weight=sample_weight))
        y_flat, p_flat, sw = self._flat_step_predictions(X, y, sample_weight, lengths)
        return float(accuracy_score(y_flat, p_flat, sample_weight=sw))

