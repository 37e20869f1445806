"""Next-frame prediction on a ConvLSTM (Shi et al. 2015): ConvLSTMRegressor.

The model (:class:`NowcastModel`) is a :class:`clstm.ConvLSTM` and a
per-pixel linear head: the head is a 1x1 convolution, i.e. one
``(filters, n_outputs)`` GEMM over the pixel rows of the top layer's hidden
map (of the last step, or of every step with ``return_sequences=True``)::

    Z[b, (t,) *pixel] = H[b, (t,) *pixel] @ head_weight + head_bias

The loss is ``0.5 * (Z - Y)^2`` averaged over pixels and channels, then
over samples (and steps) with the sample weights, as :class:`LSTMRegressor`
averages over outputs. The model has the interface of
:class:`clstm._model.SequenceModel` that the estimators' training loop uses,
so fitting, early stopping, warm starts, sample weights and persistence are
the regressor's own; the estimator replaces input and target validation
(maps instead of feature vectors).
"""

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import r2_score
from sklearn.utils.validation import check_is_fitted

from clstm._base import (
    _apply_scaling,
    _check_lengths,
    _dtype_name,
    _location_scale,
    _over_row_batches,
    _refuse_complex,
    _standardize,
    _to_dtype,
)
from clstm._convlstm import ConvLSTM, _check_kernel_size
from clstm._estimators import LSTMRegressor
from clstm._model import (
    NonFiniteError,
    TrainableModel,
    _clearing_cache,
    _network_from_config,
    _ragged_only,
)

__all__ = ["ConvLSTMRegressor", "NowcastModel"]

_HEAD_WEIGHT = "head.weight"
_HEAD_BIAS = "head.bias"
_NETWORK_PREFIX = "network."


