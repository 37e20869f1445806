"""Keras 3 models of fitted clstm estimators, and fitted estimators from Keras models.

An estimator's Keras model is a ``Sequential`` of

* ``Masking(mask_value)`` (only when asked for: padded batches),
* ``Normalization(mean=x_mean, variance=x_scale**2)``: the input
  standardisation (``standardize=True``), a layer rather than folded into
  the first kernel so that the statistics come back on import and continued
  training standardises as before,
* the recurrent layers (:func:`clstm.interop.to_keras` of the network; the
  last returns sequences only with ``return_sequences=True``),
* ``Dense`` head: linear for a regressor, followed by
  ``Normalization(invert=True, mean=y_mean, variance=y_scale**2)``, the
  target de-standardisation; ``softmax`` for a classifier, over one column
  per class of ``classes_``. A binary classifier's one logit ``z`` becomes
  the two columns ``[0, z]`` (``softmax([0, z]) == [1 - sigmoid(z),
  sigmoid(z)]``), so ``model.predict`` is ``predict_proba``.

Keras's Normalization divides by ``max(sqrt(variance), keras.config.epsilon())``:
statistics of a scale below that epsilon (1e-7) cannot be carried by the
layer; a target scale that small is folded into the Dense weights instead,
an input scale that small is refused.
"""

import numpy as np

from clstm.interop._estimator_parts import (
    EstimatorParts,
    classifier_head,
    estimator_from_parts,
    estimator_parts,
)
from clstm.interop._keras import (
    _keras,
    check_keras_cell,
    keras_recurrent_layers,
    network_from_keras_layers,
)

__all__ = ["estimator_to_keras", "estimator_from_keras"]


# -- estimator -> Keras -----------------------------------------------------------------

def estimator_to_keras(est, *, mask_value=None):
    """A ``keras.Sequential`` whose ``predict`` is the fitted estimator's
    ``predict`` (LSTMRegressor) or ``predict_proba`` (LSTMClassifier).

    The layers are listed in this module's docstring. The model takes
    ``(batch, time, n_features)`` (a univariate estimator fitted on 2-D
    ``X``: ``X[..., None]``) in the network's dtype and returns
    ``(batch, n_outputs)``, ``(batch, time, n_outputs)`` with
    ``return_sequences``, or the class probabilities; a single-output
    regressor's ``predict`` is that without the last axis. Ragged input:
    equal-length batches, or padded batches with `mask_value` (see
    :func:`clstm.interop.to_keras`). The model equals the estimator within
    1e-5 of the output scale (tested); a float64 model no closer than about
    1e-7, as Keras 3.15 computes float64 Dense and Normalization layers in
    float32 (its type promotion of two float64 operands gives float32).

    Examples
    --------
    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "torch")
    >>> import numpy as np, clstm
    >>> from clstm.interop import estimator_to_keras
    >>> X = np.random.default_rng(0).normal(size=(32, 5, 2))
    >>> clf = clstm.LSTMClassifier(hidden_size=4, max_iter=2, random_state=0).fit(
    ...     X, X[:, -1, 0] > 0)
    >>> model = estimator_to_keras(clf, mask_value=-1e3)
    >>> [type(layer).__name__ for layer in model.layers]
    ['Masking', 'Normalization', 'LSTM', 'Dense']
    >>> padded = X.copy(); padded[0, 3:] = -1e3                   # X[0] has 3 steps
    >>> p = model.predict(padded.astype("float32"), verbose=0)
    >>> bool(np.allclose(p[0], clf.predict_proba([X[0, :3]])[0], atol=1e-5))
    True
    """
    keras = _keras("clstm.interop.to_keras")
    parts = estimator_parts(est)
    net = parts.network
    check_keras_cell(net)
    dtype = np.dtype(net.dtype).name
    eps = float(keras.config.epsilon())
    layers = [keras.Input(shape=(None, net.input_size), dtype=dtype)]
    if mask_value is not None:
        layers.append(keras.layers.Masking(mask_value=float(mask_value), dtype=dtype))
    x_mean, x_scale = parts.x_stats
    if x_mean is not None:
        if not np.all(x_scale > eps):
            raise ValueError(f"the input standardisation has a scale of {x_scale.min():.3g}, "
                             f"below keras.config.epsilon() ({eps:g}), where Keras's "
                             "Normalization layer stops dividing; such an estimator cannot "
                             "become a Keras model (refit on rescaled inputs, or export "
                             "with clstm.export_onnx)")
        layers.append(keras.layers.Normalization(axis=-1, mean=x_mean,
                                                 variance=np.square(x_scale), dtype=dtype,
                                                 name="x_standardisation"))
    rnns, rnn_weights = keras_recurrent_layers(net, keras, parts.return_sequences)
    weight = parts.head_weight.astype(np.float64)
    bias = parts.head_bias.astype(np.float64)
    tail = []
    if parts.classifier:
        if weight.shape[1] == 1:              # two classes: logits [0, z]
            weight = np.concatenate([np.zeros_like(weight), weight], axis=1)
            bias = np.concatenate([[0.0], bias])
        head = keras.layers.Dense(weight.shape[1], activation="softmax", dtype=dtype,
                                  name="head")
    else:
        head = keras.layers.Dense(weight.shape[1], dtype=dtype, name="head")
        y_mean, y_scale = parts.y_stats
        if y_mean is not None:
            if np.all(y_scale > eps) and np.all(np.isfinite(np.square(y_scale))):
                tail.append(keras.layers.Normalization(
                    axis=-1, mean=y_mean, variance=np.square(y_scale), invert=True,
                    dtype=dtype, name="y_destandardisation"))
            else:       # exact in real arithmetic: (f W + b) s + m = f (W s) + (b s + m)
                weight, bias = weight * y_scale, bias * y_scale + y_mean
    model = keras.Sequential([*layers, *rnns, head, *tail])
    for rnn, w in zip(rnns, rnn_weights):
        rnn.set_weights(w)
    head.set_weights([weight.astype(dtype), bias.astype(dtype)])
    return model


