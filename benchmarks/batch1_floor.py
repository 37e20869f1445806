"""The floor of a batch-1 (stream) step on this machine, measured in C.

``bounds.py`` puts a floor under each target from the task's FLOPs at the best
GEMM rate. At batch 1 that floor is too low: a step multiplies one row by the
whole recurrent weight (I=16, H=64: 80 x 256 floats, 80 KB), more than a core's
L1 holds, so every step streams it from L2, and a team that splits the step
across cores pays a hand-over per step. This script measures both with clstm's
own kernels, outside Python: it compiles a small C program against
``src/clstm/_packed_gemm.h`` and ``_threads.h`` (needs gcc) and times

* the small GEMM at one row for the stream config's products: the forward's
  ``[x_t | h] @ [W_ih | W_hh]^T`` (K = I + H, N = 4H), the backward's
  ``grad_gates @ W_hh`` (K = 4H, N = H), and a member's half of each
  (N / 2 columns);
* one team step of two threads with empty slices (``clstm_team_step``: the
  publish, the hand-over and the wait for the other member);
* the fused inference step as the scan runs it at batch 1 (the hoisted mode:
  ``h @ W_hh^T`` on top of the input projection, the cell as the product's
  epilogue, each step reading the last one's h), over all unit groups and
  over half of them (a two-thread team member's share, whose weights fit L1:
  twice its time against the whole step's is what L1 misses cost);
* the weight-gradient product of the whole sequence (4H x T x (I + H)) with
  SciPy's ``sgemm``, the BLAS clstm calls for it.

and takes the cell's time from ``bounds.py`` and one compiled Adam step over
the config's parameters. From these it prints the floor of the stream config's
inference and training (the step's products, at 2 threads one hand-over per
step each way; for training also the weight gradients, the cell and the
optimizer step; no copies, no packing, no Python, so still optimistic)
against the time each target asks for, from a results.json of ``run.py``:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/batch1_floor.py \\
        [--results benchmarks/results.json] [--json out.json]
"""

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, os.pardir, "src", "clstm")
sys.path.insert(0, HERE)
from common import Config, run_c_program  # noqa: E402

