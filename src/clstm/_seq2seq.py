"""Encoder-decoder with attention for multi-step forecasting: LSTMSeq2SeqRegressor.

The model (:class:`Seq2SeqModel`) follows Luong, Pham & Manning (2015),
"Effective approaches to attention-based neural machine translation" (global
attention computed from the decoder's output), on the attention idea of
Bahdanau, Cho & Bengio (2015):

* the encoder, a clstm network, reads the input window ``x_1 .. x_T`` and
  gives outputs ``e_1 .. e_T`` and its final state;
* the decoder, a network of the same shape, starts from the encoder's final
  state and runs ``horizon`` steps; its input at step j is the previous
  target ``y_{j-1}`` with a 0 flag, and at step 0 zeros with a 1 flag (the
  "start" input);
* at each decoder step, from the decoder's output ``h_j``: scores
  ``s_ji = h_j . (W_a e_i)`` ("general") or ``h_j . e_i`` ("dot"), a softmax
  over the encoder's valid steps, the context ``c_j = sum_i a_ji e_i``, and
  the output ``y_j = [h_j; c_j] @ W_o + b`` (without attention: ``h_j @ W_o + b``).

Because the attention reads the decoder's output rather than feeding its
input, training with teacher forcing (the known previous targets as decoder
inputs) is one network forward over all ``horizon`` steps, and the
attention runs for all steps at once; its backward hands per-step output
gradients to the decoder's backward, whose initial-state gradient goes into
the encoder's backward with the gradients of its outputs. Prediction decodes
step by step with ``net.step``, feeding each prediction back as the next
input.

The model has the interface of :class:`clstm._model.SequenceModel` that the
estimators' training loop uses, so fitting, early stopping, warm starts and
persistence are the regressor's own.
"""

import numpy as np
from sklearn.metrics import r2_score
from sklearn.utils.validation import check_array

from clstm._attention import masked_softmax, valid_mask
from clstm._base import (
    _is_int,
    _location_scale,
    _over_row_batches,
    _standardize,
    _to_dtype,
)
from clstm._estimators import _COMMON_ATTRIBUTES, _COMMON_PARAMS, LSTMRegressor
from clstm._losses import squared_error
from clstm._model import (
    NonFiniteError,
    TrainableModel,
    _clearing_cache,
    _network_from_config,
    _ragged_only,
    make_network,
)
from clstm._validation import InvalidParameterError

__all__ = ["LSTMSeq2SeqRegressor", "Seq2SeqModel", "SEQ2SEQ_ATTENTION"]

SEQ2SEQ_ATTENTION = ("general", "dot")

_PREFIXES = ("encoder.", "decoder.")


class LuongAttention:
    """The attention's kind and parameters: ``weight`` (P, P) for "general", none for "dot"."""

    def __init__(self, kind, size, dtype, weight=None, rng=None):
        if kind not in SEQ2SEQ_ATTENTION:
            raise ValueError(f"attention must be None or one of {list(SEQ2SEQ_ATTENTION)}, "
                             f"got {kind!r}")
        self.kind = kind
        self.params = {}
        if kind == "general":
            if weight is None:
                limit = np.sqrt(6.0 / (2 * size))
                weight = rng.uniform(-limit, limit, (size, size)).astype(dtype)
            weight = np.asarray(weight)
            if weight.shape != (size, size) or weight.dtype != dtype:
                raise ValueError(f"attention weight has shape {weight.shape} / dtype "
                                 f"{weight.dtype}, expected {(size, size)} / "
                                 f"{np.dtype(dtype).name}")
            if not np.isfinite(weight).all():
                raise ValueError("attention weight contains NaN or infinite values")
            self.params["weight"] = np.array(weight, dtype=dtype, order="C")

    def __setstate__(self, state):
        # read-only arrays (e.g. joblib memory maps) -> private writable copies
        self.__dict__.update(state)
        self.params = {k: v if v.flags.writeable else np.array(v)
                       for k, v in self.params.items()}

    def keys(self, E):
        """The vectors the decoder's outputs are scored against: E @ W_a.T, or E."""
        return E @ self.params["weight"].T if self.kind == "general" else E


