"""How close each missed target is to what this machine allows.

For every LSTM target of ``results.json`` that the run missed, compares the
time clstm would need (best-peer time / target) with a floor that clstm
cannot go below on this machine with its present cell kernels:

* the GEMM FLOPs of the task (``common.Config.flops``) at the best GEMM rate
  measured in the same run (``flop_bound_ms``: the best repetition of the best
  GEMM among SciPy's, NumPy's, PyTorch's and clstm's own kernel, at that thread
  count), plus
* the cell's elementwise work (activations and state updates; forward, and
  for training also backward) at the rate clstm's cell kernels reach on data
  in cache, measured here on one thread (``cell_ms``), split ideally across
  the threads.

Neither part counts what a real run also needs (copies, packing, Python,
thread start-up, per-step synchronisation when one sequence is split across
threads), so the floor is optimistic: a target whose need is below it is out
of reach, one whose need is above it may still be.

The peers' times are taken two ways: the run's medians (what the ratio
tables use) and their minima (the run's least disturbed repetition, the
noise-free comparison). A floor above the required time means the target
needs GEMMs faster than the best one measured on the machine, or a cell
faster than clstm's, by at least the margin shown; a floor below it means
the target is reachable in principle and the gap is the rest of clstm's time
(layout, Python, packing, threads), which the profiles in analysis.md break
down.

The best rate of a large product says little about a step's 32 x 50 x 200
one, so ``--shapes`` adds a second floor: one thread's share of the task's
products (``task_gemms``), each timed alone at its own shape on the fastest
kernel at hand (``shape_gemm_ms``), plus the same cell part. Timed alone, a
product does not keep a batch-1 weight partly in L1 from one step to the
next as clstm's scan does, so at batch 1 this floor can exceed clstm's own
time (``batch1_floor.py`` measures that step as the scan runs it).

    python benchmarks/bounds.py                  # reads benchmarks/results.json
    python benchmarks/bounds.py --markdown       # the table for RESULTS.md
    python benchmarks/bounds.py --shapes         # and the floor at the tasks' shapes
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CONFIGS  # noqa: E402


def _best_time(fn, seconds=0.3, repeats=5):
    best = float("inf")
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds / repeats:
                break
        best = min(best, elapsed / n)
    return best


def cell_ms(cfg, backward):
    """Milliseconds of the LSTM cell's elementwise work over a whole sequence
    (all layers), one thread, at the rate of clstm's cell kernels on data in
    cache (as in the scan, where a step's gates are still in L1/L2 when the
    cell reads them): the per-row cost is the time difference between a call
    over a block of rows (~256 KiB of gates) and a call over one row, less
    the same difference for the copies the test entry points make, so that
    the call's constant costs cancel."""
    from threadpoolctl import threadpool_limits

    from clstm import _cell
    H = cfg.H
    R = max(2, min(cfg.T * cfg.B, 16384 // H))
    rng = np.random.default_rng(0)
    gates = rng.standard_normal((R, 4 * H)).astype(np.float32)
    c_prev = rng.standard_normal((R, H)).astype(np.float32)
    grad_h = rng.standard_normal((R, H)).astype(np.float32)
    grad_c = rng.standard_normal((R, H)).astype(np.float32)
    act, c, _ = _cell.cell_forward(gates, c_prev)

    def per_row(kernel, copies):
        big = _best_time(lambda: kernel(R)) - _best_time(lambda: copies(R))
        one = _best_time(lambda: kernel(1)) - _best_time(lambda: copies(1))
        return max(big - one, 0.0) / (R - 1)

    with threadpool_limits(1):
        row = per_row(lambda n: _cell.cell_forward(gates[:n], c_prev[:n]),
                      lambda n: (np.array(gates[:n], copy=True), np.empty((n, H), np.float32),
                                 np.empty((n, H), np.float32)))
        if backward:
            row += per_row(
                lambda n: _cell.cell_backward(act[:n], c_prev[:n], c[:n], grad_h[:n], grad_c[:n]),
                lambda n: (np.array(act[:n], copy=True), np.array(grad_c[:n], copy=True),
                           np.zeros((n, H), np.float32)))
    return row * cfg.T * cfg.B * cfg.L * 1e3


def _kernel_time(call, tiny_call):
    """Seconds of one call of ``call`` less the call overhead (the same
    entry point on a 1 x 1 x 1 product), each the best of _best_time."""
    return max(_best_time(call, seconds=0.1) - _best_time(tiny_call, seconds=0.1), 0.0)


def _split(M, N, threads):
    """A product's share of one of `threads` threads: its rows split, or its
    columns where there are fewer rows than threads (batch 1)."""
    if threads == 1:
        return M, N
    if M >= threads:
        return -(-M // threads), N
    return M, -(-N // threads)


def task_gemms(cfg, training, threads=1):
    """The plain LSTM's GEMMs of one batch, as one thread's share of
    `threads` (rows split, or the gate columns at batch 1; the weight
    gradients' gate rows): a list of parts, each a list of alternatives
    (the same products two ways), each a list of (count, M, K, N, kind).

    Per layer, the forward: the input projection of all steps (T B x n_in @
    n_in x G) and the T steps' recurrent products (B x H @ H x G), or the T
    steps' products over [x | h] (B x (n_in + H) @ (n_in + H) x G).
    Training adds the T steps' products back through W_hh (B x G @ G x H),
    the input gradient of every layer above the first (T B x G @ G x n_in;
    the inputs need none, as in every worker) and the weight gradients (G x
    T B @ T B x (n_in + H); kind "wgrad": C = A^T B, A the gate gradients)."""
    G, H, B, TB = 4 * cfg.H, cfg.H, cfg.B, cfg.T * cfg.B

    def gemm(count, M, K, N):
        M, N = _split(M, N, threads)
        return (count, M, K, N, "gemm")

    parts = []
    for layer in range(cfg.L):
        n_in = cfg.I if layer == 0 else H
        hoisted = [gemm(1, TB, n_in, G), gemm(cfg.T, B, H, G)]
        parts.append([hoisted, [gemm(cfg.T, B, n_in + H, G)]])
        if training:
            back = [gemm(cfg.T, B, G, H), (1, -(-G // threads), TB, n_in + H, "wgrad")]
            if layer > 0:
                back.append(gemm(1, TB, G, n_in))
            parts.append([back])
    return parts


def shape_gemm_ms(cfg, training, threads=1):
    """Milliseconds of one thread's share of the task's GEMMs (task_gemms),
    each at the fastest of the kernels at hand for its own shape (measured
    on one thread): clstm's small GEMM on a packed weight (and its
    weight-gradient kernel), NumPy's matmul (its OpenBLAS) and, where
    installed, PyTorch's mm; each call less that entry point's cost for a 1
    x 1 x 1 product; per part the faster way. A floor: it counts no
    synchronisation between the threads. Returns (ms, per product the
    winner and its microseconds)."""
    from threadpoolctl import threadpool_limits

    from clstm import _scan
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    measured = {}

    def mats(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def time_gemm(M, K, N, kind):
        # the product as A @ B into C, and clstm's own kernel on the same operands
        C, C1 = np.zeros((M, N), np.float32), np.zeros((1, 1), np.float32)
        if kind == "wgrad":      # C (M x N) = a^T b, a (K x M), b (K x N)
            a, b, a1, b1 = mats(K, M), mats(K, N), mats(1, 1), mats(1, 1)
            A, B, A1, B1 = a.T, b, a1.T, b1
            own = _kernel_time(lambda: _scan.wgrad_matmul(a, b, C, False),
                               lambda: _scan.wgrad_matmul(a1, b1, C1, False))
        else:                    # C (M x N) = a (M x K) @ w (N x K)^T, w packed
            a, w, a1, w1 = mats(M, K), mats(N, K), mats(1, 1), mats(1, 1)
            A, B, A1, B1 = a, np.ascontiguousarray(w.T), a1, w1
            pk, pk1 = _scan.pack_weight(w, True), _scan.pack_weight(w1, True)
            own = _kernel_time(lambda: _scan.packed_matmul(a, w, True, C, False, pk),
                               lambda: _scan.packed_matmul(a1, w1, True, C1, False, pk1))
        times = {"clstm": own, "numpy": _kernel_time(lambda: np.matmul(A, B, out=C),
                                                     lambda: np.matmul(A1, B1, out=C1))}
        if torch is not None:
            tA, tB, tC, tA1, tB1, tC1 = (torch.from_numpy(m) for m in (A, B, C, A1, B1, C1))
            times["torch"] = _kernel_time(lambda: torch.mm(tA, tB, out=tC),
                                          lambda: torch.mm(tA1, tB1, out=tC1))
        return times

    total, detail = 0.0, []
    with threadpool_limits(1):
        for part in task_gemms(cfg, training, threads):
            ways = []
            for way in part:
                seconds, rows = 0.0, []
                for count, M, K, N, kind in way:
                    if (M, K, N, kind) not in measured:
                        measured[(M, K, N, kind)] = time_gemm(M, K, N, kind)
                    times = measured[(M, K, N, kind)]
                    best = min(times, key=times.get)
                    seconds += count * times[best]
                    rows.append({"count": count, "shape": (M, K, N), "kind": kind,
                                 "best": best, "us": {k: v * 1e6 for k, v in times.items()}})
                ways.append((seconds, rows))
            seconds, rows = min(ways, key=lambda w: w[0])
            total += seconds
            detail += rows
    return total * 1e3, detail


def target_needs(res):
    """(config, task, threads) -> what each target of ``results.json`` asks of
    clstm: the target, the best peer's median / target and its minimum /
    target (ms), with clstm's own minimum; the ratio row under "ratio_row"."""
    mins = {(t["config"], t["task"], t["threads"], t["framework"]): t["min_ms"]
            for t in res["timings"]}
    out = {}
    for e in res["ratios"]:
        if "target" not in e:
            continue
        cfg, task, n = e["config"], e["task"], e["threads"]
        out[(cfg, task, n)] = {
            "target": e["target"], "need_median_ms": e["best_peer_ms"] / e["target"],
            "need_min_ms": mins[(cfg, task, n, e["best_peer"])] / e["target"],
            "clstm_min_ms": mins[(cfg, task, n, "clstm")], "ratio_row": e}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results.json"))
    p.add_argument("--markdown", action="store_true", help="print only the markdown table")
    p.add_argument("--shapes", action="store_true",
                   help="also a floor with each GEMM at the best rate measured at its own "
                        "shape (shape_gemm_ms: clstm's kernels, NumPy, PyTorch)")
    args = p.parse_args(argv)
    with open(args.results) as f:
        res = json.load(f)
    cells, shapes = {}, {}
    rows = []
    for (name, task, n), need in target_needs(res).items():
        e = need["ratio_row"]
        if e.get("target_met") or "flop_bound_ms" not in e:
            continue
        cfg = CONFIGS[name]
        key = (cfg.name, task == "training")
        if key not in cells:
            cells[key] = cell_ms(cfg, backward=task == "training")
        if args.shapes and (key, n) not in shapes:
            shapes[(key, n)] = shape_gemm_ms(cfg, task == "training", n)
        floor = e["flop_bound_ms"] + cells[key] / n
        row = {"config": cfg.name, "task": task, "threads": n, "target": e["target"],
               "ratio": e["ratio"], "best_peer": e["best_peer"],
               "need_median_ms": need["need_median_ms"], "need_min_ms": need["need_min_ms"],
               "gemm_floor_ms": e["flop_bound_ms"], "cell_floor_ms": cells[key] / n,
               "floor_ms": floor, "clstm_min_ms": need["clstm_min_ms"]}
        if args.shapes:     # one thread's share of the GEMMs at their shapes' best rate
            row["shape_gemm_ms"], row["shape_gemms"] = shapes[(key, n)]
            row["shape_floor_ms"] = row["shape_gemm_ms"] + row["cell_floor_ms"]
        rows.append(row)
    extra = (" floor at the task's shapes: GEMMs + cell ms | its floor / need (min) |"
             if args.shapes else "")
    lines = ["| config | task | threads | ratio [target] | needs (peer median / min) ms "
             "| floor: GEMM + cell ms | floor / need (min) |" + extra + " clstm min ms |",
             "|---|---|---|---|---|---|---|" + ("---|---|" if args.shapes else "") + "---|"]
    for r in rows:
        shape_cols = (f" {r['shape_gemm_ms']:.3g} + {r['cell_floor_ms']:.3g} = "
                      f"{r['shape_floor_ms']:.3g} | {r['shape_floor_ms'] / r['need_min_ms']:.2f} |"
                      if args.shapes else "")
        lines.append(
            f"| {r['config']} | {r['task']} | {r['threads']} | {r['ratio']:.2f} [{r['target']}] "
            f"| {r['need_median_ms']:.3g} / {r['need_min_ms']:.3g} "
            f"| {r['gemm_floor_ms']:.3g} + {r['cell_floor_ms']:.3g} = {r['floor_ms']:.3g} "
            f"| {r['floor_ms'] / r['need_min_ms']:.2f} |{shape_cols} {r['clstm_min_ms']:.3g} |")
    print("\n".join(lines))
    if args.shapes and not args.markdown:
        for r in rows:
            print(f"\n{r['config']} {r['task']} {r['threads']}t: one thread's share of the "
                  "GEMMs, the faster way of each part (us a call)")
            for g in r["shape_gemms"]:
                us = ", ".join(f"{k} {v:.2f}" for k, v in sorted(g["us"].items()))
                print(f"  {g['count']} x {g['kind']} {g['shape']}: {us} -> {g['best']}")
    if not args.markdown:
        print()
        print("floor / need >= 1: the target asks for more than this machine's best GEMM and "
              "clstm's cell kernels allow (against the peer's least disturbed time)")
        print(json.dumps({"median_of_floor_over_need": statistics.median(
            r["floor_ms"] / r["need_min_ms"] for r in rows) if rows else None}))


if __name__ == "__main__":
    main()
