"""Token inputs: id validation, the embedding input layer and its row-sparse gradient.

(The kernels are the compiled ``clstm._embedding``; this module cannot share
its name, as an extension module shadows a ``.py`` of the same stem.)

An :class:`Embedding` is the input layer of a :class:`~clstm._model.SequenceModel`
on token sequences: the model calls :meth:`Embedding.forward` on the
(B, T) int64 ids before the network and :meth:`Embedding.backward` on the
network's input gradient after it. The backward returns a
:class:`RowGradient`: the sorted distinct ids of the batch and one gradient
row for each (a scatter-add in the compiled kernel), never a dense
(vocab_size, dim) array. The optimizers update only those rows ("lazy"
updates, as torch's ``SparseAdam``; see :mod:`clstm._optimizers`).

Ids are checked here, in Python, before any kernel reads them: a non-integer,
negative or out-of-vocabulary id raises a ValueError naming it and its
position.
"""

import numbers

import numpy as np

__all__ = ["Embedding", "RowGradient", "check_token_ids", "token_sequences",
           "EMBEDDING_PARAMS", "check_embedding_params", "embedding_shape"]

# Estimator hyperparameters of the embedding (token input when vocab_size or
# embeddings is set).
EMBEDDING_PARAMS = ("vocab_size", "embedding_dim", "padding_idx", "embeddings",
                    "freeze_embeddings")
DEFAULT_EMBEDDING_DIM = 64


def _kernels():
    from clstm import _embedding   # the compiled gather / scatter-add kernels
    return _embedding


# ----------------------------------------------------------------------
# ids
# ----------------------------------------------------------------------
def _as_ids(seq, where):
    """One sequence as an int64 array; a ValueError naming the first non-integer id."""
    a = np.asarray(seq)
    if a.dtype.kind in "iu":
        return a.astype(np.int64, copy=False)
    if a.dtype.kind == "b" or a.dtype.kind not in "f":
        raise ValueError(f"{where}: token ids must be integers, got an array of dtype "
                         f"{a.dtype}")
    bad = ~np.isfinite(a) | (a != np.round(a))
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{where}: token ids must be integers, got {a[pos].item()!r} at position "
                         f"{pos[0] if len(pos) == 1 else pos}")
    return a.astype(np.int64)


def check_token_ids(ids, vocab_size, where="X"):
    """``ids`` as int64, every id in [0, vocab_size); otherwise a ValueError naming
    the first offending id and its position."""
    a = _as_ids(ids, where)
    bad = (a < 0) | (a >= vocab_size)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        where_pos = pos[0] if len(pos) == 1 else pos
        raise ValueError(f"{where}: token id {int(a[pos])} at position {where_pos} is outside "
                         f"the vocabulary [0, {vocab_size}) (vocab_size={vocab_size})")
    return a


def token_sequences(X, vocab_size, lengths=None):
    """Token input as a padded int64 array (n, T), lengths (n,) and whether it was ragged.

    ``X``: a list of 1-D int arrays (ragged), or a 2-D (n, T) int array, padded
    when ``lengths`` is given (the padding is never read nor checked).
    """
    if hasattr(X, "to_numpy"):
        X = X.to_numpy()
    if lengths is not None:
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise ValueError(f"lengths needs a padded token array X of shape (n_samples, "
                             f"n_timesteps), got shape {arr.shape}")
        from clstm._base import _check_lengths   # one checker of lengths
        lengths = _check_lengths(lengths, arr.shape[0], arr.shape[1])
        seqs = [arr[i, :lengths[i]] for i in range(arr.shape[0])]
        ragged = True
    elif isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim != 2:
            raise ValueError(_layout_message(X.shape))
        seqs = list(X)
        ragged = False
    elif isinstance(X, (list, tuple, np.ndarray)):
        seqs = list(X)
        ragged = True
    else:
        raise ValueError(_layout_message(getattr(X, "shape", type(X).__name__)))
    if len(seqs) == 0:
        raise ValueError("X has no sequences")
    checked = []
    for i, s in enumerate(seqs):
        if isinstance(s, str):
            raise ValueError(f"X[{i}] is a string; encode text first (e.g. "
                             "clstm.CharTokenizer().fit(texts).encode(text))")
        a = np.asarray(s)
        if a.ndim != 1:
            raise ValueError(f"X[{i}] has shape {a.shape}: token sequences are 1-D arrays of "
                             f"ids ({_layout_message(None)})")
        if a.shape[0] == 0:
            raise ValueError(f"X[{i}] is empty: every sequence needs at least one token")
        checked.append(check_token_ids(a, vocab_size, f"X[{i}]"))
    n = len(checked)
    lens = np.array([s.shape[0] for s in checked], dtype=np.int64)
    out = np.zeros((n, int(lens.max())), dtype=np.int64)
    for i, s in enumerate(checked):
        out[i, :s.shape[0]] = s
    return out, lens, ragged