class Seq2SeqModel(TrainableModel):
    """Encoder + decoder networks, Luong attention (or none) and a linear head.

    Parameters
    ----------
    encoder, decoder : clstm networks
        Unidirectional, with the same state shapes; the decoder reads
        ``n_outputs + 1`` features per step.
    head_weight : ndarray of shape (P or 2 P, n_outputs)
    head_bias : ndarray of shape (n_outputs,)
    horizon : int
        Decoder steps.
    attention : LuongAttention or None
    """

    loss = "squared_error"
    return_sequences = False
    input_layer = None          # real-valued inputs only

    def __init__(self, encoder, decoder, head_weight, head_bias, horizon, attention):
        self.network = encoder
        self.decoder = decoder
        self.dtype = np.dtype(encoder.get_config()["dtype"]).type
        if encoder.num_directions != 1 or decoder.num_directions != 1:
            raise ValueError("the encoder's final state starts the decoder: both must be "
                             "unidirectional")
        P = encoder.output_size
        n_outputs = np.asarray(head_bias).shape[0]
        if decoder.input_size != n_outputs + 1 or decoder.output_size != P:
            raise ValueError(f"the decoder must read {n_outputs + 1} features and give {P}")
        fan_in = P * (1 if attention is None else 2)
        for name, value, shape in (("head weight", head_weight, (fan_in, n_outputs)),
                                   ("head bias", head_bias, (n_outputs,))):
            value = np.asarray(value)
            if value.shape != shape or value.dtype != self.dtype:
                raise ValueError(f"{name} has shape {value.shape} / dtype {value.dtype}, "
                                 f"expected {shape} / {np.dtype(self.dtype).name}")
            if not np.isfinite(value).all():
                raise ValueError(f"{name} contains NaN or infinite values")
        if not _is_int(horizon) or horizon < 1:
            raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
        self.head_weight = np.array(head_weight, order="C")
        self.head_bias = np.array(head_bias, order="C")
        self.horizon = int(horizon)
        self.attention = attention

    @classmethod
    def create(cls, input_size, network_params, n_outputs, horizon, attention, rng):
        """A new model: both networks seeded from ``rng``, Glorot-uniform head and
        attention weight, zero bias."""
        seeds = rng.randint(np.iinfo(np.int32).max, size=2)
        encoder = make_network(input_size, network_params, int(seeds[0]))
        decoder = make_network(n_outputs + 1, network_params, int(seeds[1]))
        dtype = np.dtype(encoder.get_config()["dtype"]).type
        P = encoder.output_size
        fan_in = P * (1 if attention is None else 2)
        limit = np.sqrt(6.0 / (fan_in + n_outputs))
        head_weight = rng.uniform(-limit, limit, (fan_in, n_outputs)).astype(dtype)
        luong = (None if attention is None
                 else LuongAttention(attention, P, dtype,
                                     rng=rng if attention == "general" else None))
        return cls(encoder, decoder, head_weight, np.zeros(n_outputs, dtype), horizon, luong)

    # -- state ----------------------------------------------------------------------
    @property
    def n_outputs(self):
        return self.head_bias.shape[0]

    @property
    def attention_kind(self):
        return None if self.attention is None else self.attention.kind

    def get_state(self):
        meta = {"kind": "seq2seq", "horizon": self.horizon, "attention": self.attention_kind,
                "n_outputs": int(self.n_outputs), "loss": self.loss}
        arrays = {"head/weight": self.head_weight.copy(), "head/bias": self.head_bias.copy()}
        for role, net in (("encoder", self.network), ("decoder", self.decoder)):
            meta[role] = {"class": type(net).__name__, "config": net.get_config(),
                          "rng_state": net.rng_state}
            arrays.update({f"{role}/{k}": v for k, v in net.state_dict().items()})
        if self.attention is not None:
            arrays.update({f"attention/{k}": v.copy() for k, v in self.attention.params.items()})
        return meta, arrays

    @classmethod
    def from_state(cls, meta, arrays):
        if meta.get("kind") != "seq2seq":
            raise ValueError("the file holds no encoder-decoder model")
        nets = []
        for role in ("encoder", "decoder"):
            net = _network_from_config(meta[role]["class"], meta[role]["config"])
            net.load_state_dict({k[len(role) + 1:]: v for k, v in arrays.items()
                                 if k.startswith(role + "/")})
            net.rng_state = meta[role]["rng_state"]
            nets.append(net)
        dtype = np.dtype(nets[0].get_config()["dtype"]).type
        attention = meta["attention"]
        if attention is not None:
            attention = LuongAttention(attention, nets[0].output_size, dtype,
                                       weight=arrays.get("attention/weight"))
        model = cls(*nets, arrays["head/weight"], arrays["head/bias"], meta["horizon"],
                    attention)
        if model.n_outputs != meta["n_outputs"]:
            raise ValueError(f"the head has {model.n_outputs} outputs, the metadata records "
                             f"{meta['n_outputs']!r}")
        return model

    def resume(self, **changes):
        """A copy for further training, both networks rebuilt with ``changes``."""
        nets = []
        for net in (self.network, self.decoder):
            new = type(net)(**{**net.get_config(), **changes}, random_state=0)
            new.load_state_dict(net.state_dict())
            new.rng_state = net.rng_state
            nets.append(new)
        attention = None
        if self.attention is not None:
            attention = LuongAttention(self.attention.kind, self.network.output_size,
                                       self.dtype, weight=self.attention.params.get("weight"))
        return type(self)(*nets, self.head_weight, self.head_bias, self.horizon, attention)

    # -- parameters -----------------------------------------------------------------
    @property
    def params(self):
        params = {f"encoder.{k}": v for k, v in self.network.params.items()}
        params.update({f"decoder.{k}": v for k, v in self.decoder.params.items()})
        if self.attention is not None:
            params.update({f"attention.{k}": v for k, v in self.attention.params.items()})
        params["head.weight"] = self.head_weight
        params["head.bias"] = self.head_bias
        return params

    def weight_names(self):
        """Under the L2 penalty: the networks' weight matrices, the attention and head weights."""
        return [k for k in self.params
                if any(k.startswith(p + "weight_") for p in _PREFIXES)
                or k in ("head.weight", "attention.weight")]

    def _networks(self):
        return (self.network, self.decoder)

    # -- forward pieces ---------------------------------------------------------------
    def decoder_inputs(self, Y):
        """Teacher forcing: (B, horizon, K + 1) = [y_{j-1}, 0], the start [0, 1] at j = 0."""
        B, horizon, K = Y.shape
        inputs = np.zeros((B, horizon, K + 1), dtype=self.dtype)
        inputs[:, 0, K] = 1
        inputs[:, 1:, :K] = Y[:, :-1]
        return inputs

    def _encode(self, X, lengths, keep_cache):
        E, state = self.network.run(X, lengths=_ragged_only(lengths, X.shape[1]),
                                    keep_cache=keep_cache)
        mask = valid_mask(lengths, X.shape[1])
        E = np.where(mask[..., None], E, 0).astype(self.dtype, copy=False)
        return E, state, mask

    def _attend(self, H, E, keys, mask):
        """Weights (B, J, T) and contexts (B, J, P) for decoder outputs H (B, J, P)."""
        scores = H @ keys.transpose(0, 2, 1)                          # (B, J, T)
        weights = masked_softmax(scores, mask[:, None, :]).astype(H.dtype, copy=False)
        return weights, weights @ E

    def teacher_forced(self, X, lengths, Y, keep_cache=False):
        """Head outputs (B, horizon, K) with the true previous targets as decoder inputs,
        and the intermediate values (for the backward)."""
        E, enc_state, mask = self._encode(X, lengths, keep_cache)
        H, _ = self.decoder.run(self.decoder_inputs(Y), state=enc_state, keep_cache=keep_cache)
        if self.attention is None:
            feats, keys, weights = H, None, None
        else:
            keys = self.attention.keys(E)
            weights, context = self._attend(H, E, keys, mask)
            feats = np.concatenate([H, context], axis=-1)
        Z = feats @ self.head_weight + self.head_bias
        return Z, (E, mask, H, keys, weights, feats)

    def decode(self, X, lengths, return_weights=False):
        """Predictions (B, horizon, K) as float64, each decoder step fed the previous
        prediction (``net.step``), inference mode; with ``return_weights`` also the
        attention weights (B, horizon, T). The attention and the head run in
        float64 (results independent of the batch's other rows)."""
        self.eval()
        E, state, mask = self._encode(X, lengths, keep_cache=False)
        E64 = E.astype(np.float64)
        keys = None if self.attention is None else self.attention.keys(E64)
        W_o, b_o = self.head_weight.astype(np.float64), self.head_bias.astype(np.float64)
        B, K = X.shape[0], self.n_outputs
        x = np.zeros((B, K + 1), dtype=self.dtype)
        x[:, K] = 1
        outputs = np.empty((B, self.horizon, K))
        all_weights = np.zeros((B, self.horizon, X.shape[1]))
        for j in range(self.horizon):
            h, state = self.decoder.step(x, state)
            h = h.astype(np.float64)[:, None]
            if keys is not None:
                weights, context = self._attend(h, E64, keys, mask)
                all_weights[:, j] = weights[:, 0]
                h = np.concatenate([h, context], axis=-1)
            outputs[:, j] = h[:, 0] @ W_o + b_o
            x = np.zeros((B, K + 1), dtype=self.dtype)
            x[:, :K] = outputs[:, j]
        return (outputs, all_weights) if return_weights else outputs

    def predict_raw(self, X, lengths):
        return self.decode(X, lengths)

    # -- loss and gradient ----------------------------------------------------------
    def loss_and_grad(self, X, lengths, Y, W, alpha=0.0, tbptt_steps=None, need_grad=True):
        """Teacher-forced mini-batch loss (weighted mean over samples of the mean over
        horizon steps and outputs of 0.5 (z - y)^2, + alpha/2 ||weights||^2) and gradients."""
        if tbptt_steps is not None:
            raise ValueError("the encoder-decoder trains on whole windows (tbptt_steps=None)")
        norm = float(np.sum(W, dtype=np.float64))
        W_steps = np.repeat(W[:, None] / self.horizon, self.horizon, axis=1)
        enc, dec = self.network, self.decoder
        with np.errstate(over="ignore", invalid="ignore"), _clearing_cache(enc), \
                _clearing_cache(dec):
            Z, (E, mask, H, keys, A, feats) = self.teacher_forced(X, lengths, Y,
                                                                  keep_cache=need_grad)
            loss, grad_Z = squared_error(Z, Y, W_steps, norm)
            if not np.isfinite(loss):
                raise NonFiniteError("loss")
            grads = None
            if need_grad:
                grads = self._backward(grad_Z, E, mask, H, keys, A, feats)
        if alpha:
            loss = self.add_penalty(loss, grads, alpha)
        return loss, grads

    def _backward(self, grad_Z, E, mask, H, keys, A, feats):
        K, P = self.n_outputs, self.network.output_size
        grads = {"head.weight": feats.reshape(-1, feats.shape[-1]).T @ grad_Z.reshape(-1, K),
                 "head.bias": grad_Z.reshape(-1, K).sum(axis=0)}
        grad_feats = grad_Z @ self.head_weight.T
        if not np.isfinite(grad_feats).all():
            raise NonFiniteError("gradient")
        grad_H = np.array(grad_feats[..., :P])
        grad_E = np.zeros_like(E)
        if self.attention is not None:
            grad_C = grad_feats[..., P:]
            # context c_j = sum_i a_ji e_i
            grad_A = grad_C @ E.transpose(0, 2, 1)
            grad_E += A.transpose(0, 2, 1) @ grad_C
            # softmax over i (zero where masked, as a is)
            grad_S = A * (grad_A - np.sum(A * grad_A, axis=-1, keepdims=True))
            # scores s_ji = h_j . k_i
            grad_H += grad_S @ keys
            grad_keys = grad_S.transpose(0, 2, 1) @ H
            if self.attention.kind == "general":      # k_i = W_a e_i
                W_a = self.attention.params["weight"]
                grad_E += grad_keys @ W_a
                grads["attention.weight"] = grad_keys.reshape(-1, P).T @ E.reshape(-1, P)
            else:
                grad_E += grad_keys
            grad_E = np.where(mask[..., None], grad_E, 0).astype(E.dtype, copy=False)
        dec, enc = self.decoder, self.network
        dec.backward_state(grad_H)
        grad_state = tuple(dec.grads[f"{name}0"] for name in dec.state_names)
        if not all(np.isfinite(g).all() for g in grad_state):
            raise NonFiniteError("gradient")
        grads.update({f"decoder.{k}": dec.grads[k] for k in dec.params})
        enc.backward_state(grad_E, grad_state, grad_inputs=False)   # (grad_X unused)
        grads.update({f"encoder.{k}": enc.grads[k] for k in enc.params})
        params = self.params
        return {k: np.asarray(grads[k], dtype=params[k].dtype) for k in params}


