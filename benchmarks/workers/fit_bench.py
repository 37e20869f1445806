"""Estimator-level benchmark: one-layer LSTM + Dense(1) on the last h, MSE, Adam(lr=1e-3),
batch 32, shuffled each epoch, float32. Two cases (``CASES``):

- ``ts-small``: 1,000 sequences of (50 steps, 1 feature), H=50, 10 epochs;
- ``forecast``: 230 windows of 20 steps cut from one noisy series of 250 values, H=32,
  100 epochs (a small forecasting fit: here the Python around the kernels shows).

- clstm: ``clstm.LSTMRegressor(...).fit(X, y)`` (no L2, no clipping, no early stopping, no
  validation split, ``tol`` so that every epoch runs: the same work as the two loops below;
  it also standardises X and y, ``standardize=True``, which the loops do not: a few
  microseconds per fit, outside the training loop);
- torch: the equivalent hand-written loop (randperm, index, zero_grad, MSELoss, step);
- keras: ``model.compile(Adam, "mse")`` + ``model.fit(X, y, epochs=10, batch_size=32)``.

Model construction is outside the timer; everything ``fit`` does (Keras' tracing included)
is inside. Each repetition builds a fresh model.
"""

import inspect
import time
import warnings

import numpy as np

# name -> (n sequences, steps, features, hidden, epochs, batch)
CASES = {"ts-small": (1000, 50, 1, 50, 10, 32),
         "forecast": (230, 20, 1, 32, 100, 32)}
N, T, I, H, EPOCHS, BATCH = CASES["ts-small"]


def use_case(name):
    """Set the module's sizes to those of case ``name``."""
    global N, T, I, H, EPOCHS, BATCH
    N, T, I, H, EPOCHS, BATCH = CASES[name]


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    if N < 500:                     # forecast: windows of one series, the next value as target
        series = (np.sin(0.2 * np.arange(N + T)) + 0.1 * rng.standard_normal(N + T))
        idx = np.arange(N)[:, None] + np.arange(T + 1)[None, :]
        windows = series[idx]
        return windows[:, :T, None].astype(np.float32), windows[:, T].astype(np.float32)
    t0 = rng.uniform(0, 2 * np.pi, size=(N, 1))
    freq = rng.uniform(0.05, 0.3, size=(N, 1))
    steps = np.arange(T + 1)[None, :]
    wave = np.sin(t0 + freq * steps) + 0.1 * rng.standard_normal((N, T + 1))
    X = wave[:, :T, None].astype(np.float32)
    y = wave[:, T].astype(np.float32)
    return X, y


def _fit_clstm(X, y, threads, seed):
    import clstm
    want = dict(hidden_size=H, max_iter=EPOCHS, batch_size=BATCH, learning_rate_init=1e-3,
                solver="adam", random_state=seed, alpha=0.0, clip_norm=None, early_stopping=False,
                tol=0.0,
                n_iter_no_change=EPOCHS + 1, n_jobs=threads, shuffle=True, verbose=0)
    accepted = inspect.signature(clstm.LSTMRegressor).parameters
    kwargs = {k: v for k, v in want.items() if k in accepted}
    reg = clstm.LSTMRegressor(**kwargs)
    warnings.filterwarnings("ignore", message=".*maximum iterations")
    t0 = time.perf_counter()
    reg.fit(X, y)
    dt = time.perf_counter() - t0
    return dt, {"n_iter": int(getattr(reg, "n_iter_", -1)),
                "final_loss": float(reg.loss_curve_[-1]) if hasattr(reg, "loss_curve_") else None}


def _fit_torch(X, y, threads, seed):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(I, H, batch_first=True)
    head = torch.nn.Linear(H, 1)
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    loss_fn = torch.nn.MSELoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y[:, None])
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(EPOCHS):
        perm = torch.randperm(N, generator=g)
        epoch_loss = 0.0
        for i in range(0, N, BATCH):
            idx = perm[i:i + BATCH]
            xb, yb = Xt[idx], yt[idx]
            opt.zero_grad(set_to_none=True)
            out, _ = lstm(xb)
            loss = loss_fn(head(out[:, -1]), yb)
            loss.backward()
            opt.step()
            epoch_loss += loss.item() * len(idx)
    dt = time.perf_counter() - t0
    return dt, {"n_iter": EPOCHS, "final_loss": epoch_loss / N}


def _fit_keras(X, y, threads, seed):
    import tensorflow as tf
    import keras
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((T, I)), keras.layers.LSTM(H), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="mse")
    t0 = time.perf_counter()
    hist = model.fit(X, y, epochs=EPOCHS, batch_size=BATCH, shuffle=True, verbose=0)
    dt = time.perf_counter() - t0
    return dt, {"n_iter": len(hist.history["loss"]), "final_loss": float(hist.history["loss"][-1])}


HOW = {"clstm": "LSTMRegressor.fit", "torch": "hand-written loop", "keras": "model.fit"}


def run(framework, threads, quick=False, case="ts-small", reps=None):
    if framework == "clstm":
        import clstm
        if not hasattr(clstm, "LSTMRegressor"):
            raise ImportError("clstm.LSTMRegressor does not exist yet")
    fit = {"clstm": _fit_clstm, "torch": _fit_torch, "keras": _fit_keras}[framework]
    use_case(case)
    X, y = make_data()
    reps = reps or (1 if quick else 3)
    times, cpu, info = [], [], {}
    for r in range(reps):
        c0 = time.process_time()
        dt, info = fit(X, y, threads, seed=r)
        cpu.append(time.process_time() - c0)      # all threads of the process
        times.append(dt)
    return {"median_s": float(np.median(times)), "min_s": float(min(times)), "n": reps,
            "how": HOW[framework], "case": case, "times_s": times, "cpu_s": cpu, **info}