def _layout_message(shape):
    got = "" if shape is None else f", got {shape}"
    return ("token input X must be a list of 1-D integer arrays (one per sequence, any "
            "lengths) or a 2-D integer array (n_samples, n_timesteps), padded with lengths= "
            f"for sequences of different lengths{got}")


# ----------------------------------------------------------------------
# hyperparameters
# ----------------------------------------------------------------------
def _is_int(value):
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(
        value, (bool, np.bool_))


def embedding_shape(est):
    """(vocab_size, embedding_dim) of an estimator's token input, or None without one."""
    if est.vocab_size is None and est.embeddings is None:
        return None
    if est.embeddings is not None:
        shape = np.shape(est.embeddings)
        return int(shape[0]), int(shape[1])
    dim = DEFAULT_EMBEDDING_DIM if est.embedding_dim is None else int(est.embedding_dim)
    return int(est.vocab_size), dim


def check_embedding_params(est, error):
    """Validate the EMBEDDING_PARAMS of ``est``; ``error(message)`` builds the exception."""
    name = type(est).__name__
    v, d, p = est.vocab_size, est.embedding_dim, est.padding_idx
    if v is not None and (not _is_int(v) or v < 1):
        raise error(f"{name}: parameter 'vocab_size' must be None or an int >= 1, got {v!r}")
    if d is not None and (not _is_int(d) or d < 1):
        raise error(f"{name}: parameter 'embedding_dim' must be None or an int >= 1, got {d!r}")
    if not isinstance(est.freeze_embeddings, (bool, np.bool_)):
        raise error(f"{name}: parameter 'freeze_embeddings' must be a bool, got "
                    f"{est.freeze_embeddings!r}")
    E = est.embeddings
    if E is not None:
        arr = np.asarray(E)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1 or arr.dtype.kind not in "iuf":
            raise error(f"{name}: parameter 'embeddings' must be a 2-D float array "
                        f"(vocab_size, embedding_dim), got {arr.dtype} of shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise error(f"{name}: parameter 'embeddings' contains NaN or infinite values")
        if v is not None and v != arr.shape[0]:
            raise error(f"{name}: vocab_size={v} but embeddings has {arr.shape[0]} rows; "
                        "leave vocab_size=None or make them agree")
        if d is not None and d != arr.shape[1]:
            raise error(f"{name}: embedding_dim={d} but embeddings has {arr.shape[1]} "
                        "columns; leave embedding_dim=None or make them agree")
    elif est.freeze_embeddings:
        raise error(f"{name}: freeze_embeddings=True needs pretrained vectors in "
                    "'embeddings' (a frozen random table would never learn)")
    shape = embedding_shape(est)
    if shape is None:
        set_ = [q for q in ("embedding_dim", "padding_idx") if getattr(est, q) is not None]
        if set_:
            raise error(f"{name}: {', '.join(set_)} applies to token input only; set "
                        "vocab_size (or embeddings) too, or leave it at None")
    elif p is not None and (not _is_int(p) or not 0 <= p < shape[0]):
        raise error(f"{name}: parameter 'padding_idx' must be None or an int in "
                    f"[0, {shape[0]}), got {p!r}")


# ----------------------------------------------------------------------
# the row-sparse gradient
# ----------------------------------------------------------------------
class RowGradient:
    """The gradient of a (vocab_size, dim) table that is zero outside ``rows``.

    ``rows`` (n,) sorted distinct int64 row indices, ``values`` (n, dim) their
    gradients, ``shape`` the table's. It offers what the training loop does
    with a gradient: ``ravel()`` (its non-zero entries, for the global norm)
    and in-place scaling (``g *= s``, clipping); the optimizers update
    ``param[rows]`` only. :meth:`toarray` gives the dense equivalent (tests).
    """

    __slots__ = ("rows", "values", "shape")

    def __init__(self, rows, values, shape):
        self.rows, self.values, self.shape = rows, values, tuple(shape)

    @property
    def dtype(self):
        return self.values.dtype

    def ravel(self):
        return self.values.ravel()

    def __imul__(self, scale):
        self.values *= scale
        return self

    def __iadd__(self, other):
        if not isinstance(other, RowGradient):
            return NotImplemented
        rows = np.union1d(self.rows, other.rows)
        values = np.zeros((rows.size, self.shape[1]), dtype=self.values.dtype)
        values[np.searchsorted(rows, self.rows)] += self.values
        values[np.searchsorted(rows, other.rows)] += other.values
        self.rows, self.values = rows, values
        return self

    def toarray(self):
        dense = np.zeros(self.shape, dtype=self.values.dtype)
        dense[self.rows] = self.values
        return dense


# ----------------------------------------------------------------------
# the input layer
# ----------------------------------------------------------------------
class Embedding:
    """Token ids -> vectors: ``out[b, t] = weight[ids[b, t]]``.

    Parameters
    ----------
    weight : ndarray of shape (vocab_size, dim), float32 or float64
        The table (a private writable copy is kept; training updates it in place).
    padding_idx : int or None
        A row that is zero and gets no gradient (as torch's ``nn.Embedding``).
        Its row of ``weight`` is set to zero.
    frozen : bool
        A frozen table is not a trainable parameter (:attr:`params` is empty).
    """

    def __init__(self, weight, padding_idx=None, frozen=False):
        weight = np.array(weight, order="C")
        if weight.ndim != 2 or weight.dtype not in (np.float32, np.float64):
            raise ValueError(f"embedding weight must be a 2-D float32/float64 array, got "
                             f"{weight.dtype} of shape {weight.shape}")
        if not np.isfinite(weight).all():
            raise ValueError("embedding weight contains NaN or infinite values")
        if padding_idx is not None:
            if not _is_int(padding_idx) or not 0 <= padding_idx < weight.shape[0]:
                raise ValueError(f"padding_idx must be None or in [0, {weight.shape[0]}), got "
                                 f"{padding_idx!r}")
            padding_idx = int(padding_idx)
            weight[padding_idx] = 0
        self.weight = weight
        self.padding_idx = padding_idx
        self.frozen = bool(frozen)

    @classmethod
    def create(cls, vocab_size, dim, dtype, rng, padding_idx=None, weight=None, frozen=False):
        """A new table: ``weight`` (pretrained vectors, copied) or N(0, 1) entries as
        torch's ``nn.Embedding``, drawn from the RandomState ``rng``."""
        if weight is None:
            weight = rng.standard_normal((vocab_size, dim))
        return cls(np.asarray(weight, dtype=dtype), padding_idx, frozen)

    @property
    def vocab_size(self):
        return self.weight.shape[0]

    @property
    def dim(self):
        return self.weight.shape[1]

    @property
    def params(self):
        """Trainable parameters by name (the live table, or nothing when frozen)."""
        return {} if self.frozen else {"weight": self.weight}

    def get_config(self):
        return {"vocab_size": int(self.vocab_size), "dim": int(self.dim),
                "padding_idx": self.padding_idx, "frozen": self.frozen,
                "dtype": self.weight.dtype.name}

    def get_state(self):
        return self.get_config(), {"weight": self.weight.copy()}

    @classmethod
    def from_state(cls, config, arrays):
        weight = arrays["weight"]
        expected = (config["vocab_size"], config["dim"])
        if weight.shape != expected or weight.dtype.name != config["dtype"]:
            raise ValueError(f"embedding weight has shape {weight.shape} / dtype {weight.dtype}, "
                             f"expected {expected} / {config['dtype']}")
        if config["padding_idx"] is not None and np.any(weight[config["padding_idx"]] != 0):
            raise ValueError(f"the embedding's padding row {config['padding_idx']} is not zero")
        return cls(weight, config["padding_idx"], config["frozen"])

    def __setstate__(self, state):
        self.__dict__.update(state)
        if not self.weight.flags.writeable:    # joblib memory maps: updated in place
            self.weight = np.array(self.weight)

    # -- forward / backward -------------------------------------------------
    def forward(self, ids, lengths=None):
        """(B, T) int64 ids (valid everywhere before each length) -> (B, T, dim), zero
        past each sequence's length."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        B, T = ids.shape
        lengths = (np.full(B, T, dtype=np.int64) if lengths is None
                   else np.ascontiguousarray(lengths, dtype=np.int64))
        out = np.empty((B, T, self.dim), dtype=self.weight.dtype)
        _kernels().gather(self.weight, ids, lengths, out)
        return out

    def backward(self, ids, grad_out, lengths=None):
        """The table's gradient as a :class:`RowGradient` over the distinct ids
        of the valid steps (padding_idx excluded): sum over (b, t) with
        ``ids[b, t] == row`` of ``grad_out[b, t]``."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        B, T = ids.shape
        lengths = (np.full(B, T, dtype=np.int64) if lengths is None
                   else np.ascontiguousarray(lengths, dtype=np.int64))
        valid = np.arange(T)[None, :] < lengths[:, None]
        rows, inverse = np.unique(ids[valid], return_inverse=True)
        slots = np.full((B, T), -1, dtype=np.int64)
        slots[valid] = inverse.reshape(-1)
        if self.padding_idx is not None:
            k = np.searchsorted(rows, self.padding_idx)
            if k < rows.size and rows[k] == self.padding_idx:
                slots[slots == k] = -1
                slots[slots > k] -= 1
                rows = np.delete(rows, k)
        values = np.zeros((rows.size, self.dim), dtype=self.weight.dtype)
        grad_out = np.ascontiguousarray(grad_out, dtype=self.weight.dtype)
        _kernels().scatter_add(grad_out, slots, lengths, values)
        return RowGradient(rows.astype(np.int64), values, self.weight.shape)
