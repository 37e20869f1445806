"""One C call per forward against the per-layer path it replaced, A/B in one process.

For each config (the five of DESIGN.md §4) and each thread count, times an
inference forward, ``clstm.LSTM.run(X, keep_cache=False)`` (float32; split by
the thread count, as ``predict`` does; ``forward`` keeps a cache and splits
training's way, by the shape alone), with

* ``one-call``: ``_scan.NetworkPlan``: every sub-batch through every layer
  and direction in one compiled call, sub-batches on POSIX threads;
* ``per-layer``: one compiled call per layer direction, sub-batches on Python
  threads (``clstm._rnn.ONE_CALL_FORWARD = False``),

each at the automatic thread split (``_useful_threads``) and, with
``--force-split``, at a forced split of the batch into n_threads parts, in
interleaved rounds (each round runs every variant once), and reports the
median and minimum microseconds per call. Checks first that both paths give
the same output bit for bit.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_forward_call.py \\
        --threads 1 2 --force-split --rounds 7

Profile what is left (Python vs kernels) with ``--loop``, e.g.

    perf record -D 3000 -o ts-small.data -- python benchmarks/bench_forward_call.py \\
        --configs ts-small --threads 1 --loop 8
    perf report -i ts-small.data --sort dso,symbol
"""

import argparse
import json
import platform
import statistics
import time

CONFIGS = {          # name: (B, T, I, H, L)
    "ts-small": (32, 50, 1, 50, 1),
    "ts-medium": (64, 100, 8, 128, 1),
    "nlp-large": (64, 100, 256, 512, 1),
    "stream": (1, 200, 16, 64, 1),
    "stacked": (32, 100, 16, 128, 2),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--round-time", type=float, default=0.3,
                        help="seconds of calls per variant per round")
    parser.add_argument("--force-split", action="store_true",
                        help="also time a split into n_threads sub-batches whatever the size")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--loop", type=float, default=None, metavar="SECONDS",
                        help="only call forward (one-call path, first config and thread "
                             "count) for this long after a warm-up: a target for perf record")
    args = parser.parse_args(argv)

    import numpy as np
    from threadpoolctl import threadpool_info

    import clstm
    import clstm._rnn as rnn

    blas = [(i["internal_api"], i.get("architecture"), i["num_threads"])
            for i in threadpool_info() if i["user_api"] == "blas"]
    print(f"# {platform.processor() or platform.machine()}, BLAS {blas}")
    if args.loop is not None:
        B, T, I, H, L = CONFIGS[args.configs[0]]
        X = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
        net = clstm.LSTM(I, H, num_layers=L, random_state=0, n_jobs=args.threads[0])
        for _ in range(20):
            net.run(X, keep_cache=False)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.loop:
            net.run(X, keep_cache=False)
            n += 1
        print(f"{args.configs[0]} {args.threads[0]}t: {n} calls, "
              f"{(time.perf_counter() - start) / n * 1e6:.1f} us per call")
        return
    rows = []
    saved = rnn.MIN_WORK_PER_C_THREAD
    for name in args.configs:
        B, T, I, H, L = CONFIGS[name]
        X = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
        net = clstm.LSTM(I, H, num_layers=L, random_state=0)
        # (path, n_threads, split): interleaved in every round
        variants = [(path, n, "auto") for n in args.threads for path in ("one-call", "per-layer")]
        if args.force_split:
            variants += [(path, n, "forced") for n in args.threads if n > 1
                         for path in ("one-call", "per-layer")]

        def call(variant):
            path, n_threads, split = variant
            net.n_jobs = n_threads
            rnn.ONE_CALL_FORWARD = path == "one-call"
            rnn.MIN_WORK_PER_C_THREAD = 0 if split == "forced" else saved
            try:
                return net.run(X, keep_cache=False)[0]
            finally:
                rnn.ONE_CALL_FORWARD = True
                rnn.MIN_WORK_PER_C_THREAD = saved

        ref = call(variants[0]).copy()
        assert all(np.array_equal(call(v), ref) for v in variants), "paths differ"
        times = {v: [] for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                n, start = 0, time.perf_counter()
                while True:
                    call(v)
                    n += 1
                    elapsed = time.perf_counter() - start
                    if elapsed >= args.round_time:
                        break
                times[v].append(elapsed / n * 1e6)
        for (path, n_threads, split), ts in times.items():
            row = {"config": name, "threads": n_threads, "path": path, "split": split,
                   "median_us": statistics.median(ts), "min_us": min(ts)}
            rows.append(row)
            print(f"{name:10s} {n_threads}t {path:9s} {split:6s} "
                  f"median {row['median_us']:10.1f} us  min {row['min_us']:10.1f} us",
                  flush=True)
        for n_threads in args.threads:
            old = statistics.median(times[("per-layer", n_threads, "auto")])
            new = statistics.median(times[("one-call", n_threads, "auto")])
            print(f"{name:10s} {n_threads}t per-layer / one-call (auto split, medians): "
                  f"{old / new:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"blas": blas, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
