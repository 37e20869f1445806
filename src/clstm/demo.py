"""Forecast El Nino sea surface temperature one month ahead with an LSTM.

Run it with::

    python -m clstm.demo            # trains, prints test errors, writes elnino_forecast.png
    python -m clstm.demo --help

The data, shipped inside clstm (:func:`clstm.datasets.load_elnino`), is NOAA's
monthly mean sea surface temperature of the Nino 1+2 region of the Pacific,
1950-2010 (public domain). The demo

1. splits the series chronologically: the model is trained on 1950-2000 and
   tested on the 120 months of 2001-2010, which it never sees during training;
2. standardizes the series with the mean and standard deviation of the
   training years only;
3. cuts it into windows of the previous ``LOOKBACK`` months -> next month
   (:func:`clstm.make_windows`) and fits :class:`clstm.LSTMRegressor`;
4. prints the test RMSE and MAE next to two naive forecasts, "same as last
   month" and "same as twelve months ago" (seasonal naive), and the training
   time;
5. plots forecast against actual for the test years to a PNG file when
   matplotlib is installed (``pip install "clstm-learn[demo]"`` adds it).
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from clstm._windows import make_windows
from clstm.datasets import load_elnino

__all__ = ["main"]

TEST_MONTHS = 120  # the last ten years, 2001-2010
LOOKBACK = 24  # months of history the model reads for each forecast
DEFAULT_EPOCHS = 40
DEFAULT_PLOT = "elnino_forecast.png"
DIST_NAME = "clstm-learn"  # the name on PyPI (pyproject.toml), whose `demo` extra adds matplotlib


def _rmse(y_true, y_pred):
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def _mae(y_true, y_pred):
    return float(np.mean(np.abs(y_true - y_pred)))


def _build_model(epochs, seed, verbose):
    """The forecaster: one LSTM layer of 32 units and a linear output, Adam, squared error.

    A learning rate of 1e-2 (ten times the default) suits this small data set:
    588 windows, 19 mini-batches an epoch, a few seconds of training.
    """
    from clstm import LSTMRegressor

    return LSTMRegressor(
        hidden_size=32,
        num_layers=1,
        max_iter=epochs,
        batch_size=32,
        learning_rate_init=1e-2,
        early_stopping=False,  # no validation hold-out: the test years are held out already
        random_state=seed,
        verbose=int(verbose),
    )


def _plot(path, dates, actual, forecasts, title):
    """Write forecast-vs-actual to ``path``; return False if matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    # A bare Figure renders with the Agg backend and leaves pyplot's state alone.
    fig = Figure(figsize=(10, 4.8), constrained_layout=True)
    ax = fig.add_subplot()
    ax.plot(dates, actual, color="black", linewidth=1.8, label="actual")
    styles = [
        {"color": "tab:red", "linewidth": 1.6},
        {"color": "tab:gray", "linewidth": 1.0, "linestyle": "--"},
        {"color": "tab:blue", "linewidth": 1.0, "linestyle": ":"},
    ]
    for (label, values), style in zip(forecasts.items(), styles):
        ax.plot(dates, values, label=label, **style)
    ax.set_title(title)
    ax.set_ylabel("sea surface temperature (\N{DEGREE SIGN}C)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=4, frameon=False)
    fig.savefig(path, dpi=120)
    return True


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m clstm.demo",
        description=(
            "Train clstm.LSTMRegressor to forecast monthly El Nino sea surface "
            "temperature (NOAA, Nino 1+2, 1950-2010; shipped with clstm) one month "
            "ahead, and compare it with naive forecasts on 2001-2010."
        ),
    )
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"training epochs (default: {DEFAULT_EPOCHS})")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the weights and batch order (default: 0)")
    parser.add_argument("--plot", metavar="PATH", default=DEFAULT_PLOT,
                        help=f"where to write the PNG plot (default: {DEFAULT_PLOT})")
    parser.add_argument("--no-plot", action="store_true", help="do not write a plot")
    parser.add_argument("--quiet", action="store_true",
                        help="print only the table of test errors")
    parser.add_argument("--verbose", action="store_true",
                        help="show the estimator's per-epoch training progress")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    return args


