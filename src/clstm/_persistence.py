"""save / load of fitted estimators in a documented, versioned, non-pickle format.

Format ``clstm.estimator``, version 1: a NumPy ``.npz`` archive (a zip of
``.npy`` files, read with ``allow_pickle=False``) holding

* ``__metadata__``: uint8 array of UTF-8 JSON with ``format``,
  ``format_version``, ``clstm_version``, ``estimator`` (class name),
  ``params`` (``get_params()``; a non-int ``random_state`` is stored as null,
  a ``class_weight`` dict as a list of [label, weight] pairs), ``fitted``
  (scalar fitted attributes), ``network`` (clstm.LSTM configuration),
  ``optimizer`` (kind, hyperparameters, step count) and ``rng`` (the states
  of the shuffling RandomState and of the network's dropout Generator, so
  that training continues exactly);
* ``lstm/<torch name>``: network parameters (``weight_ih_l0``, ...);
* ``head/weight`` (D*H, n_outputs), ``head/bias`` (n_outputs,);
* ``optimizer/<slot>/<parameter>``: optimizer state (Adam's ``m``, ``v``, ...);
* ``scaling/x_mean``, ``scaling/x_scale`` (and ``y_mean``, ``y_scale`` for a
  regressor) when ``standardize=True``;
* ``classes`` (classifier; numeric, bool or unicode labels), ``rng/mt_keys``.

Files are written atomically: to a temporary file in the target directory,
flushed and fsynced, then moved over the target with ``os.replace``. A
corrupt, truncated, foreign or newer-version file raises ValueError.
"""

import json
import os
import tempfile
import zipfile

import numpy as np

