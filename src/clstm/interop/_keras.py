"""Keras 3 recurrent layers from clstm networks and back.

Keras keeps the weights input-major and gates in columns: an LSTM's
``kernel`` (I, 4H), ``recurrent_kernel`` (H, 4H) with blocks i, f, c, o
(torch's i, f, g, o) and one ``bias`` (4H,); a GRU with ``reset_after=True``
(torch's GRU) ``kernel`` (I, 3H), ``recurrent_kernel`` (H, 3H) with blocks
z, r, h (torch's r, z, n swapped) and ``bias`` (2, 3H): the input bias, then
the recurrent bias. ``Bidirectional(merge_mode="concat")`` concatenates
[forward | backward], as clstm does.
"""

import numpy as np

from clstm._gru import GRU
from clstm._lstm import LSTM
from clstm._rnn import param_name
from clstm.interop._estimator_parts import is_estimator
from clstm.interop._optional import import_optional

__all__ = ["to_keras", "from_keras", "check_keras_cell", "keras_recurrent_layers",
           "network_from_keras_layers"]

_KERAS_GRU_BLOCKS = ("z", "r", "n")
_TORCH_GRU_BLOCKS = ("r", "z", "n")


def _keras(purpose):
    return import_optional("keras", purpose)


def _reorder(a, source, target, axis=0):
    parts = dict(zip(source, np.split(a, len(source), axis=axis)))
    return np.concatenate([parts[k] for k in target], axis=axis)


# -- clstm -> Keras ---------------------------------------------------------------------

def to_keras(model, *, return_sequences=None, mask_value=None):
    """A Keras 3 model with the weights of a clstm network or fitted estimator.

    **Network** (``clstm.LSTM`` / ``clstm.GRU``): a ``keras.Sequential`` of
    one ``keras.layers.LSTM`` / ``GRU`` (``reset_after=True``) per layer,
    each wrapped in ``Bidirectional(merge_mode="concat")`` if the network is
    bidirectional; every layer but the last returns sequences. The model
    takes (batch, time, input_size) and, with `return_sequences` (default
    True), returns what ``net.forward(X)[0]`` does for full-length
    sequences.

    **Fitted estimator** (``LSTMRegressor`` / ``LSTMClassifier``): a
    ``keras.Sequential`` whose ``model.predict(X)`` is the estimator's
    ``predict`` (regressor) or ``predict_proba`` (classifier), see
    :func:`clstm.interop.estimator_to_keras` for the layers.

    Projection, peepholes, coupled gates and layer normalisation have no
    Keras layer and raise a ValueError. The training-only ``dropout`` and
    ``recurrent_dropout`` are not carried over (Keras's ``dropout`` is a
    per-layer input mask, not clstm's between-layer dropout).

    Parameters
    ----------
    model : clstm.LSTM, clstm.GRU, LSTMRegressor or LSTMClassifier
    return_sequences : bool or None, default=None
        Networks only (None means True). False: the last layer returns its
        final output only (for a bidirectional network the forward
        direction's last step next to the backward direction's first, i.e.
        ``h_n`` of the last layer). An estimator has its own.
    mask_value : float or None, default=None
        Put a ``keras.layers.Masking(mask_value)`` first: padded batches
        whose padding steps hold `mask_value` in every feature then give
        each sequence's own result (clstm's ``lengths``). Pad at the end
        only, and pick a value no real step has in all features.

    Returns
    -------
    keras.Sequential

    Examples
    --------
    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "torch")
    >>> import numpy as np, clstm
    >>> from clstm.interop import to_keras
    >>> X = np.random.default_rng(0).normal(size=(32, 5, 3))
    >>> net = clstm.GRU(3, 4, num_layers=2)
    >>> out = to_keras(net).predict(X.astype("float32"), verbose=0)
    >>> bool(np.allclose(out, net.forward(X)[0], atol=1e-5))
    True
    >>> reg = clstm.LSTMRegressor(hidden_size=4, max_iter=2, random_state=0).fit(X, X[:, -1, 0])
    >>> y = to_keras(reg).predict(X.astype("float32"), verbose=0)       # (32, 1)
    >>> bool(np.allclose(y[:, 0], reg.predict(X), atol=1e-5))
    True
    """
    keras = _keras("clstm.interop.to_keras")
    if is_estimator(model):
        if return_sequences is not None:
            raise ValueError("return_sequences applies to networks; an estimator's Keras "
                             "model returns what its predict returns (its own "
                             "return_sequences)")
        from clstm.interop._keras_estimators import estimator_to_keras
        return estimator_to_keras(model, mask_value=mask_value)
    net = model
    if not isinstance(net, (LSTM, GRU)):
        raise TypeError(f"to_keras takes a clstm.LSTM or clstm.GRU network or a fitted "
                        f"LSTMRegressor / LSTMClassifier, got {type(net).__name__}")
    check_keras_cell(net)
    dtype = np.dtype(net.dtype).name
    rnns, weights = keras_recurrent_layers(
        net, keras, True if return_sequences is None else return_sequences)
    first = [keras.Input(shape=(None, net.input_size), dtype=dtype)]
    if mask_value is not None:
        first.append(keras.layers.Masking(mask_value=float(mask_value), dtype=dtype))
    model = keras.Sequential([*first, *rnns])
    for rnn, w in zip(rnns, weights):
        rnn.set_weights(w)
    return model


