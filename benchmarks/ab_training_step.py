"""A/B timing of one clstm training step (forward + backward) from two source trees.

Each (tree, config, threads) case runs in its own process, the two trees
alternate within every round, and the report gives per-case medians and
minima over rounds and the ratio B/A of both (above 1: B slower). Run it
with the OpenBLAS variables unset, as users run:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/ab_training_step.py \\
        --a /work/main/src --b src --threads 1 2 --rounds 7

Each tree is a directory holding the clstm package with its compiled kernels
(a checkout's ``src``).
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

CONFIGS = {"ts-small": (32, 50, 1, 50), "ts-medium": (64, 100, 8, 128),
           "nlp-large": (64, 100, 256, 512), "stacked": (32, 100, 16, 128, 2)}

# Runs in the child: times `seconds` worth of training steps after a warm-up.
CHILD = r"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
import clstm
B, T, I, H, L = {shape}
n_jobs, seconds = {n_jobs}, {seconds}
with threadpool_limits(limits=n_jobs):
    net = clstm.LSTM(I, H, num_layers=L, random_state=0, n_jobs=n_jobs).train()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, T, I)).astype(np.float32)
    g = rng.standard_normal((B, T, H)).astype(np.float32)
    for _ in range(3):
        net.forward(X); net.backward(g)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        net.forward(X); net.backward(g)
        times.append(time.perf_counter() - t0)
print(json.dumps({{"median": float(np.median(times)), "file": clstm.__file__}}))
"""


def run_case(tree, shape, n_jobs, seconds):
    shape = tuple(shape) + (1,) * (5 - len(shape))
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OMP_NUM_THREADS=str(n_jobs),
               OPENBLAS_NUM_THREADS=str(n_jobs))
    code = CHILD.format(shape=shape, n_jobs=n_jobs, seconds=seconds)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if not result["file"].startswith(os.path.abspath(tree)):
        raise RuntimeError(f"{tree}: imported clstm from {result['file']}")
    return result["median"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="source tree A (the baseline)")
    parser.add_argument("--b", required=True, help="source tree B")
    parser.add_argument("--configs", nargs="+", default=["ts-small", "ts-medium", "nlp-large"],
                        choices=sorted(CONFIGS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per case")
    args = parser.parse_args()
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')!r} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')!r}", flush=True)
    times = {}
    for r in range(args.rounds):
        for name in args.configs:
            for n in args.threads:
                order = ("a", "b") if r % 2 == 0 else ("b", "a")
                for which in order:
                    tree = args.a if which == "a" else args.b
                    t = run_case(tree, CONFIGS[name], n, args.seconds)
                    times.setdefault((name, n, which), []).append(t)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"{'config':<10} {'thr':>3} {'A median ms':>12} {'B median ms':>12} "
          f"{'B/A med':>8} {'A min ms':>9} {'B min ms':>9} {'B/A min':>8}")
    for name in args.configs:
        for n in args.threads:
            a, b = np.array(times[(name, n, "a")]), np.array(times[(name, n, "b")])
            print(f"{name:<10} {n:>3} {np.median(a) * 1e3:>12.2f} {np.median(b) * 1e3:>12.2f} "
                  f"{np.median(b) / np.median(a):>8.3f} {a.min() * 1e3:>9.2f} "
                  f"{b.min() * 1e3:>9.2f} {b.min() / a.min():>8.3f}")


if __name__ == "__main__":
    main()