class NowcastModel(TrainableModel):
    """A ConvLSTM + a per-pixel (1x1 convolution) head + the squared error.

    Parameters
    ----------
    network : clstm.ConvLSTM
    head_weight : ndarray of shape (filters, n_outputs)
    head_bias : ndarray of shape (n_outputs,)
        Same dtype as the network, finite.
    return_sequences : bool
        Head on every step's hidden map instead of the last step's.
    """

    loss = "squared_error"
    attention = None
    input_layer = None          # maps only (no token input)

    def __init__(self, network, head_weight, head_bias, return_sequences):
        if not isinstance(network, ConvLSTM):
            raise TypeError(f"network must be a clstm.ConvLSTM, got {type(network).__name__}")
        self.network = network
        self.dtype = np.dtype(network.dtype).type
        head_weight, head_bias = np.asarray(head_weight), np.asarray(head_bias)
        if head_bias.ndim != 1 or head_bias.shape[0] < 1:
            raise ValueError(f"head bias has shape {head_bias.shape}, expected (n_outputs,)")
        shape = (network.filters, head_bias.shape[0])
        for name, value, expected in (("head weight", head_weight, shape),
                                      ("head bias", head_bias, shape[1:])):
            if value.shape != expected or value.dtype != self.dtype:
                raise ValueError(f"{name} has shape {value.shape} / dtype {value.dtype}, "
                                 f"expected {expected} / {np.dtype(self.dtype).name}")
            if not np.isfinite(value).all():
                raise ValueError(f"{name} contains NaN or infinite values")
        self.head_weight = np.array(head_weight, order="C")
        self.head_bias = np.array(head_bias, order="C")
        self.return_sequences = bool(return_sequences)

    @classmethod
    def create(cls, in_channels, spatial_dims, network_params, n_outputs, return_sequences,
               rng):
        """A new model: the network seeded with one int drawn from ``rng``, the head
        Glorot-uniform (as Keras's Conv2D with a 1x1 kernel), zero bias."""
        network = ConvLSTM(in_channels, spatial_dims=spatial_dims,
                           random_state=int(rng.randint(np.iinfo(np.int32).max)),
                           **network_params)
        dtype = np.dtype(network.dtype).type
        F = network.filters
        limit = np.sqrt(6.0 / (F + n_outputs))
        head_weight = rng.uniform(-limit, limit, (F, n_outputs)).astype(dtype)
        return cls(network, head_weight, np.zeros(n_outputs, dtype=dtype), return_sequences)

    # -- state ---------------------------------------------------------------------
    @property
    def n_outputs(self):
        return self.head_bias.shape[0]

    def get_state(self):
        net = self.network
        meta = {"kind": "nowcast",
                "network": {"class": type(net).__name__, "config": net.get_config(),
                            "rng_state": net.rng_state},
                "n_outputs": int(self.n_outputs), "loss": self.loss,
                "return_sequences": self.return_sequences}
        arrays = {f"network/{k}": v for k, v in net.state_dict().items()}
        arrays["head/weight"] = self.head_weight.copy()
        arrays["head/bias"] = self.head_bias.copy()
        return meta, arrays

    @classmethod
    def from_state(cls, meta, arrays):
        if meta.get("kind") != "nowcast" or meta["network"]["class"] != "ConvLSTM":
            raise ValueError("the file holds no ConvLSTM next-frame model")
        network = _network_from_config("ConvLSTM", meta["network"]["config"])
        network.load_state_dict({k[len("network/"):]: v for k, v in arrays.items()
                                 if k.startswith("network/")})
        network.rng_state = meta["network"]["rng_state"]
        model = cls(network, arrays["head/weight"], arrays["head/bias"],
                    meta["return_sequences"])
        if model.n_outputs != meta["n_outputs"]:
            raise ValueError(f"the head has {model.n_outputs} outputs, the metadata records "
                             f"{meta['n_outputs']!r}")
        return model

    def resume(self, **changes):
        """A copy for further training; of ``changes`` only dropout and n_jobs
        apply to a ConvLSTM (the others fix its weights' shapes)."""
        net = self.network
        changes = {k: v for k, v in changes.items() if k in ("dropout", "n_jobs")}
        network = ConvLSTM(**{**net.get_config(), **changes}, random_state=0)
        network.load_state_dict(net.state_dict())
        network.rng_state = net.rng_state
        return type(self)(network, self.head_weight, self.head_bias, self.return_sequences)

    # -- parameters ------------------------------------------------------------------
    @property
    def params(self):
        params = {_NETWORK_PREFIX + k: v for k, v in self.network.params.items()}
        params[_HEAD_WEIGHT] = self.head_weight
        params[_HEAD_BIAS] = self.head_bias
        return params

    def weight_names(self):
        """Under the L2 penalty: the convolution kernels and the head weight, not biases."""
        return [k for k in self.params if k == _HEAD_WEIGHT
                or (k.startswith(_NETWORK_PREFIX) and "kernel" in k)]

    # -- forward -----------------------------------------------------------------------
    def _features(self, out, state):
        """Head input: every step's top-layer h map, or the last step's (h_n[-1])."""
        return out if self.return_sequences else state[0][-1]

    def head(self, features):
        """The head for inference, in float64 (results independent of the batching)."""
        return (features.astype(np.float64) @ self.head_weight.astype(np.float64)
                + self.head_bias.astype(np.float64))

    def predict_raw(self, X, lengths):
        """Head outputs (B, *spatial, K) or (B, T, *spatial, K) as float64, inference mode."""
        self.network.eval()
        out, state = self.network.run(X, lengths=_ragged_only(lengths, X.shape[1]),
                                      keep_cache=False)
        return self.head(self._features(out, state))

    # -- loss and gradient ----------------------------------------------------------------
    def loss_and_grad(self, X, lengths, Y, W, alpha=0.0, tbptt_steps=None, need_grad=True):
        """Mini-batch loss (weighted mean + alpha/2 * ||weights||^2) and gradients.

        X (B, T, *spatial, C), lengths (B,), Y (B, *spatial, K) with W (B,), or
        per step Y (B, T, *spatial, K) with W (B, T) (0 past each length).
        """
        if tbptt_steps is not None:
            raise ValueError("truncated BPTT is not available for the ConvLSTM estimator")
        net = self.network
        norm = float(np.sum(W, dtype=np.float64))
        grads = ({name: np.zeros(v.shape, v.dtype) for name, v in self.params.items()}
                 if need_grad else None)
        with np.errstate(over="ignore", invalid="ignore"), _clearing_cache(net):
            out, state = net.run(X, None, _ragged_only(lengths, X.shape[1]),
                                 keep_cache=need_grad)
            feats = self._features(out, state)
            Z = feats @ self.head_weight + self.head_bias
            diff = Z - Y
            # W per sample (or per step), spread over the pixels and channels it covers
            per_entry = W.reshape(W.shape + (1,) * (Z.ndim - W.ndim)).astype(Z.dtype)
            size = int(np.prod(Z.shape[W.ndim:]))
            loss = 0.5 * float(np.sum(per_entry * np.square(diff, dtype=np.float64))) / (
                norm * size)
            if not np.isfinite(loss):
                raise NonFiniteError("loss")
            if need_grad:
                grad_Z = (per_entry * diff / Z.dtype.type(norm * size)).astype(Z.dtype)
                K = Z.shape[-1]
                grads[_HEAD_WEIGHT] += feats.reshape(-1, feats.shape[-1]).T @ grad_Z.reshape(-1, K)
                grads[_HEAD_BIAS] += grad_Z.reshape(-1, K).sum(axis=0)
                grad_feats = grad_Z @ self.head_weight.T
                if not np.isfinite(grad_feats).all():
                    raise NonFiniteError("gradient")
                # (grad_inputs=False: the inputs' gradients are not needed)
                if self.return_sequences:
                    net.backward_state(grad_feats, grad_inputs=False)
                else:
                    grad_h = np.zeros_like(state[0])
                    grad_h[-1] = grad_feats
                    net.backward_state(np.zeros_like(out), (grad_h, None), grad_inputs=False)
                for name, g in net.grads.items():
                    if name in net.params:
                        grads[_NETWORK_PREFIX + name] += g
        if alpha:
            loss = self.add_penalty(loss, grads, alpha)
        return loss, grads


