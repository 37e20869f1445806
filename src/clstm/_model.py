"""The trainable model under the estimators: a recurrent network + a Dense output head + a loss.

The head reads either the last hidden state of every sequence (for a
bidirectional network the concatenation of the forward direction's state at
the sequence's own last step and the reverse direction's state at t = 0, i.e.
the top layer's ``h_n``), or, with an attention pooling
(:class:`clstm._attention.AttentionPooling`), the attention-weighted sum of
the outputs over each sequence's valid steps, or, with
``return_sequences=True``, the output at every step. Loss and gradient of a
mini-batch, with optional truncated BPTT, are computed here; the estimator
only batches, updates and bookkeeps.

The model uses its network only through the interface every clstm network
has: ``run`` / ``backward_state`` / ``clear_cache``, ``state_names``,
``output_size``, ``num_directions``, ``params`` / ``grads``, ``train`` /
``eval``, and ``get_config`` / ``state_dict`` / ``load_state_dict`` /
``rng_state`` to copy and save itself. States are tuples in the order of
``state_names``, so a network whose state is ``("h",)`` needs no change here.
``backward_state(None, grad_state)`` means no gradient reaches the outputs
(a loss on the last state only).
"""

import math

import numpy as np

from clstm._attention import AttentionPooling
from clstm._convlstm import ConvLSTM
from clstm._flat import FlatParameters
from clstm._gru import GRU
from clstm._head_losses import LOGISTIC, SQUARED_ERROR, dense_head_loss
from clstm._losses import LOSSES
from clstm._lstm import LSTM
from clstm._optimizer_steps import sum_of_squares
from clstm._tokens import Embedding
from clstm._validation import is_finite

__all__ = ["SequenceModel", "NonFiniteError", "NETWORK_PARAMS", "RESUMABLE_NETWORK_PARAMS",
           "make_network", "network_params"]

# Estimator hyperparameters that configure the network; the network's
# constructor validates them (the one place they are checked).
NETWORK_PARAMS = ("hidden_size", "num_layers", "bidirectional", "cell", "proj_size", "peephole",
                  "coupled_gates", "layer_norm", "dropout", "recurrent_dropout", "dtype", "n_jobs")
# Those that may change between fits of one network (warm_start, partial_fit);
# the others fix the shapes of the weights.
RESUMABLE_NETWORK_PARAMS = ("dropout", "recurrent_dropout", "n_jobs")

# Network classes a saved model may name.
_NETWORKS = {"LSTM": LSTM, "GRU": GRU, "ConvLSTM": ConvLSTM}

# The cell hyperparameter: its values and their network classes. The LSTM
# options (proj_size, ...) apply to the LSTM only.
_CELLS = {"lstm": LSTM, "gru": GRU}
_LSTM_OPTIONS = {"proj_size": 0, "peephole": False, "coupled_gates": False, "layer_norm": False}

_HEAD_WEIGHT = "head.weight"
_HEAD_BIAS = "head.bias"
_NETWORK_PREFIX = "network."
_ATTENTION_PREFIX = "attention."
_INPUT_PREFIX = "embedding."
# the losses computed with the head in one fused pass (_head_losses), and the
# largest head so computed (rows x features x outputs): beyond it BLAS's GEMMs win
_FUSED_HEAD_LOSSES = {"squared_error": SQUARED_ERROR, "log_loss": LOGISTIC}
_FUSED_HEAD_MAX = 1 << 16


def make_network(input_size, params, random_state):
    """The network that the hyperparameters ``params`` (names in NETWORK_PARAMS) describe.

    The one place that turns estimator hyperparameters into a network: the
    cell picks the class, the class's constructor checks the rest.
    """
    params = dict(params)
    cell = params.pop("cell", "lstm")
    if not isinstance(cell, str) or cell not in _CELLS:
        raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
    if cell != "lstm":
        changed = [k for k, default in _LSTM_OPTIONS.items()
                   if params.get(k, default) != default]
        if changed:
            raise ValueError(f"{', '.join(changed)} {'applies' if len(changed) == 1 else 'apply'}"
                             f" to cell='lstm' only; with cell={cell!r} leave "
                             f"{'it' if len(changed) == 1 else 'them'} at the default")
        for k in _LSTM_OPTIONS:
            params.pop(k, None)
    return _CELLS[cell](input_size, random_state=random_state, **params)


