"""CharTokenizer: text <-> character token ids, for the language model."""

import numpy as np

__all__ = ["CharTokenizer"]

_UNKNOWN_ACTIONS = ("replace", "ignore", "error")


class CharTokenizer:
    """Characters <-> token ids, the vocabulary learnt from a corpus.

    Id 0 is reserved for characters not seen in :meth:`fit`; the others are
    the corpus's distinct characters in code-point order (ids 1, 2, ...),
    so the same corpus always gives the same ids.

    Parameters
    ----------
    unknown : {"replace", "ignore", "error"}, default="replace"
        What :meth:`encode` does with a character not in the vocabulary:
        map it to id 0, drop it, or raise a ValueError naming it.
    unknown_char : str, default="\\ufffd"
        What :meth:`decode` writes for id 0 (the Unicode replacement character).

    Attributes
    ----------
    vocabulary_ : dict of str -> int
        Character -> id.
    chars_ : list of str
        Id -> character (``chars_[0]`` is ``unknown_char``).
    vocab_size_ : int
        Number of ids, the unknown id included: the ``vocab_size`` of a
        :class:`clstm.LSTMLanguageModel` on these ids.

    Examples
    --------
    >>> import clstm
    >>> tok = clstm.CharTokenizer().fit(["hello world"])
    >>> tok.vocab_size_
    9
    >>> ids = tok.encode("hold!")
    >>> ids.tolist()
    [4, 6, 5, 2, 0]
    >>> tok.decode(ids)
    'hold\\ufffd'
    """

    def __init__(self, unknown="replace", unknown_char="\ufffd"):
        self.unknown = unknown
        self.unknown_char = unknown_char

    def _check_params(self):
        if self.unknown not in _UNKNOWN_ACTIONS:
            raise ValueError(f"unknown must be one of {_UNKNOWN_ACTIONS}, got {self.unknown!r}")
        if not isinstance(self.unknown_char, str):
            raise TypeError(f"unknown_char must be a str, got {type(self.unknown_char).__name__}")

    def fit(self, texts):
        """Learn the vocabulary from a string or an iterable of strings."""
        self._check_params()
        if isinstance(texts, str):
            texts = [texts]
        chars = set()
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str")
            chars.update(text)
        if not chars:
            raise ValueError("the texts contain no characters: nothing to learn a vocabulary from")
        self.chars_ = [self.unknown_char] + sorted(chars)
        self.vocabulary_ = {c: i for i, c in enumerate(self.chars_) if i > 0}
        self.vocab_size_ = len(self.chars_)
        return self

    def _check_fitted(self):
        if not hasattr(self, "vocabulary_"):
            from sklearn.exceptions import NotFittedError
            raise NotFittedError("This CharTokenizer is not fitted yet; call fit(texts) first")

    def encode(self, text):
        """The ids of the characters of ``text`` (1-D int64 array)."""
        self._check_fitted()
        self._check_params()
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        vocab = self.vocabulary_
        ids = []
        for pos, c in enumerate(text):
            i = vocab.get(c)
            if i is None:
                if self.unknown == "error":
                    raise ValueError(f"character {c!r} at position {pos} is not in the "
                                     "vocabulary (unknown='replace' maps it to id 0)")
                if self.unknown == "ignore":
                    continue
                i = 0
            ids.append(i)
        return np.array(ids, dtype=np.int64)

    def transform(self, texts):
        """:meth:`encode` of each text: a list of 1-D int64 arrays."""
        if isinstance(texts, str):
            raise TypeError("transform takes an iterable of strings; use encode for one string")
        return [self.encode(t) for t in texts]

    def fit_transform(self, texts):
        return self.fit(texts).transform(texts)

    def decode(self, ids):
        """The text of a sequence of ids."""
        self._check_fitted()
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise ValueError(f"decode takes a 1-D sequence of int ids, got {arr.dtype} of "
                             f"shape {arr.shape}")
        bad = (arr < 0) | (arr >= self.vocab_size_)
        if bad.any():
            pos = int(np.argmax(bad))
            raise ValueError(f"id {int(arr[pos])} at position {pos} is outside the vocabulary "
                             f"[0, {self.vocab_size_})")
        chars = self.chars_
        return "".join(chars[i] for i in arr.tolist())
