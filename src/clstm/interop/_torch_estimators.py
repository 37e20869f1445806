"""torch modules of fitted clstm estimators, and fitted estimators from torch modules.

:class:`EstimatorModule` is a ``torch.nn.Module`` subclass, so it is defined
on first use (``import clstm`` never imports torch): the module attribute
``EstimatorModule`` is built by this module's ``__getattr__`` (PEP 562),
which also lets pickle (``torch.save(module)``) find the class again.
"""

import numpy as np

from clstm.interop._estimator_parts import (
    EstimatorParts,
    classifier_head,
    estimator_from_parts,
    estimator_parts,
)
from clstm.interop._optional import import_optional

__all__ = ["estimator_to_torch", "estimator_from_torch", "EstimatorModule"]

_CLASS = None


def __getattr__(name):
    if name == "EstimatorModule":
        return _module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _module_class():
    global _CLASS
    if _CLASS is None:
        _CLASS = _define_module_class(import_optional("torch", "clstm.interop.to_torch"))
    return _CLASS


def _define_module_class(torch):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class EstimatorModule(torch.nn.Module):
        """A fitted clstm estimator's ``predict`` / ``predict_proba`` as a torch module.

        Submodules ``rnn`` (``torch.nn.LSTM`` / ``GRU``, batch-first) and
        ``head`` (``torch.nn.Linear``); float64 buffers ``x_mean``,
        ``x_scale`` (input standardisation) and, for a regressor, ``y_mean``,
        ``y_scale`` (target de-standardisation), each None where the
        estimator has none. ``classes`` (a classifier's labels, sorted)
        and ``return_sequences``, ``y_1d`` are plain attributes.

        ``forward(x, lengths=None)`` returns what ``predict`` (regressor) or
        ``predict_proba`` (classifier) returns for a batch ``x`` of shape
        (batch, time, n_features), padded sequences given their ``lengths``
        (a 1-D int tensor or array: each sequence ends at its own last valid
        step, as ``pack_padded_sequence`` does). With ``return_sequences``
        the output has a time axis; steps past a sequence's length hold no
        prediction. :meth:`head_outputs` gives the head's raw outputs (a
        classifier's logits, a regressor's standardised targets) for
        fine-tuning with ``BCEWithLogitsLoss`` / ``CrossEntropyLoss`` /
        ``MSELoss``.
        """

        def __init__(self, rnn, head, *, x_stats, y_stats=(None, None), classes=None,
                     return_sequences=False, y_1d=False):
            super().__init__()
            self.rnn, self.head = rnn, head
            for name, value in zip(("x_mean", "x_scale", "y_mean", "y_scale"),
                                   (*x_stats, *y_stats)):
                self.register_buffer(name, None if value is None else torch.as_tensor(
                    np.asarray(value, np.float64)))
            self.classes = None if classes is None else np.asarray(classes)
            self.return_sequences = bool(return_sequences)
            self.y_1d = bool(y_1d)

        def head_outputs(self, x, lengths=None):
            """The head's outputs, before the sigmoid / softmax or the target scaling."""
            x = torch.as_tensor(x)
            dtype = self.head.weight.dtype
            if self.x_mean is not None:     # in float64, as the estimator standardises
                x = (x.to(self.x_mean.dtype) - self.x_mean) / self.x_scale
            x = x.to(dtype)
            T = x.shape[1]
            if lengths is not None:
                lengths = torch.as_tensor(lengths).to("cpu", torch.int64)
                x = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, state = self.rnn(x)
            if self.return_sequences:
                if lengths is not None:
                    out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
                features = out
            else:
                h_n = state[0] if isinstance(state, tuple) else state
                D = 2 if self.rnn.bidirectional else 1
                # the top layer's last h of each direction, concatenated
                features = h_n[-D:].transpose(0, 1).reshape(h_n.shape[1], -1)
            return self.head(features)

        def forward(self, x, lengths=None):
            z = self.head_outputs(x, lengths)
            if self.classes is not None:
                if z.shape[-1] == 1:
                    p = torch.sigmoid(z)
                    return torch.cat([1 - p, p], dim=-1)
                return torch.softmax(z, dim=-1)
            if self.y_mean is not None:
                z = z * self.y_scale.to(z.dtype) + self.y_mean.to(z.dtype)
            return z[..., 0] if self.y_1d else z

        def extra_repr(self):
            kind = "classes=%r" % (self.classes.tolist(),) if self.classes is not None \
                else "regressor"
            return f"{kind}, return_sequences={self.return_sequences}"

    EstimatorModule.__module__ = __name__
    EstimatorModule.__qualname__ = "EstimatorModule"
    return EstimatorModule


# -- estimator -> torch -----------------------------------------------------------------