def network_params(network):
    """The estimator hyperparameters (NETWORK_PARAMS) that describe `network`:
    the inverse of make_network."""
    config = network.get_config()
    cell = next(name for name, cls in _CELLS.items() if type(network) is cls)
    return {p: config.get(p, _LSTM_OPTIONS.get(p)) if p != "cell" else cell
            for p in NETWORK_PARAMS}


def _network_from_config(kind, config):
    if kind not in _NETWORKS:
        raise ValueError(f"unknown network class {kind!r} (this clstm knows {sorted(_NETWORKS)})")
    if not isinstance(config, dict):
        raise TypeError(f"network config must be a mapping, got {type(config).__name__}")
    # random_state=0: the initial weights are replaced right away
    return _NETWORKS[kind](**config, random_state=0)


class NonFiniteError(FloatingPointError):
    """A NaN or infinity in the loss, a gradient or a carried state of a mini-batch.

    ``what`` names the quantity ("loss", "gradient", "state"). Raised before a
    non-finite value reaches the network, whose own argument checks would
    otherwise report it.
    """

    def __init__(self, what):
        super().__init__(f"the {what} is not finite")
        self.what = what


class TrainableModel:
    """What the training loop needs of a model beside its loss and gradient:
    parameter snapshots (early stopping, divergence), the finiteness check,
    and training / inference mode of its networks. A model has ``params``
    (name -> live array) and ``network``; one with more networks overrides
    :meth:`_networks`."""

    def _networks(self):
        return (self.network,)

    def snapshot(self):
        return {k: v.copy() for k, v in self.params.items()}

    def restore(self, snapshot):
        """Copy a snapshot back into the live arrays (their identity is kept)."""
        for k, v in self.params.items():
            v[...] = snapshot[k]
        for net in self._networks():
            net.clear_cache()

    def all_finite(self):
        return all(is_finite(v) for v in self.params.values())

    def train(self):
        for net in self._networks():
            net.train()

    def eval(self):
        for net in self._networks():
            net.eval()

    def add_penalty(self, loss, grads, alpha):
        """``loss`` plus alpha/2 * ||w||^2 over :meth:`weight_names` (and alpha * w
        added to ``grads`` in place unless it is None): the L2 term, once per
        mini-batch."""
        params = self.params
        for name in self.weight_names():
            w = params[name]
            # (one compiled pass, squares summed in float64: no float64 copy of w)
            loss += 0.5 * alpha * sum_of_squares(np.ascontiguousarray(w).reshape(-1))
            if grads is not None:
                grads[name] += w.dtype.type(alpha) * w
        return loss

    # -- the flat buffer: every dense parameter a view of one array --------------
    def flat_params(self):
        """The model's :class:`~clstm._flat.FlatParameters` (its dense parameters,
        every one now a view of one flat array), or None for a model that cannot
        rebind its parameters (no ``_set_param``).

        Gathered on the first call and again whenever a parameter was replaced
        since (``load_state_dict``, unpickling, a copy); the training loop
        calls this once per epoch, so an optimizer step is one vectorised
        update. Row-sparse parameters (the embedding table) stay apart.
        """
        dense = {k: v for k, v in self.params.items() if not k.startswith(_INPUT_PREFIX)}
        flat = self.__dict__.get("_flat")
        if flat is not None and flat.params.keys() == dense.keys() and flat.holds(dense):
            return flat
        if not hasattr(self, "_set_param") or not dense:
            return None
        try:
            flat = FlatParameters(dense)
        except ValueError:           # mixed dtypes: keep the arrays apart
            return None
        for name, view in flat.params.items():
            self._set_param(name, view)
        for net in self._networks():
            net.clear_cache()        # its cache refers to the replaced arrays
        self._flat = flat
        return flat

    def __getstate__(self):
        # copies (pickle, deepcopy) hold separate arrays: a copied view would no
        # longer share the copied flat buffer's memory, so it is not copied
        state = self.__dict__.copy()
        state.pop("_flat", None)
        state.pop("_network_grad_memo", None)
        return state

    def _network_grad_views(self, flat):
        """The network's parameter names -> their views of ``flat``'s gradient
        buffer (what zero_grads returns under the model's names), kept per buffer:
        the same dict every step, which the network checks once."""
        memo = self.__dict__.get("_network_grad_memo")
        if memo is None or memo[0] is not flat:
            views = {name: flat.grads[_NETWORK_PREFIX + name] for name in self.network.params}
            memo = self._network_grad_memo = (flat, views)
        return memo[1]

    def __setstate__(self, state):
        # read-only arrays (e.g. joblib memory maps) -> private writable copies:
        # prediction accepts them, but training updates parameters in place
        # (the attention / embedding parts restore their own arrays)
        self.__dict__.update(state)
        for net in self._networks():
            if not all(v.flags.writeable for v in net.params.values()):
                net.load_state_dict(net.state_dict())
        for attr in ("head_weight", "head_bias"):
            if not getattr(self, attr).flags.writeable:
                setattr(self, attr, np.array(getattr(self, attr)))


