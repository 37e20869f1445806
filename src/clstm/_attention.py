"""Attention pooling: one vector per sequence from the network's outputs at every step.

For the outputs ``h_1 .. h_T`` of a sequence of length ``L`` (the top
layer's outputs, both directions concatenated for a bidirectional network),
a score per step, a softmax over the *valid* steps ``t < L`` only, and the
weighted sum::

    additive ("Bahdanau"):  e_t = v . tanh(h_t @ W + b)
    dot:                    e_t = q . h_t / sqrt(d)
    a_t = exp(e_t) / sum_{s < L} exp(e_s)      (a_t = 0 for t >= L)
    context = sum_t a_t h_t

The additive score is Bahdanau, Cho & Bengio (2015), "Neural machine
translation by jointly learning to align and translate", with a learned
vector ``v`` in place of the decoder state, as in the feed-forward attention
of Raffel & Ellis (2016), "Feed-forward networks with attention can solve
some long-term memory problems", and the word attention of Yang et al.
(2016), "Hierarchical attention networks for document classification" (their
``u_w`` is ``v``). The dot score is the scaled dot product of Vaswani et al.
(2017) with one learned query. Steps past a sequence's length never change a
result: their scores are masked before the softmax and their outputs are
zeroed before any product (so even NaN padding is harmless).

:class:`AttentionPooling` owns its parameters and runs forward and backward
in NumPy (the cost is O(B T d a), small next to the recurrent scan);
:func:`reference_attention` is a plain loop over sequences, the tests' oracle.
"""

import numpy as np

__all__ = ["ATTENTION_KINDS", "AttentionPooling", "reference_attention"]

ATTENTION_KINDS = ("additive", "dot")

# parameter names per kind (prefixed "attention." in the model's parameters)
_PARAM_NAMES = {"additive": ("weight", "bias", "score_vector"), "dot": ("query",)}
# those under the L2 penalty (weights, not biases)
_PENALISED = {"additive": ("weight", "score_vector"), "dot": ("query",)}


def valid_mask(lengths, n_steps):
    """(B, T) bool: step t of sequence i is valid (t < lengths[i])."""
    return np.arange(n_steps)[None, :] < np.asarray(lengths)[:, None]


def masked_softmax(scores, mask):
    """Softmax over the last axis restricted to ``mask`` (zeros elsewhere)."""
    scores = np.where(mask, scores, -np.inf)
    top = np.max(scores, axis=-1, keepdims=True)
    e = np.where(mask, np.exp(scores - top), 0.0)
    return e / np.sum(e, axis=-1, keepdims=True)