C_PROGRAM = r"""
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <time.h>
typedef ptrdiff_t Py_ssize_t;
#include "_packed_gemm.h"
#include "_fused_cell.h"
#include "_threads.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* best of 7 rounds of `reps` one-row products, each reading the last one's
 * output (as a step reads the previous step's h), odd ones taking the panels
 * right to left (as the scan's odd steps: the panels read last are still in
 * L1); `split`: on clstm_packed_row_split, as the backward's grad_h of a
 * batch of one row (k in two halves, descending on odd steps) */
static double gemm_row_us(int K, int N, int reps, int split)
{
    float *w = malloc(sizeof(float) * K * N), *a = malloc(sizeof(float) * K);
    float *packed = aligned_alloc(64, sizeof(float) * (clstm_packed_size(K, N) + 16));
    float *c = calloc(N + 16, sizeof(float));
    double best = 1e9;
    for (int i = 0; i < K * N; i++) w[i] = sinf(0.37f * i) * 0.1f;
    for (int k = 0; k < K; k++) a[k] = cosf(0.11f * k);
    clstm_pack_b(K, N, w, N, 0, packed);
    for (int round = 0; round < 7; round++) {
        double t0 = now();
        for (int r = 0; r < reps; r++) {
            if (split)
                clstm_packed_row_split(K, a, N, packed, c, 0, r & 1);
            else
                clstm_packed_gemm(1, K, N, a, K, packed, c, N, 0, r & 1);
            a[r % K] = c[r % N] * 1e-3f;
        }
        double dt = (now() - t0) / reps;
        if (dt < best) best = dt;
    }
    free(w); free(a); free(packed); free(c);
    return best * 1e6;
}

/* best of 7 rounds of the input projection of a whole sequence, T rows x
 * K inputs -> N gate columns in one small GEMM (the hoisted mode) */
static double projection_us(int T, int K, int N, int reps)
{
    float *w = malloc(sizeof(float) * K * N), *a = malloc(sizeof(float) * T * K);
    float *packed = aligned_alloc(64, sizeof(float) * (clstm_packed_size(K, N) + 16));
    float *c = calloc((size_t)T * N + 16, sizeof(float));
    double best = 1e9;
    for (int i = 0; i < K * N; i++) w[i] = sinf(0.37f * i) * 0.1f;
    for (int i = 0; i < T * K; i++) a[i] = cosf(0.11f * i);
    clstm_pack_b(K, N, w, N, 0, packed);
    for (int round = 0; round < 7; round++) {
        double t0 = now();
        for (int r = 0; r < reps; r++) {
            clstm_packed_gemm(T, K, N, a, K, packed, c, N, 0, 0);
            a[r % (T * K)] += c[r % N] * 1e-6f;
        }
        double dt = (now() - t0) / reps;
        if (dt < best) best = dt;
    }
    free(w); free(a); free(packed); free(c);
    return best * 1e6;
}

/* best of 7 rounds of `rounds` inference scans of T steps as the scan runs
 * them at batch 1 in the hoisted mode (clstm_fused_lstm_step: h @ W_hh^T on
 * top of the input projection, the cell as its epilogue, each step reading
 * the last one's h and c, groups in alternating order), over the unit groups
 * [0, groups / share): share 1, the whole step (the H x 4H weight: 64 KB at
 * H = 64, more than L1); 2, a two-thread team member's half (32 KB) */
static double fused_scan_us(int H, int T, int rounds, int share)
{
    const int G = 4 * H;
    float *w = malloc(sizeof(float) * G * H), *bias = malloc(sizeof(float) * G);
    float *packed = aligned_alloc(64, sizeof(float) * (clstm_fused_size(H, H, 4, 0) + 16));
    float *pre = aligned_alloc(64, sizeof(float) * ((size_t)T * G + 16));
    float *h = aligned_alloc(64, sizeof(float) * ((size_t)(T + 1) * H + 16));
    float *c = aligned_alloc(64, sizeof(float) * ((size_t)(T + 1) * H + 16));
    const ptrdiff_t groups = (H + clstm_fused_width() - 1) / clstm_fused_width();
    double best = 1e9;
    for (int i = 0; i < G * H; i++) w[i] = sinf(0.37f * i) * 0.15f;
    for (int i = 0; i < G; i++) bias[i] = 0.01f * (i % 7);
    for (int i = 0; i < T * G; i++) pre[i] = sinf(0.013f * i);
    clstm_pack_fused(0, NULL, H, w, H, 4, bias, NULL, packed);
    memset(h, 0, sizeof(float) * H);
    memset(c, 0, sizeof(float) * H);
    for (int round = 0; round < 7; round++) {
        double t0 = now();
        for (int r = 0; r < rounds; r++)
            for (int t = 0; t < T; t++)
                clstm_fused_lstm_step(0, 1, 0, h + t * H, H, H, h + t * H, H, H, packed,
                                      pre + t * G, G, c + t * H, H, c + (t + 1) * H, H,
                                      h + (t + 1) * H, H, 0, groups / share, t & 1);
        double dt = (now() - t0) / ((double)rounds * T);
        if (dt < best) best = dt;
    }
    free(w); free(bias); free(packed); free(pre); free(h); free(c);
    return best * 1e6;
}

static void empty_slice(const void *ctx, Py_ssize_t k, Py_ssize_t n)
{
    (void)ctx; (void)k; (void)n;
}

static void *serve(void *team)
{
    clstm_team_serve((clstm_team *)team);
    return NULL;
}

/* one two-member team step with empty slices, best of 7 rounds */
static double team_step_us(int steps)
{
    double best = 1e9;
    char ctx[8] = {0};
    for (int round = 0; round < 7; round++) {
        clstm_team team;
        pthread_t helper;
        clstm_team_init(&team, 2);
        clstm_team_set_mode(2);     /* (never alone: its probe would judge empty slices alone) */
        pthread_create(&helper, NULL, serve, &team);
        while (__atomic_load_n(&team.arrived.v, __ATOMIC_ACQUIRE) < 1)
            sched_yield();
        for (int s = 0; s < 100; s++)                 /* the helper joins, warms up */
            clstm_team_step(&team, empty_slice, ctx, sizeof ctx, 0);
        clstm_team_sync(&team);
        double t0 = now();
        for (int s = 0; s < steps; s++)
            clstm_team_step(&team, empty_slice, ctx, sizeof ctx, 0);
        clstm_team_sync(&team);
        double dt = (now() - t0) / steps;
        clstm_team_leave(&team);
        pthread_join(helper, NULL);
        if (dt < best) best = dt;
    }
    return best * 1e6;
}

int main(int argc, char **argv)
{
    int I = atoi(argv[1]), H = atoi(argv[2]), reps = atoi(argv[3]), T = atoi(argv[4]);
    int G = 4 * H;
    printf("{\"forward_us\": %.5f, \"forward_half_us\": %.5f, "
           "\"recurrent_us\": %.5f, \"recurrent_half_us\": %.5f, "
           "\"projection_us\": %.5f, "
           "\"backward_us\": %.5f, \"backward_half_us\": %.5f, "
           "\"team_step_us\": %.5f, \"fused_step_us\": %.5f, \"fused_half_step_us\": %.5f}\n",
           gemm_row_us(I + H, G, reps, 0), gemm_row_us(I + H, G / 2, reps, 0),
           gemm_row_us(H, G, reps, 0), gemm_row_us(H, G / 2, reps, 0),
           projection_us(T, I, G, reps / T + 1),
           gemm_row_us(G, H, reps, 1), gemm_row_us(G, H / 2, reps, 1), team_step_us(reps),
           fused_scan_us(H, T, reps / T + 1, 1), fused_scan_us(H, T, reps / T + 1, 2));
    return 0;
}
"""


