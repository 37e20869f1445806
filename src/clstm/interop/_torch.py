"""torch.nn.LSTM / torch.nn.GRU from clstm networks and back.

clstm's parameter names, shapes and gate order are torch's (DESIGN.md §2), so
the weights move as they are; this module maps the constructor options.
"""

import numpy as np

from clstm._gru import GRU
from clstm._lstm import LSTM
from clstm.interop._estimator_parts import is_estimator
from clstm.interop._optional import import_optional

__all__ = ["to_torch", "from_torch"]


def to_torch(net):
    """A ``torch.nn.LSTM`` / ``torch.nn.GRU`` with the weights of `net`, or the
    torch module of a fitted estimator.

    A fitted ``LSTMRegressor`` / ``LSTMClassifier`` becomes a
    :class:`clstm.interop.EstimatorModule` (standardisation buffers, this
    function's LSTM / GRU, a ``torch.nn.Linear`` head) whose
    ``forward(x, lengths=None)`` is the estimator's ``predict`` /
    ``predict_proba``; see :func:`clstm.interop.estimator_to_torch`.

    The module is ``batch_first=True`` (clstm's layout), in eval mode, of
    the network's dtype, with ``num_layers``, ``bidirectional``, ``dropout``
    (the same between-layer dropout) and, for an LSTM, ``proj_size``.
    Peepholes, coupled gates and layer normalisation have no torch module
    and raise a ValueError. clstm's ``recurrent_dropout`` (training only)
    has no torch equivalent and is not carried over.

    Parameters
    ----------
    net : clstm.LSTM, clstm.GRU, LSTMRegressor or LSTMClassifier

    Returns
    -------
    torch.nn.LSTM, torch.nn.GRU or clstm.interop.EstimatorModule
        ``module(torch.from_numpy(X))`` equals ``net.forward(X)`` (with
        ``pack_padded_sequence(..., enforce_sorted=False)`` for lengths).

    Examples
    --------
    >>> import numpy as np, torch, clstm
    >>> from clstm.interop import to_torch
    >>> to_torch(clstm.LSTM(3, 8, proj_size=4))
    LSTM(3, 8, proj_size=4, batch_first=True)
    >>> X = np.random.default_rng(0).normal(size=(32, 5, 3))
    >>> reg = clstm.LSTMRegressor(hidden_size=4, max_iter=2, random_state=0).fit(X, X[:, -1, 0])
    >>> module = to_torch(reg)
    >>> lengths = np.full(32, 5); lengths[0] = 2
    >>> with torch.no_grad():
    ...     y = module(torch.from_numpy(X), lengths).numpy()
    >>> bool(np.allclose(y, reg.predict(X, lengths=lengths), atol=1e-5))
    True
    """
    torch = import_optional("torch", "clstm.interop.to_torch")
    if is_estimator(net):
        from clstm.interop._torch_estimators import estimator_to_torch
        return estimator_to_torch(net)
    if not isinstance(net, (LSTM, GRU)):
        raise TypeError(f"to_torch takes a clstm.LSTM or clstm.GRU network or a fitted "
                        f"LSTMRegressor / LSTMClassifier, got {type(net).__name__}")
    kwargs = dict(num_layers=net.num_layers, bidirectional=net.bidirectional,
                  batch_first=True, dropout=net.dropout if net.num_layers > 1 else 0.0,
                  dtype=torch.float64 if net.dtype == np.float64 else torch.float32)
    if isinstance(net, LSTM):
        unsupported = [name for name in ("peephole", "coupled_gates", "layer_norm")
                       if getattr(net, name)]
        if unsupported:
            raise ValueError(f"torch.nn.LSTM has no {' / '.join(unsupported)} option; "
                             f"{net!r} cannot become a torch module (export it with "
                             "clstm.export_onnx instead)")
        module = torch.nn.LSTM(net.input_size, net.hidden_size, proj_size=net.proj_size,
                               **kwargs)
    else:
        module = torch.nn.GRU(net.input_size, net.hidden_size, **kwargs)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()},
                           strict=True)
    return module.eval()


