"""A fitted estimator as framework-neutral parts, and a fitted estimator from parts.

The Keras and torch converters of estimators go through here, so both read
and build estimators the same way. An estimator's ``predict`` /
``predict_proba`` is, in order:

1. input standardisation ``(x - x_mean) / x_scale`` (``standardize=True``);
2. the network;
3. the head ``features @ head_weight + head_bias`` on the top layer's last
   ``h`` (both directions concatenated, bidirectional) or, with
   ``return_sequences``, on every step's output;
4. a regressor: ``z * y_scale + y_mean``; a classifier: the sigmoid of the
   one logit of ``classes_[1]`` (two classes) or the softmax over
   ``classes_`` (sorted).
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["EstimatorParts", "estimator_parts", "estimator_from_parts", "classifier_head",
           "is_estimator"]


@dataclass
class EstimatorParts:
    network: object                  # clstm.LSTM / clstm.GRU
    head_weight: np.ndarray          # (D * output_size, n_head_outputs)
    head_bias: np.ndarray            # (n_head_outputs,)
    return_sequences: bool
    x_stats: tuple                   # (mean, scale) float64 arrays, or (None, None)
    classes: np.ndarray = None       # classifier: classes_ (sorted); None: regressor
    y_stats: tuple = (None, None)    # regressor
    y_1d: bool = False               # regressor: predict returns (n,) / (n, T)

    @property
    def classifier(self):
        return self.classes is not None


def is_estimator(obj):
    """True for a clstm estimator (fitted or not), without importing scikit-learn
    unless clstm's estimators are already imported."""
    import sys
    base = sys.modules.get("clstm._base")
    return base is not None and isinstance(obj, base.BaseLSTMEstimator)


def estimator_parts(est):
    """The parts of a fitted LSTMRegressor / LSTMClassifier (NotFittedError if not fitted)."""
    from sklearn.utils.validation import check_is_fitted

    from clstm._model import SequenceModel
    check_is_fitted(est)
    model = est._model
    name = type(est).__name__
    # the parts below are the whole predict only for network + head: say what
    # else a model has instead of exporting it without (silently different)
    if type(model) is not SequenceModel:
        raise ValueError(f"{name} is not a network with a dense head (its model is "
                         f"{type(model).__name__}); only LSTMRegressor / LSTMClassifier "
                         "convert to Keras or torch (export_onnx covers more)")
    if model.input_layer is not None:
        raise ValueError(f"{name} reads token ids through an embedding; its conversion to "
                         "Keras or torch is not supported: convert an estimator on "
                         "real-valued features, or take the table (est._model.input_layer."
                         "weight) and the network (est.lstm_) over by hand")
    if len(getattr(est, "_y_shape", ())) == 2:
        raise ValueError(f"{name} predicts (n, {est._y_shape[0]}, {est._y_shape[1]}) targets "
                         "(a horizon of several columns), which the Keras and torch "
                         "conversions do not reshape; export it with clstm.export_onnx, or fit "
                         "on y.reshape(len(y), -1)")
    if model.attention is not None:
        raise ValueError(f"{name} has attention={model.attention.kind!r}, which Keras' and "
                         "torch's LSTM modules do not include; export it with "
                         "clstm.export_onnx, or convert an estimator fitted with attention=None")
    parts = EstimatorParts(network=model.network, head_weight=model.head_weight.copy(),
                           head_bias=model.head_bias.copy(),
                           return_sequences=model.return_sequences, x_stats=est._x_stats)
    if hasattr(est, "classes_"):
        parts.classes = np.asarray(est.classes_)
    else:
        parts.y_stats, parts.y_1d = est._y_stats, bool(est._y_1d)
    return parts


def classifier_head(weight, bias, classes, activation, where):
    """(weight, bias, sorted classes) of clstm's classifier head from a framework's
    head whose output column k is the class ``classes[k]``.

    ``activation`` "sigmoid": one column, the probability of ``classes[1]``
    (two classes). "softmax": one column per class; two classes become one
    logit, the difference of theirs (softmax([a, b])[1] == sigmoid(b - a)).
    ``where`` names the head for the messages.
    """
    if classes is None:
        raise ValueError(f"{where} has a {activation} output, so it is a classifier: pass "
                         "classes=, the label of each output column in order (two labels "
                         "for a one-column sigmoid, the label of class 1 second)")
    classes = np.asarray(classes)
    if classes.ndim != 1 or classes.size < 2:
        raise ValueError(f"classes must be a 1-D sequence of at least 2 labels, got "
                         f"{classes.tolist()!r}")
    if np.unique(classes).size != classes.size:
        raise ValueError(f"classes must be distinct labels, got {classes.tolist()!r}")
    n_out = weight.shape[1]
    order = np.argsort(classes, kind="stable")
    if activation == "sigmoid":
        if n_out != 1 or classes.size != 2:
            raise ValueError(f"{where} has a sigmoid output of {n_out} columns and classes "
                             f"has {classes.size} labels; a sigmoid head is a binary "
                             "classifier: one column, two labels (multi-label outputs are "
                             "not supported)")
        sign = 1.0 if order[1] == 1 else -1.0          # the logit of the larger label
        return weight * sign, bias * sign, classes[order]
    if n_out != classes.size:
        raise ValueError(f"{where} has {n_out} softmax outputs but classes has "
                         f"{classes.size} labels; give one label per output column")
    weight, bias = weight[:, order], bias[order]
    if classes.size == 2:
        weight, bias = weight[:, 1:] - weight[:, :1], bias[1:] - bias[:1]
    return weight, bias, classes[order]


def estimator_from_parts(parts, random_state=None):
    """A fitted LSTMRegressor / LSTMClassifier that predicts what `parts` describe.

    A regressor with only one of the input and target statistics gets the
    identity for the other (``standardize=True`` then, with statistics that
    change nothing), so ``predict`` is unchanged and continued training
    standardises as the weights expect. `random_state` (None, an int or a
    RandomState) is the estimator's, seeding its shuffling generator.
    """
    from clstm._estimators import LSTMClassifier, LSTMRegressor

    net = parts.network
    dtype = np.dtype(net.dtype)
    weight = np.ascontiguousarray(parts.head_weight, dtype=dtype)
    bias = np.ascontiguousarray(parts.head_bias, dtype=dtype)
    x_stats = _float64_stats(parts.x_stats)
    if parts.classifier:
        return LSTMClassifier._from_weights(net, weight, bias, parts.return_sequences, x_stats,
                                            {"n_outputs_": 1}, {"classes": parts.classes},
                                            random_state)
    y_stats = _float64_stats(parts.y_stats)
    n_outputs = bias.shape[0]
    if (x_stats[0] is None) != (y_stats[0] is None):
        if x_stats[0] is None:
            x_stats = (np.zeros(net.input_size), np.ones(net.input_size))
        else:
            y_stats = (np.zeros(n_outputs), np.ones(n_outputs))
    target_arrays = {}
    if y_stats[0] is not None:
        target_arrays = {"scaling/y_mean": y_stats[0], "scaling/y_scale": y_stats[1]}
    return LSTMRegressor._from_weights(net, weight, bias, parts.return_sequences, x_stats,
                                       {"n_outputs_": n_outputs, "_y_1d": bool(parts.y_1d)},
                                       target_arrays, random_state)


def _float64_stats(stats):
    mean, scale = stats
    if mean is None:
        return None, None
    return (np.ascontiguousarray(mean, dtype=np.float64).reshape(-1),
            np.ascontiguousarray(scale, dtype=np.float64).reshape(-1))
