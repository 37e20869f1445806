"""Before/after timing of clstm's plain LSTM between two builds of the source.

Each build runs in its own process (PYTHONPATH=<tree>/src), alternating
before/after for several rounds, at one thread count (``--threads``,
default 1: n_jobs and the BLAS threads); the table reports the median over
rounds of each round's median call time. Used to show that a refactor kept
the kernels' speed, or what a kernel change gained, e.g.:

    git worktree add /tmp/before <old commit> && (cd /tmp/before &&
        python setup.py build_ext --inplace)
    python benchmarks/compare_trees.py --before /tmp/before --after . --rounds 5

Inference is a forward without a saved cache; the training step is forward +
backward with a gradient of ones (no head, no optimizer: the network alone).
"""

import argparse
import json
import os
import subprocess
import sys
import time

CONFIGS = {"ts-small": (32, 50, 1, 50, 1), "ts-medium": (64, 100, 8, 128, 1),
           "nlp-large": (64, 100, 256, 512, 1), "stream": (1, 200, 16, 64, 1),
           "stacked": (32, 100, 16, 128, 2)}


def measure(configs, seconds, threads=1):
    """Median ms of inference and training per config, in this process."""
    import numpy as np

    import clstm
    results = {}
    for name in configs:
        B, T, I, H, L = CONFIGS[name]
        net = clstm.LSTM(I, H, num_layers=L, dtype="float32", random_state=0, n_jobs=threads)
        X = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
        if hasattr(net, "run"):
            def infer():
                net.run(X, keep_cache=False)
        else:                                   # builds before the generic interface
            def infer():
                net._forward(X, None, None, None, False, keep_cache=False)

        def train():
            out, _ = net.forward(X)
            net.backward(np.ones_like(out))

        row = {}
        for task, fn in (("inference", infer), ("training", train)):
            fn()
            times, end = [], time.perf_counter() + seconds * (3 if name == "nlp-large" else 1)
            while time.perf_counter() < end or len(times) < 5:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            row[task] = float(np.median(times)) * 1e3
        results[name] = row
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="source tree of the old build")
    p.add_argument("--after", default=".", help="source tree of the new build")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0, help="per case per round")
    p.add_argument("--configs", nargs="*", default=list(CONFIGS))
    p.add_argument("--threads", type=int, default=1, help="n_jobs and BLAS threads")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(args.configs, args.seconds, args.threads)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    runs = {"before": [], "after": []}
    for r in range(args.rounds):
        for label in ("before", "after"):
            tree = os.path.abspath(getattr(args, label))
            env["PYTHONPATH"] = os.path.join(tree, "src")
            out = subprocess.run([sys.executable, __file__, "--before", "-", "--worker", "1",
                                  "--seconds", str(args.seconds), "--threads", str(args.threads),
                                  "--configs", *args.configs],
                                 env=env, check=True, capture_output=True, text=True).stdout
            runs[label].append(json.loads(out.splitlines()[-1]))
            print(f"round {r + 1} {label}: done", file=sys.stderr)
    import numpy as np
    print("| config | task | before ms | after ms | after / before |")
    print("|---|---|---|---|---|")
    for name in args.configs:
        for task in ("inference", "training"):
            a = np.median([run[name][task] for run in runs["before"]])
            b = np.median([run[name][task] for run in runs["after"]])
            print(f"| {name} | {task} | {a:.3g} | {b:.3g} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
