"""Weight gradients: clstm's kernel (``_scan.wgrad_matmul``, clstm_wgrad in
``_packed_gemm.h``) against SciPy's sgemm, the BLAS the kernels call otherwise.

Two tables, from one process:

1. On one thread, the product alone, C (G x N) += A^T @ B over the M rows of all steps, at
   the weight-gradient shapes of the benchmark configs (for thin inputs one
   product over ``[x | h_prev]``, N = I + H). SciPy's sgemm runs as one call
   (what clstm did without its small-product blocks); the kernel on one
   thread. GFLOP/s of the best of ``--repeats`` calls, rounds alternating.
2. At ``--threads`` threads, a training step of the network (forward + backward, no optimizer) with
   the weight gradients on the kernel and on the BLAS
   (``_scan.set_wgrad_kernel``), alternating in rounds, n_jobs = threads:
   median ms of each and their ratio (below 1: the kernel faster).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_wgrad.py --threads 1
"""

import argparse
import time

import numpy as np

SHAPES = {      # name: (M = T*B, G = 4H, N)
    "forecast [x|h]": (640, 128, 33),
    "ts-small [x|h]": (1600, 200, 51),
    "ts-medium [x|h]": (6400, 512, 136),
    "stream [x|h]": (200, 256, 80),
    "stacked layer 1 [x|h]": (3200, 512, 144),
    "stacked layer 2 x or h": (3200, 512, 128),
    "nlp-large x": (6400, 2048, 256),
    "nlp-large h": (6400, 2048, 512),
}
NETWORKS = {    # name: (B, T, I, H, layers)
    "forecast": (32, 20, 1, 32, 1), "ts-small": (32, 50, 1, 50, 1),
    "ts-medium": (64, 100, 8, 128, 1), "nlp-large": (64, 100, 256, 512, 1),
    "stream": (1, 200, 16, 64, 1), "stacked": (32, 100, 16, 128, 2),
}


def _best(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def products(repeats, rounds):
    from scipy.linalg.blas import sgemm

    from clstm import _scan
    rng = np.random.default_rng(0)
    print("| product (M x G x N) | kernel GFLOP/s | SciPy sgemm GFLOP/s | kernel / sgemm time |")
    print("|---|---|---|---|")
    for name, (M, G, N) in SHAPES.items():
        a = rng.standard_normal((M, G), dtype=np.float32)
        b = rng.standard_normal((M, N), dtype=np.float32)
        c = np.zeros((G, N), np.float32)
        ct = np.zeros((N, G), np.float32, order="F")        # C^T as sgemm's column-major C
        want = a.astype(np.float64).T @ b.astype(np.float64)
        check = np.zeros_like(c)
        _scan.wgrad_matmul(a, b, check, False)
        assert np.abs(check - want).max() < 1e-4 * np.abs(want).max(), name
        # row-major C = A^T B is column-major C^T = B^T A: sgemm(b.T, a.T^T)
        times = {"kernel": float("inf"), "sgemm": float("inf")}
        for _ in range(rounds):
            times["kernel"] = min(times["kernel"], _best(
                lambda: _scan.wgrad_matmul(a, b, c, True), repeats))
            times["sgemm"] = min(times["sgemm"], _best(
                lambda: sgemm(1.0, b.T, a.T, beta=1.0, c=ct, trans_b=1, overwrite_c=1),
                repeats))
        flops = 2 * M * G * N
        print(f"| {name} ({M} x {G} x {N}) | {flops / times['kernel'] / 1e9:.0f} | "
              f"{flops / times['sgemm'] / 1e9:.0f} | {times['kernel'] / times['sgemm']:.2f} |")


def training_steps(threads, rounds, seconds):
    import clstm
    from clstm import _scan
    print(f"\n| network (B, T, I, H, layers), {threads} thread(s) | kernel ms | BLAS ms | "
          "kernel / BLAS |")
    print("|---|---|---|---|")
    saved = _scan.set_wgrad_kernel(True)
    try:
        for name, (B, T, I, H, layers) in NETWORKS.items():
            net = clstm.LSTM(I, H, num_layers=layers, random_state=0, n_jobs=threads)
            X = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)

            def step():
                out, _ = net.forward(X)
                net.backward(np.ones_like(out))
            times = {True: [], False: []}
            for _ in range(rounds):
                for on in (True, False):
                    _scan.set_wgrad_kernel(on)
                    step()
                    end = time.perf_counter() + seconds
                    while time.perf_counter() < end:
                        t0 = time.perf_counter()
                        step()
                        times[on].append(time.perf_counter() - t0)
            k, b = np.median(times[True]) * 1e3, np.median(times[False]) * 1e3
            print(f"| {name} {(B, T, I, H, layers)} | {k:.3f} | {b:.3f} | {k / b:.3f} |")
    finally:
        _scan.set_wgrad_kernel(saved)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="calls per round (products)")
    parser.add_argument("--seconds", type=float, default=0.25,
                        help="per case per round (training steps)")
    parser.add_argument("--skip-products", action="store_true")
    args = parser.parse_args()
    from scipy.linalg import blas  # noqa: F401  (loaded first: threadpoolctl limits loaded BLAS only)
    from threadpoolctl import threadpool_limits

    import clstm  # noqa: F401
    if not args.skip_products:
        with threadpool_limits(limits=1):
            products(args.repeats, args.rounds)
    with threadpool_limits(limits=args.threads):
        training_steps(args.threads, args.rounds, args.seconds)


if __name__ == "__main__":
    main()
