"""LSTMLanguageModel: next-token prediction on token sequences, perplexity, generation.

The model is the token classifier's machinery with the targets fixed by the
data: an embedding table, the recurrent network and a per-step softmax over
the whole vocabulary (its projection one (B*T, H) x (H, vocab_size) GEMM
through BLAS), trained on the cross-entropy of token t+1 given tokens 0..t.
"""

import numpy as np
from scipy.special import log_softmax
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from clstm._estimators import _COMMON_ATTRIBUTES, LSTMClassifier
from clstm._tokens import check_token_ids, embedding_shape, token_sequences
from clstm._validation import InvalidParameterError

__all__ = ["LSTMLanguageModel"]

# float64 entries of the (rows, steps, vocab_size) outputs scored at once
_SCORE_ENTRIES = 1 << 22


class LSTMLanguageModel(LSTMClassifier):
    __doc__ = """A recurrent language model: predicts each next token of token sequences.

    ``fit(X)`` trains on every step of every sequence: the per-step softmax
    over the vocabulary at step t is scored against token t + 1 (the
    cross-entropy in nats, weighted by ``sample_weight`` per sequence;
    sequences of one token have nothing to predict and are skipped).
    :meth:`score` is the mean log-likelihood per predicted token (higher is
    better, as scikit-learn's scores), :meth:`perplexity` its ``exp(-score)``,
    and :meth:`generate` continues a prompt, carrying the network state from
    token to token (``net.step``) instead of rereading the prefix.

    ``X``: a list of 1-D int arrays of token ids in ``[0, vocab_size)``
    (different lengths allowed), or a 2-D int array ``(n_samples,
    n_timesteps)``, padded with ``lengths=``. For text, cut a long corpus into
    windows (e.g. 100 characters) and encode them with
    :class:`clstm.CharTokenizer`. :meth:`predict_proba` on a sequence gives,
    at step t, the distribution of the token after step t (shape
    ``(n, T, vocab_size)``; a list for ragged ``X``).

    Parameters
    ----------
    vocab_size : int or None, default=None
        Number of token ids; required unless ``embeddings`` gives it.
    embedding_dim : int or None, default=None
        Embedding width (None: 64, or the width of ``embeddings``).
    padding_idx, embeddings, freeze_embeddings
        As in :class:`clstm.LSTMClassifier`: a never-trained zero row,
        pretrained vectors, and whether to keep them fixed. The table is
        trained with lazy row updates (only rows seen in a mini-batch move,
        as torch's ``SparseAdam``).
    hidden_size : int, default=128
        Units of each recurrent layer.
    max_iter : int, default=50
        Epochs.
    The other parameters are those of :class:`clstm.LSTMClassifier` (the
    network is unidirectional and the head is per step by construction;
    there is no input standardisation nor class weighting).

    Attributes
    ----------""" + _COMMON_ATTRIBUTES + """    classes_ : ndarray of shape (vocab_size,)
        ``arange(vocab_size)``: every token id is a class of the softmax,
        seen in the data or not.

    Examples
    --------
    >>> import clstm
    >>> tok = clstm.CharTokenizer().fit(["abcabcabc"])
    >>> X = [tok.encode("abcabcabcabc")] * 8
    >>> lm = clstm.LSTMLanguageModel(vocab_size=tok.vocab_size_, hidden_size=16,
    ...                              learning_rate_init=0.05, max_iter=30,
    ...                              random_state=0).fit(X)
    >>> tok.decode(lm.generate(tok.encode("ab"), 4, temperature=0))
    'cabc'
    >>> round(lm.perplexity(X), 1)
    1.0
    """

    # fixed by construction (not parameters): read by the shared training loop
    return_sequences = True
    bidirectional = False
    standardize = False
    class_weight = None
    attention = None            # per-step outputs: no pooling

    def __init__(self, vocab_size=None, embedding_dim=None, padding_idx=None, embeddings=None,
                 freeze_embeddings=False, hidden_size=128, num_layers=1, cell="lstm",
                 proj_size=0, peephole=False, coupled_gates=False, layer_norm=False,
                 dropout=0.0, recurrent_dropout=0.0, dtype="float32", solver="adam",
                 learning_rate_init=1e-3, learning_rate="constant", power_t=0.5,
                 batch_size=32, max_iter=50, shuffle=True,
                 alpha=1e-4, clip_norm=5.0, momentum=0.9, nesterovs_momentum=True,
                 beta_1=0.9, beta_2=0.999, rho=0.9, epsilon=1e-8, tol=1e-4,
                 early_stopping=False, validation_fraction=0.1, validation_holdout="random",
                 n_iter_no_change=10,
                 tbptt_steps=None, random_state=None, n_jobs=None, verbose=0,
                 warm_start=False):
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.embeddings = embeddings
        self.freeze_embeddings = freeze_embeddings
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.cell = cell
        self.proj_size = proj_size
        self.peephole = peephole
        self.coupled_gates = coupled_gates
        self.layer_norm = layer_norm
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
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
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.warm_start = warm_start

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.estimator_type = None          # not a classifier of samples
        tags.target_tags.required = False
        return tags

    # -- the vocabulary -------------------------------------------------------
    def _validate_hyperparameters(self):
        super()._validate_hyperparameters()
        shape = embedding_shape(self)
        if shape is None:
            raise InvalidParameterError(
                f"{type(self).__name__} needs vocab_size (the number of token ids, e.g. "
                "CharTokenizer().fit(texts).vocab_size_) or pretrained embeddings")
        if shape[0] < 2:
            raise InvalidParameterError(f"{type(self).__name__}: vocab_size must be >= 2 (a "
                                        f"softmax over one token predicts nothing), got "
                                        f"{shape[0]}")

    def _vocab(self, incremental=None):
        """The vocabulary size: the fitted model's (prediction, or a fit that
        continues it: incremental / warm_start), else the parameters'."""
        if incremental is None or not self._first_pass(incremental):
            check_is_fitted(self)
            return self._model.input_layer.vocab_size
        return embedding_shape(self)[0]

    @property
    def _loss(self):
        return "softmax"

    def _encode_targets(self, labels, lengths, first, incremental, classes):
        """Targets are token ids: the class codes themselves (checked in _shifted)."""
        if first:
            self.classes_ = np.arange(embedding_shape(self)[0])
            self.n_outputs_ = 1
        return np.asarray(labels, dtype=np.int64)

    def _n_head_outputs(self):
        return self.classes_.size

    def _set_target_state(self, fitted, arrays, n_head_outputs):
        classes = arrays["classes"]
        if not np.array_equal(classes, np.arange(n_head_outputs)):
            raise ValueError(f"classes must be arange({n_head_outputs}) (one per token id)")
        self.classes_ = classes.astype(np.int64)
        self.n_outputs_ = 1

    def _shifted(self, X, lengths, sample_weight, vocab_size):
        """Padded inputs (tokens 0..T-2), targets (tokens 1..T-1), their lengths
        and sample weights, of the sequences with at least two tokens."""
        arr, lens, _ = token_sequences(X, vocab_size, lengths)
        keep = np.flatnonzero(lens >= 2)
        if keep.size == 0:
            raise ValueError("every sequence of X has fewer than 2 tokens: there is no next "
                             "token to predict")
        sw = None
        if sample_weight is not None:
            sw = self._check_sample_weight(sample_weight, arr.shape[0])[keep]
        arr, lens = arr[keep], lens[keep] - 1
        T = int(lens.max())
        return arr[:, :T], arr[:, 1:T + 1], lens, sw

    # -- fitting --------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None, lengths=None):
        """Fit next-token prediction on token sequences ``X`` (``y`` is ignored).

        Parameters
        ----------
        X : list of 1-D int arrays, or 2-D int array (n_samples, n_timesteps)
            Token ids in ``[0, vocab_size)``.
        y : None
            Ignored: the targets are X shifted by one step.
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each sequence (of each of its tokens).
        lengths : array-like of int of shape (n_samples,), default=None
            Valid tokens of each row of a padded 2-D ``X``.

        Returns
        -------
        self
        """
        self._validate_hyperparameters()
        inputs, targets, lens, sw = self._shifted(X, lengths, sample_weight,
                                                  self._vocab(incremental=False))
        return self._transaction(inputs, targets, sw, incremental=False, lengths=lens)

    def partial_fit(self, X, y=None, sample_weight=None, lengths=None):
        """One epoch over ``X``, continuing from the current model (as :meth:`fit`)."""
        self._validate_hyperparameters()
        vocab_size = self._vocab(incremental=True)
        inputs, targets, lens, sw = self._shifted(X, lengths, sample_weight, vocab_size)
        return self._transaction(inputs, targets, sw, incremental=True,
                                 classes=np.arange(vocab_size), lengths=lens)

    # -- evaluation -----------------------------------------------------------
    def score(self, X, y=None, sample_weight=None, lengths=None):
        """Mean log-likelihood per predicted token (natural log; higher is better).

        Over every step t >= 1 of every sequence: ``log p(x_t | x_0..x_{t-1})``,
        averaged over the tokens (weighted by each sequence's
        ``sample_weight``). ``-score`` is the cross-entropy in nats,
        ``exp(-score)`` the perplexity. ``y`` is ignored.
        """
        inputs, targets, lens, sw = self._shifted(X, lengths, sample_weight, self._vocab())
        model = self._model
        V = model.n_outputs
        n, T = inputs.shape
        rows_per_batch = max(1, _SCORE_ENTRIES // (T * V))
        total = np.zeros(n)
        for s in range(0, n, rows_per_batch):
            rows = slice(s, s + rows_per_batch)
            T_b = int(lens[rows].max())
            Z = model.predict_raw(inputs[rows, :T_b], lens[rows])
            log_p = log_softmax(Z, axis=-1)
            picked = np.take_along_axis(log_p, targets[rows, :T_b, None], axis=-1)[..., 0]
            picked[np.arange(T_b)[None, :] >= lens[rows, None]] = 0.0
            total[rows] = picked.sum(axis=1)
        w = np.ones(n) if sw is None else sw
        return float(np.sum(w * total) / np.sum(w * lens))

    def perplexity(self, X, sample_weight=None, lengths=None):
        """Perplexity ``exp(-score(X))``: the model's effective number of equally
        likely choices per token (1 is perfect; a uniform guess gives vocab_size)."""
        return float(np.exp(-self.score(X, sample_weight=sample_weight, lengths=lengths)))

    # -- generation -----------------------------------------------------------
    def generate(self, prompt, n_tokens, temperature=1.0, top_k=None, random_state=None):
        """Continue ``prompt`` by ``n_tokens`` tokens.

        The prompt is read once; each new token is then one ``net.step`` from
        the carried state (no recomputation of the prefix).

        Parameters
        ----------
        prompt : 1-D array-like of int
            Token ids (at least one).
        n_tokens : int
            Number of tokens to generate (>= 0).
        temperature : float, default=1.0
            Sample from ``softmax(logits / temperature)``; 0 is greedy
            (always the most likely token).
        top_k : int or None, default=None
            Sample among the ``top_k`` most likely tokens only.
        random_state : int, RandomState instance or None, default=None
            Seeds the sampling.

        Returns
        -------
        tokens : ndarray of shape (n_tokens,), int64
            The generated ids (the prompt not included).
        """
        check_is_fitted(self)
        model = self._model
        V = model.n_outputs
        ids = check_token_ids(np.asarray(prompt), V, "prompt")
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"prompt must be a non-empty 1-D sequence of token ids, got shape "
                             f"{ids.shape}")
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) \
                or n_tokens < 0:
            raise ValueError(f"n_tokens must be an int >= 0, got {n_tokens!r}")
        if isinstance(temperature, bool) or not np.isscalar(temperature) \
                or not np.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a float >= 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(
                top_k, (int, np.integer)) or not 1 <= top_k):
            raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
        rng = check_random_state(random_state)
        net = model.network
        net.eval()
        out, state = net.run(model.inputs(ids[None]), keep_cache=False)
        h = out[:, -1]
        generated = np.empty(int(n_tokens), dtype=np.int64)
        for i in range(int(n_tokens)):
            logits = model.head(h)[0]
            token = _sample(logits, temperature, top_k, rng)
            generated[i] = token
            if i + 1 < n_tokens:
                h, state = net.step(model.inputs(np.array([[token]]))[:, 0], state)
        return generated


def _sample(logits, temperature, top_k, rng):
    """One token id from ``softmax(logits / temperature)`` restricted to the top_k."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits / temperature
    if top_k is not None and top_k < z.size:
        cut = np.partition(z, -top_k)[-top_k]
        z = np.where(z >= cut, z, -np.inf)
    p = np.exp(z - z.max())
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, rng.random_sample() * cdf[-1], side="right"),
                   z.size - 1))
