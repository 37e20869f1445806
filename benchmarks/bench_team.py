"""Batch-1 inference on one thread against a team splitting each step by units.

A single sequence has no rows to give a second thread, so ``LSTM.run`` at
``n_jobs`` > 1 splits each step's unit groups across a team of threads
(``_threads.h``'s ``clstm_team``) where the step has enough work
(``clstm._scan.team_min_work``). For each (I, H, T) this times
``run(X, keep_cache=False)`` on a (1, T, I) float32 batch at ``n_jobs=1`` and
at ``--threads`` in interleaved rounds (the team forced on with
``--force``, else as the default thresholds decide) and reports microseconds
per step (median and minimum over rounds) and the ratio of the minima.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_team.py \\
        --threads 2 --force --rounds 15
"""

import argparse
import json
import statistics
import time

import numpy as np

import clstm
from clstm import _scan

SHAPES = [(16, 32, 500), (1, 50, 500), (16, 48, 500), (16, 64, 200), (16, 64, 1000),
          (16, 96, 500), (16, 128, 500), (64, 256, 200)]       # (I, H, T)


def _per_step_us(net, X, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        net.run(X, keep_cache=False)
    return (time.perf_counter() - t0) / calls * 1e6 / X.shape[1]


def measure(shape, threads, rounds, calls):
    I, H, T = shape
    X = np.random.default_rng(0).standard_normal((1, T, I)).astype(np.float32)
    nets = {n: clstm.LSTM(I, H, dtype="float32", random_state=0, n_jobs=n)
            for n in (1, threads)}
    for net in nets.values():
        _per_step_us(net, X, calls)                     # plans, packed weights, warm caches
    times = {n: [] for n in nets}
    for _ in range(rounds):
        for n, net in nets.items():
            times[n].append(_per_step_us(net, X, calls))
    team = nets[threads]._inference_ws.chunk(0).sets["network_plan"][2].team_threads(threads)
    row = {"I": I, "H": H, "T": T, "team": team}
    for n, ts in times.items():
        row[f"{n}t_median_us"] = statistics.median(ts)
        row[f"{n}t_min_us"] = min(ts)
    row["speedup_min"] = row["1t_min_us"] / row[f"{threads}t_min_us"]
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--calls", type=int, default=20, help="calls per round and variant")
    ap.add_argument("--force", action="store_true",
                    help="a team at every shape (team_min_work 0)")
    ap.add_argument("--shapes", type=str, default=None,
                    help="I,H,T;I,H,T;... instead of the default sweep")
    ap.add_argument("--json", type=str, default=None, help="write the rows here")
    args = ap.parse_args(argv)
    shapes = SHAPES if args.shapes is None else [
        tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    previous = _scan.set_team_min_work(0) if args.force else None
    rows = []
    try:
        for shape in shapes:
            row = measure(shape, args.threads, args.rounds, args.calls)
            rows.append(row)
            n = args.threads
            print(f"I={row['I']:4d} H={row['H']:4d} T={row['T']:5d} team={row['team']}: "
                  f"us/step 1t {row['1t_median_us']:.3f} ({row['1t_min_us']:.3f})  "
                  f"{n}t {row[f'{n}t_median_us']:.3f} ({row[f'{n}t_min_us']:.3f})  "
                  f"speedup (minima) {row['speedup_min']:.2f}", flush=True)
    finally:
        if previous is not None:
            _scan.set_team_min_work(previous)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "force": args.force, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