def check_keras_cell(net):
    """A ValueError naming the options of `net` that Keras's layers lack."""
    if isinstance(net, LSTM):
        unsupported = [name for name in ("proj_size", "peephole", "coupled_gates",
                                         "layer_norm") if getattr(net, name)]
        if unsupported:
            raise ValueError(f"keras.layers.LSTM has no {' / '.join(unsupported)} option; "
                             f"{net!r} cannot become a Keras model (clstm.export_onnx "
                             "exports every cell)")


def keras_recurrent_layers(net, keras, return_sequences):
    """The (unbuilt) Keras layers of `net` and, per layer, the weights to set once built."""
    lstm = isinstance(net, LSTM)
    dtype = np.dtype(net.dtype).name
    rnns, weights = [], []
    for layer in range(net.num_layers):
        kwargs = dict(return_sequences=return_sequences or layer < net.num_layers - 1,
                      dtype=dtype)
        if lstm:
            rnn = keras.layers.LSTM(net.hidden_size, **kwargs)
        else:
            rnn = keras.layers.GRU(net.hidden_size, reset_after=True, **kwargs)
        if net.bidirectional:
            rnn = keras.layers.Bidirectional(rnn, merge_mode="concat", dtype=dtype)
        rnns.append(rnn)
        # Bidirectional takes the forward layer's weights, then the backward's
        weights.append([w for d in range(net.num_directions)
                        for w in _keras_weights(net, layer, d, lstm)])
    return rnns, weights


def _keras_weights(net, layer, d, lstm):
    """[kernel, recurrent_kernel, bias] of one layer direction."""
    p = {kind: net.params[param_name(kind, layer, d)] for kind in net._cell_shapes(layer)}
    if lstm:        # gate blocks agree (i, f, c/g, o); one bias
        return [p["weight_ih"].T.copy(), p["weight_hh"].T.copy(), p["bias_ih"] + p["bias_hh"]]
    order = lambda a: _reorder(a, _TORCH_GRU_BLOCKS, _KERAS_GRU_BLOCKS)   # noqa: E731
    return [order(p["weight_ih"]).T.copy(), order(p["weight_hh"]).T.copy(),
            np.stack([order(p["bias_ih"]), order(p["bias_hh"])])]


# -- Keras -> clstm ---------------------------------------------------------------------

