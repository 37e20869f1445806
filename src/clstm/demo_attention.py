"""Attention in clstm: pooling where it matters, and an encoder-decoder forecast.

Run it with::

    python -m clstm.demo_attention            # both parts
    python -m clstm.demo_attention marked     # part 1: writes attention_weights.png (or .csv)
    python -m clstm.demo_attention forecast   # part 2: El Nino, six months ahead
    python -m clstm.demo_attention --help

Part 1, find the marked step.
The task (:func:`marked_step_task`): each sequence has ``T`` steps of two
channels, a random value and a marker that is 1 at exactly one random step;
the label is whether the value at the marked step is positive. The answer
sits anywhere in the sequence, so a classifier that reads only the last
state must carry it through up to ``T`` steps, while attention pooling can
put its weight on the marked step itself.

The demo fits :class:`clstm.LSTMClassifier` three times with the same hidden
size, epochs and seed (last state, ``attention="additive"``,
``attention="dot"``), prints test accuracies and how often the largest
attention weight falls on the marked step, and writes a heat map of the
attention weights of some test sequences (matplotlib, when installed; without
it the weights and the marked steps are written as CSV instead).

Part 2, a multi-step forecast: the El Nino series of ``python -m clstm.demo``
(:func:`clstm.datasets.load_elnino`, monthly sea surface temperature,
1950-2010), windows of 24 months -> the next 6 months, trained on the
windows whose six target months all lie before 2001 and tested on those
whose first target month is in 2001-2010. It compares
:class:`clstm.LSTMSeq2SeqRegressor` (Luong attention, and without
attention) with the direct multi-output :class:`clstm.LSTMRegressor`
(one output per horizon step, ``y`` of shape (n, 6)) and the seasonal naive
forecast, by RMSE at each horizon step.
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

__all__ = ["main", "marked_step_task"]

DEFAULT_STEPS = 100
DEFAULT_EPOCHS = 8
FORECAST_LOOKBACK = 24
FORECAST_HORIZON = 6
FORECAST_EPOCHS = 40
TEST_MONTHS = 120
DEFAULT_PLOT = "attention_weights.png"
DIST_NAME = "clstm-learn"


def marked_step_task(n_samples, n_steps, seed=0):
    """The "find the marked step" classification data.

    Returns
    -------
    X : ndarray of shape (n_samples, n_steps, 2)
        Channel 0: standard normal values; channel 1: 1 at the marked step, else 0.
    y : ndarray of shape (n_samples,)
        1 if the value at the marked step is positive, else 0.
    marks : ndarray of shape (n_samples,)
        The marked step of each sequence.

    Examples
    --------
    >>> X, y, marks = marked_step_task(4, 10, seed=0)
    >>> X.shape, bool(np.all(X[np.arange(4), marks, 1] == 1))
    ((4, 10, 2), True)
    """
    rng = np.random.default_rng(seed)
    X = np.zeros((n_samples, n_steps, 2))
    X[..., 0] = rng.standard_normal((n_samples, n_steps))
    marks = rng.integers(0, n_steps, n_samples)
    rows = np.arange(n_samples)
    X[rows, marks, 1] = 1.0
    y = (X[rows, marks, 0] > 0).astype(np.int64)
    return X, y, marks


def _write_weights(path, weights, marks):
    """Heat map of `weights` (n, T) with the marked steps circled; returns the path
    written (a .csv next to `path` when matplotlib is missing) and whether it is a plot."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        csv = Path(path).with_suffix(".csv")
        header = "marked_step," + ",".join(f"a_{t}" for t in range(weights.shape[1]))
        rows = np.column_stack([marks, weights])
        np.savetxt(csv, rows, delimiter=",", header=header, comments="",
                   fmt=["%d"] + ["%.6f"] * weights.shape[1])
        return str(csv.resolve()), False
    fig = Figure(figsize=(10, 0.35 * len(weights) + 1.2), constrained_layout=True)
    ax = fig.add_subplot()
    image = ax.imshow(weights, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.scatter(marks, np.arange(len(marks)), s=40, facecolors="none", edgecolors="red",
               label="marked step")
    ax.set_xlabel("step")
    ax.set_ylabel("test sequence")
    ax.set_title("attention weights a_t (red circle: the marked step)")
    ax.legend(loc="upper right", fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=120)
    return str(Path(path).resolve()), True


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m clstm.demo_attention",
        description=("Compare clstm.LSTMClassifier with and without attention pooling on "
                     "a 'find the marked step' task and save the attention weights."))
    parser.add_argument("part", nargs="?", choices=("all", "marked", "forecast"),
                        default="all", help="which part to run (default: all)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"sequence length (default: {DEFAULT_STEPS})")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"training epochs of part 1 (default: {DEFAULT_EPOCHS})")
    parser.add_argument("--forecast-epochs", type=int, default=FORECAST_EPOCHS,
                        help=f"training epochs of part 2 (default: {FORECAST_EPOCHS})")
    parser.add_argument("--hidden-size", type=int, default=8, help="LSTM units (default: 8)")
    parser.add_argument("--n-train", type=int, default=512, help="training sequences")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--plot", metavar="PATH", default=DEFAULT_PLOT,
                        help=f"where to write the heat map (default: {DEFAULT_PLOT}; "
                             "a .csv of the same name without matplotlib)")
    parser.add_argument("--no-plot", action="store_true", help="write no plot or CSV")
    args = parser.parse_args(argv)
    for name in ("steps", "epochs", "forecast_epochs", "hidden_size", "n_train"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv=None):
    """Run the demo (``argv`` as on the command line). Returns a dict with
    ``"marked"`` (part 1: ``"accuracy"`` per model, ``"last_state"``,
    ``"additive"``, ``"dot"``; ``"on_mark"``, the share of test sequences whose
    largest attention weight is on the marked step, per attention kind;
    ``"seconds"`` per model; ``"weights_file"``, the path written or None) and
    ``"forecast"`` (part 2: ``"rmse"`` per model, a list over the horizon steps
    in degrees C; ``"seconds"`` per model), for the parts run."""
    args = _parse_args(argv)
    results = {}
    if args.part in ("all", "marked"):
        results["marked"] = _marked(args)
    if args.part in ("all", "forecast"):
        if "marked" in results:
            print()
        results["forecast"] = _forecast(args)
    return results