__all__ = ["save", "load", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "clstm.estimator"
FORMAT_VERSION = 1

_FITTED_SCALARS = ("n_features_in_", "input_size_", "_input_layout", "n_iter_", "t_",
                   "loss_", "loss_curve_", "best_loss_", "validation_scores_",
                   "best_validation_score_", "n_outputs_", "_y_1d")


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _encode_params(est):
    params = {}
    for k, v in est.get_params(deep=False).items():
        if k == "random_state" and not (v is None or isinstance(v, (int, np.integer))):
            v = None
        elif k == "class_weight" and isinstance(v, dict):
            v = {"__dict_items__": [[_jsonable(a), _jsonable(b)] for a, b in v.items()]}
        elif k == "dtype":
            v = np.dtype(v).name
        params[k] = _jsonable(v)
    return params


def _decode_params(params):
    out = dict(params)
    cw = out.get("class_weight")
    if isinstance(cw, dict) and "__dict_items__" in cw:
        out["class_weight"] = {a: b for a, b in cw["__dict_items__"]}
    return out


def save(est, path):
    """Write a fitted estimator to ``path`` (any name; no extension is added)."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est)
    from clstm._version import __version__

    model = est._model
    lstm = model.lstm
    arrays = {}
    for name, value in lstm.params.items():
        arrays[f"lstm/{name}"] = value
    arrays["head/weight"] = model.head_weight
    arrays["head/bias"] = model.head_bias
    opt_scalars, opt_arrays = est._optimizer.state_dict()
    for key, value in opt_arrays.items():
        arrays[f"optimizer/{key}"] = value
    x_mean, x_scale = est._x_stats
    if x_mean is not None:
        arrays["scaling/x_mean"], arrays["scaling/x_scale"] = x_mean, x_scale
    y_mean, y_scale = getattr(est, "_y_stats", (None, None))
    if y_mean is not None:
        arrays["scaling/y_mean"], arrays["scaling/y_scale"] = y_mean, y_scale
    if hasattr(est, "classes_"):
        classes = np.asarray(est.classes_)
        if classes.dtype.kind == "O":
            if all(isinstance(c, str) for c in classes):
                classes = classes.astype(str)
            else:
                raise ValueError("save() stores labels of numeric, bool or str type; classes_ "
                                 f"has object dtype with values {classes.tolist()!r}. Use "
                                 "pickle for such labels")
        if classes.dtype.kind not in "biufU":
            raise ValueError(f"save() cannot store classes_ of dtype {classes.dtype}")
        arrays["classes"] = classes
    mt = est._rng.get_state()
    arrays["rng/mt_keys"] = mt[1]
    fitted = {k: _jsonable(getattr(est, k)) for k in _FITTED_SCALARS if hasattr(est, k)}
    if hasattr(est, "feature_names_in_"):
        fitted["feature_names_in_"] = [str(f) for f in est.feature_names_in_]
    optimizer = {"kind": type(est._optimizer).__name__, "scalars": opt_scalars,
                 "hyper": {k: v for k, v in vars(est._optimizer).items()
                           if k not in ("t", "state", "learning_rate", "_step_size")}}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "clstm_version": __version__,
        "estimator": type(est).__name__,
        "params": _encode_params(est),
        "fitted": fitted,
        "network": {"input_size": lstm.input_size, "hidden_size": lstm.hidden_size,
                    "num_layers": lstm.num_layers, "bidirectional": lstm.bidirectional,
                    "dtype": np.dtype(lstm.dtype).name, "dropout": lstm.dropout,
                    "recurrent_dropout": lstm.recurrent_dropout,
                    "n_outputs": int(model.head_bias.shape[0]), "loss": model.loss,
                    "return_sequences": model.return_sequences},
        "optimizer": optimizer,
        "rng": {"mt": [mt[0], int(mt[2]), int(mt[3]), float(mt[4])],
                "network": lstm._rng.bit_generator.state},
    }
    arrays["__metadata__"] = np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".clstm-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _bad(path, why):
    return ValueError(f"{path!r} is not a readable clstm model file: {why}")


def load(path):
    """Read an estimator written by ``save``; raises ValueError for a bad file."""
    from clstm._estimators import LSTMClassifier, LSTMRegressor
    from clstm._model import SequenceModel
    from clstm._optimizers import AdamOptimizer, RMSpropOptimizer, SGDOptimizer

    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise _bad(path, f"corrupt, truncated or not an .npz archive ({exc})") from None
    if "__metadata__" not in arrays:
        raise _bad(path, "no __metadata__ entry (not written by clstm's save)")
    try:
        meta = json.loads(arrays.pop("__metadata__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise _bad(path, f"format is {meta.get('format') if isinstance(meta, dict) else None!r}"
                         f", expected {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise _bad(path, f"invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path!r} was written by a newer clstm ({meta.get('clstm_version')}, "
                         f"format version {version}); this clstm reads format versions up to "
                         f"{FORMAT_VERSION}. Upgrade clstm to load it")
    classes = {"LSTMRegressor": LSTMRegressor, "LSTMClassifier": LSTMClassifier}
    try:
        cls = classes[meta["estimator"]]
        est = cls(**_decode_params(meta["params"]))
        net = meta["network"]
        model = SequenceModel(net["input_size"], net["hidden_size"], net["num_layers"],
                              net["bidirectional"], net["dropout"], net["recurrent_dropout"],
                              net["dtype"], est.n_jobs, net["n_outputs"], net["loss"],
                              net["return_sequences"], np.random.RandomState(0))
        prefix = "lstm/"
        model.lstm.load_state_dict({k[len(prefix):]: v for k, v in arrays.items()
                                    if k.startswith(prefix)})
        for attr, key in (("head_weight", "head/weight"), ("head_bias", "head/bias")):
            value = arrays[key]
            ref = getattr(model, attr)
            if value.shape != ref.shape or value.dtype != ref.dtype:
                raise ValueError(f"{key} has shape {value.shape} / dtype {value.dtype}, "
                                 f"expected {ref.shape} / {ref.dtype}")
            setattr(model, attr, np.array(value))
        model.lstm._rng.bit_generator.state = meta["rng"]["network"]
        opt_cls = {c.__name__: c for c in (AdamOptimizer, SGDOptimizer, RMSpropOptimizer)}
        opt_meta = meta["optimizer"]
        optimizer = opt_cls[opt_meta["kind"]].__new__(opt_cls[opt_meta["kind"]])
        optimizer.__dict__.update(opt_meta["hyper"])
        optimizer.load_state_dict(opt_meta["scalars"],
                                  {k[len("optimizer/"):]: v for k, v in arrays.items()
                                   if k.startswith("optimizer/")})
        rng = np.random.RandomState()
        name, pos, has_gauss, cached = meta["rng"]["mt"]
        rng.set_state((name, arrays["rng/mt_keys"], pos, has_gauss, cached))
        for k, v in meta["fitted"].items():
            if k == "feature_names_in_":
                v = np.asarray(v, dtype=object)
            setattr(est, k, v)
        est._x_stats = ((arrays["scaling/x_mean"], arrays["scaling/x_scale"])
                        if "scaling/x_mean" in arrays else (None, None))
        est._y_stats = ((arrays["scaling/y_mean"], arrays["scaling/y_scale"])
                        if "scaling/y_mean" in arrays else (None, None))
        if cls is LSTMClassifier:
            est.classes_ = arrays["classes"]
        est._model = model
        est.lstm_ = model.lstm
        est._optimizer = optimizer
        est._rng = rng
    except ValueError as exc:
        raise _bad(path, str(exc)) from None
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise _bad(path, f"missing or malformed entry ({type(exc).__name__}: {exc})") from None
    return est
