"""Throughput of concurrent predict calls: does the GIL-free forward scale with cores?

N Python threads each call ``LSTMRegressor.predict`` (each call single-threaded,
n_jobs=1) on its own batch for a fixed time; we report predictions per second
for N = 1, 2, ... and the speedup over N = 1, after checking that every
concurrent result equals the serial one bit for bit.

    python benchmarks/predict_scaling.py --threads 1 2 --seconds 3
"""

import argparse
import json
import os
import platform
import threading
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=50)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    from clstm import LSTMRegressor

    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, args.steps, 1)).astype(np.float32)
    y = X[:, -5:, 0].sum(axis=1)
    reg = LSTMRegressor(hidden_size=args.hidden, max_iter=1, random_state=0, n_jobs=1).fit(X, y)
    batches = [rng.standard_normal((args.batch, args.steps, 1)).astype(np.float32)
               for _ in range(max(args.threads))]
    serial = [reg.predict(b) for b in batches]

    rows = []
    for n in args.threads:
        counts = [0] * n
        mismatches = [0] * n
        stop = time.perf_counter() + args.seconds
        barrier = threading.Barrier(n)

        def work(k):
            barrier.wait()
            while time.perf_counter() < stop:
                if not np.array_equal(reg.predict(batches[k]), serial[k]):
                    mismatches[k] += 1
                counts[k] += 1

        threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        rate = sum(counts) * args.batch / elapsed
        rows.append({"threads": n, "sequences_per_s": rate, "calls": sum(counts),
                     "mismatches": sum(mismatches)})
    base = rows[0]["sequences_per_s"]
    print(f"predict throughput, batch {args.batch} x T={args.steps}, H={args.hidden}, "
          f"n_jobs=1 per call ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus)")
    print("threads  sequences/s  speedup  calls  mismatches")
    for row in rows:
        print(f"{row['threads']:7d}  {row['sequences_per_s']:11.0f}  "
              f"{row['sequences_per_s'] / base:7.2f}  {row['calls']:5d}  {row['mismatches']:10d}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    if any(row["mismatches"] for row in rows):
        raise SystemExit("concurrent predictions differ from serial ones")
    return rows


if __name__ == "__main__":
    main()
