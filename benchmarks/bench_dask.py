"""Scaling of the data-parallel Dask fit: 1 and 2 workers against the in-process fit.

For each model size (hidden units) and mini-batch size, times the training
epochs (the time inside ``_run_epoch``, i.e. without the one-off setup:
validation, digests, statistics) of

* ``in-process``: ``LSTMRegressor.fit`` on a NumPy array, ``n_jobs=1``, BLAS
  at one thread;
* ``dask-1w`` / ``dask-2w``: the same fit on a Dask array in as many blocks as
  workers, on a ``LocalCluster`` of 1 / 2 worker processes with 1 thread each;

in interleaved rounds (each round runs every mode once, so a slow spell of the
machine hits all of them), and reports the median milliseconds per
mini-batch step, the setup time of the Dask fit, and the crossover: the
smallest mini-batch at which 2 workers beat 1 (and beat the in-process fit).
Checks first that the 2-worker fit equals the in-process one (float32: to
rounding). The figures are per step, float32, fixed data (n samples of T
steps and F features).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_dask.py \\
        --hidden 32 128 --batch 64 256 1024 --rounds 5 --json dask.json
"""

import argparse
import json
import os
import platform
import statistics
import time
import warnings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--n", type=int, default=None,
                        help="samples (default: 4 x the largest batch)")
    parser.add_argument("--steps", type=int, default=50, help="timesteps per sequence")
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fit")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    import dask.array as da
    from distributed import Client, LocalCluster

    import clstm
    from clstm._base import BaseLSTMEstimator

    n = args.n or 4 * max(args.batch)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, args.steps, args.features)).astype(np.float32)
    y = X[:, -5:, 0].sum(axis=1) - X[:, 0, 1]

    # epoch times: the training loop's own steps, without the setup
    epoch_times = []
    original = BaseLSTMEstimator._run_epoch

    def timed_epoch(self, run, data):
        t0 = time.perf_counter()
        try:
            return original(self, run, data)
        finally:
            epoch_times.append(time.perf_counter() - t0)

    BaseLSTMEstimator._run_epoch = timed_epoch

    def make(hidden, batch):
        return clstm.LSTMRegressor(hidden_size=hidden, batch_size=batch, max_iter=args.epochs,
                                   dtype="float32", random_state=0, n_jobs=1, tol=0.0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clusters = {w: LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                                    dashboard_address=None) for w in (1, 2)}
    clients = {w: Client(c, set_as_default=False) for w, c in clusters.items()}
    blocks = {w: da.from_array(X, chunks=(-(-n // w), -1, -1)) for w in clients}

    def run_mode(mode, hidden, batch):
        """(median epoch seconds, whole fit seconds, estimator)."""
        del epoch_times[:]
        est = make(hidden, batch)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode == "in-process":
                with threadpool_limits(1, user_api="blas"):
                    est.fit(X, y)
            else:
                w = int(mode[5])
                with clients[w].as_current():
                    est.fit(blocks[w], y)
        total = time.perf_counter() - t0
        return statistics.median(epoch_times), total - sum(epoch_times), est

    modes = ("in-process", "dask-1w", "dask-2w")
    results = []
    try:
        for hidden in args.hidden:
            for batch in args.batch:
                steps = -(-n // batch)
                # check, and warm every mode up
                _, _, ref = run_mode("in-process", hidden, batch)
                _, _, two = run_mode("dask-2w", hidden, batch)
                run_mode("dask-1w", hidden, batch)
                diff = max(float(np.max(np.abs(a - two._model.params[k])))
                           for k, a in ref._model.params.items())
                per_step = {m: [] for m in modes}
                setup = {m: [] for m in modes}
                for _ in range(args.rounds):
                    for mode in modes:
                        epoch, other, _ = run_mode(mode, hidden, batch)
                        per_step[mode].append(epoch / steps * 1e3)
                        setup[mode].append(other)
                row = {"hidden": hidden, "batch": batch, "steps_per_epoch": steps,
                       "max_weight_diff_2w_vs_in_process": diff}
                for mode in modes:
                    row[mode] = {"median_ms_per_step": statistics.median(per_step[mode]),
                                 "min_ms_per_step": min(per_step[mode]),
                                 "median_setup_s": statistics.median(setup[mode]),
                                 "n": len(per_step[mode])}
                results.append(row)
                print(f"H={hidden:4d} batch={batch:5d}: " + "  ".join(
                    f"{m} {row[m]['median_ms_per_step']:.3g} ms/step" for m in modes)
                    + f"  (max |w diff| {diff:.1e})", flush=True)
    finally:
        BaseLSTMEstimator._run_epoch = original
        for c in clients.values():
            c.close()
        for c in clusters.values():
            c.close()

    crossover = {}
    for hidden in args.hidden:
        rows = [r for r in results if r["hidden"] == hidden]
        beats_1w = [r["batch"] for r in rows if r["dask-2w"]["median_ms_per_step"]
                    < r["dask-1w"]["median_ms_per_step"]]
        beats_local = [r["batch"] for r in rows if r["dask-2w"]["median_ms_per_step"]
                       < r["in-process"]["median_ms_per_step"]]
        crossover[hidden] = {"2w_beats_1w_from_batch": min(beats_1w) if beats_1w else None,
                             "2w_beats_in_process_from_batch":
                                 min(beats_local) if beats_local else None}

    blas = [(i.get("internal_api"), i.get("architecture"), i.get("version"))
            for i in threadpool_info() if i.get("user_api") == "blas"]
    info = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0], "blas": blas, "n": n, "T": args.steps,
            "F": args.features, "epochs": args.epochs, "rounds": args.rounds}
    print(f"\n{info}")
    print("\n| hidden | batch | in-process ms/step | 1 worker ms/step | 2 workers ms/step | "
          "2w vs 1w | 2w vs in-process |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        a, b, c = (r[m]["median_ms_per_step"] for m in modes)
        print(f"| {r['hidden']} | {r['batch']} | {a:.3g} | {b:.3g} | {c:.3g} | {b / c:.2f}x | "
              f"{a / c:.2f}x |")
    print("\nDask setup per fit (validation, digests, statistics; median s): " + ", ".join(
        f"H={r['hidden']} batch={r['batch']}: 2w {r['dask-2w']['median_setup_s']:.2f}"
        for r in results))
    for hidden, c in crossover.items():
        print(f"crossover H={hidden}: 2 workers beat 1 from batch "
              f"{c['2w_beats_1w_from_batch']}, beat the in-process fit from batch "
              f"{c['2w_beats_in_process_from_batch']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"info": info, "results": results, "crossover": crossover}, fh, indent=1)
    return results


if __name__ == "__main__":
    main()