# ======================================================================================
# the estimator
# ======================================================================================
class LSTMSeq2SeqRegressor(LSTMRegressor):
    __doc__ = """Encoder-decoder LSTM with attention for multi-step (seq2seq) forecasts.

    The encoder reads the input window; the decoder, started from the
    encoder's final state, produces the ``horizon`` target steps one after
    the other, each fed the previous target step (the true one in training:
    teacher forcing; its own prediction in :meth:`predict`), and at each
    step attends over the encoder's outputs (Luong et al. 2015, global
    attention on the decoder's output; Bahdanau et al. 2015). See
    ``clstm._seq2seq`` for the equations.

    ``X``: as for :class:`LSTMRegressor` (3-D, 2-D univariate, or ragged
    list; ``lengths`` for padded arrays). ``y``: ``(n_samples, horizon)``
    (one target series) or ``(n_samples, horizon, n_outputs)``, as
    :func:`clstm.make_windows` cuts them with ``horizon > 1``; ``(n_samples,)``
    means ``horizon = 1``. The horizon is taken from ``y`` in the first fit
    (``horizon_``). :meth:`predict` returns the shape of ``y``.

    The loss is ``0.5 * (prediction - y)^2`` in standardised target units,
    averaged over outputs, horizon steps and samples (sample-weighted), plus
    the L2 penalty; it is the teacher-forced loss (decoder inputs are the
    true previous targets), so ``loss_curve_`` measures one-step-ahead
    decoding. :meth:`score` is the R^2 of the free-running :meth:`predict`,
    averaged over horizon steps and outputs.

    Parameters
    ----------
    attention : {"general", "dot"} or None, default="general"
        Luong's score of encoder output ``e_i`` for decoder output ``h_j``:
        ``h_j . (W_a e_i)`` ("general", a learned ``W_a``) or ``h_j . e_i``
        ("dot"); None: a plain encoder-decoder (the head reads ``h_j``
        only).""" + _COMMON_PARAMS.replace("""    bidirectional : bool, default=False
        Add a reverse-time direction; the head then reads the forward state at
        each sequence's own last step concatenated with the reverse state at
        t = 0.
""", "").replace("""    return_sequences : bool, default=False
        Put the Dense head on every timestep; targets are then per step.
""", "") + """
    The encoder and the decoder have the same architecture (``hidden_size``,
    ``num_layers``, ``cell``, ...), unidirectional (the encoder's final state
    starts the decoder). Not available here: ``bidirectional``,
    ``return_sequences``, ``tbptt_steps`` (whole windows are read), the
    streaming ``predict_step`` and ONNX export.

    Attributes
    ----------""" + _COMMON_ATTRIBUTES.replace("""    lstm_ : clstm.LSTM
        The fitted network (``lstm_.state_dict()`` gives torch-named weights).
""", """    lstm_ : clstm.LSTM or clstm.GRU
        The fitted encoder.
    decoder_ : clstm.LSTM or clstm.GRU
        The fitted decoder (reads ``n_outputs_ + 1`` features per step).
""") + """    horizon_ : int
        Decoder steps (forecast horizon), from ``y`` of the first fit.
    n_outputs_ : int
        Target series per step.

    Examples
    --------
    >>> import numpy as np, clstm
    >>> series = np.sin(np.arange(400) / 6.0)
    >>> X, y = clstm.make_windows(series, lookback=24, horizon=6)
    >>> model = clstm.LSTMSeq2SeqRegressor(hidden_size=16, max_iter=5, random_state=0)
    >>> model.fit(X, y).predict(X[:3]).shape
    (3, 6)
    """

    # fixed for an encoder-decoder (read by the shared training loop)
    bidirectional = False
    return_sequences = False
    tbptt_steps = None
    # real-valued windows only (no token input)
    vocab_size = embedding_dim = padding_idx = embeddings = None
    freeze_embeddings = False

    def __init__(self, hidden_size=50, num_layers=1, cell="lstm", proj_size=0, peephole=False,
                 coupled_gates=False, layer_norm=False, dropout=0.0, recurrent_dropout=0.0,
                 attention="general", dtype="float32", solver="adam", learning_rate_init=1e-3,
                 learning_rate="constant", power_t=0.5,
                 batch_size=32, max_iter=200, shuffle=True, alpha=1e-4, clip_norm=5.0,
                 momentum=0.9, nesterovs_momentum=True, beta_1=0.9, beta_2=0.999, rho=0.9,
                 epsilon=1e-8, tol=1e-4, early_stopping=False, validation_fraction=0.1,
                 validation_holdout="random",
                 n_iter_no_change=10, standardize=True, random_state=None, n_jobs=None,
                 verbose=0, warm_start=False):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.cell = cell
        self.proj_size = proj_size
        self.peephole = peephole
        self.coupled_gates = coupled_gates
        self.layer_norm = layer_norm
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
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
        self.standardize = standardize
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.warm_start = warm_start

    _model_type = Seq2SeqModel

    # -- hyperparameters and model ----------------------------------------------------
    def _validate_attention(self):
        if self.attention is not None and (not isinstance(self.attention, str)
                                           or self.attention not in SEQ2SEQ_ATTENTION):
            raise InvalidParameterError(
                f"{type(self).__name__}: parameter 'attention' must be None, 'general' or "
                f"'dot', got {self.attention!r}")

    def _new_model(self, rng):
        return Seq2SeqModel.create(self.input_size_, self._network_params(), self.n_outputs_,
                                   self.horizon_, self.attention, rng)

    def _commit(self, run):
        super()._commit(run)
        self.decoder_ = run.model.decoder

    # -- targets ------------------------------------------------------------------------
    def _validate_targets(self, y, lengths, T, n, first):
        name = type(self).__name__
        y = check_array(y, ensure_2d=False, allow_nd=True, dtype=np.float64, input_name="y")
        if y.ndim not in (1, 2, 3):
            raise ValueError(f"y must be (n_samples, horizon) or (n_samples, horizon, "
                             f"n_outputs) (or (n_samples,) for horizon 1), got shape {y.shape}")
        if y.shape[0] != n:
            raise ValueError(f"Found input variables with inconsistent numbers of samples: "
                             f"X has {n}, y has {y.shape[0]}")
        Y = y.reshape(n, 1, 1) if y.ndim == 1 else (y[..., None] if y.ndim == 2 else y)
        if first:
            self._y_ndim = y.ndim
            self.horizon_, self.n_outputs_ = Y.shape[1], Y.shape[2]
            self._y_1d = self.n_outputs_ == 1 and y.ndim < 3
        elif Y.shape[1:] != (self.horizon_, self.n_outputs_) or y.ndim != self._y_ndim:
            raise ValueError(f"y has shape {y.shape}, but {name} was fitted on targets of "
                             f"{self._y_ndim} dimensions with horizon {self.horizon_} and "
                             f"{self.n_outputs_} outputs")
        return Y

    def _forecast_step_shape(self, k):
        """forecast feeds back the decoder's horizon_ steps of n_outputs_ columns."""
        return self.horizon_, self.n_outputs_

    def _init_target_stats(self, Y, W):
        if not self.standardize:
            self._y_stats = (None, None)
            return
        K = Y.shape[-1]
        self._y_stats = _location_scale(Y.reshape(-1, K), np.repeat(W, Y.shape[1]))

    def _null_loss(self, Y, W):
        per_sample = 0.5 * np.mean(np.square(Y, dtype=np.float64), axis=(1, 2))
        return float(np.sum(W * per_sample) / np.sum(W))

    def _targets_from_outputs(self, Z):
        mean, scale = self._y_stats
        if mean is not None:
            Z = Z * scale + mean
        if self._y_ndim == 1:
            return Z[:, 0, 0]
        return Z[..., 0] if self._y_ndim == 2 else Z

    def _internal_score(self, model, Xv, lv, Yv, Wv):
        Z = self._model_outputs(model, Xv, lv)
        return float(r2_score(Yv.reshape(len(Yv), -1).astype(np.float64),
                              Z.reshape(len(Z), -1), sample_weight=Wv))

    def _get_target_state(self):
        meta, arrays = super()._get_target_state()
        meta.update(horizon_=int(self.horizon_), _y_ndim=int(self._y_ndim))
        return meta, arrays

    def _set_target_state(self, fitted, arrays, n_head_outputs):
        super()._set_target_state(fitted, arrays, n_head_outputs)
        horizon, ndim = fitted.get("horizon_"), fitted.get("_y_ndim")
        if not (_is_int(horizon) and horizon == self._model.horizon):
            raise ValueError(f"fitted attribute horizon_ is {horizon!r}, the decoder runs "
                             f"{self._model.horizon} steps")
        if ndim not in (1, 2, 3) or (ndim == 1 and horizon != 1) or (ndim < 3) != self._y_1d:
            raise ValueError(f"fitted attribute _y_ndim is {ndim!r}")
        self.horizon_, self._y_ndim = horizon, ndim
        self.decoder_ = self._model.decoder

    # -- prediction -----------------------------------------------------------------------
    def predict(self, X, lengths=None):
        """Forecasts: (n, horizon) or (n, horizon, n_outputs), as ``y`` in fit
        ((n,) for a 1-D ``y``). Each decoder step is fed the previous step's
        prediction. ``lengths``: for a padded ``X``, as in :meth:`fit`."""
        return super().predict(X, lengths=lengths)

    def predict_step(self, x_t, state=None):
        """Not available: the decoder starts after the whole window is read; use predict."""
        raise ValueError(f"{type(self).__name__} forecasts the next {self.horizon_} steps "
                         "from a whole window; use predict(X) on the window so far")

    def attention_weights(self, X, lengths=None):
        """Attention of each decoder step over the encoder's steps.

        Returns an array (n_samples, horizon, n_timesteps) (zeros past each
        length; each row sums to 1 over the valid steps), or for a ragged
        ``X`` a list of (horizon, T_i) arrays. ``lengths``: as in :meth:`fit`.
        """
        from sklearn.utils.validation import check_is_fitted
        check_is_fitted(self)
        if self._model.attention is None:
            raise ValueError(f"{type(self).__name__} was fitted with attention=None: there "
                             "are no attention weights")
        arr, lengths, ragged = self._validate_X(X, reset=False, lengths=lengths)
        Xp = _to_dtype(_standardize(arr, lengths, self._x_stats), self._model.dtype, "X",
                       self._x_stats[0] is not None)
        weights = _over_row_batches(
            Xp, lengths, lambda Xb, lb: self._model.decode(Xb, lb, return_weights=True)[1],
            time_axis=2)
        if ragged:
            return [weights[i, :, :lengths[i]].copy() for i in range(len(lengths))]
        return weights

    def score(self, X, y, sample_weight=None, lengths=None):
        """R^2 of :meth:`predict`, averaged over horizon steps and outputs."""
        y_true = check_array(y, ensure_2d=False, allow_nd=True, dtype=np.float64,
                             input_name="y")
        y_pred = np.asarray(self.predict(X, lengths=lengths), dtype=np.float64)
        n = y_true.shape[0]
        return float(r2_score(y_true.reshape(n, -1), y_pred.reshape(n, -1),
                              sample_weight=sample_weight))