def estimator_to_torch(est):
    """An :class:`EstimatorModule` (eval mode) computing the fitted estimator's
    ``predict`` (LSTMRegressor) or ``predict_proba`` (LSTMClassifier).

    The network becomes ``torch.nn.LSTM`` (``proj_size`` included) /
    ``torch.nn.GRU`` as :func:`clstm.interop.to_torch` makes it; the head a
    ``torch.nn.Linear``; the standardisation statistics float64 buffers.
    The module takes ``(batch, time, n_features)`` (a univariate estimator
    fitted on 2-D ``X``: ``X[..., None]``).

    Examples
    --------
    >>> import numpy as np, torch, clstm
    >>> from clstm.interop import estimator_to_torch
    >>> X = np.random.default_rng(0).normal(size=(32, 5, 2))
    >>> clf = clstm.LSTMClassifier(hidden_size=4, cell="gru", max_iter=2, random_state=0).fit(
    ...     X, X[:, -1, 0] > 0)
    >>> module = estimator_to_torch(clf)
    >>> with torch.no_grad():
    ...     p = module(torch.from_numpy(X)).numpy()
    >>> bool(np.allclose(p, clf.predict_proba(X), atol=1e-6))
    True
    """
    from clstm.interop._torch import to_torch

    torch = import_optional("torch", "clstm.interop.to_torch")
    parts = estimator_parts(est)
    rnn = to_torch(parts.network)
    weight = parts.head_weight
    head = torch.nn.Linear(weight.shape[0], weight.shape[1], dtype=rnn.weight_ih_l0.dtype)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight.T)))
        head.bias.copy_(torch.from_numpy(parts.head_bias))
    module = _module_class()(rnn, head, x_stats=parts.x_stats, y_stats=parts.y_stats,
                             classes=parts.classes, return_sequences=parts.return_sequences,
                             y_1d=parts.y_1d)
    return module.eval()


# -- torch -> estimator -----------------------------------------------------------------

def estimator_from_torch(module, *, dtype=None, classes=None, return_sequences=False,
                         random_state=None):
    """A fitted LSTMRegressor / LSTMClassifier from torch modules.

    `module` is an :class:`EstimatorModule` (from :func:`clstm.interop.to_torch`
    of an estimator, maybe fine-tuned since): everything comes back from it,
    and the other arguments but `dtype` must be left at their defaults.

    Or a pair ``(rnn, head)`` of a ``torch.nn.LSTM`` / ``GRU`` and a
    ``torch.nn.Linear`` that reads the top layer's last ``h`` (both
    directions concatenated: ``h_n[-D:]``) or, with `return_sequences`,
    every step's output. It is a regressor without `classes` (``head``'s
    outputs are the targets; no standardisation) and a classifier with
    them: `classes` labels ``head``'s output columns in order; one column
    is the logit of ``classes[1]`` (sigmoid), more are softmax logits.

    The estimator has no training history (``n_iter_ == 0``);
    ``partial_fit`` / ``warm_start`` continue from these weights with a
    fresh optimizer (torch's optimizer state is not carried over).
    `random_state` seeds the network's dropout and the estimator's
    shuffling generators.

    Examples
    --------
    >>> import numpy as np, torch, clstm
    >>> from clstm.interop import estimator_from_torch, estimator_to_torch
    >>> X = np.random.default_rng(0).normal(size=(32, 5, 2))
    >>> reg = clstm.LSTMRegressor(hidden_size=4, max_iter=2, random_state=0).fit(X, X[:, -1, 0])
    >>> module = estimator_to_torch(reg).train()
    >>> optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    >>> loss = module.head_outputs(torch.from_numpy(X)).square().mean()  # any loss
    >>> loss.backward(); optimizer.step()                           # fine-tune in torch
    >>> tuned = estimator_from_torch(module.eval())
    >>> with torch.no_grad():
    ...     y = module(torch.from_numpy(X)).numpy()
    >>> bool(np.allclose(tuned.predict(X), y, atol=1e-5))
    True
    """
    torch = import_optional("torch", "clstm.interop.from_torch")
    from clstm.interop._torch import from_torch

    if isinstance(module, _module_class()):
        if classes is not None or return_sequences:
            raise ValueError("an EstimatorModule carries its own classes and "
                             "return_sequences; pass it alone")
        rnn, head = module.rnn, module.head
        stats = [None if b is None else b.detach().cpu().to(torch.float64).numpy()
                 for b in (module.x_mean, module.x_scale, module.y_mean, module.y_scale)]
        net = from_torch(rnn, dtype=dtype, random_state=random_state)
        weight, bias = _linear_weights(torch, head, net)
        parts = EstimatorParts(network=net, head_weight=weight, head_bias=bias,
                               return_sequences=module.return_sequences,
                               x_stats=tuple(stats[:2]))
        if module.classes is not None:
            parts.classes = np.asarray(module.classes)
        else:
            parts.y_stats, parts.y_1d = tuple(stats[2:]), module.y_1d
        return estimator_from_parts(parts, random_state)
    rnn, head = module
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"from_torch takes (rnn, head) with a torch.nn.Linear head, got "
                        f"{type(head).__name__}")
    net = from_torch(rnn, dtype=dtype, random_state=random_state)
    weight, bias = _linear_weights(torch, head, net)
    parts = EstimatorParts(network=net, head_weight=weight, head_bias=bias,
                           return_sequences=bool(return_sequences), x_stats=(None, None))
    if classes is None:
        parts.y_1d = weight.shape[1] == 1
    else:
        activation = "sigmoid" if weight.shape[1] == 1 else "softmax"
        parts.head_weight, parts.head_bias, parts.classes = classifier_head(
            weight, bias, classes, activation, "the torch.nn.Linear head")
    return estimator_from_parts(parts, random_state)


def _linear_weights(torch, head, net):
    """(weight (in, out), bias (out,)) of a Linear head as float64, checked against `net`."""
    weight = head.weight.detach().cpu().to(torch.float64).numpy().T
    fan_in = net.num_directions * net.output_size
    if weight.shape[0] != fan_in:
        raise ValueError(f"the torch.nn.Linear head reads {weight.shape[0]} features; on the "
                         f"network's output it should read {fan_in}")
    if head.bias is None:
        return weight, np.zeros(weight.shape[1])
    return weight, head.bias.detach().cpu().to(torch.float64).numpy()