# -- Keras -> estimator -----------------------------------------------------------------

_EXPECTED = ("[Masking] [Normalization] LSTM/GRU/Bidirectional layers (stacked) Dense "
             "[Normalization(invert=True)], with Dropout layers anywhere")
# how to get the recurrent part alone, for every refusal of a model with a head
_NETWORK_HINT = (" (for the recurrent layers alone, as a clstm network, pass "
                 "keras.Sequential(model.layers[:k]))")


def estimator_from_keras(model, *, dtype=None, classes=None, random_state=None):
    """A fitted LSTMRegressor / LSTMClassifier from a Keras ``Sequential``.

    The model is ``[Masking] [Normalization] recurrent layers Dense
    [Normalization(invert=True)]`` (``Dropout`` layers are skipped: they do
    nothing at inference):

    * ``Normalization`` (over the last axis): the input standardisation
      (mean, ``max(sqrt(variance), epsilon)``); ``Masking`` is dropped (the
      estimator takes ragged lists or ``lengths`` instead of a pad value);
    * the recurrent layers as :func:`clstm.interop.from_keras` reads them;
      the last one's ``return_sequences`` is the estimator's;
    * ``Dense`` with no activation: an ``LSTMRegressor``, its outputs the
      regression targets, de-standardised by a following
      ``Normalization(invert=True)`` if there is one. A single-output
      regressor's ``predict`` returns ``(n,)`` where Keras returns ``(n, 1)``;
    * ``Dense`` with ``softmax`` (one column per class) or ``sigmoid`` (one
      column, the probability of the second of two classes): an
      ``LSTMClassifier`` whose ``predict_proba`` is the model's output, its
      columns in the sorted order of `classes` (``classes_``).

    Refused with a ValueError: more than one Dense, other activations
    (clstm's head is linear, softmax or sigmoid), layers in other places
    (such as Flatten or a Dense before the recurrent layers), a
    Normalization over other axes, an inverting one after a classifier,
    `classes` for a linear head, none for a softmax / sigmoid head.

    The estimator has the model's weights and no training history
    (``n_iter_ == 0``); ``partial_fit`` or ``fit`` with ``warm_start=True``
    continue training from them with a fresh optimizer (Adam's moments at
    zero: Keras's optimizer state is not carried over). ``standardize`` is
    True when the model standardises (a regressor with only one of the two
    Normalization layers gets the identity for the other), False otherwise;
    other hyperparameters are at their defaults (``set_params`` them
    before training further).

    Parameters
    ----------
    model : keras.Sequential
    dtype : {"float32", "float64"} or None
        None: float64 if the Keras weights are float64, float32 otherwise.
    classes : array-like or None
        Softmax / sigmoid heads: the label of each output column, in order.
    random_state : int, RandomState or None
        Seeds the network's dropout and the estimator's shuffling generators.

    Returns
    -------
    LSTMRegressor or LSTMClassifier

    Examples
    --------
    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "torch")
    >>> import keras, numpy as np
    >>> from clstm.interop import estimator_from_keras
    >>> X = np.random.default_rng(0).normal(size=(16, 5, 2)).astype("float32")
    >>> norm = keras.layers.Normalization(axis=-1)
    >>> norm.adapt(X.reshape(-1, 2))
    >>> model = keras.Sequential([keras.Input((None, 2)), norm, keras.layers.GRU(4),
    ...                           keras.layers.Dropout(0.2), keras.layers.Dense(1)])
    >>> reg = estimator_from_keras(model)
    >>> reg.cell, reg.standardize, reg.n_iter_
    ('gru', True, 0)
    >>> bool(np.allclose(reg.predict(X), model.predict(X, verbose=0)[:, 0], atol=1e-5))
    True
    >>> reg = reg.partial_fit(X, X[:, -1, 0])         # trains on from the Keras weights
    """
    keras = _keras("clstm.interop.from_keras")
    layers = [layer for layer in model.layers
              if not isinstance(layer, (keras.layers.InputLayer, keras.layers.Dropout))]
    rnn_types = (keras.layers.LSTM, keras.layers.GRU, keras.layers.Bidirectional)
    i = 0
    if i < len(layers) and isinstance(layers[i], keras.layers.Masking):
        i += 1
    x_stats = (None, None)
    if i < len(layers) and isinstance(layers[i], keras.layers.Normalization):
        x_stats = _normalization_stats(layers[i], keras, invert=False)
        i += 1
    start = i
    while i < len(layers) and isinstance(layers[i], rnn_types):
        i += 1
    rnns = layers[start:i]
    if not rnns:
        raise ValueError(f"the Keras model has no recurrent layer where one is expected "
                         f"(at {_describe(layers[start])}); an estimator's model is "
                         f"{_EXPECTED}{_NETWORK_HINT}")
    dense = layers[i] if i < len(layers) else None
    if not isinstance(dense, keras.layers.Dense):
        raise ValueError(f"the Keras model has {_describe(dense)} after its recurrent layers "
                         f"where the Dense head should be; an estimator's model is "
                         f"{_EXPECTED}{_NETWORK_HINT}")
    rest = layers[i + 1:]
    denses = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    if len(denses) > 1:
        raise ValueError(f"the Keras model has {len(denses)} Dense layers "
                         f"({', '.join(_describe(d) for d in denses)}); clstm's head is one "
                         "Dense layer on the recurrent output" + _NETWORK_HINT)
    y_stats = (None, None)
    if rest and isinstance(rest[0], keras.layers.Normalization) and rest[0].invert:
        y_stats = _normalization_stats(rest[0], keras, invert=True)
        rest = rest[1:]
    if rest:
        raise ValueError(f"the Keras model has {_describe(rest[0])} after its Dense head; an "
                         f"estimator's model is {_EXPECTED}{_NETWORK_HINT}")
    net = network_from_keras_layers(rnns, keras, dtype, random_state)
    if x_stats[0] is not None and x_stats[0].size != net.input_size:
        raise ValueError(f"the Normalization layer {layers[start - 1].name!r} has "
                         f"{x_stats[0].size} means but the recurrent layers read "
                         f"{net.input_size} features")
    weight, bias, activation = _dense_head(dense, keras, net)
    parts = EstimatorParts(network=net, head_weight=weight, head_bias=bias,
                           return_sequences=bool(rnns[-1].return_sequences), x_stats=x_stats)
    if activation == "linear":
        if classes is not None:
            raise ValueError(f"the Dense head {dense.name!r} is linear, so the model is a "
                             "regressor; classes applies to softmax / sigmoid heads")
        if y_stats[0] is not None and y_stats[0].size != weight.shape[1]:
            raise ValueError(f"the inverting Normalization has {y_stats[0].size} means but "
                             f"the Dense head has {weight.shape[1]} outputs")
        parts.y_stats, parts.y_1d = y_stats, weight.shape[1] == 1
    else:
        if y_stats[0] is not None:
            raise ValueError(f"the {activation} head {dense.name!r} is followed by an "
                             "inverting Normalization; a classifier's output is its "
                             "probabilities")
        parts.head_weight, parts.head_bias, parts.classes = classifier_head(
            weight, bias, classes, activation, f"the Dense head {dense.name!r}")
    return estimator_from_parts(parts, random_state)