def main(argv=None):
    """Run the demo; ``argv`` as on the command line (default: ``sys.argv[1:]``).

    Returns a dict with the test metrics (``"lstm"``, ``"last_value"``,
    ``"seasonal_naive"``, each ``{"rmse": ..., "mae": ...}`` in degrees C),
    ``"train_seconds"``, ``"n_train"``, ``"n_test"`` and ``"plot"`` (the path
    written, or None).
    """
    args = _parse_args(argv)

    def say(*lines):
        if not args.quiet:
            print(*lines, sep="\n")

    elnino = load_elnino()
    sst, dates = elnino.data, elnino.dates
    split = len(sst) - TEST_MONTHS  # first test month: 2001-01

    # Scale with statistics of the training years only: the test years stay unseen.
    # (LSTMRegressor also standardizes internally by default, from the data given
    # to fit; scaling here keeps the demo correct for any model put in its place.)
    mean, scale = sst[:split].mean(), sst[:split].std()
    X, y = make_windows((sst - mean) / scale, LOOKBACK)
    target_step = LOOKBACK + np.arange(len(y))  # index in `sst` of each window's target
    train = target_step < split
    test = ~train
    # A test window may read training months as its history; its target is always a test month.
    X_train, y_train, X_test = X[train], y[train], X[test]
    t_test = target_step[test]
    actual = sst[t_test]

    say(
        "clstm demo: forecast next month's El Nino sea surface temperature",
        f"data: NOAA ERSST.v3b, Nino 1+2 region, monthly {dates[0]} to {dates[-1]} "
        "(public domain; clstm.datasets.load_elnino)",
        f"train: targets {dates[target_step[train][0]]} to {dates[split - 1]} "
        f"({int(train.sum())} windows of {LOOKBACK} months)",
        f"test:  targets {dates[split]} to {dates[-1]} "
        f"({int(test.sum())} months, never seen in training)",
    )

    model = _build_model(args.epochs, args.seed, args.verbose and not args.quiet)
    say(f"model: {model!r}", "training...")
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Stopping after a fixed number of epochs is the plan here, not a problem.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_train, y_train)
    train_seconds = time.perf_counter() - start
    forecast = np.asarray(model.predict(X_test), dtype=np.float64).reshape(-1) * scale + mean
    n_epochs = getattr(model, "n_iter_", args.epochs)
    say(f"trained for {n_epochs} epochs", "")

    forecasts = {
        "LSTM": forecast,
        "last value (naive)": sst[t_test - 1],
        "seasonal naive (lag 12)": sst[t_test - 12],
    }
    keys = dict(zip(forecasts, ("lstm", "last_value", "seasonal_naive")))
    results = {
        keys[name]: {"rmse": _rmse(actual, pred), "mae": _mae(actual, pred)}
        for name, pred in forecasts.items()
    }
    print(f"test error 2001-2010, degrees C   {'RMSE':>6}  {'MAE':>6}")
    for name in forecasts:
        r = results[keys[name]]
        print(f"  {name:<31} {r['rmse']:6.3f}  {r['mae']:6.3f}")
    print(f"training time: {train_seconds:.1f} s")
    lstm, last = results["lstm"]["rmse"], results["last_value"]["rmse"]
    seasonal = results["seasonal_naive"]["rmse"]
    say(
        f"LSTM RMSE is {100 * (1 - lstm / last):.0f}% below the last-value forecast "
        f"and {100 * (1 - lstm / seasonal):.0f}% below the seasonal naive one."
    )

    plot_path = None
    if not args.no_plot:
        title = (f"El Nino (Nino 1+2) sea surface temperature: one-month-ahead forecasts, "
                 f"test years (LSTM RMSE {lstm:.2f} \N{DEGREE SIGN}C)")
        if _plot(args.plot, dates[t_test], actual, forecasts, title):
            plot_path = str(Path(args.plot).resolve())
            say(f"plot: {plot_path}")
        else:
            say("plot: skipped, matplotlib is not installed; get it with: "
                f'pip install matplotlib (or: pip install "{DIST_NAME}[demo]")')

    results.update(
        train_seconds=train_seconds,
        n_train=int(train.sum()),
        n_test=int(test.sum()),
        plot=plot_path,
    )
    return results


if __name__ == "__main__":
    main()
