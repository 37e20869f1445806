"""Estimator ``fit`` against a hand-written PyTorch loop and Keras ``model.fit``.

The two fits of ``workers/fit_bench.py`` (the same code ``run.py``'s "estimator fit"
extra runs): ``forecast`` (230 windows of 20 steps, H=32, 100 epochs) and ``ts-small``
(1,000 sequences of 50 steps, H=50, 10 epochs); one-layer LSTM + Dense(1) on the last h,
MSE, Adam(lr=1e-3), batch 32, shuffled mini-batches, float32. Each (framework, threads)
runs in its own warm process with every thread pool pinned (after one warm-up fit:
imports, Keras' tracing); each round fits once with every contender in turn, so a change
of load from other processes hits all of them alike, and the ratio of each round is
paired; medians and minima over the rounds.

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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "workers"))
WORKER = os.path.join(HERE, "workers", "worker.py")

from common import thread_env  # noqa: E402
from fit_bench import HOW  # noqa: E402

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


# A warm process per (framework, source tree): it answers each line on stdin with one
# fit's wall and CPU seconds, so the driver can alternate single fits of every
# contender (paired rounds: a load change hits all of them alike).
SERVER = """
import json, sys, time, warnings
sys.path.insert(0, {workers!r})
import fit_bench
warnings.filterwarnings("ignore")
framework, threads, case = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fit_bench.use_case(case)
X, y = fit_bench.make_data()
fit = {{"clstm": fit_bench._fit_clstm, "torch": fit_bench._fit_torch,
        "keras": fit_bench._fit_keras}}[framework]
out = sys.stdout
sys.stdout = sys.stderr            # what the frameworks print
if framework == "clstm":
    import clstm
    print("clstm from", clstm.__file__, file=sys.stderr)
seed = 0
for line in sys.stdin:
    c0 = time.process_time()
    dt, info = fit(X, y, threads, seed)
    out.write(json.dumps({{"s": dt, "cpu_s": time.process_time() - c0, **info}}) + "\\n")
    out.flush()
    seed += 1
"""


class Contender:
    """One warm process fitting ``case`` with ``framework`` (clstm from ``src``)."""

    def __init__(self, label, framework, threads, case, src=None):
        env = dict(os.environ)
        env.update(thread_env(threads))
        if src is not None:
            env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
        code = SERVER.format(workers=os.path.join(HERE, "workers"))
        self.label, self.how = label, HOW[framework]
        self.log = open(os.devnull, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", code, framework, str(threads), case],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=env)

    def fit(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label}: the fit process died")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["forecast", "ts-small"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--frameworks", nargs="+", default=["clstm", "torch", "keras"])
    p.add_argument("--clstm", action="append", default=[], metavar="NAME=SRC",
                   help="a clstm source tree to time (repeatable); default: the installed one")
    p.add_argument("--rounds", type=int, default=7,
                   help="rounds; each fits once with every contender, in turn")
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
    print(f"python {sys.version.split()[0]}; CPU: {_cpu_model()}; OPENBLAS_CORETYPE and "
          f"OPENBLAS_L2_SIZE unset for the fits (set in the calling environment: "
          f"{dropped or 'neither'})")
    env = dict(os.environ)
    for k in dropped:
        env.pop(k)
    print("BLAS of clstm's kernels:", blas_in_use(env))
    os.environ.clear()
    os.environ.update(env)
    print(CLSTM_EXTRAS)
    times, cpu, info = {}, {}, {}
    for case in args.cases:
        for n in args.threads:
            contenders = [Contender(label, f, n, case, src) for label, f, src in rows]
            try:
                for c in contenders:           # warm-up fit: imports, tracing, first packing
                    c.fit()
                for r in range(args.rounds):
                    line = []
                    for c in contenders:
                        res = c.fit()
                        key = (case, n, c.label)
                        times.setdefault(key, []).append(res["s"])
                        cpu.setdefault(key, []).append(res["cpu_s"])
                        info[key] = {"how": c.how}
                        line.append(f"{c.label} {res['s']:.3f}")
                    print(f"  {case} {n}t round {r + 1}: " + ", ".join(line) + " s", flush=True)
            finally:
                for c in contenders:
                    c.close()
    base_label = variants[-1][0] if "clstm" in args.frameworks else None
    print(f"\n(wall seconds per fit; CPU: process CPU seconds, all threads; ratios: time / "
          f"time of {base_label}: the median of the rounds' ratios, the ratio of the minima, "
          "the ratio of the median CPU times)"
          "\n| case | threads | who | median s | min s | median CPU s | n | ratio (paired) |"
          " ratio (min) | ratio (CPU) |\n|---|---|---|---|---|---|---|---|---|---|")
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
                    paired = statistics.median(t / b for t, b in zip(ts, base))
                    ratios = (f"{paired:.2f} | {min(ts) / min(base):.2f} | "
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