def from_torch(module, *, dtype=None, classes=None, return_sequences=False,
               random_state=None):
    """A clstm network with the weights of a ``torch.nn.LSTM`` or ``torch.nn.GRU``,
    or a fitted estimator from torch modules.

    A :class:`clstm.interop.EstimatorModule` (``to_torch`` of an estimator,
    maybe fine-tuned in torch since) gives back a fitted ``LSTMRegressor`` /
    ``LSTMClassifier``; so does a pair ``(rnn, head)`` of an LSTM / GRU and
    a ``torch.nn.Linear`` head, a regressor without `classes`, a classifier
    with them (see :func:`clstm.interop.estimator_from_torch`).

    Carried over: sizes, ``num_layers``, ``bidirectional``, ``dropout`` and
    ``proj_size``; ``bias=False`` becomes zero biases; ``batch_first`` does
    not matter (clstm is batch-first). Other modules (``torch.nn.RNN``, a
    ``Sequential``, ...) raise a TypeError.

    Parameters
    ----------
    module : torch.nn.LSTM, torch.nn.GRU, EstimatorModule or (rnn, torch.nn.Linear)
    dtype : {"float32", "float64"} or None
        None: float64 for a float64 module, float32 otherwise.
    classes : array-like or None
        A pair only: the labels of the head's output columns, in order (a
        classifier); None: a regressor.
    return_sequences : bool, default=False
        A pair only: the head reads every step's output instead of the top
        layer's last ``h``.
    random_state : int, RandomState or None
        The network's (its dropout generator) and an estimator's (its
        shuffling generator, as in ``fit``).

    Returns
    -------
    clstm.LSTM, clstm.GRU, LSTMRegressor or LSTMClassifier

    Examples
    --------
    >>> import numpy as np, torch
    >>> from clstm.interop import from_torch
    >>> lstm, linear = torch.nn.LSTM(3, 8, batch_first=True), torch.nn.Linear(8, 1)
    >>> clf = from_torch((lstm, linear), classes=["no", "yes"])    # logit of "yes"
    >>> X = np.random.default_rng(0).normal(size=(4, 5, 3)).astype("float32")
    >>> with torch.no_grad():
    ...     p = torch.sigmoid(linear(lstm(torch.from_numpy(X))[1][0][-1])).numpy()
    >>> bool(np.allclose(clf.predict_proba(X)[:, 1], p[:, 0], atol=1e-6))
    True
    """
    torch = import_optional("torch", "clstm.interop.from_torch")
    from clstm.interop._torch_estimators import EstimatorModule, estimator_from_torch
    if isinstance(module, (tuple, list, EstimatorModule)):
        return estimator_from_torch(module, dtype=dtype, classes=classes,
                                    return_sequences=return_sequences,
                                    random_state=random_state)
    if classes is not None or return_sequences:
        raise ValueError("classes and return_sequences apply to estimators: pass "
                         "(rnn, head) or an EstimatorModule")
    if not isinstance(module, (torch.nn.LSTM, torch.nn.GRU)):
        raise TypeError(f"from_torch takes a torch.nn.LSTM or torch.nn.GRU, an "
                        f"EstimatorModule or a pair (rnn, torch.nn.Linear), got "
                        f"{type(module).__name__}")
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    if dtype is None:
        dtype = "float64" if state["weight_ih_l0"].dtype == torch.float64 else "float32"
    state = {k: v.to(torch.float64).numpy() for k, v in state.items()}
    kwargs = dict(num_layers=module.num_layers, bidirectional=module.bidirectional,
                  dtype=dtype, dropout=float(module.dropout), random_state=random_state)
    if isinstance(module, torch.nn.LSTM):
        net = LSTM(module.input_size, module.hidden_size, proj_size=module.proj_size, **kwargs)
    else:
        net = GRU(module.input_size, module.hidden_size, **kwargs)
    if not module.bias:
        for name, shape in net._param_shapes().items():
            if name.startswith("bias_"):
                state[name] = np.zeros(shape)
    return net.load_state_dict(state)