def _marked(args):
    from clstm import LSTMClassifier

    X_train, y_train, _ = marked_step_task(args.n_train, args.steps, seed=args.seed)
    X_test, y_test, marks = marked_step_task(512, args.steps, seed=args.seed + 1)
    print(f"find the marked step: {args.n_train} training / 512 test sequences of "
          f"{args.steps} steps; label = sign of the value at the marked step")
    params = dict(hidden_size=args.hidden_size, max_iter=args.epochs,
                  learning_rate_init=1e-2, random_state=args.seed)
    results = {"accuracy": {}, "on_mark": {}, "seconds": {}, "weights_file": None}
    fitted = {}
    for key, attention in (("last_state", None), ("additive", "additive"), ("dot", "dot")):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = LSTMClassifier(attention=attention, **params).fit(X_train, y_train)
        results["seconds"][key] = time.perf_counter() - start
        results["accuracy"][key] = float(clf.score(X_test, y_test))
        line = (f"  {key:<11} test accuracy {results['accuracy'][key]:.3f}  "
                f"({results['seconds'][key]:.1f} s)")
        if attention is not None:
            a = clf.attention_weights(X_test)
            results["on_mark"][key] = float(np.mean(a.argmax(axis=1) == marks))
            line += f"  largest weight on the marked step: {results['on_mark'][key]:.0%}"
            fitted[key] = a
        print(line)
    if not args.no_plot:
        path, is_plot = _write_weights(args.plot, fitted["additive"][:20], marks[:20])
        results["weights_file"] = path
        if is_plot:
            print(f"attention heat map (additive, 20 test sequences): {path}")
        else:
            print(f"matplotlib is not installed: wrote the attention weights as CSV to {path} "
                  f'(pip install matplotlib, or "{DIST_NAME}[demo]", for the heat map)')
    return results


def _forecast(args):
    from clstm import LSTMRegressor, LSTMSeq2SeqRegressor
    from clstm._windows import make_windows
    from clstm.datasets import load_elnino

    elnino = load_elnino()
    sst, dates = elnino.data, elnino.dates
    split = len(sst) - TEST_MONTHS                 # first test month: 2001-01
    mean, scale = sst[:split].mean(), sst[:split].std()
    L, H = FORECAST_LOOKBACK, FORECAST_HORIZON
    X, y = make_windows((sst - mean) / scale, L, horizon=H)
    first = L + np.arange(len(y))                 # index in sst of each window's first target
    train = first + H - 1 < split                 # every target month before the test years
    test = first >= split
    targets = first[test][:, None] + np.arange(H)
    actual = sst[targets]
    print(f"El Nino, {H} months ahead from {L}: {int(train.sum())} training windows "
          f"(targets to {dates[split - 1]}), {int(test.sum())} test windows (first target "
          f"{dates[split]} onwards)")
    common = dict(hidden_size=32, max_iter=args.forecast_epochs, learning_rate_init=1e-2,
                  random_state=args.seed)
    models = {"seq2seq + attention": LSTMSeq2SeqRegressor(attention="general", **common),
              "seq2seq, no attention": LSTMSeq2SeqRegressor(attention=None, **common),
              "direct (LSTMRegressor)": LSTMRegressor(**common)}
    results = {"rmse": {}, "seconds": {}}
    forecasts = {}
    for name, model in models.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X[train], y[train])
        results["seconds"][name] = time.perf_counter() - start
        forecasts[name] = np.asarray(model.predict(X[test])) * scale + mean
    forecasts["seasonal naive (lag 12)"] = sst[targets - 12]
    print("  test RMSE (degrees C) by months ahead: "
          + " ".join(f"{h + 1:>6}" for h in range(H)) + "    mean")
    for name, pred in forecasts.items():
        rmse = np.sqrt(np.mean((pred - actual) ** 2, axis=0))
        results["rmse"][name] = [float(r) for r in rmse]
        took = (f"  ({results['seconds'][name]:.1f} s)" if name in results["seconds"]
                else "")
        print(f"  {name:<38} " + " ".join(f"{r:6.3f}" for r in rmse)
              + f"  {rmse.mean():6.3f}{took}")
    return results


if __name__ == "__main__":
    main()
