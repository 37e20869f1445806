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

    python benchmarks/bounds.py                  # reads benchmarks/results.json
    python benchmarks/bounds.py --markdown       # the table for RESULTS.md
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
    args = p.parse_args(argv)
    with open(args.results) as f:
        res = json.load(f)
    cells = {}
    rows = []
    for (name, task, n), need in target_needs(res).items():
        e = need["ratio_row"]
        if e.get("target_met") or "flop_bound_ms" not in e:
            continue
        cfg = CONFIGS[name]
        key = (cfg.name, task == "training")
        if key not in cells:
            cells[key] = cell_ms(cfg, backward=task == "training")
        floor = e["flop_bound_ms"] + cells[key] / n
        rows.append({"config": cfg.name, "task": task, "threads": n, "target": e["target"],
                     "ratio": e["ratio"], "best_peer": e["best_peer"],
                     "need_median_ms": need["need_median_ms"], "need_min_ms": need["need_min_ms"],
                     "gemm_floor_ms": e["flop_bound_ms"], "cell_floor_ms": cells[key] / n,
                     "floor_ms": floor, "clstm_min_ms": need["clstm_min_ms"]})
    lines = ["| config | task | threads | ratio [target] | needs (peer median / min) ms "
             "| floor: GEMM + cell ms | floor / need (min) | clstm min ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['task']} | {r['threads']} | {r['ratio']:.2f} [{r['target']}] "
            f"| {r['need_median_ms']:.3g} / {r['need_min_ms']:.3g} "
            f"| {r['gemm_floor_ms']:.3g} + {r['cell_floor_ms']:.3g} = {r['floor_ms']:.3g} "
            f"| {r['floor_ms'] / r['need_min_ms']:.2f} | {r['clstm_min_ms']:.3g} |")
    print("\n".join(lines))
    if not args.markdown:
        print()
        print("floor / need >= 1: the target asks for more than this machine's best GEMM and "
              "clstm's cell kernels allow (against the peer's least disturbed time)")
        print(json.dumps({"median_of_floor_over_need": statistics.median(
            r["floor_ms"] / r["need_min_ms"] for r in rows) if rows else None}))


if __name__ == "__main__":
    main()
