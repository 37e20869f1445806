"""Nowcasting moving shapes with a ConvLSTM: frames in, the next frames out.

Run it with::

    python -m clstm.demo_nowcast
    python -m clstm.demo_nowcast --help

The task (:func:`clstm.datasets.make_moving_shapes`): squares and discs move
with constant velocity on a 16 x 16 grid and bounce at the edges; from
``--steps`` frames, predict the next one. The next frame is fixed by the last
two, but a model has to see where each shape moves, which needs its
neighbouring pixels: the setting of Shi et al. (2015), on a scale that
trains in seconds.

The demo fits :class:`clstm.ConvLSTMRegressor` and reports the test MSE
(per pixel) of its next-frame prediction against two baselines:
persistence (the last frame again) and, unless ``--no-lstm``, a per-pixel
:class:`clstm.LSTMRegressor` that reads each pixel's own history only (the
same model at every pixel, no neighbours: what a non-convolutional
recurrent network sees). It then forecasts ``--horizon`` frames
recursively (each predicted frame fed back, :meth:`ConvLSTMRegressor.forecast`)
and reports the MSE per lead time, and writes an image strip of some test
samples, one row each: the input frames | the true next frames | the
predicted ones, as a grayscale PNG (written with zlib, no plotting library).
"""

import argparse
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

__all__ = ["main", "write_png", "image_strip"]

DEFAULT_IMAGE = "nowcast_strip.png"
DEFAULT_SIZE = 16
DEFAULT_STEPS = 6
DEFAULT_EPOCHS = 12
DEFAULT_HORIZON = 3


def write_png(path, image):
    """Write a 2-D array of values in [0, 1] (or uint8) as an 8-bit grayscale PNG.

    A PNG is the 8-byte signature and chunks (length, type, data, CRC-32):
    IHDR (width, height, bit depth 8, colour type 0 = grayscale), IDAT (the
    zlib-compressed rows, each preceded by filter type 0) and IEND.
    Returns the absolute path written.
    """
    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) == 0:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    height, width = image.shape

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = np.concatenate([np.zeros((height, 1), np.uint8), image], axis=1)
    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
           + chunk(b"IEND", b""))
    path = Path(path)
    path.write_bytes(png)
    return str(path.resolve())


