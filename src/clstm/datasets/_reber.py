"""The Reber grammar and the embedded Reber grammar (Reber 1967; Hochreiter &
Schmidhuber 1997, section 5, experiment 1), generated with the legal next
symbols of every prefix."""

import numpy as np
from sklearn.utils import check_random_state

__all__ = ["REBER_SYMBOLS", "make_reber"]

REBER_SYMBOLS = "BTSXPVE"
_ID = {s: i for i, s in enumerate(REBER_SYMBOLS)}

# The grammar's transition graph after the initial B: state -> ((symbol, next
# state), ...), each choice equally likely; state None is the end (after E).
_GRAPH = {
    0: (("T", 1), ("P", 2)),
    1: (("S", 1), ("X", 3)),
    2: (("T", 2), ("V", 4)),
    3: (("X", 2), ("S", 5)),
    4: (("P", 3), ("V", 5)),
    5: (("E", None),),
}


def _reber(rng):
    """A Reber string as symbols and, for each prefix, the set of legal next symbols."""
    symbols, legal = ["B"], [{s for s, _ in _GRAPH[0]}]
    state = 0
    while state is not None:
        choices = _GRAPH[state]
        symbol, state = choices[rng.randint(len(choices))]
        symbols.append(symbol)
        legal.append(set() if state is None else {s for s, _ in _GRAPH[state]})
    return symbols, legal


def _embedded_reber(rng):
    """B (T|P) <Reber string> (same T|P) E: the symbol after the first B must be
    remembered over the whole inner string."""
    inner, inner_legal = _reber(rng)
    c = "TP"[rng.randint(2)]
    symbols = ["B", c] + inner + [c, "E"]
    legal = [{"T", "P"}, {"B"}] + inner_legal[:-1] + [{c}, {"E"}, set()]
    return symbols, legal


def make_reber(n_samples=256, embedded=True, random_state=None):
    """Strings of the (embedded) Reber grammar as token ids, with their legal next symbols.

    The Reber grammar (Reber 1967) is a small finite-state grammar over the
    seven symbols ``B T S X P V E`` (ids 0..6, ``REBER_SYMBOLS``); every
    branch is taken with probability 1/2. In the *embedded* version,
    Hochreiter & Schmidhuber's (1997) first LSTM experiment, a Reber string
    is wrapped as ``B T <string> T E`` or ``B P <string> P E``: predicting the
    second-to-last symbol needs the second one, remembered across the whole
    inner string. Their criterion: a model solves the task when at every
    step of every string the symbols it predicts as possible are exactly
    the legal successors (``legal``).

    Parameters
    ----------
    n_samples : int, default=256
        Number of strings.
    embedded : bool, default=True
        Embedded Reber strings (else plain Reber strings).
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    X : list of ndarray of shape (T_i,), int64
        The strings as ids into ``REBER_SYMBOLS``.
    legal : list of ndarray of shape (T_i, 7), bool
        ``legal[i][t, s]``: symbol ``s`` may follow ``X[i][:t + 1]`` (the last
        row, after the final E, is all False). It lines up with
        ``LSTMLanguageModel.predict_proba(X)``.

    Examples
    --------
    >>> from clstm.datasets import make_reber, REBER_SYMBOLS
    >>> X, legal = make_reber(2, random_state=0)
    >>> "".join(REBER_SYMBOLS[i] for i in X[0])
    'BTBTXSETE'
    >>> [REBER_SYMBOLS[s] for s in legal[0][0].nonzero()[0]]
    ['T', 'P']
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) \
            or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    rng = check_random_state(random_state)
    make = _embedded_reber if embedded else _reber
    X, legal = [], []
    for _ in range(int(n_samples)):
        symbols, nexts = make(rng)
        X.append(np.array([_ID[s] for s in symbols], dtype=np.int64))
        mask = np.zeros((len(symbols), len(REBER_SYMBOLS)), dtype=bool)
        for t, allowed in enumerate(nexts):
            mask[t, [_ID[s] for s in allowed]] = True
        legal.append(mask)
    return X, legal