def measure_kernels(I, H, reps, T):
    """The C program's timings (microseconds), compiled as setup.py compiles the
    kernels (-O3 -fno-trapping-math; the header picks the ISA at run time)."""
    try:
        out = run_c_program(C_PROGRAM, (I, H, reps, T),
                            ("-O3", "-fno-trapping-math", "-pthread", "-I", SRC, "-lm"))
    except OSError as exc:
        sys.exit(f"batch1_floor.py needs a C compiler to build its timing program: {exc}")
    return json.loads(out)


def weight_gradient_us(G, T, K, rounds=7):
    """SciPy's sgemm for grad_W (G x K) = grad_gates^T (G x T) @ [x | h_prev] (T x K),
    the product clstm runs once per backward (best of `rounds`)."""
    from scipy.linalg.blas import sgemm
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((T, G)).astype(np.float32))
    b = np.asfortranarray(rng.standard_normal((T, K)).astype(np.float32))
    best = float("inf")
    with threadpool_limits(1):
        for _ in range(rounds):
            reps = 200
            t0 = time.perf_counter()
            for _ in range(reps):
                sgemm(1.0, a, b, trans_a=True)
            best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1e6


def adam_us(n_params, rounds=7):
    """One compiled Adam step (clstm.optimizers' loop) over n_params float32 entries
    in one flat buffer, the least an optimizer step of the config costs."""
    from clstm._optimizer_steps import adam_step
    p, g, m, v = (np.full(n_params, 0.5, np.float32) for _ in range(4))
    best = float("inf")
    for _ in range(rounds):
        reps = 500
        t0 = time.perf_counter()
        for _ in range(reps):
            adam_step(p, g, m, v, 0.9, 0.1, 0.999, 0.001, -1e-3, 1e-8)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1e6


def floors(k, T, wgrad_us, cell_ms=(0.0, 0.0), optimizer_us=0.0):
    """Floors (ms) of the stream config's tasks at 1 and 2 threads: the products,
    plus, for training, the weight gradients, the cell (cell_ms: forward only,
    forward and backward, one thread) and the optimizer step, every part that
    is not per-step split ideally across the two threads."""
    # a step's forward product: [x | h] @ [W_ih | W_hh]^T, or h @ W_hh^T after
    # the input projection of all steps (the hoisted mode), whichever is less
    proj = k["projection_us"] / T
    fwd1 = min(k["forward_us"], k["recurrent_us"] + proj)
    fwd2 = min(k["forward_half_us"], k["recurrent_half_us"] + proj / 2) + k["team_step_us"]
    bwd1 = k["backward_us"]
    bwd2 = k["backward_half_us"] + k["team_step_us"]
    cell_inf, cell_train = cell_ms
    return {
        ("inference", 1): T * fwd1 / 1e3 + cell_inf,
        ("inference", 2): T * min(fwd1, fwd2) / 1e3 + cell_inf / 2,
        ("training", 1): (T * (fwd1 + bwd1) + wgrad_us + optimizer_us) / 1e3 + cell_train,
        ("training", 2): ((T * (min(fwd1, fwd2) + min(bwd1, bwd2)) + (wgrad_us + optimizer_us) / 2)
                          / 1e3 + cell_train / 2),
    }


