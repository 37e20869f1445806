"""Estimator ``fit`` against a hand-written PyTorch loop and Keras ``model.fit``.

The two fits of ``workers/fit_bench.py`` (the same code ``run.py``'s "estimator fit"
extra runs): ``forecast`` (230 windows of 20 steps, H=32, 100 epochs) and ``ts-small``
(1,000 sequences of 50 steps, H=50, 10 epochs); one-layer LSTM + Dense(1) on the last h,
MSE, Adam(lr=1e-3), batch 32, shuffled mini-batches, float32. Each (framework, threads)
runs in its own process with every thread pool pinned; rounds are interleaved, so load
from other processes hits all of them alike; medians and minima over every fit.

``--clstm NAME=SRC`` (repeatable) times several clstm source trees side by side, e.g.
a before/after comparison in one command:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_fit.py \\
        --clstm before=/path/to/old/src --clstm after=src

Without it, clstm is whatever ``import clstm`` finds. Ratios are peer time / clstm time
(above 1: clstm faster), against the last ``--clstm`` entry.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "workers"))
WORKER = os.path.join(HERE, "workers", "worker.py")

from common import thread_env  # noqa: E402

# what LSTMRegressor.fit does that the peer loops do not (printed with the table)
CLSTM_EXTRAS = ("clstm's fit also validates X and y, standardises X and y (standardize=True, "
                "undone on predict), checks every mini-batch's loss and gradient for "
                "finiteness, and keeps a per-epoch snapshot for divergence recovery; "
                "alpha=0 and clip_norm=None make its model and update the loops'.")


def blas_in_use(env):
    """The BLAS library clstm's kernels call (SciPy's), as threadpoolctl reports it."""
    code = ("import scipy.linalg.cython_blas, json, threadpoolctl;"
            "print(json.dumps([{k: i.get(k) for k in ('internal_api', 'version', "
            "'architecture', 'filepath')} for i in threadpoolctl.threadpool_info() "
            "if i.get('user_api') == 'blas']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    try:
        return json.loads(out.stdout)
    except ValueError:
        return out.stderr[-300:]


def run_worker(framework, threads, case, reps, src=None):
    env = dict(os.environ)
    env.update(thread_env(threads))
    if src is not None:
        env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, WORKER, "--framework", framework, "--threads", str(threads),
           "fit", "--case", case, "--reps", str(reps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"ok": False, "error": (proc.stderr or proc.stdout)[-1500:]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["forecast", "ts-small"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--frameworks", nargs="+", default=["clstm", "torch", "keras"])
    p.add_argument("--clstm", action="append", default=[], metavar="NAME=SRC",
                   help="a clstm source tree to time (repeatable); default: the installed one")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (processes)")
    p.add_argument("--reps", type=int, default=3, help="fits per process")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)

    variants = [tuple(v.split("=", 1)) for v in args.clstm] or [("clstm", None)]
    rows = []          # (label, framework, src)
    for f in args.frameworks:
        if f == "clstm":
            rows += [(name, "clstm", src) for name, src in variants]
        else:
            rows.append((f, f, None))
    dropped = [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ]
    print(f"python {sys.version.split()[0]}; CPU: {_cpu_model()}; "
          f"unset these for the benchmark: {dropped or 'none were set'}")
    env = dict(os.environ)
    for k in dropped:
        env.pop(k)
    print("BLAS of clstm's kernels:", blas_in_use(env))
    os.environ.clear()
    os.environ.update(env)
    print(CLSTM_EXTRAS)
    times, cpu, info = {}, {}, {}
    for r in range(args.rounds):
        for case in args.cases:
            for n in args.threads:
                for label, f, src in rows:
                    t0 = time.perf_counter()
                    res = run_worker(f, n, case, args.reps, src)
                    key = (case, n, label)
                    if not res.get("ok"):
                        print(f"  {key}: failed: {str(res.get('error'))[-400:]}", flush=True)
                        continue
                    times.setdefault(key, []).extend(res["times_s"])
                    cpu.setdefault(key, []).extend(res["cpu_s"])
                    info[key] = res
                    print(f"  round {r + 1} {case} {n}t {label}: "
                          + " ".join(f"{t:.3f}" for t in res["times_s"])
                          + f" s (final loss {res.get('final_loss'):.4g}; process "
                            f"{time.perf_counter() - t0:.1f} s)", flush=True)
    base_label = variants[-1][0] if "clstm" in args.frameworks else None
    print("\n(wall seconds per fit; CPU: process CPU seconds, all threads; ratios: peer / clstm)"
          "\n| case | threads | who | median s | min s | median CPU s | n | ratio median |"
          " ratio min | ratio CPU |\n|---|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for case in args.cases:
        for n in args.threads:
            base = times.get((case, n, base_label))
            for label, f, _ in rows:
                ts = times.get((case, n, label))
                if not ts:
                    continue
                med, c_med = statistics.median(ts), statistics.median(cpu[(case, n, label)])
                if base and label != base_label:
                    b_cpu = cpu[(case, n, base_label)]
                    ratios = (f"{med / statistics.median(base):.2f} | {min(ts) / min(base):.2f} | "
                              f"{c_med / statistics.median(b_cpu):.2f}")
                else:
                    ratios = "- | - | -"
                summary[f"{case}/{n}/{label}"] = {"median_s": med, "min_s": min(ts),
                                                  "median_cpu_s": c_med, "times_s": ts}
                print(f"| {case} | {n} | {label} ({info[(case, n, label)]['how']}) | "
                      f"{med:.3f} | {min(ts):.3f} | {c_med:.3f} | {len(ts)} | {ratios} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)
    return 0


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