def from_keras(model, *, dtype=None, classes=None, random_state=None):
    """A clstm network or fitted estimator with the weights of a Keras model.

    **Network**: from a ``keras.layers.LSTM`` or ``GRU``, a ``Bidirectional``
    wrapper of one (``merge_mode="concat"``), or a ``Sequential`` model of
    such layers (stacked: one kind, one number of units, every layer but
    the last with ``return_sequences=True``; a leading ``Masking`` is
    allowed). ``net.forward(X)[0]`` equals the model's output when the last
    layer returns sequences; otherwise the model returns the last layer's
    ``h_n`` (forward: ``out[:, -1]``).

    **Fitted estimator**: from a ``Sequential`` that ends in a ``Dense``
    head (optionally followed by a de-standardising
    ``Normalization(invert=True)``): a linear head gives an
    ``LSTMRegressor``, a softmax or sigmoid head an ``LSTMClassifier``
    (pass `classes`). See :func:`clstm.interop.estimator_from_keras`.

    Refused with a ValueError: other layers, activations other than tanh /
    sigmoid in the recurrent layers, a GRU with ``reset_after=False`` (not
    torch's GRU), ``go_backwards=True`` outside Bidirectional, other merge
    modes. Keras's dropout options are not carried over.

    Parameters
    ----------
    model : keras layer or keras.Sequential
    dtype : {"float32", "float64"} or None
        None: float64 if the Keras weights are float64, float32 otherwise.
    classes : array-like or None
        Estimators with a softmax / sigmoid head only: the label of each
        output column, in the model's order.
    random_state : int, RandomState or None
        The network's (its dropout generator) and the estimator's (its
        shuffling generator, as in ``fit``).

    Returns
    -------
    clstm.LSTM, clstm.GRU, LSTMRegressor or LSTMClassifier

    Examples
    --------
    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "torch")
    >>> import keras, numpy as np
    >>> from clstm.interop import from_keras
    >>> model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(8),
    ...                           keras.layers.Dense(3, activation="softmax")])
    >>> clf = from_keras(model, classes=["low", "mid", "high"])    # an LSTMClassifier
    >>> X = np.random.default_rng(0).normal(size=(4, 5, 3)).astype("float32")
    >>> p = model.predict(X, verbose=0)                   # columns: low, mid, high
    >>> bool(np.allclose(clf.predict_proba(X), p[:, [2, 0, 1]], atol=1e-6))   # sorted
    True
    >>> type(from_keras(keras.Sequential(model.layers[:1]))).__name__   # the LSTM alone
    'LSTM'
    """
    keras = _keras("clstm.interop.from_keras")
    if isinstance(model, keras.Sequential) and _has_head(model, keras):
        from clstm.interop._keras_estimators import estimator_from_keras
        return estimator_from_keras(model, dtype=dtype, classes=classes,
                                    random_state=random_state)
    if classes is not None:
        raise ValueError("classes applies to a Keras model with a softmax or sigmoid Dense "
                         "head (an LSTMClassifier); this model has no Dense head")
    return network_from_keras_layers(_recurrent_layers(model, keras), keras, dtype,
                                     random_state)


def network_from_keras_layers(layers, keras, dtype=None, random_state=None):
    """A clstm network from a list of (maybe Bidirectional) Keras LSTM / GRU layers."""
    specs = [_layer_spec(layer, keras) for layer in layers]
    first = specs[0]
    for k, (layer, s) in enumerate(zip(layers, specs)):
        for key in ("kind", "units", "bidirectional"):
            if s[key] != first[key]:
                raise ValueError(f"Keras layer {layer.name!r} has {key}={s[key]!r} but "
                                 f"{layers[0].name!r} has {first[key]!r}; a clstm network "
                                 "has one value for all layers")
        if k < len(layers) - 1 and not layer.return_sequences:
            raise ValueError(f"Keras layer {layer.name!r} does not return sequences, so no "
                             "layer can be stacked on it")
        if k and s["input_size"] != s["num_directions"] * s["units"]:
            raise ValueError(f"Keras layer {layer.name!r} reads {s['input_size']} features; "
                             f"stacked it should read {s['num_directions'] * s['units']}")
    if dtype is None:
        dtype = "float64" if first["dtype"] == np.float64 else "float32"
    cls = LSTM if first["kind"] == "lstm" else GRU
    net = cls(first["input_size"], first["units"], num_layers=len(layers),
              bidirectional=first["bidirectional"], dtype=dtype, random_state=random_state)
    state = {}
    for layer, s in enumerate(specs):
        for d, weights in enumerate(s["weights"]):
            for kind, value in _clstm_params(weights, first["kind"]).items():
                state[param_name(kind, layer, d)] = value
    return net.load_state_dict(state)


def _has_head(model, keras):
    """True if the Sequential has a Dense layer (or a de-standardising Normalization)
    after its recurrent layers: it describes an estimator."""
    layers = [layer for layer in model.layers
              if not isinstance(layer, (keras.layers.InputLayer, keras.layers.Dropout))]
    return bool(layers) and (
        isinstance(layers[-1], keras.layers.Dense)
        or (isinstance(layers[-1], keras.layers.Normalization) and layers[-1].invert))