class AttentionPooling:
    """Attention pooling over per-step features (see the module docstring).

    Parameters
    ----------
    kind : {"additive", "dot"}
    input_size : int
        Features per step ``d`` (the network's ``num_directions * output_size``).
    dtype : numpy float type
    params : dict name -> ndarray, optional
        The parameters (``weight`` (d, d), ``bias`` (d,), ``score_vector``
        (d,) for "additive"; ``query`` (d,) for "dot"); None draws them
        from ``rng``.
    rng : numpy RandomState, optional
        For new parameters: Glorot-uniform weights, zero bias.

    The additive score's hidden width equals ``d`` (Yang et al.'s choice).
    """

    def __init__(self, kind, input_size, dtype, params=None, rng=None):
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention must be None or one of {list(ATTENTION_KINDS)}, "
                             f"got {kind!r}")
        self.kind = kind
        self.input_size = int(input_size)
        self.dtype = np.dtype(dtype).type
        d = self.input_size
        shapes = {"weight": (d, d), "bias": (d,), "score_vector": (d,), "query": (d,)}
        self._shapes = {k: shapes[k] for k in _PARAM_NAMES[kind]}
        if params is None:
            if rng is None:
                raise ValueError("AttentionPooling needs params or rng")
            params = self._initial_params(rng)
        self.params = {}
        for name, shape in self._shapes.items():
            if name not in params:
                raise ValueError(f"attention parameter {name!r} is missing")
            value = np.asarray(params[name])
            if value.shape != shape:
                raise ValueError(f"attention parameter {name!r} has shape {value.shape}, "
                                 f"expected {shape}")
            if value.dtype != self.dtype:
                raise ValueError(f"attention parameter {name!r} has dtype {value.dtype}, "
                                 f"expected {np.dtype(self.dtype).name}")
            if not np.isfinite(value).all():
                raise ValueError(f"attention parameter {name!r} contains NaN or infinite values")
            self.params[name] = np.array(value, order="C")       # private, writable
        extra = set(params) - set(self._shapes)
        if extra:
            raise ValueError(f"unexpected attention parameters {sorted(extra)}")

    def _initial_params(self, rng):
        d = self.input_size

        def glorot(shape, fan_in, fan_out):
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            return rng.uniform(-limit, limit, shape).astype(self.dtype)

        if self.kind == "additive":
            return {"weight": glorot((d, d), d, d), "bias": np.zeros(d, self.dtype),
                    "score_vector": glorot((d,), d, 1)}
        return {"query": glorot((d,), d, 1)}

    @property
    def penalised_names(self):
        return _PENALISED[self.kind]

    def copy(self):
        return AttentionPooling(self.kind, self.input_size, self.dtype, params=self.params)

    def __setstate__(self, state):
        # read-only arrays (e.g. joblib memory maps) -> private writable copies
        self.__dict__.update(state)
        self.params = {k: v if v.flags.writeable else np.array(v)
                       for k, v in self.params.items()}

    # -- forward / backward ---------------------------------------------------------
    def forward(self, out, lengths):
        """``(context (B, d), weights (B, T), cache)`` for outputs ``out`` (B, T, d).

        ``lengths`` (B,) or None (every step valid). ``weights`` are 0 past
        each length and sum to 1 over the valid steps.
        """
        B, T, d = out.shape
        if d != self.input_size:
            raise ValueError(f"attention expects {self.input_size} features per step, got {d}")
        mask = valid_mask(np.full(B, T) if lengths is None else lengths, T)
        h = np.where(mask[..., None], out, 0).astype(self.dtype, copy=False)
        p = self.params
        with np.errstate(over="ignore", invalid="ignore"):
            if self.kind == "additive":
                u = np.tanh(h @ p["weight"] + p["bias"])             # (B, T, d)
                scores = u @ p["score_vector"]
            else:
                u = None
                scores = (h @ p["query"]) / self.dtype(np.sqrt(d))
            weights = masked_softmax(scores, mask).astype(self.dtype, copy=False)
            context = np.einsum("bt,btd->bd", weights, h)
        return context, weights, (h, u, weights, mask)

    def backward(self, grad_context, cache):
        """Gradient w.r.t. the outputs ``out`` (B, T, d) (zero past each length)
        and the parameter gradients (dict like :attr:`params`)."""
        h, u, a, mask = cache
        p = self.params
        grad_context = np.asarray(grad_context, dtype=self.dtype)
        # context = sum_t a_t h_t
        grad_h = a[..., None] * grad_context[:, None, :]
        grad_a = np.einsum("btd,bd->bt", h, grad_context)
        # softmax: de_t = a_t (da_t - sum_s a_s da_s); zero where masked (a = 0)
        grad_e = a * (grad_a - np.sum(a * grad_a, axis=1, keepdims=True))
        grads = {}
        d = self.input_size
        if self.kind == "additive":
            grads["score_vector"] = np.einsum("bt,btk->k", grad_e, u)
            grad_pre = grad_e[..., None] * p["score_vector"] * (1 - u * u)   # (B, T, d)
            flat_pre = grad_pre.reshape(-1, d)
            grads["weight"] = h.reshape(-1, d).T @ flat_pre
            grads["bias"] = flat_pre.sum(axis=0)
            grad_h += grad_pre @ p["weight"].T
        else:
            scale = self.dtype(1.0 / np.sqrt(d))
            grads["query"] = np.einsum("bt,btd->d", grad_e, h) * scale
            grad_h += grad_e[..., None] * (p["query"] * scale)
        grad_h = np.where(mask[..., None], grad_h, 0).astype(self.dtype, copy=False)
        return grad_h, {k: np.asarray(v, dtype=self.dtype) for k, v in grads.items()}


def reference_attention(kind, params, out, lengths):
    """Pure-NumPy oracle, one sequence at a time in float64, reading only the
    valid steps: ``(context (B, d), weights (B, T))``."""
    out = np.asarray(out, dtype=np.float64)
    B, T, d = out.shape
    context = np.zeros((B, d))
    weights = np.zeros((B, T))
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    for i in range(B):
        L = T if lengths is None else int(lengths[i])
        hs = out[i, :L]
        if kind == "additive":
            e = np.array([p["score_vector"] @ np.tanh(h @ p["weight"] + p["bias"]) for h in hs])
        else:
            e = np.array([p["query"] @ h / np.sqrt(d) for h in hs])
        e = np.exp(e - e.max())
        a = e / e.sum()
        weights[i, :L] = a
        context[i] = a @ hs
    return context, weights