class SequenceModel(TrainableModel):
    """A recurrent network + Dense head + loss.

    Parameters
    ----------
    network : clstm network
        Its outputs feed the head.
    head_weight : ndarray of shape (D * network.output_size, n_outputs)
    head_bias : ndarray of shape (n_outputs,)
        Same dtype as the network, finite.
    loss : {"squared_error", "log_loss", "softmax"}
    return_sequences : bool
        Head on every step instead of on the last state.
    attention : AttentionPooling or None
        Pool every step's output with attention instead of reading the last
        state (sequence-to-one only). The model owns it (no copy is made).
    input_layer : clstm._tokens.Embedding or None
        For token input: X holds (B, T) int64 ids, embedded before the
        network; its (row-sparse) gradient is the embedding's backward of the
        network's input gradient. Its trainable table is the parameter
        ``"embedding.weight"`` (not under the L2 penalty: a dense penalty
        would move every row at every step).

    Use :meth:`create` for a freshly initialised model.
    """

    def __init__(self, network, head_weight, head_bias, loss, return_sequences, attention=None,
                 input_layer=None):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r} (one of {sorted(LOSSES)})")
        self.network = network
        self.dtype = np.dtype(network.get_config()["dtype"]).type
        fan_in = network.output_size * network.num_directions
        head_weight = np.asarray(head_weight)
        head_bias = np.asarray(head_bias)
        if head_bias.ndim != 1 or head_bias.shape[0] < 1:
            raise ValueError(f"head bias has shape {head_bias.shape}, expected (n_outputs,)")
        expected = (fan_in, head_bias.shape[0])
        for name, value, shape in (("head weight", head_weight, expected),
                                   ("head bias", head_bias, expected[1:])):
            if value.shape != shape:
                raise ValueError(f"{name} has shape {value.shape}, expected {shape} (the network "
                                 f"gives {fan_in} features)")
            if value.dtype != self.dtype:
                raise ValueError(f"{name} has dtype {value.dtype}, expected "
                                 f"{np.dtype(self.dtype).name} (the network's)")
            if not np.isfinite(value).all():
                raise ValueError(f"{name} contains NaN or infinite values")
        # private, writable copies: training updates them in place
        self.head_weight = np.array(head_weight, order="C")
        self.head_bias = np.array(head_bias, order="C")
        self.loss = loss
        self.return_sequences = bool(return_sequences)
        if attention is not None:
            if self.return_sequences:
                raise ValueError("attention pools each sequence into one vector: it needs "
                                 "return_sequences=False")
            if attention.input_size != fan_in or attention.dtype != self.dtype:
                raise ValueError(f"the attention reads {attention.input_size} features of "
                                 f"{np.dtype(attention.dtype).name}, the network gives {fan_in} "
                                 f"of {np.dtype(self.dtype).name}")
        self.attention = attention
        if input_layer is not None:
            if input_layer.dim != network.get_config()["input_size"]:
                raise ValueError(f"the embedding gives {input_layer.dim} features, the network "
                                 f"reads {network.get_config()['input_size']}")
            if input_layer.weight.dtype != self.dtype:
                raise ValueError(f"the embedding has dtype {input_layer.weight.dtype}, the "
                                 f"network {np.dtype(self.dtype).name}")
        self.input_layer = input_layer

    @classmethod
    def create(cls, input_size, network_params, n_outputs, loss, return_sequences, rng,
               attention=None, input_layer=None):
        """A new model: the network seeded with one int drawn from ``rng`` (a
        RandomState), the head Glorot-uniform as Keras' Dense, zero bias;
        ``attention`` (None, "additive" or "dot") adds an attention pooling
        drawn from ``rng`` after the head; ``input_layer`` (token input) is
        used as given."""
        network = make_network(input_size, network_params,
                               int(rng.randint(np.iinfo(np.int32).max)))
        dtype = np.dtype(network.get_config()["dtype"]).type
        fan_in = network.output_size * network.num_directions
        limit = np.sqrt(6.0 / (fan_in + n_outputs))
        head_weight = rng.uniform(-limit, limit, (fan_in, n_outputs)).astype(dtype)
        pooling = (None if attention is None
                   else AttentionPooling(attention, fan_in, dtype, rng=rng))
        return cls(network, head_weight, np.zeros(n_outputs, dtype=dtype), loss,
                   return_sequences, pooling, input_layer)

    # -- state: copies and files --------------------------------------------------
    @property
    def n_outputs(self):
        return self.head_bias.shape[0]

    def get_state(self):
        """(metadata, arrays) that :meth:`from_state` turns back into this model."""
        net = self.network
        meta = {"network": {"class": type(net).__name__, "config": net.get_config(),
                            "rng_state": net.rng_state},
                "n_outputs": int(self.n_outputs), "loss": self.loss,
                "return_sequences": self.return_sequences,
                "attention": None if self.attention is None else self.attention.kind}
        arrays = {f"network/{k}": v for k, v in net.state_dict().items()}
        if self.attention is not None:
            arrays.update({f"attention/{k}": v.copy() for k, v in self.attention.params.items()})
        arrays["head/weight"] = self.head_weight.copy()
        arrays["head/bias"] = self.head_bias.copy()
        if self.input_layer is not None:
            meta["input_layer"], layer_arrays = self.input_layer.get_state()
            arrays.update({f"input/{k}": v for k, v in layer_arrays.items()})
        return meta, arrays

    @classmethod
    def from_state(cls, meta, arrays):
        """The model :meth:`get_state` described; every array is checked (shape, dtype,
        finite) against the configuration."""
        net_meta = meta["network"]
        if _NETWORKS.get(net_meta["class"]) is ConvLSTM:
            raise ValueError("a ConvLSTM reads maps, not feature vectors: its model is a "
                             "ConvLSTMRegressor's, not a sequence model")
        network = _network_from_config(net_meta["class"], net_meta["config"])
        network.load_state_dict({k[len("network/"):]: v for k, v in arrays.items()
                                 if k.startswith("network/")})
        network.rng_state = net_meta["rng_state"]
        attention = meta.get("attention")      # absent in files of older versions
        if attention is not None:
            attention = AttentionPooling(
                attention, network.output_size * network.num_directions,
                np.dtype(network.get_config()["dtype"]),
                params={k[len("attention/"):]: v for k, v in arrays.items()
                        if k.startswith("attention/")})
        input_layer = None
        if meta.get("input_layer") is not None:
            input_layer = Embedding.from_state(meta["input_layer"],
                                               {k[len("input/"):]: v for k, v in arrays.items()
                                                if k.startswith("input/")})
        model = cls(network, arrays["head/weight"], arrays["head/bias"], meta["loss"],
                    meta["return_sequences"], attention, input_layer)
        if model.n_outputs != meta["n_outputs"]:
            raise ValueError(f"the head has {model.n_outputs} outputs, the metadata records "
                             f"{meta['n_outputs']!r}")
        return model

    def resume(self, **changes):
        """A copy for further training, its network rebuilt with ``changes`` to
        its configuration (e.g. dropout, n_jobs); weights and the dropout
        generator's state carry over."""
        net = self.network
        network = type(net)(**{**net.get_config(), **changes}, random_state=0)
        network.load_state_dict(net.state_dict())
        network.rng_state = net.rng_state
        layer = self.input_layer
        if layer is not None:
            layer = Embedding(layer.weight, layer.padding_idx, layer.frozen)    # a copy
        return type(self)(network, self.head_weight, self.head_bias, self.loss,
                          self.return_sequences,
                          None if self.attention is None else self.attention.copy(), layer)

    # -- parameters ---------------------------------------------------------------
    @property
    def params(self):
        """Live dict name -> array of every trainable parameter (updated in place)."""
        params = {_NETWORK_PREFIX + k: v for k, v in self.network.params.items()}
        params[_HEAD_WEIGHT] = self.head_weight
        params[_HEAD_BIAS] = self.head_bias
        if self.attention is not None:
            params.update({_ATTENTION_PREFIX + k: v for k, v in self.attention.params.items()})
        if self.input_layer is not None:
            params.update({_INPUT_PREFIX + k: v for k, v in self.input_layer.params.items()})
        return params

    def _set_param(self, name, value):
        """Rebind parameter ``name`` (a key of :attr:`params`) to the array ``value``."""
        if name == _HEAD_WEIGHT:
            self.head_weight = value
        elif name == _HEAD_BIAS:
            self.head_bias = value
        elif name.startswith(_NETWORK_PREFIX):
            self.network.params[name[len(_NETWORK_PREFIX):]] = value
        elif name.startswith(_ATTENTION_PREFIX):
            self.attention.params[name[len(_ATTENTION_PREFIX):]] = value
        else:
            raise KeyError(f"{name!r} is not a dense parameter of the model")

    def weight_names(self):
        """Parameters under the L2 penalty: weight matrices, not biases (as scikit-learn's MLP)."""
        attention = (() if self.attention is None else
                     tuple(_ATTENTION_PREFIX + k for k in self.attention.penalised_names))
        return [k for k in self.params
                if k.startswith(_NETWORK_PREFIX + "weight_") or k == _HEAD_WEIGHT
                or k in attention]

    # -- forward ------------------------------------------------------------------
    def _features(self, out, state):
        """Head input: the outputs at every step, or the top layer's last h."""
        if self.return_sequences:
            return out
        h_n = state[self.network.state_names.index("h")]
        D = self.network.num_directions
        return np.concatenate(list(h_n[-D:]), axis=-1) if D > 1 else h_n[-1]

    def inputs(self, X, lengths=None):
        """The network's input: X itself, or for token input the embedded ids (B, T, dim)."""
        if self.input_layer is None:
            return X
        return self.input_layer.forward(X, lengths)

    def head(self, features):
        """The Dense head for inference, in float64: ``features @ W + b``.

        The network's outputs do not depend on the other rows of a batch, but
        a float32 matrix product does (its summation order follows the
        number of rows); in float64 the head's results agree to ~1e-16 for
        any batching (scikit-learn's subset-invariance check), and one step
        of a stream (``predict_step``) gives what ``predict`` gives.
        """
        return (features.astype(np.float64) @ self.head_weight.astype(np.float64)
                + self.head_bias.astype(np.float64))

    def predict_raw(self, X, lengths):
        """Head outputs (B, n_outputs) or (B, T, n_outputs) as float64, inference mode,
        no cache kept."""
        self.network.eval()
        out, state = self.network.run(self.inputs(X, lengths),
                                      lengths=_ragged_only(lengths, X.shape[1]),
                                      keep_cache=False)
        if self.attention is not None:
            return self.head(self.attention.forward(out, lengths)[0])
        return self.head(self._features(out, state))

    def attention_weights(self, X, lengths):
        """The attention pooling's weights (B, T) as float64 (0 past each length),
        inference mode."""
        if self.attention is None:
            raise ValueError("the model has no attention pooling")
        self.network.eval()
        out, _ = self.network.run(self.inputs(X, lengths),
                                  lengths=_ragged_only(lengths, X.shape[1]), keep_cache=False)
        return self.attention.forward(out, lengths)[1].astype(np.float64)

    # -- loss and gradient --------------------------------------------------------
    def loss_and_grad(self, X, lengths, Y, W, alpha=0.0, tbptt_steps=None, need_grad=True,
                      flat=None):
        """Mini-batch loss (weighted mean + alpha/2 * ||weights||^2) and gradients.

        X (B, T, F), or (B, T) int64 token ids with an input layer; lengths
        (B,), Y targets and W entry weights: (B, ...) for sequence-to-one,
        (B, T, ...) per step (W = 0 past each length). The input layer's
        gradient is a :class:`~clstm._tokens.RowGradient`.
        ``tbptt_steps`` k splits time into chunks of k steps that carry the
        state forward, detached (no gradient crosses a chunk boundary).
        Raises :class:`NonFiniteError` when the loss, the gradient reaching
        the network or a carried state is not finite.
        ``flat`` (this model's :meth:`flat_params`): the dense gradients are
        written into its gradient buffer (zeroed here, no new arrays); the
        returned dict holds its views, valid until the next call with it.
        """
        net = self.network
        ids = X
        X = self.inputs(ids, lengths)
        B, T, _ = X.shape
        # (W.sum() is that sum for float64 weights, without the dtype argument's cost)
        norm = float(W.sum() if type(W) is np.ndarray and W.dtype == np.float64
                     else np.sum(W, dtype=np.float64))
        k = T if tbptt_steps is None else min(int(tbptt_steps), T)
        if self.attention is not None and k < T:
            raise ValueError("attention reads every step of a sequence at once: it cannot "
                             "be trained with truncated BPTT (tbptt_steps)")
        # the embedding's gradient is row-sparse: no dense zeros for it
        if not need_grad:
            grads = None
        elif flat is not None:
            grads = flat.zero_grads()
        else:
            grads = {name: np.zeros(v.shape, v.dtype) for name, v in self.params.items()
                     if not name.startswith(_INPUT_PREFIX)}
        # with the flat buffer, the network adds its parameter gradients straight
        # into it (no arrays of its own, no sum here)
        sink = ({"grads_into": self._network_grad_views(flat)}
                if flat is not None and need_grad else {})
        grad_inputs = (np.zeros_like(X) if need_grad and self.input_layer is not None
                       and self.input_layer.params else None)
        if sink and grad_inputs is None:
            # (the same extended backward: no gradient of X is assembled when no
            # input layer needs it)
            sink["grad_inputs"] = False
        h_index = net.state_names.index("h")
        shortest, longest = int(lengths.min()), int(lengths.max())
        state = None        # (sorted like X) the carried states, a list over state_names
        loss = 0.0
        # overflow is detected below and reported as NonFiniteError, not warned about
        with np.errstate(over="ignore", invalid="ignore"), _clearing_cache(net):
            for start in range(0, T, k):
                stop = min(start + k, T)
                # one chunk holding every sequence whole (no truncated BPTT, the
                # common case): every row is active and ends here, no selection
                every = start == 0 and stop == T and 1 <= shortest and longest <= T
                if every:
                    active, whole, len_c = slice(None), True, lengths
                else:
                    active = np.flatnonzero(lengths > start)
                    whole = active.size == B
                    len_c = np.minimum(lengths[active] - start, stop - start)
                Xc = X[:, start:stop] if whole else X[active, start:stop]
                state_in = None
                if state is not None:
                    state_in = tuple(s if whole else s[:, active] for s in state)
                    if not all(np.isfinite(s).all() for s in state_in):
                        raise NonFiniteError("state")
                if self.return_sequences:
                    rows = slice(None) if whole else active
                    Yc, Wc = Y[rows, start:stop], W[rows, start:stop]
                elif every:
                    ends = slice(None)
                    Yc, Wc = Y, W
                else:
                    # only sequences whose last step lies in this chunk see the loss
                    ends = np.flatnonzero(lengths[active] <= stop)
                    Yc, Wc = Y[active[ends]], W[active[ends]]
                if every:          # (None: every sequence fills the chunk)
                    ragged = len_c if shortest < T else None
                else:
                    ragged = _ragged_only(len_c, stop - start)
                out, state_out = net.run(Xc, state_in, ragged, keep_cache=need_grad)
                if stop == T:
                    pass                 # the last chunk: no state to carry on
                elif state is None:
                    state = [np.array(s) for s in state_out]     # start == 0: every row
                else:
                    for s, s_new in zip(state, state_out):
                        if whole:
                            s[...] = s_new
                        else:
                            s[:, active] = s_new
                if self.return_sequences:
                    feats = out
                elif self.attention is not None:     # one chunk: every sequence ends here
                    feats, _, attention_cache = self.attention.forward(out, len_c)
                elif every:
                    feats = self._features(out, state_out)
                else:
                    if ends.size == 0:
                        continue
                    feats = self._features(out, state_out)[ends]
                chunk_loss, grad_feats = self._head_loss(feats, Yc, Wc, norm,
                                                         grads if need_grad else None)
                loss += chunk_loss
                if not need_grad:
                    continue
                if self.return_sequences:
                    grad_Xc = net.backward_state(grad_feats, **sink)
                elif self.attention is not None:
                    grad_out, attention_grads = self.attention.backward(grad_feats,
                                                                        attention_cache)
                    for name, g in attention_grads.items():
                        grads[_ATTENTION_PREFIX + name] += g
                    grad_Xc = net.backward_state(grad_out, **sink)
                else:
                    grad_h = np.zeros_like(state_out[h_index])
                    H = net.output_size
                    D = net.num_directions
                    for d in range(D):
                        grad_h[-D + d, ends] = grad_feats[:, d * H:(d + 1) * H]
                    grad_Xc = net.backward_state(None,      # (the loss sees h_n only)
                                                 tuple(grad_h if i == h_index else None
                                                       for i in range(len(state_out))),
                                                 **sink)
                if grad_inputs is not None:
                    grad_inputs[slice(None) if whole else active, start:stop] = grad_Xc
                if not sink:             # (with a sink the network added them already)
                    net_grads = net.grads
                    for name in net.params:
                        grads[_NETWORK_PREFIX + name] += net_grads[name]
        if grad_inputs is not None:
            grads[_INPUT_PREFIX + "weight"] = self.input_layer.backward(ids, grad_inputs,
                                                                        lengths)
        if alpha:
            loss = self.add_penalty(loss, grads, alpha)
        return loss, grads

    def _head_loss(self, feats, Y, W, norm, grads):
        """The head's loss on ``feats`` and, with ``grads`` (else None), the gradient
        reaching ``feats``, the head's own gradients added into ``grads``.
        Raises NonFiniteError when the loss or that gradient is not finite."""
        n_out = self.head_weight.shape[1]
        F = feats.shape[-1]
        M = feats.size // F
        dtype = self.dtype
        kind = _FUSED_HEAD_LOSSES.get(self.loss)
        if (grads is not None and kind is not None and M * F * n_out <= _FUSED_HEAD_MAX
                and all(g.flags.c_contiguous and g.flags.writeable and g.dtype == dtype
                        for g in (grads[_HEAD_WEIGHT], grads[_HEAD_BIAS]))):
            # the head, the loss and their gradients in one pass (a few us at a
            # forecasting fit's 32 rows, against ~12 us of NumPy calls)
            grad_feats = np.empty((M, F), dtype=dtype)
            loss, finite = dense_head_loss(
                np.ascontiguousarray(feats, dtype=dtype).reshape(M, F),
                np.ascontiguousarray(self.head_weight, dtype=dtype),
                np.ascontiguousarray(self.head_bias, dtype=dtype),
                np.ascontiguousarray(Y, dtype=dtype).reshape(M, n_out),
                np.ascontiguousarray(W, dtype=np.float64).reshape(M), norm, kind,
                grads[_HEAD_WEIGHT], grads[_HEAD_BIAS], grad_feats)
            if not math.isfinite(loss):
                raise NonFiniteError("loss")
            if not finite:
                raise NonFiniteError("gradient")
            return loss, grad_feats.reshape(feats.shape)
        Z = _matmul(feats, self.head_weight) + self.head_bias
        loss, grad_Z = LOSSES[self.loss](Z, Y, W, norm)
        if not math.isfinite(loss):
            raise NonFiniteError("loss")
        if grads is None:
            return loss, None
        grads[_HEAD_WEIGHT] += feats.reshape(-1, F).T @ grad_Z.reshape(-1, n_out)
        grads[_HEAD_BIAS] += grad_Z.reshape(-1, n_out).sum(axis=0)
        grad_feats = _matmul(grad_Z, self.head_weight.T)
        if not is_finite(grad_feats):
            raise NonFiniteError("gradient")
        return loss, grad_feats


class _clearing_cache:
    """Drop the network's activations on the way out (also on an error)."""

    def __init__(self, network):
        self.network = network

    def __enter__(self):
        return self.network

    def __exit__(self, *exc):
        self.network.clear_cache()


def _matmul(A, B):
    """A (..., K) @ B (K, N) as one 2-D GEMM over all leading rows (for per-step
    heads: one (B*T, K) x (K, N) BLAS call instead of B of them)."""
    return (A.reshape(-1, A.shape[-1]) @ B).reshape(A.shape[:-1] + (B.shape[1],))


def _ragged_only(lengths, n_steps):
    """None when every sequence fills all n_steps: the network then skips
    sorting and padding (same result, less work)."""
    if lengths is None or np.all(np.asarray(lengths) == n_steps):
        return None
    return lengths
