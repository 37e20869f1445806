"""What the fixed training split costs on one thread: a training step (forward +
backward) of a batch in one part against the same batch in its fixed parts
(clstm._parallel.fixed_part_count), alternating every step in one process so
both see the same machine load. Prints medians, minima and the median of the
paired ratios (parts / one part; above 1: the split costs).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=1 \\
        PYTHONPATH=src python benchmarks/fixed_parts_cost.py ts-medium stacked nlp-large
"""

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import clstm
import clstm._parallel as parallel

# name -> (batch, steps, inputs, hidden, layers), as in benchmarks/run.py
CONFIGS = {"ts-small": (32, 50, 1, 50, 1), "ts-medium": (64, 100, 8, 128, 1),
           "nlp-large": (64, 100, 256, 512, 1), "stacked": (32, 100, 16, 128, 2)}
ONE_PART = 10 ** 9          # ROWS_PER_FIXED_PART that keeps any batch whole


def measure(name, pairs):
    B, T, I, H, L = CONFIGS[name]
    net = clstm.LSTM(I, H, num_layers=L, random_state=0, n_jobs=1).train()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, T, I)).astype(np.float32)
    g = rng.standard_normal((B, T, H)).astype(np.float32)
    default = parallel.ROWS_PER_FIXED_PART
    times = {"whole": [], "parts": []}
    n_parts = None
    try:
        for i in range(pairs + 2):                      # the first two pairs warm up
            order = ("whole", "parts") if i % 2 else ("parts", "whole")
            for which in order:
                parallel.ROWS_PER_FIXED_PART = ONE_PART if which == "whole" else default
                t0 = time.perf_counter()
                net.forward(X)
                net.backward(g)
                if i >= 2:
                    times[which].append(time.perf_counter() - t0)
                if which == "parts":
                    n_parts = len(net._cache["chunks"])
    finally:
        parallel.ROWS_PER_FIXED_PART = default
    whole, parts = np.array(times["whole"]), np.array(times["parts"])
    print(f"{name:<10} parts={n_parts}  one part: median {np.median(whole) * 1e3:8.2f} ms "
          f"min {whole.min() * 1e3:8.2f} | parts: median {np.median(parts) * 1e3:8.2f} ms "
          f"min {parts.min() * 1e3:8.2f} | ratio medians {np.median(parts) / np.median(whole):.3f}"
          f" minima {parts.min() / whole.min():.3f} paired {np.median(parts / whole):.3f}",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=["ts-medium", "stacked", "nlp-large"],
                        choices=sorted(CONFIGS))
    parser.add_argument("--pairs", type=int, default=0,
                        help="timed pairs per config (default: 120, 16 for nlp-large)")
    args = parser.parse_args()
    with threadpool_limits(limits=1):
        for name in args.configs:
            measure(name, args.pairs or (16 if name == "nlp-large" else 120))


if __name__ == "__main__":
    main()