def image_strip(inputs, truth, predicted, scale=4):
    """One row per sample: input frames | true next frames | predicted next frames.

    ``inputs`` (n, T, H, W), ``truth`` and ``predicted`` (n, k, H, W), values
    in [0, 1]; frames are separated by a 1-pixel gray line and the three groups
    by a wider one, every pixel drawn as a ``scale`` x ``scale`` block.
    Returns a 2-D float array.
    """
    n, _, H, W = inputs.shape
    gray = 0.5
    rows = []
    for i in range(n):
        groups = []
        for frames in (inputs[i], truth[i], np.clip(predicted[i], 0.0, 1.0)):
            parts = []
            for f in frames:
                parts += [f, np.full((H, 1), gray)]
            groups.append(np.concatenate(parts[:-1], axis=1))
        sep = np.full((H, 3), gray)
        rows += [np.concatenate([groups[0], sep, groups[1], sep, groups[2]], axis=1),
                 np.full((1, sum(g.shape[1] for g in groups) + 6), gray)]
    strip = np.concatenate(rows[:-1], axis=0)
    return np.kron(strip, np.ones((scale, scale)))


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m clstm.demo_nowcast",
        description=("Predict the next frames of moving shapes with clstm.ConvLSTMRegressor, "
                     "compare with persistence and a per-pixel LSTM, save an image strip."))
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"grid height and width (default: {DEFAULT_SIZE})")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"input frames per sample (default: {DEFAULT_STEPS})")
    parser.add_argument("--shapes", type=int, default=2, help="shapes per sample (default: 2)")
    parser.add_argument("--n-train", type=int, default=400, help="training samples")
    parser.add_argument("--n-test", type=int, default=200, help="test samples")
    parser.add_argument("--filters", type=int, default=8, help="ConvLSTM filters (default: 8)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"training epochs (default: {DEFAULT_EPOCHS})")
    parser.add_argument("--horizon", type=int, default=DEFAULT_HORIZON,
                        help=f"frames forecast recursively (default: {DEFAULT_HORIZON})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--no-lstm", action="store_true",
                        help="skip the per-pixel LSTMRegressor baseline")
    parser.add_argument("--image", metavar="PATH", default=DEFAULT_IMAGE,
                        help=f"where to write the PNG strip (default: {DEFAULT_IMAGE})")
    parser.add_argument("--no-image", action="store_true", help="write no image")
    args = parser.parse_args(argv)
    for name in ("size", "steps", "shapes", "n_train", "n_test", "filters", "epochs",
                 "horizon"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.size < 4:
        parser.error("--size must be >= 4 (the shapes are 3 pixels across)")
    return args


def _mse(a, b):
    return float(np.mean((np.asarray(a) - np.asarray(b)) ** 2))


def main(argv=None):
    """Run the demo (``argv`` as on the command line). Returns a dict:
    ``"mse"`` (next-frame test MSE per pixel for ``"convlstm"``,
    ``"persistence"`` and, unless ``--no-lstm``, ``"pixel_lstm"``),
    ``"forecast_mse"`` (per lead time: lists for ``"convlstm"`` and
    ``"persistence"``), ``"seconds"`` (fit time per model) and
    ``"image"`` (the PNG's path, or None)."""
    from clstm import ConvLSTMRegressor, LSTMRegressor
    from clstm.datasets import make_moving_shapes

    args = _parse_args(argv)
    T, k = args.steps, args.horizon
    common = dict(n_steps=T, size=args.size, n_shapes=args.shapes)
    X_train, y_train = make_moving_shapes(args.n_train, random_state=args.seed, **common)
    movie = make_moving_shapes(args.n_test, **{**common, "n_steps": T + k - 1},
                               return_frames=True, random_state=args.seed + 1)
    X_test, future = movie[:, :T], movie[:, T:]
    y_test = future[:, 0]
    print(f"moving shapes: {args.shapes} per {args.size}x{args.size} frame, {T} frames -> "
          f"the next; {args.n_train} training / {args.n_test} test samples")
    results = {"mse": {}, "forecast_mse": {}, "seconds": {}, "image": None}

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = ConvLSTMRegressor(filters=args.filters, max_iter=args.epochs,
                                  learning_rate_init=1e-2, batch_size=16,
                                  random_state=args.seed).fit(X_train, y_train)
    results["seconds"]["convlstm"] = time.perf_counter() - start
    results["mse"]["convlstm"] = _mse(model.predict(X_test), y_test)
    results["mse"]["persistence"] = _mse(X_test[:, -1], y_test)

    if not args.no_lstm:
        # every pixel's own history as a univariate sequence; a subsample keeps it cheap
        rng = np.random.default_rng(args.seed)
        seqs = X_train[..., 0].transpose(0, 2, 3, 1).reshape(-1, T)
        targets = y_train[..., 0].reshape(-1)
        rows = rng.choice(len(seqs), size=min(len(seqs), 20000), replace=False)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            pixel = LSTMRegressor(hidden_size=8, max_iter=3, batch_size=256,
                                  learning_rate_init=1e-2, random_state=args.seed)
            pixel.fit(seqs[rows], targets[rows])
        results["seconds"]["pixel_lstm"] = time.perf_counter() - start
        test_seqs = X_test[..., 0].transpose(0, 2, 3, 1).reshape(-1, T)
        results["mse"]["pixel_lstm"] = _mse(pixel.predict(test_seqs).reshape(y_test.shape),
                                            y_test)

    names = {"convlstm": "ConvLSTMRegressor", "pixel_lstm": "per-pixel LSTMRegressor",
             "persistence": "persistence (last frame)"}
    print("next-frame test MSE per pixel:")
    for key, value in results["mse"].items():
        took = results["seconds"].get(key)
        print(f"  {names[key]:<26} {value:.4f}" + (f"  (fit {took:.1f} s)" if took else ""))

    predicted = model.forecast(X_test, steps=k)
    results["forecast_mse"]["convlstm"] = [_mse(predicted[:, j], future[:, j]) for j in range(k)]
    results["forecast_mse"]["persistence"] = [_mse(X_test[:, -1], future[:, j])
                                              for j in range(k)]
    print(f"recursive forecast (each predicted frame fed back), MSE at lead 1..{k}:")
    for key in ("convlstm", "persistence"):
        values = "  ".join(f"{v:.4f}" for v in results["forecast_mse"][key])
        print(f"  {names[key]:<26} {values}")

    if not args.no_image:
        n_show = min(4, args.n_test)
        strip = image_strip(X_test[:n_show, ..., 0], future[:n_show, ..., 0],
                            predicted[:n_show, ..., 0])
        results["image"] = write_png(args.image, strip)
        print(f"image strip (rows: test samples; inputs | truth | prediction): "
              f"{results['image']}")
    return results


if __name__ == "__main__":
    main()
