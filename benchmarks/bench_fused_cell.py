"""The fused cell (the LSTM cell as the epilogue of each step's product) against
the two passes it replaces, inference A/B in one process.

For each config of DESIGN.md §4 and thread count, times
``clstm.LSTM.run(X, keep_cache=False)`` (float32, one-call forward) with
``clstm._rnn.FUSED_CELL_FORWARD`` on and off, in interleaved rounds (each
round runs both once, for --round-time seconds of calls each), and prints the
median and minimum microseconds per call and the ratio of the medians
(two-pass / fused: above 1 = the fused cell is faster). Checks first that
both give the same output bit for bit. "fused" runs the library's default:
only steps of at most ``_scan.fused_cell_max_rows()`` rows of a sub-batch are
fused (--max-rows overrides it, e.g. a large number: every step).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_fused_cell.py

Re-tune the row threshold (e.g. on an AVX-512 machine): every step fused
against the two passes, over batch sizes of one sub-batch,

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_fused_cell.py \\
        --runs ts-small:1 stream:1 --batch 1 2 4 8 12 16 24 32 --max-rows 1000000

Profile one side with ``--loop SECONDS [--two-pass]``, e.g.

    perf record -g -D 3000 -- python benchmarks/bench_fused_cell.py \\
        --configs ts-small --threads 1 --loop 8
    perf report --no-children
"""

import argparse
import json
import platform
import statistics
import time

from bench_forward_call import CONFIGS   # name: (B, T, I, H, L)
# (config, threads) measured by default
DEFAULT_RUNS = ["ts-small:1", "ts-small:2", "ts-medium:1", "stream:1", "stacked:1"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, metavar="CONFIG:THREADS")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS),
                        help="with --threads: every config at every thread count "
                             "(instead of --runs)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--round-time", type=float, default=0.3,
                        help="seconds of calls per side per round")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--loop", type=float, default=None, metavar="SECONDS",
                        help="only call the forward of the first run for this long "
                             "after a warm-up: a target for perf record")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="batch sizes to time each run at (default: the config's)")
    parser.add_argument("--max-rows", type=int, default=None,
                        help="fuse steps of at most this many rows (default: the "
                             "library's fused_cell_max_rows)")
    parser.add_argument("--two-pass", action="store_true",
                        help="with --loop: the two-pass path instead of the fused cell")
    args = parser.parse_args(argv)
    runs = ([(c, n) for c in args.configs for n in args.threads] if args.configs
            else [(r.split(":")[0], int(r.split(":")[1])) for r in args.runs])

    import numpy as np
    from threadpoolctl import threadpool_info

    import clstm
    import clstm._rnn as rnn
    from clstm import _scan

    if args.max_rows is not None:
        _scan.set_fused_cell_max_rows(args.max_rows)
    blas = [(i["internal_api"], i.get("architecture"), i["num_threads"])
            for i in threadpool_info() if i["user_api"] == "blas"]
    print(f"# {platform.processor() or platform.machine()}, BLAS {blas}, "
          f"fused cell width {_scan.fused_cell_width()}, "
          f"max rows {_scan.fused_cell_max_rows()}")

    def network(name, n_threads, batch=None):
        B, T, I, H, L = CONFIGS[name]
        B = batch or B
        X = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
        return clstm.LSTM(I, H, num_layers=L, random_state=0, n_jobs=n_threads), X

    def call(net, X, fused):
        rnn.FUSED_CELL_FORWARD = fused
        try:
            return net.run(X, keep_cache=False)[0]
        finally:
            rnn.FUSED_CELL_FORWARD = True

    if args.loop is not None:
        net, X = network(*runs[0])
        fused = not args.two_pass
        for _ in range(20):
            call(net, X, fused)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.loop:
            call(net, X, fused)
            n += 1
        print(f"{runs[0][0]} {runs[0][1]}t {'fused' if fused else 'two-pass'}: {n} calls, "
              f"{(time.perf_counter() - start) / n * 1e6:.1f} us per call")
        return

    rows = []
    for (name, n_threads), batch in [(run, b) for run in runs for b in args.batch or [None]]:
        net, X = network(name, n_threads, batch)
        assert np.array_equal(call(net, X, True), call(net, X, False)), "paths differ"
        times = {True: [], False: []}
        for _ in range(args.rounds):
            for fused in (True, False):
                n, start = 0, time.perf_counter()
                while True:
                    call(net, X, fused)
                    n += 1
                    elapsed = time.perf_counter() - start
                    if elapsed >= args.round_time:
                        break
                times[fused].append(elapsed / n * 1e6)
        row = {"config": name, "threads": n_threads, "batch": X.shape[0]}
        for fused, label in ((True, "fused"), (False, "two_pass")):
            row[label + "_median_us"] = statistics.median(times[fused])
            row[label + "_min_us"] = min(times[fused])
        row["ratio"] = row["two_pass_median_us"] / row["fused_median_us"]
        rows.append(row)
        print(f"{name:10s} B={X.shape[0]:<3d} {n_threads}t  fused median {row['fused_median_us']:9.1f} us "
              f"min {row['fused_min_us']:9.1f} | two-pass median "
              f"{row['two_pass_median_us']:9.1f} us min {row['two_pass_min_us']:9.1f} | "
              f"two-pass / fused {row['ratio']:.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"blas": blas, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