def needs(results_path, config):
    """(task, threads) -> what each target of `config` asks of clstm (bounds.py's
    target_needs: the best peer's median / target and minimum / target, ms)."""
    from bounds import target_needs
    with open(results_path) as f:
        res = json.load(f)
    return {(task, n): need for (c, task, n), need in target_needs(res).items() if c == config}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=os.path.join(HERE, "results.json"))
    ap.add_argument("--I", type=int, default=16)
    ap.add_argument("--H", type=int, default=64)
    ap.add_argument("--T", type=int, default=200)
    ap.add_argument("--reps", type=int, default=20000)
    ap.add_argument("--json", help="also write the measurements and floors here")
    args = ap.parse_args(argv)
    k = measure_kernels(args.I, args.H, args.reps, args.T)
    G, K = 4 * args.H, args.I + args.H
    wgrad = weight_gradient_us(G, args.T, K)
    from bounds import cell_ms
    cfg = Config("stream", 1, args.T, args.I, args.H)
    cells = (cell_ms(cfg, backward=False), cell_ms(cfg, backward=True))
    n_params = G * (K + 2) + args.H + 1            # the LSTM and the Dense(1) head
    opt = adam_us(n_params)
    fl = floors(k, args.T, wgrad, cells, opt)
    print(f"batch 1, I={args.I}, H={args.H}, T={args.T} (float32, one row a step)")
    print(f"  forward product  {K} x {G}: {k['forward_us']:.3f} us a step "
          f"({4 * K * G / k['forward_us'] / 1e3:.1f} GB/s of weights from L2); half the "
          f"columns {k['forward_half_us']:.3f} us")
    print(f"  hoisted: recurrent product {args.H} x {G} {k['recurrent_us']:.3f} us a step, "
          f"half the columns {k['recurrent_half_us']:.3f}; the input projection "
          f"{args.T} x {args.I} x {G} {k['projection_us']:.2f} us a sequence")
    print(f"  backward product {G} x {args.H}: {k['backward_us']:.3f} us a step; half the "
          f"columns {k['backward_half_us']:.3f} us")
    print(f"  team step (2 threads, empty slices): {k['team_step_us']:.3f} us")
    print(f"  the fused inference step (hoisted; products and cell, each step reading the "
          f"last): {k['fused_step_us']:.3f} us, over half the unit groups "
          f"{k['fused_half_step_us']:.3f} us ({4 * args.H * args.H * 4 // 1024} KB of "
          f"weights, half: {2 * args.H * args.H * 4 // 1024} KB)")
    print(f"  weight gradients (SciPy sgemm, {G} x {args.T} x {K}): {wgrad:.1f} us a backward")
    print(f"  the cell over the sequence (bounds.py's cell_ms): {cells[0] * 1e3:.1f} us forward, "
          f"{cells[1] * 1e3:.1f} us forward and backward; Adam over {n_params} entries: "
          f"{opt:.1f} us")
    rows = []
    try:
        peers = needs(args.results, "stream")
    except (OSError, ValueError):
        peers = {}
    print("\n| task | threads | floor ms | needs (peer median / min) ms [target] | "
          "floor / need (min) | clstm min ms |")
    print("|---|---|---|---|---|---|")
    for (task, n), floor in fl.items():
        row = {k: v for k, v in peers.get((task, n), {}).items() if k != "ratio_row"}
        row.update(task=task, threads=n, floor_ms=floor)
        rows.append(row)
        if "need_min_ms" in row:
            print(f"| {task} | {n} | {floor:.3f} | {row['need_median_ms']:.3f} / "
                  f"{row['need_min_ms']:.3f} [{row['target']}] | "
                  f"{floor / row['need_min_ms']:.2f} | {row['clstm_min_ms']:.3f} |")
        else:
            print(f"| {task} | {n} | {floor:.3f} | - | - | - |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"kernels_us": k, "weight_gradient_us": wgrad, "cell_ms": cells,
                       "adam_us": opt,
                       "shape": {"I": args.I, "H": args.H, "T": args.T}, "floors": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()