def _describe(layer):
    return "nothing" if layer is None else f"{layer.name!r} ({type(layer).__name__})"


def _dense_head(layer, keras, net):
    """(kernel, bias, activation name) of a Dense head, checked against the network."""
    if not layer.built:
        raise ValueError(f"Keras layer {layer.name!r} is not built (it has no weights yet): "
                         "call it on data or build the model first")
    activations = {"linear": keras.activations.linear, "softmax": keras.activations.softmax,
                   "sigmoid": keras.activations.sigmoid}
    name = next((k for k, fn in activations.items() if layer.activation is fn), None)
    if name is None:
        fn = layer.activation
        raise ValueError(f"the Dense head {layer.name!r} has activation="
                         f"{getattr(fn, '__name__', fn)!r}; clstm's head is linear "
                         "(LSTMRegressor), softmax or sigmoid (LSTMClassifier)" + _NETWORK_HINT)
    kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), np.float64)
    fan_in = net.num_directions * net.output_size
    if kernel.ndim != 2 or kernel.shape[0] != fan_in:
        raise ValueError(f"the Dense head {layer.name!r} has a kernel of shape "
                         f"{kernel.shape}; on the recurrent output it should read {fan_in} "
                         "features")
    if layer.use_bias:
        bias = np.asarray(keras.ops.convert_to_numpy(layer.bias), np.float64)
    else:
        bias = np.zeros(kernel.shape[1])
    return kernel, bias, name


def _normalization_stats(layer, keras, invert):
    """(mean, scale) of a Normalization layer over the last axis, as float64."""
    if bool(layer.invert) != invert:
        where = "after the Dense head" if invert else "before the recurrent layers"
        want = "invert=True" if invert else "invert=False"
        raise ValueError(f"the Normalization layer {layer.name!r} {where} must have {want}")
    if tuple(layer.axis) not in ((-1,), (2,)):
        raise ValueError(f"the Normalization layer {layer.name!r} normalises over axis="
                         f"{layer.axis!r}; clstm standardises each feature (axis=-1)")
    if getattr(layer, "mean", None) is None:
        raise ValueError(f"the Normalization layer {layer.name!r} has no statistics yet: "
                         "adapt it or build the model first")
    mean = np.asarray(keras.ops.convert_to_numpy(layer.mean), np.float64).reshape(-1)
    variance = np.asarray(keras.ops.convert_to_numpy(layer.variance), np.float64).reshape(-1)
    scale = np.maximum(np.sqrt(variance), float(keras.config.epsilon()))
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(scale))):
        raise ValueError(f"the Normalization layer {layer.name!r} has non-finite statistics")
    return mean, scale