# ======================================================================================
# the estimator
# ======================================================================================
class ConvLSTMRegressor(LSTMRegressor):
    """Next-frame prediction (nowcasting) with a ConvLSTM and a per-pixel linear head.

    The ConvLSTM (:class:`clstm.ConvLSTM`, Shi et al. 2015, Keras's
    ``ConvLSTM2D``/``ConvLSTM1D`` semantics) reads a sequence of maps; a 1x1
    convolution (``filters -> n_outputs`` per pixel) of the top layer's
    hidden map at the last step predicts the next frame (with
    ``return_sequences=True``: at every step, the frame after that step).

    ``X``: ``(n_samples, n_timesteps, height, width, channels)`` (2-D maps)
    or ``(n_samples, n_timesteps, width, channels)`` (1-D maps), channels
    last. Padded sequences of different lengths: pass ``lengths`` (the
    padding is never read; it may hold anything, even NaN). The map size may
    differ between fit and predict ('same' convolutions do not fix it), the
    channels may not. ``y``: the next frame ``(n_samples, *spatial,
    n_outputs)`` (the channel axis is required), or with
    ``return_sequences=True`` every step's next frame ``(n_samples,
    n_timesteps, *spatial, n_outputs)`` (entries past each length ignored).

    The loss (``loss_curve_``) is ``0.5 * (prediction - y)^2`` averaged over
    pixels and channels in standardised target units, then over samples (and
    valid steps) with the sample weights, plus the L2 penalty on the kernels
    and the head weight. It is the squared error only: Shi et al. train on
    [0, 1] intensity frames with a sigmoid and cross-entropy, which is not
    offered here (the squared error on standardised targets learns the
    moving-shapes task of ``python -m clstm.demo_nowcast`` to a fifth of
    the persistence error); predictions are unbounded, clip them to the
    range if needed. With ``standardize=True`` every input channel and every
    target channel is standardised with its (weighted) mean and standard
    deviation over all pixels and valid steps of the first fit.

    Parameters
    ----------
    filters : int, default=16
        Channels of the ConvLSTM's hidden and cell maps (per layer).
    kernel_size : int or tuple of int, default=3
        Odd kernel size of the input and recurrent convolutions ('same'
        padding); a tuple gives one size per spatial axis.
    num_layers : int, default=1
        Stacked ConvLSTM layers.
    dropout : float, default=0.0
        Dropout on the hidden maps between stacked layers, in training.
    return_sequences : bool, default=False
        Predict the next frame after every step (``y`` per step) instead of
        after the last one.
    dtype : {"float32", "float64"}, default="float32"
    solver, learning_rate_init, batch_size, max_iter, shuffle, alpha
        As for :class:`LSTMRegressor` (the same training loop).
    clip_norm, momentum, nesterovs_momentum, beta_1, beta_2, rho, epsilon
        As for :class:`LSTMRegressor`.
    learning_rate, power_t
        The learning-rate schedule, as for :class:`LSTMRegressor`.
    tol, early_stopping, validation_fraction, validation_holdout, n_iter_no_change, standardize
        As for :class:`LSTMRegressor` (``standardize``: per channel, above).
    random_state, n_jobs, verbose, warm_start
        As for :class:`LSTMRegressor`; ``n_jobs`` threads run independent
        sequences of a batch in parallel.

    Attributes
    ----------
    lstm_ : clstm.ConvLSTM
        The fitted network (Keras ``ConvLSTM2D`` weight layout).
    n_features_in_, input_size_ : int
        Channels of the input maps.
    spatial_dims_ : int
        1 or 2: the spatial axes of the maps seen in fit.
    n_outputs_ : int
        Channels of the predicted frames.
    n_iter_, t_, loss_, loss_curve_, best_loss_, validation_scores_, best_validation_score_
        As for :class:`LSTMRegressor`.

    Examples
    --------
    >>> import numpy as np, clstm
    >>> X, y = clstm.datasets.make_moving_shapes(64, n_steps=6, size=12, random_state=0)
    >>> X.shape, y.shape
    ((64, 6, 12, 12, 1), (64, 12, 12, 1))
    >>> model = clstm.ConvLSTMRegressor(filters=8, max_iter=2, random_state=0).fit(X, y)
    >>> model.predict(X[:2]).shape
    (2, 12, 12, 1)
    >>> model.forecast(X[:2], steps=3).shape          # feeds each predicted frame back
    (2, 3, 12, 12, 1)
    """

    # fixed for this estimator (read by the shared training loop)
    bidirectional = False
    attention = None
    tbptt_steps = None
    recurrent_dropout = 0.0
    # real-valued maps only (no token input)
    vocab_size = embedding_dim = padding_idx = embeddings = None
    freeze_embeddings = False

    def __init__(self, filters=16, kernel_size=3, num_layers=1, dropout=0.0,
                 return_sequences=False, dtype="float32", solver="adam",
                 learning_rate_init=1e-3, learning_rate="constant", power_t=0.5, batch_size=32,
                 max_iter=200, shuffle=True, alpha=1e-4, clip_norm=5.0, momentum=0.9,
                 nesterovs_momentum=True, beta_1=0.9, beta_2=0.999, rho=0.9, epsilon=1e-8,
                 tol=1e-4, early_stopping=False, validation_fraction=0.1,
                 validation_holdout="random", n_iter_no_change=10, standardize=True,
                 random_state=None, n_jobs=None, verbose=0, warm_start=False):
        self.filters = filters
        self.kernel_size = kernel_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.return_sequences = return_sequences
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
        self.standardize = standardize
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.warm_start = warm_start

    _model_type = NowcastModel

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = False
        return tags

    # -- model ----------------------------------------------------------------------------
    def _convlstm_params(self):
        return {"filters": self.filters, "kernel_size": self.kernel_size,
                "num_layers": self.num_layers, "dtype": self.dtype, "dropout": self.dropout,
                "n_jobs": self.n_jobs}

    def _new_model(self, rng):
        return NowcastModel.create(self.input_size_, self.spatial_dims_,
                                   self._convlstm_params(), self.n_outputs_,
                                   self.return_sequences, rng)

    def _check_architecture(self):
        name = type(self).__name__
        config = self._model.network.get_config()
        try:
            kernel_size = _check_kernel_size(self.kernel_size, config["spatial_dims"])
        except ValueError:
            kernel_size = self.kernel_size
        current = {"filters": self.filters, "kernel_size": kernel_size,
                   "num_layers": self.num_layers, "dtype": _dtype_name(self.dtype),
                   "return_sequences": self.return_sequences}
        fitted = {"filters": config["filters"], "kernel_size": tuple(config["kernel_size"]),
                  "num_layers": config["num_layers"], "dtype": config["dtype"],
                  "return_sequences": self._model.return_sequences}
        for param, value in fitted.items():
            if current[param] != value:
                raise ValueError(
                    f"{name}: {param}={getattr(self, param)!r} differs from the fitted model's "
                    f"{value!r}; warm_start and partial_fit continue the fitted network, so "
                    "set it back or fit from scratch (warm_start=False)")

    # -- inputs ---------------------------------------------------------------------------
    def _validate_X(self, X, reset, lengths=None):
        """Float64 maps (n, T, *spatial, C), lengths (n,), and whether lengths were given.

        The padding past each length is set to 0 (it may hold anything)."""
        name = type(self).__name__
        if sp.issparse(X):
            raise TypeError(f"{name} does not accept sparse input: pass a dense array")
        if isinstance(X, (list, tuple)) and len(X) and all(hasattr(x, "shape") for x in X) \
                and len({np.shape(x) for x in X}) > 1:
            raise ValueError(f"{name} takes a padded array X (n_samples, n_timesteps, "
                             "*spatial, channels) with lengths=..., not a list of sequences "
                             "of different lengths")
        try:
            arr = np.asarray(X)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"X could not be converted to an array: {exc}") from None
        _refuse_complex(arr, "X")
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"X must hold numbers, got dtype {arr.dtype}")
        if reset:
            if arr.ndim not in (4, 5):
                raise ValueError(
                    f"{name} expects X of shape (n_samples, n_timesteps, height, width, "
                    f"channels) or (n_samples, n_timesteps, width, channels) for 1-D maps, "
                    f"got a {arr.ndim}-D array of shape {arr.shape}")
        elif arr.ndim != self.spatial_dims_ + 3:
            raise ValueError(f"X must be {self.spatial_dims_ + 3}-D (n_samples, n_timesteps, "
                             f"{'height, width' if self.spatial_dims_ == 2 else 'width'}, "
                             f"channels) as in fit, got shape {arr.shape}")
        if min(arr.shape) == 0:
            raise ValueError(f"X has shape {arr.shape}: it needs at least one sample, "
                             "timestep, pixel and channel")
        C = arr.shape[-1]
        if not reset and C != self.input_size_:
            raise ValueError(f"X has {C} channels (last axis), but {name} was fitted on "
                             f"{self.input_size_}")
        n, T = arr.shape[:2]
        given = lengths is not None
        if given:
            lengths = _check_lengths(lengths, n, T)
            arr = np.array(arr, dtype=np.float64)
            arr[np.arange(T)[None, :] >= lengths[:, None]] = 0.0
        else:
            lengths = np.full(n, T, dtype=np.int64)
            arr = np.asarray(arr, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("X contains NaN or infinite values (within each sequence's "
                             "length)")
        if reset:
            self._input_layout = "maps"
            self.spatial_dims_ = arr.ndim - 3
            self.n_features_in_ = self.input_size_ = C
        if "_fit_shape" in self.__dict__:     # inside _prepare_data: for _validate_targets
            self._fit_shape = arr.shape
        return arr, lengths, given

    def _prepare_data(self, *args, **kwargs):
        self._fit_shape = None
        try:
            return super()._prepare_data(*args, **kwargs)
        finally:
            self.__dict__.pop("_fit_shape", None)

    def _fitted_input_checks(self, need):
        config = self._model.network.get_config()
        need("_input_layout", lambda v: v == "maps", "'maps'")
        need("spatial_dims_", lambda v: v == config["spatial_dims"],
             f"the network's spatial_dims ({config['spatial_dims']})")
        C = config["in_channels"]
        for key in ("input_size_", "n_features_in_"):
            need(key, lambda v: v == C, f"the network's in_channels ({C})")
        self.spatial_dims_ = config["spatial_dims"]
        return C

    # -- targets --------------------------------------------------------------------------
    def _unpad_step_targets(self, y, lengths):
        return y            # per-step targets stay padded: their padding is ignored below

    def _validate_targets(self, y, lengths, T, n, first):
        name = type(self).__name__
        shape = self._fit_shape
        _refuse_complex(y, "y")
        try:
            Y = np.array(y, dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"y could not be converted to a float array: {exc}") from None
        lead = shape[:2] if self.return_sequences else shape[:1]
        spatial = shape[2:-1]
        what = ("(n_samples, n_timesteps, *spatial, n_outputs)" if self.return_sequences
                else "(n_samples, *spatial, n_outputs)")
        if Y.shape[:-1] != lead + spatial or Y.ndim != len(lead) + len(spatial) + 1:
            raise ValueError(f"y must have shape {what} = {lead + spatial + ('n_outputs',)} "
                             f"for X of shape {shape}, got {Y.shape}")
        K = Y.shape[-1]
        if K < 1:
            raise ValueError("y has 0 output channels")
        if self.return_sequences:
            Y[np.arange(T)[None, :] >= lengths[:, None]] = 0.0
        if not np.isfinite(Y).all():
            raise ValueError("y contains NaN or infinite values")
        if first:
            self.n_outputs_ = K
            self._y_1d = False
        elif K != self.n_outputs_:
            raise ValueError(f"y has {K} output channels, but {name} was fitted with "
                             f"{self.n_outputs_}")
        return Y

    def _init_target_stats(self, Y, W):
        if not self.standardize:
            self._y_stats = (None, None)
            return
        K = Y.shape[-1]
        pixels = Y[0].size // K // (Y.shape[1] if self.return_sequences else 1)
        self._y_stats = _location_scale(Y.reshape(-1, K), np.repeat(W.reshape(-1), pixels))

    def _null_loss(self, Y, W):
        axes = tuple(range(W.ndim, Y.ndim))
        per_entry = 0.5 * np.mean(np.square(Y, dtype=np.float64), axis=axes)
        return float(np.sum(W * per_entry) / np.sum(W))

    def _pixel_r2(self, Y, Z, W, lengths):
        """R^2 per channel over every pixel (and valid step), averaged over channels."""
        K = Y.shape[-1]
        if self.return_sequences:
            steps = np.arange(Y.shape[1])[None, :] < lengths[:, None]
            Y, Z = Y[steps], Z[steps]
            W = None if W is None else np.repeat(W, lengths)
        pixels = Y[0].size // K
        w = None if W is None else np.repeat(np.asarray(W, dtype=np.float64), pixels)
        return float(r2_score(Y.reshape(-1, K), Z.reshape(-1, K), sample_weight=w))

    def _internal_score(self, model, Xv, lv, Yv, Wv):
        Z = self._model_outputs(model, Xv, lv)
        if self.return_sequences:        # Wv is per step: its row sums are the sample weights
            Wv = Wv[:, 0]
        return self._pixel_r2(np.asarray(Yv, dtype=np.float64), Z, Wv, lv)

    # -- saving ------------------------------------------------------------------------------
    _FITTED = LSTMRegressor._FITTED + ("spatial_dims_",)

    @classmethod
    def _from_state(cls, meta, arrays):
        params = meta["params"]
        if isinstance(params.get("kernel_size"), list):      # a tuple, written as JSON
            meta = {**meta, "params": {**params, "kernel_size": tuple(params["kernel_size"])}}
        return super()._from_state(meta, arrays)

    # -- prediction --------------------------------------------------------------------------
    def predict(self, X, lengths=None):
        """The predicted next frame (n, *spatial, n_outputs); with
        ``return_sequences=True`` the next frame after every step
        (n, T, *spatial, n_outputs), zero past each length.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps, *spatial, channels)
        lengths : array-like of int of shape (n_samples,), default=None
            Valid steps of each sequence of a padded ``X`` (the padding is
            never read): the prediction follows each sequence's own last step.
        """
        Z, lengths, _ = self._raw_outputs(X, lengths)
        Z = self._targets_from_outputs(Z)
        if self.return_sequences:
            Z[np.arange(Z.shape[1])[None, :] >= lengths[:, None]] = 0.0
        return Z

    def predict_step(self, x_t, state=None):
        """Not available: use :meth:`predict` or :meth:`forecast`."""
        raise ValueError(f"{type(self).__name__} has no predict_step; use predict(X) or "
                         "forecast(X, steps)")

    def forecast(self, X, steps, lengths=None):
        """Recursive nowcast: the next ``steps`` frames, each predicted frame fed
        back as the next input.

        Needs ``n_outputs_`` equal to the input channels (frames predict
        frames). The network reads ``X`` once, then advances one step per
        predicted frame (``ConvLSTM.step``), so the result equals calling
        :meth:`predict` on ``X`` extended by the frames predicted so far (the
        last step's prediction for ``return_sequences=True``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps, *spatial, channels)
        steps : int >= 1
        lengths : array-like of int of shape (n_samples,), default=None
            For a padded ``X``: each forecast continues its sequence's own
            last step.

        Returns
        -------
        frames : ndarray of shape (n_samples, steps, *spatial, channels)
        """
        check_is_fitted(self)
        name = type(self).__name__
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if self.n_outputs_ != self.input_size_:
            raise ValueError(f"{name} predicts {self.n_outputs_} channels from "
                             f"{self.input_size_}: a forecast feeds the predicted frames back "
                             "as inputs, so they need the same channels")
        arr, lengths, _ = self._validate_X(X, reset=False, lengths=lengths)
        Xp = _to_dtype(_standardize(arr, lengths, self._x_stats), self._model.dtype, "X",
                       self._x_stats[0] is not None)
        model, net = self._model, self._model.network
        model.eval()

        def forecast_batch(Xb, lb):
            _, state = net.run(Xb, lengths=_ragged_only(lb, Xb.shape[1]), keep_cache=False)
            h = state[0][-1]
            frames = []
            for k in range(steps):
                frame = self._targets_from_outputs(model.head(h))
                frames.append(frame)
                if k + 1 < steps:
                    x = _to_dtype(_apply_scaling(frame, self._x_stats), model.dtype, "forecast",
                                  self._x_stats[0] is not None)
                    h, state = net.step(x, state)
            return np.stack(frames, axis=1)

        return _over_row_batches(Xp, lengths, forecast_batch)

    def score(self, X, y, sample_weight=None, lengths=None):
        """R^2 over pixels: per output channel ``1 - SSE / SST`` with every pixel of
        every sample (and valid step) an observation and SST about the channel's
        mean over all of them; averaged over channels. ``sample_weight`` weighs
        every pixel of a sample."""
        check_is_fitted(self)
        pred = self.predict(X, lengths=lengths)
        Y = np.asarray(y, dtype=np.float64)
        if Y.shape != pred.shape:
            raise ValueError(f"y has shape {Y.shape}, the predictions {pred.shape}")
        n, T = pred.shape[:2]
        lengths = (np.full(n, T if self.return_sequences else 1) if lengths is None
                   else _check_lengths(lengths, n, np.asarray(X).shape[1]))
        sw = None if sample_weight is None else self._check_sample_weight(sample_weight, n)
        return self._pixel_r2(Y, pred, sw, lengths)