def _recurrent_layers(model, keras):
    rnn_types = (keras.layers.LSTM, keras.layers.GRU, keras.layers.Bidirectional)
    if isinstance(model, rnn_types):
        return [model]
    if isinstance(model, keras.Sequential):
        layers = [layer for layer in model.layers
                  if not isinstance(layer, (keras.layers.InputLayer, keras.layers.Masking))]
        others = [f"{layer.name!r} ({type(layer).__name__})" for layer in layers
                  if not isinstance(layer, rnn_types)]
        if others:
            raise ValueError(
                f"from_keras converts recurrent layers (LSTM, GRU, Bidirectional) into a "
                f"network, or [Masking] [Normalization] recurrent layers, a Dense head "
                f"[Normalization(invert=True)] into an estimator; the model also has "
                f"{', '.join(others)}. For the network alone pass the recurrent part, e.g. "
                f"keras.Sequential(model.layers[:k]).")
        if not layers:
            raise ValueError("the Keras model has no layers")
        return layers
    raise TypeError(f"from_keras takes a keras.layers.LSTM / GRU / Bidirectional layer or a "
                    f"keras.Sequential of them, got {type(model).__name__}")


def _layer_spec(layer, keras):
    """kind, units, sizes and per-direction weights of one (maybe Bidirectional) layer."""
    if isinstance(layer, keras.layers.Bidirectional):
        if layer.merge_mode != "concat":
            raise ValueError(f"Keras Bidirectional layer {layer.name!r} has merge_mode="
                             f"{layer.merge_mode!r}; clstm concatenates the directions "
                             "(merge_mode='concat')")
        fwd, bwd = layer.forward_layer, layer.backward_layer
        if fwd.go_backwards or not bwd.go_backwards:
            raise ValueError(f"Keras Bidirectional layer {layer.name!r}: its forward layer "
                             "must not go backwards and its backward layer must")
        directions = [_rnn_spec(fwd, keras), _rnn_spec(bwd, keras)]
        if (directions[0]["kind"], directions[0]["units"]) != \
                (directions[1]["kind"], directions[1]["units"]):
            raise ValueError(f"Keras Bidirectional layer {layer.name!r} wraps different "
                             "forward and backward layers")
    else:
        if layer.go_backwards:
            raise ValueError(f"Keras layer {layer.name!r} has go_backwards=True; clstm runs "
                             "a reverse direction only inside a bidirectional network "
                             "(wrap it in keras.layers.Bidirectional)")
        directions = [_rnn_spec(layer, keras)]
    spec = dict(directions[0])
    spec.update(bidirectional=len(directions) == 2, num_directions=len(directions),
                weights=[d["weights"] for d in directions])
    return spec


def _rnn_spec(layer, keras):
    if not layer.built:
        raise ValueError(f"Keras layer {layer.name!r} is not built (it has no weights yet): "
                         "call it on data or build the model first")
    # (attributes, not layer.get_config(): on Keras 3.15 that imports
    # TensorFlow where it is installed, whatever the backend: seconds)
    kind = "lstm" if isinstance(layer, keras.layers.LSTM) else "gru"
    for key, want in (("activation", keras.activations.tanh),
                      ("recurrent_activation", keras.activations.sigmoid)):
        fn = getattr(layer, key)
        if fn is not want:
            raise ValueError(f"Keras layer {layer.name!r} has {key}="
                             f"{getattr(fn, '__name__', fn)!r}; clstm's cells use "
                             f"{want.__name__}")
    if kind == "gru" and not layer.reset_after:
        raise ValueError(f"Keras GRU layer {layer.name!r} has reset_after=False (the reset "
                         "gate applied before the recurrent product); clstm's GRU is "
                         "torch's, which is Keras's reset_after=True")
    units = int(layer.units)
    weights = [np.asarray(w) for w in layer.get_weights()]
    kernel, recurrent = weights[0], weights[1]
    G = (4 if kind == "lstm" else 3) * units
    if layer.use_bias:
        bias = weights[2]
    else:
        bias = np.zeros((G,) if kind == "lstm" else (2, G), kernel.dtype)
    return {"kind": kind, "units": units, "input_size": kernel.shape[0],
            "dtype": kernel.dtype, "weights": (kernel, recurrent, bias)}


def _clstm_params(weights, kind):
    kernel, recurrent, bias = (np.asarray(w, np.float64) for w in weights)
    if kind == "lstm":
        return {"weight_ih": kernel.T, "weight_hh": recurrent.T, "bias_ih": bias,
                "bias_hh": np.zeros_like(bias)}
    order = lambda a: _reorder(a, _KERAS_GRU_BLOCKS, _TORCH_GRU_BLOCKS)   # noqa: E731
    return {"weight_ih": order(kernel.T), "weight_hh": order(recurrent.T),
            "bias_ih": order(bias[0]), "bias_hh": order(bias[1])}
